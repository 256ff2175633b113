"""The ``sandbox`` command's first module (stdlib only, tiny): hand the command to the user's server.

Like tmux and Mercurial's chg: every ``sandbox`` command connects to a unix socket of the invoking user's
command server (``sandbox.server``, started here on demand), which forks a child per command from warm
imports; the child runs ``sandbox.cli.run`` with this process's argv, cwd, environment, umask and its
stdin/stdout/stderr themselves (the descriptors, passed with SCM_RIGHTS: output, terminals and ``spawn -``
need no copying). When no server can run (``SANDBOX_SERVER=0``, ``server = false`` in the user file, a
runtime dir that cannot be made ours, a start or connect that fails) the same ``sandbox.cli.run`` runs in
this process: slower, the same behaviour.

The socket: ``$XDG_RUNTIME_DIR/sandbox/`` (else ``<data dir>/run/``; a path too long for a unix socket:
``/tmp/sandbox-UID/``), a directory that must be a real 0700 directory of this uid, and a name keyed by the
data dir and this code's version (the package's files' names, sizes and mtimes, and the interpreter): a
server of other code never answers; the new one stops it.

The wire (one connection a command): frames of a 4-byte length and a ``marshal``-ed dict (stdlib, no
import cost; both ends are this uid, checked with SO_PEERCRED before a frame is read):
  client -> server  ``{"op": "run", "key", "argv", "cwd", "env", "umask", "tty": [in, out, err]}`` with fds
                    0, 1, 2 attached; then ``{"signal": N}`` for each SIGINT, SIGTERM, SIGHUP, SIGQUIT,
                    SIGWINCH this process gets (the child raises it in itself); ``{"op": "status"|"stop"}``.
  server -> client  ``{"pid": N}``; then one of ``{"exit": N}``, ``{"exec": ARGV}`` (interactive commands —
                    attach, exec on a terminal, tile — become that program in the client: its terminal, its
                    job control), ``{"killed": SIG}`` (the command's process died of SIG: the client dies of it
                    too), ``{"refused": WHY}``. A connection closed before ``pid``: the command never started
                    (a server stopping): once more. Closed after it: the server was killed mid-command (one
                    line, exit 75; read-only commands run again here once).
"""

from __future__ import annotations

import _signal as signal  # the C modules: `socket` and `signal` import enum, selectors…: ~10 ms a command
import _socket as socket
import _struct as struct
import marshal
import os
import sys

TYPE_CHECKING = False  # (typing is not imported at run time: a few ms of every command)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Union

    Environ = Union[dict[str, str], "os._Environ[str]"]
PACKAGE = os.path.dirname(os.path.abspath(__file__))
EXIT_CUT = 75  # the server ended mid-command: the command's effect is unknown (README "Errors and exit codes")
SAFE = frozenset({"ls", "logs", "stats", "config", "wait", "netlog", "doctor", "--version", "--help"})  # read-only
FORWARD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH)
START_TIMEOUT = 15.0  # s: a server that does not listen by then is not used (this process runs the command)
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with its NUL
MAX_FRAME = 16 * 1024 * 1024
# The server runs this package's code, whatever the client's cwd and sys.path were.
SERVER_MAIN = "import sys; sys.path.insert(0, sys.argv[1]); from sandbox.server import main; sys.exit(main(sys.argv[2:]))"


def _off(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("0", "false", "no", "off")


def _home(env: Environ) -> str:
    return env.get("HOME") or os.path.expanduser("~")


def enabled(env: Environ) -> bool:
    """Whether commands go through a server: ``SANDBOX_SERVER`` (0/false/no/off), else the user file's
    ``server`` (parsed only when the file mentions it)."""
    if "SANDBOX_SERVER" in env:
        return not _off(env["SANDBOX_SERVER"])
    config = env.get("XDG_CONFIG_HOME") or os.path.join(_home(env), ".config")
    try:
        with open(os.path.join(config, "sandbox", "config.toml"), "rb") as f:
            raw = f.read()
    except OSError:
        return True
    if b"server" not in raw:
        return True
    import tomllib

    try:
        value = tomllib.loads(raw.decode()).get("server", True)
    except (ValueError, UnicodeDecodeError):
        return True  # the commands report a bad file themselves
    return value is not False


def data_dir(env: Environ) -> str:
    """The data dir as the environment gives it (``SANDBOX_DATA_DIR``, ``$XDG_DATA_HOME/sandbox``,
    ``~/.local/share/sandbox``): the server's log lives there and it keys the socket."""
    if env.get("SANDBOX_DATA_DIR"):
        return env["SANDBOX_DATA_DIR"]
    return os.path.join(env.get("XDG_DATA_HOME") or os.path.join(_home(env), ".local", "share"), "sandbox")


def _digest(text: str) -> str:
    import zlib

    raw = text.encode()
    return f"{zlib.crc32(raw):08x}{zlib.adler32(raw):08x}"


def code_version() -> str:
    """This code's version: the package's files (names, sizes, mtimes) and the interpreter, digested."""
    parts = [sys.executable, PACKAGE]
    for top, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(top, name))
                parts.append(f"{top}/{name} {st.st_size} {st.st_mtime_ns}")
    return _digest("\0".join(parts))


def data_key(env: Environ) -> str:
    return _digest(f"{os.getuid()}\0{data_dir(env)}")[:12]


def private_dir(path: str, create: bool = True) -> str:
    """``path`` as a real 0700 directory of this uid (made if missing and ``create``); OSError when it is
    not one."""
    try:
        if create:
            os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if (st.st_mode & 0o170000) != 0o040000 or st.st_uid != os.getuid():  # S_ISDIR, not a link
        raise PermissionError(f"{path} is not a directory of uid {os.getuid()}")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{path} is not writable")
    return path


def socket_dir(env: Environ, create: bool = True) -> str:
    """Where this user's server sockets live (made private here unless not ``create``; OSError when it
    cannot be, or does not exist)."""
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        where = os.path.join(runtime, "sandbox")
    else:
        where = os.path.join(data_dir(env), "run")
    if len(where) + 36 > MAX_SOCKET_PATH:
        where = f"/tmp/sandbox-{os.getuid()}"
    elif create and not runtime:
        os.makedirs(data_dir(env), mode=0o700, exist_ok=True)
    return private_dir(where, create)


def socket_path(env: Environ, create: bool = True) -> str:
    return os.path.join(socket_dir(env, create), f"{data_key(env)}-{code_version()}.sock")


def connect(path: str) -> socket.socket | None:
    """A connection to the server at ``path`` (``_socket.socket``: no ``with``; close it), or None when
    nothing listens there. A server of another uid is never used (SO_PEERCRED): PermissionError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError:
        sock.close()
        raise
    uid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
    if uid != os.getuid():
        sock.close()
        raise PermissionError(f"the server at {path} runs as uid {uid}, not {os.getuid()}")
    return sock


def start(path: str, env: Environ) -> socket.socket | None:
    """Connect, starting the server first when none listens: under a lock next to the socket, so that
    several first commands start one server; a stale socket (nothing accepts) is replaced."""
    import fcntl
    import subprocess
    import time

    with open(path[:-len(".sock")] + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = connect(path)
        if sock is not None:
            return sock
        try:
            os.unlink(path)  # stale: the server that made it is gone
        except FileNotFoundError:
            pass
        os.makedirs(data_dir(env), mode=0o700, exist_ok=True)
        with open(os.path.join(data_dir(env), "server.log"), "ab") as log:
            proc = subprocess.Popen([sys.executable, "-c", SERVER_MAIN, os.path.dirname(PACKAGE), path],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", env=dict(env),
                                    start_new_session=True, close_fds=True)
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.002
        while time.monotonic() < deadline:
            sock = connect(path)
            if sock is not None:
                return sock
            if proc.poll() is not None:  # it could not start (see its log): this process runs the command
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        return None


def frame(doc: dict[str, Any]) -> bytes:
    body = marshal.dumps(doc)
    return struct.pack("!I", len(body)) + body


def request(sock: socket.socket, doc: dict[str, Any], fds: list[int] | None = None) -> None:
    """One frame, ``fds`` attached to its first bytes (SCM_RIGHTS)."""
    data = frame(doc)
    extra = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    sent = sock.sendmsg([data], extra)
    if sent < len(data):
        sock.sendall(data[sent:])


def frames(sock: socket.socket, buf: bytes = b"") -> Iterator[dict[str, Any]]:
    """The peer's frames (after ``buf``, bytes already read), until it closes."""
    while True:
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack("!I", buf[:4])[0]:
            size = struct.unpack("!I", buf[:4])[0]
            doc = marshal.loads(buf[4:4 + size])
            buf = buf[4 + size:]
            if isinstance(doc, dict):
                yield doc
        if len(buf) >= 4 and struct.unpack("!I", buf[:4])[0] > MAX_FRAME:
            return
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            chunk = b""
        if not chunk:
            return
        buf += chunk


def _stdio() -> list[int]:
    """fds 0, 1, 2 (``/dev/null`` in place of a closed one)."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def command_word(argv: list[str]) -> str | None:
    """The command word (after the root's own options)."""
    i = 0
    while i < len(argv):
        if argv[i] == "--engine":
            i += 2
        elif argv[i].startswith("--engine="):
            i += 1
        else:
            return argv[i]
    return None


def local(argv: list[str]) -> int:
    """The command in this process: the same function the server's child runs."""
    for sig in FORWARD:
        signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
    from sandbox.cli import run

    return run(argv)


def serve(argv: list[str], again: bool = False) -> int:
    """The command through the server; in this process when no server can run."""
    env = os.environ
    command = command_word(argv)
    if command == "server" or not enabled(env):  # `sandbox server …` never starts one
        return local(argv)
    try:
        path = socket_path(env)
        sock = connect(path) or start(path, env)
    except OSError:
        sock = None
    if sock is None:
        return local(argv)
    started = False
    umask = os.umask(0o022)
    os.umask(umask)
    fds = _stdio()
    sent = False
    try:
        def forward(signum: int, frame_: object) -> None:
            if not sent:  # before the command has started: as if there were no server
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                if signum != signal.SIGWINCH:
                    signal.signal(signum, signal.SIG_DFL)
                    os.kill(os.getpid(), signum)
                return
            try:
                sock.sendall(frame({"signal": signum}))
            except OSError:
                pass

        for sig in FORWARD:
            signal.signal(sig, forward)
        try:
            cwd = os.getcwd()
        except OSError:  # the current directory is gone: the command says so, in this process
            return local(argv)
        request(sock, {"op": "run", "key": os.path.basename(path), "argv": argv, "cwd": cwd,
                       "env": dict(env), "umask": umask, "tty": [os.isatty(fd) for fd in fds]}, fds)
        sent = True
        for msg in frames(sock):
            started = started or "pid" in msg
            if "exit" in msg:
                return int(msg["exit"])
            if "exec" in msg:  # attach, exec on a terminal, tile: this process becomes the program
                for sig in FORWARD:
                    signal.signal(sig, signal.SIG_DFL)
                target = [str(a) for a in msg["exec"]]
                try:
                    os.execvp(target[0], target)
                except OSError as e:
                    print(f"sandbox: error: cannot run {target[0]}: {e.strerror}", file=sys.stderr)
                    return 1
            if "killed" in msg:  # the command's process died of a signal: so does this one
                signum = int(msg["killed"])
                for sig in FORWARD:
                    signal.signal(sig, signal.SIG_DFL)
                sys.stdout.flush()
                os.kill(os.getpid(), signum)
                return 128 + signum
            if "refused" in msg:
                print(f"sandbox: note: the command server refused: {msg['refused']}; running here", file=sys.stderr)
                return local(argv)
    finally:
        sock.close()
    for sig in FORWARD:
        signal.signal(sig, signal.SIG_DFL)
    if not started and not again:  # a server that was stopping: the command never started; once more
        return serve(argv, again=True)
    log = os.path.join(data_dir(env), "server.log")
    if command in SAFE:
        print(f"sandbox: the command server ended mid-command (see {log}); running `{command}` again here",
              file=sys.stderr)
        return local(argv)
    print(f"sandbox: error: the command server ended mid-command (killed?): `sandbox {command}` may be half "
          f"done; `sandbox gc` shows what is left (see {log})", file=sys.stderr)
    return EXIT_CUT


def main() -> None:
    """The console script (``sandbox = sandbox.client:main``) and ``python -m sandbox``."""
    try:
        code = serve(sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C before the command started (after, the command has it)
        print("sandbox: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
