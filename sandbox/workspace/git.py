"""The one path that runs git on the host.

Every call is an argv list run without a shell, with hooks, fsmonitor and the pager disabled.
The host runs git only in the user's repository (its main checkout, or a scratch worktree of its
own); never with a git dir, config, attributes or work tree an agent can write. What an agent made
arrives through ``fetch_from``: a pack produced inside the agent's container, verified here.

An agent's *content* still carries ``.gitattributes``, which select drivers by name (``filter=X``,
``diff=X``, ``merge=X``) that the host user's config defines as commands. Inside ``host_drivers_off``
(what diff, merge, apply and restore run in) every git call switches off each driver the host's
config defines, but the trusted ones (setting ``trusted_filters``); ``reencoding_attributes``
finds the ``working-tree-encoding`` an agent's attributes would add.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.errors import GitError, RepoError, SyncError

BRANCH_PREFIX = "sandbox/"         # every agent's branch on the host: sandbox/NAME
WIP_PREFIX = "refs/sandbox/wip/"   # the host's copy of each agent's workspace snapshot (a commit)
INCOMING_PREFIX = "refs/sandbox/incoming/"  # a sync's refs while it is checked, in its own git dir (``fetch_from``)
RELAY = Path(__file__).with_name("relay.py")  # the counting relay on the sync's transport
KILL_GRACE = 3.0  # a fetch's remote end keeps its own clock (``timeout``); the host kills this much later

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

    ``env`` adds variables (e.g. ``GIT_INDEX_FILE`` for a temporary index). Inside
    ``host_drivers_off``, the host's untrusted content drivers are switched off too.
    """
    argv = ["git", *SAFE_CONFIG]
    for path in trust:
        argv += ["-c", f"safe.directory={path}"]
    guard = _GUARD.get()
    if guard is not None:
        argv += guard.config_for(cwd)
    argv += ["-C", str(cwd), *args]
    full_env = {**os.environ, **SAFE_ENV}
    full_env.pop("GIT_DIR", None)
    full_env.pop("GIT_WORK_TREE", None)
    full_env.pop("GIT_INDEX_FILE", None)
    full_env.update(env or {})
    proc = _run_group(argv, cwd, full_env, input, timeout)
    if proc is None:
        raise GitError(argv[argv.index("-C") :], -1, f"timed out after {timeout:g}s")
    if check and proc.returncode != 0:
        raise GitError(argv[argv.index("-C") :], proc.returncode, proc.stderr)
    return proc


def _run_group(argv: list[str], cwd: Path, env: dict[str, str], input: str | None,
               timeout: float | None) -> subprocess.CompletedProcess[str] | None:
    """Run ``argv`` in a process group of its own; None when it ran out of ``timeout``. On a timeout
    (or any interruption) the whole group is killed: git and what it started (an ``ext::`` remote:
    the relay and its ``docker exec``), so nothing is left behind."""
    child = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE if input is not None else None,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = child.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(child)
        return None
    except BaseException:
        _kill_group(child)
        raise
    return subprocess.CompletedProcess(argv, child.returncode, out, err)


def _kill_group(child: subprocess.Popen[str]) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)  # (its own session: the group id is its pid)
    except OSError:
        pass
    try:
        child.communicate(timeout=5)  # reaped; a descendant that left the group and holds a pipe: not waited for
    except subprocess.TimeoutExpired:
        pass


# -- the host's content drivers, never run on an agent's content -------------------------------------
# What switches each kind of driver off: an empty command is "no command" to git (an empty `process`
# also makes git skip `clean`/`smudge`; a diff that would need an empty `command` fails instead,
# and sandbox's own diffs pass --no-ext-diff); a required filter that does nothing would be an
# error; a merge driver becomes git's own text merge (an empty one would make every merge of the
# file a conflict).
DRIVER_OFF = {
    "filter": (("clean", ""), ("smudge", ""), ("process", ""), ("required", "false")),
    "diff": (("textconv", ""), ("command", "")),
    "merge": (("driver", "git merge-file --quiet --marker-size=%L %A %O %B"), ("recursive", "text")),
}
REENCODING = "working-tree-encoding"  # an attribute, not a driver: listed in trusted_filters to allow it


@dataclass
class _Guard:
    """The drivers to leave on, and the overrides found per working directory (its config decides)."""

    trusted: frozenset[str]
    found: dict[Path, list[str]] = field(default_factory=dict)

    def config_for(self, cwd: Path) -> list[str]:
        if cwd not in self.found:
            self.found[cwd] = drivers_off(cwd, self.trusted)
        return self.found[cwd]


_GUARD: ContextVar[_Guard | None] = ContextVar("sandbox_git_drivers_off", default=None)


@contextmanager
def host_drivers_off(trusted: Iterable[str] = ()) -> Iterator[None]:
    """Within: every ``git`` call (of this thread) runs with the host config's filter, diff and merge
    drivers switched off, except those named in ``trusted`` (e.g. ``lfs``)."""
    token = _GUARD.set(_Guard(frozenset(trusted)))
    try:
        yield
    finally:
        _GUARD.reset(token)


def drivers_off(cwd: Path, trusted: frozenset[str] = frozenset()) -> list[str]:
    """``-c`` overrides that switch off every filter, diff and merge driver the host's git config
    (all its scopes, includes followed, as seen from ``cwd``) defines, but ``trusted``. A driver
    whose name ``-c`` cannot carry (an ``=``) cannot be switched off: an error, nothing runs."""
    token = _GUARD.set(None)  # (the lookup itself is a plain git call)
    try:
        proc = git(cwd, "config", "-z", "--name-only", "--get-regexp", r"^(filter|diff|merge)\.", check=False)
    finally:
        _GUARD.reset(token)
    if proc.returncode not in (0, 1):  # (1: none defined) — not knowing them is not running them
        raise GitError(["-C", str(cwd), "config"], proc.returncode, proc.stderr)
    names = set()
    for key in proc.stdout.split("\0"):
        section, _, rest = key.partition(".")
        name, dot, _var = rest.rpartition(".")
        if dot and name and section in DRIVER_OFF and name not in trusted:
            names.add((section, name))
    out: list[str] = []
    for section, name in sorted(names):
        if "=" in name or "\n" in name:
            raise RepoError(f"the git config defines a {section} driver named {name!r} that sandbox cannot switch off",
                            hint="rename it, or list it in the setting trusted_filters")
        for var, value in DRIVER_OFF[section]:
            out += ["-c", f"{section}.{name}.{var}={value}"]
    return out


def reencoding_attributes(repo: Repo, before: str, after: str) -> list[str]:
    """The ``.gitattributes`` files of commit ``after`` that name ``working-tree-encoding`` and are
    not as in ``before`` (the user's own): an agent's attributes that would have the files written
    in another encoding than the one ``diff`` shows. Read from the objects only (``git grep``)."""
    spec = ":(glob)**/.gitattributes"
    changed = git(repo.top, "diff", "--name-only", "-z", "--no-renames", before, after, "--", spec).stdout.split("\0")
    changed = [p for p in changed if p]
    if not changed:
        return []
    proc = git(repo.top, "grep", "-l", "-z", "-F", "-e", REENCODING, after, "--", *[f":(literal){p}" for p in changed],
               check=False)
    return [hit.partition(":")[2] for hit in proc.stdout.split("\0") if hit]


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
                     branches: dict[str, str] | None = None, shared: bool = True) -> None:
    """Make an agent's own repository: its git dir ``agent_git`` and its checked-out ``workspace`` on
    ``branch`` at ``base``, with the host's other branches (``branches``, else read now) as
    ``origin/*``. Both directories may exist already, empty (a warm pool's slot, mounted in its
    container). Its objects: ``shared``, the host's whole store through alternates (instant, nothing
    written; the caller mounts that store read-only); else only a pack of what ``base`` and those
    branches reach (``pack_reachable``): no stash, no ``refs/sandbox/*`` (other agents' snapshots,
    backups), nothing unreachable.

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
    (agent_git / "config").write_text(_AGENT_GIT_CONFIG)
    refs = {f"refs/heads/{branch}": base}
    for name, sha in (heads(repo) if branches is None else branches).items():
        if not name.startswith(BRANCH_PREFIX):
            refs[f"refs/remotes/origin/{name}"] = sha
    if shared:
        (agent_git / "objects" / "info" / "alternates").write_text(f"{repo.common_dir / 'objects'}\n")
    else:
        pack_reachable(repo, sorted(set(refs.values())), agent_git / "objects" / "pack")
    (agent_git / "packed-refs").write_text(
        "# pack-refs with: peeled fully-peeled sorted \n" + "".join(f"{refs[r]} {r}\n" for r in sorted(refs)))
    (agent_git / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
    git(workspace.parent, f"--git-dir={agent_git}", f"--work-tree={workspace}", "read-tree", "-u", "--reset", "HEAD")


def tracked_or_unignored(repo: Repo, paths: list[str]) -> tuple[list[str], list[str]]:
    """Of ``paths`` (relative to the main checkout): those git tracks there, and those it neither tracks
    nor ignores (``[setup] copy`` takes ignored files only). Read in the user's own checkout, with its
    own ignore rules (``.gitignore``, ``info/exclude``, ``core.excludesFile``)."""
    if not paths:
        return [], []
    literal = [":(literal)" + p for p in paths]
    listed = git(repo.top, "ls-files", "-z", "--full-name", "--", *literal).stdout.split("\0")
    tracked = [p for p in paths if p in listed]
    rest = [p for p in paths if p not in tracked]
    ignored: set[str] = set()
    if rest:
        proc = git(repo.top, "check-ignore", "-z", "--stdin", input="".join(p + "\0" for p in rest), check=False)
        if proc.returncode not in (0, 1):
            raise GitError(["git", "check-ignore"], proc.returncode, proc.stderr)
        ignored = set(proc.stdout.split("\0"))
    return tracked, [p for p in rest if p not in ignored]


def pack_reachable(repo: Repo, tips: list[str], pack_dir: Path) -> None:
    """Write one pack (with its index) of every object the commits ``tips`` reach into ``pack_dir``:
    ``git pack-objects --revs`` in the host's repository (its deltas reused), nothing else read or
    copied from the host's store. The directory is the agent's to be, made by the host a moment ago."""
    git(repo.top, "pack-objects", "--revs", "--quiet", "--delta-base-offset", str(pack_dir / "pack"),
        input="".join(f"{t}\n" for t in tips))


def ext_url(argv: list[str]) -> str:
    """A git ``ext::`` URL that runs ``argv`` as the remote end (``%`` and spaces escaped)."""
    return "ext::" + " ".join(a.replace("%", "%%").replace(" ", "% ") for a in argv)


def fetch_from(repo: Repo, remote_argv: list[str], wanted: dict[str, str], *, who: str = "the agent",
               timeout: float = 120, max_bytes: int = 0, max_blob: int = 0) -> None:
    """Fetch ``wanted`` (remote ref -> the host's ref) from a ``git upload-pack`` that ``remote_argv``
    runs (e.g. in a container), or raise and leave every host ref as it was.

    The remote end is untrusted. This side runs only in the host's repository, with the host's
    config; ``index-pack`` verifies every object received (``transfer.fsckObjects`` too) and
    ``protocol.ext.allow`` is opened for this one command only. Quarantined, like ``receive-pack``
    does for a push: the objects go to a temporary object directory (the host's store as its
    alternate) and the refs to temporary ones under ``INCOMING_PREFIX`` of a git dir of its own (never
    among the host's refs, where other git processes would see them); then the checks, and only
    when all pass are the objects moved into the host's store and the real refs set, in one
    ``update-ref`` transaction. Refused (``SyncError``, exit 8):
    more than ``max_bytes`` received (counted by the relay, which aborts the fetch), a ref that is
    not a commit, new objects inflating to more than ``max_bytes`` in all or a blob over
    ``max_blob`` (0: no limit); and a fetch that ran out of ``timeout`` (the remote end is expected to
    end on its own by then; ``KILL_GRACE`` later, git's whole process group is killed).
    """
    objects = repo.common_dir / "objects"
    incoming = f"{INCOMING_PREFIX}{secrets.token_hex(8)}/"
    staged = {remote: f"{incoming}{i}" for i, remote in enumerate(wanted)}
    quarantine = Path(tempfile.mkdtemp(prefix="tmp_objdir-sandbox-", dir=objects))
    (quarantine / "pack").mkdir()
    # The temporary refs live in a git dir of this sync's own, never among the host's refs: a ref there
    # names objects that only this quarantine holds, so any other git process in the repository (another
    # sync side by side, the user's `git log --all`) would fail on it with "bad object".
    scratch = Path(tempfile.mkdtemp(prefix="sandbox-incoming-", dir=repo.common_dir))
    for sub in ("refs/heads", "objects"):
        (scratch / sub).mkdir(parents=True)
    (scratch / "HEAD").write_text("ref: refs/heads/none\n")
    (scratch / "config").write_text("[core]\n\trepositoryformatversion = 0\n\tbare = true\n")
    env = {"GIT_DIR": str(scratch), "GIT_OBJECT_DIRECTORY": str(quarantine),
           "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects)}
    try:
        try:
            proc = git(repo.top, "-c", "protocol.ext.allow=always", "-c", "transfer.fsckObjects=true",
                       "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-auto-gc",
                       "--no-auto-maintenance", "--no-recurse-submodules", "--atomic", "--no-show-forced-updates",
                       ext_url([sys.executable, "-I", "-S", str(RELAY), str(max_bytes), "--", *remote_argv]),
                       *(f"+{remote}:{local}" for remote, local in staged.items()),
                       env=env, timeout=timeout + KILL_GRACE, check=False)
        except GitError as e:  # (out of time: git's whole process group was killed)
            raise _timed_out(who, timeout) from e
        if proc.returncode != 0:
            raise _fetch_failed(proc, who, timeout, max_bytes)
        found = _check_incoming(repo, env, staged, wanted, who, max_bytes, max_blob)
        _migrate(quarantine, objects)
        script = "".join(f"update {wanted[remote]} {found[local]}\n" for remote, local in staged.items())
        git(repo.top, "update-ref", "--stdin", input=f"start\n{script}prepare\ncommit\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(quarantine, ignore_errors=True)


def _fetch_failed(proc: subprocess.CompletedProcess[str], who: str, timeout: float, max_bytes: int) -> Exception:
    """The error for a failed fetch: the relay's refusal, the export's own timeout, else git's own."""
    if "sandbox relay: remote exited 124" in proc.stderr or "sandbox relay: remote exited 137" in proc.stderr:
        return _timed_out(who, timeout)
    if "sandbox relay: over " in proc.stderr:
        return _too_big(who, f"sends more than {human(max_bytes)}", "max_sync_bytes", max_bytes)
    args = list(proc.args)
    return GitError(args[args.index("-C"):], proc.returncode, proc.stderr)


def _timed_out(who: str, timeout: float) -> SyncError:
    return SyncError(f"{who}'s export timed out after {timeout:g}s (sync_timeout): nothing was taken",
                     setting="sync_timeout", hint="set SANDBOX_SYNC_TIMEOUT or sync_timeout in config.toml")


def _too_big(who: str, what: str, setting: str, limit: int) -> SyncError:
    return SyncError(f"{who}'s work {what}, over {setting} ({human(limit)}): nothing was taken", setting=setting,
                     hint=f"set SANDBOX_{setting.upper()} or {setting} in config.toml to take it")


def human(n: int) -> str:
    """``1.3 GiB``, ``5 MiB``, ``812 B``: a size for one line."""
    if n < 1024:
        return f"{n} B"
    size, unit = float(n), "B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            break
    return f"{size:.1f}".removesuffix(".0") + f" {unit}"


def _check_incoming(repo: Repo, env: dict[str, str], staged: dict[str, str], wanted: dict[str, str], who: str,
                    max_bytes: int, max_blob: int) -> dict[str, str]:
    """The quarantined refs (temporary ref -> object id) once they pass: each one a commit, and what
    the fetch brought (every object in the quarantine: new to the host, or sent again, or a thin
    pack's base) inflating to at most ``max_bytes`` in all, no blob over ``max_blob``. Counting the
    quarantine, not a ``rev-list`` walk, costs what was received, never the host's history."""
    incoming = next(iter(staged.values())).rsplit("/", 1)[0] + "/"
    out = git(repo.top, "for-each-ref", "--format=%(refname) %(objecttype) %(objectname)", incoming, env=env).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        ref, kind, sha = line.split(" ")
        found[ref] = sha
        if kind != "commit":
            remote = next(r for r, local in staged.items() if local == ref)
            raise SyncError(f"{who}'s export sent a {kind} for {wanted[remote]}, not a commit: refused, nothing was taken")
    if set(found) != set(staged.values()):
        raise SyncError(f"{who}'s export did not send every ref asked for: refused, nothing was taken")
    if not max_bytes and not max_blob:
        return found
    # what the fetch brought: every object of the quarantine alone (no alternates), headers only
    alone = {"GIT_OBJECT_DIRECTORY": env["GIT_OBJECT_DIRECTORY"], "GIT_ALTERNATE_OBJECT_DIRECTORIES": ""}
    brought = git(repo.top, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)", env=alone).stdout
    total, big, big_sha = _sizes(repo, "".join(f"{sha} {sha}\n" for sha in brought.split()), alone)
    if max_blob and big > max_blob:
        seen = {k: v for k, v in env.items() if k != "GIT_DIR"}  # (the host's refs: what it has already)
        named = git(repo.top, "rev-list", "--objects", *sorted(set(found.values())), "--not", "--all",
                    env=seen).stdout  # (refused: which file it is)
        path = next((ln.partition(" ")[2] for ln in named.splitlines() if ln.startswith(big_sha)), "")
        shown = "".join(ch for ch in path if ch.isprintable())[:80] or big_sha[:12]
        raise _too_big(who, f"holds a {human(big)} file ({shown})", "max_blob_bytes", max_blob)
    if max_bytes and total > max_bytes:
        raise _too_big(who, f"inflates to {human(total)}", "max_sync_bytes", max_bytes)
    return found


def largest_new_blob(repo: Repo, old: str, new: str) -> tuple[int, str]:
    """The largest file ``new``'s tree adds or changes over ``old``'s (size in bytes, path): what
    writing ``new`` over ``old`` into a checkout would write at most, read from object headers
    (``cat-file --batch-check``), nothing inflated. (0, "") when it adds none."""
    out = git(repo.top, "diff-tree", "-r", "-z", "--no-renames", "--diff-filter=d", old, new, "--").stdout
    fields = out.split("\0")
    lines = []
    for meta, path in zip(fields[0::2], fields[1::2]):
        parts = meta.split(" ")
        if len(parts) >= 4 and parts[1] != "160000" and parts[1] != "040000":
            lines.append(f"{parts[3]} {path}")
    if not lines:
        return 0, ""
    _, big, big_path = _sizes(repo, "".join(ln.replace("\n", " ") + "\n" for ln in lines))
    return big, big_path


def _sizes(repo: Repo, objects: str, env: dict[str, str] | None = None) -> tuple[int, int, str]:
    """For lines ``SHA [PATH]`` (what ``rev-list --objects`` prints): the sum of the objects' sizes,
    the largest blob's size and its path; from the objects' headers (``cat-file --batch-check``),
    nothing inflated."""
    out = git(repo.top, "cat-file", "--buffer", "--batch-check=%(objecttype) %(objectsize) %(rest)",
              input=objects, env=env).stdout
    total, big, big_path = 0, 0, ""
    for line in out.splitlines():
        kind, _, rest = line.partition(" ")
        size, _, path = rest.partition(" ")
        if not size.isdigit():
            continue  # ("SHA missing")
        total += int(size)
        if kind == "blob" and int(size) > big:
            big, big_path = int(size), path
    return total, big, big_path


def refuse_big_files(repo: Repo, old: str, new: str, max_blob: int, who: str) -> None:
    """``SyncError`` when ``new`` brings a file over ``max_blob`` bytes (0: no limit) over ``old``:
    merge, apply and restore never write one into a checkout."""
    if not max_blob:
        return
    big, path = largest_new_blob(repo, old, new)
    if big > max_blob:
        shown = "".join(ch for ch in path if ch.isprintable())[:80]
        raise SyncError(f"{who} would write a {human(big)} file ({shown}), over max_blob_bytes ({human(max_blob)}): "
                        "nothing was changed", setting="max_blob_bytes",
                        hint="set SANDBOX_MAX_BLOB_BYTES or max_blob_bytes in config.toml to take it")


def _migrate(quarantine: Path, objects: Path) -> None:
    """Move the quarantined objects into the host's store: loose objects, then packs (each
    ``.idx`` last, so a pack is never indexed before its data is there)."""
    for sub in sorted(p for p in quarantine.iterdir() if p.name != "pack" and p.is_dir()):
        (objects / sub.name).mkdir(exist_ok=True)
        for f in sub.iterdir():
            os.replace(f, objects / sub.name / f.name)
    packs = sorted((p for p in (quarantine / "pack").iterdir() if not p.name.startswith("tmp_")),
                   key=lambda p: (p.suffix == ".idx", p.name))
    for f in packs:
        os.replace(f, objects / "pack" / f.name)


def branch_create(repo: Repo, branch: str, base: str) -> None:
    git(repo.top, "update-ref", f"refs/heads/{branch}", base, "0" * 40)


def branch_delete(repo: Repo, branch: str) -> None:
    git(repo.top, "branch", "-D", "--", branch, check=False)


def head_of(repo: Repo, branch: str) -> str | None:
    proc = git(repo.top, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    return proc.stdout.strip() or None


def ref_delete(repo: Repo, ref: str) -> None:
    git(repo.top, "update-ref", "-d", ref, check=False)
