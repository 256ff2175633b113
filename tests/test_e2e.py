"""End to end with the real engine, git, tmux and the real Claude Code binary (mock model)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Env, git, wait_for

pytestmark = pytest.mark.slow


def inspect(container: str) -> dict:
    out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]


@pytest.mark.claude
def test_claude_spawn_commit_send_logs_rm(env: Env, repo: Path) -> None:
    res = env.ok("spawn", "--model", "sonnet", "add login rate limiting", cwd=repo)
    name = res.out.strip()
    assert name.startswith("sonnet-")
    assert f"docker exec -it sandbox-{name} tmux attach -t {name}" in res.err
    branch = f"sandbox/{name}"

    # The scripted model makes Claude Code write a file and commit it: both land on the host's branch.
    # (`ls` brings the agent's commits over: the host never reads the agent's git any other way)
    wait_for(lambda: env.ok("ls", cwd=repo) and "SANDBOX_TASK.md" in git(repo, "ls-tree", "--name-only", branch),
             90, "the agent's commit")
    assert git(repo, "show", f"{branch}:SANDBOX_TASK.md") == "# Task\n\nadd login rate limiting\n"
    assert "sandbox: add login rate limiting" in git(repo, "log", "-1", "--format=%s", branch)
    assert git(repo, "log", "-1", "--format=%an <%ae>", branch).strip() == "Test User <test@example.invalid>"

    rows = env.ok("ls", "--json", cwd=repo).json()
    (row,) = [r for r in rows if r["name"] == name]
    assert row["agent"] == "claude" and row["model"] == "sonnet" and row["branch"] == branch
    assert row["repo"] == str(repo) and row["task"] == "add login rate limiting"
    labels = inspect(f"sandbox-{name}")["Config"]["Labels"]
    for key in ("managed", "schema", "name", "agent", "model", "repo", "branch", "base", "worktree", "image",
                "profile", "created", "version", "task"):
        assert f"sandbox.{key}" in labels, key
    assert labels["sandbox.base"] == git(repo, "rev-parse", "main").strip()

    wait_for(lambda: env.ok("ls", "--json", cwd=repo).json()[0]["state"] == "idle", 60, "idle after the task")
    env.ok("send", name, "now write the docs", cwd=repo)
    wait_for(lambda: env.ok("logs", name).out.count("Done: wrote SANDBOX_TASK.md") >= 2, 90, "second answer")
    assert "now write the docs" in env.ok("logs", name).out
    wait_for(lambda: env.ok("ls", cwd=repo) and "now write the docs" in git(repo, "log", "-1", "--format=%s", branch),
             60, "second commit")

    workspace = Path(row["workspace"])
    assert workspace.is_dir()
    assert env.run("rm", name, cwd=repo).code == 5  # its commits are neither merged nor pushed
    env.ok("rm", "--force", name, cwd=repo)       # backed up under refs/sandbox/backup/, then removed
    assert subprocess.run(["docker", "inspect", f"sandbox-{name}"], capture_output=True).returncode != 0
    assert not workspace.exists()
    assert str(workspace) not in git(repo, "worktree", "list")
    assert git(repo, "rev-parse", "--verify", branch).strip()  # the branch (the work) stays


def test_shell_agent_send_is_byte_exact(env: Env, repo: Path) -> None:
    name = env.ok("spawn", "--agent-cmd", "sh -c 'cat > received.txt'", cwd=repo).out.strip()
    assert name.startswith("sh-")
    text = "quotes ' \" `x` $HOME $(id) ; && | \\ back\\slash \\; unicode ü → 日本 end;"
    env.ok("send", name, text)
    workspace = Path(env.ok("ls", "--json", cwd=repo).json()[0]["workspace"])
    wait_for(lambda: (workspace / "received.txt").exists() and (workspace / "received.txt").read_text().endswith("\n"),
             20, "the text to arrive")
    assert (workspace / "received.txt").read_text() == text + "\n"
    env.ok("rm", "--force", name)


def test_exec_attach_command_and_lifecycle(env: Env, repo: Path) -> None:
    name = env.ok("spawn", "--name", "worker", "--agent-cmd", "bash", "echo started-$((6*7))", cwd=repo).out.strip()
    assert name == "worker"
    wait_for(lambda: "started-42" in env.ok("logs", name).out, 20, "the task typed into bash")
    res = env.run("exec", name, "--", "git", "status", "--short", "--branch")
    assert res.code == 0 and "## sandbox/worker" in res.out
    res = env.run("exec", name, "--", "sh", "-c", "exit 3")
    assert res.code == 3

    # Files written by the agent commit on the host's branch (the agent runs unprivileged).
    res = env.run("exec", name, "--", "sh", "-c", "id -u; echo x > a.txt && git add a.txt && git commit -qm agent-commit")
    assert res.code == 0, res.err
    assert res.out.strip() != "0"

    # Stopped before any sandbox command looked: `ls` brings the commit over with a reader container.
    assert env.ok("stop", name).out.strip() in ("stopped", "exited")
    assert env.ok("ls", "--json", cwd=repo).json()[0]["engine_state"] == "exited"
    assert git(repo, "log", "-1", "--format=%s", "sandbox/worker").strip() == "agent-commit"
    assert env.ok("start", name).out.strip() in ("busy", "idle")
    env.ok("send", name, "echo again-$((7*7))")
    wait_for(lambda: "again-49" in env.ok("logs", name).out, 20, "typing after restart")
    env.ok("rm", "--force", name)  # agent-commit is neither merged nor pushed
    assert env.ok("ls", "--json", cwd=repo).json() == []


def test_workspace_under_a_private_home_is_reachable(env: Env, repo: Path) -> None:
    """Root's default data dir is under /root (mode 700 in most images): the agent must still reach it."""
    import os
    import shutil

    from tests.conftest import RUN_ID

    if os.getuid() != 0:
        pytest.skip("the private home case is root's")
    data = Path("/root/.cache") / f"sandbox-{RUN_ID}"
    try:
        extra = {"XDG_DATA_HOME": str(data)}
        name = env.ok("spawn", "--agent-cmd", "bash", cwd=repo, extra=extra).out.strip()
        res = env.run("exec", name, "--", "sh", "-c", "pwd && echo x > f.txt && git add f.txt && git commit -qm home",
                      extra=extra)
        assert res.code == 0, res.err
        assert res.out.strip().startswith(str(data))
        env.ok("sync", name, extra=extra)
        assert git(repo, "log", "-1", "--format=%s", f"sandbox/{name}").strip() == "home"
        env.ok("rm", "--force", name, extra=extra)
    finally:
        shutil.rmtree(data, ignore_errors=True)
