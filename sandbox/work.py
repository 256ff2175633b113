"""Getting work out of an agent, and cleaning up without ever losing it.

diff / merge / apply / push / pr bring an agent's work into the repository; ``guard`` (used by
``SandboxManager.remove``), ``backup`` / ``restore`` and ``gc`` make sure no cleanup loses it.

Every host git call goes through ``gitops.git``. The worktree's state is read with git plumbing
only (a temporary index, ``write-tree``): git stores a symlink as a link and never follows it, and
the agent's own index is never touched. Python never opens a path inside a worktree.

"Merged" means: every commit of the branch is reachable from a target, or merging the branch into
a target would change nothing (``git merge-tree``): that covers squash merges, rebases and
cherry-picks. Targets are the repository's HEAD, every local branch outside ``sandbox/`` and every
remote-tracking branch (so "pushed" counts too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox import gitops, labels as L
from sandbox.errors import Conflict, NotFound, RepoError, SandboxError, UsageError

if TYPE_CHECKING:
    from sandbox.config import Settings
    from sandbox.manager import Sandbox, SandboxManager

BRANCH_PREFIX = "sandbox/"
BACKUP_PREFIX = "refs/sandbox/backup/"
IDENTITY = {"GIT_AUTHOR_NAME": "sandbox", "GIT_AUTHOR_EMAIL": "sandbox@localhost",
            "GIT_COMMITTER_NAME": "sandbox", "GIT_COMMITTER_EMAIL": "sandbox@localhost"}


@dataclass(frozen=True)
class Work:
    """What an agent produced: its branch (from ``base``) and its worktree."""

    name: str
    repo: gitops.Repo
    branch: str
    base: str | None
    worktree: Path
    task: str = ""
    uid: int | None = None

    def git(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
        """git in the repository's main checkout (objects and refs only, never the worktree)."""
        return gitops.git(self.repo.top, *args, check=check, env=env).stdout

    def in_worktree(self, *args: str, env: dict[str, str] | None = None) -> str:
        return gitops.git(self.worktree, *args, trust=(self.worktree,), env=env).stdout

    @property
    def has_worktree(self) -> bool:
        return self.worktree.is_dir() and not self.worktree.is_symlink() and (self.worktree / ".git").is_file()


def of(sb: Sandbox) -> Work:
    uid = sb.labels.get(L.UID)
    return Work(name=sb.name, repo=gitops.Repo(top=Path(sb.repo), common_dir=Path(sb.labels[L.GITDIR])),
                branch=sb.branch, base=sb.labels.get(L.BASE), worktree=sb.worktree,
                task=sb.labels.get(L.TASK, ""), uid=int(uid) if uid else None)


def _rev(repo: gitops.Repo, rev: str) -> str | None:
    out = gitops.git(repo.top, "rev-parse", "--verify", "--quiet", "--end-of-options", rev, check=False).stdout
    return out.strip() or None


# -- the worktree's state, read safely -------------------------------------------------------------
def worktree_head(work: Work) -> str | None:
    if work.has_worktree:
        out = gitops.git(work.worktree, "rev-parse", "--verify", "--quiet", "HEAD", trust=(work.worktree,),
                         check=False).stdout.strip()
        if out:
            return out
    return _rev(work.repo, f"refs/heads/{work.branch}")


def snapshot_tree(work: Work) -> str:
    """The worktree as a tree object (tracked + untracked, not ignored), via a temporary index."""
    head = worktree_head(work)
    if head is None:
        raise NotFound(f"branch {work.branch} of {work.name} no longer exists")
    if not work.has_worktree:
        return work.git("rev-parse", f"{head}^{{tree}}").strip()
    with tempfile.TemporaryDirectory(prefix="sandbox-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        work.in_worktree("read-tree", head, env=env)
        work.in_worktree("add", "--all", "--", ".", env=env)
        return work.in_worktree("write-tree", env=env).strip()


def is_dirty(work: Work) -> bool:
    return work.has_worktree and gitops.is_dirty(work.worktree)


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

    def __bool__(self) -> bool:
        return self.dirty or bool(self.unsaved)

    def describe(self) -> str:
        parts = (["uncommitted changes"] if self.dirty else []) + (
            [f"{len(self.unsaved)} commit(s) neither merged nor pushed"] if self.unsaved else [])
        return " and ".join(parts)


def risk(work: Work) -> Risk:
    head = worktree_head(work)
    unsaved = unsaved_commits(work.repo, head) if head else []
    branch_head = _rev(work.repo, f"refs/heads/{work.branch}")
    if branch_head and branch_head != head:
        unsaved += unsaved_commits(work.repo, branch_head)
    return Risk(dirty=is_dirty(work), unsaved=unsaved)


# -- backup and restore --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backup:
    """A backup commit: tree = the worktree's state, first parent = its HEAD (the committed work)."""

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
    tree = snapshot_tree(work)
    head = worktree_head(work)
    assert head is not None
    parents = ["-p", head]
    branch_head = _rev(work.repo, f"refs/heads/{work.branch}")
    if branch_head and branch_head != head:
        parents += ["-p", branch_head]
    msg = f"sandbox backup of {work.name}\n\nbranch: {work.branch}\nbase: {work.base or '?'}\nhead: {head}\n"
    commit = work.git("commit-tree", tree, *parents, "-m", msg, env=IDENTITY).strip()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    ref = f"{BACKUP_PREFIX}{work.name}/{stamp}"
    work.git("update-ref", "-m", "sandbox backup", ref, commit, "0" * 40)
    return Backup(ref=ref, commit=commit, name=work.name)


def check_removable(sb: Sandbox, *, force: bool) -> None:
    """Before removing: refuse (nothing touched) when work would be lost, unless ``force``."""
    at_risk = risk(of(sb))
    if at_risk and not force:
        raise Conflict(f"{sb.name} has {at_risk.describe()}",
                       hint=f"`sandbox merge {sb.name}` or `sandbox push {sb.name}`; --force saves a backup ref, then removes")


def save_if_at_risk(sb: Sandbox) -> Backup | None:
    """Once the container is gone (nothing writes any more): back up whatever would be lost."""
    work = of(sb)
    return backup(work) if risk(work) else None


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
def diff(sb: Sandbox, *, stat: bool = False, uncommitted: bool = False) -> str:
    work = of(sb)
    tree = snapshot_tree(work)
    old = worktree_head(work) if uncommitted else (work.base or worktree_head(work))
    assert old is not None
    opts = ["--stat"] if stat else ["--binary"]
    return work.git("diff", "--no-color", "--no-ext-diff", "--no-textconv", *opts, old, tree, "--")


def _require_clean_main(repo: gitops.Repo) -> None:
    out = gitops.git(repo.top, "status", "--porcelain", "--untracked-files=no").stdout
    if out.strip():
        raise Conflict(f"the main checkout {repo.top} has uncommitted changes",
                       hint="commit or stash them first; nothing was changed")


def apply(sb: Sandbox) -> list[str]:
    """The agent's changes (committed since base + uncommitted) into the main checkout, not committed."""
    work = of(sb)
    _require_clean_main(work.repo)
    old = work.base or worktree_head(work)
    assert old is not None
    tree = snapshot_tree(work)
    files = work.git("diff", "--name-only", "--no-renames", old, tree, "--").split()
    if not files:
        return []
    patch = work.git("diff", "--binary", "--full-index", "--no-color", "--no-ext-diff", "--no-textconv", old, tree, "--")
    proc = gitops.git(work.repo.top, "apply", "--3way", "--whitespace=nowarn", "-", input=patch, check=False)
    if proc.returncode != 0:
        gitops.git(work.repo.top, "reset", "-q", "--hard", "HEAD")  # it was clean: back to exactly HEAD
        last = (proc.stderr.strip().splitlines() or ["conflict"])[-1]
        raise Conflict(f"{sb.name}'s changes do not apply to {work.repo.top}: {last}",
                       hint="nothing was changed; try `sandbox merge`")
    return files


def commit_uncommitted(work: Work) -> str | None:
    """Commit the agent's uncommitted changes on its branch (from the host); the new head, or None."""
    if not is_dirty(work):
        return None
    work.in_worktree("add", "--all", "--", ".")
    work.in_worktree("commit", "-q", "--no-verify", "-m", f"sandbox: uncommitted work of {work.name}")
    if os.getuid() == 0 and work.uid:  # give the agent back the files root's commit (re)created
        gitdir = gitops.worktree_gitdir(work.worktree)
        _give_back(gitdir, ["index", "HEAD", "ORIG_HEAD", "COMMIT_EDITMSG", "logs/HEAD"], work.uid)
        common = work.repo.common_dir
        _give_back(common / "refs/heads/sandbox", [work.branch.removeprefix(BRANCH_PREFIX)], work.uid)
        _give_back(common / "logs/refs/heads/sandbox", [work.branch.removeprefix(BRANCH_PREFIX)], work.uid)
    return worktree_head(work)


def _give_back(directory: Path, names: list[str], uid: int) -> None:
    """chown exactly these files to ``uid``, never following a symlink the agent may have planted
    (every path component is opened with O_NOFOLLOW, the file itself is lchown'ed)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        top = os.open(directory, flags)
    except OSError:
        return
    try:
        for name in names:
            *dirs, leaf = name.split("/")
            fd = os.dup(top)
            try:
                for d in dirs:
                    nxt = os.open(d, flags, dir_fd=fd)
                    os.close(fd)
                    fd = nxt
                os.chown(leaf, uid, -1, dir_fd=fd, follow_symlinks=False)
            except OSError:
                pass
            finally:
                os.close(fd)
    finally:
        os.close(top)


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


def merge(sb: Sandbox, *, mode: str = "merge", into: str | None = None, include_uncommitted: bool = False) -> Merged:
    """Bring the agent's branch into the main checkout's branch (or ``into``); all or nothing."""
    if mode not in ("merge", "squash", "rebase"):
        raise UsageError(f"unknown merge mode {mode!r}")
    work = of(sb)
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
    tip = _rev(repo, f"refs/heads/{work.branch}")
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
    return Merged(target=target, before=before, after=after, mode=mode, committed_uncommitted=committed,
                  left_uncommitted=is_dirty(work))


def push(sb: Sandbox, remote: str = "origin") -> str:
    work = of(sb)
    ref = f"refs/heads/{work.branch}"
    proc = gitops.git(work.repo.top, "push", "--porcelain", "--", remote, f"{ref}:{ref}", check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["push failed"])[-1]
        raise RepoError(f"pushing {work.branch} to {remote} failed: {last}")
    return f"{remote}/{work.branch}"


def pr(sb: Sandbox, remote: str = "origin", base: str | None = None) -> str:
    """Push, then open a pull request with the GitHub CLI; returns its URL."""
    gh = shutil.which("gh")
    if gh is None:
        raise SandboxError("the GitHub CLI `gh` is not installed", hint=f"install it, or `sandbox push {sb.name}`")
    work = of(sb)
    push(sb, remote)
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
    kind: str      # container | worktree | registration | branch | keep
    target: str
    detail: str = ""
    run: Callable[[], str | None] | None = field(default=None, repr=False)


def _registrations(repo: gitops.Repo) -> list[tuple[Path, Path]]:
    """(worktree path, admin dir) for every worktree registration of the repository."""
    found = []
    root = repo.common_dir / "worktrees"
    for admin in sorted(root.iterdir()) if root.is_dir() else []:
        gitfile = admin / "gitdir"
        if admin.is_symlink() or not gitfile.is_file() or gitfile.is_symlink():
            continue
        found.append((Path(gitfile.read_text().strip()).parent, admin))
    return found


def _ours(path: Path, settings: Settings) -> bool:
    root = (settings.data_dir / "worktrees").absolute()
    return path.absolute().is_relative_to(root) and len(path.absolute().relative_to(root).parts) == 2


def gc(mgr: SandboxManager, repo_path: Path | None = None, all_repos: bool = False) -> list[Action]:
    """Plan the cleanup (nothing changes until each action's ``run`` is called)."""
    settings = mgr.settings
    every = [mgr._snapshot(c) for c in mgr.engine.list_containers(L.managed_filter())]
    mine = mgr.list()
    if all_repos:
        repos = {(s.repo, s.labels.get(L.GITDIR, "")) for s in mine}
        repo_list = [gitops.Repo(Path(t), Path(g)) for t, g in sorted(repos) if Path(g).is_dir()]
        for slug_dir in sorted((settings.data_dir / "worktrees").glob("*")):
            for wt in sorted(slug_dir.iterdir()):
                try:
                    found = gitops.find_repo(wt) if (wt / ".git").is_file() and not (wt / ".git").is_symlink() else None
                except SandboxError:
                    found = None
                if found and found not in repo_list:
                    repo_list.append(found)
    else:
        repo_list = [gitops.find_repo(repo_path or Path.cwd())]
    actions: list[Action] = []
    for repo in repo_list:
        actions += _gc_repo(mgr, repo, [s for s in mine if s.repo == str(repo.top)], every)
    return actions


def _drop_container(mgr: SandboxManager, s: Sandbox) -> None:
    mgr.engine.remove(s.container_id, force=True)
    shutil.rmtree(s.labels.get(L.STATE_DIR, "/nonexistent"), ignore_errors=True)


def _gc_repo(mgr: SandboxManager, repo: gitops.Repo, mine: list[Sandbox], every: list[Sandbox]) -> list[Action]:
    settings = mgr.settings
    actions: list[Action] = []
    live_worktrees = {s.labels.get(L.WORKTREE) for s in every}
    gone: set[str] = set()
    # 1. our containers whose worktree is gone
    for s in mine:
        if not s.worktree.exists():
            gone.add(s.container_id)
            actions.append(Action("container", s.container_name, f"worktree {s.worktree} is gone",
                                  run=lambda s=s: _drop_container(mgr, s)))
    # 2. our worktrees with no container (saved first when they hold uncommitted changes)
    regs = _registrations(repo)
    admin_of = {p.absolute(): a for p, a in regs}
    slug_dir = settings.data_dir / "worktrees" / repo.slug
    orphans: set[Path] = set()
    for wt in sorted(slug_dir.iterdir()) if slug_dir.is_dir() else []:
        if str(wt) in live_worktrees or wt.is_symlink() or not wt.is_dir():
            continue
        orphans.add(wt.absolute())
        admin = admin_of.get(wt.absolute())
        work = Work(name=wt.name, repo=repo, branch=BRANCH_PREFIX + wt.name, base=None, worktree=wt)
        dirty = admin is not None and is_dirty(work)

        def drop(work: Work = work, admin: Path | None = admin, dirty: bool = dirty) -> str | None:
            saved = backup(work) if dirty else None
            gitops.worktree_remove(repo, work.worktree, admin)
            return f"saved first as {saved.ref}" if saved else None
        actions.append(Action("worktree", str(wt), "no container" + (", uncommitted changes backed up first" if dirty else ""),
                              run=drop))
    # 3. stale registrations of our worktree paths
    for path, admin in regs:
        if _ours(path, settings) and not path.exists():
            orphans.add(path.absolute())
            actions.append(Action("registration", str(path), f"stale worktree record {admin.name}",
                                  run=lambda admin=admin: shutil.rmtree(admin)))  # type: ignore[func-returns-value]
    # 4. sandbox/* branches of removed agents that are merged
    live_branches = {s.branch for s in every if s.container_id not in gone and s.repo == str(repo.top)}
    checked = {b for b, p in _checked_out(repo).items() if p.absolute() not in orphans}
    for ref in gitops.git(repo.top, "for-each-ref", "--format=%(refname)", "refs/heads/" + BRANCH_PREFIX).stdout.split():
        branch = ref[len("refs/heads/"):]
        if branch in live_branches or branch in checked:
            continue
        unsaved = unsaved_commits(repo, ref)
        if unsaved:
            actions.append(Action("keep", branch, f"{len(unsaved)} commit(s) neither merged nor pushed"))
        else:
            actions.append(Action("branch", branch, "merged",
                                  run=lambda branch=branch: gitops.branch_delete(repo, branch)))  # type: ignore[func-returns-value]
    return actions
