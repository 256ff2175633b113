"""A git remote for the headless tests (standard library only): Debian's ``git http-backend`` as CGI
behind a tiny HTTP server that asks for a token (HTTP Basic, any user name), like a forge does.

    python3 gitserver.py ROOT [HOST:]PORT TOKEN_FILE      (port 0: any free one, printed)

Serves every repository under ROOT (``http://HOST:PORT/NAME.git``), fetch and push, to whoever sends
the token; 401 with a ``WWW-Authenticate`` challenge otherwise (so git asks its credential helper).
Runs in a container of the agent image on a network the test made.
"""

from __future__ import annotations

import base64
import http.server
import os
import subprocess
import sys


def main(argv: list[str]) -> int:
    root, address, token_file = argv[0], argv[1], argv[2]
    host, _, port = address.rpartition(":")
    with open(token_file, encoding="utf-8") as f:
        token = f.read().strip()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def _authorized(self) -> bool:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return False
            try:
                _, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return False
            return password == token

        def _cgi(self) -> None:
            if not self._authorized():
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path, _, query = self.path.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": root, "GIT_HTTP_EXPORT_ALL": "1",
                "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                "REMOTE_USER": "agent", "REMOTE_ADDR": self.client_address[0],
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/tmp",
            }
            proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
            head, _, payload = proc.stdout.partition(b"\r\n\r\n")
            if not _:
                head, _, payload = proc.stdout.partition(b"\n\n")
            status = 200
            headers = []
            for line in head.decode("latin-1").splitlines():
                key, _, value = line.partition(":")
                if key.lower() == "status":
                    status = int(value.split()[0])
                elif key:
                    headers.append((key, value.strip()))
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _cgi  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            sys.stderr.write("gitserver: " + (format % args) + "\n")

    server = http.server.ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    print(f"gitserver: serving {root} on port {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
