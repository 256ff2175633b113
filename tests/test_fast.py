"""The fast entry point (sandbox/fast.py) answers exactly as the full CLI, without typer/pydantic."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.fast import ls_json_options
from tests.conftest import Env


@pytest.mark.parametrize("argv, expected", [
    (["ls", "--json"], (None, False)),
    (["ls", "--all", "--json"], (None, True)),
    (["ls", "-a", "--json", "--repo", "/r"], (Path("/r"), True)),
    (["ls", "--json", "--repo=/r"], (Path("/r"), False)),
    (["ls"], None),                               # the table: full CLI
    (["ls", "--json", "--exec-state"], None),     # anything it does not know: full CLI
    (["ls", "--json", "--repo"], None),
    (["ls", "--json", "--help"], None),
    (["spawn", "--json"], None),
])
def test_ls_json_options(argv: list[str], expected: object) -> None:
    assert ls_json_options(argv) == expected


VOLATILE = {"status", "state", "activity", "agent_state", "reason", "exit_code", "attempt"}


def _no_volatile(items: list[dict]) -> list[dict]:  # type: ignore[type-arg]
    """The agent's live state may move between two calls; everything else must be equal."""
    return [{k: (sorted(v) if k == "agent_state" else v) for k, v in it.items()
             if k not in VOLATILE or k == "agent_state"} for it in items]


@pytest.mark.slow
def test_fast_ls_json_equals_full_cli_and_skips_typer(env: Env, repo: Path) -> None:
    env.ok("spawn", "--agent-cmd", "bash", "--name", "fast-1", cwd=repo)
    fast = env.ok("ls", "--json", cwd=repo).json()
    full = env.ok("ls", "--json", cwd=repo, extra={"SANDBOX_NO_FAST": "1"}).json()
    assert [a["name"] for a in fast] == ["fast-1"]
    assert _no_volatile(fast) == _no_volatile(full)
    assert env.ok("ls", "--all", "--json", cwd=repo).json()[0]["name"] == "fast-1"
    assert env.ok("--version").out == env.ok("--version", extra={"SANDBOX_NO_FAST": "1"}).out
    traced = env.ok("ls", "--json", cwd=repo, extra={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[-1].strip() for line in traced.err.splitlines()}
    assert "sandbox.manager" in imported
    assert not imported & {"typer", "pydantic", "docker", "requests"}
    env.ok("rm", "--force", "fast-1", cwd=repo)
