"""The one path that runs git on the host.

Every call is an argv list run without a shell, with hooks, fsmonitor and the pager disabled,
so nothing an agent planted in a shared ``.git`` runs on the host through `sandbox`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import GitError, RepoError

# Config that neutralises what an untrusted .git could make the host run.
SAFE_CONFIG = [
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "core.pager=cat",
    "-c", "core.untrackedCache=false",
    "-c", "credential.helper=",
    "-c", "protocol.ext.allow=never",
]
SAFE_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_OPTIONAL_LOCKS": "0",
    "GIT_PAGER": "cat",
    "PAGER": "cat",
    "GIT_EDITOR": "true",
}


def git(
    cwd: Path,
    *args: str,
    check: bool = True,
    trust: tuple[Path, ...] = (),
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``git -C cwd ARGS`` safely; ``trust`` adds ``safe.directory`` for exactly those paths.

    ``env`` adds variables (e.g. ``GIT_INDEX_FILE`` for a temporary index).
    """
    argv = ["git", *SAFE_CONFIG]
    for path in trust:
        argv += ["-c", f"safe.directory={path}"]
    argv += ["-C", str(cwd), *args]
    full_env = {**os.environ, **SAFE_ENV}
    full_env.pop("GIT_DIR", None)
    full_env.pop("GIT_WORK_TREE", None)
    full_env.pop("GIT_INDEX_FILE", None)
    full_env.update(env or {})
    proc = subprocess.run(argv, cwd=cwd, env=full_env, input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise GitError(argv[len(SAFE_CONFIG) + 1 :], proc.returncode, proc.stderr)
    return proc


@dataclass(frozen=True)
class Repo:
    """A repository as seen from its main checkout."""

    top: Path         # the main checkout's top-level directory
    common_dir: Path  # the shared .git directory

    @property
    def slug(self) -> str:
        import hashlib

        digest = hashlib.sha256(str(self.top).encode()).hexdigest()[:8]
        return f"{self.top.name}-{digest}"


def find_repo(path: Path) -> Repo:
    """The repository containing ``path`` (from the main checkout or any of its worktrees)."""
    path = path.resolve()
    if not path.is_dir():
        raise RepoError(f"not a directory: {path}")
    proc = git(path, "rev-parse", "--path-format=absolute", "--git-common-dir", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise RepoError(f"not a git repository: {path}", hint="run inside a repository or pass --repo PATH")
    lines = proc.stdout.splitlines()
    if len(lines) < 2:
        raise RepoError(f"{path} is a bare repository or has no work tree; sandbox needs a checkout")
    common = Path(lines[0])
    top = common.parent if common.name == ".git" else Path(lines[1])
    return Repo(top=top, common_dir=common)


def scope(path: Path | None, all_repos: bool) -> Path | None:
    """Which repository a listing is about: None for every one (``--all``, or outside any
    repository when no path was given); a bad explicit ``path`` is an error."""
    if all_repos:
        return None
    try:
        return find_repo(path or Path.cwd()).top
    except RepoError:
        if path is not None:
            raise
        return None


def resolve_commit(repo: Repo, rev: str) -> str:
    proc = git(repo.top, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}", check=False)
    if proc.returncode != 0:
        if rev == "HEAD":
            raise RepoError(f"{repo.top} has no commits yet", hint="make a first commit, then spawn")
        raise RepoError(f"unknown revision {rev!r} in {repo.top}")
    return proc.stdout.strip()


def branch_exists(repo: Repo, branch: str) -> bool:
    return git(repo.top, "show-ref", "--verify", "--quiet", f"refs/heads/{branch}", check=False).returncode == 0


def check_branch_name(repo: Repo, branch: str) -> bool:
    return git(repo.top, "check-ref-format", "--branch", branch, check=False).returncode == 0


@contextlib.contextmanager
def _worktrees_lock(repo: Repo) -> Iterator[None]:
    """Serialise `git worktree add` in one repository: concurrent adds read each other's half-made
    ``.git/worktrees/<id>`` ("fatal: failed to read .git/worktrees/<id>/commondir"), seen with 10
    parallel spawns. A ``flock`` on a file in the git dir; released when the process ends."""
    with open(repo.common_dir / "sandbox-worktrees.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def worktree_add(repo: Repo, path: Path, branch: str, base: str, reason: str) -> Path:
    """Add a locked worktree at ``path`` on a new ``branch``; returns its private git dir."""
    with _worktrees_lock(repo):
        git(repo.top, "worktree", "add", "--quiet", "--lock", "-b", branch, str(path), base)
    # Newer git can record a reason; older ones only lock. Either way the record is protected.
    gitdir = worktree_gitdir(path)
    (gitdir / "locked").write_text(reason + "\n")
    return gitdir


def worktree_gitdir(worktree: Path) -> Path:
    """The worktree's private git dir (``.git/worktrees/<id>``), read from its ``.git`` file."""
    dotgit = worktree / ".git"
    if dotgit.is_symlink():
        raise RepoError(f"{dotgit} is a symlink, not a worktree link")
    try:
        text = dotgit.read_text()
    except OSError as e:
        raise RepoError(f"{worktree} is not a git worktree ({e.strerror})") from e
    if not text.startswith("gitdir:"):
        raise RepoError(f"{dotgit} is not a worktree link")
    return Path(text.split(":", 1)[1].strip())


def worktree_remove(repo: Repo, path: Path, gitdir: Path | None = None) -> None:
    """Remove a worktree directory and its registration (work must be saved by the caller)."""
    if path.exists():
        shutil.rmtree(path)
    if gitdir is not None and gitdir.parent == repo.common_dir / "worktrees" and gitdir.exists():
        shutil.rmtree(gitdir)  # exactly this registration: no global `worktree prune` of others' records


def branch_delete(repo: Repo, branch: str) -> None:
    git(repo.top, "branch", "-D", "--", branch, check=False)


def head_of(repo: Repo, branch: str) -> str | None:
    proc = git(repo.top, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    return proc.stdout.strip() or None


def is_dirty(worktree: Path) -> bool:
    proc = git(worktree, "status", "--porcelain", "--untracked-files=normal", trust=(worktree,), check=False)
    return bool(proc.stdout.strip())
