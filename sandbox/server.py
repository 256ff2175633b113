"""The per-user command server (``python -m sandbox.server SOCKET``; started by ``sandbox.client``).

Binds its socket first (so the starting client's connect waits in the backlog, not on a poll), stops the
servers of other code for the same data dir, imports the commands' dependencies once (typer, docker-py,
pydantic-settings, the library), then forks a child per command — chg's way: each command gets a fresh
copy of a process that never ran one, so ``os.environ``, the cwd, the umask, signal handlers and module
caches (``gitops._FOUND``…) are the request's own, never the server's nor another command's. The child
takes the client's stdin/stdout/stderr (SCM_RIGHTS), its environment, cwd and umask, runs
``sandbox.cli.run`` and sends the exit code; it dies with the server (``PR_SET_PDEATHSIG``), like a command
whose process is killed. The parent only accepts, checks the peer's uid (SO_PEERCRED: another uid is
refused), reaps, and tells a client whose command died of a signal (``{"killed": SIG}``).

It exits after ``server_idle`` seconds with no command (default 600), on ``sandbox server stop`` (after the
running commands), and when its socket is no longer its own. It logs to ``<data dir>/server.log`` (the
command word and exit code only: never arguments or the environment).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from sandbox import __version__, client

# What `ls`, `logs`, `send` import, before the first command is taken; the rest between commands.
WARM_FIRST = ("sandbox.cli", "sandbox.config", "sandbox.manager", "sandbox.engine", "docker")
WARM = ("tenacity", "sandbox.engine.retry", "sandbox.spawn.runner", "sandbox.spawn.warm",
        "sandbox.workspace.git", "sandbox.workspace.work", "sandbox.gc", "sandbox.waiting", "sandbox.pool", "sandbox.image")
REQUEST_TIMEOUT = 5.0  # s: a client sends its request at once
MAX_LOG = 1024 * 1024
DEFAULT_IDLE = 600.0


def log(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {msg}\n")
    sys.stderr.flush()


def peer_uid(conn: socket.socket) -> int:
    return int(struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1])


def read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The request (the first frame) and the descriptors sent with its first bytes."""
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    try:
        for doc in client.frames(conn, data):
            return doc, list(fds)
        raise ValueError("request cut short")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def send(conn: socket.socket, doc: dict[str, Any]) -> None:
    try:
        conn.sendall(client.frame(doc))
    except OSError:
        pass


def idle_setting() -> float:
    """``server_idle`` from the user's settings (the environment, the user file); the default when unset or
    bad (the commands report a bad value)."""
    try:
        from sandbox.config import load_settings

        return float(load_settings().server_idle)
    except Exception:
        return DEFAULT_IDLE


class Server:
    def __init__(self, path: str) -> None:
        self.path = path
        self.started = time.time()
        self.last = time.monotonic()
        self.children: dict[int, tuple[socket.socket, str]] = {}
        self.served = 0
        self.stopping = False
        old = os.umask(0o177)
        try:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(path)  # EADDRINUSE: another server of this key won the race
        finally:
            os.umask(old)
        self.listener.listen(128)
        self.inode = os.stat(path).st_ino
        self.idle = DEFAULT_IDLE
        self.pending = list(WARM)
        self.watcher: int | None = None  # the notify watcher's pid (``start_watcher``)

    def warm(self, names: tuple[str, ...]) -> None:
        import importlib

        for name in names:
            try:
                importlib.import_module(name)
            except Exception as e:  # an optional dependency missing: the command imports (and reports) it
                log(f"warm import of {name} failed: {type(e).__name__}: {e}")
            if name == "sandbox.cli":
                try:
                    from sandbox import cli

                    cli.click_command()
                except Exception as e:
                    log(f"building the commands failed: {type(e).__name__}: {e}")

    def warm_next(self) -> None:
        """One more of ``WARM`` (between commands); after the last, the idle setting and a frozen heap."""
        self.warm((self.pending.pop(0),))
        if not self.pending:
            self.idle = idle_setting()
            import gc

            gc.collect()
            gc.freeze()  # the children share these pages instead of copying them on the first collection
            log(f"warm (idle exit after {self.idle:g} s)")
            self.start_watcher()

    def start_watcher(self) -> None:
        """When the user's own settings (the environment, the user file: never a repository's) name a
        ``notify_url``: fork the notify watcher, a process of its own (a thread here would be forked into
        every command, its locks held), which dies with the server (``PR_SET_PDEATHSIG``) and lists the
        agents every 2 s (10 s while there are none), POSTing each new waiting/exited/failed/stopped
        (``notify.watch``; marks shared with ``wait --notify`` and ``top``: each transition once)."""
        me = os.getpid()
        pid = os.fork()
        if pid != 0:
            self.watcher = pid
            return
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() != me:
                os._exit(0)
            self.listener.close()
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            os.chdir("/")  # (no repository around: the user's own settings only)
            watch()
        except Exception as e:
            log(f"notify watcher: {type(e).__name__}: {e}")
        finally:
            os._exit(0)

    def replace_others(self) -> None:
        """Stop the servers of other code for this data dir: they never answer again."""
        where, name = os.path.split(self.path)
        prefix = name.split("-", 1)[0] + "-"
        for other in sorted(os.listdir(where)):
            if other == name or not other.startswith(prefix) or not other.endswith(".sock"):
                continue
            try:
                sock = client.connect(os.path.join(where, other))
            except OSError:
                continue
            if sock is None:
                continue
            try:
                sock.settimeout(2)
                client.request(sock, {"op": "stop"})
                sock.recv(4096)
            except OSError:
                pass
            finally:
                sock.close()
            log(f"stopped the server of other code at {other}")

    def still_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def status(self) -> dict[str, Any]:
        rss = 0
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        except OSError:
            pass
        return {"pid": os.getpid(), "version": __version__, "socket": self.path, "uptime": time.time() - self.started,
                "idle": time.monotonic() - self.last, "idle_exit": self.idle, "running": len(self.children),
                "served": self.served, "rss_bytes": rss, "warm": not self.pending}

    def stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            if self.still_ours():
                os.unlink(self.path)
            self.listener.close()
            log("stopping")

    def reap(self) -> None:
        while self.children or self.watcher:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.watcher:
                self.watcher = None
            conn, what = self.children.pop(pid, (None, "?"))
            if conn is None:
                continue
            if os.WIFSIGNALED(status):
                send(conn, {"killed": os.WTERMSIG(status)})
                log(f"{what}: killed by signal {os.WTERMSIG(status)}")
            else:
                send(conn, {"exit": os.waitstatus_to_exitcode(status)})
            conn.close()
            self.last = time.monotonic()

    def accept(self) -> None:
        conn, _ = self.listener.accept()
        self.last = time.monotonic()
        uid = peer_uid(conn)
        if uid != os.getuid():
            send(conn, {"refused": f"uid {uid} is not this server's user"})
            conn.close()
            log(f"refused a connection from uid {uid}")
            return
        conn.settimeout(REQUEST_TIMEOUT)
        try:
            req, fds = read_request(conn)
        except (OSError, ValueError) as e:
            log(f"bad request: {e}")
            conn.close()
            return
        op = req.get("op")
        if op == "status":
            send(conn, self.status())
            conn.close()
        elif op == "stop":  # the socket goes first: a command after this answer starts a new server
            self.stop()
            send(conn, {"stopping": os.getpid(), "running": len(self.children)})
            conn.close()
        elif op == "run" and req.get("key") == os.path.basename(self.path) and len(fds) == 3:
            self.fork(conn, req, fds)
        else:
            send(conn, {"refused": "a request of other code"})
            conn.close()
        for fd in fds:
            os.close(fd)

    def fork(self, conn: socket.socket, req: dict[str, Any], fds: list[int]) -> None:
        what = str(client.command_word([str(a) for a in req.get("argv", [])]))
        conn.settimeout(None)
        pid = os.fork()
        if pid == 0:  # the command's process
            try:
                self.listener.close()
                child(conn, req, fds)
            except BaseException:  # (SANDBOX_DEBUG: the command re-raises; its traceback is the user's to see)
                try:
                    import traceback

                    traceback.print_exc()
                    sys.stderr.flush()
                except BaseException:
                    pass
            finally:
                os._exit(70)
        self.children[pid] = (conn, what)
        self.served += 1

    def loop(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.signal(signal.SIGTERM, lambda s, f: self.stop())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            self.reap()
            if self.stopping:
                if not self.children:
                    return
            elif not self.still_ours():
                log("the socket is no longer this server's")
                self.stop()
                continue
            elif not self.children and time.monotonic() - self.last >= self.idle:
                log(f"idle for {self.idle:g} s")
                self.stop()
                continue
            wait = max(0.0, min(5.0, self.idle - (time.monotonic() - self.last))) or 5.0
            if self.pending and not self.stopping:
                wait = 0.0
            ready, _, _ = select.select([wake_r] if self.stopping else [self.listener, wake_r], [], [], wait)
            if not ready and self.pending and not self.stopping:
                self.warm_next()
            if wake_r in ready:
                os.read(wake_r, 4096)
            if not self.stopping and self.listener in ready:
                try:
                    self.accept()
                except OSError as e:
                    log(f"accept: {e}")


def watch() -> None:
    """The notify watcher's life (in its own process): nothing at all unless the user's settings name a
    ``notify_url``; then ``notify.watch`` over the agents of every repository (labels and state files,
    no sync), until the server ends."""
    from sandbox import notify
    from sandbox.config import load_settings

    try:
        settings = load_settings()
    except Exception as e:  # (a bad setting: the commands report it)
        log(f"notify watcher: no settings: {e}")
        return
    if not settings.notify_url:
        return
    from sandbox.engine import Engine
    from sandbox.manager import SandboxManager

    mgr = SandboxManager(settings, Engine(timeout=10))
    last = [""]

    def problem(line: str) -> None:  # (a receiver or an engine away: logged once until it changes)
        if line != last[0]:
            last[0] = line
            log(line)

    log("notify watcher: watching")
    notify.watch(lambda: mgr.list(sync=False), settings, on_problem=problem)


def child(conn: socket.socket, req: dict[str, Any], fds: list[int]) -> None:
    """One command, in the forked child: the client's stdio, env, cwd, umask; then ``cli.run``."""
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the command dies with the server
    if os.getppid() == 1:
        os._exit(70)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    send(conn, {"pid": os.getpid()})
    os.umask(int(req.get("umask", 0o022)))

    done = threading.Event()

    def signals() -> None:  # the client's signals, raised here; its end: SIGHUP, as a closed terminal would
        for msg in client.frames(conn):
            if isinstance(msg.get("signal"), int) and not done.is_set():
                os.kill(os.getpid(), msg["signal"])
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGHUP)

    def become(argv: list[str]) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        done.set()
        send(conn, {"exec": argv})
        os._exit(0)

    threading.Thread(target=signals, daemon=True).start()
    from sandbox import cli

    argv = [str(a) for a in req.get("argv", [])]
    env = {str(k): str(v) for k, v in dict(req.get("env", {})).items()}
    rc = cli.run(argv, cwd=str(req.get("cwd", "/")), env=env, stdio=(fds[0], fds[1], fds[2]), become=become)
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    done.set()
    send(conn, {"exit": rc})
    os._exit(rc & 0xFF)


def query(op: str, env: dict[str, str] | os._Environ[str] | None = None) -> dict[str, Any] | None:
    """``status`` or ``stop`` of this user's server for this code and data dir; None when none runs."""
    env = os.environ if env is None else env
    try:
        sock = client.connect(client.socket_path(env, create=False))
    except FileNotFoundError:  # no socket dir: no server (and none made by asking)
        return None
    except PermissionError as e:  # not a private dir of ours, or a server of another uid
        from sandbox.errors import SandboxError

        raise SandboxError(f"the command server's socket: {e}") from None
    if sock is None:
        return None
    try:
        sock.settimeout(5)
        client.request(sock, {"op": op})
        for msg in client.frames(sock):
            return msg
    finally:
        sock.close()
    return None


def main(argv: list[str]) -> int:
    path = argv[0]
    log_path = os.path.join(client.data_dir(os.environ), "server.log")
    try:
        if os.stat(log_path).st_size > MAX_LOG:
            os.replace(log_path, log_path + ".1")
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
    except OSError:
        pass
    try:
        server = Server(path)
    except OSError as e:
        log(f"cannot listen at {path}: {e}")
        return 1
    log(f"listening at {path} (sandbox {__version__}, python {sys.version.split()[0]})")
    server.warm(WARM_FIRST)
    for mode, errors in (("r", sys.stdout.errors), ("w", sys.stdout.errors), ("w", "backslashreplace")):
        open(os.devnull, mode, encoding=sys.stdout.encoding, errors=errors).close()  # the codecs cli._adopt uses
    log("ready")
    server.replace_others()
    server.loop()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
