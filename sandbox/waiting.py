"""Waiting on agent states: ``sandbox wait`` and ``sandbox send --wait``.

States come from the per-agent state file (see README "States"), read locally; where this host
cannot read it (a remote engine) one exec per poll reads it instead. Polls are bounded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sandbox import agentfiles, contract, labels as L
from sandbox.contract import S
from sandbox.errors import AgentError, WaitTimeout
from sandbox.manager import Sandbox, SandboxManager

TERMINAL = ("exited", "failed", "stopped")
UNTIL = {
    "idle": ("idle",),
    "waiting": ("waiting",),
    "exited": TERMINAL,
    "any": ("idle", "waiting", *TERMINAL),  # anything but starting/busy: the agent is not working
}


# How long a wait that returned spends bringing the agent's work over (``brought_over``).
BRING_OVER_TIMEOUT = 10.0


def _snapshot(mgr: SandboxManager, name: str) -> Sandbox:
    return mgr.with_exec_state(mgr.get(name))


def brought_over(mgr: SandboxManager, sb: Sandbox) -> Sandbox:
    """The agent's turn is over: bring its commits over to the host's ``sandbox/NAME`` (the host's
    verifying fetch, skipped when its git dir has not changed since the last one; bounded), so
    ``git log sandbox/NAME`` is current as soon as a wait returns. One that cannot be read stays
    as it was: ``ls`` shows it stale, ``diff`` and ``merge`` say why."""
    if sb.agent_git is not None and sb.engine_state == "running":
        mgr.refresh_branches([sb], timeout=min(mgr.settings.sync_timeout, BRING_OVER_TIMEOUT))
    return sb


def wait(mgr: SandboxManager, name: str, until: str = "idle", timeout: float | None = None,
         poll: float = 0.2) -> Sandbox:
    """Return the agent once its state is in ``UNTIL[until]``.

    Raises WaitTimeout (exit 9) when ``timeout`` passes, AgentError (exit 8) when the agent ends
    (exited/failed/stopped) while something else was awaited.
    """
    if until not in UNTIL:
        from sandbox.errors import UsageError

        raise UsageError(f"--until must be one of {', '.join(UNTIL)}")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        sb = _snapshot(mgr, name)
        if sb.state in UNTIL[until]:
            return brought_over(mgr, sb)
        if sb.state in TERMINAL:
            raise AgentError(f"agent {name} is {sb.state}" + (f": {sb.reason}" if sb.reason else ""))
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeout(f"agent {name} still {sb.state} after {timeout:g}s (waiting for {until})")
        time.sleep(poll)


def wait_any(mgr: SandboxManager, repo: Path | None, until: str = "waiting", timeout: float | None = None,
             poll: float = 0.25, relist: float = 2.0, exec_state: bool = False) -> Sandbox:
    """Return the first agent (of ``repo``; None: every repository) whose state is in ``UNTIL[until]``
    — one already there counts at once. The state files are polled locally every ``poll`` s; the
    engine is listed every ``relist`` s (new agents, containers that ended). ``exec_state``: a remote
    engine's agents are read by an exec per agent, at each re-list only.

    Raises WaitTimeout (exit 9) when ``timeout`` passes, AgentError (exit 8) when there are agents and
    every one has ended while something else was awaited.
    """
    if until not in UNTIL:
        from sandbox.errors import UsageError

        raise UsageError(f"--until must be one of {', '.join(UNTIL)}")
    deadline = None if timeout is None else time.monotonic() + timeout
    found: list[Sandbox] = []
    listed_at = -relist
    while True:
        now = time.monotonic()
        if now - listed_at >= relist:
            found = mgr.list(repo, sync=False, exec_state=exec_state)
            listed_at = now
        else:
            found = [mgr.refreshed(sb) for sb in found]
        for sb in found:
            if sb.state in UNTIL[until]:
                return brought_over(mgr, sb)
        if found and all(sb.state in TERMINAL for sb in found):
            raise AgentError(f"every agent has ended ({', '.join(f'{sb.name} {sb.state}' for sb in found)})")
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeout(f"no agent {until} after {timeout:g}s ({len(found)} agents)")
        time.sleep(poll)


def _new_text(before: str, after: str, prompt: str) -> str:
    """Pane text that appeared after ``before``, without the echoed prompt."""
    old = before.rstrip("\n").splitlines()
    new = after.rstrip("\n").splitlines()
    # The prompt is typed on the last line of `before` (e.g. a shell prompt): all lines but that stay.
    k = max(0, len(old) - 1)
    lines = new[k:] if new[:k] == old[:k] else new
    last = (prompt.strip().splitlines() or [""])[-1]
    for i, line in enumerate(lines):
        if last and last in line:
            lines = lines[i + 1:]
            break
    return "\n".join(lines).strip("\n")


def send_wait(mgr: SandboxManager, name: str, text: str, timeout: float | None = None) -> str:
    """Send a prompt, wait until the agent's turn is over (idle or waiting), return its answer.

    Claude Code: the Stop hook stores the turn's assistant text in ``reply.txt`` (from the hook's
    ``transcript_path``). Other agents: the pane text that appeared after the prompt.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    sb = _snapshot(mgr, name)
    if sb.state == "starting" and timeout is not None:  # --timeout bounds the wait for ready too
        try:
            sb = mgr.wait_ready(sb, timeout=timeout)
        except AgentError:
            if deadline is None or time.monotonic() < deadline:
                raise
            raise WaitTimeout(f"agent {name} still starting after {timeout:g}s") from None
    hooks = sb.labels.get(L.AGENT) == "claude"
    stops = int(sb.agent_state.get(S.STOPS) or 0)
    before = "" if hooks else mgr.logs(name)
    t_send = time.time()
    mgr.send(name, text, sb=sb if sb.engine_state == "running" else None)
    while True:
        sb = _snapshot(mgr, name)
        st = sb.agent_state
        done = (int(st.get(S.STOPS) or 0) > stops) if hooks else float(st.get(S.SINCE) or 0) > t_send
        if done and sb.state in ("idle", "waiting"):
            break
        if sb.state in TERMINAL:
            raise AgentError(f"agent {name} is {sb.state}" + (f": {sb.reason}" if sb.reason else ""))
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeout(f"agent {name} still {sb.state} after {timeout:g}s")
        time.sleep(0.2)
    brought_over(mgr, sb)
    if not hooks:
        return _new_text(before, mgr.logs(name), text)
    return _reply(mgr, sb)


def _reply(mgr: SandboxManager, sb: Sandbox) -> str:
    """The turn's answer from ``reply.txt``, which the agent writes: untrusted (see ``agentfiles``).
    Read on the host when the state dir is here, else (remote engine) by a bounded exec inside the
    container, which sees only the agent's own files."""
    where = os.path.join(sb.labels.get(L.STATE_DIR, "/nonexistent"), contract.AGENT_STATE)
    got = agentfiles.read(where, contract.REPLY_FILE, agentfiles.REPLY_CAP, "reply file")
    if got.data is None and got.absent:
        res = mgr.read_in(sb, agentfiles.exec_argv(f"{contract.AGENT_STATE_DIR}/{contract.REPLY_FILE}",
                                                   agentfiles.REPLY_CAP))
        if res.exit_code != 0:
            return ""  # no answer stored
        if len(res.stdout) > agentfiles.REPLY_CAP:
            got = agentfiles.Read(None, f"reply file is larger than {agentfiles.REPLY_CAP // (1024 * 1024)} MiB")
        else:
            got = agentfiles.Read(res.stdout)
    if got.data is None:
        raise AgentError(f"agent {sb.name} ended its turn, but its answer cannot be shown: {got.reason}")
    return got.data.decode("utf-8", "replace")
