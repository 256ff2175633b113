"""Mission control: `wait --any`, the `notify` command, `sandbox top` (textual's headless pilot against
real agents) and `sandbox tile` (a real tmux server on its own socket)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Env, wait_for

PROMPT = "read -p 'Continue? (y/n) ' answer"  # the hook-less fallback calls this pane `waiting`


@pytest.mark.slow
def test_wait_any_returns_the_first_agent_that_needs_you_and_runs_notify(env: Env, repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "notified"
    (repo / ".sandbox.toml").write_text(
        "notify = " + json.dumps(f"sh -c 'echo \"$SANDBOX_AGENT $SANDBOX_STATE $SANDBOX_BRANCH\" > {out}'") + "\n")
    env.ok("spawn", "--agent-cmd", "bash", "--name", "w-1", cwd=repo)
    env.ok("spawn", "--agent-cmd", "bash", "--name", "w-2", cwd=repo)
    none = env.run("wait", "--any", "--until", "waiting", "--timeout", "1", cwd=repo)
    assert none.code == 9 and none.err.startswith("sandbox: error: no agent waiting after 1s"), none.err

    waiter = subprocess.Popen([env.python, "-m", "sandbox", "wait", "--any", "--until", "waiting", "--notify",
                               "--timeout", "60"], cwd=repo, env=env.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        env.ok("send", "w-2", PROMPT, cwd=repo)
        got, err = waiter.communicate(timeout=90)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, err
    assert got.strip() == "w-2 waiting"
    wait_for(lambda: out.exists() and out.read_text().strip() == "w-2 waiting sandbox/w-2", 10, "the notify command")
    # already waiting: at once
    assert env.ok("wait", "--any", "--until", "waiting", "--timeout", "5", cwd=repo).out.strip() == "w-2 waiting"
    both = env.run("wait", "w-1", "--any", cwd=repo)
    assert both.code == 2 and "name an agent, or pass --any" in both.err
    (repo / ".sandbox.toml").write_text('notify = "unclosed \'quote"\n')
    bad = env.run("wait", "w-2", "--until", "waiting", "--notify", "--timeout", "5", cwd=repo)
    assert bad.code == 2 and bad.err.startswith("sandbox: error: invalid setting notify="), bad.err
