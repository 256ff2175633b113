"""tests/reliability/: load, crash matrix, engine restart, container faults, bad input.

Every test here is marked ``reliability`` and runs in the normal suite at a small scale (the whole
directory in a few minutes on a 2-CPU machine). ``SANDBOX_RELIABILITY_SCALE`` multiplies the counts;
``SANDBOX_RELIABILITY_SCALE=full`` runs the sizes of issue 13 (200 spawns at 8 in parallel, 20
repetitions of every crash point). The figures of the last run go to
``$SANDBOX_RELIABILITY_OUT`` (default ``tests/reliability/results.json``) for RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

MARKS = [pytest.mark.reliability, pytest.mark.slow]  # each module: pytestmark = MARKS

OUT = Path(os.environ.get("SANDBOX_RELIABILITY_OUT") or Path(__file__).with_name("results.json"))
_lock = threading.Lock()


def scale() -> float:
    raw = os.environ.get("SANDBOX_RELIABILITY_SCALE", "").strip()
    if raw == "full":
        return float("inf")
    return float(raw) if raw else 1.0


def count(ci: int, full: int) -> int:
    """``ci`` at the default scale, times the scale, never above the issue's ``full`` size."""
    s = scale()
    return full if s == float("inf") else max(1, min(full, round(ci * s)))


def record(section: str, figures: dict) -> None:
    """Keep a test's figures (merged into OUT) and print them (pytest -s shows them)."""
    with _lock:
        try:
            data = json.loads(OUT.read_text())
        except (OSError, ValueError):
            data = {}
        data[section] = figures
        OUT.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"\n[{section}] {json.dumps(figures, sort_keys=True)}")

