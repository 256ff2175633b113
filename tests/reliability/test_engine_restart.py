"""Engine restart: agents on a private Docker engine the test starts (its own socket, data-root and
exec-root, the agent image loaded into it), the engine stopped (as a reboot or a service restart
does) and killed mid-task: every agent is found again, its workspace intact, a running one back by
itself (restart policy), a stopped one still stopped, and Claude Code resumed with its conversation."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Env, git, make_env, make_repo, wait_for
from tests.reliability.conftest import MARKS, record
from tests.reliability.engines import PrivateEngine

pytestmark = [*MARKS, pytest.mark.claude]


@pytest.fixture
def engine(agent_image: str):  # type: ignore[no-untyped-def]
    eng = PrivateEngine()
    try:
        eng.start()
        eng.load(agent_image)
        yield eng
    finally:
        eng.close()


def rows(env: Env) -> dict[str, dict]:
    res = env.run("ls", "--json", timeout=30)
    return {r["name"]: r for r in json.loads(res.out)} if res.code == 0 else {}


def model_prompts(eng: PrivateEngine, name: str) -> list[list[str]]:
    out = eng.docker("exec", f"sandbox-{name}", "cat", "/tmp/sandbox-mock.log").stdout
    return [r["prompts"] for r in map(json.loads, out.splitlines()) if r.get("prompts")]


@pytest.mark.parametrize("how", ["stop", "crash"])
def test_agents_come_back_after_an_engine_restart(engine: PrivateEngine, tmp_path: Path, agent_image: str,
                                                  how: str) -> None:
    env = make_env(tmp_path, agent_image)
    env.env["DOCKER_HOST"] = engine.host
    env.env["SANDBOX_PROFILE"] = "locked"  # no network: the private engine has no bridge
    repo = make_repo(tmp_path / "repo")
    claude = env.ok("spawn", "--name", "cc", "first task", cwd=repo).out.strip()
    shells = [env.ok("spawn", "--name", f"sh{i}", "--agent-cmd", "bash", cwd=repo).out.strip() for i in range(2)]
    stopped = env.ok("spawn", "--name", "off", "--agent-cmd", "bash", cwd=repo).out.strip()
    for name in [*shells, stopped]:
        res = env.run("exec", name, "--", "sh", "-c", f"echo {name} > c.txt && git add c.txt && git commit -qm {name}"
                      f" && echo wip-{name} > wip.txt")
        assert res.code == 0, res.err
    env.ok("stop", stopped)
    wait_for(lambda: rows(env)[claude]["agent_state"].get("stops", 0) >= 1, 90, "Claude Code's first turn")
    env.ok("send", shells[0], "sleep 600")  # mid-task
    before = rows(env)

    # The engine goes down: stopped (a service restart, a clean reboot: the containers are stopped), or
    # crashed (a power cut: the engine and every process of its containers SIGKILLed)
    engine.stop(signal.SIGTERM) if how == "stop" else engine.crash()
    assert env.run("ls", timeout=30).code == 7  # the engine cannot be reached: one line, exit 7
    t_engine = engine.start()
    t0 = time.monotonic()
    # `ls` right at once: every agent there, the running ones running (starting is right while they start)
    found = wait_for(lambda: (r := rows(env)) and set(r) == set(before) and all(
        r[n]["engine_state"] == "running" for n in [claude, *shells]) and r, 30, "every agent listed")
    t_listed = time.monotonic() - t0
    assert found[stopped]["engine_state"] == "exited" and found[stopped]["state"] == "stopped"  # still stopped
    for name in [claude, *shells]:
        assert found[name]["state"] in ("starting", "busy", "idle"), found[name]
    wait_for(lambda: all(rows(env)[n]["state"] in ("idle", "busy") for n in [claude, *shells]), 90, "ready again")
    t_ready = time.monotonic() - t0
    for name in [*shells, stopped]:
        ws = Path(before[name]["workspace"])
        assert (ws / "c.txt").read_text() == f"{name}\n" and (ws / "wip.txt").read_text() == f"wip-{name}\n"
        env.ok("sync", name)
        assert git(repo, "show", f"sandbox/{name}:c.txt").strip() == name
    row = rows(env)[claude]
    assert row["agent_state"].get("resumed") is True and row["attempt"] == 2, row
    answer = env.ok("send", claude, "second prompt", "--wait", "--timeout", "90").out
    assert "Done" in answer
    assert model_prompts(engine, claude)[-1] == ["first task", "second prompt"]  # the conversation continued
    record(f"engine restart ({how})", {"agents": len(before), "rediscovered": len(found), "engine_start_s": round(t_engine, 2),
                                       "all_listed_after_s": round(t_listed, 2), "all_ready_after_s": round(t_ready, 2)})
    for name in [claude, *shells, stopped]:
        env.ok("rm", "--force", name)
