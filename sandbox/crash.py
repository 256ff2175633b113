"""Crash points for the reliability tests (stdlib only, tiny).

``SANDBOX_TEST_CRASH_AT=STEP`` makes the process SIGKILL itself when it reaches ``STEP`` (e.g.
``spawn:create``): the tests prove that after a crash at each step the next ``gc --apply`` or the
same command again leaves either the state before or the finished one. Unset (always, outside the
tests), a point is one environment lookup. The steps: README "Never losing work".
"""

from __future__ import annotations

import os
import signal

ENV = "SANDBOX_TEST_CRASH_AT"
STEPS = ("spawn:workspace", "spawn:create", "spawn:start", "spawn:ready",
         "rm:checked", "rm:container", "rm:backup", "rm:agent-git", "rm:workspace",
         "merge:synced", "merge:merged", "gc:action")


def point(step: str) -> None:
    if os.environ.get(ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
