"""An agent's work brought over to the host: its HEAD into ``sandbox/NAME`` and, with a snapshot, its whole
workspace into ``refs/sandbox/wip/NAME``, exported inside its container (or a throwaway reader container
over its files when it is not running) and fetched into quarantine (``git.fetch_from``: commits only,
within the size limits and ``sync_timeout``). What the host remembers of each agent's work, in host-only
files no agent can write (``Records``): the last fetch's signature (``ls`` fetches only what changed),
the last snapshot's, the object store it was given, which repository a workspace slug belongs to."""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox import cgroups, contract, labels as L
from sandbox.config import DEFAULT_SYNC_TIMEOUT
from sandbox.configfiles import memory_bytes
from sandbox.engine import Engine
from sandbox.errors import GitError, SyncError
from sandbox.workspace import git as gitops
from sandbox.workspace.git import WIP_PREFIX

if TYPE_CHECKING:
    from sandbox.config import Settings


@dataclass(frozen=True)
class Source:
    """Where an agent's work is read from: its running container, else a reader container over
    its workspace and git dir."""

    name: str
    repo: gitops.Repo
    branch: str
    workspace: Path
    agent_git: Path | None
    uid: int
    image: str
    container: str | None = None
    objects: Path | None = None  # the host's object store a reader mounts (None: the agent has its own pack)


@dataclass(frozen=True)
class Synced:
    ok: bool
    reason: str = ""
    refused: SyncError | None = None  # the host refused it (too big, not a commit, out of time): exit 8 as is


# The export's own clock inside the container (coreutils `timeout`, its whole process group: TERM, then
# KILL a second later); the host's, a little longer, kills git's process group (gitops.fetch_from).
EXPORT_TIMEOUT = ["/usr/bin/timeout", "--kill-after=1"]


def _size(text: str) -> int:
    """A size setting in bytes (0: no limit)."""
    return memory_bytes(text) or 0


def _why(stderr: str) -> str:
    """The telling line of a failed fetch: the export's own reason, else git's first fatal line,
    control characters removed (it may carry text from the agent's side)."""
    lines = ["".join(ch for ch in ln.strip() if ch.isprintable())[:200] for ln in stderr.splitlines()]
    for prefix in ("sandbox export:", "fatal:", "error:"):
        for ln in lines:
            if ln.startswith(prefix):
                return ln.removeprefix("sandbox export:").strip()
    return next((ln for ln in lines if ln), "")


def real_dir(path: Path | None) -> bool:
    """A directory, not a link to one; False for what this user may not even look at (another user's)."""
    if path is None:
        return False
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def signature(agent_git: Path | None) -> str:
    """What changes when the agent commits, checks out or moves a ref (``lstat`` only: never follows
    or opens anything the agent wrote)."""
    if agent_git is None:
        return ""
    parts = []
    for rel in ("HEAD", "logs/HEAD", "packed-refs", "refs/heads", "refs/heads/sandbox"):
        try:
            st = os.lstat(agent_git / rel)
            parts.append(f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}")
        except OSError:
            parts.append("-")
    return " ".join(parts)


TREE_MAX = 20_000  # entries a workspace's signature reads at most; a larger workspace is snapshotted every time
SETTLED_NS = 2_000_000_000  # a workspace changed this recently has no signature (file systems stamp coarsely)


def tree_signature(top: Path) -> str:
    """What changes when anything in the workspace does: the count of its entries, their sizes and the
    newest status change (``st_ctime_ns``: the kernel's, set by every write, rename, chmod or ``utime``,
    which the agent cannot set back), from ``lstat`` only (no link followed, nothing opened), ``.git``
    included (the read-only mount). "" past ``TREE_MAX`` entries, when a directory cannot be read, or when the
    newest change is under ``SETTLED_NS`` old: then the snapshot is taken again."""
    count, size, newest = 0, 0, 0
    stack = [str(top)]
    try:
        st = os.lstat(top)
        newest = st.st_ctime_ns
        while stack:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    count += 1
                    if count > TREE_MAX:
                        return ""
                    size += st.st_size
                    newest = max(newest, st.st_ctime_ns)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
    except OSError:
        return ""
    if time.time_ns() - newest < SETTLED_NS:
        return ""  # (a change this recent may share its timestamp with one still to come: no signature yet)
    return f"{count}:{size}:{newest}"


class Records:
    """The host's records of each agent's work, under ``<data dir>``: nothing an agent can write ever
    says where its work goes or what was read of it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def _sync_file(self, name: str) -> Path:
        return self.data_dir / "sync" / name

    def snapshot_file(self, name: str) -> Path:
        """What the agent's git dir and workspace looked like at its last snapshot (``tree_signature``)."""
        return self.data_dir / "sync" / f"{name}.snapshot"

    def last_fetch(self, name: str) -> str:
        """The agent's git dir's signature at its last fetch ("" when none)."""
        try:
            return self._sync_file(name).read_text()
        except OSError:
            return ""

    def fetched(self, name: str, agent_git: Path | None, mark: str | None = None) -> None:
        """The agent's git dir as it is now (or ``mark``) was read: ``ls`` does not fetch it again."""
        path = self._sync_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(mark if mark is not None else signature(agent_git))

    def record_repo(self, repo: gitops.Repo) -> None:
        """Which repository a workspace slug belongs to (for ``gc --all-repos``)."""
        path = self.data_dir / "repos" / repo.slug
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(repo.top))

    def repo(self, slug: str) -> Path | None:
        try:
            return Path((self.data_dir / "repos" / slug).read_text().strip())
        except OSError:
            return None

    def _objects_file(self, name: str) -> Path:
        return self.data_dir / "objects" / name

    def record_objects(self, name: str, mode: str) -> None:
        """Which object store agent ``name`` was given: a reader container for its workspace when its own
        container is gone mounts the host's store only for a ``shared`` one."""
        path = self._objects_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(mode)

    def objects_of(self, repo: gitops.Repo, name: str) -> Path | None:
        """The host store a reader of agent ``name``'s work mounts (None: it was given its own pack).
        No record (an agent made before there was one): shared, as every agent was then."""
        try:
            mode = self._objects_file(name).read_text().strip()
        except OSError:
            mode = "shared"
        return None if mode == "reachable" else repo.common_dir / "objects"

    def forget(self, name: str) -> None:
        """The agent's work is gone from the host: so are its records (its snapshot's too)."""
        for path in (self._sync_file(name), self.snapshot_file(name), self._objects_file(name)):
            path.unlink(missing_ok=True)


def export_argv(settings: Settings, src: Source, snapshot: bool, timeout: float = DEFAULT_SYNC_TIMEOUT,
                marker: str = "") -> list[str]:
    """The host's argv that runs the export for ``src``: an exec in its running container, as the agent,
    else a reader container over its files; ``timeout`` inside too."""
    # `timeout` inside too: the engine does not end an exec (or a `run` container) when its client is
    # killed, so the export's whole process group in the container ends on its own clock
    args = [*EXPORT_TIMEOUT, f"{timeout:g}", *contract.EXPORT,
            *(["--objects", str(src.objects)] if src.objects is not None else [])]
    fallback = gitops.head_of(src.repo, src.branch)
    if fallback:
        args += ["--fallback", fallback]
    if snapshot:
        args += ["--snapshot", "--workdir", str(src.workspace)]
        from sandbox.workspace import setup as setup_

        args += setup_.export_args(settings.data_dir, src.name)  # ([setup] copy stays out of it)
    if src.container is not None:  # (as the agent: it reads only what the agent may; ``marker``: its
        # processes are found again if it must be killed)
        gid = os.lstat(src.workspace).st_gid if real_dir(src.workspace) else src.uid
        return Engine.cli_exec(src.container, args, user=f"{src.uid}:{gid}",
                               env=dict([marker.split("=", 1)]) if marker else None)
    binds = [(str(src.objects), str(src.objects))] if src.objects is not None else []
    if real_dir(src.agent_git):
        binds.append((str(src.agent_git), contract.AGENT_GIT))
    if snapshot and real_dir(src.workspace):
        binds.append((str(src.workspace), str(src.workspace)))
    gid = os.lstat(src.workspace).st_gid if real_dir(src.workspace) else src.uid
    labels = {L.READER: src.name, **({L.RUN_ID: settings.run_id} if settings.run_id else {})}
    return Engine.cli_run_reader(src.image, f"{src.uid}:{gid}", binds, args, labels)


def sync(settings: Settings, records: Records, src: Source, *, snapshot: bool = True,
         timeout: float | None = None) -> Synced:
    """Fetch the agent's HEAD into ``sandbox/NAME`` (and, with ``snapshot``, a commit of its whole
    workspace into ``refs/sandbox/wip/NAME``) from inside its container, or from a throwaway
    reader container when it is not running; quarantined and checked (``gitops.fetch_from``:
    commits only, within ``max_sync_bytes``/``max_blob_bytes``, within ``timeout``). Never raises
    for an unreadable agent: the result says why (``refused``: the host would not take it), and
    the refs keep what was fetched last."""
    wanted = {contract.EXPORT_HEAD: f"refs/heads/{src.branch}"}
    if snapshot:
        wanted[contract.EXPORT_WIP] = f"{WIP_PREFIX}{src.name}"
    mark = signature(src.agent_git)
    tree = tree_signature(src.workspace) if snapshot and real_dir(src.workspace) else ""
    seen = None
    if tree:  # (with what it was taken under: the limits, the host's branch, the copies kept out)
        from sandbox.workspace import setup as setup_

        seen = "|".join([mark, tree, str(settings.max_sync_bytes), str(settings.max_blob_bytes),
                         gitops.head_of(src.repo, src.branch) or "",
                         *setup_.export_args(settings.data_dir, src.name)])
    if seen is not None and records.snapshot_file(src.name).is_file() \
            and records.snapshot_file(src.name).read_text() == seen \
            and gitops.git(src.repo.top, "rev-parse", "--verify", "--quiet", wanted[contract.EXPORT_WIP],
                           check=False).returncode == 0:
        return Synced(ok=True)  # nothing the agent could have changed since the last snapshot: it stands
    limit = timeout if timeout is not None else settings.sync_timeout
    marker = f"SANDBOX_SYNC={os.urandom(8).hex()}"
    try:
        gitops.fetch_from(src.repo, export_argv(settings, src, snapshot, limit, marker), wanted,
                          who=f"agent {src.name}", timeout=limit, max_bytes=_size(settings.max_sync_bytes),
                          max_blob=_size(settings.max_blob_bytes))
    except SyncError as e:
        if e.setting == "sync_timeout" and src.container is not None:
            # the host's side is gone (its process group killed); the exec's processes are not, when
            # the agent stopped them (SIGSTOP reaches its own uid's `timeout` too): from the host
            cgroups.kill_marked(src.container, marker)
        else:
            records.fetched(src.name, src.agent_git, mark)  # (this state is refused: `ls` does not fetch it again)
        return Synced(ok=False, reason=str(e), refused=e)
    except GitError as e:
        return Synced(ok=False, reason=_why(e.stderr) or f"git exited {e.returncode}")
    records.fetched(src.name, src.agent_git, mark)
    if seen is not None:
        records.snapshot_file(src.name).write_text(seen)
    return Synced(ok=True)
