"""The fast entry point (sandbox/fast.py) answers exactly as the full CLI, without typer/pydantic."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.fast import logs_options, ls_json_options, send_options
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


@pytest.mark.parametrize("argv, expected", [
    (["logs", "a-1"], ("a-1", None)),
    (["logs", "a-1", "-n", "20"], ("a-1", 20)),
    (["logs", "a-1", "--lines", "3"], ("a-1", 3)),
    (["logs", "a-1", "-f"], None),
    (["logs", "a-1", "-n", "x"], None),
    (["logs", "--help"], None),
])
def test_logs_options(argv: list[str], expected: object) -> None:
    assert logs_options(argv) == expected


@pytest.mark.parametrize("argv, expected", [
    (["send", "a-1", "hello world"], ("a-1", "hello world", True)),
    (["send", "a-1", "-"], ("a-1", "-", True)),
    (["send", "a-1", "x", "--no-enter"], ("a-1", "x", False)),
    (["send", "a-1", "x", "--wait"], None),
    (["send", "a-1", "--", "-x"], None),
    (["send", "a-1"], None),
])
def test_send_options(argv: list[str], expected: object) -> None:
    assert send_options(argv) == expected


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
    # send + logs through the fast path: the text arrives byte-exact and the pane shows it
    env.ok("send", "fast-1", "echo fast-$((40+2)) 'a;b'", cwd=repo)
    from tests.conftest import wait_for
    wait_for(lambda: "fast-42 a;b" in env.ok("logs", "fast-1", cwd=repo).out, 30, "the echo in the pane")
    assert env.ok("logs", "fast-1", "-n", "5", cwd=repo).out == \
        env.ok("logs", "fast-1", "-n", "5", cwd=repo, extra={"SANDBOX_NO_FAST": "1"}).out
    missing = env.run("logs", "nope-1", cwd=repo)
    assert missing.code == 4 and missing.err.startswith("sandbox: error: no agent named 'nope-1'")
    traced = env.ok("send", "fast-1", "true", cwd=repo, extra={"PYTHONPROFILEIMPORTTIME": "1"})
    assert not {line.rsplit("|", 1)[-1].strip() for line in traced.err.splitlines()} & {"typer", "docker"}
    env.ok("rm", "--force", "fast-1", cwd=repo)
