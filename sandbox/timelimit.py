"""``max_time`` enforced from outside the container too (stdlib only).

The container's root supervisor stops the agent when its ``max_time`` passes (``sandbox.inside``); the
agent cannot signal it. This is the host's own guard for when the supervisor cannot act (hung, frozen,
its container's processes stopped): whenever the host lists the agents with their sync (``ls``, ``top``'s board:
``SandboxManager.list``, beside ``disk.watch``), a running agent whose time is over by more than ``grace`` — counted from the engine's
own start of its container, or its spawn when later (a warm pool's container started before its agent
was given to it) — and whose state does not say it was stopped is stopped by the engine (its work
kept), the reason in the host-only record ``sandbox.disk`` keeps (``Sandbox.reason`` shows it). Nothing
the agent writes decides it: the labels are the host's, the start time the engine's; the state file
can only make the host act sooner (a state that lies "stopped" leaves the agent to its supervisor).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sandbox import disk, labels as L
from sandbox.errors import SandboxError

if TYPE_CHECKING:
    from sandbox.manager import SandboxManager
    from sandbox.snapshot import Sandbox

GRACE_MAX = 30.0     # seconds the supervisor has to do it itself (it writes the WIP state, stops the agent)
DONE = ("stopped", "exited", "failed")


def grace(limit: float) -> float:
    return min(GRACE_MAX, max(2.0, limit))


def _epoch(raw: object) -> float | None:
    """The engine's RFC 3339 time (``Z`` or an offset, nanoseconds) or our ISO label, as epoch seconds."""
    text = str(raw or "")
    if not text or text.startswith("0001-"):
        return None
    head, dot, rest = text.partition(".")
    if dot:  # nanoseconds: keep microseconds, then the zone
        n = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:min(n, 6)]}{rest[n:]}"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def limit_of(sb: Sandbox) -> float:
    try:
        return max(0.0, float(sb.labels.get(L.MAX_TIME) or 0))
    except ValueError:
        return 0.0


def ended(sb: Sandbox) -> bool:
    """Its supervisor says the agent ended (``state.json``, the supervisor's alone): not ``Sandbox.state``,
    which is also ``failed`` when the supervisor went silent — the agent may well run on then."""
    return str((sb.agent_state or {}).get("state") or "") in DONE


def overdue(sb: Sandbox, started: float, now: float) -> str:
    """Why the host stops ``sb`` now (its time is over and its supervisor has not stopped it), or ""."""
    limit = limit_of(sb)
    if not limit or sb.engine_state != "running" or ended(sb):
        return ""
    if now - started < limit + grace(limit):
        return ""
    return (f"max-time {limit:g}s passed {now - started - limit:.0f}s ago and its supervisor had not stopped it: "
            "stopped by the host (work kept)")


def watch(mgr: SandboxManager, found: list[Sandbox]) -> list[str]:
    """Stop the listed agents whose ``max_time`` is over (see the module's text); the names stopped. One
    inspect per agent past the cheap check (the container's creation + its limit + grace), none otherwise."""
    now = time.time()
    stopped = []
    for sb in found:
        limit = limit_of(sb)
        if not limit or sb.headless or sb.engine_state != "running" or ended(sb):
            continue
        if sb.container_created and now - sb.container_created < limit + grace(limit):
            continue  # (created before it started: not over yet)
        engine = mgr.engine_for(sb)
        try:
            started = _epoch(engine.inspect(sb.container_id).get("State", {}).get("StartedAt"))
        except SandboxError:
            continue
        known = [t for t in (started, _epoch(sb.labels.get(L.CREATED))) if t is not None]
        reason = overdue(sb, max(known), now) if known else ""
        if not reason:
            continue
        disk.record_stop(mgr.settings.data_dir, sb.name, sb.container_id, reason)
        try:
            engine.stop(sb.container_id, timeout=10)
        except SandboxError:  # (gone meanwhile: nothing to stop; the listing goes on)
            continue
        stopped.append(sb.name)
    return stopped
