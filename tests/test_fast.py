"""The hot commands (``ls``, ``ls --json``, ``logs``, ``send``, ``--version``) are fast because a warm
per-user server runs them (README "The command server"), not because they avoid their dependencies: the
console script's first module (``sandbox.client``) imports nothing but the standard library, and every
command answers alike through the server and in its own process (``SANDBOX_SERVER=0``). How fast is
``bench/run.py``'s to measure, not a test's."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Env, make_env, make_repo, wait_for

ALONE = {"SANDBOX_SERVER": "0"}
SITE = {"imported package", "sitecustomize", "usercustomize", "_distutils_hack"}  # (the header; site's own)


def imported(res: Any) -> set[str]:
    """The modules a run with ``PYTHONPROFILEIMPORTTIME=1`` imported (from its stderr)."""
    return {line.rsplit("|", 1)[-1].strip() for line in res.err.splitlines() if line.startswith("import time:")}


def errors(res: Any) -> str:
    return "\n".join(line for line in res.err.splitlines() if not line.startswith("import time:"))


@pytest.fixture(autouse=True)
def served(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the server unless a test says otherwise (a suite run with SANDBOX_SERVER=0 too)."""
    monkeypatch.delenv("SANDBOX_SERVER", raising=False)


def test_the_client_imports_only_the_standard_library(tmp_path: Path) -> None:
    """What the console script's process imports when a server answers: the stdlib and ``sandbox.client``."""
    env = make_env(tmp_path, "sandbox-agent:never-used")
    try:
        env.ok("--version")  # the server is up
        for args in (["--version"], ["ls", "--json"], ["logs", "nope-1"]):
            res = env.run(*args, extra={"PYTHONPROFILEIMPORTTIME": "1"})
            ours = {m for m in imported(res) - SITE if m.split(".")[0] not in sys.stdlib_module_names}
            assert ours <= {"sandbox", "sandbox.client"}, (args, ours)
            assert res.code == (4 if args[0] == "logs" else 0), errors(res)
    finally:
        env.stop_server()


def test_bad_values_are_the_same_usage_errors_in_both_ways(tmp_path: Path) -> None:
    env = make_env(tmp_path, "sandbox-agent:never-used")
    repo = make_repo(tmp_path / "repo")
    try:
        for extra in ({}, ALONE):
            res = env.run("logs", "x", "-n", "abc", cwd=repo, extra=extra)  # typer's own message
            assert res.code == 2 and "--lines" in res.err, (extra, res.err)
            res = env.run("ls", "--json", cwd=repo, extra={**extra, "SANDBOX_SYNC_TIMEOUT": "0"})
            assert res.code == 2 and "sync_timeout" in res.err and "\n" not in res.err.strip(), (extra, res.err)
    finally:
        env.stop_server()


@pytest.mark.slow
def test_hot_commands_answer_alike_through_the_server_and_alone(env: Env, repo: Path) -> None:
    env.ok("spawn", "--agent-cmd", "bash", "--name", "fast-1", cwd=repo)

    def both(*args: str) -> tuple[Any, Any]:
        return env.run(*args, cwd=repo), env.run(*args, cwd=repo, extra=ALONE)

    served, alone = both("ls", "--json")
    assert served.code == alone.code == 0, (served.err, alone.err)
    fast = [{k: v for k, v in a.items() if k not in VOLATILE} for a in json.loads(served.out)]
    slow = [{k: v for k, v in a.items() if k not in VOLATILE} for a in json.loads(alone.out)]
    assert [a["name"] for a in fast] == ["fast-1"] and fast == slow
    assert env.ok("ls", "--all", "--json", cwd=repo).json()[0]["name"] == "fast-1"

    served, alone = both("ls")
    assert served.code == alone.code == 0
    assert served.out.splitlines()[0].split()[:3] == ["NAME", "AGENT/MODEL", "STATE"]
    assert [ln.split()[0] for ln in served.out.splitlines()] == [ln.split()[0] for ln in alone.out.splitlines()] \
        == ["NAME", "fast-1"]

    # send + logs: the text arrives byte-exact and the pane shows it, whichever process typed it
    assert env.run("send", "fast-1", "echo fast-$((40+2)) 'a;b'", cwd=repo).code == 0
    assert env.run("send", "fast-1", "echo alone-$((40+2))", cwd=repo, extra=ALONE).code == 0
    wait_for(lambda: "alone-42" in env.ok("logs", "fast-1", cwd=repo).out, 30, "the echoes in the pane")
    served, alone = both("logs", "fast-1", "-n", "5")
    assert served.code == alone.code == 0 and served.out == alone.out and "fast-42 a;b" in served.out
    served, alone = both("logs", "nope-1")
    assert served.code == alone.code == 4 and served.err == alone.err
    assert served.err.startswith("sandbox: error: no agent named 'nope-1'")
    env.ok("rm", "--force", "fast-1", cwd=repo)


VOLATILE = {"status", "state", "activity", "agent_state", "reason", "exit_code", "attempt"}
