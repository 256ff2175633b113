"""`sandbox mcp`: the MCP client of the same SDK against the real server and real agents, and the real
Claude Code binary on the host (on the scripted model) delegating through it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Env, git, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TOOLS = {"spawn", "ls", "wait", "send", "logs", "diff", "merge", "rm", "stop", "run_plan", "plan_status"}


def _marked(mark: str) -> list[int]:
    """The processes whose environment carries SANDBOX_TEST_MCP_MARK=mark (the MCP servers this test started)."""
    needle = f"SANDBOX_TEST_MCP_MARK={mark}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def policy(env: Env, text: str) -> None:
    """The user's config.toml (the policy is the user's: their file)."""
    path = Path(env.env["XDG_CONFIG_HOME"]) / "sandbox" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


async def _session(env: Env, repo: Path, calls: list[tuple[str, dict[str, Any]]]) -> tuple[set[str], list[Any]]:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "sandbox", "mcp"], env=dict(env.env),
                                   cwd=str(repo))
    async with Client(params) as client:
        listed = await client.list_tools()
        results = []
        for name, args in calls:
            results.append(await client.call_tool(name, args, read_timeout_seconds=300))
        return {t.name for t in listed.tools}, results


def session(env: Env, repo: Path, *calls: tuple[str, dict[str, Any]]) -> tuple[set[str], list[Any]]:
    return asyncio.run(asyncio.wait_for(_session(env, repo, list(calls)), 600))


def text(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def test_every_tool_against_real_agents_and_the_policy(env: Env, repo: Path) -> None:
    policy(env, '[mcp]\nmax_agents = 1\nprofiles = ["default", "locked"]\n')
    commit = "echo from-the-agent > made.txt && git add made.txt && git commit -qm made"
    names, res = session(
        env, repo,
        ("spawn", {"task": "", "name": "mcp-a", "agent_cmd": "bash"}),
        ("spawn", {"task": "", "name": "mcp-b", "agent_cmd": "bash"}),        # over max_agents
        ("spawn", {"task": "", "name": "mcp-c", "agent_cmd": "bash", "profile": "isolated"}),  # not allowed
        ("send", {"name": "mcp-a", "text": commit, "wait": False}),
        ("ls", {}),
    )
    assert names == TOOLS
    spawned, over, profile, sent, listed = res
    assert not spawned.is_error, text(spawned)
    assert spawned.structured_content["name"] == "mcp-a" and spawned.structured_content["profile"] == "default"
    assert over.is_error and "allows 1 live agents" in text(over) and "exit 5" in text(over)
    assert profile.is_error and "does not allow the isolated profile" in text(profile)
    assert not sent.is_error, text(sent)
    rows = listed.structured_content["result"]
    assert [r["name"] for r in rows] == ["mcp-a"]
    wait_for(lambda: git(repo, "log", "--oneline", "sandbox/mcp-a", "--").count("\n") >= 2
             or "made" in env.ok("exec", "mcp-a", "--", "git", "log", "--oneline", cwd=repo).out, 60,
             "the agent's commit")

    _, res = session(
        env, repo,
        ("wait", {"name": "mcp-a", "until": "any", "timeout": 60}),
        ("diff", {"name": "mcp-a"}),
        ("logs", {"name": "mcp-a", "lines": 50}),
        ("merge", {"name": "mcp-a"}),                                         # allow_merge = false
        ("wait", {"name": "nobody", "timeout": 5}),                           # no such agent: exit 4
        ("stop", {"name": "mcp-a"}),
        ("rm", {"name": "mcp-a"}),                                            # its commit is not merged
        ("rm", {"name": "mcp-a", "force": True}),                             # allow_remove_with_work = false
    )
    waited, diffed, logged, merged, missing, stopped, kept, refused = res
    assert not waited.is_error, text(waited)
    diff = diffed.structured_content
    assert not diffed.is_error and diff["from_agent"] == "mcp-a" and "untrusted" in diff["note"]
    assert "+from-the-agent" in diff["text"] and "made.txt" in diff["text"] and "# committed" in diff["text"]
    assert len(diff["head"]) == 40 and diff["take_exactly_this"][0].endswith(diff["head"])
    assert "echo from-the-agent" in logged.structured_content["text"]
    assert merged.is_error and "does not allow merging" in text(merged)
    assert not (repo / "made.txt").exists()  # nothing merged into the user's checkout
    assert missing.is_error and "sandbox: error (exit 4)" in text(missing)
    assert stopped.structured_content["state"] == "stopped"
    assert kept.is_error and "sandbox: error (exit 5)" in text(kept) and "neither merged nor pushed" in text(kept)
    assert refused.is_error and "does not allow removing" in text(refused)
    assert [r["name"] for r in env.ok("ls", "--json", cwd=repo).json()] == ["mcp-a"]  # nothing lost
    env.ok("rm", "--force", "mcp-a", cwd=repo)


def test_a_plan_runs_within_the_policy(env: Env, repo: Path) -> None:
    policy(env, '[mcp]\nmax_agents = 2\nprofiles = ["default"]\nmax_cost = 1.5\n')
    cmd = "sh -c 'echo {n} > {n}.txt && git add {n}.txt && git commit -qm {n}'"
    plan = ('name = "mp"\nmax_agents = 2\n' + "".join(
        f'[[task]]\nname = "{n}"\ntext = "{n}"\nagent_cmd = "{cmd.format(n=n)}"\n' + (f'after = ["a"]\n' if n == "b" else "")
        for n in ("a", "b")))
    _, (too_many, bad_profile, started) = session(
        env, repo,
        ("run_plan", {"plan_toml": plan.replace("max_agents = 2", "max_agents = 3")}),
        ("run_plan", {"plan_toml": plan.replace('name = "a"', 'name = "a"\nprofile = "isolated"')}),
        ("run_plan", {"plan_toml": plan}))
    assert too_many.is_error and "allows 2 agents at a time" in text(too_many)
    assert bad_profile.is_error and "does not allow the isolated profile" in text(bad_profile)
    assert not started.is_error and started.structured_content["plan"] == "mp", text(started)

    def finished() -> object:
        _, (got,) = session(env, repo, ("plan_status", {"name": "mp"}))
        states = {t["task"]: t["state"] for t in got.structured_content["tasks"]}
        return states if set(states.values()) <= {"done", "failed"} else None

    assert wait_for(finished, 180, "the plan to finish") == {"a": "done", "b": "done"}
    labels = env.ok("ls", "--json", cwd=repo).json()
    assert {r["plan_task"] for r in labels if r.get("plan") == "mp"} == {"a", "b"}
    assert all(r["max_cost"] == 1.5 for r in labels if r.get("plan") == "mp")  # the policy's budget
    env.ok("plan", "rm", "mp", "--force", cwd=repo)


def test_agent_text_is_capped_and_defanged() -> None:
    from sandbox import mcpserver

    shown = mcpserver._data("x", "\x1b]52;c;ZXZpbA==\x07" + "a" * (mcpserver.MAX_TEXT + 10))
    assert shown["truncated"] and len(shown["text"]) == mcpserver.MAX_TEXT and "\x1b" not in shown["text"]


def test_install_writes_the_project_config_and_the_slash_command(env: Env, repo: Path, tmp_path: Path) -> None:
    (repo / ".mcp.json").write_text(json.dumps({"mcpServers": {"other": {"command": "x"}}}))
    printed = env.ok("mcp", "install", "--print", cwd=repo)
    assert '"sandbox"' in printed.out and "mcp__sandbox__spawn" in printed.out
    assert "sandbox" not in json.loads((repo / ".mcp.json").read_text())["mcpServers"]  # --print wrote nothing
    env.ok("mcp", "install", "--project", cwd=repo)
    servers = json.loads((repo / ".mcp.json").read_text())["mcpServers"]
    assert servers["other"] == {"command": "x"} and servers["sandbox"]["args"][-1] == "mcp"
    assert "mcp__sandbox__diff" in (repo / ".claude" / "commands" / "sandbox.md").read_text()
    env.ok("mcp", "install", "--user", cwd=repo)
    home = Path(env.env["HOME"])
    assert "sandbox" in json.loads((home / ".claude.json").read_text())["mcpServers"]
    plain = tmp_path / "plain"
    plain.mkdir()
    res = env.run("mcp", "install", "--project", cwd=plain)
    assert res.code == 2 and "not in a git repository" in res.err and len(res.err.strip().splitlines()) == 1


def test_claude_code_on_the_host_delegates_through_mcp(env: Env, repo: Path, tmp_path: Path) -> None:
    """The real Claude Code binary on the host, on the scripted model, calls mcp__sandbox__spawn, wait and
    diff; the sandboxed agent (Claude Code in its container, on its own scripted model) commits; the host's
    Claude Code gets the diff back as agent data and reports. Offline."""
    from sandbox import image
    from sandbox.config import load_settings

    claude = image.claude_binary(load_settings())  # (the wheel the agent image was built from: cached)
    mark = str(tmp_path)
    policy(env, '[mcp]\nprofiles = ["default"]\n')
    script = {"turns": [], "default": {"steps": [
        {"tool": "mcp__sandbox__spawn", "input": {"task": "write the task file", "name": "mcp-e2e"}},
        {"tool": "mcp__sandbox__wait", "input": {"name": "mcp-e2e", "until": "idle", "timeout": 240}},
        {"tool": "mcp__sandbox__diff", "input": {"name": "mcp-e2e"}},
        {"text": "Reported: mcp-e2e wrote SANDBOX_TASK.md on branch sandbox/mcp-e2e."}]}}
    (tmp_path / "script.json").write_text(json.dumps(script))
    log = tmp_path / "model.jsonl"
    model = subprocess.Popen([sys.executable, "-m", "sandbox.inside.mockmodel", "--port", "0", "--script",
                              str(tmp_path / "script.json"), "--ready-file", str(tmp_path / "port"), "--log", str(log)],
                             env={**env.env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port = wait_for(lambda: (tmp_path / "port").is_file() and (tmp_path / "port").read_text().strip(), 20,
                        "the scripted model")
        mcp_config = tmp_path / "mcp.json"
        mcp_config.write_text(json.dumps({"mcpServers": {"sandbox": {
            "type": "stdio", "command": sys.executable, "args": ["-m", "sandbox", "mcp"],
            "env": {**env.env, "SANDBOX_MOCK_MODEL": "on", "SANDBOX_TEST_MCP_MARK": mark}}}}))
        # A loaded machine makes a spawn slow: Claude Code's own MCP timeouts must not cut the tool calls short
        # (a cut spawn goes on in the MCP server after Claude Code has given up and the test has cleaned up).
        host_env = {**env.env, "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}", "ANTHROPIC_API_KEY": "sk-test-host",
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
                    "MCP_TIMEOUT": "120000", "MCP_TOOL_TIMEOUT": "400000"}
        run = subprocess.run([str(claude), "-p", "delegate: write the task file", "--mcp-config", str(mcp_config),
                              "--strict-mcp-config", "--allowedTools",
                              "mcp__sandbox__spawn,mcp__sandbox__wait,mcp__sandbox__diff"],
                             cwd=repo, env=host_env, capture_output=True, text=True, timeout=420)
        assert run.returncode == 0, (run.stdout, run.stderr)
        results = [r for line in log.read_text().splitlines() for r in json.loads(line).get("tool_results", [])]
        assert "Reported: mcp-e2e" in run.stdout
        assert any("from_agent" in r and "SANDBOX_TASK.md" in r for r in results), results[-3:]
        assert "SANDBOX_TASK.md" in git(repo, "show", "--stat", "sandbox/mcp-e2e")  # the agent's commit, here
    finally:
        model.kill()
        model.wait(10)
        # Claude Code has gone; its MCP server may still be finishing a call: let it end before the clean-up.
        wait_for(lambda: not _marked(mark), 180, "the MCP server Claude Code started to exit")
        env.run("rm", "--force", "mcp-e2e", cwd=repo)
