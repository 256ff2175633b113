"""Guards the agent cannot switch off (issue 26 item 5): ``max_time`` is enforced from outside the container
too. The container's supervisor is root (the agent cannot signal it); here it is frozen from the host, as a
hung or broken supervisor would be, and the host's next listing stops the agent, its work kept, and says why.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import Env, git, wait_for


BOUND = 90


def row(env: Env, repo: Path, name: str) -> dict[str, object]:
    rows = env.ok("ls", "--json", cwd=repo, timeout=BOUND).json()
    return next(r for r in rows if r["name"] == name)


@pytest.mark.slow
def test_max_time_is_enforced_by_the_host_when_the_supervisor_cannot(env: Env, repo: Path) -> None:
    name = env.ok("spawn", "--name", f"mt-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", "--max-time", "4",
                  cwd=repo).out.strip()
    container = f"sandbox-{name}"
    try:
        env.ok("exec", name, "--", "sh", "-c", "echo kept > work.txt && git add work.txt && git commit -qm work",
               cwd=repo)
        # every process the container's init started (its supervisor, parked or not, and tmux) frozen: only
        # root on the host can do this; nothing inside will stop the agent now
        subprocess.run(["docker", "exec", "-u", "0", container, "sh", "-c",
                        "for p in $(cat /proc/1/task/1/children); do kill -STOP $p; done"], check=True, timeout=30)
        assert row(env, repo, name)["state"] not in ("stopped", "exited")  # (within its time and grace: left alone)
        time.sleep(4 + 4 + 1)  # (its limit, then the grace its supervisor has: min(30 s, the limit))
        found = row(env, repo, name)
        assert found["state"] in ("stopped", "exited"), found
        assert "max-time 4s passed" in str(found["reason"]) and "stopped by the host" in str(found["reason"]), found
        running = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", container], capture_output=True,
                                 text=True, check=True).stdout.strip()
        assert running == "false"
        env.ok("sync", name, cwd=repo)  # its work is kept (read by a reader container)
        assert git(repo, "show", f"sandbox/{name}:work.txt") == "kept\n"
    finally:
        env.run("rm", "--force", name, cwd=repo, timeout=BOUND)


@pytest.mark.slow
def test_the_supervisor_stops_it_first_and_the_host_leaves_it(env: Env, repo: Path) -> None:
    """A working supervisor stops the agent itself at its max-time: the host's watch finds nothing to do
    (the reason is the supervisor's, the container keeps running for its work)."""
    name = env.ok("spawn", "--name", f"mt-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", "--max-time", "3",
                  cwd=repo).out.strip()
    try:
        wait_for(lambda: row(env, repo, name)["state"] == "stopped", 60, "the supervisor's own stop")
        time.sleep(4)  # (past the grace too)
        found = row(env, repo, name)
        assert found["state"] == "stopped" and "stopped by the host" not in str(found["reason"]), found
        assert "max-time 3s reached" in str(found["reason"]), found
    finally:
        env.run("rm", "--force", name, cwd=repo, timeout=BOUND)


def test_engine_times_are_read_with_their_zone_and_nanoseconds() -> None:
    from datetime import datetime, timezone

    from sandbox.timelimit import _epoch, grace

    utc = datetime(2026, 12, 3, 16, 33, 21, 123456, tzinfo=timezone.utc).timestamp()
    assert _epoch("2026-12-03T16:33:21.123456789Z") == pytest.approx(utc)
    assert _epoch("2026-12-03T18:33:21.123456789+02:00") == pytest.approx(utc)
    assert _epoch("2026-12-03T16:33:21+00:00") == pytest.approx(utc - 0.123456)
    assert _epoch("0001-01-01T00:00:00Z") is None and _epoch("") is None and _epoch("soon") is None
    assert grace(4) == 4 and grace(1) == 2 and grace(3600) == 30


def test_a_silent_supervisors_agent_is_still_stopped_when_its_time_is_over() -> None:
    """`ls` calls an agent whose supervisor went silent `failed`, but its agent may run on: only what the
    supervisor itself wrote (stopped, exited, failed) keeps the host's hands off."""
    import time as time_

    from sandbox.manager import Sandbox
    from sandbox.timelimit import overdue

    now = time_.time()
    labels = {"sandbox.max-time": "60"}
    silent = Sandbox(name="s-1", container_id="c" * 12, container_name="sandbox-s-1", labels=labels,
                     engine_state="running", status="Up", agent_state={"state": "busy", "ts": now - 3600})
    assert silent.state == "failed"  # (what ls shows: the supervisor stopped answering)
    assert "stopped by the host" in overdue(silent, now - 120, now)
    assert overdue(silent, now - 70, now) == ""  # (within its limit and grace)
    stopped = Sandbox(name="s-2", container_id="d" * 12, container_name="sandbox-s-2", labels=labels,
                      engine_state="running", status="Up", agent_state={"state": "stopped", "ts": now - 3600})
    assert overdue(stopped, now - 120, now) == ""
    unlimited = Sandbox(name="s-3", container_id="e" * 12, container_name="sandbox-s-3", labels={},
                        engine_state="running", status="Up", agent_state={"state": "busy", "ts": now})
    assert overdue(unlimited, now - 10 ** 6, now) == ""
