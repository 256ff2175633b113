"""Bad input: one clear line on stderr, a documented exit code, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Env, git, leftovers, make_repo

pytestmark = pytest.mark.slow

NOTHING = {"containers": [], "workspaces": [], "branches": [], "registered": []}


def one_line_error(res, code: int, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert res.code == code, (res.code, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sandbox: error: "), res.err
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in res.err


def test_not_a_git_repository(env: Env, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    one_line_error(env.run("spawn", "--agent-cmd", "bash", "x", cwd=plain), 3, "not a git repository")
    assert not (env.data / "workspaces").exists()


def test_repository_without_commits(env: Env, tmp_path: Path) -> None:
    empty = make_repo(tmp_path / "empty", commit=False)
    one_line_error(env.run("spawn", "--agent-cmd", "bash", cwd=empty), 3, "no commits")
    assert leftovers(env, empty) == NOTHING


def test_name_taken(env: Env, repo: Path) -> None:
    env.ok("spawn", "--name", "dup", "--agent-cmd", "bash", cwd=repo)
    before = leftovers(env, repo)
    one_line_error(env.run("spawn", "--name", "dup", "--agent-cmd", "bash", cwd=repo), 5, "dup", "taken")
    assert leftovers(env, repo) == before  # the first agent is untouched, nothing new
    env.ok("rm", "dup")
    assert leftovers(env, repo) == {**NOTHING, "branches": ["sandbox/dup"]}


@pytest.mark.parametrize("bad", ["-x", "has space", "a.b", "x" * 64, "ü", "a:b"])
def test_invalid_name(env: Env, repo: Path, bad: str) -> None:
    one_line_error(env.run("spawn", "--name", bad, "--agent-cmd", "bash", cwd=repo), 2, "invalid name")
    assert leftovers(env, repo) == NOTHING


def test_unknown_agent(env: Env, repo: Path) -> None:
    one_line_error(env.run("spawn", "--agent", "nope", "task", cwd=repo), 2, "unknown agent", "claude")
    assert leftovers(env, repo) == NOTHING


def test_engine_unreachable(env: Env, repo: Path, tmp_path: Path) -> None:
    res = env.run("spawn", "--agent-cmd", "bash", cwd=repo, extra={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})
    one_line_error(res, 7, "Docker engine")
    one_line_error(env.run("ls", extra={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"}), 7, "Docker engine")
    assert leftovers(env, repo) == NOTHING


def test_image_missing(env: Env, repo: Path) -> None:
    res = env.run("spawn", "--agent-cmd", "bash", cwd=repo, extra={"SANDBOX_IMAGE": "sandbox-agent:does-not-exist"})
    one_line_error(res, 4, "sandbox-agent:does-not-exist", "sandbox image build")
    assert leftovers(env, repo) == NOTHING


def test_workspace_path_already_there(env: Env, repo: Path) -> None:
    from sandbox.workspace.git import find_repo

    target = env.data / "workspaces" / find_repo(repo).slug / "taken"
    target.mkdir(parents=True)
    (target / "precious.txt").write_text("mine\n")
    one_line_error(env.run("spawn", "--name", "taken", "--agent-cmd", "bash", cwd=repo), 3, "already exists")
    assert (target / "precious.txt").read_text() == "mine\n"  # never touched
    left = leftovers(env, repo)
    assert left["containers"] == [] and left["branches"] == [] and left["registered"] == []


def test_agent_binary_missing_in_image_cleans_up(env: Env, repo: Path) -> None:
    one_line_error(env.run("spawn", "--agent-cmd", "no-such-agent-binary", cwd=repo), 8, "command not found")
    assert leftovers(env, repo) == NOTHING


def test_unknown_base_revision(env: Env, repo: Path) -> None:
    one_line_error(env.run("spawn", "--base", "nope", "--agent-cmd", "bash", cwd=repo), 3, "unknown revision")
    assert leftovers(env, repo) == NOTHING


def test_unknown_agent_name_for_commands(env: Env, repo: Path) -> None:
    for cmd in (["logs", "ghost"], ["send", "ghost", "hi"], ["rm", "ghost"], ["stop", "ghost"], ["attach", "ghost"]):
        one_line_error(env.run(*cmd, cwd=repo), 4, "ghost")


def test_auto_name_skips_a_branch_kept_by_an_earlier_agent(env: Env, repo: Path) -> None:
    first = env.ok("spawn", "--agent-cmd", "true", cwd=repo).out.strip()
    env.ok("rm", first)  # its branch stays
    second = env.ok("spawn", "--agent-cmd", "true", cwd=repo).out.strip()
    assert first == "true-1" and second == "true-2"
    env.ok("rm", second, "--delete-branch")
    git(repo, "branch", "-D", "sandbox/true-1")
