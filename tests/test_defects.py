"""Defects found by reading the code (issue 27): each test fails on the code before its fix."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path


def _race(data_dir: str, holders: str, rounds: int, out: "multiprocessing.Queue[int]") -> None:
    from sandbox.spawn.runner import SpawnLock as _SpawnLock

    overlaps = 0
    for _ in range(rounds):
        with _SpawnLock(Path(data_dir), "racer") as held:
            if not held:
                continue
            try:  # one holder at a time: the marker must not exist while we hold the lock
                fd = os.open(holders, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                overlaps += 1
                continue
            os.close(fd)
            os.unlink(holders)
    out.put(overlaps)


def test_the_spawn_lock_has_one_holder_at_a_time(tmp_path: Path) -> None:
    """Several processes race for one name's spawn lock: never two holders (the lock used to be
    unlinked while held, so a process that had opened the old file locked a dead inode while a third
    one created and locked a new file)."""
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[int] = ctx.Queue()
    holders = str(tmp_path / "holder")
    procs = [ctx.Process(target=_race, args=(str(tmp_path), holders, 3000, out)) for _ in range(4)]
    started = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    overlaps = sum(out.get(timeout=5) for _ in procs)
    assert overlaps == 0, f"{overlaps} times two processes held the spawn lock at once"
    assert time.monotonic() - started < 120


def test_engine_times_keep_their_offset() -> None:
    """A network's ISO time with an offset is that instant, not the same wall clock in UTC (an engine in
    another time zone made a fresh proxy network look hours old to gc)."""
    from datetime import datetime, timezone

    from sandbox.gc import _created

    utc = datetime(2026, 12, 3, 11, 0, 0, 123456, tzinfo=timezone.utc).timestamp()
    assert _created({"Created": "2026-12-03T11:00:00.123456789Z"}) == utc
    assert _created({"Created": "2026-12-03T13:00:00.123456789+02:00"}) == utc
    assert _created({"Created": "2026-12-03T06:00:00.123456-05:00"}) == utc
    assert _created({"Created": "2026-12-03T11:00:00Z"}) == int(utc)
    assert _created({"Created": 1764759600}) == 1764759600.0
    assert abs(_created({"Created": "garbage"}) - time.time()) < 5  # unknown: young, kept


def _compose() -> list[str]:
    import shutil
    import subprocess

    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    assert shutil.which("docker-compose"), "neither `docker compose` nor `docker-compose` is installed"
    return ["docker-compose"]


def test_compose_down_and_ps_work_in_a_new_shell(tmp_path: Path) -> None:
    """compose.yaml's own cleanup line, `docker compose down -v`, in a shell without SANDBOX_REPO (it used
    to fail: "Missing mandatory value"); `ps` and `logs` too."""
    import subprocess
    import uuid

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "ANTHROPIC_"))}
    base = [*_compose(), "-p", f"sbxdown{uuid.uuid4().hex[:8]}", "-f", str(root / "compose.yaml")]
    for args in (["ps"], ["logs"], ["down", "-v", "--remove-orphans"]):
        proc = subprocess.run([*base, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, f"compose {args[0]}: {proc.stderr}"
        assert "SANDBOX_REPO" not in proc.stderr, proc.stderr


def test_the_image_without_sandbox_repo_exits_2_with_one_line(agent_image: str) -> None:
    """What `docker compose up` without SANDBOX_REPO starts: a replica that says why and exits 2."""
    import subprocess

    proc = subprocess.run(["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "-e", "SANDBOX_REPO=",
                           "-e", "SANDBOX_TASK=x", "--label", "sandbox.run-id=" + _run_id(), agent_image],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "SANDBOX_REPO is not set" in proc.stdout + proc.stderr


def _run_id() -> str:
    from tests.conftest import RUN_ID

    return RUN_ID


def test_an_agents_log_is_bounded_by_sandbox_not_the_engines_defaults(env, repo: Path) -> None:  # type: ignore[no-untyped-def]
    """The agent can write to its init's stdout: 60 MB of it leave at most the configured log files on
    the host, whatever the engine's own defaults are (Docker's default json-file log has no bound)."""
    import json
    import subprocess

    from sandbox.engine import LOG_CONFIG

    name = env.ok("spawn", "--agent-cmd", "bash", cwd=repo).out.strip()
    container = f"sandbox-{name}"
    found = json.loads(subprocess.run(["docker", "inspect", container], capture_output=True, text=True,
                                      check=True).stdout)[0]
    assert found["HostConfig"]["LogConfig"] == LOG_CONFIG
    write = subprocess.run(["docker", "exec", container, "sh", "-c",
                            "head -c 45000000 /dev/urandom | base64 > /proc/1/fd/1"], capture_output=True, timeout=120)
    assert write.returncode == 0, write.stderr
    root = subprocess.run(["docker", "info", "-f", "{{.DockerRootDir}}"], capture_output=True, text=True).stdout.strip()
    logs = Path(root) / "containers" / found["Id"]
    if os.access(logs, os.R_OK | os.X_OK):  # (root: CI is)
        size = sum(p.stat().st_size for p in logs.rglob("*") if p.is_file() and "log" in p.name)
        cap = int(LOG_CONFIG["Config"]["max-file"]) * 10 * 1024**2
        assert size <= cap + 2 * 1024**2, f"{size} bytes of logs for {container}, over {cap}"
    env.ok("rm", "--force", name)


def test_tile_notices_when_tmux_refuses(tmp_path: Path) -> None:
    """`sandbox tile`'s options and layout through libtmux's checked calls: a refusal raises (raw
    `cmd()` results were never read, so a pane left unmarked was added again on the next run)."""
    import uuid

    import libtmux
    import pytest
    from libtmux import exc as tmux_exc

    from sandbox import tile

    server = libtmux.Server(socket_name=f"sbx-defects-{uuid.uuid4().hex[:8]}")
    try:
        session = server.new_session(session_name="t", attach=False, window_command="sleep 60")
        window = session.active_window
        pane = window.active_pane
        assert pane is not None
        tile._dress(window)
        tile._mark(pane, "agent-1")
        assert tile._shown(server, "t") == {"agent-1": pane.pane_id}
        window.split(shell="sleep 60")
        window.kill()  # (the session goes with its last window)
        with pytest.raises(tmux_exc.LibTmuxException):
            tile._mark(pane, "agent-1")
        with pytest.raises(tmux_exc.LibTmuxException):
            tile._dress(window)
        with pytest.raises(tmux_exc.LibTmuxException):
            tile._shown(server, "t")
    finally:
        try:
            server.kill()
        except Exception:
            pass


def test_an_engine_refusal_of_the_event_stream_is_the_engines_answer() -> None:
    """A non-200 answer to /events is the engine's status and message (an EngineError, not retried as
    transient), not "cannot reach the Docker engine"."""
    import pytest

    from sandbox.engine import Engine
    from sandbox.errors import EngineError, EngineUnavailable

    with pytest.raises(EngineError) as refused:  # the engine cannot parse this `since`: a 500 with its message
        next(Engine().events(["sandbox.managed=1"], lambda: False, since=float("nan")))
    assert not isinstance(refused.value, EngineUnavailable)
    assert "cannot reach" not in str(refused.value) and "container events" in str(refused.value)


def test_tables_are_measured_in_cells_of_what_is_printed() -> None:
    """`ls`'s columns line up when a task has control characters (printed as \\xNN: four cells each) or
    wide text (CJK, emoji: two cells each), and a line is cut at the terminal's width in cells."""
    from sandbox.terminal import cells, cut, defang, table

    assert cells("abc") == 3 and cells("日本") == 4 and cells("🚀") == 2 and cells("e\u0301") == 1
    rows = [["NAME", "TASK"], ["日本語", "x"], [defang("a\x1bb"), "y"], ["plain", "z"]]
    lines = table(rows)
    starts = {cells(line[: line.rindex(" ") + 1]) for line in lines}
    assert len(starts) == 1, lines  # the last column starts at the same cell on every line
    assert cells(cut("日本語テキスト", 5)) <= 5 and cut("日本語", 5) == "日本"
    assert all(cells(line) <= 8 for line in table(rows, 8))


def test_ls_on_a_terminal_cuts_wide_tasks_at_the_screen_width(env, repo: Path) -> None:  # type: ignore[no-untyped-def]
    """On an 80-column terminal no line of `ls` is wider than 80 cells, with a task of wide characters (cut
    by code points, 80 of them took 160 cells and wrapped)."""
    import pty
    import subprocess
    import sys

    from sandbox.terminal import cells

    task = "日本語のタスク" * 30
    name = env.ok("spawn", "--agent-cmd", "bash", task, cwd=repo).out.strip().splitlines()[0].split()[0]
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "sandbox", "ls"], cwd=repo, stdin=subprocess.DEVNULL,
                              stdout=secondary, stderr=subprocess.PIPE, env={**env.env, "COLUMNS": "80"}, timeout=60)
        os.close(secondary)
        secondary = -1
        out = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert proc.returncode == 0, proc.stderr
    lines = out.decode().replace("\r", "").splitlines()
    assert any(name in line for line in lines) and any("日本語" in line for line in lines), lines
    assert all(cells(line) <= 80 for line in lines), [cells(line) for line in lines]
    env.ok("rm", "--force", name)


def test_push_to_a_node_whose_load_fails_returns_promptly(agent_image: str, tmp_path: Path,
                                                          monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`image push-to-nodes`: a node whose `docker load` fails at once (a context that refuses) is
    reported within seconds (the parent kept the pipe open, so `docker save` blocked on it forever)."""
    import subprocess

    from sandbox.engine.swarm import load_on

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))  # (the test's own contexts, not the user's)
    made = subprocess.run(["docker", "context", "create", "refuses", "--docker",
                           f"host=unix://{tmp_path}/no-engine.sock"], capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    started = time.monotonic()
    why = load_on(agent_image, "refuses", timeout=120)
    assert why is not None and "docker load failed" in why, why
    assert time.monotonic() - started < 60


def _certificates(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    import subprocess

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out", "ca.pem",
            "-days", "1", "-subj", "/CN=sandbox-test-ca")
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                     ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{who}.ext").write_text(ext + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}-key.pem", "-out", f"{who}.csr",
                "-subj", f"/CN={who}")
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                "-out", f"{who}.pem", "-days", "1", "-extfile", f"{who}.ext")


def _tls_front(d: Path, stop: "threading.Event") -> int:  # type: ignore[name-defined]
    """A TLS front of the local engine on 127.0.0.1 that wants a client certificate of the test's CA (what
    an engine's TLS port does): each connection relayed to /var/run/docker.sock. Its port."""
    import socket
    import ssl
    import threading

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "server.pem", d / "server-key.pem")
    ctx.load_verify_locations(d / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)

    def pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while chunk := a.recv(65536):
                b.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                continue
            try:
                conn = ctx.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                raw.close()
                continue
            engine = socket.socket(socket.AF_UNIX)
            engine.connect("/var/run/docker.sock")
            threading.Thread(target=pump, args=(conn, engine), daemon=True).start()
            threading.Thread(target=pump, args=(engine, conn), daemon=True).start()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1])


def test_a_docker_context_with_tls_is_dialled_with_its_certificates(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A Docker context whose engine wants TLS (`tcp://…` + ca/cert/key): sandbox talks to it with the
    context's certificates, through docker-py's ContextAPI (only its Host reached docker-py before)."""
    import subprocess
    import threading

    import pytest

    from sandbox.engine import Engine

    _certificates(tmp_path)
    stop = threading.Event()
    port = _tls_front(tmp_path, stop)
    try:
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
        monkeypatch.delenv("DOCKER_HOST", raising=False)
        made = subprocess.run(["docker", "context", "create", "tlsnode", "--docker",
                               f"host=tcp://127.0.0.1:{port},ca={tmp_path}/ca.pem,cert={tmp_path}/client.pem,"
                               f"key={tmp_path}/client-key.pem"], capture_output=True, text=True, timeout=30)
        assert made.returncode == 0, made.stderr
        from sandbox.errors import UsageError

        with pytest.raises(UsageError, match="config.json"):  # docker-py finds contexts beside it only
            Engine(context="tlsnode").runtimes()
        (tmp_path / "docker" / "config.json").write_text("{}")
        assert Engine(context="tlsnode").runtimes(), "no runtimes: the TLS engine did not answer"
        monkeypatch.setenv("DOCKER_CONTEXT", "tlsnode")  # the current context, as `docker context use` makes it
        assert Engine().list_containers(["sandbox.test-nothing-has-this"]) == []
    finally:
        stop.set()
