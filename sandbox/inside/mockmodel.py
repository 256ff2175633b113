"""A scripted, offline stand-in for the Anthropic Messages API (standard library only).

Good enough for the real Claude Code CLI to run whole sessions against it: point it at
``ANTHROPIC_BASE_URL=http://127.0.0.1:PORT`` with any ``ANTHROPIC_API_KEY``.  Used by the tests,
by ``sandbox mock-model`` (an offline demo/CI model) and inside agent containers without a key.
This file is copied into containers that only have ``python3``: keep it stdlib-only.

Endpoints: ``POST /v1/messages`` (any query string; SSE when the body has ``"stream": true``,
else one JSON message), ``POST /v1/messages/count_tokens`` -> ``{"input_tokens": N}``; any other
GET/HEAD/POST -> 200 ``{}``.

Script (JSON)::

    {"turns": [
       {"match": "regex searched in the prompt (optional)",
        "steps": [{"tool": "Write", "input": {"file_path": "{cwd}/hello.txt", "content": "hi\\n"}},
                  {"tool": "Bash", "input": {"command": "git commit -qam {prompt_sh}"}},
                  {"text": "All done: {prompt}"}]}],
     "default": {"steps": [{"text": "..."}]}}

For each request the *prompt* is the text of the last user message that is a real prompt (has
text besides ``tool_result`` blocks; ``<system-reminder>`` blocks are ignored).  The turn is the
first turn whose ``match`` is found in the prompt; else the N-th turn without ``match`` for the
N-th prompt of the conversation; else ``default``.  The tool calls the assistant already made
after the prompt are counted (tool_use blocks, not assistant messages: Claude Code merges
them): while fewer than the turn's tool steps, the next tool step is answered as a ``tool_use``
block (stop_reason ``tool_use``); then the first ``text`` step ends the turn (``end_turn``).
``{"ask": "question"}`` is a text step too (it ends the turn, waiting for the user).
Requests without ``tools`` (Claude Code's side queries, e.g. the session title) get a short text,
or a minimal JSON value when ``output_config.format`` carries a JSON schema (``{"title": "..."}``).

Placeholders in step strings: ``{prompt}`` (first line of the prompt, at most 200 chars), ``{n}``
(number of prompts so far), ``{cwd}`` (from Claude Code's "Primary working directory: /path" line,
sent in a ``role: system`` message or the system prompt; ``.`` when absent -- Claude Code resolves a
relative ``file_path`` against its own cwd), and ``{prompt_sh}`` / ``{cwd_sh}``: the same quoted for a
POSIX shell with ``shlex.quote``.  Use these in ``Bash`` commands: ``-m "sandbox: "{prompt_sh}`` is
one shell word whatever quotes or ``$`` the prompt holds.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import shlex
import sys
import threading
import uuid
from typing import Any

DEFAULT_SCRIPT: dict[str, Any] = {
    "turns": [],
    "default": {
        "steps": [
            {"tool": "Write",
             "input": {"file_path": "{cwd}/SANDBOX_TASK.md", "content": "# Task\n\n{prompt}\n"}},
            {"tool": "Bash",
             "input": {"command": 'git add SANDBOX_TASK.md && git commit -q -m "sandbox: "{prompt_sh}',
                       "description": "Commit SANDBOX_TASK.md"}},
            {"text": "Done: wrote SANDBOX_TASK.md and committed it."},
        ]
    },
}
SIDE_ANSWER = "Mock model session"
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)
_CWD = re.compile(r"(?:Primary working directory|Working directory|cwd)\s*:\s*(/[^\n<]*)", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{(prompt_sh|prompt|cwd_sh|cwd|n)\}")


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _tool_results(message: Any) -> list[str]:
    """The text of each ``tool_result`` block of a user message (capped), for the request log."""
    if not isinstance(message, dict) or message.get("role") != "user":
        return []
    out = []
    for block in _blocks(message.get("content")):
        if block.get("type") == "tool_result":
            inner = block.get("content")
            out.append("".join(b.get("text", "") for b in _blocks(inner))[:2000] if not isinstance(inner, str)
                       else inner[:2000])
    return out


def _prompt_text(message: Any) -> str | None:
    """The prompt text of a user message, or None when it is not a real prompt."""
    if not isinstance(message, dict) or message.get("role") != "user":
        return None
    blocks = _blocks(message.get("content"))
    if any(b.get("type") == "tool_result" for b in blocks):
        return None
    texts = [_REMINDER.sub("", str(b.get("text", ""))) for b in blocks if b.get("type") == "text"]
    text = "\n".join(t.strip() for t in texts if t.strip())
    return text or None


def _all_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_all_text(v) for v in value)
    if isinstance(value, dict):
        return "\n".join(_all_text(value.get(k)) for k in ("text", "content") if k in value)
    return ""


def find_cwd(body: dict[str, Any]) -> str:
    """The working directory Claude Code states ("Primary working directory: /path"), else "."."""
    messages = body.get("messages")
    for source in [body.get("system"), *(messages if isinstance(messages, list) else [])]:
        found = _CWD.search(_all_text(source))
        if found:
            return found.group(1).strip()
    return "."


def validate(script: Any) -> dict[str, Any]:
    """Check a script's shape (and compile its regexes); return it or raise ValueError."""
    if not isinstance(script, dict):
        raise ValueError("script must be a JSON object")  # noqa: TRY004 - one error type for bad scripts
    turns = script.get("turns", [])
    default = script.get("default", {"steps": [{"text": "Done."}]})
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in [*turns, default]):
        raise ValueError('"turns" must be a list of objects and "default" an object')
    for turn in [*turns, default]:
        steps = turn.get("steps", [])
        if not isinstance(steps, list) or not all(
            isinstance(s, dict) and ("text" in s or "ask" in s or "tool" in s) for s in steps
        ):
            raise ValueError('each "steps" must be a list of {"tool"|"text"|"ask": ...} objects')
        try:
            re.compile(turn.get("match") or "")
        except (re.error, TypeError) as err:
            raise ValueError(f"bad match regex {turn.get('match')!r}: {err}") from None
    return {"turns": turns, "default": default}


def _expand(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], value)
    if isinstance(value, list):
        return [_expand(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, values) for k, v in value.items()}
    return value


def _from_schema(schema: dict[str, Any]) -> Any:
    """A small value matching a JSON schema (objects get their required properties)."""
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: _from_schema(props.get(k) or {}) for k in schema.get("required") or []}
    return {"array": [], "boolean": False, "integer": 0, "number": 0, "null": None}.get(str(kind), SIDE_ANSWER)


def plan_reply(body: dict[str, Any], script: dict[str, Any]) -> dict[str, Any]:
    """Decide the answer to one Messages request: one content block and a stop reason."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    if not body.get("tools"):  # a side query; JSON when a schema is asked for (e.g. {"title": ...})
        fmt = (body.get("output_config") or {}).get("format") or body.get("output_format") or {}
        text = json.dumps(_from_schema(fmt["schema"])) if isinstance(fmt.get("schema"), dict) else SIDE_ANSWER
        return {"content": {"type": "text", "text": text}, "stop_reason": "end_turn"}
    prompts = [(i, p) for i, p in enumerate(map(_prompt_text, messages)) if p is not None]
    last, prompt = prompts[-1] if prompts else (-1, "")
    turn = next((t for t in script["turns"] if t.get("match") and re.search(t["match"], prompt)), None)
    unmatched = [t for t in script["turns"] if not t.get("match")]
    if turn is None:
        turn = unmatched[len(prompts) - 1] if 0 < len(prompts) <= len(unmatched) else script["default"]
    made = [b for m in messages[last + 1:] if m.get("role") == "assistant"
            for b in _blocks(m.get("content")) if b.get("type") == "tool_use"]
    first_line = (prompt.strip().splitlines() or [""])[0][:200]
    cwd = find_cwd(body)
    values = {"prompt": first_line, "prompt_sh": shlex.quote(first_line), "cwd": cwd,
              "cwd_sh": shlex.quote(cwd), "n": str(len(prompts))}
    tools = [s for s in turn.get("steps", []) if "tool" in s]
    if len(made) < len(tools):
        total = sum(1 for m in messages if m.get("role") == "assistant"
                    for b in _blocks(m.get("content")) if b.get("type") == "tool_use")
        step = tools[len(made)]
        block = {"type": "tool_use", "id": f"toolu_mock_{total + 1}", "name": str(step["tool"]),
                 "input": _expand(step.get("input", {}), values)}
        return {"content": block, "stop_reason": "tool_use"}
    texts = [s.get("text", s.get("ask")) for s in turn.get("steps", []) if "tool" not in s]
    text = _expand(str(texts[0]) if texts else "Done.", values)
    return {"content": {"type": "text", "text": text}, "stop_reason": "end_turn"}


def _estimate_tokens(body: dict[str, Any]) -> int:
    parts = [body.get(k) for k in ("system", "messages", "tools")]
    return max(1, len(json.dumps(parts, default=str)) // 4)


def _message(body: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    return {"id": "msg_mock_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
            "model": str(body.get("model") or "mock-model"), "content": [plan["content"]],
            "stop_reason": plan["stop_reason"], "stop_sequence": None,
            "usage": {"input_tokens": _estimate_tokens(body),
                      "output_tokens": max(1, len(json.dumps(plan["content"])) // 4)}}


def sse_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events that stream *message*, as the real API sends them."""
    start = dict(message, content=[], stop_reason=None, stop_sequence=None,
                 usage=dict(message["usage"], output_tokens=1))
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            head, text = dict(block, input={}), json.dumps(block["input"])
            kind, key = "input_json_delta", "partial_json"
        else:
            head, text, kind, key = dict(block, text=""), block["text"], "text_delta", "text"
        events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": head}))
        for i in range(0, max(len(text), 1), 64):
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                   "delta": {"type": kind, key: text[i:i + 64]}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                     "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


class MockServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], script: dict[str, Any], log_path: str | None) -> None:
        self.script, self.log_path, self.log_lock = script, log_path, threading.Lock()
        super().__init__(address, _Handler)

    def log_request_line(self, record: dict[str, Any]) -> None:
        if not self.log_path:
            return
        try:
            with self.log_lock, open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:
            print(f"mockmodel: cannot log: {err}", file=sys.stderr)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: MockServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: --log records requests
        pass

    def _send(self, status: int, data: bytes, ctype: str = "application/json", head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "req_mock_" + uuid.uuid4().hex[:16])
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        self._send(200, b"{}")

    def do_HEAD(self) -> None:
        self._send(200, b"{}", head=True)

    def do_POST(self) -> None:
        record: dict[str, Any] = {"path": self.path}
        data, ctype = self._answer(self.path.split("?", 1)[0].rstrip("/"), record)
        self.server.log_request_line(record)  # before answering: a client may read the log next
        self._send(200, data, ctype)

    def _answer(self, path: str, record: dict[str, Any]) -> tuple[bytes, str]:
        body: dict[str, Any] = {}
        try:
            raw = self._body()
            if path.startswith("/v1/messages"):
                parsed = json.loads(raw or b"{}")
                body = parsed if isinstance(parsed, dict) else {}
            messages = body.get("messages") if isinstance(body.get("messages"), list) else []
            record.update(model=body.get("model"), messages=len(messages),
                          # the conversation as the model sees it (first line of each prompt): what a
                          # test reads to know a resumed agent kept its earlier messages
                          prompts=[(p.strip().splitlines() or [""])[0][:200]
                                   for p in map(_prompt_text, messages) if p is not None],
                          # what the tools answered, in the last message (first 2,000 characters of each):
                          # what a test reads to know the model was given a tool's result
                          tool_results=_tool_results(messages[-1] if messages else None))
            if path == "/v1/messages/count_tokens":
                record["answer"] = "count_tokens"
                return json.dumps({"input_tokens": _estimate_tokens(body)}).encode(), "application/json"
            if path != "/v1/messages":
                record["answer"] = "{}"
                return b"{}", "application/json"
            plan = plan_reply(body, self.server.script)
        except Exception as err:  # noqa: BLE001 - never crash: say what went wrong, as the answer
            record["error"] = f"{type(err).__name__}: {err}"
            plan = {"content": {"type": "text", "text": f"mock model error: {record['error']}"},
                    "stop_reason": "end_turn"}
        block = plan["content"]
        record["answer"] = (f"tool_use:{block['name']}" if block["type"] == "tool_use"
                            else f"text:{block['text'][:80]}")
        message = _message(body, plan)
        record["usage"] = message["usage"]  # what it reported (the tests compare sandbox's token counts)
        if not body.get("stream"):
            return json.dumps(message).encode(), "application/json"
        events = sse_events(message)
        return "".join(f"event: {n}\ndata: {json.dumps(d)}\n\n" for n, d in events).encode(), "text/event-stream"


def make_server(host: str = "127.0.0.1", port: int = 0, script: dict[str, Any] | None = None,
                log_path: str | None = None) -> http.server.ThreadingHTTPServer:
    """A server (not yet serving: call ``serve_forever``) that answers from *script*."""
    return MockServer((host, port), validate(DEFAULT_SCRIPT if script is None else script), log_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mockmodel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8642)
    parser.add_argument("--script", help="JSON script file (default: the built-in demo)")
    parser.add_argument("--ready-file", help="write the port number here once listening")
    parser.add_argument("--log", help="append one JSON line per request to this file")
    args = parser.parse_args(argv)
    try:
        script = None
        if args.script:
            with open(args.script, encoding="utf-8") as f:
                script = json.load(f)
        server = make_server(args.host, args.port, script, log_path=args.log)
    except (OSError, ValueError) as err:
        print(f"mockmodel: {err}", file=sys.stderr)
        return 2
    port = server.server_address[1]
    if args.ready_file:
        tmp = f"{args.ready_file}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.ready_file)
    print(f"mockmodel: listening on http://{args.host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
