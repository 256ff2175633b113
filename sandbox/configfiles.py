"""Which settings files apply, and what they say: one function for every command.

Stdlib only (plus ``gitops`` for the repository): the ``Settings`` (``sandbox/config.py``,
pydantic-settings) take their file values from it, and ``sandbox trust``/``config show`` read the same
files in the same order.

Files, highest precedence first (flags and ``SANDBOX_*`` variables come before both):

1. ``<repo>/.sandbox.toml`` of the repository the command acts on: ``--repo`` when given,
   else the repository around the current directory — its main checkout, also from a worktree;
2. ``$XDG_CONFIG_HOME/sandbox/config.toml`` (the user file).

**Trust** (README "Security"): the repository's file is written by whoever commits to the
repository, agents included, so it is obeyed only as far as its content was approved — the way
direnv and mise treat theirs. Every setting is classified once, in ``REPO_TRUST``: ``safe`` keys
apply from any repository file; ``trust`` keys (host commands, host secrets, host paths, images,
runtimes, engines, networks, the model upstream, prices) and ``limit`` keys set looser than the
user's own value (a profile downgrade, a wider ``allow``, a resource or time limit raised) apply
only from a file whose bytes the user approved with ``sandbox trust``: their SHA-256 is recorded in
``$XDG_CONFIG_HOME/sandbox/trusted/`` under the file's path, and a changed file is untrusted
again. While an untrusted file sets such a key, every command that reads settings refuses
(``UntrustedSettings``, exit 2, one line naming the keys and ``sandbox trust``) before it does
anything; ``sandbox config show`` and ``sandbox trust`` read the file anyway (``lookup``). The
user's own file, the environment and flags are always the user's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sandbox.errors import NotFound, UsageError

REPO_FILE = ".sandbox.toml"
MAX_FILE_BYTES = 1 << 20  # a settings file, not a data file: larger is refused

Trust = Literal["safe", "trust", "limit"]
# Every setting of ``sandbox.config.Settings``, as a repository's file may set it (tests/test_trust.py
# checks that each field is here): "safe" applies from an untrusted file; "trust" needs an approved file;
# "limit" applies when not looser than the user's own value (``LIMIT_DEFAULTS`` without one), else needs
# trust. A key not listed (a new setting, a typo) needs trust.
REPO_TRUST: dict[str, Trust] = {
    "image": "trust",               # which image runs (and what it contains)
    "base_image": "trust",          # what `image build` builds from
    "data_dir": "trust",            # a host path: workspaces, state, locks
    "cache_dir": "trust",           # a host path
    "agent": "safe",                # a preset: which CLI runs inside the container
    "model": "safe",                # the model name the agent asks for
    "profile": "limit",             # default < isolated < locked: a downgrade needs trust
    "engine": "trust",              # where agents run (a swarm)
    "swarm_network": "trust",       # an engine network agents join
    "image_registry": "trust",      # where the image is pushed
    "agent_uid": "trust",           # the uid agents run as (0 is root)
    "agent_gid": "trust",
    "mock_model": "safe",           # the scripted model instead of the real one
    "ready_timeout": "safe",
    "sync_timeout": "safe",
    "claude_sdk_version": "trust",  # what goes into the image
    "secret_env": "trust",          # names host secrets handed to agents
    "memory": "limit",              # raised (or 0 = unlimited) needs trust
    "disk": "limit",                # the agent's disk, watched (sizes as memory)
    "max_sync_bytes": "limit",      # what one sync may bring to the host
    "max_blob_bytes": "limit",      # the largest file a sync takes and merge/apply/restore write
    "cpus": "limit",
    "pids_limit": "limit",
    "network": "trust",             # the network agents join
    "nofile": "limit",
    "runtime": "trust",             # the OCI runtime
    "ports": "trust",               # agent ports published on the host's 127.0.0.1
    "port_range": "safe",           # only which loopback port numbers spawn picks for them
    "allow": "limit",               # the isolated profile's allowlist: wider than the user's needs trust
    "model_upstream": "trust",      # where the model proxy sends the real key
    "egress_network": "trust",      # the network the proxies reach out through
    "run_id": "trust",              # which agents the commands see and clean up
    "retries": "safe",
    "retry_backoff": "safe",
    "max_agents": "limit",
    "queue_timeout": "safe",
    "max_time": "limit",
    "idle_timeout": "limit",
    "prices": "trust",              # lower prices would defeat the user's max_cost
    "max_cost": "limit",
    "notify": "trust",              # a command run on the host
    "notify_url": "trust",          # where the host sends agents' names, states and reasons
    "ntfy_url": "trust",            # likewise (the ntfy server of notify_url = "ntfy:TOPIC")
    "mcp": "trust",                 # what `sandbox mcp` may do for a coding agent (its policy)
    "setup": "trust",               # [setup]: `run` is code the repository chose, run before any agent decides
                                    # anything (with its keys); `copy` reads the user's secrets into the container
    "toolchain": "trust",           # [toolchain]: which image runs with the agent's keys, and (dockerfile, the
                                    # devcontainer's build) build steps the repository chose, run by the host's engine
    "objects": "trust",             # what of the host's object store an agent can read
    "trusted_filters": "trust",     # host git drivers run on agent content
    "server": "trust",              # how the user's commands run (the command server)
    "server_idle": "trust",
}
# The defaults of the "limit" keys (the user's value when the user file does not set one): Settings' own.
LIMIT_DEFAULTS: dict[str, Any] = {
    "profile": "default", "memory": "4g", "disk": "10g", "max_sync_bytes": "1g", "max_blob_bytes": "100m",
    "cpus": 2.0, "pids_limit": 1024, "nofile": 4096, "allow": [],
    "max_agents": None, "max_time": None, "idle_timeout": None, "max_cost": None,
}
_PROFILE_RANK = {"default": 0, "isolated": 1, "locked": 2}


class UntrustedSettings(UsageError):
    """The repository's settings file sets keys that need trust, and its content was not approved."""


@dataclass(frozen=True)
class RepoFile:
    """The repository's settings file as read once: its bytes' SHA-256, whether the user approved
    exactly them, and (untrusted) the keys it sets that were left out."""

    path: Path
    sha256: str
    trusted: bool
    ignored: tuple[str, ...]
    needs_trust: tuple[str, ...]  # the keys that apply only because it is trusted (or would)

    def refusal(self) -> UntrustedSettings:
        return UntrustedSettings(
            f"{self.path} is not trusted and sets {', '.join(self.ignored)}",
            hint=f"review it, then `sandbox trust --repo {self.path.parent}`; nothing was done")


@dataclass(frozen=True)
class Files:
    """What ``lookup`` found: the main checkout, the merged values that apply, the repository file."""

    top: Path | None
    values: dict[str, Any]
    repo_file: RepoFile | None

# Every setting a file may name (REPO_TRUST classifies each: tests/test_trust.py and tests/test_settings.py hold
# it equal to ``sandbox.config.Settings``' fields; a file's unknown key is refused where it is loaded).
KNOWN = frozenset(REPO_TRUST)


def user_config_file() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "sandbox" / "config.toml"


def trust_dir() -> Path:
    return user_config_file().parent / "trusted"


def repo_top(repo: Path | None) -> Path | None:
    """The main checkout of the repository a command acts on: ``repo`` (the ``--repo`` option; not
    a repository is an error), else the one around the current directory (None outside any)."""
    from sandbox.workspace import git as gitops

    return gitops.scope(repo, False)


def settings_files(top: Path | None) -> list[Path]:
    """The settings files that exist, highest precedence first, for the repository at ``top``."""
    candidates = ([top / REPO_FILE] if top is not None else []) + [user_config_file()]
    return [p for p in candidates if p.is_file()]


def _load(path: Path, *, follow: bool = True) -> tuple[bytes, dict[str, Any]]:
    """A settings file's bytes and values, keys lower-cased; read once (the hash and the values are of
    the same bytes), never blocking, capped; ``follow=False`` (the repository's file: its content is
    what is trusted) follows no link. Anything else is a ``UsageError``."""
    try:
        nofollow = 0 if follow else os.O_NOFOLLOW
        fd = os.open(path, os.O_RDONLY | nofollow | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UsageError(f"cannot read the settings file {path}: not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(MAX_FILE_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_FILE_BYTES:
            raise UsageError(f"cannot read the settings file {path}: over {MAX_FILE_BYTES} bytes")
        values = tomllib.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"cannot read the settings file {path}: {e}") from e
    values = {k.lower(): v for k, v in values.items()}
    for key in sorted(set(values) - KNOWN):  # a typo must not do nothing, silently
        import difflib

        near = difflib.get_close_matches(key, sorted(KNOWN), n=1)
        kind = "table" if isinstance(values[key], dict) else "setting"
        raise UsageError(f"{path}: unknown {kind} {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""),
                         hint="`sandbox config show` lists the settings; README \"Configuration\" says what each does")
    return data, values


def read_files(files: list[Path]) -> dict[str, Any]:
    """The files' values merged, ``files[0]`` winning; keys lower-cased (settings ignore case).

    A file that cannot be read or parsed, or that names a setting (or table) that does not exist, is a
    ``UsageError`` naming it (``_load``). No trust is applied here."""
    merged: dict[str, Any] = {}
    for path in reversed(files):
        merged.update(_load(path)[1])
    return merged


def _looser(key: str, value: Any, base: Any) -> bool:
    """Whether the repository's ``value`` of a "limit" key is looser than ``base`` (the user's).
    A value that cannot be compared counts as looser (it needs trust)."""
    if key == "profile":
        return _PROFILE_RANK.get(value, -1) < _PROFILE_RANK.get(base, 0)
    if key == "allow":
        entries = [value] if isinstance(value, str) else value
        have = {str(e).strip() for e in ([base] if isinstance(base, str) else base or [])}
        return not isinstance(entries, list) or not all(isinstance(e, str) and e.strip() in have for e in entries)
    mine, theirs = _bound(key, value), _bound(key, base)
    return mine is None or theirs is None or mine > theirs


_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def memory_bytes(text: str) -> int | None:
    """``4g`` -> 4294967296 (docker's units: b, k, m, g, optionally followed by b); None if malformed."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", text.strip().lower())
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def _bound(key: str, value: Any) -> float | None:
    """A limit as a number (no limit: infinity); None when it is not one."""
    if value is None:
        return float("inf")
    sizes = ("memory", "disk", "max_sync_bytes", "max_blob_bytes")
    if key in sizes:
        value = memory_bytes(str(value))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float("inf") if value <= 0 and key in (*sizes, "cpus", "pids_limit") else float(value)


def needs_trust(repo_values: dict[str, Any], user_values: dict[str, Any]) -> tuple[str, ...]:
    """The keys of a repository file that apply only from a trusted one (sorted)."""
    out = []
    for key, value in repo_values.items():
        kind = REPO_TRUST.get(key, "trust")
        if kind == "trust" or (kind == "limit" and _looser(key, value, user_values.get(key, LIMIT_DEFAULTS[key]))):
            out.append(key)
    return tuple(sorted(out))


def _record(path: Path) -> Path:
    """The trust record of a repository file: named by its absolute path's digest."""
    return trust_dir() / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")


def _trusted_hash(path: Path) -> str | None:
    """The SHA-256 the user approved for ``path``, if any (the user's own directory)."""
    try:
        record = json.loads(_record(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("path") != str(path) or not isinstance(record.get("sha256"), str):
        return None
    return str(record["sha256"])


def lookup(repo: Path | None) -> Files:
    """The files that apply for a command acting on ``repo``, with the trust rule applied: an
    untrusted repository file's keys that need trust are left out of ``values`` and named in
    ``repo_file.ignored``. Never refuses for trust (``file_values`` does)."""
    top = repo_top(repo)
    user_path = user_config_file()
    user_values = _load(user_path)[1] if user_path.exists() else {}
    merged = dict(user_values)
    found: RepoFile | None = None
    if top is not None and os.path.lexists(top / REPO_FILE):
        path = (top / REPO_FILE).absolute()
        data, repo_values = _load(path, follow=False)
        digest = hashlib.sha256(data).hexdigest()
        trusted = _trusted_hash(path) == digest
        wants = needs_trust(repo_values, user_values)
        ignored = () if trusted else wants
        found = RepoFile(path, digest, trusted, ignored, wants)
        merged.update({k: v for k, v in repo_values.items() if k not in ignored})
    return Files(top, merged, found)


def file_values(repo: Path | None) -> tuple[Path | None, dict[str, Any]]:
    """(the repository's main checkout or None, the merged values of its settings files); an
    untrusted repository file that sets keys needing trust is refused (``UntrustedSettings``)."""
    files = checked(repo)
    return files.top, files.values


def checked(repo: Path | None) -> Files:
    """``lookup``, refusing (``UntrustedSettings``, exit 2) when keys were left out for trust."""
    files = lookup(repo)
    if files.repo_file is not None and files.repo_file.ignored:
        raise files.repo_file.refusal()
    return files


# -- sandbox trust ------------------------------------------------------------------------------------
def _repo_file(repo: Path | None) -> Path:
    top = repo_top(repo)
    if top is None:
        raise UsageError("not in a git repository", hint="pass --repo PATH")
    path = (top / REPO_FILE).absolute()
    if not os.path.lexists(path):
        raise NotFound(f"no {REPO_FILE} in {top}")
    return path


def trust(repo: Path | None) -> RepoFile:
    """Approve the repository file's current content: its SHA-256 recorded in the user's config dir."""
    path = _repo_file(repo)
    data, values = _load(path, follow=False)
    user_path = user_config_file()
    digest = hashlib.sha256(data).hexdigest()
    record = _record(path)
    record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = record.with_name(f".{record.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"path": str(path), "sha256": digest}) + "\n")
    os.replace(tmp, record)
    user_values = _load(user_path)[1] if user_path.exists() else {}
    return RepoFile(path, digest, True, (), needs_trust(values, user_values))


def revoke(repo: Path | None) -> bool:
    """Forget the approval of the repository file (True when there was one)."""
    top = repo_top(repo)
    if top is None:
        raise UsageError("not in a git repository", hint="pass --repo PATH")
    try:
        _record((top / REPO_FILE).absolute()).unlink()
    except FileNotFoundError:
        return False
    return True


def status(repo: Path | None) -> RepoFile:
    """The repository file as the commands see it now (``lookup``'s ``repo_file``)."""
    path = _repo_file(repo)
    found = lookup(repo).repo_file
    assert found is not None and found.path == path
    return found
