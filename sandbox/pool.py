"""The warm pool's bookkeeping on the host (stdlib only): slots, claims, the pool's record.

A pool holds started containers with no agent yet (``sandbox pool --size K``); ``spawn`` claims one
whose container matches its spec (``key``: everything fixed at create time — image, user, limits,
network, filesystem, the repository's object store it mounts). Labels cannot change, so a claim is
recorded here, where discovery reads it (``SandboxManager._containers``). Everything lives under
``DATA/pool/KEY/``, a host-only directory (only a slot's three subdirectories are mounted in its
container, and no agent process has run there before the claim):

    pool.json           the pool: its size, repository, image and profile (for the top-up)
    fill.lock           held by the one process topping it up
    SLOT/workspace/     the agent's workspace to be (with its read-only ``.git`` file), mounted
    SLOT/agent-git/     the agent's git dir to be, mounted at ``contract.AGENT_GIT``
    SLOT/state/         the state mount (the init writes ``pooled`` there while it waits)
    SLOT/container      the container's id
    SLOT/claimed        made with O_EXCL by the one spawn that takes the slot (its pid)
    SLOT/claim.json     the agent's labels, as a spawn without a pool puts them on its container
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import contract, labels as L

RECORD = "pool.json"


@dataclass(frozen=True)
class Slot:
    key: str
    id: str
    dir: Path

    @property
    def workspace(self) -> Path:
        return self.dir / "workspace"

    @property
    def agent_git(self) -> Path:
        return self.dir / "agent-git"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    def container_id(self) -> str | None:
        try:
            return (self.dir / "container").read_text().strip() or None
        except OSError:
            return None

    @property
    def claimed(self) -> bool:
        return os.path.lexists(self.dir / "claimed")


def root(data_dir: Path) -> Path:
    return data_dir / "pool"


def key_of(parts: dict[str, Any]) -> str:
    """The pool key of a container's create-time parts (JSON-able)."""
    import hashlib  # (not at import: `ls` reads claims, never keys)

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def pool_dir(data_dir: Path, key: str) -> Path:
    return root(data_dir) / key


def read_record(data_dir: Path, key: str) -> dict[str, Any] | None:
    try:
        value = json.loads((pool_dir(data_dir, key) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_record(data_dir: Path, key: str, record: dict[str, Any]) -> None:
    d = pool_dir(data_dir, key)
    d.mkdir(parents=True, exist_ok=True)
    _atomic(d / RECORD, json.dumps(record, indent=2))


def records(data_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for d in sorted(_dirs(root(data_dir))):
        rec = read_record(data_dir, d.name)
        if rec is not None:
            out[d.name] = rec
    return out


def new_slot(data_dir: Path, key: str, uid: int, gid: int) -> Slot:
    """A fresh slot's directories (the agent's uid owns the mounted ones), its ``.git`` file in place."""
    d = pool_dir(data_dir, key)
    d.mkdir(parents=True, exist_ok=True)
    sid = os.urandom(5).hex()
    slot = Slot(key, sid, d / sid)
    slot.dir.mkdir()
    for sub in (slot.workspace, slot.agent_git, slot.state_dir, slot.state_dir / contract.AGENT_STATE):
        sub.mkdir()
    (slot.workspace / ".git").write_text(contract.GITFILE)
    if os.getuid() == 0:  # (the state dir's top stays the supervisor's: see spawn.trees.make_state_dir)
        for path in (slot.workspace, slot.workspace / ".git", slot.agent_git, slot.state_dir / contract.AGENT_STATE):
            os.chown(path, uid, gid)
    return slot


def slots(data_dir: Path, key: str) -> list[Slot]:
    """The pool's slots, oldest first."""
    found = [Slot(key, d.name, d) for d in _dirs(pool_dir(data_dir, key))]
    return sorted(found, key=lambda s: mtime(s.dir))


def claim(slot: Slot) -> bool:
    """Take the slot (True) or learn that another spawn has (False): one O_EXCL create."""
    try:
        fd = os.open(slot.dir / "claimed", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    except OSError:
        return False  # (the slot is being removed)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def unclaim(slot: Slot) -> None:
    """Give a claimed slot back (its container was not touched)."""
    (slot.dir / "claimed").unlink(missing_ok=True)


def record_claim(slot: Slot, labels: dict[str, str]) -> None:
    _atomic(slot.dir / "claim.json", json.dumps(labels))


def claims(data_dir: Path) -> dict[str, dict[str, str]]:
    """slot id -> the agent's labels, for every claimed slot on this host (a few small host-only files)."""
    out: dict[str, dict[str, str]] = {}
    base = root(data_dir)
    if not base.is_dir():
        return out
    for path in base.glob("*/*/claim.json"):
        try:
            labels = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(labels, dict):
            out[path.parent.name] = {str(k): str(v) for k, v in labels.items()}
    return out


def slot_of(data_dir: Path, labels: dict[str, str]) -> Slot | None:
    """The slot a (claimed) pool container's labels name."""
    key, sid = labels.get(L.POOL), labels.get(L.POOL_SLOT)
    if not key or not sid:
        return None
    d = pool_dir(data_dir, key) / sid
    return Slot(key, sid, d) if d.is_dir() and not d.is_symlink() else None


def drop_slot(slot: Slot) -> None:
    shutil.rmtree(slot.dir, ignore_errors=True)


class FillLock:
    """The one process topping a pool up (``flock``; ``wait=False``: give up when another holds it)."""

    def __init__(self, data_dir: Path, key: str, wait: bool = True) -> None:
        self.path = pool_dir(data_dir, key) / "fill.lock"
        self.wait = wait
        self.fd = -1

    def __enter__(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _dirs(path: Path) -> list[Path]:
    if not path.is_dir() or path.is_symlink():
        return []
    return [p for p in path.iterdir() if p.is_dir() and not p.is_symlink()]


def mtime(path: Path) -> float:
    """``path``'s modification time (0: gone)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
