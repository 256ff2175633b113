"""The one path that runs git on the host.

Every call is an argv list run without a shell, with hooks, fsmonitor and the pager disabled.
The host runs git only in the user's repository (its main checkout, or a scratch worktree of its
own); never with a git dir, config, attributes or work tree an agent can write. What an agent made
arrives through ``fetch_from``: a pack produced inside the agent's container, verified here.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import GitError, RepoError

BRANCH_PREFIX = "sandbox/"         # every agent's branch on the host: sandbox/NAME
WIP_PREFIX = "refs/sandbox/wip/"   # the host's copy of each agent's workspace snapshot (a commit)

# Defence in depth (the host never runs git with an agent's .git): hooks, fsmonitor, pager off.
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
    timeout: float | None = None,
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
    try:
        proc = subprocess.run(argv, cwd=cwd, env=full_env, input=input, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise GitError(argv[len(SAFE_CONFIG) + 1 :], -1, f"timed out after {timeout:g}s") from None
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


def _in_a_workspace(path: Path) -> Path | None:
    """The agent workspace ``path`` is in, if any: a directory whose ``.git`` is the file sandbox wrote
    (``contract.GITFILE``). Inside one, git must not look for a repository: a ``sub/.git`` there is the
    agent's. Only ``lstat`` and a small read of a regular file, never following a link."""
    from sandbox import agentfiles, contract

    for d in (path, *path.parents):
        try:
            st = os.lstat(d / ".git")
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == len(contract.GITFILE):
            found = agentfiles.read(str(d), ".git", len(contract.GITFILE), "git file")
            if found.data == contract.GITFILE.encode():
                return d
    return None


_FOUND: dict[Path, Repo] = {}  # (one command asks for the same repository more than once)


def find_repo(path: Path) -> Repo:
    """The repository containing ``path`` (from the main checkout or any of its worktrees)."""
    path = path.resolve()
    if path in _FOUND:
        return _FOUND[path]
    _FOUND[path] = found = _find_repo(path)
    return found


def _find_repo(path: Path) -> Repo:
    if not path.is_dir():
        raise RepoError(f"not a directory: {path}")
    workspace = _in_a_workspace(path)
    if workspace is not None:
        raise RepoError(f"{path} is inside the agent workspace {workspace}, not a repository of yours",
                        hint="run sandbox in your repository, or pass --repo PATH")
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


def heads(repo: Repo) -> dict[str, str]:
    """The repository's branches: name -> commit (one ``for-each-ref``)."""
    out = {}
    for line in git(repo.top, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads").stdout.splitlines():
        sha, _, ref = line.partition(" ")
        out[ref[len("refs/heads/"):]] = sha
    return out


_AGENT_GIT_CONFIG = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n"


def workspace_create(repo: Repo, workspace: Path, agent_git: Path, branch: str, base: str,
                     branches: dict[str, str] | None = None) -> None:
    """Make an agent's own repository: its git dir ``agent_git`` (borrowing the host's objects
    through alternates, so it is instant and writes nothing to the host's store) and its checked-out
    ``workspace`` on ``branch`` at ``base``, with the host's other branches (``branches``, else read
    now) as ``origin/*``. Both directories may exist already, empty (a warm pool's slot, mounted in
    its container).

    The only time the host runs git with the agent's git dir: now, while it is a directory the host
    has just created and no agent process exists. The git dir is written here (git's own layout:
    HEAD, config, objects with its alternates, the refs in ``packed-refs``), so one git process
    remains: the checkout. The caller gives the workspace its ``.git`` file, ``contract.GITFILE`` (a
    path that exists only inside the container).
    """
    for path in (workspace, agent_git):
        path.mkdir(parents=True, exist_ok=True)
    if any(agent_git.iterdir()):
        raise RepoError(f"{agent_git} is not empty")
    for sub in ("objects/info", "objects/pack", "refs/heads", "refs/tags"):
        (agent_git / sub).mkdir(parents=True)
    (agent_git / "objects" / "info" / "alternates").write_text(f"{repo.common_dir / 'objects'}\n")
    (agent_git / "config").write_text(_AGENT_GIT_CONFIG)
    refs = {f"refs/heads/{branch}": base}
    for name, sha in (heads(repo) if branches is None else branches).items():
        if not name.startswith(BRANCH_PREFIX):
            refs[f"refs/remotes/origin/{name}"] = sha
    (agent_git / "packed-refs").write_text(
        "# pack-refs with: peeled fully-peeled sorted \n" + "".join(f"{refs[r]} {r}\n" for r in sorted(refs)))
    (agent_git / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
    git(workspace.parent, f"--git-dir={agent_git}", f"--work-tree={workspace}", "read-tree", "-u", "--reset", "HEAD")


def ext_url(argv: list[str]) -> str:
    """A git ``ext::`` URL that runs ``argv`` as the remote end (``%`` and spaces escaped)."""
    return "ext::" + " ".join(a.replace("%", "%%").replace(" ", "% ") for a in argv)


def fetch_from(repo: Repo, remote_argv: list[str], refspecs: list[str], timeout: float = 120) -> None:
    """Fetch ``refspecs`` from a ``git upload-pack`` that ``remote_argv`` runs (e.g. in a container).

    The remote end is untrusted; this side runs only in the host's repository, with the host's
    config, and ``index-pack`` verifies every object received (``transfer.fsckObjects`` too).
    ``protocol.ext.allow`` is opened for this one command only.
    """
    git(repo.top, "-c", "protocol.ext.allow=always", "-c", "transfer.fsckObjects=true",
        "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-auto-gc", "--no-auto-maintenance",
        "--no-recurse-submodules", "--atomic", "--no-show-forced-updates",
        ext_url(remote_argv), *refspecs, timeout=timeout)


def branch_create(repo: Repo, branch: str, base: str) -> None:
    git(repo.top, "update-ref", f"refs/heads/{branch}", base, "0" * 40)


def branch_delete(repo: Repo, branch: str) -> None:
    git(repo.top, "branch", "-D", "--", branch, check=False)


def head_of(repo: Repo, branch: str) -> str | None:
    proc = git(repo.top, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    return proc.stdout.strip() or None


def ref_delete(repo: Repo, ref: str) -> None:
    git(repo.top, "update-ref", "-d", ref, check=False)
