"""The ``max_agents`` limit: at most N agents starting, busy or waiting at once.

A spawn takes a slot before it creates anything: an exclusive ``flock`` on
``<data_dir>/capacity.lock`` is held from the count until the new container has started (its
state is then ``starting``, which counts), so two spawns of this user on this host cannot both
take the last slot. Spawns from other hosts or users share no lock: after ``create`` the count
is taken again, and a spawn that finds the limit exceeded backs out (removes what it made).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from sandbox.errors import Conflict, WaitTimeout

WORKING = ("starting", "busy", "waiting")  # states that hold a slot; idle/stopped/exited/failed do not


class Slot:
    """``with Slot(...)``: wait for (``queue``) or demand a free slot; ``release()`` once started."""

    def __init__(self, lock_file: Path, limit: int | None, count: Callable[[], int], *,
                 queue: bool = False, timeout: float = 3600.0, poll: float = 1.0) -> None:
        self.lock_file = lock_file
        self.limit = limit
        self.count = count
        self.queue = queue
        self.timeout = timeout
        self.poll = poll
        self._fd: int | None = None

    def _lock(self) -> None:
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def full(self, *, including_me: bool = False) -> bool:
        if self.limit is None:
            return False
        n = self.count()
        return n > self.limit if including_me else n >= self.limit

    def __enter__(self) -> Slot:
        if self.limit is None:
            return self
        deadline = time.monotonic() + self.timeout
        while True:
            self._lock()
            if not self.full():
                return self
            self.release()
            if not self.queue:
                raise Conflict(f"capacity full: {self.limit} agents are starting, busy or waiting",
                               hint="wait, pass --queue, or raise --max-agents")
            if time.monotonic() > deadline:
                raise WaitTimeout(f"no free slot (max {self.limit} agents) after {self.timeout:.0f}s")
            time.sleep(self.poll)

    def recheck(self) -> None:
        """After create: back out if spawns elsewhere (no shared lock) took the slot meanwhile."""
        if self.full(including_me=True):
            raise Conflict(f"capacity full: more than {self.limit} agents after create (a concurrent spawn)",
                           hint="try again, or pass --queue")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
