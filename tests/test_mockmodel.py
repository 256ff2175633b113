"""The scripted Messages API server, over real HTTP, and the real Claude Code CLI against it."""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.inside import mockmodel

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOOLS = [{"name": "Write", "input_schema": {}}, {"name": "Bash", "input_schema": {}}]
ENV = "# Environment\nYou have been invoked in the following environment: \n - Primary working directory: /work/repo\n"
ENV_MSG = {"role": "system", "content": [{"type": "text", "text": ENV + " - Is a git repository: true"}]}
REMINDER = {"type": "text", "text": "<system-reminder>\ngitStatus: clean\n</system-reminder>"}


def serve(script: dict[str, Any] | None = None, **kw: Any) -> Iterator[int]:
    server = mockmodel.make_server(script=script, **kw)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def port() -> Iterator[int]:
    yield from serve()


def request(port: int, method: str, path: str, body: Any = None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, resp.getheader("Content-Type") or "", resp.read()
    conn.close()
    return out


def sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in raw.decode().split("\n\n"):
        if chunk.strip():
            event_line, data_line = chunk.split("\n")
            assert event_line.startswith("event: ") and data_line.startswith("data: ")
            events.append((event_line[7:], json.loads(data_line[6:])))
    return events


def message(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Reassemble a streamed message the way a client does."""
    msg = dict(events[0][1]["message"])
    blocks: list[dict[str, Any]] = []
    for name, data in events[1:]:
        if name == "content_block_start":
            blocks.append(dict(data["content_block"], _json=""))
        elif name == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "text_delta":
                blocks[data["index"]]["text"] += delta["text"]
            else:
                blocks[data["index"]]["_json"] += delta["partial_json"]
        elif name == "message_delta":
            msg["stop_reason"] = data["delta"]["stop_reason"]
    for b in blocks:
        raw = b.pop("_json")
        if b["type"] == "tool_use":
            b["input"] = json.loads(raw)
    msg["content"] = blocks
    return msg


def ask(port: int, messages: list[dict[str, Any]], stream: bool = True, **extra: Any) -> dict[str, Any]:
    body = {"model": "claude-sonnet-x", "max_tokens": 100, "stream": stream, "tools": TOOLS,
            "messages": messages, **extra}
    status, ctype, raw = request(port, "POST", "/v1/messages?beta=true", body)
    assert status == 200
    if stream:
        assert ctype.startswith("text/event-stream")
        return message(sse(raw))
    assert ctype.startswith("application/json")
    reply: dict[str, Any] = json.loads(raw)
    return reply


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [REMINDER, {"type": "text", "text": text}]}


def result(*ids: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": i, "content": "ok"} for i in ids]}


def tool_use(i: str, name: str = "Write") -> dict[str, Any]:
    return {"type": "tool_use", "id": i, "name": name, "input": {}}


def test_sse_events_are_those_of_the_real_api(port: int) -> None:
    body = {"model": "claude-sonnet-x", "stream": True, "tools": TOOLS, "messages": [user("make it"), ENV_MSG]}
    events = sse(request(port, "POST", "/v1/messages?beta=true", body)[2])
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["type"] == "message" and start["role"] == "assistant" and start["content"] == []
    assert start["model"] == "claude-sonnet-x" and start["stop_reason"] is None and "usage" in start
    assert all(data["type"] == name for name, data in events)
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"]["output_tokens"] >= 1


def test_default_script_writes_then_commits_then_ends(port: int) -> None:
    prompt = user("fix 'it' now $HOME\nsecond line")
    first = ask(port, [prompt, ENV_MSG])
    [block] = first["content"]
    assert first["stop_reason"] == "tool_use" and block["name"] == "Write" and block["id"] == "toolu_mock_1"
    assert block["input"] == {"file_path": "/work/repo/SANDBOX_TASK.md", "content": "# Task\n\nfix 'it' now $HOME\n"}
    history = [prompt, ENV_MSG, {"role": "assistant", "content": [block]}, result(block["id"])]
    second = ask(port, history)
    [bash] = second["content"]
    assert bash["name"] == "Bash" and bash["id"] == "toolu_mock_2"
    command = bash["input"]["command"].replace("git add SANDBOX_TASK.md && git commit -q -m", "printf %s")
    echoed = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout
    assert echoed == "sandbox: fix 'it' now $HOME"
    history += [{"role": "assistant", "content": [bash]}, result(bash["id"])]
    third = ask(port, history, stream=False)
    assert third["stop_reason"] == "end_turn" and third["type"] == "message"
    assert third["content"] == [{"type": "text", "text": "Done: wrote SANDBOX_TASK.md and committed it."}]


def test_counts_tool_calls_in_merged_turns_not_assistant_messages() -> None:
    steps = [{"tool": "Write", "input": {"file_path": "{cwd}/a{n}"}}, {"tool": "Read", "input": {}},
             {"tool": "Bash", "input": {"command": "echo {prompt_sh}"}}, {"text": "ok {prompt}"}]
    for port in serve({"turns": [{"steps": steps}]}):
        merged = {"role": "assistant", "content": [{"type": "text", "text": "hm"}, tool_use("t1"), tool_use("t2", "Read")]}
        reply = ask(port, [user("go"), ENV_MSG, merged, {"role": "system", "content": "note"}, result("t1", "t2")])
        assert reply["content"][0]["name"] == "Bash" and reply["content"][0]["input"] == {"command": "echo go"}
        assert reply["content"][0]["id"] == "toolu_mock_3"
        third = {"role": "assistant", "content": [tool_use("t3", "Bash")]}
        done = ask(port, [user("go"), merged, result("t1", "t2"), third, result("t3")])
        assert done["content"] == [{"type": "text", "text": "ok go"}] and done["stop_reason"] == "end_turn"


def test_turns_by_match_then_by_prompt_number_then_default() -> None:
    script = {"turns": [{"match": "^deploy", "steps": [{"ask": "Really deploy {prompt}?"}]},
                        {"steps": [{"text": "first {n}"}]}, {"steps": [{"text": "second {n}"}]}],
              "default": {"steps": [{"text": "default {n}"}]}}
    for port in serve(script):
        def said(messages: list[dict[str, Any]], port: int = port) -> str:
            return str(ask(port, messages)["content"][0]["text"])
        one = [user("hello")]
        assert said(one) == "first 1"
        two = one + [{"role": "assistant", "content": [{"type": "text", "text": "first 1"}]}, user("again")]
        assert said(two) == "second 2"
        assert said(two + [{"role": "assistant", "content": "x"}, user("more")]) == "default 3"
        assert said(two + [{"role": "assistant", "content": "x"}, user("deploy prod")]) == "Really deploy deploy prod?"


def test_side_queries_without_tools_get_text(port: int) -> None:
    body = {"model": "m", "stream": True, "tools": [], "messages": [user("<session>\nfix it\n</session>")]}
    reply = message(sse(request(port, "POST", "/v1/messages?beta=true", body)[2]))
    assert reply["stop_reason"] == "end_turn" and reply["content"][0]["type"] == "text"
    schema = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
    body.update(output_config={"format": {"type": "json_schema", "schema": schema}}, stream=False)
    titled = json.loads(request(port, "POST", "/v1/messages", body)[2])
    assert set(json.loads(titled["content"][0]["text"])) == {"title"}


def test_count_tokens_probes_and_garbage(port: int) -> None:
    status, _, raw = request(port, "POST", "/v1/messages/count_tokens?beta=true", {"messages": [user("hi")]})
    assert status == 200 and json.loads(raw)["input_tokens"] > 0
    assert request(port, "GET", "/v1/models")[::2] == (200, b"{}")
    assert request(port, "HEAD", "/")[0] == 200
    assert request(port, "POST", "/api/event_logging/batch", b"not json")[::2] == (200, b"{}")
    status, _, raw = request(port, "POST", "/v1/messages", b"{broken")
    assert status == 200 and "mock model error" in json.loads(raw)["content"][0]["text"]
    assert ask(port, [])["stop_reason"] == "tool_use"  # no prompt at all: still an answer


def test_cwd_from_system_field_or_messages_else_dot() -> None:
    assert mockmodel.find_cwd({"system": [{"type": "text", "text": "x\nWorking directory: /a b/c\n"}]}) == "/a b/c"
    assert mockmodel.find_cwd({"system": "You are Claude.", "messages": [user("hi"), ENV_MSG]}) == "/work/repo"
    assert mockmodel.find_cwd({"messages": [user("hi")]}) == "."


def test_validate_rejects_bad_scripts() -> None:
    bad: Any
    for bad in ([], {"turns": {}}, {"turns": [{"steps": [{"nope": 1}]}]}, {"turns": [{"match": "(", "steps": []}]},
                {"turns": [{"match": 3}]}):
        with pytest.raises(ValueError):
            mockmodel.make_server(script=bad)


class _AnyCount:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, int) and other >= 1


ANY_COUNT = _AnyCount()


def test_main_ready_file_and_log(tmp_path: pathlib.Path) -> None:
    script, ready, log = tmp_path / "s.json", tmp_path / "ready", tmp_path / "log.jsonl"
    script.write_text(json.dumps({"turns": [{"steps": [{"text": "hi {prompt}"}]}]}))
    assert mockmodel.main(["--script", str(tmp_path / "missing.json")]) == 2
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.inside.mockmodel", "--port", "0", "--script", str(script),
                             "--ready-file", str(ready), "--log", str(log)], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ask(int(ready.read_text()), [user("you")])["content"][0]["text"] == "hi you"
        [line] = log.read_text().splitlines()
        assert json.loads(line) == {"path": "/v1/messages?beta=true", "model": "claude-sonnet-x",
                                    "messages": 1, "prompts": ["you"], "tool_results": [], "answer": "text:hi you",
                                    "usage": {"input_tokens": ANY_COUNT, "output_tokens": ANY_COUNT}}
    finally:
        proc.terminate()
        proc.wait(10)


def find_claude() -> str | None:
    if os.environ.get("SANDBOX_CLAUDE_BIN"):
        return os.environ["SANDBOX_CLAUDE_BIN"]
    cached = sorted(pathlib.Path.home().glob(".cache/sandbox/claude/*/claude"))
    return shutil.which("claude") or (str(cached[-1]) if cached else None)


@pytest.mark.claude
def test_real_claude_code_runs_the_default_script(tmp_path: pathlib.Path) -> None:
    claude = find_claude()
    if not claude or not os.access(claude, os.X_OK):
        pytest.skip("no Claude Code binary: set SANDBOX_CLAUDE_BIN, put `claude` on PATH "
                    "or in ~/.cache/sandbox/claude/<version>/claude")
    repo, home = tmp_path / "repo", tmp_path / "home"
    repo.mkdir()
    home.mkdir()
    ident = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
             "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **ident}
    subprocess.run(["git", "init", "-q"], cwd=repo, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "init"], cwd=repo, env=env, check=True)
    for port in serve(log_path=str(tmp_path / "log.jsonl")):
        env.update(ANTHROPIC_BASE_URL=f"http://127.0.0.1:{port}", ANTHROPIC_API_KEY="sk-test-0123456789abcdefghij",
                   CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1")
        # --allowedTools instead of --dangerously-skip-permissions: the latter is refused as root.
        run = subprocess.run([claude, "-p", "make the file", "--model", "sonnet", "--allowedTools", "Write Bash"],
                             cwd=repo, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr + run.stdout
    assert "Done: wrote SANDBOX_TASK.md and committed it." in run.stdout
    assert (repo / "SANDBOX_TASK.md").read_text() == "# Task\n\nmake the file\n"
    log = subprocess.run(["git", "log", "--format=%s", "-1"], cwd=repo, env=env,
                         capture_output=True, text=True, check=True)
    assert log.stdout.strip() == "sandbox: make the file"
    answers = [json.loads(line)["answer"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert answers[-3:-1] == ["tool_use:Write", "tool_use:Bash"]
