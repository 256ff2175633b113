"""The agent's disk, watched from the host: its workspace, its own git dir and its state dir.

No quota from the engine fits: those three are bind mounts of host directories, which no engine
option bounds (``--storage-opt size=`` bounds a container's writable layer, and only on some storage
drivers: overlay2 on xfs with project quotas, btrfs, zfs, devicemapper; this machine's engine runs
fuse-overlayfs, which has none). So the host measures them as ``ls`` lists the agents, like the
budget is watched: at most once every ``EVERY`` seconds per agent, bounded (a walk that never follows
a link, ``lstat`` only, allocated blocks counted so a sparse file costs what it uses, stopped at
``MAX_ENTRIES``). Over the agent's ``disk`` limit (its label, from the setting at spawn), at the
entry cap, or a state dir over ``STATE_MAX_ENTRIES``/``STATE_MAX_BYTES``, the agent's container is
stopped — its work is kept, as for any stopped agent — and the reason goes to a host-only file
(``data_dir/disk/NAME``), which ``ls`` shows. Nothing the agent writes is read as text here.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox import labels as L
from sandbox.errors import SandboxError

if TYPE_CHECKING:
    from sandbox.manager import Sandbox, SandboxManager

EVERY = 60.0                  # seconds between two measurements of one agent
MAX_ENTRIES = 200_000         # files and directories walked at most (~0.3 s); more counts as over
STATE_MAX_ENTRIES = 1_000     # the state dir holds a handful of files the host reads by name
STATE_MAX_BYTES = 64 << 20


@dataclass(frozen=True)
class Usage:
    bytes: int     # allocated on disk (st_blocks), links not followed
    entries: int
    capped: bool   # the walk stopped at its cap: at least this much


def measure(roots: Iterable[Path], cap: int = MAX_ENTRIES) -> Usage:
    """What ``roots`` hold on disk: a walk that never follows a symbolic link (nor crosses into one)
    and stops after ``cap`` entries. What cannot be read is skipped."""
    total, entries = 0, 0
    todo = [str(r) for r in roots]
    while todo:
        path = todo.pop()
        try:
            with os.scandir(path) as it:
                for entry in it:
                    entries += 1
                    if entries > cap:
                        return Usage(total, entries - 1, True)
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if stat.S_ISDIR(st.st_mode):
                        todo.append(entry.path)
        except OSError:
            continue
    return Usage(total, entries, False)


def _record(data_dir: Path, name: str) -> Path:
    return data_dir / "disk" / name


def stopped_reason(data_dir: Path, name: str, container_id: str) -> str:
    """Why the host stopped this container (its disk, its time: ``record_stop``), or "" (a host-only file, of
    this container)."""
    try:
        found = json.loads(_record(data_dir, name).read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(found, dict) or found.get("container") != container_id:
        return ""
    return str(found.get("reason") or "")


def record_stop(data_dir: Path, name: str, container_id: str, reason: str, ts: float | None = None) -> None:
    """Write the host-only record of agent ``name``: why the host stops its container ("" : measured, fine);
    ``stopped_reason`` reads it back (also the time limit's, ``sandbox.timelimit``)."""
    record = _record(data_dir, name)
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".{name}.{os.getpid()}")
    tmp.write_text(json.dumps({"container": container_id, "ts": time.time() if ts is None else ts, "reason": reason}))
    os.replace(tmp, record)


def forget(data_dir: Path, name: str) -> None:
    _record(data_dir, name).unlink(missing_ok=True)


def over(sb: Sandbox, limit: int) -> str:
    """Why ``sb`` is over its disk, or "": its workspace + git dir + state dir against ``limit``
    bytes (0: no byte limit, the entry caps still hold)."""
    from sandbox.workspace.git import human

    state_dir = Path(sb.labels[L.STATE_DIR]) if sb.labels.get(L.STATE_DIR) else None
    if state_dir is not None:
        state = measure([state_dir], STATE_MAX_ENTRIES)
        if state.capped or state.bytes > STATE_MAX_BYTES:
            return (f"its state dir holds more than {STATE_MAX_ENTRIES} entries" if state.capped
                    else f"its state dir holds {human(state.bytes)}, over {human(STATE_MAX_BYTES)}")
    roots = [p for p in (sb.workspace, sb.agent_git, state_dir) if p is not None]
    used = measure(roots, MAX_ENTRIES)
    if used.capped:
        return f"its workspace holds more than {MAX_ENTRIES} files, the most sandbox measures (disk limit)"
    if limit and used.bytes > limit:
        return f"its workspace uses {human(used.bytes)}, over its disk limit ({human(limit)})"
    return ""


def watch(mgr: SandboxManager, found: list[Sandbox]) -> list[str]:
    """Measure the running agents of ``found`` whose last measurement is older than ``EVERY`` and stop
    those over their disk (their work kept); the names stopped."""
    data_dir = mgr.settings.data_dir
    now = time.time()
    stopped = []
    for sb in found:
        if sb.engine_state != "running" or sb.headless or not sb.labels.get(L.WORKSPACE):
            continue
        if not os.path.isdir(sb.workspace):  # (a remote engine: not this host's to measure)
            continue
        record = _record(data_dir, sb.name)
        try:
            if now - record.stat().st_mtime < EVERY:
                continue
        except OSError:
            pass
        limit = int(sb.labels.get(L.DISK) or 0) if (sb.labels.get(L.DISK) or "").isdigit() else 0
        reason = over(sb, limit)
        record_stop(data_dir, sb.name, sb.container_id, reason, now)
        if reason:
            try:
                mgr.engine_for(sb).stop(sb.container_id, timeout=10)
            except SandboxError:  # (gone meanwhile: nothing to stop; the listing goes on)
                continue
            stopped.append(sb.name)
    return stopped
