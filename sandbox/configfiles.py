"""Which settings files apply, and what they say: one function for every command.

Stdlib only (plus ``gitops`` for the repository): the light settings (``sandbox/lightsettings.py``)
and the full ``Settings`` (``sandbox/config.py``, pydantic) both take their file values from it, so
both see the same files in the same order.

Files, highest precedence first (flags and ``SANDBOX_*`` variables come before both):

1. ``<repo>/.sandbox.toml`` of the repository the command acts on: ``--repo`` when given,
   else the repository around the current directory — its main checkout, also from a worktree;
2. ``$XDG_CONFIG_HOME/sandbox/config.toml`` (the user file).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from sandbox.errors import UsageError

REPO_FILE = ".sandbox.toml"


def user_config_file() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "sandbox" / "config.toml"


def repo_top(repo: Path | None) -> Path | None:
    """The main checkout of the repository a command acts on: ``repo`` (the ``--repo`` option; not
    a repository is an error), else the one around the current directory (None outside any)."""
    from sandbox.workspace import git as gitops

    return gitops.scope(repo, False)


def settings_files(top: Path | None) -> list[Path]:
    """The settings files that exist, highest precedence first, for the repository at ``top``."""
    candidates = ([top / REPO_FILE] if top is not None else []) + [user_config_file()]
    return [p for p in candidates if p.is_file()]


def read_files(files: list[Path]) -> dict[str, Any]:
    """The files' values merged, ``files[0]`` winning; keys lower-cased (settings ignore case).

    A file that cannot be read or parsed is a ``UsageError`` naming it."""
    merged: dict[str, Any] = {}
    for path in reversed(files):
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UsageError(f"cannot read the settings file {path}: {e}") from e
        merged.update({k.lower(): v for k, v in data.items()})
    return merged


def file_values(repo: Path | None) -> tuple[Path | None, dict[str, Any]]:
    """(the repository's main checkout or None, the merged values of its settings files)."""
    top = repo_top(repo)
    return top, read_files(settings_files(top))
