"""Settings resolve the same way for every command, through the real CLI: flags > ``SANDBOX_*`` env >
``<repo>/.sandbox.toml`` of the repository the command acts on (``--repo``, else the one around the
current directory, also from a worktree) > ``$XDG_CONFIG_HOME/sandbox/config.toml``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import RUN_ID, Env, git, leftovers
from tests.test_errors import NOTHING, one_line_error

pytestmark = pytest.mark.slow


def without(env: Env, *names: str) -> Env:
    return replace(env, env={k: v for k, v in env.env.items() if k not in names})


@pytest.fixture
def reap_repo(repo: Path) -> Iterator[Path]:
    """Remove this repository's containers even if a spawn ignored the run id (the bug under test)."""
    yield repo
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=sandbox.repo={repo}"],
                         capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True)


def test_repo_file_image_is_used_by_spawn(env: Env, reap_repo: Path) -> None:
    repo = reap_repo
    (repo / ".sandbox.toml").write_text('image = "sandbox-agent:does-not-exist"\n')
    env.ok("trust", cwd=repo)  # image applies from a trusted repository file only (tests/test_trust.py)
    (repo / "sub").mkdir()
    cli = without(env, "SANDBOX_IMAGE")  # the environment would win over the file
    for cwd in (repo, repo / "sub"):
        res = cli.run("spawn", "--agent-cmd", "bash", cwd=cwd)
        one_line_error(res, 4, "sandbox-agent:does-not-exist", "sandbox image build")
        assert leftovers(env, repo) == NOTHING
        assert cli.ok("config", "show", cwd=cwd).json()["image"] == "sandbox-agent:does-not-exist"


def test_flag_beats_env_beats_repo_file_beats_user_file(env: Env, reap_repo: Path) -> None:
    repo = reap_repo
    user = Path(env.env["XDG_CONFIG_HOME"]) / "sandbox" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("retries = 7\nmax_time = 1234\n")
    (repo / ".sandbox.toml").write_text("retries = 5\n")

    def spawned(name: str, *flags: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        sb = env.ok("spawn", "--agent-cmd", "bash", "--name", name, "--json", *flags, cwd=repo, extra=extra).json()
        return sb["labels"]  # type: ignore[no-any-return]

    def shown(cwd: Path, extra: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
        return env.ok("config", "show", cwd=cwd, extra=extra).json()  # type: ignore[no-any-return]

    # a linked worktree's toplevel is not the main checkout: the main checkout's file applies there too
    linked = repo.parent / "linked"
    git(repo, "worktree", "add", "-q", "-b", "linked", str(linked))
    labels = spawned("rf-file")
    assert (labels["sandbox.retries"], labels["sandbox.max-time"]) == ("5", "1234")  # repo file, then user file
    for cwd in (repo, linked):
        assert (shown(cwd)["retries"], shown(cwd)["max_time"]) == (5, 1234)
    env_4 = {"SANDBOX_RETRIES": "4"}
    labels = spawned("rf-env", extra=env_4)
    assert labels["sandbox.retries"] == "4" and shown(repo, env_4)["retries"] == shown(linked, env_4)["retries"] == 4
    labels = spawned("rf-flag", "--retries", "2", extra=env_4)
    assert labels["sandbox.retries"] == "2"
    assert env.ok("config", "show", "--repo", str(repo)).json()["retries"] == 5  # --repo from elsewhere
    env.ok("rm", "rf-file", "rf-env", "rf-flag", cwd=repo)


def test_the_hot_commands_read_the_same_files(env: Env, reap_repo: Path) -> None:
    repo = reap_repo
    cli = without(env, "SANDBOX_RUN_ID")
    settings = repo / ".sandbox.toml"
    settings.write_text(f'run_id = "{RUN_ID}"\n')  # spawn stamps it: the session reaper finds it
    cli.ok("trust", cwd=repo)  # run_id applies from a trusted repository file only
    sb = cli.ok("spawn", "--agent-cmd", "bash", "--name", "rf-fast", "--json", cwd=repo).json()
    assert sb["labels"]["sandbox.run-id"] == RUN_ID
    assert [a["name"] for a in cli.ok("ls", "--json", cwd=repo).json()] == ["rf-fast"]
    settings.write_text('run_id = "someone-else"\n')  # now this run's agent is not in scope
    cli.ok("trust", cwd=repo)
    for extra in ({}, {"SANDBOX_SERVER": "0"}):
        assert cli.ok("ls", "--json", cwd=repo, extra=extra).json() == []
        assert cli.run("logs", "rf-fast", cwd=repo, extra=extra).code == 4
        assert cli.ok("ls", "--json", cwd=repo, extra={**extra, "SANDBOX_RUN_ID": RUN_ID}).json()[0]["name"] == "rf-fast"
    cli.ok("rm", "rf-fast", cwd=repo, extra={"SANDBOX_RUN_ID": RUN_ID})


def test_a_typo_in_a_settings_file_is_one_clear_line(env: Env, repo: Path) -> None:
    """An unknown key or table in `.sandbox.toml` or the user's config.toml: exit 2, one line naming the key,
    the file and the nearest known setting — from the fast commands too (it used to do nothing, silently)."""
    from sandbox.config import Settings
    from sandbox.configfiles import KNOWN

    assert KNOWN == set(Settings.model_fields), "configfiles.KNOWN must list every setting"
    repo_file = repo / ".sandbox.toml"
    repo_file.write_text("max_agent = 3\n")
    for args in (["ls"], ["ls", "--json"], ["logs", "nobody"], ["config", "show"],
                 ["spawn", "--agent-cmd", "bash", "x"]):
        res = env.run(*args, cwd=repo)
        one_line_error(res, 2, "unknown setting 'max_agent'", str(repo_file), "'max_agents'")
    assert leftovers(env, repo) == NOTHING
    repo_file.write_text("[price]\nx = 1\n")
    one_line_error(env.run("ls", cwd=repo), 2, "unknown table 'price'", "'prices'")
    repo_file.unlink()
    user_file = Path(env.env["XDG_CONFIG_HOME"]) / "sandbox" / "config.toml"
    user_file.parent.mkdir(parents=True, exist_ok=True)
    user_file.write_text('notfy = "true"\n')
    one_line_error(env.run("ls", cwd=repo), 2, "unknown setting 'notfy'", str(user_file), "'notify'")
    user_file.write_text('max_agents = 3\n')
    assert env.run("ls", cwd=repo).code == 0
