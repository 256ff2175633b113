"""The agent is the adversary: attacks performed from inside real containers.

What the agent can write (its state dir: ``state.json``, ``reply.txt``) is untrusted input to the host;
agents must not reach each other; resources are limited by default. Every command is bounded in time
(subprocess timeouts), so a host command that blocks fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AGENT_NETWORK, RUN_ID, Env, network_exists, wait_for

pytestmark = pytest.mark.slow
STATE = "/run/sandbox-state"
BOUND = 30  # seconds: any one command


def docker_json(*args: str) -> dict:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=BOUND).stdout
    return json.loads(out)[0]


def spawn_bash(env: Env, repo: Path, **extra: str) -> str:
    return env.ok("spawn", "--agent-cmd", "bash", cwd=repo, extra=extra or None, timeout=120).out.strip()


def background(env: Env, name: str, script: str, tag: str = "plant", *, owner: bool = False) -> None:
    """Run ``script`` in the background inside the agent's container, as the agent (pid in /tmp/<tag>.pid).
    ``owner``: as the state dir's owner instead — the supervisor's (root here); an agent shares that uid
    when a non-root host user runs it as its own uid, so the host must read what it plants there safely.
    (As root, the agent itself cannot write the state file: tests/test_hostile_uids.py.)"""
    wrapped = f"echo $$ > /tmp/{tag}.pid; {script}"
    argv = ["sh", "-c", f"nohup sh -c {shlex.quote(wrapped)} >/dev/null 2>&1 &"]
    if owner:
        subprocess.run(["docker", "exec", f"sandbox-{name}", *argv], check=True, timeout=BOUND)
    else:
        env.ok("exec", name, "--", *argv, timeout=BOUND)


def halt(env: Env, name: str, tag: str = "plant") -> None:
    subprocess.run(["docker", "exec", f"sandbox-{name}", "sh", "-c", f"kill $(cat /tmp/{tag}.pid)"], check=True,
                   timeout=BOUND)


def plant_loop(make: str, target: str) -> str:
    """Keep ``target`` in the state dir replaced by what ``make .plant`` makes: the init rewrites
    state.json now and then (atomically), which would undo a single plant."""
    return f"cd {STATE} && while :; do {make} .plant && mv -fT .plant {target}; sleep 0.05; done"


@pytest.fixture
def secret() -> Iterator[tuple[Path, str]]:
    """A JSON file only root may read on the host, with a unique marker (the tests run as root)."""
    marker = f"SBX-SECRET-{uuid.uuid4().hex}"
    d = Path(tempfile.mkdtemp(prefix="sbx-secret-"))  # mode 0700, owned by root
    path = d / f"sbx-secret-{uuid.uuid4().hex}.json"
    path.write_text(json.dumps({"state": "idle", "reason": marker, "secret": marker}))
    path.chmod(0o600)
    try:
        yield path, marker
    finally:
        shutil.rmtree(d, ignore_errors=True)


def ls_json(env: Env, repo: Path, *flags: str) -> tuple[str, dict]:
    res = env.run("ls", "--json", *flags, cwd=repo, timeout=BOUND)
    assert res.code == 0, res.err
    return res.out + res.err, res.json()[0]


# -- 1. files the agent writes for the host ------------------------------------------------------------
def test_state_symlink_to_a_root_only_host_file_is_not_followed(env: Env, repo: Path,
                                                                secret: tuple[Path, str]) -> None:
    path, marker = secret
    name = spawn_bash(env, repo)
    state_file = env.data / "state" / name / "state.json"
    background(env, name, plant_loop(f"ln -sfn {path}", "state.json"), owner=True)
    wait_for(lambda: state_file.is_symlink() and os.readlink(state_file) == str(path), 20, "the planted link")
    assert marker in state_file.read_text()  # the attack is real: a host reader that follows links gets the secret

    reasons = []
    for _ in range(6):
        out, row = ls_json(env, repo)
        assert marker not in out and row["name"] == name
        reasons.append(row["reason"])
        table = env.run("ls", cwd=repo, timeout=BOUND)  # the table
        assert table.code == 0 and marker not in table.out + table.err and name in table.out
        full = env.run("ls", "--json", "--exec-state", cwd=repo, timeout=BOUND, extra={"SANDBOX_SERVER": "0"})
        assert full.code == 0 and marker not in full.out + full.err
        time.sleep(0.2)
    # (the agent's own init rewrites the file now and then: the planted link holds most of the time)
    assert reasons.count("state file is a symbolic link") >= 2, reasons
    wait_for(lambda: "state file is a symbolic link" in env.ok("ls", cwd=repo, timeout=BOUND).out, 20, "the reason")
    res = env.run("wait", name, "--until", "idle", "--timeout", "2", timeout=BOUND)
    # (9 while the link holds; 0 when a poll falls between the init's rewrite and the loop's)
    assert res.code in (0, 9) and marker not in res.out + res.err
    env.ok("rm", "--force", name, timeout=BOUND)


@pytest.mark.claude
def test_reply_symlink_to_a_root_only_host_file_is_not_followed(env: Env, repo: Path, tmp_path: Path,
                                                                secret: tuple[Path, str]) -> None:
    path, marker = secret
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"turns": [], "default": {"steps": [{"text": "The answer is 42."}]}}))
    name = env.ok("spawn", "--mock-script", str(script), cwd=repo, timeout=120).out.strip()
    reply = env.data / "state" / name / "agent" / "reply.txt"
    # The Stop hook replaces reply.txt at the end of each turn; the loop puts the link back at once.
    background(env, name, f"cd {STATE}/agent && while :; do [ -L reply.txt ] || {{ ln -sfn {path} .r && "
                          f"mv -fT .r reply.txt; }}; sleep 0.02; done")
    wait_for(lambda: reply.is_symlink(), 20, "the planted link")
    outcomes = []
    for _ in range(2):
        res = env.run("send", name, "what is the answer", "--wait", "--timeout", "60", timeout=90)
        assert marker not in res.out + res.err
        assert (res.code == 8 and "reply file is a symbolic link" in res.err) or \
            (res.code == 0 and res.out.strip() == "The answer is 42."), (res.code, res.out, res.err)
        outcomes.append(res.code)
    assert 8 in outcomes, outcomes  # the link was in place when the host read (the loop re-plants in 20 ms)
    env.ok("rm", "--force", name, timeout=BOUND)


def test_fifo_state_file_blocks_no_command(env: Env, repo: Path) -> None:
    name = spawn_bash(env, repo)
    state_file = env.data / "state" / name / "state.json"
    # One plant sticks: the init's own next read of state.json blocks on the FIFO (its problem, in its box).
    subprocess.run(["docker", "exec", f"sandbox-{name}", "sh", "-c", f"cd {STATE} && mkfifo .f && mv -fT .f state.json"],
                   check=True, timeout=BOUND)  # (as the state dir's owner: see background)
    wait_for(lambda: stat.S_ISFIFO(os.lstat(state_file).st_mode), 10, "the FIFO")
    reason = "state file is not a regular file (a FIFO)"

    def timed(*args: str, code: int = 0, **kw: object) -> str:
        t0 = time.monotonic()
        res = env.run(*args, cwd=repo, timeout=BOUND, **kw)  # type: ignore[arg-type]
        assert res.code == code, f"sandbox {' '.join(args)}: {res.code}\n{res.out}\n{res.err}"
        assert time.monotonic() - t0 < BOUND
        return res.out

    assert json.loads(timed("ls", "--json"))[0]["reason"] == reason
    assert json.loads(timed("ls", "--json", extra={"SANDBOX_SERVER": "0"}))[0]["reason"] == reason
    assert reason in timed("ls")
    timed("ls", "--exec-state")
    assert timed("exec", name, "--", "echo", "inside").strip() == "inside"
    timed("wait", name, "--until", "idle", "--timeout", "2", code=9)
    timed("logs", name)
    assert stat.S_ISFIFO(os.lstat(state_file).st_mode)  # still planted: every read above met the FIFO
    timed("stop", name)  # (the init is stuck on the FIFO: the engine kills it after 10 s)
    timed("ls")
    timed("gc")
    timed("gc", "--apply")
    timed("rm", "--force", name)
    assert not state_file.parent.exists()


def test_state_symlink_to_dev_zero_and_a_huge_state_file_are_bounded(env: Env, repo: Path) -> None:
    name = spawn_bash(env, repo)
    state_file = env.data / "state" / name / "state.json"
    background(env, name, plant_loop("ln -sfn /dev/zero", "state.json"), owner=True)
    wait_for(lambda: state_file.is_symlink(), 20, "the planted link")
    reasons = []
    for _ in range(4):
        t0 = time.monotonic()
        out, row = ls_json(env, repo)
        assert time.monotonic() - t0 < 10 and len(out) < 64 * 1024
        reasons.append(row["reason"])
    assert reasons.count("state file is a symbolic link") >= 2, reasons
    halt(env, name)

    big = ("[ -f state.json ] && [ ! -L state.json ] && [ $(stat -c %s state.json) -gt 1000000 ] || "
           "{ head -c 3000000 /dev/zero | tr '\\0' ' ' > .big && mv -fT .big state.json; }")
    background(env, name, f"cd {STATE} && while :; do {big}; sleep 0.05; done", tag="big", owner=True)
    wait_for(lambda: not state_file.is_symlink() and state_file.stat().st_size > 1_000_000, 20, "the big file")
    reasons = []
    for _ in range(4):
        t0 = time.monotonic()
        out, row = ls_json(env, repo)
        assert time.monotonic() - t0 < 10 and len(out) < 64 * 1024
        reasons.append(row["reason"])
    assert reasons.count("state file is larger than 256 KiB") >= 2, reasons
    env.ok("rm", "--force", name, timeout=BOUND)


# -- 2. default limits ----------------------------------------------------------------------------------
def test_memory_and_cpus_are_limited_by_default_and_zero_means_unlimited(env: Env, repo: Path) -> None:
    limited = spawn_bash(env, repo)
    hc = docker_json("inspect", f"sandbox-{limited}")["HostConfig"]
    assert hc["Memory"] == 4 * 1024**3 and hc["NanoCpus"] == 2_000_000_000 and hc["PidsLimit"] == 1024
    cgroup = env.ok("exec", limited, "--", "sh", "-c", "cat /sys/fs/cgroup/memory.max 2>/dev/null || "
                    "cat /sys/fs/cgroup/memory/memory.limit_in_bytes", timeout=BOUND).out.strip()
    assert cgroup == str(4 * 1024**3)  # the limit is the container's, as the agent sees it
    free = spawn_bash(env, repo, SANDBOX_MEMORY="0", SANDBOX_CPUS="0")
    hc = docker_json("inspect", f"sandbox-{free}")["HostConfig"]
    assert hc["Memory"] == 0 and hc["NanoCpus"] == 0 and hc["PidsLimit"] == 1024
    custom = spawn_bash(env, repo, SANDBOX_MEMORY="512m", SANDBOX_CPUS="0.5")
    hc = docker_json("inspect", f"sandbox-{custom}")["HostConfig"]
    assert hc["Memory"] == 512 * 1024**2 and hc["NanoCpus"] == 500_000_000
    bad = env.run("spawn", "--agent-cmd", "bash", cwd=repo, extra={"SANDBOX_MEMORY": "lots"}, timeout=BOUND)
    assert bad.code != 0 and "memory must be a size" in bad.err
    for name in (limited, free, custom):
        env.ok("rm", name, timeout=BOUND)


# -- 3. agents cannot reach each other --------------------------------------------------------------------
def _probe(host: str, port: int) -> list[str]:
    return ["python3", "-c", f"import socket; socket.create_connection(({host!r}, {port}), 3).close()"]


def test_agents_cannot_reach_each_other(env: Env, repo: Path) -> None:
    a, b = spawn_bash(env, repo), spawn_bash(env, repo)
    net = docker_json("network", "inspect", AGENT_NETWORK)
    assert net["Driver"] == "bridge" and net["Labels"].get("sandbox.managed") == "1"
    assert net["Options"].get("com.docker.network.bridge.enable_icc") == "false"
    info_a, info_b = docker_json("inspect", f"sandbox-{a}"), docker_json("inspect", f"sandbox-{b}")
    assert list(info_a["NetworkSettings"]["Networks"]) == [AGENT_NETWORK]
    assert list(info_b["NetworkSettings"]["Networks"]) == [AGENT_NETWORK]
    ip_a = info_a["NetworkSettings"]["Networks"][AGENT_NETWORK]["IPAddress"]
    assert ip_a

    env.ok("send", a, "python3 -m http.server 8080 --bind 0.0.0.0", timeout=BOUND)
    # A reaches its own server on its network address (so the check below can fail)...
    wait_for(lambda: env.run("exec", a, "--", *_probe(ip_a, 8080), timeout=BOUND).code == 0, 30,
             "A's server, from A")
    # ...B cannot (the bridge drops container-to-container traffic), and gives up in bounded time.
    t0 = time.monotonic()
    res = env.run("exec", b, "--", *_probe(ip_a, 8080), timeout=BOUND)
    assert res.code != 0 and ("timed out" in res.err or "refused" in res.err.lower()), res.err
    assert time.monotonic() - t0 < 15
    for name in (a, b):
        env.ok("rm", name, timeout=BOUND)


def test_default_profile_reaches_host_services_on_the_gateway(env: Env, repo: Path) -> None:
    """Documented, not blocked (README "Security"): a host service bound to the bridge's gateway
    address (or 0.0.0.0) is reachable from an agent."""
    name = spawn_bash(env, repo)
    gateway = docker_json("network", "inspect", AGENT_NETWORK)["IPAM"]["Config"][0]["Gateway"]
    with socket.socket() as srv:
        srv.bind((gateway, 0))
        srv.listen(1)
        srv.settimeout(BOUND)
        port = srv.getsockname()[1]

        def answer() -> None:
            try:
                conn, _ = srv.accept()
                with conn:
                    conn.sendall(b"hello-from-host\n")
            except OSError:
                pass

        t = threading.Thread(target=answer, daemon=True)
        t.start()
        code = (f"import socket; s = socket.create_connection(({gateway!r}, {port}), 5); "
                "print(s.recv(100).decode().strip())")
        res = env.run("exec", name, "--", "python3", "-c", code, timeout=BOUND)
        t.join(BOUND)
    assert res.code == 0 and res.out.strip() == "hello-from-host", res.err
    env.ok("rm", name, timeout=BOUND)


def test_network_is_made_once_when_spawns_race_and_locked_has_none(env: Env, repo: Path) -> None:
    from sandbox.engine import Engine
    from sandbox.errors import Conflict

    net, direct, foreign, locked_net = (f"sandbox-net-{RUN_ID}-{k}" for k in ("cli", "api", "foreign", "locked"))
    names: list[str] = []
    try:
        # Two spawns at once, on a network neither finds: one creates it, the other reuses it.
        results: list[object] = [None, None]

        def go(i: int) -> None:
            # (explicit names: two auto-named spawns at once can both pick bash-1, and the loser fails
            # with "path already exists" instead of taking the next name)
            results[i] = env.run("spawn", "--name", f"race-{i}", "--agent-cmd", "bash", cwd=repo,
                                 extra={"SANDBOX_NETWORK": net}, timeout=120)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        for res in results:
            assert res is not None and res.code == 0, res  # type: ignore[attr-defined]
            names.append(res.out.strip())  # type: ignore[attr-defined]
        ids = subprocess.run(["docker", "network", "ls", "-q", "--no-trunc", "--filter", f"name=^{net}$"],
                             capture_output=True, text=True, timeout=BOUND).stdout.split()
        assert len(ids) == 1, ids
        for name in names:
            assert list(docker_json("inspect", f"sandbox-{name}")["NetworkSettings"]["Networks"]) == [net]

        # The engine call itself, four at once, under the spawns' lock (the engine's duplicate-name
        # check is not atomic: four concurrent creates can all succeed, and one still being created may
        # not be listed yet, so without the lock picking the oldest does not always converge).
        got: list[str] = []
        locks = repo.parent / f"locks-{RUN_ID}"
        start = threading.Barrier(4)

        def ensure() -> None:
            mine = Engine()
            mine.networks(direct)  # connected before the race (networks are docker-py's lane)
            start.wait(30)
            got.append(mine.ensure_network(direct, {"sandbox.managed": "1"}, lock_dir=locks))

        threads = [threading.Thread(target=ensure) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        ids = subprocess.run(["docker", "network", "ls", "-q", "--no-trunc", "--filter", f"name=^{direct}$"],
                             capture_output=True, text=True, timeout=BOUND).stdout.split()
        assert len(got) == 4 and set(got) == set(ids) and len(ids) == 1, (got, ids)

        # A network of that name that is not ours (containers may talk on it) is refused, not used.
        engine = Engine()
        subprocess.run(["docker", "network", "create", foreign], capture_output=True, check=True, timeout=BOUND)
        with pytest.raises(Conflict, match="not made by sandbox"):
            engine.ensure_network(foreign, {"sandbox.managed": "1"})

        # --profile locked: no network at all, none made.
        locked = env.ok("spawn", "--profile", "locked", "--agent-cmd", "bash", cwd=repo,
                        extra={"SANDBOX_NETWORK": locked_net}, timeout=120).out.strip()
        names.append(locked)
        assert docker_json("inspect", f"sandbox-{locked}")["HostConfig"]["NetworkMode"] == "none"
        assert not network_exists(locked_net)
    finally:
        for name in names:
            env.run("rm", "--force", name, timeout=BOUND)
        for n in (net, direct, foreign, locked_net):  # by id: a lost race leaves two of one name ("ambiguous")
            ids = subprocess.run(["docker", "network", "ls", "-q", "--no-trunc", "--filter", f"name=^{n}$"],
                                 capture_output=True, text=True, timeout=BOUND).stdout.split()
            if ids:
                subprocess.run(["docker", "network", "rm", *ids], capture_output=True, timeout=BOUND)
