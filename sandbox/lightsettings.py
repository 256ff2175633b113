"""The settings of the commands that find and talk to agents, read without pydantic.

**Stdlib only** (+ ``configfiles``). ``ManagerSettings`` is what ``SandboxManager`` reads when it
lists, gets, execs in or types into agents (not when it spawns): the full ``sandbox.config.Settings``
satisfies it, and so does ``LightSettings`` here, a frozen dataclass of exactly those values.

``read(repo, **flags)`` resolves them from the same sources in the same order as
``config.load_settings`` — flags, then ``SANDBOX_*`` environment variables, then the files
``sandbox.configfiles`` finds (``<repo>/.sandbox.toml``, the user file) — and converts only values
whose meaning is plain (a string, a decimal number, a non-negative integer: ``FIELDS``). Every other
case is a typed ``Refusal`` returned by ``light()`` (never an exception), and ``read`` then builds the
full ``Settings``, which converts or rejects the value exactly as it does for every other command.
``SANDBOX_NO_FAST=1`` makes every command take the full ``Settings`` (to compare the two).

The settings these commands do not read are not looked at: a bad ``memory`` in a settings file is
reported by the commands that use it (``spawn``, ``config show``…), not by ``ls``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sandbox import configfiles

if TYPE_CHECKING:
    from sandbox.config import Settings

ENV_PREFIX = "SANDBOX_"
NO_FAST = "SANDBOX_NO_FAST"
# A uid with no account on typical hosts, used for the agent when the invoking user is root.
ROOT_FALLBACK_UID = 61000
DEFAULT_IMAGE = "sandbox-agent:latest"
DEFAULT_READY_TIMEOUT = 90.0
DEFAULT_SYNC_TIMEOUT = 120.0


def xdg_dir(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / default


def default_data_dir() -> Path:
    return xdg_dir("XDG_DATA_HOME", ".local/share") / "sandbox"


_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def memory_bytes(text: str) -> int | None:
    """``4g`` -> 4294967296 (docker's units: b, k, m, g, optionally followed by b); None if malformed."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", text.strip().lower())
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def agent_ids(agent_uid: int | None, agent_gid: int | None) -> tuple[int, int]:
    """The uid:gid the agent runs as: the invoking user's (or the settings'), never root."""
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        sudo_uid = int(os.environ.get("SUDO_UID", "0") or 0)
        uid = sudo_uid or ROOT_FALLBACK_UID
        gid = int(os.environ.get("SUDO_GID", "0") or 0) or uid
    if agent_uid is not None:
        uid = agent_uid
    if agent_gid is not None:
        gid = agent_gid
    return uid, gid


class ManagerSettings(Protocol):
    """What ``SandboxManager`` reads to find, list, exec in and type into agents (and bring their work over)."""

    @property
    def run_id(self) -> str | None: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def image(self) -> str: ...
    @property
    def ready_timeout(self) -> float: ...
    @property
    def sync_timeout(self) -> float: ...
    @property
    def engine(self) -> str: ...
    @property
    def prices(self) -> dict[str, dict[str, float]]: ...
    @property
    def notify(self) -> str | None: ...
    def uid_gid(self) -> tuple[int, int]: ...
    def price_table(self) -> list[dict[str, dict[str, float]]]: ...


@dataclass(frozen=True)
class LightSettings:
    """``ManagerSettings`` resolved here (the defaults are the full ``Settings``' own)."""

    run_id: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    image: str = DEFAULT_IMAGE
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    sync_timeout: float = DEFAULT_SYNC_TIMEOUT
    agent_uid: int | None = None
    agent_gid: int | None = None
    engine: str = "local"
    prices: dict[str, dict[str, float]] = field(default_factory=dict)
    notify: str | None = None

    def uid_gid(self) -> tuple[int, int]:
        return agent_ids(self.agent_uid, self.agent_gid)

    def price_table(self) -> list[dict[str, dict[str, float]]]:
        from sandbox import usage

        return usage.merge_prices(self.prices)


@dataclass(frozen=True)
class Refusal:
    """Why the light reader leaves the settings to the full ``Settings`` (a value only pydantic can judge)."""

    source: str  # "flag", "env", "file"
    key: str
    why: str


# How each value is converted: "str" any string; "path" a non-empty string; "float" a finite
# number (in the environment: digits with an optional decimal part); "positive_float" the same,
# above 0; "uid" a non-negative integer (environment: digits); "prices" a table of price tables
# (``sandbox.usage.check_prices``; from the environment: always a Refusal, JSON is pydantic's).
# Anything else is a Refusal.
Kind = Literal["str", "path", "float", "positive_float", "uid", "engine", "prices"]
FIELDS: dict[str, Kind] = {
    "run_id": "str",
    "data_dir": "path",
    "image": "str",
    "ready_timeout": "float",
    "sync_timeout": "positive_float",
    "agent_uid": "uid",
    "agent_gid": "uid",
    "engine": "engine",
    "prices": "prices",
    "notify": "str",
}
ENGINES = ("local", "swarm")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_DIGITS = re.compile(r"[0-9]+")


def convert(kind: Kind, value: object, from_env: bool) -> Any:
    """The value as ``Settings`` would have it, or None when the light reader cannot tell."""
    if kind == "prices":
        if from_env:
            return None
        from sandbox import usage

        try:
            return usage.check_prices(value)
        except ValueError:
            return None
    if from_env:  # the environment holds strings only
        if not isinstance(value, str):
            return None
        if kind in ("float", "positive_float"):
            value = float(value) if _DECIMAL.fullmatch(value) else None
        elif kind == "uid":
            value = int(value) if _DIGITS.fullmatch(value) else None
    if kind == "str":
        return value if isinstance(value, str) else None
    if kind == "engine":  # anything else is for pydantic to refuse, in one line
        return value if value in ENGINES else None
    if kind == "path":
        return Path(value) if isinstance(value, str) and value else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if kind == "uid":
        return value if isinstance(value, int) and value >= 0 else None
    number = float(value)
    if not math.isfinite(number) or (kind == "positive_float" and number <= 0):
        return None
    return number


def light(files: Mapping[str, Any], flags: Mapping[str, Any],
          environ: Mapping[str, str]) -> LightSettings | Refusal:
    """``LightSettings`` from flags (None = not given), the environment and the merged file values
    (``configfiles.read_files``), highest first; or why not."""
    if environ.get(NO_FAST):
        return Refusal("env", NO_FAST, "set: the full settings for every command")
    env: dict[str, str] = {}
    for key, value in environ.items():
        name = key.lower()
        if not name.startswith(ENV_PREFIX.lower()) or name[len(ENV_PREFIX):] not in FIELDS:
            continue
        if name[len(ENV_PREFIX):] in env:  # which one pydantic takes depends on the order: let it say
            return Refusal("env", key, "set more than once (in different cases)")
        env[name[len(ENV_PREFIX):]] = value
    values: dict[str, Any] = {}
    for key, value in flags.items():
        if value is None:
            continue
        if key not in FIELDS:
            return Refusal("flag", key, "not a setting the light reader reads")
        values[key] = value
    for name, kind in FIELDS.items():
        source, raw = ("flag", values[name]) if name in values else \
            ("env", env[name]) if name in env else ("file", files[name]) if name in files else (None, None)
        if source is None:
            continue
        converted = convert(kind, raw, from_env=source == "env")
        if converted is None:
            return Refusal(source, name, f"{raw!r} is not a plain {kind}")
        values[name] = converted
    return LightSettings(**values)


def read(repo: Path | None, **flags: Any) -> tuple[Path | None, ManagerSettings]:
    """(the repository's main checkout or None, its settings): ``LightSettings`` when ``light``
    can tell them, else the full ``Settings`` (``config.settings_from``) from the same file values."""
    top, files = configfiles.file_values(repo)
    got = light(files, flags, os.environ)
    if isinstance(got, LightSettings):
        return top, got
    from sandbox.config import settings_from

    full: Settings = settings_from(files, flags)
    return top, full


# -- the full settings, validated once: `spawn` without pydantic's import on every run ---------------
SNAPSHOTS_KEPT = 32
_PATHS = ("data_dir", "cache_dir")


class Snapshot:
    """The full ``Settings`` as pydantic validated them from the very same sources (flags, the
    ``SANDBOX_*`` environment, the files' values, the ``XDG_*``/``HOME`` defaults), read back from a
    host-only cache file: the same attributes and methods, none of pydantic's import (~115 ms)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update({k: (Path(v) if k in _PATHS and v is not None else v) for k, v in values.items()})

    def model_dump(self) -> dict[str, Any]:
        return dict(vars(self))

    def price_table(self) -> list[dict[str, dict[str, float]]]:
        from sandbox import usage

        return usage.merge_prices(self.prices)  # type: ignore[attr-defined]

    def memory_limit(self) -> int:
        return memory_bytes(self.memory) or 0  # type: ignore[attr-defined]

    def uid_gid(self) -> tuple[int, int]:
        return agent_ids(self.agent_uid, self.agent_gid)  # type: ignore[attr-defined]


def _snapshot_key(files: Mapping[str, Any], flags: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    """A digest of everything ``Settings`` is built from; None when a value cannot be written down."""
    import hashlib
    import json

    env = sorted((k, v) for k, v in environ.items()
                 if k.lower().startswith(ENV_PREFIX.lower()) or k in ("HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"))
    here = Path(__file__).parent
    code = [(st.st_mtime_ns, st.st_size) for st in (os.stat(here / "config.py"), os.stat(here / "lightsettings.py"))]
    try:
        text = json.dumps([files, {k: v for k, v in flags.items() if v is not None}, env, code], sort_keys=True,
                          default=str)
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def full(repo: Path | None, **flags: Any) -> tuple[Path | None, Any]:
    """(the repository's main checkout or None, the full settings): a ``Snapshot`` when pydantic
    validated these very inputs before (``$XDG_CACHE_HOME/sandbox/settings/KEY.json``), else
    ``config.settings_from`` (which raises on a bad value, as always) and the snapshot is written."""
    import json

    top, files = configfiles.file_values(repo)
    key = None if os.environ.get(NO_FAST) else _snapshot_key(files, flags, os.environ)
    cache = xdg_dir("XDG_CACHE_HOME", ".cache") / "sandbox" / "settings"
    if key is not None:
        try:
            return top, Snapshot(json.loads((cache / f"{key}.json").read_text()))
        except (OSError, ValueError, TypeError):
            pass
    from sandbox.config import settings_from

    settings = settings_from(files, flags)
    if key is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cache / f".{key}.{os.getpid()}"
            tmp.write_text(json.dumps(settings.model_dump(mode="json")))
            os.replace(tmp, cache / f"{key}.json")
            kept = sorted(cache.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
            for old in kept[SNAPSHOTS_KEPT:]:
                old.unlink(missing_ok=True)
        except OSError:
            pass
    return top, settings
