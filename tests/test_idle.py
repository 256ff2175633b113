"""An idle hook-less agent costs no resident Python: its supervisor parks (an exec of a tiny `sh`,
see `sandbox.inside.supervisor.PARK`) and comes back on a tmux hook, the pane's output or a time limit. These
check that every behaviour holds across a park (no timing assertions: the cost is measured in
bench/run.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import Env, wait_for
from tests.test_status import FAST, docker_json, row


def init_args(container: str) -> str:
    """The command line of the container's supervisor process (tini's child)."""
    return subprocess.run(["docker", "exec", container, "sh", "-c", "ps -o args= -p $(cat /tmp/.sandbox/init.pid)"],
                          capture_output=True, text=True).stdout.strip()


def parked(container: str) -> bool:
    return init_args(container).startswith("/bin/sh -c")


@pytest.mark.slow
def test_parked_shell_sees_send_output_death_and_stop(env: Env, repo: Path) -> None:
    name = env.ok("spawn", "--name", "park-a", "--retries", "3", "--agent-cmd", "bash", cwd=repo,
                  extra=FAST).out.strip()
    container = f"sandbox-{name}"
    assert env.run("wait", name, "--until", "idle", "--timeout", "60").code == 0
    wait_for(lambda: parked(container), 90, "the idle supervisor parked")

    # A send to a parked shell: busy, then idle again, with the command's output as the answer.
    res = env.ok("send", name, "echo park-$((6*7))", "--wait", "--timeout", "60")
    assert "park-42" in res.out
    assert row(env, name)["state"] == "idle"
    wait_for(lambda: parked(container), 90, "parked again")

    # Output with no input (a background job) while parked: seen as activity (tmux's alert wakes it).
    env.ok("send", name, "(sleep 25; echo late-output) &")
    wait_for(lambda: parked(container), 90, "parked while the job sleeps")
    before = float(row(env, name)["agent_state"]["activity"])
    assert "late-output" not in env.ok("logs", name).out.replace("echo late-output", "")
    wait_for(lambda: "late-output" in env.ok("logs", name).out.replace("echo late-output", ""), 90, "the late output")
    wait_for(lambda: float(row(env, name)["agent_state"]["activity"]) > before, 60,
             "the late output counted as activity")
    assert env.run("wait", name, "--until", "idle", "--timeout", "60").code == 0

    # The agent killed while parked: restarted (attempt 2), then idle and parked again.
    wait_for(lambda: parked(container), 90, "parked before the kill")
    env.ok("exec", name, "--", "pkill", "-KILL", "-x", "bash")
    wait_for(lambda: (lambda r: r["attempt"] == 2 and r["state"] == "idle")(row(env, name)), 90, "restarted")
    wait_for(lambda: parked(container), 90, "parked after the restart")

    # docker stop while parked: the state says stopped (the supervisor's TERM path ran).
    subprocess.run(["docker", "stop", container], capture_output=True, check=True)
    r = row(env, name)
    assert r["state"] == "stopped" and r["agent_state"].get("ended"), r
    assert not docker_json(container)["State"]["Running"]
    env.ok("rm", "--force", name)


@pytest.mark.slow
def test_time_limit_reached_while_parked(env: Env, repo: Path) -> None:
    name = env.ok("spawn", "--name", "park-t", "--max-time", "25", "--agent-cmd", "bash", cwd=repo).out.strip()
    container = f"sandbox-{name}"
    wait_for(lambda: parked(container) or row(env, name)["state"] == "stopped", 60, "parked (or already stopped)")
    res = env.run("wait", name, "--until", "exited", "--timeout", "120")
    assert res.code == 0 and res.out.strip() == "stopped", res
    assert "max-time" in row(env, name)["reason"]
    assert docker_json(container)["State"]["Running"]  # kept up: logs, work
    env.ok("rm", "--force", name)
