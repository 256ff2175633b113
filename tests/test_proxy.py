"""The isolated profile's proxies (sandbox/proxy.py, images/proxy/build.sh).

Unit tests: the configuration text (presets, validation, no injection through a host name, a key
or an upstream URL) and the net log parser. Slow tests: real containers, no internet. A lab on two
networks — an *internal* one (the agent's: no route out) and an ordinary one (standing in for the
internet) — with the project's scripted model server and a stand-in registry outside, the model
proxy (nginx) and the egress proxy (squid) on both, and client containers that probe from inside.
"""

from __future__ import annotations

import io
import ipaddress
import json
import re
import socket
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sandbox import proxy
from sandbox.proxy import Allowed, Credential, ProxyConfigError
from tests.conftest import IMAGE, RUN_ID

REAL_KEY = "sk-ant-api03-REAL-" + uuid.uuid4().hex
REAL_TOKEN = "oauth-REAL-" + uuid.uuid4().hex
PLACEHOLDER = "sk-ant-placeholder-0000"


# -- unit: allowlist ----------------------------------------------------------------------------
def test_presets_expand() -> None:
    got = {str(a) for a in proxy.parse_allow(["pypi", "npm", "crates", "debian", "github"])}
    assert got == {"pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "crates.io", "static.crates.io",
                   "index.crates.io", "deb.debian.org", "security.debian.org", "github.com", "api.github.com",
                   "codeload.github.com", "objects.githubusercontent.com", "raw.githubusercontent.com"}
    assert proxy.parse_allow(["PyPI", " pypi "]) == proxy.parse_allow(["pypi"])


@pytest.mark.parametrize(("entry", "host", "port"), [
    ("Example.COM", "example.com", None),
    ("registry.test:8443", "registry.test", 8443),
    ("localname", "localname", None),
    ("*.example.com", ".example.com", None),
    ("*.example.com:444", ".example.com", 444),
    ("10.1.2.3", "10.1.2.3", None),
    ("10.1.2.3:8080", "10.1.2.3", 8080),
    ("[2001:DB8::1]", "2001:db8::1", None),
    ("[2001:db8::1]:443", "2001:db8::1", 443),
    ("xn--bcher-kva.example", "xn--bcher-kva.example", None),
])
def test_hosts_are_validated_and_normalised(entry: str, host: str, port: int | None) -> None:
    assert proxy.parse_allow([entry]) == (Allowed(host, port),)


@pytest.mark.parametrize("entry", [
    "a.com; deny all", "a.com\nhttp_access allow all", "a.com\rx", "a.com http_access", "a.com\tb.com",
    "a.com#", "http://a.com", "a.com/path", "user@a.com", "a.com:", "a.com:0", "a.com:65536", "a.com:8o",
    "a.com:+80", "a.com:080", "", " ", "-a.com", "a-.com", "a..com", ".a.com", "a.com.", "a_b.com", "exämple.com",
    "*", "*.com", "*a.com", "a.*.com", "1.2.3", "1.2.3.04", "0x7f.1", "1.2.3.4.5", "::1", "[::1", "[::1]x", "[a.com]", "[1.2.3.4]",
    "a" * 64 + ".com", ".".join(["a" * 60] * 5), "a.com:80:80", "{a.com}", "a.com\x00", "'a.com'", '"a.com"',
    "a.com\\", "$host",
])
def test_anything_but_a_host_or_host_port_is_refused(entry: str) -> None:
    with pytest.raises(ProxyConfigError) as e:
        proxy.parse_allow([entry])
    assert "\n" not in str(e.value).replace(repr(entry), "")


def test_wildcards_cover_their_subdomains_and_duplicates_go() -> None:
    got = proxy.parse_allow(["*.example.com", "a.example.com", "example.com", "a.example.com:8443", "pypi", "pypi.org"])
    assert [str(a) for a in got] == ["*.example.com", "a.example.com:8443", "files.pythonhosted.org", "pypi.org"]


def test_squid_conf_denies_everything_by_default() -> None:
    conf = proxy.squid_conf((), clients=["172.30.0.0/16"])
    rules = [line for line in conf.splitlines() if line.startswith("http_access")]
    assert rules == ["http_access deny !sbx_clients", "http_access deny manager", "http_access deny all"]


def test_squid_conf_allows_exactly_the_list() -> None:
    conf = proxy.squid_conf(proxy.parse_allow(["pypi", "10.0.0.7", "registry.test:8443"]), clients=["172.30.0.0/24"])
    lines = conf.splitlines()
    assert "acl sbx_clients src 172.30.0.0/24" in lines
    assert "acl sbx_names_any dstdomain -n files.pythonhosted.org pypi.org" in lines  # -n: no reverse lookup of IPs
    assert "acl sbx_ips_any dst 10.0.0.7" in lines
    assert "http_access allow sbx_connect sbx_tls sbx_names_any !sbx_never" in lines  # CONNECT: 443 only
    assert "http_access allow !sbx_connect sbx_web sbx_names_any !sbx_never" in lines
    assert "http_access allow sbx_port_8443 sbx_names_8443 !sbx_never" in lines
    assert lines.index("http_access deny !sbx_clients") < lines.index("http_access deny manager") < min(
        i for i, line in enumerate(lines) if line.startswith("http_access allow"))
    assert [line for line in lines if line.startswith("http_access")][-1] == "http_access deny all"
    assert "access_log stdio:/dev/stdout logformat=sandbox" in lines


def test_generated_configs_are_one_directive_per_line() -> None:
    """Whatever the input, each line of the output is a directive of the expected shape: nothing a
    host name, a URL or a key carried can have started a directive of its own."""
    allow = proxy.parse_allow(["pypi", "github", "*.example.com", "registry.test:8443", "[2001:db8::1]:99"])
    directive = r"[a-z_]+( [A-Za-z0-9_./:!%<>\-\[\]=*]+)*"
    for line in proxy.squid_conf(allow, clients=["172.30.0.0/16", "fd00::/64"]).splitlines():
        assert line == "" or line.startswith("# ") or re.fullmatch(directive, line), line
    for line in proxy.nginx_conf(proxy.parse_upstream("https://api.anthropic.com"), clients=["10.9.0.0/16"]).splitlines():
        assert line.count(";") <= 2 and "\n" not in line and "\r" not in line


def test_model_proxy_passes_only_the_model_api_paths_with_the_key() -> None:
    """Each allowed path is an exact location that sends that very path upstream, for its one method;
    the key is included there only; every other path is refused by nginx itself (403), never forwarded."""
    for upstream in ("https://api.anthropic.com", "http://model.test:8642"):
        conf = proxy.nginx_conf(proxy.parse_upstream(upstream), clients=["10.9.0.0/16"])
        blocks = re.findall(r"\n        location (.*?) \{\n(.*?)\n        \}", conf, re.S)
        assert [b[0] for b in blocks] == ["= /v1/messages", "= /v1/messages/count_tokens", "/"]
        assert proxy.MODEL_PATHS == (("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"))
        for (method, path), (_, body) in zip(proxy.MODEL_PATHS, blocks):
            assert f"limit_except {method} {{ deny all; }}" in body
            assert f"proxy_pass $sandbox_upstream{path}$is_args$args;" in body
            assert f"include {proxy.CREDENTIAL_CONF};" in body
        last = blocks[-1][1]
        assert "return 403" in last and "proxy_pass" not in last and "include" not in last
        assert conf.count(f"include {proxy.CREDENTIAL_CONF};") == len(proxy.MODEL_PATHS)
        assert conf.count("proxy_pass") == len(proxy.MODEL_PATHS)
        assert "$request_method $status $request_length $bytes_sent $request_uri'" in conf  # the path is logged


def test_a_hand_made_allowed_entry_is_validated_again() -> None:
    for bad in (Allowed("a.com\nhttp_access allow all"), Allowed("a.com all"), Allowed("x.com", 0)):
        with pytest.raises(ProxyConfigError):
            proxy.squid_conf((bad,), clients=["10.0.0.0/8"])
    with pytest.raises(ProxyConfigError):
        proxy.squid_conf(("pypi.org",), clients=["10.0.0.0/8"])  # type: ignore[arg-type]


@pytest.mark.parametrize("clients", [[], ["all"], ["10.0.0.0/8 all"], ["10.0.0.0/8\nhttp_access allow all"]])
def test_client_networks_are_required_and_checked(clients: list[str]) -> None:
    with pytest.raises(ProxyConfigError):
        proxy.squid_conf((), clients=clients)
    with pytest.raises(ProxyConfigError):
        proxy.nginx_conf(proxy.parse_upstream("http://model:1"), clients=clients)


# -- unit: upstream and credential ----------------------------------------------------------------
@pytest.mark.parametrize(("url", "expect"), [
    ("https://api.anthropic.com", ("https://api.anthropic.com:443", "api.anthropic.com")),
    ("https://api.anthropic.com/", ("https://api.anthropic.com:443", "api.anthropic.com")),
    ("http://model.test:8642", ("http://model.test:8642", "model.test:8642")),
    ("http://172.17.0.1:8642", ("http://172.17.0.1:8642", "172.17.0.1:8642")),
    ("HTTP://Model.Test", ("http://model.test:80", "model.test")),
    ("http://[fd00::5]:81", ("http://[fd00::5]:81", "[fd00::5]:81")),
])
def test_upstream_urls(url: str, expect: tuple[str, str]) -> None:
    up = proxy.parse_upstream(url)
    assert (up.url, up.host_header) == expect


@pytest.mark.parametrize("url", [
    "ftp://a.com", "a.com", "//a.com", "https://", "https://user:pw@a.com", "https://a.com/v1", "https://a.com?x=1",
    "https://a.com#f", "https://a.com:99999", "https://a.com:x", "https://a.com;x", 'https://a"b.com',
    "https://a.com\n;", "https://a .com", "https://a.com$x", "https://a_b.com", "https://a.com?",
])
def test_bad_upstreams_are_refused(url: str) -> None:
    with pytest.raises(ProxyConfigError):
        proxy.parse_upstream(url)


@pytest.mark.parametrize("value", ["short", "sk-ant-$host-abcdef", 'sk-ant-"; deny all', "sk-ant-abc def",
                                   "sk-ant-abc\ndef", "sk-ant-abc;def1", "sk-ant-{abc}def", "sk\\ant-abcdef",
                                   "x" * 8193, "sk-ant-ä-abcdef"])
def test_credentials_that_nginx_could_interpret_are_refused(value: str) -> None:
    with pytest.raises(ProxyConfigError) as e:
        Credential("x-api-key", value)
    assert value not in str(e.value)  # never echo a key


def test_credential_kinds() -> None:
    with pytest.raises(ProxyConfigError):
        Credential("cookie", "sk-abcdefgh")
    assert REAL_KEY not in repr(Credential("x-api-key", REAL_KEY))
    assert proxy.credential_conf(Credential("x-api-key", REAL_KEY)) == (
        f'proxy_set_header x-api-key "{REAL_KEY}";\nproxy_set_header Authorization "";\n')
    assert proxy.credential_conf(Credential("bearer", REAL_TOKEN)) == (
        f'proxy_set_header Authorization "Bearer {REAL_TOKEN}";\nproxy_set_header x-api-key "";\n')


def test_model_proxy_keeps_the_key_in_one_file_only() -> None:
    c = proxy.model_proxy(proxy.parse_upstream("https://api.anthropic.com"), Credential("x-api-key", REAL_KEY),
                          clients=["172.30.0.0/16"])
    assert REAL_KEY not in " ".join(c.command) + repr(c)
    assert [n for n, (data, _) in c.files.items() if REAL_KEY.encode() in data] == ["credential.conf"]
    nginx = c.files["nginx.conf"][0].decode()
    assert f"include {proxy.CREDENTIAL_CONF};" in nginx and "proxy_ssl_verify on;" in nginx
    assert 'proxy_ssl_name "api.anthropic.com";' in nginx and "allow 172.30.0.0/16;\n        deny all;" in nginx
    assert "ssl" not in proxy.nginx_conf(proxy.parse_upstream("http://m:1"), clients=["10.0.0.0/8"])
    with tarfile.open(fileobj=io.BytesIO(c.archive())) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {".", "./nginx.conf", "./credential.conf"}
    assert all((m.uid, m.gid) == (proxy.PROXY_UID, proxy.PROXY_GID) for m in members.values())
    assert members["./credential.conf"].mode == 0o400 and members["./nginx.conf"].mode == 0o400
    assert c.user == "13:13" and c.read_only_root and c.cap_drop == ("ALL",)


def test_proxy_module_is_stdlib_only() -> None:
    import ast
    import sys
    tree = ast.parse(open(proxy.__file__, encoding="utf-8").read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


# -- unit: the net log ---------------------------------------------------------------------------
def test_netlog_parser() -> None:
    text = "\n".join([
        "sandbox-netlog/1 1764620000.123 172.30.0.3 CONNECT registry.test 443 TCP_TUNNEL 200 512 4096",
        "sandbox-netlog/1 1764620001.000 172.30.0.3 GET other.test 80 TCP_DENIED 403 120 3900",
        "sandbox-netlog/1 1764620002.5 172.30.0.3 NONE - - NONE_NONE 400 33 0",
        "sandbox-model/1 1764620003.250 172.30.0.3 POST 200 1800 950 /v1/messages?beta=true",
        "sandbox-model/1 1764620003.5 172.30.0.3 GET 403 90 200 /v1/files/" + "a" * 5000,  # cut, kept
        "sandbox-model/1 1764620003.6 172.30.0.3 POST 200 1800 950",  # the old format: not a record
        "2026/12/01 20:47:54| Starting Squid Cache version 5.7",   # diagnostics: not a record
        "sandbox-netlog/1 1764620004.0 172.30.0.3 GET evil.test 80 TCP_MISS 200 1 2 extra",  # spoiled: skipped
        "sandbox-netlog/1 notatime 172.30.0.3 GET a 80 TCP_MISS 200 1 2",
        "sandbox-netlog/1 1764620004.0 not-an-ip GET a 80 TCP_MISS 200 1 2",
        "sandbox-netlog/1 1764620004.0 172.30.0.3 GET a\x1b[2J 80 TCP_MISS 200 1 2",
        "",
    ])
    records = proxy.parse_netlog(text, model_host="api.anthropic.com", model_port=443)
    assert [(r.decision, r.method, r.host, r.port, r.code, r.proxy) for r in records] == [
        ("allowed", "CONNECT", "registry.test", 443, 200, "egress"),
        ("denied", "GET", "other.test", 80, 403, "egress"),
        ("error", "NONE", "-", None, 400, "egress"),
        ("allowed", "POST", "api.anthropic.com", 443, 200, "model"),
        ("denied", "GET", "api.anthropic.com", 443, 403, "model"),
    ]
    assert [r.path for r in records[3:]] == ["/v1/messages?beta=true", "/v1/files/" + "a" * 190 + "..."]
    assert records[0].path == "-"
    assert records[0].time == pytest.approx(1764620000.123) and (records[0].bytes_in, records[0].bytes_out) == (512, 4096)
    assert json.loads(json.dumps(records[1].as_dict()))["status"] == "TCP_DENIED"


# -- slow: real containers ----------------------------------------------------------------------
def sh(*argv: str, input: bytes | None = None, check: bool = True, timeout: float = 120) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        shown = " ".join(a if len(a) < 200 else a[:60] + "…" for a in argv)
        raise AssertionError(f"{shown} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-3000:]}")
    return proc.stdout.decode(errors="replace")


LABEL = ["--label", f"sandbox.run-id={RUN_ID}"]

# The project's scripted model server, also printing the headers of each request it gets (one JSON
# line on stdout): what the model API would see.
MODEL_SERVER = r"""
import json, sys
from sandbox.inside import mockmodel
srv = mockmodel.make_server("0.0.0.0", 8642)
Base = srv.RequestHandlerClass
class Recording(Base):
    def do_POST(self):
        print(json.dumps({"path": self.path, "headers": [[k, v] for k, v in self.headers.items()]}), flush=True)
        super().do_POST()
srv.RequestHandlerClass = Recording
srv.serve_forever()
"""

# A stand-in registry on ports 80 and 443 (plain HTTP on both: behind CONNECT, squid only tunnels).
REGISTRY_SERVER = r"""
import http.server, json, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"registry": self.headers.get("Host"), "path": self.path}).encode()
        print(json.dumps({"port": self.server.server_address[1], "path": self.path}), flush=True)
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
for port in (80, 443):
    s = http.server.ThreadingHTTPServer(("0.0.0.0", port), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
threading.Event().wait()
"""

# Runs in a client container: every probe, one JSON document on stdout.
PROBES = r"""
import json, socket, sys
cfg = json.loads(sys.argv[1])
H = cfg["hosts"]
def talk(host, port, data, timeout=8):
    host = H.get(host, host)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(data)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        return out.decode("latin-1")
    except OSError as e:
        return "ERROR " + type(e).__name__ + ": " + str(e)
def status(reply):
    return int(reply.split(" ", 2)[1]) if reply.startswith("HTTP/") else reply
def via_squid(url, host):
    return talk("egress-proxy", 3128, f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
def connect(target, then=None):
    try:
        s = socket.create_connection((H.get("egress-proxy", "egress-proxy"), 3128), timeout=8)
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = s.recv(4096).decode("latin-1")
        if then and head.startswith("HTTP/1.1 200"):
            s.sendall(then.encode())
            body = b""
            while chunk := s.recv(65536):
                body += chunk
            head += "\n--tunnel--\n" + body.decode("latin-1")
        s.close()
        return head
    except OSError as e:
        return "ERROR " + type(e).__name__ + ": " + str(e)
r = {}
body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                   "messages": [{"role": "user", "content": "say hi"}]})
for name in ("model-proxy", "bearer-proxy"):
    r[name] = talk(name, 8080, (
        "POST /v1/messages?beta=true HTTP/1.1\r\nHost: " + name + "\r\nContent-Type: application/json\r\n"
        "x-api-key: " + cfg["placeholder"] + "\r\nX-API-KEY: " + cfg["placeholder"] + "-2\r\n"
        "Authorization: Bearer " + cfg["placeholder"] + "\r\nanthropic-version: 2023-06-01\r\n"
        "Connection: close\r\nContent-Length: " + str(len(body)) + "\r\n\r\n" + body).encode())
r["http_allowed"] = via_squid("http://registry.test/simple/", "registry.test")
r["connect_allowed"] = connect("registry.test:443", "GET /tunnelled HTTP/1.1\r\nHost: registry.test\r\nConnection: close\r\n\r\n")
r["http_denied"] = via_squid("http://other.test/", "other.test")
r["connect_denied"] = connect("other.test:443")
r["connect_port_denied"] = connect("registry.test:80")
r["raw_ip_denied"] = via_squid("http://" + cfg["registry_ip"] + "/", cfg["registry_ip"])
r["raw_ip_connect_denied"] = connect(cfg["registry_ip"] + ":443")
r["gateway_denied"] = via_squid("http://" + cfg["gateway"] + ":" + str(cfg["host_port"]) + "/", cfg["gateway"])
r["outside_gateway_denied"] = connect(cfg["outside_gateway"] + ":443")
r["direct_upstream"] = talk(cfg["model_ip"], 8642, b"GET / HTTP/1.0\r\n\r\n", timeout=4)
r["direct_gateway"] = talk(cfg["gateway"], cfg["host_port"], b"GET / HTTP/1.0\r\n\r\n", timeout=4)
r["direct_outside_gateway"] = talk(cfg["outside_gateway"], cfg["host_port"], b"GET / HTTP/1.0\r\n\r\n", timeout=4)
try:
    r["dns_outside"] = socket.getaddrinfo("registry.test", 80)[0][4][0]
except OSError as e:
    r["dns_outside"] = "ERROR " + str(e)
for k in list(r):
    r[k + "_status"] = status(r[k])
print(json.dumps(r))
"""


@dataclass
class Lab:
    internal: str
    outside: str
    subnet: str
    gateway: str
    outside_gateway: str
    model: str
    registry: str
    client: str
    model_proxy: str
    bearer_proxy: str
    egress_proxy: str
    model_ip: str
    registry_ip: str
    host_port: int
    probes: dict[str, Any]
    outside_probes: dict[str, Any]


def net_create(name: str, *extra: str) -> str:
    sh("docker", "network", "create", *LABEL, *extra, name)
    return name


def net_info(name: str) -> tuple[str, str]:
    ipam = json.loads(sh("docker", "network", "inspect", "-f", "{{json .IPAM.Config}}", name))[0]
    return ipam["Subnet"], ipam["Gateway"]


def ip_on(container: str, network: str) -> str:
    nets = json.loads(sh("docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", container))
    return str(nets[network]["IPAddress"])


def start_proxy(spec: proxy.ProxyContainer, name: str, internal: str, outside: str, alias: str) -> str:
    """The proxy as the wiring will make it: created (read-only root, no capabilities, unprivileged),
    its configuration copied in with put_archive (`docker cp -` = the same API call), then started."""
    argv = ["docker", "create", *LABEL, "--name", name, "--user", spec.user, "--network", internal,
            "--network-alias", alias, "--security-opt", *spec.security_opt, "--memory", "128m", "--pids-limit", "128"]
    argv += [f"--cap-drop={c}" for c in spec.cap_drop]
    argv += ["--read-only"] if spec.read_only_root else []
    for path, opts in spec.tmpfs.items():
        argv += ["--tmpfs", f"{path}:{opts}"]
    for path in spec.volumes:
        argv += ["-v", path]
    sh(*argv, proxy.IMAGE, *spec.command)
    sh("docker", "network", "connect", outside, name)
    sh("docker", "cp", "-", f"{name}:{proxy.CONF_DIR}", input=spec.archive())
    sh("docker", "start", name)
    return name


def serve(name: str, network: str, image: str, code: str, *aliases: str) -> str:
    argv = ["docker", "run", "-d", *LABEL, "--name", name, "--network", network, "--user", "0:0"]
    for a in aliases:
        argv += ["--network-alias", a]
    sh(*argv, "--entrypoint", "python3", image, "-u", "-c", code)
    return name


def run_probes(image: str, network: str, cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """Run the probes in a client container like an isolated agent's (kept for inspection; removed by the lab)."""
    out = sh("docker", "run", *LABEL, "--name", name, "--network", network, "--user", "61000:61000",
             "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true", "--entrypoint", "python3",
             image, "-c", PROBES, json.dumps(cfg), timeout=180)
    return dict(json.loads(out))


def wait_listening(container: str, port: int, image: str) -> None:
    """Until something in ``container`` accepts on ``port`` (asked from a throwaway netns peer)."""
    sh("docker", "run", "--rm", *LABEL, "--network", f"container:{container}", "--entrypoint", "python3", image,
       "-c", f"import socket,time\nfor _ in range(100):\n    try:\n        socket.create_connection(('127.0.0.1',{port}),1).close(); break\n"
       "    except OSError: time.sleep(0.1)\nelse: raise SystemExit('not listening')")


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, proxy_image: str) -> Iterator[Lab]:
    agent = sh("docker", "image", "inspect", "-f", "{{.Id}}", IMAGE).strip()  # read only: never rebuilt here
    tag = uuid.uuid4().hex[:8]
    internal, outside = f"sbx-test-int-{tag}", f"sbx-test-out-{tag}"
    made: list[str] = []
    networks: list[str] = []

    def cleanup() -> None:
        if made:
            subprocess.run(["docker", "rm", "-f", "-v", *made], capture_output=True)
        for n in networks:
            subprocess.run(["docker", "network", "rm", n], capture_output=True)

    request.addfinalizer(cleanup)
    # A host service on every address (as an admin's dev server would be): the gateway probes' target.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 0))
    listener.listen(16)
    request.addfinalizer(listener.close)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhost service\n")
                except OSError:
                    pass

    threading.Thread(target=accept, daemon=True).start()
    host_port = listener.getsockname()[1]

    opts = [x for k, v in proxy.INTERNAL_NETWORK_OPTIONS.items() for x in ("-o", f"{k}={v}")]
    networks.append(net_create(internal, "--internal", *opts))
    networks.append(net_create(outside))
    subnet, gateway = net_info(internal)
    _, outside_gateway = net_info(outside)

    model = serve(f"sbx-test-model-{tag}", outside, agent, MODEL_SERVER, "model.test")
    made.append(model)
    registry = serve(f"sbx-test-registry-{tag}", outside, agent, REGISTRY_SERVER, "registry.test", "other.test")
    made.append(registry)

    upstream = proxy.parse_upstream("http://model.test:8642")
    specs = {
        "model-proxy": proxy.model_proxy(upstream, Credential("x-api-key", REAL_KEY), clients=[subnet]),
        "bearer-proxy": proxy.model_proxy(upstream, Credential("bearer", REAL_TOKEN), clients=[subnet]),
        "egress-proxy": proxy.egress_proxy(proxy.parse_allow(["registry.test", "pypi"]), clients=[subnet]),
    }
    names = {}
    for alias, spec in specs.items():
        name = f"sbx-test-{alias}-{tag}"
        made.append(name)
        names[alias] = start_proxy(spec, name, internal, outside, alias)
    for alias, spec in specs.items():
        wait_listening(names[alias], spec.port, agent)
    wait_listening(model, 8642, agent)
    wait_listening(registry, 443, agent)

    cfg = {"placeholder": PLACEHOLDER, "hosts": {}, "registry_ip": ip_on(registry, outside), "model_ip": ip_on(model, outside),
           "gateway": gateway, "outside_gateway": outside_gateway, "host_port": host_port}
    client = f"sbx-test-client-{tag}"
    made.append(client)
    probes = run_probes(agent, internal, cfg, client)
    # The same probes from the ordinary network: the proxies must not serve it (only the internal
    # subnet), and the host service must be reachable there (so its refusal above means something).
    made.append(f"sbx-test-outsider-{tag}")
    outside_probes = run_probes(agent, outside, {**cfg, "gateway": outside_gateway, "hosts": {
        alias: ip_on(name, outside) for alias, name in names.items()}}, f"sbx-test-outsider-{tag}")
    yield Lab(internal, outside, subnet, gateway, outside_gateway, model, registry, client, names["model-proxy"],
              names["bearer-proxy"], names["egress-proxy"], cfg["model_ip"], cfg["registry_ip"], host_port,
              probes, outside_probes)


def upstream_requests(lab: Lab) -> list[dict[str, Any]]:
    out = sh("docker", "logs", lab.model)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def headers(record: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == name]


@pytest.mark.slow
def test_model_proxy_replaces_the_agents_key_with_the_real_one(lab: Lab) -> None:
    for name in ("model-proxy", "bearer-proxy"):
        reply = lab.probes[name]
        assert lab.probes[f"{name}_status"] == 200, reply
        assert "event: message_start" in reply and "event: message_stop" in reply  # the mock model's stream
    seen = upstream_requests(lab)
    assert len(seen) == 2, seen
    by_auth = {bool(headers(r, "authorization")): r for r in seen}
    api_key, bearer = by_auth[False], by_auth[True]
    assert headers(api_key, "x-api-key") == [REAL_KEY]  # both of the agent's spellings replaced by one
    assert headers(bearer, "authorization") == [f"Bearer {REAL_TOKEN}"] and headers(bearer, "x-api-key") == []
    for r in seen:
        assert r["path"] == "/v1/messages?beta=true"
        assert headers(r, "host") == ["model.test:8642"]
        assert PLACEHOLDER not in json.dumps(r)
        assert headers(r, "anthropic-version") == ["2023-06-01"]  # everything else passes


@pytest.mark.slow
def test_allowlisted_host_is_reached_through_squid_over_http_and_connect(lab: Lab) -> None:
    p = lab.probes
    assert p["http_allowed_status"] == 200 and '"path": "/simple/"' in p["http_allowed"], p["http_allowed"]
    assert p["connect_allowed"].startswith("HTTP/1.1 200"), p["connect_allowed"]
    assert '"path": "/tunnelled"' in p["connect_allowed"]
    served = sh("docker", "logs", lab.registry)
    assert '{"port": 80, "path": "/simple/"}' in served and '{"port": 443, "path": "/tunnelled"}' in served


@pytest.mark.slow
def test_unlisted_host_raw_ip_and_gateways_are_refused_by_squid(lab: Lab) -> None:
    p = lab.probes
    for probe in ("http_denied", "connect_denied", "connect_port_denied", "raw_ip_denied", "raw_ip_connect_denied",
                  "gateway_denied", "outside_gateway_denied"):
        assert p[f"{probe}_status"] == 403, (probe, p[probe])
    assert "other.test" not in sh("docker", "logs", lab.registry)  # other.test is the same server: never reached


@pytest.mark.slow
def test_internal_network_has_no_way_out_but_the_proxies(lab: Lab) -> None:
    p = lab.probes
    assert p["direct_upstream"].startswith("ERROR"), p["direct_upstream"]              # no route out
    assert p["direct_outside_gateway"].startswith("ERROR"), p["direct_outside_gateway"]
    assert p["direct_gateway"].startswith("ERROR"), p["direct_gateway"]                # the host: not on the network
    for probe in ("direct_upstream", "direct_outside_gateway", "direct_gateway"):  # nothing answered, not even a reset
        assert re.search("timed out|unreachable|No route to host", p[probe]), (probe, p[probe])
    assert p["dns_outside"].startswith("ERROR"), p["dns_outside"]                      # outside names do not resolve
    # Control: from the ordinary network the same host service and names are there...
    o = lab.outside_probes
    assert "host service" in o["direct_gateway"] and not o["dns_outside"].startswith("ERROR"), o
    # ...and the proxies refuse that network (the model proxy would spend the key for anyone).
    assert o["model-proxy_status"] == 403 and o["bearer-proxy_status"] == 403
    assert o["http_allowed_status"] == 403 and o["connect_allowed"].startswith("HTTP/1.1 403")


@pytest.mark.slow
def test_netlog_has_every_allowed_and_denied_request_of_the_client(lab: Lab) -> None:
    out = subprocess.run(["docker", "logs", lab.egress_proxy], capture_output=True, text=True)
    records = proxy.parse_netlog(out.stdout)  # stdout only: squid's own diagnostics go to stderr
    assert proxy.parse_netlog(out.stderr) == []
    subnet = ipaddress.ip_network(lab.subnet)
    mine = [r for r in records if ipaddress.ip_address(r.client) in subnet]  # per agent: by its address
    outsider = [r for r in records if r not in mine and not ipaddress.ip_address(r.client).is_loopback]
    assert outsider and all(r.decision == "denied" for r in outsider), outsider
    got = {(r.method, r.host, r.port, r.decision) for r in mine}
    assert {("GET", "registry.test", 80, "allowed"), ("CONNECT", "registry.test", 443, "allowed"),
            ("GET", "other.test", 80, "denied"), ("CONNECT", "other.test", 443, "denied"),
            ("CONNECT", "registry.test", 80, "denied"), ("GET", lab.registry_ip, 80, "denied"),
            ("CONNECT", lab.registry_ip, 443, "denied"), ("GET", lab.gateway, lab.host_port, "denied"),
            ("CONNECT", lab.outside_gateway, 443, "denied")} <= got, got
    tunnel = next(r for r in mine if r.method == "CONNECT" and r.decision == "allowed")
    assert tunnel.status == "TCP_TUNNEL" and tunnel.bytes_out > 0 and tunnel.code == 200
    denied = next(r for r in mine if r.host == "other.test" and r.method == "GET")
    assert denied.status == "TCP_DENIED" and denied.code == 403
    model = proxy.parse_netlog(sh("docker", "logs", lab.model_proxy), model_host="model.test", model_port=8642)
    assert [(r.method, r.host, r.code, r.proxy) for r in model if r.code == 200] == [("POST", "model.test", 200, "model")]


@pytest.mark.slow
def test_the_real_key_is_not_in_docker_inspect(lab: Lab) -> None:
    for container in (lab.model_proxy, lab.bearer_proxy, lab.egress_proxy, lab.client):
        dump = sh("docker", "inspect", container)
        assert REAL_KEY not in dump and REAL_TOKEN not in dump
        assert REAL_KEY not in sh("docker", "logs", container) and REAL_KEY not in subprocess.run(
            ["docker", "logs", container], capture_output=True, text=True).stderr
    # It is in the model proxy, in the one file, readable by the proxy's user only.
    listing = sh("docker", "exec", lab.model_proxy, "ls", "-ln", proxy.CONF_DIR)
    assert any(line.startswith("-r-------- 1 13 13 ") and line.endswith("credential.conf")
               for line in listing.splitlines()), listing
    assert REAL_KEY not in sh("docker", "exec", lab.egress_proxy, "cat", proxy.SQUID_CONF)


@pytest.mark.slow
def test_proxies_run_unprivileged_on_a_read_only_root(lab: Lab) -> None:
    for container in (lab.model_proxy, lab.egress_proxy):
        info = json.loads(sh("docker", "inspect", container))[0]
        assert info["Config"]["User"] == "13:13" and info["HostConfig"]["ReadonlyRootfs"] is True
        assert info["HostConfig"]["CapDrop"] == ["ALL"] and info["State"]["Running"] is True
        status = sh("docker", "exec", container, "sh", "-c", "grep -E '^(Uid|CapEff|NoNewPrivs)' /proc/1/status; "
                    "touch /etc/x 2>&1 || true")
        assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status and "Read-only" in status
