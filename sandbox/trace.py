"""Where a command's time goes (stdlib only, tiny): ``sandbox spawn --trace``.

``Trace.mark(step)`` closes the step that ran since the previous mark; ``lines()`` gives one
``trace: STEP MS ms`` line per step and ``trace: total MS ms``, measured from the process's own
start (``/proc/self/stat``), so the interpreter's start and the imports show as ``startup``.
"""

from __future__ import annotations

import os
import time


def _process_age() -> float:
    """Seconds since this process started (0 where /proc cannot tell)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


class Trace:
    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []
        now = time.perf_counter()
        self.t0 = now - _process_age()
        self.last = self.t0
        self.mark("startup")

    def mark(self, step: str) -> None:
        now = time.perf_counter()
        self.steps.append((step, now - self.last))
        self.last = now

    def lines(self) -> list[str]:
        out = [f"trace: {step} {seconds * 1000:.1f} ms" for step, seconds in self.steps]
        return [*out, f"trace: total {(self.last - self.t0) * 1000:.1f} ms"]


class _Off:
    """What a spawn marks when nobody traces it."""

    def mark(self, step: str) -> None:
        pass


OFF = _Off()
