"""Getting work out of an agent, and cleaning up without ever losing it.

diff / merge / apply / push / pr bring an agent's work into the repository; ``check_removable``
and ``save_if_at_risk`` (used by ``SandboxManager.remove``), ``backup`` / ``restore`` and ``gc``
make sure no cleanup loses it.

The host never reads an agent's files or runs git in its workspace or git dir. ``read`` first
brings the work over (``SandboxManager.sync``: a pack made inside the container, verified by the
host's git) into two host refs: ``sandbox/NAME`` (the agent's HEAD) and ``refs/sandbox/wip/NAME``
(a commit of the whole workspace: tracked, modified and untracked files, symlinks as links, with
the HEAD as parent). Everything below is git on those objects in the host's own repository.

"Merged" means: every commit is reachable from a target, or merging it into a target would change
nothing (``git merge-tree``): that covers squash merges, rebases and cherry-picks. Targets are the
repository's HEAD, every local branch outside ``sandbox/`` and every remote-tracking branch (so
"pushed" counts too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def wip_ref(name: str) -> str:
    return WIP_PREFIX + name


def read(mgr: SandboxManager, src: Source, *, snapshot: bool = True, base: str | None = None,
         task: str = "", strict: bool = False) -> Work:
    """Bring the agent's work over, then describe it from the host's refs.

    ``strict``: an agent that cannot be read is an error (exit 8) instead of a ``Work`` holding
    what was read last (``readable`` False, with the reason)."""
    synced = mgr.sync(src, snapshot=snapshot)
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
    branch = f"{BRANCH_PREFIX}{name}-restored"
    if gitops.branch_exists(repo, branch):
        raise Conflict(f"branch {branch} already exists", hint="rename or delete it first")
    path = (path or settings.data_dir / "restored" / repo.slug / name).absolute()
    if path.exists() or path.is_symlink():
        raise Conflict(f"{path} already exists", hint="pass --path")
    path.parent.mkdir(parents=True, exist_ok=True)
    gitops.git(repo.top, "worktree", "add", "--quiet", "-b", branch, str(path), head)
    gitops.git(path, "read-tree", "-u", "--reset", commit)
    gitops.git(path, "reset", "-q")
    return Restored(ref=ref, branch=branch, path=path)


# -- diff, apply, merge, push ----------------------------------------------------------------------------
def diff(mgr: SandboxManager, sb: Sandbox, *, stat: bool = False, uncommitted: bool = False) -> str:
    work = of(mgr, sb)
    if work.head is None:
        raise NotFound(f"branch {work.branch} of {work.name} no longer exists")
    old = work.head if uncommitted else (work.base or work.head)
    opts = ["--stat"] if stat else ["--binary"]
    return work.git("diff", "--no-color", "--no-ext-diff", "--no-textconv", *opts, old, work.wip or work.head, "--")


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


def apply(mgr: SandboxManager, sb: Sandbox) -> list[str]:
    """The agent's changes (committed since base + uncommitted) into the main checkout, not committed."""
    work = of(mgr, sb)
    _require_clean_main(work.repo)
    old = work.base or work.head
    new = work.wip or work.head
    assert old is not None and new is not None
    files = work.git("diff", "--name-only", "--no-renames", old, new, "--").split()
    if not files:
        return []
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


def _checked_out(repo: gitops.Repo) -> dict[str, Path]:
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


def _conflict_files(cwd: Path, proc: subprocess.CompletedProcess[str]) -> str:
    """The conflicted files, or git's own reason (e.g. untracked files would be overwritten)."""
    names = gitops.git(cwd, "diff", "--name-only", "--diff-filter=U", check=False).stdout.split()
    reason = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return ", ".join(names[:5]) or (reason[0] if reason else "conflict")


def merge(mgr: SandboxManager, sb: Sandbox, *, mode: str = "merge", into: str | None = None,
          include_uncommitted: bool = False) -> Merged:
    """Bring the agent's branch into the main checkout's branch (or ``into``); all or nothing."""
    if mode not in ("merge", "squash", "rebase"):
        raise UsageError(f"unknown merge mode {mode!r}")
    work = of(mgr, sb)
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
    elif target in _checked_out(repo):
        raise Conflict(f"branch {target} is checked out in {_checked_out(repo)[target]}", hint="merge there")
    committed = commit_uncommitted(work) if include_uncommitted else None
    tip = committed or work.head
    if tip is None:
        raise NotFound(f"branch {work.branch} no longer exists")
    subject = work.task or work.branch

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
                  left_uncommitted=work.dirty and not include_uncommitted)


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


# -- gc ------------------------------------------------------------------------------------------------
@dataclass
class Action:
    kind: str      # container | workspace | branch | proxy | pool | keep
    target: str
    detail: str = ""
    run: Callable[[], str | None] | None = field(default=None, repr=False)


def gc(mgr: SandboxManager, repo_path: Path | None = None, all_repos: bool = False) -> list[Action]:
    """Plan the cleanup (nothing changes until each action's ``run`` is called)."""
    every = mgr.list(any_run=True, sync=False)
    mine = mgr.list(sync=False)
    if all_repos:
        repo_list = sorted({mgr.repo_of(s) for s in mine if Path(s.labels.get(L.GITDIR, "")).is_dir()},
                           key=lambda r: str(r.top))
        for slug_dir in _dirs(mgr.settings.data_dir / "workspaces"):
            for ws in _dirs(slug_dir):
                found = _repo_of_workspace(mgr, ws)
                if found is not None and found not in repo_list:
                    repo_list.append(found)
    else:
        repo_list = [gitops.find_repo(repo_path or Path.cwd())]
    tops = {str(r.top) for r in repo_list}
    # what a branch holds is decided on the agents' latest commits (of these repositories only)
    mgr.refresh_branches([s for s in mine if s.repo in tops], force=True)
    actions: list[Action] = []
    for repo in repo_list:
        actions += _gc_repo(mgr, repo, [s for s in mine if s.repo == str(repo.top)], every)
    from sandbox import isolation

    return actions + _gc_state(mgr, actions, every) + _gc_proxies(
        mgr, {s.name for s in every}, isolation.everything(mgr.engine, mgr.settings.run_id)) + _gc_pool(mgr)


def _gc_pool(mgr: SandboxManager) -> list[Action]:
    """Warm pool slots that serve nobody: unclaimed ones whose container is gone or stopped (a healthy
    one is never touched: `sandbox pool --size 0` empties a pool), a claim cut short (no claim
    record a minute on), and a claimed agent's slot whose container is gone (its work read and,
    when at risk, backed up first, as for any workspace without a container)."""
    from sandbox import pool
    from sandbox.manager import Source

    data = mgr.settings.data_dir
    containers = {c["Id"]: c for c in mgr.engine.list_containers([L.POOL])}
    claimed = pool.claims(data)
    settled = time.time() - 60
    out: list[Action] = []
    for key in sorted(pool.records(data)):
        for found in pool.slots(data, key):
            cid = found.container_id() or ""
            c = containers.get(cid)
            alive = c is not None and c.get("State") in ("running", "created", "restarting")
            claim_file = found.dir / "claim.json"
            if not found.claimed:
                if alive or (not cid and pool.mtime(found.dir) > settled):
                    continue  # (healthy, or being made right now)

                def drop_free(found: pool.Slot = found, cid: str = cid) -> str | None:
                    if not pool.claim(found):
                        return "kept: a spawn claimed it"
                    if cid:
                        mgr.engine.remove(cid)
                    pool.drop_slot(found)
                    return None
                out.append(Action("pool", found.id, "its container is gone or stopped", run=drop_free))
            elif not claim_file.exists():
                if pool.mtime(found.dir / "claimed") > settled:
                    continue  # (a spawn is claiming it)

                def drop_cut(found: pool.Slot = found, cid: str = cid) -> str | None:
                    if cid:
                        mgr.engine.remove(cid)
                    pool.drop_slot(found)
                    return None
                out.append(Action("pool", found.id, "claimed by a spawn that was cut short", run=drop_cut))
            elif c is None:
                labels = claimed.get(found.id) or {}
                if not labels.get(L.NAME) or not labels.get(L.GITDIR):
                    continue
                repo = gitops.Repo(top=Path(labels.get(L.REPO, "")), common_dir=Path(labels[L.GITDIR]))
                src = Source(name=labels[L.NAME], repo=repo, branch=labels.get(L.BRANCH, BRANCH_PREFIX + labels[L.NAME]),
                             workspace=found.workspace, agent_git=found.agent_git,
                             uid=int(labels.get(L.UID) or 0) or mgr.settings.uid_gid()[0], image=mgr.settings.image)
                work = read(mgr, src)
                if not work.readable:
                    out.append(Action("keep", str(found.dir), f"no container, and its work cannot be read: {work.reason}"))
                    continue
                at_risk = risk(work)

                def drop_claimed(found: pool.Slot = found, src: Source = src, work: Work = work,
                                 at_risk: Risk = at_risk) -> str | None:
                    saved = backup(work) if at_risk else None
                    mgr.drop_workspace(src)
                    pool.drop_slot(found)
                    return f"saved first as {saved.ref}" if saved else None
                out.append(Action("workspace", str(found.workspace), f"agent {src.name}'s (warm pool) with no container"
                                  + (f", {at_risk.describe()} backed up first" if at_risk else ""), run=drop_claimed))
    return out


def _gc_state(mgr: SandboxManager, actions: list[Action], every: list[Sandbox]) -> list[Action]:
    """State dirs of agents that are gone (no container, no workspace left in any repository, once
    the planned actions ran) and the locks of spawns that died."""
    from sandbox.spec import CONTAINER_PREFIX

    settings = mgr.settings
    removed = {a.target.removeprefix(CONTAINER_PREFIX) for a in actions if a.kind == "container"}  # (they take theirs)
    dropping = {Path(a.target).name for a in actions if a.kind == "workspace"}
    everywhere = {p.name for d in _dirs(settings.data_dir / "workspaces") for p in _dirs(d)} - dropping
    names = {s.name for s in every} - removed
    out: list[Action] = []
    for state_dir in _dirs(settings.data_dir / "state"):
        name = state_dir.name
        if name in names or name in removed or name in everywhere or mgr.spawning(name):
            continue
        out.append(Action("state", str(state_dir), "the agent is gone",
                          run=lambda d=state_dir: shutil.rmtree(d, ignore_errors=True)))
    lock_dir = settings.data_dir / "spawning"
    for lock in sorted(lock_dir.glob("*.lock")) if lock_dir.is_dir() else []:
        if not mgr.spawning(lock.name[:-5]):  # the lock of a spawn that died
            out.append(Action("state", str(lock), "the lock of a spawn that was cut short",
                              run=lambda p=lock: p.unlink(missing_ok=True)))
    return out


def _gc_proxies(mgr: SandboxManager, agents: set[str], candidates: list[dict[str, Any]]) -> list[Action]:
    """Proxies and internal networks of isolated agents that are gone (a spawn cut short): they hold
    no work, and the model proxy holds the key, so they go. Younger than a minute: a spawn may be
    making them right now (its agent comes a moment after), so they stay."""
    settled = time.time() - 60
    young = {c["Labels"][L.PROXY_OF] for c in candidates if _created(c) > settled}
    orphans = {c["Labels"][L.PROXY_OF] for c in candidates} - agents - young
    return [Action("proxy", name, "isolated agent's proxies and network; the agent is gone",
                   run=lambda name=name: mgr.drop_isolation(name)) for name in sorted(orphans)]


def _created(obj: dict[str, Any]) -> float:
    """Epoch seconds an engine object was made: containers say a number, networks an ISO time."""
    raw = obj.get("Created")
    if isinstance(raw, (int, float)):
        return float(raw)
    try:
        return datetime.fromisoformat(str(raw)[:26].rstrip("Z")).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return time.time()  # unknown: treated as young (kept)


def _dirs(path: Path) -> list[Path]:
    """Real subdirectories (no symlinks), sorted; none when ``path`` is not a real directory."""
    if not path.is_dir() or path.is_symlink():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())


def _repo_of_workspace(mgr: SandboxManager, ws: Path) -> gitops.Repo | None:
    """The host repository an orphaned workspace came from, from the host's own record (never from
    a file the agent could write)."""
    top = mgr.repo_record(ws.parent.name)
    if top is None:
        return None
    try:
        found = gitops.find_repo(top)
    except SandboxError:
        return None
    return found if found.slug == ws.parent.name else None


def _gc_repo(mgr: SandboxManager, repo: gitops.Repo, mine: list[Sandbox], every: list[Sandbox]) -> list[Action]:
    from sandbox.manager import Source

    settings = mgr.settings
    actions: list[Action] = []
    live = {s.labels.get(L.WORKTREE) for s in every}
    gone: set[str] = set()
    # 1. our containers whose workspace is gone (its commits are brought over first); and containers
    #    a spawn created but never started (it was cut short: the agent never ran), with their workspace
    for s in mine:
        if s.engine_state == "created" and not mgr.spawning(s.name):
            gone.add(s.container_id)
            live.discard(s.labels.get(L.WORKTREE))  # (its workspace: step 2, read and saved as any orphan)

            def drop_unstarted(s: Sandbox = s) -> str | None:
                mgr.drop_container(s)
                shutil.rmtree(s.labels.get(L.STATE_DIR, "/nonexistent"), ignore_errors=True)
                return None
            actions.append(Action("container", s.container_name, "created by a spawn that was cut short; never started",
                                  run=drop_unstarted))
        elif not s.worktree.exists():
            gone.add(s.container_id)

            def drop_container(s: Sandbox = s) -> str | None:
                src = mgr.source(s)
                mgr.sync(src, snapshot=False)
                mgr.drop_container(s)
                mgr.drop_workspace(src)
                shutil.rmtree(s.labels.get(L.STATE_DIR, "/nonexistent"), ignore_errors=True)
                return None
            actions.append(Action("container", s.container_name, f"workspace {s.worktree} is gone", run=drop_container))
    # 2. our workspaces with no container: read once more (a reader container), saved when at risk
    slug_dir = settings.data_dir / "workspaces" / repo.slug
    dropping: set[str] = set()
    for ws in _dirs(slug_dir):
        if str(ws) in live:
            continue
        if mgr.spawning(ws.name):
            actions.append(Action("keep", str(ws), "a spawn is making it"))
            continue
        src = Source(name=ws.name, repo=repo, branch=BRANCH_PREFIX + ws.name, workspace=ws,
                     agent_git=settings.data_dir / "agent-git" / repo.slug / ws.name,
                     uid=os.lstat(ws).st_uid or settings.uid_gid()[0], image=settings.image)
        work = read(mgr, src)
        if not work.readable:
            actions.append(Action("keep", str(ws), f"no container, and its work cannot be read: {work.reason}"))
            continue
        at_risk = risk(work)

        def drop(src: Source = src, work: Work = work, at_risk: Risk = at_risk) -> str | None:
            saved = backup(work) if at_risk else None
            mgr.drop_workspace(src)
            return f"saved first as {saved.ref}" if saved else None
        dropping.add(ws.name)
        actions.append(Action("workspace", str(ws), "no container" + (
            f", {at_risk.describe()} backed up first" if at_risk else ""), run=drop))
    # 2b. an agent's git dir with neither workspace nor container (a removal cut short): its commits
    #     brought over (a reader container), then removed
    for agent_git in _dirs(settings.data_dir / "agent-git" / repo.slug):
        name = agent_git.name
        if (slug_dir / name).exists() or any(s.name == name for s in every) or mgr.spawning(name):
            continue
        src = Source(name=name, repo=repo, branch=BRANCH_PREFIX + name, workspace=slug_dir / name, agent_git=agent_git,
                     uid=os.lstat(agent_git).st_uid or settings.uid_gid()[0], image=settings.image)

        def drop_git(src: Source = src) -> str | None:
            synced = mgr.sync(src, snapshot=False)
            if not synced.ok:
                return f"kept: its commits cannot be read ({synced.reason})"
            mgr.drop_workspace(src)
            return None
        actions.append(Action("workspace", str(agent_git), "an agent's repository with no workspace or container",
                              run=drop_git))
    # 3. sandbox/* branches of removed agents that are merged (and their workspace snapshots)
    live_branches = {s.branch for s in every if s.container_id not in gone and s.repo == str(repo.top)}
    checked = set(_checked_out(repo))
    for ref in gitops.git(repo.top, "for-each-ref", "--format=%(refname)", "refs/heads/" + BRANCH_PREFIX).stdout.split():
        branch = ref[len("refs/heads/"):]
        name = branch[len(BRANCH_PREFIX):]
        if branch in live_branches or branch in checked:
            continue
        unsaved = unsaved_commits(repo, ref)
        if unsaved:
            actions.append(Action("keep", branch, f"{len(unsaved)} commit(s) neither merged nor pushed"))
        else:
            def drop_branch(branch: str = branch, name: str = name) -> str | None:
                if unsaved_commits(repo, f"refs/heads/{branch}"):  # moved since the plan: keep it
                    return "kept: it holds new commits"
                gitops.branch_delete(repo, branch)
                gitops.ref_delete(repo, wip_ref(name))
                return None
            actions.append(Action("branch", branch, "merged", run=drop_branch))
    return actions
