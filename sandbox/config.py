"""Settings: one typed object, built once per command and passed down.

Precedence, highest first: command-line flags (passed as keyword arguments), ``SANDBOX_*``
environment variables, the repository file ``<repo>/.sandbox.toml``, the user file
``$XDG_CONFIG_HOME/sandbox/config.toml``, then the defaults below. Which files apply and what they
say comes from ``sandbox.configfiles``. Every command builds them per request (``load_settings``):
in the command server too, from the request's environment, cwd and files.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from sandbox import configfiles
from sandbox.configfiles import memory_bytes as memory_bytes, user_config_file as user_config_file
from sandbox.errors import UsageError

# A uid with no account on typical hosts, used for the agent when the invoking user is root.
ROOT_FALLBACK_UID = 61000
DEFAULT_IMAGE = "sandbox-agent:latest"
DEFAULT_READY_TIMEOUT = 90.0
DEFAULT_SYNC_TIMEOUT = 120.0
DEFAULT_MAX_SYNC_BYTES = "1g"
DEFAULT_MAX_BLOB_BYTES = "100m"


def xdg_dir(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / default


def default_data_dir() -> Path:
    return xdg_dir("XDG_DATA_HOME", ".local/share") / "sandbox"


# The agent's uid for a host user U is AGENT_UID_OFFSET + U (and its gid so from U's gid): never the user's
# own, so git's ownership check refuses the agent's repositories for the user (README "Security").
AGENT_UID_OFFSET = 100000


def agent_ids(agent_uid: int | None, agent_gid: int | None) -> tuple[int, int]:
    """The uid:gid the agent runs as (or the settings'): never root, never the invoking user's own —
    ``AGENT_UID_OFFSET`` + the user's uid:gid (under sudo: the sudoing user's); plain root:
    ``ROOT_FALLBACK_UID``."""
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        sudo_uid = int(os.environ.get("SUDO_UID", "0") or 0)
        sudo_gid = int(os.environ.get("SUDO_GID", "0") or 0) or sudo_uid
        uid, gid = (AGENT_UID_OFFSET + sudo_uid, AGENT_UID_OFFSET + sudo_gid) if sudo_uid else \
            (ROOT_FALLBACK_UID, ROOT_FALLBACK_UID)
    else:
        uid, gid = AGENT_UID_OFFSET + uid, AGENT_UID_OFFSET + gid
    if agent_uid is not None:
        uid = agent_uid
    if agent_gid is not None:
        gid = agent_gid
    return uid, gid


# Environment variables forwarded to the agent as secrets (never as container env).
DEFAULT_SECRET_ENV = [
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "OPENAI_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "OPENROUTER_API_KEY",
]


class McpPolicy(BaseModel):
    """What `sandbox mcp` may do for the coding agent that calls it (the ``[mcp]`` table; README "From Claude Code")."""

    model_config = ConfigDict(extra="forbid")

    max_agents: int = Field(default=4, ge=1)       # live agents (not exited/failed/stopped) of the repository
    profiles: list[Literal["default", "locked", "isolated"]] = Field(default_factory=lambda: ["isolated"], min_length=1)
    max_cost: float | None = Field(default=5.0, gt=0)  # USD per agent at most (None: no budget)
    allow_merge: bool = False                      # it proposes; you merge
    allow_remove_with_work: bool = False           # rm --force of an agent whose work is not saved


MAX_COPIES = 64  # files of `[setup] copy`


def check_copy_path(value: Any) -> str:
    """A ``copy`` entry as written: a relative path inside the checkout, normalised (``a//b`` -> ``a/b``);
    a ``ValueError`` line for an absolute path, ``..``, ``.git``, an empty or odd one (the setting's check)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"setup.copy takes paths relative to the repository, not {value!r}")
    if any(c in value for c in "\0\n\r"):
        raise ValueError(f"setup.copy: {value!r} has a control character")
    if value.startswith("/") or value.startswith("~"):
        raise ValueError(f"setup.copy: {value!r} is absolute (paths are relative to the repository's top)")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"setup.copy: {value!r} leaves the repository (..)")
    if not parts:
        raise ValueError(f"setup.copy: {value!r} names the repository itself, not a file")
    if parts[0] == ".git" or ".git" in parts:
        raise ValueError(f"setup.copy: {value!r} is inside .git")
    return "/".join(parts)


class SetupSettings(BaseModel):
    """The ``[setup]`` table (README "Setup"): a command run in the agent's container, as the agent, in its
    workspace, before the agent starts; files of the main checkout copied into the workspace."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)  # ("copy" shown as "copy")

    run: str | None = None                          # a shell command (``/bin/sh -c``), e.g. "npm ci"
    rerun: bool = False                             # run it again at each start of the container (else once)
    timeout: float = Field(default=900.0, gt=0)     # seconds: past it the setup is killed (the spawn fails)
    copy_: list[str] = Field(default_factory=list, alias="copy")  # gitignored files, relative to the checkout
    allow_copy: bool = False                        # `spawn --allow-copy`: copy even into an isolated agent

    @field_validator("run", mode="before")
    @classmethod
    def _check_run(cls, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"setup.run is a shell command (a string), not {value!r}")
        return value if value.strip() else None

    @field_validator("copy_", mode="before")
    @classmethod
    def _check_copy(cls, value: Any) -> list[str]:
        entries = [value] if isinstance(value, str) else list(value or [])
        if len(entries) > MAX_COPIES:
            raise ValueError(f"setup.copy takes at most {MAX_COPIES} files, not {len(entries)}")
        return [check_copy_path(e) for e in entries]


class ToolchainSettings(BaseModel):
    """The ``[toolchain]`` table (README "Toolchain"): the repository's own image, with the agent layer on top
    (``sandbox/image.py``'s ``toolchain_of``). Neither key set: ``.devcontainer/devcontainer.json``'s choice."""

    model_config = ConfigDict(extra="forbid")

    base: str | None = None        # an image on the engine (never pulled), e.g. "node:22-bookworm"
    dockerfile: str | None = None  # a Dockerfile of the checkout (relative path), built first; its directory is the context

    @field_validator("base", mode="before")
    @classmethod
    def _check_base(cls, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}", value.strip()):
            raise ValueError(f"toolchain.base is an image reference like node:22-bookworm, not {value!r}")
        return value.strip()

    @field_validator("dockerfile", mode="before")
    @classmethod
    def _check_dockerfile(cls, value: Any) -> str | None:
        if value is None:
            return None
        if (not isinstance(value, str) or not value.strip() or "\0" in value or value.startswith("/")
                or ".." in Path(value).parts):
            raise ValueError(f"toolchain.dockerfile is a path relative to the checkout (no ..), not {value!r}")
        return value.strip()

    @model_validator(mode="after")
    def _one_source(self) -> "ToolchainSettings":
        if self.base is not None and self.dockerfile is not None:
            raise ValueError("toolchain takes base or dockerfile, not both")
        return self


MAX_PORTS = 16  # published ports per agent


def _port(text: str, v: Any) -> int:
    if isinstance(v, bool) or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"a port is a number from 1 to 65535 (or HOST:CONTAINER), not {v!r}")
    return int(text)


def check_ports(values: list[Any]) -> list[int | str]:
    """Container ports to publish: TCP port numbers 1-65535 (``3000``: a free host port; ``"8080:3000"``:
    host port 8080), each container port once (a later entry wins), each host port once, at most
    ``MAX_PORTS``; one ``ValueError`` line otherwise (the setting ``ports``, ``spawn --port``)."""
    chosen: dict[int, int] = {}
    for v in values:
        text = str(v).strip()
        host_text, colon, container_text = text.rpartition(":")
        container = _port(container_text, v)
        chosen.pop(container, None)
        chosen[container] = _port(host_text, v) if colon else 0
    hosts = [h for h in chosen.values() if h]
    if len(hosts) != len(set(hosts)):
        raise ValueError(f"a host port is published once: {sorted(h for h in hosts if hosts.count(h) > 1)[0]}")
    if len(chosen) > MAX_PORTS:
        raise ValueError(f"at most {MAX_PORTS} ports per agent, not {len(chosen)}")
    return [f"{h}:{c}" if h else c for c, h in chosen.items()]


def port_pairs(values: list[Any]) -> tuple[tuple[int, int], ...]:
    """``ports`` as (container port, host port or 0: the engine's pick)."""
    pairs = []
    for v in check_ports(list(values)):
        host, _, container = str(v).rpartition(":")
        pairs.append((int(container), int(host) if host else 0))
    return tuple(pairs)


def check_port_range(value: Any) -> str:
    """``port_range = "49200-49299"``: where spawn picks host ports for ``ports`` without one ("": the
    engine's pick)."""
    text = str(value or "").strip()
    if not text:
        return ""
    low, dash, high = text.partition("-")
    if not dash or not low.strip().isdigit() or not high.strip().isdigit() \
            or not 1024 <= int(low) <= int(high) <= 65535:
        raise ValueError(f"port_range is LOW-HIGH within 1024-65535, not {text!r}")
    return f"{int(low)}-{int(high)}"


class Settings(BaseSettings):
    # Each field is classified for a repository's own `.sandbox.toml` in `configfiles.REPO_TRUST` (safe from
    # an untrusted file, or only from one the user trusted); a new field goes there too (tests/test_trust.py).
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore", env_nested_delimiter="__")

    image: str = DEFAULT_IMAGE
    base_image: str = "sandbox-base:bookworm"
    data_dir: Path = Field(default_factory=default_data_dir)
    cache_dir: Path = Field(default_factory=lambda: xdg_dir("XDG_CACHE_HOME", ".cache") / "sandbox")
    agent: str = "claude"
    model: str | None = None
    profile: Literal["default", "locked", "isolated"] = "default"
    engine: Literal["local", "swarm"] = "local"    # where agents run: this engine, or the swarm it manages
    swarm_network: str = "sandbox-swarm"           # swarm: the overlay network agents' services join (made on demand)
    image_registry: str | None = None              # swarm: push the agent image here for the nodes (else save/load)
    agent_uid: int | None = None
    agent_gid: int | None = None
    mock_model: Literal["auto", "on", "off"] = "auto"
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    sync_timeout: float = Field(default=DEFAULT_SYNC_TIMEOUT, gt=0)  # bringing an agent's work over (one fetch), seconds
    claude_sdk_version: str = "0.2.189"
    secret_env: list[str] = Field(default_factory=lambda: list(DEFAULT_SECRET_ENV))
    # Per-agent limits (README "Security"): enough for a coding agent that builds and tests, not the host.
    memory: str = "4g"                             # bytes or <n>[b|k|m|g]; "0" = unlimited
    disk: str = "10g"                              # the agent's workspace + git + state dir, watched; "0" = unlimited
    # What one sync may bring to the host (README "Security"): received bytes (counted on the transport)
    # and what the new objects inflate to; and the largest file merge/apply/restore write. "0" = unlimited.
    max_sync_bytes: str = DEFAULT_MAX_SYNC_BYTES
    max_blob_bytes: str = DEFAULT_MAX_BLOB_BYTES
    cpus: float = Field(default=2.0, ge=0)         # 0 = unlimited
    pids_limit: int = 1024
    # What of the repository's object store the agent sees (README "Security"): "shared" borrows the host's
    # whole store read-only (instant; stashes, other agents' snapshots and backups included); "reachable" gives it
    # a pack of what its base and the host's branches reach, nothing else. The isolated profile is always reachable.
    objects: Literal["shared", "reachable"] = "shared"
    network: str = "sandbox-net"                   # default profile: a bridge of our own, no agent-to-agent traffic
    nofile: int = Field(default=4096, ge=64)       # open files per process (soft = hard limit)
    runtime: str | None = None                     # an OCI runtime the engine knows (e.g. runsc); spawn fails closed
    ports: list[int | str] = Field(default_factory=list)  # container ports published on 127.0.0.1 ("H:C": host port H) (README "Ports")
    port_range: str = ""                           # "LOW-HIGH": host ports spawn picks for `ports` ("": the engine picks)
    # Isolated profile (README "Profiles"): the model through a key-injecting proxy, the allowlist through another
    allow: list[str] = Field(default_factory=list)  # hosts, *.domains, host:port, presets (pypi npm crates debian github)
    model_upstream: str | None = None              # the model API (default: $ANTHROPIC_BASE_URL, else Anthropic's)
    egress_network: str | None = None              # the bridge the proxies reach out through (default: `network`)
    run_id: str | None = None
    # Supervision (see README "States"): restarts of a failing agent, capacity, time limits.
    retries: int = Field(default=3, ge=0)          # restarts after a non-zero exit; then `failed`
    retry_backoff: float = Field(default=0.5, gt=0)  # first restart delay (s), doubled each time, jittered
    max_agents: int | None = Field(default=None, ge=1)  # starting/busy/waiting agents at once
    queue_timeout: float = 3600.0                  # how long `spawn --queue` waits for a free slot
    max_time: float | None = None                  # per-agent wall-clock limit (s)
    idle_timeout: float | None = None              # per-agent idle limit (s)
    # Cost (README "Resources and cost"): USD per million tokens per model pattern, over sandbox.usage.PRICES
    prices: dict[str, dict[str, float]] = Field(default_factory=dict)
    max_cost: float | None = Field(default=None, gt=0)  # per-agent budget (USD): stopped, work kept
    notify: str | None = None                      # a command run when an agent starts waiting (README "Notifications")
    notify_url: str | None = None                  # a webhook POSTed when an agent starts waiting or ends, or "ntfy:TOPIC" (README "Mission control")
    ntfy_url: str = "https://ntfy.sh"              # the ntfy server of notify_url = "ntfy:TOPIC"
    mcp: McpPolicy = Field(default_factory=McpPolicy)  # `sandbox mcp`'s policy (the [mcp] table)
    setup: SetupSettings = Field(default_factory=SetupSettings)  # the [setup] table: run, rerun, copy (README "Setup")
    toolchain: ToolchainSettings | None = None     # the [toolchain] table: the repository's own image (README "Toolchain")
    # The host's git drivers (filter/diff/merge, and "working-tree-encoding") allowed on agent content (README "Security")
    trusted_filters: list[str] = Field(default_factory=list)  # e.g. ["lfs"]
    # The per-user command server (README "The command server"): read from the environment and the user file
    server: bool = True                            # false: every command runs in its own process (SANDBOX_SERVER=0)
    server_idle: float = Field(default=600.0, gt=0)  # the server exits after this long (s) with no command

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        values = _FILE_VALUES.get()
        if values is None:  # built directly, not through load_settings: the current directory's files
            values = configfiles.file_values(None)[1]
        return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=values))

    @field_validator("memory", "disk", "max_sync_bytes", "max_blob_bytes", mode="before")
    @classmethod
    def _check_size(cls, value: Any, info: ValidationInfo) -> str:
        text = "0" if value is None else str(value).strip()
        if memory_bytes(text) is None:
            raise ValueError(f"{info.field_name} must be a size like 4g, 512m or 0 (unlimited), not {text!r}")
        return text

    @field_validator("notify_url", mode="before")
    @classmethod
    def _check_notify_url(cls, value: Any) -> str | None:
        from sandbox import notify

        return notify.check_url(str(value)) if value not in (None, "") else None

    @field_validator("ntfy_url", mode="before")
    @classmethod
    def _check_ntfy_url(cls, value: Any) -> str:
        from sandbox import notify

        url = notify.check_url(str(value))
        if url.startswith(notify.NTFY):
            raise ValueError("ntfy_url must be an http:// or https:// URL (the ntfy server)")
        return url.rstrip("/")

    @field_validator("ports", mode="before")
    @classmethod
    def _check_ports(cls, value: Any) -> list[int | str]:
        return check_ports([value] if isinstance(value, (int, str)) else list(value or []))

    @field_validator("port_range", mode="before")
    @classmethod
    def _check_port_range(cls, value: Any) -> str:
        return check_port_range(value)

    @field_validator("allow", mode="before")
    @classmethod
    def _check_allow(cls, value: Any) -> list[str]:
        from sandbox import proxy

        entries = [value] if isinstance(value, str) else list(value or [])
        proxy.parse_allow(entries)  # ProxyConfigError is a ValueError: one line through UsageError
        return [str(e).strip() for e in entries]

    @field_validator("prices", mode="before")
    @classmethod
    def _check_prices(cls, value: Any) -> dict[str, dict[str, float]]:
        from sandbox import usage

        return usage.check_prices(value if value is not None else {})

    @field_validator("trusted_filters", mode="before")
    @classmethod
    def _check_trusted(cls, value: Any) -> list[str]:
        names = [value] if isinstance(value, str) else list(value or [])
        for name in names:
            if not isinstance(name, str) or not name.strip() or any(c in name for c in "=\n\0"):
                raise ValueError(f"trusted_filters takes driver names like lfs, not {name!r}")
        return [name.strip() for name in names]

    @field_validator("model_upstream")
    @classmethod
    def _check_upstream(cls, value: str | None) -> str | None:
        from sandbox import proxy

        if value is not None:
            proxy.parse_upstream(value)
        return value

    @field_validator("runtime")
    @classmethod
    def _check_runtime(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", value):
            raise ValueError(f"runtime must be an OCI runtime name like runsc, not {value!r}")
        return value or None

    def price_table(self) -> list[dict[str, dict[str, float]]]:
        """``sandbox.usage.PRICES`` with the ``prices`` setting over it."""
        from sandbox import usage

        return usage.merge_prices(self.prices)

    def memory_limit(self) -> int:
        """The memory limit in bytes; 0 = unlimited."""
        return memory_bytes(self.memory) or 0

    def uid_gid(self) -> tuple[int, int]:
        """The uid:gid the agent runs as: the invoking user's, never root."""
        return agent_ids(self.agent_uid, self.agent_gid)

    def masked(self) -> dict[str, Any]:
        """Effective settings for display, plus which secrets are set (masked)."""
        out: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.model_dump().items()}
        out["secrets"] = {name: _mask(os.environ[name]) for name in self.secret_env if os.environ.get(name)}
        return out


# The settings files' values for the Settings being built (pydantic calls the classmethod above).
_FILE_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("_FILE_VALUES", default=None)


def _mask(value: str) -> str:
    return "****" + value[-4:] if len(value) > 12 else "****"


def load_settings(repo: Path | None = None, **flags: Any) -> Settings:
    """Build the settings for a command acting on ``repo`` (its ``--repo`` option; None: the
    repository around the current directory, if any); flags that are None are left to the other
    sources. A bad value from any source is a ``UsageError`` (one line)."""
    return settings_from(configfiles.file_values(repo)[1], flags)


def show(repo: Path | None = None) -> dict[str, Any]:
    """What ``sandbox config show`` prints: the effective settings (secrets masked) and the repository
    file's trust (``repo_file``: path, sha256, trusted, the keys left out, the keys that need trust).
    An untrusted file is not refused here: its trust-only keys are shown as ignored."""
    files = configfiles.lookup(repo)
    out = settings_from(files.values, {}).masked()
    f = files.repo_file
    out["repo_file"] = None if f is None else {"path": str(f.path), "sha256": f.sha256, "trusted": f.trusted,
                                              "ignored": list(f.ignored), "needs_trust": list(f.needs_trust)}
    return out


def settings_from(files: dict[str, Any], flags: dict[str, Any]) -> Settings:
    """``Settings`` from flags (None = not given), the environment and these merged file values
    (``configfiles.file_values``); a bad value is a ``UsageError``."""
    token = _FILE_VALUES.set(files)
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as e:
        raise UsageError("invalid setting " + "; ".join(_describe(err) for err in e.errors())) from e
    finally:
        _FILE_VALUES.reset(token)


def with_spawn_flags(settings: Settings, *, ports: list[str] | None = None, allow: list[str] | None = None,
                     allow_copy: bool = False) -> Settings:
    """``settings`` with what ``spawn``'s additive flags add to the other sources: ``--port`` to
    ``ports``, ``--allow`` to ``allow`` (the isolated profile's only), ``--allow-copy`` to
    ``setup.allow_copy``. A bad value is a ``UsageError`` naming the flag."""
    values: dict[str, Any] = {}
    if ports:
        try:
            values["ports"] = check_ports([*settings.ports, *ports])
        except ValueError as e:
            raise UsageError(f"--port: {e}") from None
    if allow:
        if settings.profile != "isolated":
            raise UsageError("--allow is for the isolated profile (the others do not filter the network)",
                             hint="add --profile isolated")
        values["allow"] = [*settings.allow, *allow]
    if allow_copy:
        values["setup"] = {**settings.setup.model_dump(), "allow_copy": True}
    return settings_from({}, {**settings.model_dump(), **values}) if values else settings


def _describe(err: Any) -> str:
    """``retries=-1: Input should be greater than or equal to 0`` (the value, never a secret: settings hold none)."""
    where = ".".join(str(part) for part in err.get("loc", ())) or "?"
    return f"{where}={err.get('input')!r}: {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}"
