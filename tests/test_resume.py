"""A restarted Claude Code agent comes back ready (no dialog) and continues its conversation.

Real Claude Code against the scripted model in the container: the model's log records, for each
request, the prompts of the conversation it was sent, so the test sees what the model sees.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import Env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.claude]

DIALOG = "Bypass Permissions mode"


def model_log(container: str) -> list[dict]:
    out = subprocess.run(["docker", "exec", container, "cat", "/tmp/sandbox-mock.log"], capture_output=True,
                         text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def state(env: Env, name: str) -> dict:
    (row,) = [r for r in env.ok("ls", "--json").json() if r["name"] == name]
    return row


def turn(env: Env, name: str, prompt: str) -> list[str]:
    """Send a prompt, wait for the answer; the conversation the model saw for it."""
    answer = env.ok("send", name, prompt, "--wait", "--timeout", "90").out
    assert "Done: wrote SANDBOX_TASK.md" in answer, answer
    seen = [r["prompts"] for r in model_log(f"sandbox-{name}") if r.get("prompts") and r["prompts"][-1] == prompt]
    assert seen, f"the model never saw {prompt!r}"
    return seen[-1]


@pytest.mark.parametrize("profile", ["default", "locked"])  # locked: $HOME is a tmpfs, lost on restart
def test_claude_resumes_its_conversation_after_restart_retry_and_container_death(env: Env, repo, profile) -> None:
    name = env.ok("spawn", "--profile", profile, "--name", f"res-{profile}", "first task", cwd=repo).out.strip()
    container = f"sandbox-{name}"
    wait_for(lambda: state(env, name)["agent_state"].get("stops", 0) >= 1, 90, "the first turn")
    assert state(env, name)["agent_state"].get("session_id")

    def came_back(attempt: int, how: str) -> None:
        wait_for(lambda: (s := state(env, name))["attempt"] == attempt and s["state"] == "idle", 90,
                 f"ready again after {how}")
        row = state(env, name)
        assert row["agent_state"].get("resumed") is True, row
        assert DIALOG not in env.ok("logs", name).out

    # 1. `sandbox restart`: ready (no dialog, no ready timeout), the conversation continued
    res = env.run("restart", name, timeout=120)
    assert res.code == 0, res.err
    assert res.out.strip() == "idle"
    came_back(2, "sandbox restart")
    assert turn(env, name, "second prompt") == ["first task", "second prompt"]

    # 2. the agent's process dies: the supervisor's retry resumes it
    subprocess.run(["docker", "exec", container, "pkill", "-KILL", "-f", "^claude "], check=True)
    came_back(3, "the agent was killed")
    assert turn(env, name, "third prompt") == ["first task", "second prompt", "third prompt"]

    # 3. the container's init dies (the container with it): the engine starts it again, resumed
    # (pkill's own exec dies with the container when it is quick to stop: 137 then, not a failure)
    killed = subprocess.run(["docker", "exec", container, "pkill", "-KILL", "-f", "sandbox.inside init"],
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode in (0, 137), killed
    came_back(4, "the container died")
    assert turn(env, name, "fourth prompt") == ["first task", "second prompt", "third prompt", "fourth prompt"]
    # the task was never given again: every conversation the model saw starts with it, once
    assert all(r["prompts"].count("first task") == 1 for r in model_log(container) if r.get("prompts"))
    env.ok("rm", "--force", name)
