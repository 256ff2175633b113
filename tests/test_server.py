"""The per-user command server (sandbox/client.py, sandbox/server.py): real server processes, the real CLI.

Each test has its own HOME and XDG dirs, so its own server, stopped at teardown (conftest's Env).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from sandbox import client
from tests.conftest import TEST_USER, Env, leftovers, make_env, make_repo, wait_for

CUT = "the command server ended mid-command"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def one_server(env: Env) -> int:
    pids = env.server_pids()
    assert len(pids) == 1, pids
    return pids[0]


def sockets(env: Env) -> list[Path]:
    return sorted(Path(client.socket_dir(env.env)).glob(client.data_key(env.env) + "-*.sock"))


@pytest.fixture(autouse=True)
def served(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are of the server: a suite run with SANDBOX_SERVER=0 still has one here."""
    monkeypatch.delenv("SANDBOX_SERVER", raising=False)


@pytest.fixture
def bare(tmp_path: Path):  # type: ignore[no-untyped-def]
    """An environment for commands that need no image."""
    env = make_env(tmp_path, "sandbox-agent:never-used")
    yield env
    env.stop_server()


def test_several_first_commands_start_one_server(bare: Env, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    procs = [subprocess.Popen([bare.python, "-m", "sandbox", "ls", "--json"], cwd=repo, env=bare.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, outs
    assert {out for out, _ in outs} == {"[]\n"}, outs
    pid = one_server(bare)
    log = (bare.data / "server.log").read_text()
    assert log.count("listening at") == 1, log
    where = Path(client.socket_dir(bare.env))
    assert where.stat().st_mode & 0o777 == 0o700 and where.stat().st_uid == os.getuid()
    assert sockets(bare)[0].stat().st_mode & 0o777 == 0o600
    assert bare.ok("server", "status").out.startswith(f"pid {pid},")


def test_the_same_answers_with_and_without_the_server(bare: Env, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    cases = [("--version",), ("bogus",), ("logs", "nope-1"), ("spawn", "--bogus"), ("ls", "--json"), ("ls",),
             ("send", "nope-1", "hi"), ("diff", "nope-1"), ("wait", "--timeout", "0.1")]
    served = []
    for args in cases:
        through = bare.run(*args, cwd=repo)
        served.append(bare.server_pids())
        alone = bare.run(*args, cwd=repo, extra={"SANDBOX_SERVER": "0"})
        assert (through.code, through.out, through.err) == (alone.code, alone.out, alone.err), args
    assert len({tuple(p) for p in served}) == 1 and len(served[0]) == 1, served  # one server answered them all
    assert bare.run("bogus").code == 2
    missing = bare.run("logs", "nope-1", cwd=repo)
    assert missing.code == 4 and missing.err.startswith("sandbox: error: no agent named 'nope-1'")
    # the request's own settings: a bad value in this command's environment is this command's error only
    bad = bare.run("config", "show", cwd=repo, extra={"SANDBOX_RETRIES": "-1"})
    assert bad.code == 2 and "retries" in bad.err
    assert bare.run("config", "show", cwd=repo).code == 0


def test_a_bad_setting_in_the_user_file_or_cwd_is_read_per_command(bare: Env, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    other = make_repo(tmp_path / "other")
    (other / ".sandbox.toml").write_text('image = "other-image:1"\n')
    import json

    assert json.loads(bare.ok("config", "show", cwd=repo).out)["image"] == "sandbox-agent:never-used"
    shown = json.loads(bare.ok("config", "show", cwd=other, extra={"SANDBOX_IMAGE": ""}).out)
    assert shown["image"] in ("other-image:1", ""), shown  # this command's cwd and environment, not the server's


def test_another_uid_is_refused(unprivileged: Env) -> None:
    assert unprivileged.ok("ls", cwd=unprivileged.root / "repo").out.startswith("NAME")
    socks = list((unprivileged.data / "run").glob("*.sock"))
    assert len(socks) == 1, socks
    with pytest.raises(PermissionError):  # the client never uses a server of another uid
        client.connect(str(socks[0]))
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a client that does not check: the server refuses
    raw.settimeout(10)
    raw.connect(str(socks[0]))
    try:
        client.request(raw, {"op": "run", "key": socks[0].name, "argv": ["ls"], "cwd": "/", "env": {},
                             "umask": 0o22, "tty": [False] * 3}, [0, 1, 2])
    except OSError:
        pass  # closed on us before we sent
    answers = list(client.frames(raw))
    raw.close()
    assert answers and "refused" in answers[0] and "pid" not in answers[0], answers
    assert "refused a connection from uid 0" in (unprivileged.data / "server.log").read_text()


def test_the_runtime_dir_not_writable_runs_the_command_here(unprivileged: Env) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="sbx-rt-"))  # root's, 0755: read-only to the test user
    try:
        runtime.chmod(0o755)
        extra = {"XDG_RUNTIME_DIR": str(runtime)}
        repo = unprivileged.root / "repo"
        res = unprivileged.run("ls", cwd=repo, extra=extra)
        assert res.code == 0 and res.out.startswith("NAME") and res.err == "", res
        missing = unprivileged.run("logs", "nope-1", cwd=repo, extra=extra)
        assert missing.code == 4 and missing.err.startswith("sandbox: error: no agent named"), missing
        assert not list(runtime.iterdir()) and not (unprivileged.data / "server.log").exists()
        assert unprivileged.ok("ls", cwd=repo).out == res.out  # with a writable one: through its server
        assert (unprivileged.data / "server.log").exists()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_server_false_in_the_user_file_or_the_environment_runs_here(bare: Env) -> None:
    assert bare.ok("--version", extra={"SANDBOX_SERVER": "0"}).out == "sandbox 0.1.0\n"
    user_file = Path(bare.env["XDG_CONFIG_HOME"]) / "sandbox" / "config.toml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("server = false\n")
    assert bare.ok("--version").out == "sandbox 0.1.0\n"
    assert bare.run("logs", "nope-1").code == 4
    assert not (bare.data / "server.log").exists() and not bare.server_pids()
    assert bare.ok("config", "show").json()["server"] is False
    user_file.write_text("server = true\nserver_idle = 30\n")
    bare.ok("--version")
    assert len(bare.server_pids()) == 1


def test_idle_exit(bare: Env) -> None:
    bare.ok("--version", extra={"SANDBOX_SERVER_IDLE": "1"})
    log = (bare.data / "server.log").read_text()
    pid = int(log.split("listening at")[0].rsplit("[", 1)[1].split("]")[0])
    wait_for(lambda: not alive(pid), 30, "the idle server to exit")
    assert not sockets(bare)
    assert "idle for 1 s" in (bare.data / "server.log").read_text()


def test_a_killed_server_is_replaced(bare: Env) -> None:
    bare.ok("--version")
    pid = one_server(bare)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 10, "the server to die")
    assert sockets(bare), "the stale socket stays behind"
    assert bare.ok("--version").out == "sandbox 0.1.0\n"
    assert one_server(bare) != pid


def test_a_server_of_other_code_is_replaced(bare: Env, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(Path(client.__file__).parent, src / "sandbox", ignore=shutil.ignore_patterns("__pycache__"))
    bare.env["PYTHONPATH"] = str(src)
    bare.ok("--version")
    old = one_server(bare)
    assert bare.ok("--version").out == "sandbox 0.1.0\n" and one_server(bare) == old  # the same code: reused
    labels = src / "sandbox" / "labels.py"
    labels.write_text(labels.read_text() + "\n# another build\n")
    assert bare.ok("--version").out == "sandbox 0.1.0\n"
    wait_for(lambda: not alive(old), 20, "the old server to stop")
    new = one_server(bare)
    assert new != old and len(sockets(bare)) == 1
    assert "stopped the server of other code" in (bare.data / "server.log").read_text()


@pytest.mark.slow
def test_an_agent_through_the_server(env: Env, repo: Path) -> None:
    """stdin reaches `send NAME -`; exec's exit code passes through; a read-only command cut by a killed
    server runs again in the client."""
    env.ok("spawn", "--name", "srv-1", "--agent-cmd", "bash", cwd=repo)
    assert env.run("send", "srv-1", "-", input="echo piped-$((6*7))\n", cwd=repo).code == 0
    wait_for(lambda: "piped-42" in env.ok("logs", "srv-1", cwd=repo).out, 30, "the piped text in the pane")
    res = env.run("exec", "srv-1", "--", "sh", "-c", "echo out; echo err >&2; exit 3", cwd=repo)
    assert (res.code, res.out, res.err) == (3, "out\n", "err\n")

    waiter = subprocess.Popen([env.python, "-m", "sandbox", "wait", "srv-1", "--until", "exited", "--timeout", "4"],
                              cwd=repo, env=env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = one_server(env)
    wait_for(lambda: _children(pid), 20, "the wait command to run in the server")
    os.kill(pid, signal.SIGKILL)
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 9, (out, err)  # it ran again here, and timed out as asked
    assert f"{CUT} (see " in err and "running `wait` again here" in err, err
    env.ok("rm", "--force", "--delete-branch", "srv-1", cwd=repo)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
def test_a_spawn_cut_by_a_killed_server_leaves_nothing_half(env: Env, repo: Path) -> None:
    env.ok("--version")
    pid = one_server(env)
    spawn = subprocess.Popen([env.python, "-m", "sandbox", "spawn", "--name", "cut-1", "--agent-cmd", "sleep infinity"],
                             cwd=repo, env=env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(leftovers(env, repo).values()), 60, "the spawn to be under way")
    os.kill(pid, signal.SIGKILL)
    out, err = spawn.communicate(timeout=60)
    assert spawn.returncode == client.EXIT_CUT, (out, err)
    lines = [line for line in err.splitlines() if not line.startswith("…")]
    assert len(lines) == 1 and lines[0].startswith(f"sandbox: error: {CUT} (killed?): `sandbox spawn`"), err
    wait_for(lambda: not _children(pid) and not alive(pid), 20, "the server and its command to be gone")
    env.ok("gc", "--apply", cwd=repo)
    rows = {r["name"] for r in env.ok("ls", "--json", cwd=repo).json()}
    if "cut-1" in rows:  # the spawn had finished: a whole agent, removed as any other
        env.ok("rm", "--force", "--delete-branch", "cut-1", cwd=repo)
    assert leftovers(env, repo) == {"containers": [], "workspaces": [], "branches": [], "registered": []}
    assert not list((env.data / "state").glob("*")) and not list((env.data / "spawning").glob("*"))


@pytest.mark.slow
def test_a_command_that_kills_itself_kills_the_client_too(env: Env, repo: Path) -> None:
    res = env.run("spawn", "--name", "crash-1", "--agent-cmd", "sleep infinity", cwd=repo,
                  extra={"SANDBOX_TEST_CRASH_AT": "spawn:workspace"})
    assert res.code == -9, res
    env.ok("gc", "--apply", cwd=repo)
    assert leftovers(env, repo) == {"containers": [], "workspaces": [], "branches": [], "registered": []}
