"""Reading files the agent writes for the host (``state.json``, ``reply.txt``): untrusted input.

The agent's container can write its state dir (bind-mounted rw at ``/run/sandbox-state``), so the
host must assume anything there: a symbolic link to a host file only root may read (the host
resolves the link, not the container), a FIFO that blocks a reader forever, a link to ``/dev/zero``,
a huge file, bytes that are not JSON. :func:`read` never follows a link (``O_NOFOLLOW`` on the
directory and on the file, the file opened relative to the directory), never blocks
(``O_NONBLOCK``, then ``fstat``: regular files only), never reads more than a cap, and never
raises: anything wrong is "missing" plus a short reason. Stdlib only.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from typing import Any, NamedTuple

from sandbox import terminal
from sandbox.contract import STATE_FILE, STATE_TYPES

STATE_CAP = 256 * 1024   # state.json: a few hundred bytes in practice
REPLY_CAP = 1024 * 1024  # reply.txt: one turn's assistant text
REASON_MAX = 500         # a reason from the agent is shown in `ls`: one bounded line

ABSENT = "absent"  # the reason when the file (or its directory) is not there: normal before the agent writes it


class Read(NamedTuple):
    """What :func:`read` found: the bytes, or None and why not."""

    data: bytes | None
    reason: str = ""

    @property
    def absent(self) -> bool:
        """Not there at all (not written yet, or a remote engine's state dir): a fallback may ask the container."""
        return self.data is None and self.reason == ABSENT


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return what
    return "not a regular file"


def read(directory: str | os.PathLike[str], name: str, cap: int, what: str | None = None) -> Read:
    """The bytes of ``directory/name`` when it is a regular file of at most ``cap`` bytes.

    ``what`` names the file in reasons ("state file"); default: ``name``. Never raises OSError.
    """
    label = what or name
    if not name or "/" in name or name in (".", ".."):
        return Read(None, f"{label}: bad file name")
    try:
        dfd = os.open(directory, _DIR_FLAGS)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return Read(None, ABSENT)
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            return Read(None, f"{label}: its directory is not a plain directory")
        return Read(None, f"cannot open the directory of the {label}: {e.strerror}")
    try:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return Read(None, ABSENT)
            if e.errno == errno.ELOOP:  # O_NOFOLLOW on a symbolic link
                return Read(None, f"{label} is a symbolic link")
            if e.errno in (errno.ENXIO, errno.EOPNOTSUPP, errno.ENODEV):  # a socket, a device without a driver
                return Read(None, f"{label} is not a regular file")
            return Read(None, f"cannot open the {label}: {e.strerror}")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return Read(None, f"{label} is not a regular file ({_kind(st.st_mode)})")
            if st.st_size > cap:
                return Read(None, f"{label} is larger than {_size(cap)}")
            chunks: list[bytes] = []
            left = cap + 1  # one byte more than allowed tells a file that grew past the cap
            while left > 0:
                chunk = os.read(fd, min(left, 65536))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks)
            if len(data) > cap:
                return Read(None, f"{label} is larger than {_size(cap)}")
            return Read(data)
        except OSError as e:
            return Read(None, f"cannot read the {label}: {e.strerror}")
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n // 1024} KiB"


# -- state.json --------------------------------------------------------------------------------------
# Fields the host computes with, and the type each must have (``contract.STATE_TYPES``); a value of
# another type is dropped (an agent's state file must not be able to crash `ls`).
_INTS = tuple(k for k, kind in STATE_TYPES.items() if kind == "int")
_TIMES = tuple(k for k, kind in STATE_TYPES.items() if kind == "time")
_LINES = tuple(k for k, kind in STATE_TYPES.items() if kind == "line")


def parse_state(data: bytes, what: str = "state file") -> tuple[dict[str, Any] | None, str]:
    """(the state, "") or (None, why not): a JSON object, with the fields the host uses made safe."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError; deep nesting a RecursionError)
        return None, f"{what} is not valid JSON"
    if not isinstance(value, dict):
        return None, f"{what} is not a JSON object"
    state = dict(value)
    for key in _INTS:
        v = state.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or abs(v) > 2**31):
            del state[key]
    for key in _TIMES:
        v = state.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not math.isfinite(v) or not 0 <= v < 1e11):
            del state[key]
    for key in _LINES:  # printed by `ls`: one bounded line, no terminal escapes
        v = state.get(key)
        if v is not None:
            if not isinstance(v, str):
                del state[key]
            else:
                v = terminal.one_line(v)
                state[key] = v[:REASON_MAX] + "…" if len(v) > REASON_MAX else v
    return state, ""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_state(directory: str | os.PathLike[str], name: str = STATE_FILE) -> tuple[dict[str, Any] | None, str]:
    """The agent's state from ``directory/name``: (state, "") or (None, reason); reason ``ABSENT``
    when there is no file (yet)."""
    got = read(directory, name, STATE_CAP, "state file")
    if got.data is None:
        return None, got.reason
    return parse_state(got.data)


def exec_argv(path: str, cap: int, seconds: int = 5) -> list[str]:
    """The argv that reads ``path`` inside the container (remote engines): at most ``cap`` + 1 bytes,
    killed after ``seconds`` (a FIFO would block ``cat`` forever). It runs in the container as the
    agent: it sees only what the agent sees, never the host's files."""
    return ["/usr/bin/timeout", "-s", "KILL", str(seconds), "/usr/bin/head", "-c", str(cap + 1), "--", path]
