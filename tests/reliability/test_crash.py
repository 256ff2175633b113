"""Crash matrix: the CLI SIGKILLed at every step of spawn, rm, merge and gc --apply.

``SANDBOX_TEST_CRASH_AT=STEP`` (sandbox/crash.py) makes the CLI kill itself with SIGKILL at that
step. Afterwards the next ``gc --apply`` (or the same command again) must leave either the state
before or the finished state: no work lost, nothing of ours left over, nothing foreign touched.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from sandbox import crash
from tests.conftest import RUN_ID, Env, git, leftovers, make_env, make_repo
from tests.reliability.conftest import MARKS, count, record

pytestmark = MARKS
REPS = count(1, 20)
SPAWN = [s for s in crash.STEPS if s.startswith("spawn:")]
RM = [s for s in crash.STEPS if s.startswith("rm:")]
MERGE = [s for s in crash.STEPS if s.startswith("merge:")]
results: dict[str, dict[str, int]] = {}


def killed(env: Env, step: str, *args: str, cwd: Path) -> None:
    res = env.run(*args, cwd=cwd, extra={crash.ENV: step})
    assert res.code == -9, f"{step}: expected the crash, got {res.code}: {res.err}"


def outcome(step: str, which: str) -> None:
    results.setdefault(step, {"before": 0, "finished": 0})[which] += 1


def nothing_of_ours(env: Env, repo: Path) -> None:
    left = leftovers(env, repo)
    assert left == {"containers": [], "workspaces": [], "branches": [], "registered": []}, left
    assert not [p for p in (env.data / "state").glob("*")], "state dirs left"
    assert not [p for p in (env.data / "spawning").glob("*")], "spawn locks left"


def exists(container: str) -> bool:
    return subprocess.run(["docker", "inspect", container], capture_output=True).returncode == 0


@pytest.fixture
def world(tmp_path: Path, agent_image: str):  # type: ignore[no-untyped-def]
    env = make_env(tmp_path, agent_image)
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "foreign")  # not ours: never touched
    foreign = f"foreign-{RUN_ID}-{tmp_path.name[-6:]}"
    subprocess.run(["docker", "create", "--name", foreign, "--label", f"sandbox.run-id={RUN_ID}",
                    "--label", "sandbox.name=sp0", "--label", "sandbox.worktree=/nowhere", "--entrypoint", "true", agent_image],
                   check=True, capture_output=True)
    yield env, repo
    assert exists(foreign), "a foreign container was removed"
    assert "foreign" in git(repo, "branch", "--list", "foreign")
    subprocess.run(["docker", "rm", "-f", foreign], capture_output=True)


def agent_with_work(env: Env, repo: Path, name: str) -> None:
    """An agent with a commit of its own and an uncommitted file: work that must never be lost."""
    env.ok("spawn", "--name", name, "--agent-cmd", "sleep infinity", cwd=repo)
    res = env.run("exec", name, "--", "sh", "-c",
                  f"echo {name} > c.txt && git add c.txt && git commit -qm 'commit of {name}' && echo wip-{name} > wip.txt")
    assert res.code == 0, res.err


def work_is_safe(repo: Path, name: str) -> None:
    """The agent's commit is on its branch, its uncommitted file in a backup."""
    assert git(repo, "show", f"sandbox/{name}:c.txt").strip() == name
    refs = git(repo, "for-each-ref", "--format=%(refname)", f"refs/sandbox/backup/{name}/").split()
    assert any(git(repo, "show", f"{ref}:wip.txt").strip() == f"wip-{name}" for ref in refs), refs


@pytest.mark.parametrize("step", SPAWN)
def test_spawn_killed_at_each_step(world, step: str) -> None:  # type: ignore[no-untyped-def]
    env, repo = world
    for i in range(REPS):
        name = f"sp{i}"
        killed(env, step, "spawn", "--name", name, "--agent-cmd", "sleep infinity", cwd=repo)
        env.ok("gc", "--apply", cwd=repo)
        rows = {r["name"]: r for r in env.ok("ls", "--json", cwd=repo).json()}
        if name in rows:  # finished: a working agent, which `ls` shows and `rm` removes
            assert rows[name]["engine_state"] == "running", rows[name]
            env.ok("send", name, "still there")
            env.ok("rm", "--delete-branch", name, cwd=repo)
            outcome(step, "finished")
        else:
            outcome(step, "before")
        nothing_of_ours(env, repo)
    want = {"spawn:workspace": "before", "spawn:create": "before"}.get(step, "finished")
    assert results[step][want] == REPS, results[step]


@pytest.mark.parametrize("step", RM)
def test_rm_killed_at_each_step(world, step: str) -> None:  # type: ignore[no-untyped-def]
    env, repo = world
    for i in range(REPS):
        name = f"rm{i}"
        agent_with_work(env, repo, name)
        killed(env, step, "rm", "--force", name, cwd=repo)
        env.ok("gc", "--apply", cwd=repo)
        if exists(f"sandbox-{name}"):  # before: nothing happened; the same command again finishes
            outcome(step, "before")
            env.ok("rm", "--force", name, cwd=repo)
        else:
            outcome(step, "finished")
        work_is_safe(repo, name)
        assert not exists(f"sandbox-{name}")
        assert not (env.data / "state" / name).exists() and not list((env.data / "workspaces").glob(f"*/{name}"))
        assert not list((env.data / "agent-git").glob(f"*/{name}"))
    record(f"crash {step}", results[step])


@pytest.mark.parametrize("step", MERGE)
def test_merge_killed_at_each_step(world, step: str) -> None:  # type: ignore[no-untyped-def]
    env, repo = world
    for i in range(REPS):
        name = f"mg{i}"
        agent_with_work(env, repo, name)
        main_before = git(repo, "rev-parse", "main").strip()
        killed(env, step, "merge", name, cwd=repo)
        assert git(repo, "status", "--porcelain").strip() == "", "the main checkout is left dirty"
        merged = git(repo, "rev-parse", "main").strip() != main_before
        outcome(step, "finished" if merged else "before")
        env.ok("merge", name, cwd=repo)  # the same command again: finished (or nothing more to do)
        assert git(repo, "show", "main:c.txt").strip() == name
        assert git(repo, "status", "--porcelain").strip() == ""
        env.ok("rm", "--force", name, cwd=repo)
    record(f"crash {step}", results[step])


def test_gc_killed_mid_apply(world) -> None:  # type: ignore[no-untyped-def]
    env, repo = world
    for i in range(REPS):
        names = [f"gc{i}a", f"gc{i}b"]
        for name in names:
            agent_with_work(env, repo, name)
            env.ok("sync", name, cwd=repo)
            subprocess.run(["docker", "rm", "-f", f"sandbox-{name}"], check=True, capture_output=True)  # orphans
        killed(env, "gc:action", "gc", "--apply", cwd=repo)
        outcome("gc:action", "finished")
        env.ok("gc", "--apply", cwd=repo)
        for name in names:
            work_is_safe(repo, name)
            assert not (env.data / "state" / name).exists() and not list((env.data / "workspaces").glob(f"*/{name}"))
        assert env.ok("gc", cwd=repo).out.count("would rm") == 0
    record("crash gc:action", results["gc:action"])


def test_zz_record_spawn_matrix() -> None:
    for step in SPAWN:
        if step in results:
            record(f"crash {step}", results[step])
    time.sleep(0)
