"""What the kernel says about an agent's limits: OOM kills and refused forks (the host's cgroup files).

The counters come from the container's cgroup as the host sees it, never from a file the agent can
write: ``memory.events``/``pids.events`` (cgroup v2) or ``memory.oom_control``/``pids.events``
(cgroup v1), under the engine's usual places (cgroupfs driver ``docker/<id>``, systemd driver
``system.slice/docker-<id>.scope``). Reading them is a few small file reads, no engine call; on a
host that has none of these (a remote engine, an unusual layout) the counters are simply absent.
They count since the container's last start (the cgroup is made anew on each start).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Pressure:
    oom_kills: int = 0        # processes the OOM killer took (memory limit)
    pids_refused: int = 0     # forks refused at the pids limit (a fork bomb, or too many processes)

    def describe(self) -> str:
        """``OOM-killed 2×; pids limit hit 37×`` (empty when nothing happened)."""
        parts = []
        if self.oom_kills:
            parts.append(f"OOM-killed {self.oom_kills}×")
        if self.pids_refused:
            parts.append(f"pids limit hit {self.pids_refused}×")
        return "; ".join(parts)


def _counter(path: Path, key: str) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def _dirs(container_id: str) -> list[Path]:
    return [Path("docker") / container_id, Path("system.slice") / f"docker-{container_id}.scope"]


def pressure(container_id: str, root: Path = ROOT) -> Pressure | None:
    """The container's counters, or None when its cgroup is not visible here."""
    if not container_id.isalnum():
        return None
    for d in _dirs(container_id):
        v2 = root / d
        if (v2 / "memory.events").exists() or (v2 / "pids.events").exists():  # cgroup v2
            return Pressure(_counter(v2 / "memory.events", "oom_kill") or 0, _counter(v2 / "pids.events", "max") or 0)
        v1_memory = root / "memory" / d / "memory.oom_control"
        if v1_memory.exists():  # cgroup v1
            return Pressure(_counter(v1_memory, "oom_kill") or 0,
                            _counter(root / "pids" / d / "pids.events", "max") or 0)
    return None


def processes(container_id: str, root: Path = ROOT) -> list[int] | None:
    """The host's pids of the container's processes (its cgroup's ``cgroup.procs``), or None when
    its cgroup is not visible here."""
    if not container_id.isalnum():
        return None
    for d in _dirs(container_id):
        for procs in (root / d / "cgroup.procs", root / "pids" / d / "cgroup.procs"):  # v2, v1
            try:
                return [int(p) for p in procs.read_text().split() if p.isdigit()]
            except OSError:
                continue
    return None


ENVIRON_CAP = 1 << 20


def kill_marked(container_id: str, marker: str, root: Path = ROOT, proc: Path = Path("/proc")) -> int:
    """SIGKILL every process of the container whose environment holds ``marker`` (``NAME=VALUE``, set
    on an exec by the host): an exec whose client was killed, and what it started, which the engine
    leaves running (a stopped process too: SIGKILL needs no cooperation). How many; 0 when the
    container's processes are not visible here (a remote engine) or may not be read."""
    needle = b"\0" + marker.encode() + b"\0"
    killed = 0
    for pid in processes(container_id, root) or []:
        try:
            with open(proc / str(pid) / "environ", "rb") as f:
                environ = b"\0" + f.read(ENVIRON_CAP)
        except OSError:
            continue
        if needle in environ + b"\0":
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed
