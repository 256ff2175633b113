"""Named retry policies (tenacity) for transient Docker engine errors — host side only.

A policy retries only what :func:`is_transient` calls transient: the engine unreachable for a
moment (connection reset/refused, timeout), a 5xx that is not a configuration error, and a
container name still held by a container that is being removed. Attempts and total time are
bounded, each retry is logged, and the original error is re-raised when the policy gives up.

Use a policy only on a call that is safe to repeat (list, inspect, start, stop, reading execs),
or on a mutating call after checking whether it already took effect (see ``Engine.create``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from sandbox.errors import Conflict, EngineError, EngineUnavailable

if TYPE_CHECKING:  # tenacity is imported when a policy is first used: `ls` stays quick to start
    import tenacity

T = TypeVar("T")

# 5xx answers that are the caller's configuration, not the engine's weather: never retried.
_CONFIG_ERRORS = re.compile(
    r"invalid|no such image|not found|bind source path does not exist|mount denied|"
    r"unknown (flag|option|runtime)|executable file not found|permission denied|"
    r"OCI runtime create failed|port is already allocated|conflicting options|"
    r"is not running|is paused|is restarting",
    re.IGNORECASE,
)
# A name that is held only until an earlier container's removal completes.
NAME_HELD = re.compile(r"is already in use by container|removal of container .* is already in progress",
                       re.IGNORECASE)


def is_transient(err: BaseException) -> bool:
    """Is this engine error worth one more try of the same (idempotent) call?"""
    if isinstance(err, EngineUnavailable):
        return True
    if isinstance(err, Conflict):
        return False  # a name conflict is decided by the caller (see is_name_held)
    if isinstance(err, EngineError):
        status = err.status or 0
        return 500 <= status < 600 and not _CONFIG_ERRORS.search(err.message)
    return False


def is_name_held(err: BaseException) -> bool:
    return isinstance(err, Conflict) and bool(NAME_HELD.search(err.message))


def _log_retry(policy: str, state: tenacity.RetryCallState) -> None:
    import logging  # only when a retry happens: every command imports this module

    log = logging.getLogger("sandbox.engine.retry")
    if not log.handlers:
        log.addHandler(logging.NullHandler())  # quiet unless the application configures logging (one-line errors)
    err = state.outcome.exception() if state.outcome else None
    log.info("engine call %s failed (%s, attempt %d, %.1fs): %s; retrying", getattr(state.fn, "__name__", "?"),
             policy, state.attempt_number, state.seconds_since_start, err)
    _count_retry(policy, err)


def _count_retry(policy: str, err: BaseException | None) -> None:
    """``SANDBOX_RETRY_LOG=FILE``: one line per retry appended there (the reliability tests count
    engine retries per 1,000 calls with it); unset, nothing."""
    import os

    path = os.environ.get("SANDBOX_RETRY_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{policy}\t{type(err).__name__}\t{str(err)[:200]!r}\n")


@dataclass(frozen=True)
class Policy:
    """A named, bounded retry policy: exponential backoff with jitter, each retry logged, the original
    error re-raised when it gives up. A constant: the tenacity object is made per call (tenacity
    itself is imported only then)."""

    name: str
    attempts: int
    max_seconds: float
    first: float = 0.1
    cap: float = 2.0
    retry_if: Callable[[BaseException], bool] = is_transient

    def retrying(self) -> tenacity.Retrying:
        import tenacity

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(self.retry_if),
            stop=tenacity.stop_after_attempt(self.attempts) | tenacity.stop_after_delay(self.max_seconds),
            wait=tenacity.wait_random_exponential(multiplier=self.first, max=self.cap),
            before_sleep=lambda state: _log_retry(self.name, state),
            reraise=True,
        )


# The named policies.
# list, inspect, reading execs: cheap, repeat quickly
READS = Policy("reads", attempts=4, max_seconds=10)
# start, stop: idempotent, may take longer
LIFECYCLE = Policy("lifecycle", attempts=3, max_seconds=30, first=0.5)
# create while the previous holder of the name is being removed
NAME_RELEASE = Policy("name-release", attempts=20, max_seconds=15, first=0.1, cap=1.0,
                      retry_if=lambda e: is_transient(e) or is_name_held(e))


def call(policy: Policy, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` under ``policy``. The first attempt runs as it is; only an error the
    policy retries brings in tenacity (a fresh object: no state shared between calls), which makes the
    remaining attempts. Costs nothing when the call succeeds (tenacity takes ~17 ms to import)."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        if policy.attempts <= 1 or not policy.retry_if(err):
            raise
        import random
        import time

        _count_retry(policy.name, err)
        time.sleep(random.uniform(0, policy.first))  # (the backoff tenacity would have waited)
    return replace(policy, attempts=policy.attempts - 1).retrying()(fn, *args, **kwargs)
