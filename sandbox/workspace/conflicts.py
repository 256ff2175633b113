"""Conflicts before merge time: which agents' work touches the same files, and whether it merges now.

``check`` reads every agent of one repository (``work.of``: the sync first, each bounded by
``sync_timeout``, side by side; an agent that cannot be read is judged by what the host read last,
marked ``stale``), then, on the host's refs only:

- each agent's files: what its workspace commit (committed and uncommitted work) changed since its
  base (``git diff --name-only BASE WIP``);
- the target's files: what the target branch (the main checkout's branch) changed since the agent's
  base, plus the main checkout's own uncommitted and untracked files when the target is checked out
  there (``main``);
- overlaps: the files an agent shares with each other agent and with ``main``;
- whether the agent's branch (what ``merge`` takes) merges cleanly into the target now:
  ``git merge-tree --write-tree`` (git >= 2.38; nothing is written but objects), with the host's
  content drivers off (``gitops.host_drivers_off``: never a merge driver an agent's ``.gitattributes``
  names; the trusted ones aside, as for ``merge``).

Nothing here runs in an agent's workspace or git dir, and no branch or file of the user moves.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.errors import NotFound, UsageError
from sandbox.workspace import git as gitops
from sandbox.workspace import work as work_

if TYPE_CHECKING:
    from sandbox.manager import SandboxManager
    from sandbox.workspace.work import Work

MAIN = "(main)"  # the main checkout's changes among the agents (no agent can be named so)
MERGE_TREE_GIT = (2, 38)  # `git merge-tree --write-tree`
MAX_FILES = 10_000  # per side: past it, the list is cut (and marked)
WORKERS = 8


@dataclass(frozen=True)
class AgentConflicts:
    """One agent, as ``conflicts`` judges it."""

    name: str
    branch: str
    base: str | None
    head: str | None
    wip: str | None
    files: tuple[str, ...]                      # changed since its base: committed and uncommitted
    overlaps: dict[str, tuple[str, ...]]        # another agent's name (or MAIN) -> the files both changed
    merges: bool | None                         # its branch merges cleanly into the target now (None: unknown)
    conflicted: tuple[str, ...] = ()            # the files that do not merge
    why_unknown: str = ""                       # when merges is None
    stale: str = ""                             # the sync failed: judged on what was read last
    dirty: bool = False                         # uncommitted work (not what merge takes, but in ``files``)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "branch": self.branch, "base": self.base, "head": self.head, "wip": self.wip,
                "files": list(self.files), "overlaps": {k: list(v) for k, v in self.overlaps.items()},
                "merges": self.merges, "conflicted": list(self.conflicted), "why_unknown": self.why_unknown or None,
                "stale": self.stale or None, "uncommitted": self.dirty}


@dataclass(frozen=True)
class Conflicts:
    """Every agent of one repository against each other and against the target."""

    repo: Path
    target: str
    target_head: str | None
    dirty_main: tuple[str, ...]                 # the main checkout's uncommitted and untracked files
    agents: tuple[AgentConflicts, ...] = field(default=())

    @property
    def any(self) -> bool:
        """An overlap or a merge that does not go through."""
        return any(a.overlaps or a.merges is False for a in self.agents)

    def to_json(self) -> dict[str, Any]:
        return {"repo": str(self.repo), "target": self.target, "target_head": self.target_head,
                "main_uncommitted": list(self.dirty_main), "agents": [a.to_json() for a in self.agents]}


def changed_files(repo: gitops.Repo, old: str, new: str) -> tuple[str, ...]:
    """The paths that differ between two commits (renames as a delete and an add: both paths count)."""
    if old == new:
        return ()
    out = gitops.git(repo.top, "diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", "--no-textconv",
                     old, new, "--").stdout
    return tuple(p for p in out.split("\0") if p)[:MAX_FILES]


def _main_dirty(repo: gitops.Repo) -> tuple[str, ...]:
    """The main checkout's uncommitted (staged or not) and untracked files: the user's own work."""
    if not gitops.git(repo.top, "rev-parse", "--verify", "--quiet", "HEAD", check=False).stdout.strip():
        return ()
    changed = gitops.git(repo.top, "diff", "--name-only", "-z", "--no-renames", "HEAD", "--").stdout
    untracked = gitops.git(repo.top, "ls-files", "-z", "--others", "--exclude-standard").stdout
    return tuple(sorted({p for p in (changed + "\0" + untracked).split("\0") if p}))[:MAX_FILES]


def git_version() -> tuple[int, ...]:
    """The host git's version (``git version 2.47.3`` -> (2, 47, 3))."""
    out = gitops.git(Path("/"), "version", check=False).stdout
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(g) for g in found.groups() if g is not None) if found else (0,)


def merge_check(repo: gitops.Repo, target: str, tip: str) -> tuple[bool | None, tuple[str, ...], str]:
    """Whether ``tip`` merges cleanly into ``target`` now, the conflicted files, and why unknown:
    ``git merge-tree --write-tree --name-only`` in the host's repository (objects only; no ref or file
    moves). Call it with the host's drivers off."""
    proc = gitops.git(repo.top, "merge-tree", "--write-tree", "--name-only", "--no-messages", target, tip,
                      check=False, timeout=120)
    if proc.returncode == 0:
        return True, (), ""
    if proc.returncode == 1:  # tree id, then one conflicted path a line (a path once per stage: dedupe)
        lines = proc.stdout.split("\n")[1:]
        files = list(dict.fromkeys(ln for ln in lines if ln))
        return False, tuple(files[:MAX_FILES]), ""
    reason = " ".join((proc.stderr or proc.stdout).split())[:200] or f"git merge-tree exited {proc.returncode}"
    return None, (), reason


def check(mgr: SandboxManager, repo_path: Path | None = None, names: list[str] | None = None,
          into: str | None = None) -> Conflicts:
    """The agents of the repository around ``repo_path`` (``names``: only those rows; every agent of
    the repository is still read, so overlaps are with all of them) against each other and against
    ``into`` (default: the main checkout's branch)."""
    repo = gitops.find_repo(repo_path or Path.cwd())
    every = [sb for sb in mgr.list(repo=repo.top, sync=False) if not sb.headless]
    if names:
        missing = [n for n in names if n not in {sb.name for sb in every}]
        if missing:
            raise NotFound(f"no agent named {missing[0]!r} in {repo.top}", hint="see `sandbox ls`")
    current = gitops.git(repo.top, "symbolic-ref", "-q", "--short", "HEAD", check=False).stdout.strip() or None
    target = into or current
    if target is None:
        raise UsageError(f"{repo.top} is on a detached HEAD", hint="pass --into BRANCH")
    target_head = gitops.head_of(repo, target)
    if target_head is None:
        raise NotFound(f"no branch {target!r} in {repo.top}")
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:  # (each sync bounded by sync_timeout)
        works: list[Work] = list(pool.map(lambda sb: work_.of(mgr, sb, strict=False), every))
    with gitops.host_drivers_off(work_._trusted(mgr.settings)):
        dirty_main = _main_dirty(repo) if target == current else ()
        return _judge(repo, target, target_head, dirty_main, works, set(names or ()))


def _judge(repo: gitops.Repo, target: str, target_head: str, dirty_main: tuple[str, ...],
           works: list[Work], shown: set[str]) -> Conflicts:
    files: dict[str, set[str]] = {}
    for w in works:
        if w.head is not None:
            files[w.name] = set(changed_files(repo, w.base or w.head, w.wip or w.head))
    version_ok = git_version() >= MERGE_TREE_GIT
    rows = []
    for w in works:
        if shown and w.name not in shown:
            continue
        mine = files.get(w.name, set())
        overlaps = {other: tuple(sorted(mine & theirs)) for other, theirs in files.items()
                    if other != w.name and mine & theirs}
        if w.head is not None:
            fork = gitops.git(repo.top, "merge-base", w.base or w.head, target_head, check=False).stdout.strip()
            main_files = (set(changed_files(repo, fork, target_head)) if fork else set()) | set(dirty_main)
            if mine & main_files:
                overlaps[MAIN] = tuple(sorted(mine & main_files))
        if w.head is None:
            merges, conflicted, why = None, (), f"branch {w.branch} no longer exists"
        elif not version_ok:
            merges, conflicted, why = None, (), "git >= 2.38 needed (git merge-tree --write-tree)"
        else:
            merges, conflicted, why = merge_check(repo, target_head, w.head)
        rows.append(AgentConflicts(name=w.name, branch=w.branch, base=w.base, head=w.head, wip=w.wip,
                                   files=tuple(sorted(mine)), overlaps=overlaps, merges=merges,
                                   conflicted=conflicted, why_unknown=why,
                                   stale="" if w.readable else (w.reason or "unreadable"), dirty=w.dirty))
    return Conflicts(repo=repo.top, target=target, target_head=target_head, dirty_main=dirty_main,
                     agents=tuple(rows))


def describe(found: Conflicts, width: int = 4) -> list[list[str]]:
    """The table ``sandbox conflicts`` prints: NAME, FILES, MERGE (into the target), SHARED WITH."""
    rows = [["NAME", "FILES", f"MERGE INTO {found.target}", "SHARED WITH (files)"]]

    def few(paths: tuple[str, ...]) -> str:
        return ", ".join(paths[:width]) + (f", +{len(paths) - width}" if len(paths) > width else "")

    for a in found.agents:
        merge = ("clean" if a.merges else f"CONFLICT: {few(a.conflicted)}" if a.merges is False
                 else f"unknown: {a.why_unknown}")
        shared = "; ".join(f"{other}: {few(paths)}" for other, paths in a.overlaps.items()) or "-"
        files = str(len(a.files)) + (" (uncommitted too)" if a.dirty else "")
        rows.append([a.name + (f" [stale: {a.stale}]" if a.stale else ""), files, merge, shared])
    return rows

