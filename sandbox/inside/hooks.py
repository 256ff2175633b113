"""Claude Code's hooks (``python3 -m sandbox.inside hook EVENT``), run as the agent: the event becomes a
state, the last answer goes to ``reply.txt`` and the tokens are totalled; everything goes into the agent's own
report, which the supervisor merges (``supervisor.merge_report``), and a byte into its wake FIFO (standard
library only)."""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time

from sandbox import contract as C
from sandbox import inside as I
from sandbox.contract import S
from sandbox.inside import HOOK_STATES, SESSION_RE, _read, _read_report, _replace, read_state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TALLY = "/tmp/sandbox-usage.json"           # the token tally of the transcript so far (sandbox.usage.Tally)
TRANSCRIPT_CAP = 64 * 1024 * 1024           # read at most this much of the transcript per hook run


def _last_answer(payload: dict[str, Any]) -> str:
    """The assistant's text for the last prompt: from the Stop payload, else its transcript."""
    direct = payload.get("last_assistant_message")
    if isinstance(direct, str) and direct.strip():
        return direct
    path = payload.get("transcript_path")
    if not isinstance(path, str):
        return ""
    deadline = time.monotonic() + 2.0
    while True:
        texts: list[str] = []
        try:
            lines = _read(path).splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            msg = entry.get("message") if isinstance(entry, dict) else None
            if not isinstance(msg, dict):
                continue
            content = msg.get("content")
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
            kinds = {b.get("type") for b in blocks if isinstance(b, dict)}
            if entry.get("type") == "user" and "text" in kinds and "tool_result" not in kinds:
                texts = []  # a new prompt: the answer starts after it
            elif entry.get("type") == "assistant":
                texts += [str(b["text"]) for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
        if texts or time.monotonic() > deadline:
            return "\n".join(texts)
        time.sleep(0.1)


def _usage(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The token totals per model of Claude Code's transcript (``transcript_path``), read on from where
    the last hook run stopped (``TALLY``, under a lock: hooks may run side by side)."""
    path = payload.get("transcript_path")
    if not isinstance(path, str) or not path:
        return None
    from sandbox import usage as U  # (not in the resident init)

    try:
        fd = os.open(TALLY + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        fd = -1
    try:
        try:
            tally = U.Tally(json.loads(_read(TALLY)))
        except (OSError, ValueError):
            tally = U.Tally()
        try:
            with open(path, "rb") as f:
                f.seek(tally.offsets.get(path, 0))
                data = f.read(TRANSCRIPT_CAP)
        except OSError:
            return None
        tally.feed(path, data)
        _replace(TALLY, tally.to_json())
        return tally.usage()
    finally:
        if fd >= 0:
            os.close(fd)


def _await_in_transcript(payload: dict[str, Any], timeout: float = 1.0) -> None:
    """PreToolUse: the model call that asked for this tool may reach the transcript just after the hook
    starts; its usage must count before the budget lets the tool run. Wait (briefly, bounded) until the
    tool call's id is in the transcript's tail."""
    path, needle = payload.get("transcript_path"), payload.get("tool_use_id")
    if not isinstance(path, str) or not isinstance(needle, str) or not needle:
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 1024 * 1024))
                if needle.encode() in f.read():
                    return
        except OSError:
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)


def _usage_safely(payload: dict[str, Any]) -> dict[str, Any] | None:
    """``_usage``, never failing the hook (the state must move on whatever the transcript holds)."""
    try:
        return _usage(payload)
    except Exception:  # noqa: BLE001
        return None


def _wake_init() -> None:
    """A byte into the supervisor's wake FIFO (the agent cannot signal a root supervisor)."""
    try:
        fd = os.open(C.WAKE_FIFO, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return  # (no reader: a parked or ended supervisor, which needs no wake from a hook)
    try:
        os.write(fd, b".")
    except OSError:
        pass
    finally:
        os.close(fd)


def _this_attempt(trusted: dict[str, Any]) -> dict[str, Any]:
    """The agent's report when it is for the supervisor's current attempt, else a new one that goes on
    from the state file's counters (turns and prompts count on across restarts as they always did)."""
    report = _read_report()
    if report.get(S.ATTEMPT) == trusted.get(S.ATTEMPT):
        return report
    return {S.ATTEMPT: trusted.get(S.ATTEMPT),
            **{k: trusted[k] for k in (S.PROMPTS, S.STOPS, S.USAGE) if k in trusted}}


def _report(state: str, fields: dict[str, Any]) -> None:
    """The hook's news into the agent's report (``REPORT``, the agent's own file): the supervisor merges
    it into the state file (``merge_report``)."""
    try:
        fd = os.open(os.path.join(I.AGENT_DIR, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        fd = -1
    try:
        report = _this_attempt(read_state())
        report.update(fields)
        report[S.STATE] = state
        report[S.SEQ] = int(report.get(S.SEQ) or 0) + 1 if isinstance(report.get(S.SEQ), int) else 1
        _replace(I.REPORT, json.dumps(report))
    finally:
        if fd >= 0:
            os.close(fd)
    _wake_init()


# The events after which the transcript may hold a new model answer: the tokens are totalled then.
USAGE_EVENTS = ("PreToolUse", "PostToolUse", "Stop", "SubagentStop", "Notification")


def hook(event: str) -> int:
    try:
        raw = sys.stdin.read()
        payload = json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        payload = {}
    payload = payload if isinstance(payload, dict) else {}
    state = HOOK_STATES.get(event)
    if state is None:
        return 0
    trusted = read_state()  # (the supervisor's: whether the agent still runs, which attempt)
    if trusted.get(S.STATE) in C.TERMINAL:
        return 0
    current = _this_attempt(trusted)  # (this attempt's counters so far)
    fields: dict[str, Any] = {S.EVENT: event, S.ACTIVITY: time.time()}
    sid, transcript = payload.get("session_id"), payload.get("transcript_path")
    if isinstance(sid, str) and SESSION_RE.match(sid) and isinstance(transcript, str) and len(transcript) < 4096:
        fields[S.SESSION_ID], fields[S.TRANSCRIPT] = sid, transcript  # what a restart resumes
    if event == "UserPromptSubmit":
        fields[S.PROMPTS] = int(current.get(S.PROMPTS, 0)) + 1
    elif event == "SessionStart" and int(current.get(S.PROMPTS, 0)) == 0 and not trusted.get(S.RESUMED) \
            and payload.get("source") != "resume":
        # A task given as the prompt argument is submitted right after start: busy, not idle.
        launch = C.Launch.from_json(_read(I.LAUNCH))
        if launch.task and launch.delivery == "arg":
            state = C.BUSY
    elif event == "Notification":
        message = str(payload.get("message") or "")
        kind = str(payload.get("notification_type") or "")
        fields[S.NOTIFICATION] = message[:300]
        if kind == "idle_prompt" or "waiting for your input" in message:
            return 0  # Claude Code's reminder after a long idle: still idle, nothing new is asked
    elif event == "Stop":
        answer = _last_answer(payload)
        _replace(os.path.join(I.AGENT_DIR, C.REPLY_FILE), answer)
        fields[S.STOPS] = int(current.get(S.STOPS, 0)) + 1
        if answer.rstrip().endswith("?"):
            state = C.WAITING  # the turn ended with a question for the user
            fields[S.REASON] = "question"
    over = None
    if event in USAGE_EVENTS:
        if event == "PreToolUse":
            _await_in_transcript(payload)
        used = _usage_safely(payload)
        if event == "Stop" and used is not None:
            # The turn's last answer may reach the transcript just after this hook starts (as for
            # _last_answer): read again briefly until its calls are there.
            deadline = time.monotonic() + 1.0
            while used == (current.get(S.USAGE) or {}) and time.monotonic() < deadline:
                time.sleep(0.1)
                used = _usage_safely(payload) or used
        if used is not None:
            fields[S.USAGE] = used
            try:
                launch = C.Launch.from_json(_read(I.LAUNCH))
            except (OSError, ValueError, TypeError):
                launch = None
            if launch is not None and launch.max_cost:
                from sandbox import usage as U

                over = U.Budget(float(launch.max_cost), list(launch.prices or [])).exceeded(used)
    if over:
        fields[S.OVER_BUDGET] = over
    if state != C.WAITING:
        fields[S.REASON] = None
    _report(state, fields)  # (and the supervisor is woken: it merges the report, stops an agent over budget)
    if over:
        if event == "PreToolUse":
            print(f"sandbox: {over}: the agent is being stopped", file=sys.stderr)
            return 2  # Claude Code does not run this tool
    return 0
