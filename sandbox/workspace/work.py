"""Getting work out of an agent, and cleaning up without ever losing it.

diff / merge / apply / push / pr bring an agent's work into the repository; ``check_removable``
and ``save_if_at_risk`` (used by ``SandboxManager.remove``), ``backup`` / ``restore`` (and ``sandbox.gc``)
make sure no cleanup loses it.

The host never reads an agent's files or runs git in its workspace or git dir. ``read`` first
brings the work over (``SandboxManager.sync``: a pack made inside the container, verified by the
host's git) into two host refs: ``sandbox/NAME`` (the agent's HEAD) and ``refs/sandbox/wip/NAME``
(a commit of the whole workspace: tracked, modified and untracked files, symlinks as links, with
the HEAD as parent). Everything below is git on those objects in the host's own repository.

What ``diff`` shows is what ``merge`` and ``apply`` take, in two labelled parts: the committed part
(base..head: what ``merge`` takes) and the uncommitted part (head..the workspace commit: ``apply``
takes both, ``merge`` this one only with ``--include-uncommitted``). ``--at SHA`` pins a merge or an
apply to the commit ``diff`` showed. Every git call of diff, merge, apply and restore runs with the
host's content drivers off (``gitops.host_drivers_off``: filters, textconv, diff commands and merge
drivers an agent's ``.gitattributes`` would select), but the ones the user trusts
(``trusted_filters``).

"Merged" means: every commit is reachable from a target, or merging it into a target would change
nothing (``git merge-tree``): that covers squash merges, rebases and cherry-picks. Targets are the
repository's HEAD, every local branch outside ``sandbox/`` and every remote-tracking branch (so
"pushed" counts too).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from sandbox import crash, labels as L
from sandbox.workspace import git as gitops
from sandbox.errors import AgentError, Conflict, NotFound, RepoError, SandboxError, UsageError
from sandbox.workspace.git import BRANCH_PREFIX, WIP_PREFIX

if TYPE_CHECKING:
    from sandbox.config import Settings
    from sandbox.manager import Sandbox, SandboxManager, Source

BACKUP_PREFIX = "refs/sandbox/backup/"
IDENTITY = {"GIT_AUTHOR_NAME": "sandbox", "GIT_AUTHOR_EMAIL": "sandbox@localhost",
            "GIT_COMMITTER_NAME": "sandbox", "GIT_COMMITTER_EMAIL": "sandbox@localhost"}


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _trusted(settings: Any) -> tuple[str, ...]:
    """The content drivers the user trusts (setting ``trusted_filters``; none for settings without it)."""
    return tuple(getattr(settings, "trusted_filters", None) or ())


def _agent_content(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """``fn`` with the host's content drivers off but the trusted ones (``gitops.host_drivers_off``):
    its first argument is the manager, or the settings."""
    @functools.wraps(fn)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with gitops.host_drivers_off(_trusted(getattr(args[0], "settings", args[0]))):
            return fn(*args, **kwargs)
    return guarded


def _rev(repo: gitops.Repo, rev: str) -> str | None:
    out = gitops.git(repo.top, "rev-parse", "--verify", "--quiet", "--end-of-options", rev, check=False).stdout
    return out.strip() or None


@dataclass(frozen=True)
class Work:
    """What an agent produced, as the host holds it after ``read``: its branch tip (``head``) and a
    commit of its whole workspace (``wip``; equal to ``head`` when nothing is uncommitted)."""

    name: str
    repo: gitops.Repo
    branch: str
    base: str | None
    head: str | None
    wip: str | None
    task: str = ""
    readable: bool = True
    reason: str = ""           # why the agent could not be read (then head/wip are what was read last)
    dirty: bool = False        # uncommitted (or untracked) changes: wip's tree is not head's

    def git(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
        """git in the repository's main checkout (objects and refs only)."""
        return gitops.git(self.repo.top, *args, check=check, env=env).stdout


def _max_blob(settings: Any) -> int:
    """The ``max_blob_bytes`` setting in bytes (0: no limit): no file larger is written into a checkout."""
    from sandbox.config import DEFAULT_MAX_BLOB_BYTES
    from sandbox.configfiles import memory_bytes

    return memory_bytes(str(getattr(settings, "max_blob_bytes", DEFAULT_MAX_BLOB_BYTES))) or 0


def wip_ref(name: str) -> str:
    return WIP_PREFIX + name


def read(mgr: SandboxManager, src: Source, *, snapshot: bool = True, base: str | None = None,
         task: str = "", strict: bool = False) -> Work:
    """Bring the agent's work over, then describe it from the host's refs.

    ``strict``: an agent that cannot be read is an error (exit 8) instead of a ``Work`` holding
    what was read last (``readable`` False, with the reason)."""
    synced = mgr.sync(src, snapshot=snapshot)
    if synced.refused is not None and strict:
        raise synced.refused
    if not synced.ok and strict:
        raise AgentError(f"cannot read {src.name}'s work: {synced.reason}",
                         hint="is its image still there? see `sandbox ls --all`")
    head, wip, dirty = _head_and_wip(src.repo, src.branch, wip_ref(src.name) if snapshot else None)
    return Work(name=src.name, repo=src.repo, branch=src.branch, base=base, head=head, wip=wip,
                task=task, readable=synced.ok, reason=synced.reason, dirty=dirty)


def _head_and_wip(repo: gitops.Repo, branch: str, wip_name: str | None) -> tuple[str | None, str | None, bool]:
    """The branch tip, the workspace commit (the tip when there is none) and whether their trees
    differ, from one ``git for-each-ref``."""
    head_name = f"refs/heads/{branch}"
    names = [head_name, *([wip_name] if wip_name else [])]
    out = gitops.git(repo.top, "for-each-ref", "--format=%(refname) %(objectname) %(tree)", *names).stdout
    found = {ref: (sha, tree) for ref, sha, tree in (line.split(" ") for line in out.splitlines())
             if ref in names}
    if head_name not in found:
        return None, None, False
    head, head_tree = found[head_name]
    wip, wip_tree = found.get(wip_name or "", (head, head_tree))
    return head, wip, wip_tree != head_tree


def of(mgr: SandboxManager, sb: Sandbox, *, strict: bool = True, snapshot: bool = True) -> Work:
    return read(mgr, mgr.source(sb), snapshot=snapshot, base=sb.labels.get(L.BASE), task=sb.labels.get(L.TASK, ""),
                strict=strict)


# -- merged or pushed --------------------------------------------------------------------------------
def _targets(repo: gitops.Repo) -> list[str]:
    refs = gitops.git(repo.top, "for-each-ref", "--format=%(refname)", "refs/heads", "refs/remotes").stdout.split()
    found = [r for r in refs if not r.startswith("refs/heads/" + BRANCH_PREFIX) and not r.endswith("/HEAD")]
    if _rev(repo, "HEAD"):
        found.append("HEAD")
    return found


def unsaved_commits(repo: gitops.Repo, ref: str) -> list[str]:
    """Commits of ``ref`` that no target holds, by ancestry or by content (squash, rebase)."""
    targets = _targets(repo)
    commits = gitops.git(repo.top, "rev-list", ref, "--not", *targets, "--").stdout.split()
    if not commits:
        return []
    with gitops.host_drivers_off():  # (a merge driver the checkout's attributes name: never, not even trusted)
        for target in targets:
            proc = gitops.git(repo.top, "merge-tree", "--write-tree", "--no-messages", target, ref, check=False)
            if proc.returncode == 0 and proc.stdout.split()[:1] == [_rev(repo, f"{target}^{{tree}}")]:
                return []
    return commits


@dataclass(frozen=True)
class Risk:
    """What removing an agent would lose."""

    dirty: bool
    unsaved: list[str]
    unreadable: str = ""

    def __bool__(self) -> bool:
        return self.dirty or bool(self.unsaved) or bool(self.unreadable)

    def describe(self) -> str:
        parts = (["uncommitted changes"] if self.dirty else []) + (
            [f"{len(self.unsaved)} commit(s) neither merged nor pushed"] if self.unsaved else [])
        if self.unreadable:
            parts.append(f"work that cannot be read ({self.unreadable})")
        return " and ".join(parts)


def risk(work: Work) -> Risk:
    """The workspace commit holds everything (its parent is the HEAD): at risk when its content is
    in no target."""
    tip = work.wip or work.head
    unsaved = unsaved_commits(work.repo, tip) if tip else []
    dirty = bool(unsaved) and work.dirty
    commits = [c for c in unsaved if c != work.wip] if dirty else unsaved
    return Risk(dirty=dirty, unsaved=commits, unreadable="" if work.readable else work.reason)


# -- backup and restore --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backup:
    """A backup commit: tree = the workspace's state, first parent = its HEAD (the committed work)."""

    ref: str
    commit: str
    name: str

    def commands(self) -> list[str]:
        b = f"{BRANCH_PREFIX}{self.name}-restored"
        return [f"sandbox restore {self.name} --ref {self.ref}",
                f"or: git worktree add -b {b} PATH {self.ref}^1 && git -C PATH read-tree -u --reset {self.ref}"
                f" && git -C PATH reset -q"]


def backup(work: Work) -> Backup:
    """Save everything (commits and the uncommitted state) under refs/sandbox/backup/<name>/<UTC time>."""
    head = work.head
    if head is None:
        raise NotFound(f"nothing of {work.name} was ever read")
    tree = work.git("rev-parse", f"{work.wip or head}^{{tree}}").strip()
    msg = f"sandbox backup of {work.name}\n\nbranch: {work.branch}\nbase: {work.base or '?'}\nhead: {head}\n"
    commit = work.git("commit-tree", tree, "-p", head, "-m", msg, env=IDENTITY).strip()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    ref = f"{BACKUP_PREFIX}{work.name}/{stamp}"
    work.git("update-ref", "-m", "sandbox backup", ref, commit, "0" * 40)
    return Backup(ref=ref, commit=commit, name=work.name)


def check_removable(mgr: SandboxManager, sb: Sandbox, *, force: bool) -> None:
    """Before removing: bring the work over, then refuse (nothing touched) when it would be lost,
    or cannot be read, unless ``force``."""
    at_risk = risk(of(mgr, sb, strict=False))
    if at_risk and not force:
        raise Conflict(f"{sb.name} has {at_risk.describe()}",
                       hint=f"`sandbox merge {sb.name}` or `sandbox push {sb.name}`; --force saves a backup ref, then removes")


def save_if_at_risk(mgr: SandboxManager, sb: Sandbox) -> tuple[Backup | None, str]:
    """Once the container is gone (nothing writes any more): read the final state and back up
    whatever would be lost. Returns the backup (or None) and, when the final state cannot be read,
    why (then the backup holds what was read last, and the caller must keep the workspace)."""
    work = of(mgr, sb, strict=False)
    if not work.readable:
        saved = backup(work) if work.head and risk(replace(work, readable=True)) else None
        return saved, work.reason
    return (backup(work) if risk(work) else None), ""


def backups(repo: gitops.Repo, name: str) -> list[str]:
    return gitops.git(repo.top, "for-each-ref", "--sort=refname", "--format=%(refname)",
                      f"{BACKUP_PREFIX}{name}/").stdout.split()


@dataclass(frozen=True)
class Restored:
    ref: str
    branch: str
    path: Path


@_agent_content
def restore(settings: Settings, repo_path: Path | None, name: str, ref: str | None = None,
            path: Path | None = None) -> Restored:
    """A new worktree on branch ``sandbox/<name>-restored`` at the backup's committed work, with the
    uncommitted state back in its files (uncommitted again), byte-exact."""
    repo = gitops.find_repo(repo_path or Path.cwd())
    if ref is None:
        found = backups(repo, name)
        if not found:
            raise NotFound(f"no backup of {name} in {repo.top}")
        ref = found[-1]
    commit = _rev(repo, f"{ref}^{{commit}}")
    head = _rev(repo, f"{ref}^1")
    if commit is None or head is None:
        raise NotFound(f"no backup commit at {ref}")
    _no_reencoding(repo, name, "HEAD", commit, _trusted(settings))
    branch = f"{BRANCH_PREFIX}{name}-restored"
    if gitops.branch_exists(repo, branch):
        raise Conflict(f"branch {branch} already exists", hint="rename or delete it first")
    path = (path or settings.data_dir / "restored" / repo.slug / name).absolute()
    if path.exists() or path.is_symlink():
        raise Conflict(f"{path} already exists", hint="pass --path")
    empty = gitops.git(repo.top, "hash-object", "-t", "tree", "--stdin", input="").stdout.strip()
    gitops.refuse_big_files(repo, _rev(repo, "HEAD") or empty, commit, _max_blob(settings), f"restoring {ref}")
    path.parent.mkdir(parents=True, exist_ok=True)
    gitops.git(repo.top, "worktree", "add", "--quiet", "-b", branch, str(path), head)
    gitops.git(path, "read-tree", "-u", "--reset", commit)
    gitops.git(path, "reset", "-q")
    return Restored(ref=ref, branch=branch, path=path)


# -- diff, apply, merge, push ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """One labelled part of a review: git's diff (or ``--stat``) of ``old``..``new``."""

    label: str   # committed | uncommitted
    old: str
    new: str
    note: str    # what takes it
    text: str

    def render(self) -> str:
        head = f"# {self.label} {self.old}..{self.new}: {self.note if self.text else 'no changes'}\n"
        return head + self.text


@dataclass(frozen=True)
class Review:
    """What ``diff`` showed: the committed part (base..head) and the uncommitted part (head..wip),
    each under a label line ``# committed BASE..HEAD: …`` that names the full commits. ``merge
    --at HEAD`` and ``apply --at WIP`` take exactly this, or refuse."""

    name: str
    head: str
    wip: str
    parts: tuple[Part, ...]

    def render(self) -> str:
        return "".join(part.render() for part in self.parts)

    def commands(self) -> list[str]:
        """The commands that take exactly what was shown."""
        out = [f"sandbox merge {self.name} --at {self.head}"]
        if self.wip != self.head:
            out.append(f"sandbox apply {self.name} --at {self.wip}")
        return out


COMMITTED_NOTE = "what merge takes (apply takes it with the uncommitted part)"
UNCOMMITTED_NOTE = "the workspace on top of it: apply takes it too, merge only with --include-uncommitted"


@_agent_content
def diff(mgr: SandboxManager, sb: Sandbox, *, stat: bool = False, uncommitted: bool = False) -> Review:
    """The agent's work since its base in two labelled parts, committed and uncommitted (only the
    latter with ``uncommitted``): shown apart, the committed part cannot hide behind a workspace
    that undoes it (a net of nothing that a merge would bring anyway)."""
    work = of(mgr, sb)
    if work.head is None:
        raise NotFound(f"branch {work.branch} of {work.name} no longer exists")
    head, wip = work.head, work.wip or work.head
    opts = ["--stat"] if stat else ["--binary"]

    def part(label: str, old: str, new: str, note: str) -> Part:
        text = work.git("diff", "--no-color", "--no-ext-diff", "--no-textconv", *opts, old, new, "--") if old != new else ""
        return Part(label, old, new, note, text)

    parts = [] if uncommitted else [part("committed", work.base or head, head, COMMITTED_NOTE)]
    parts.append(part("uncommitted", head, wip, UNCOMMITTED_NOTE))
    return Review(name=work.name, head=head, wip=wip, parts=tuple(parts))


_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def _pinned(work: Work, at: str | None, *, uncommitted: bool) -> None:
    """Refuse (nothing changed yet) when ``at``, the commit ``diff`` showed, is not what this
    command would take now: the head (or the workspace commit on it), or with the uncommitted part
    the workspace commit (the head when nothing is uncommitted)."""
    if at is None:
        return
    if not _OBJECT_ID.fullmatch(at):
        raise UsageError(f"--at takes a full commit id as `sandbox diff {work.name}` prints it, not {at!r}")
    wip = work.wip or work.head
    if at == wip or (at == work.head and not uncommitted):
        return
    what = f"its workspace is at {(wip or '?')[:12]}" if uncommitted and at == work.head else \
        f"its head is {(work.head or '?')[:12]}" + (f" (workspace {wip[:12]})" if wip and wip != work.head else "")
    raise Conflict(f"{work.name} moved since the review at {at[:12]}: {what}",
                   hint=f"nothing was changed; `sandbox diff {work.name}` shows it now")


def _no_reencoding(repo: gitops.Repo, name: str, before: str, after: str, trusted: tuple[str, ...]) -> None:
    """Refuse when the agent's ``.gitattributes`` add a ``working-tree-encoding``: its files would be
    written in the user's checkout in another encoding than ``diff`` showed (by the host's iconv)."""
    if gitops.REENCODING in trusted:
        return
    found = gitops.reencoding_attributes(repo, before, after)
    if found:
        raise Conflict(f"{name}'s {found[0]} sets {gitops.REENCODING}: its files would not be written as the diff shows them",
                       hint=f'nothing was changed; add "{gitops.REENCODING}" to the setting trusted_filters to allow it')


def shortstat(repo: gitops.Repo, base: str, head: str) -> str:
    """``+12 -3 2f``: what the agent committed since its base, from the host's refs only (no sync, no exec;
    the caller brings work over first). Empty when nothing changed or git cannot tell."""
    proc = gitops.git(repo.top, "diff", "--shortstat", "--no-color", "--no-ext-diff", "--no-textconv", base, head, "--",
                      check=False, timeout=30)
    if proc.returncode != 0:
        return ""
    nums = {"file": 0, "insertion": 0, "deletion": 0}
    for part in proc.stdout.split(","):
        words = part.split()
        if len(words) >= 2 and words[0].isdigit():
            for key in nums:
                if words[1].startswith(key):
                    nums[key] = int(words[0])
    if not nums["file"]:
        return ""
    return f"+{nums['insertion']} -{nums['deletion']} {nums['file']}f"


def _require_clean_main(repo: gitops.Repo) -> None:
    out = gitops.git(repo.top, "status", "--porcelain", "--untracked-files=no").stdout
    if out.strip():
        raise Conflict(f"the main checkout {repo.top} has uncommitted changes",
                       hint="commit or stash them first; nothing was changed")


# What the host obeys in a repository (README "Security"): a change to these is brought only when asked for.
CONFIG_PATHS = (".sandbox.toml", ".devcontainer")


def config_changes(repo: gitops.Repo, old: str, new: str) -> list[str]:
    """The files of ``CONFIG_PATHS`` that differ between ``old`` and ``new`` (host refs only)."""
    out = gitops.git(repo.top, "diff", "--name-only", "-z", "--no-renames", old, new, "--",
                     *(f":(top,literal){p}" for p in CONFIG_PATHS)).stdout
    return [f for f in out.split("\0") if f]


def _guard_config(name: str, files: list[str], allow_config: bool) -> None:
    if files and not allow_config:
        raise Conflict(f"{name}'s changes touch {', '.join(files[:5])}: settings the host obeys",
                       hint=f"review them (`sandbox diff {name}`), then pass --allow-config; nothing was changed")


@_agent_content
def apply(mgr: SandboxManager, sb: Sandbox, *, at: str | None = None, allow_config: bool = False) -> list[str]:
    """The agent's changes (committed since base + uncommitted) into the main checkout, not committed;
    ``at``: only if the workspace commit is still the one ``diff`` showed; a change to ``CONFIG_PATHS``
    only with ``allow_config`` (else ``Conflict``, nothing changed)."""
    work = of(mgr, sb)
    _pinned(work, at, uncommitted=True)
    _require_clean_main(work.repo)
    old = work.base or work.head
    new = work.wip or work.head
    assert old is not None and new is not None
    _no_reencoding(work.repo, work.name, "HEAD", new, _trusted(mgr.settings))
    _guard_config(sb.name, config_changes(work.repo, old, new), allow_config)
    files = work.git("diff", "--name-only", "--no-renames", old, new, "--").split()
    if not files:
        return []
    gitops.refuse_big_files(work.repo, old, new, _max_blob(mgr.settings), f"applying {sb.name}'s work")
    patch = work.git("diff", "--binary", "--full-index", "--no-color", "--no-ext-diff", "--no-textconv", old, new, "--")
    proc = gitops.git(work.repo.top, "apply", "--3way", "--whitespace=nowarn", "-", input=patch, check=False)
    if proc.returncode != 0:
        gitops.git(work.repo.top, "reset", "-q", "--hard", "HEAD")  # it was clean: back to exactly HEAD
        last = (proc.stderr.strip().splitlines() or ["conflict"])[-1]
        raise Conflict(f"{sb.name}'s changes do not apply to {work.repo.top}: {last}",
                       hint="nothing was changed; try `sandbox merge`")
    return files


def commit_uncommitted(work: Work) -> str | None:
    """A commit (made by the host, in the host's repository) of the workspace's uncommitted state on
    top of the agent's HEAD; None when there is nothing uncommitted. The agent's own repository is
    not touched: in its workspace the changes stay uncommitted."""
    if not work.dirty or work.head is None or work.wip is None:
        return None
    tree = work.git("rev-parse", f"{work.wip}^{{tree}}").strip()
    return work.git("commit-tree", tree, "-p", work.head, "-m", f"sandbox: uncommitted work of {work.name}",
                    env=IDENTITY).strip()


@contextmanager
def _scratch(repo: gitops.Repo, start: str) -> Iterator[Path]:
    """A temporary detached worktree (removed afterwards, whatever happens)."""
    tmp = Path(tempfile.mkdtemp(prefix="sandbox-merge-"))
    wt = tmp / "wt"
    gitops.git(repo.top, "worktree", "add", "--quiet", "--detach", str(wt), start)
    try:
        yield wt
    finally:
        gitops.git(repo.top, "worktree", "remove", "--force", str(wt), check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        gitops.git(repo.top, "worktree", "prune", "--expire=now", check=False) if wt.exists() else None


@_agent_content
def merge_heads(settings: Any, repo: gitops.Repo, heads: list[tuple[str, str]], message: str) -> str:
    """One commit that merges ``heads`` ((label, commit) pairs, in order), made by the host in a temporary
    worktree of its own (no branch moves, the main checkout untouched): a plan task's start when it waits
    for several tasks. Agents' content: the host's drivers off but ``settings.trusted_filters``, as for
    ``merge``. Raises Conflict naming the head that did not merge and the files."""
    if not heads:
        raise UsageError("nothing to merge")
    first = heads[0][1]
    if len(heads) == 1:
        return first
    with _scratch(repo, first) as wt:
        for label, commit in heads[1:]:
            proc = gitops.git(wt, "merge", "--no-ff", "--no-edit", "-m", message, commit, check=False, env=IDENTITY,
                              timeout=120)
            if proc.returncode != 0:
                files = _conflict_files(wt, proc)
                gitops.git(wt, "merge", "--abort", check=False)
                raise Conflict(f"{label} does not merge with {', '.join(h for h, _ in heads[:heads.index((label, commit))])}: "
                               f"{files}")
        return gitops.git(wt, "rev-parse", "HEAD").stdout.strip()


def checked_out(repo: gitops.Repo) -> dict[str, Path]:
    """branch -> worktree path, for every checked-out branch."""
    out: dict[str, Path] = {}
    path: Path | None = None
    for line in gitops.git(repo.top, "worktree", "list", "--porcelain").stdout.splitlines():
        if line.startswith("worktree "):
            path = Path(line[9:])
        elif line.startswith("branch refs/heads/") and path is not None:
            out[line[len("branch refs/heads/"):]] = path
    return out


@dataclass(frozen=True)
class Merged:
    target: str
    before: str
    after: str
    mode: str
    committed_uncommitted: str | None = None
    left_uncommitted: bool = False
    config_files: tuple[str, ...] = ()  # of CONFIG_PATHS, brought with --allow-config


def _conflict_files(cwd: Path, proc: subprocess.CompletedProcess[str]) -> str:
    """The conflicted files, or git's own reason (e.g. untracked files would be overwritten)."""
    names = gitops.git(cwd, "diff", "--name-only", "--diff-filter=U", check=False).stdout.split()
    reason = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return ", ".join(names[:5]) or (reason[0] if reason else "conflict")


@_agent_content
def merge(mgr: SandboxManager, sb: Sandbox, *, mode: str = "merge", into: str | None = None,
          include_uncommitted: bool = False, at: str | None = None, allow_config: bool = False) -> Merged:
    """Bring the agent's branch into the main checkout's branch (or ``into``); all or nothing.
    ``at``: only if the agent's head (with ``include_uncommitted``, its workspace commit) is still
    the one ``diff`` showed; without it, whatever the sync just brought (for scripts). A change to
    ``CONFIG_PATHS`` only with ``allow_config`` (else ``Conflict``, nothing changed)."""
    if mode not in ("merge", "squash", "rebase"):
        raise UsageError(f"unknown merge mode {mode!r}")
    work = of(mgr, sb)
    _pinned(work, at, uncommitted=include_uncommitted)
    crash.point("merge:synced")
    repo = work.repo
    current = gitops.git(repo.top, "symbolic-ref", "-q", "--short", "HEAD", check=False).stdout.strip() or None
    target = into or current
    if target is None:
        raise UsageError(f"{repo.top} is on a detached HEAD", hint="pass --into BRANCH")
    before = _rev(repo, f"refs/heads/{target}")
    if before is None:
        raise NotFound(f"no branch {target!r} in {repo.top}")
    in_main = target == current
    if in_main:
        _require_clean_main(repo)
    elif target in checked_out(repo):
        raise Conflict(f"branch {target} is checked out in {checked_out(repo)[target]}", hint="merge there")
    committed = commit_uncommitted(work) if include_uncommitted else None
    tip = committed or work.head
    if tip is None:
        raise NotFound(f"branch {work.branch} no longer exists")
    _no_reencoding(repo, work.name, before, tip, _trusted(mgr.settings))
    fork = gitops.git(repo.top, "merge-base", before, tip, check=False).stdout.strip() or before
    config_files = config_changes(repo, fork, tip)
    _guard_config(sb.name, config_files, allow_config)
    subject = work.task or work.branch
    gitops.refuse_big_files(repo, before, tip, _max_blob(mgr.settings), f"merging {work.branch}")

    def run(cwd: Path) -> None:
        if mode == "merge":
            proc = gitops.git(cwd, "merge", "--no-edit", "-m", f"Merge {work.branch}: {subject}", tip, check=False)
            if proc.returncode != 0:
                files = _conflict_files(cwd, proc)
                gitops.git(cwd, "merge", "--abort", check=False)
                raise Conflict(f"merging {work.branch} into {target} conflicts ({files})", hint="nothing was changed")
        elif mode == "squash":
            proc = gitops.git(cwd, "merge", "--squash", tip, check=False)
            if proc.returncode != 0:
                files = _conflict_files(cwd, proc)
                gitops.git(cwd, "reset", "-q", "--hard", "HEAD")
                raise Conflict(f"squashing {work.branch} into {target} conflicts ({files})", hint="nothing was changed")
            if gitops.git(cwd, "diff", "--cached", "--quiet", check=False).returncode != 0:
                log = gitops.git(cwd, "log", "--format=- %s", f"HEAD..{tip}").stdout
                gitops.git(cwd, "commit", "-q", "--no-verify", "-m", f"{subject} ({work.branch}, squashed)\n\n{log}")

    if mode == "rebase":
        with _scratch(repo, tip) as wt:
            proc = gitops.git(wt, "rebase", "--no-autosquash", before, check=False)
            if proc.returncode != 0:
                files = _conflict_files(wt, proc)
                gitops.git(wt, "rebase", "--abort", check=False)
                raise Conflict(f"rebasing {work.branch} onto {target} conflicts ({files})", hint="nothing was changed")
            new = gitops.git(wt, "rev-parse", "HEAD").stdout.strip()
        if in_main:
            gitops.git(repo.top, "merge", "--ff-only", "--quiet", new)
        else:
            gitops.git(repo.top, "update-ref", f"refs/heads/{target}", new, before)
    elif in_main:
        run(repo.top)
    else:
        with _scratch(repo, before) as wt:
            run(wt)
            new = gitops.git(wt, "rev-parse", "HEAD").stdout.strip()
        gitops.git(repo.top, "update-ref", f"refs/heads/{target}", new, before)
    after = _rev(repo, f"refs/heads/{target}") or before
    crash.point("merge:merged")
    return Merged(target=target, before=before, after=after, mode=mode, committed_uncommitted=committed,
                  left_uncommitted=work.dirty and not include_uncommitted, config_files=tuple(config_files))


def push(mgr: SandboxManager, sb: Sandbox, remote: str = "origin") -> str:
    work = of(mgr, sb, snapshot=False)
    ref = f"refs/heads/{work.branch}"
    proc = gitops.git(work.repo.top, "push", "--porcelain", "--", remote, f"{ref}:{ref}", check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["push failed"])[-1]
        raise RepoError(f"pushing {work.branch} to {remote} failed: {last}")
    return f"{remote}/{work.branch}"


def pr(mgr: SandboxManager, sb: Sandbox, remote: str = "origin", base: str | None = None) -> str:
    """Push, then open a pull request with the GitHub CLI; returns its URL."""
    gh = shutil.which("gh")
    if gh is None:
        raise SandboxError("the GitHub CLI `gh` is not installed", hint=f"install it, or `sandbox push {sb.name}`")
    push(mgr, sb, remote)
    work = of(mgr, sb, snapshot=False)
    log = work.git("log", "--reverse", "--format=- %s", f"{work.base}..refs/heads/{work.branch}") if work.base else ""
    title = work.task or f"Work of agent {work.name}"
    body = f"{work.task}\n\nCommits:\n{log}\n_Opened by `sandbox pr {work.name}`._\n"
    argv = [gh, "pr", "create", "--head", work.branch, "--title", title, "--body", body]
    if base:
        argv += ["--base", base]
    proc = subprocess.run(argv, cwd=work.repo.top, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SandboxError(f"gh pr create failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return proc.stdout.strip()
