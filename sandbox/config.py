"""Settings: one typed object, built once per command and passed down.

Precedence, highest first: command-line flags (passed as keyword arguments), ``SANDBOX_*``
environment variables, the repository file ``<repo>/.sandbox.toml``, the user file
``$XDG_CONFIG_HOME/sandbox/config.toml``, then the defaults below. Which files apply and what they
say comes from ``sandbox.configfiles``. The commands that only find and talk to agents (``ls``,
``logs``, ``send``…) read their few settings with ``sandbox.lightsettings`` from the same sources,
and come here only when a value needs pydantic's judgement (``settings_from``).
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from sandbox import configfiles
from sandbox.configfiles import user_config_file as user_config_file
from sandbox.errors import UsageError
from sandbox.lightsettings import (
    DEFAULT_IMAGE,
    DEFAULT_READY_TIMEOUT,
    DEFAULT_SYNC_TIMEOUT,
    ROOT_FALLBACK_UID as ROOT_FALLBACK_UID,
    agent_ids,
    default_data_dir,
    memory_bytes,
    xdg_dir,
)

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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore")

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
    cpus: float = Field(default=2.0, ge=0)         # 0 = unlimited
    pids_limit: int = 1024
    network: str = "sandbox-net"                   # default profile: a bridge of our own, no agent-to-agent traffic
    nofile: int = Field(default=4096, ge=64)       # open files per process (soft = hard limit)
    runtime: str | None = None                     # an OCI runtime the engine knows (e.g. runsc); spawn fails closed
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

    @field_validator("memory", mode="before")
    @classmethod
    def _check_memory(cls, value: Any) -> str:
        text = "0" if value is None else str(value).strip()
        if memory_bytes(text) is None:
            raise ValueError(f"memory must be a size like 4g, 512m or 0 (unlimited), not {text!r}")
        return text

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


def _describe(err: Any) -> str:
    """``retries=-1: Input should be greater than or equal to 0`` (the value, never a secret: settings hold none)."""
    where = ".".join(str(part) for part in err.get("loc", ())) or "?"
    return f"{where}={err.get('input')!r}: {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}"
