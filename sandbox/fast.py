"""The command's entry point: hot commands answered without typer, pydantic or docker-py.

``sandbox --version``, ``ls --json`` (what scripts and status bars poll), ``logs NAME [-n N]`` and
``send NAME TEXT [--no-enter]`` (what an orchestrator calls in a loop) are answered
here — importing typer, pydantic-settings and docker-py costs ~150 ms, more than the work. They
give exactly what ``sandbox.cli`` gives, with the settings resolved the same way (``SANDBOX_*``
environment, then the files ``sandbox.configfiles`` finds and reads for the full ``Settings`` too);
anything else (other flags, a settings value only pydantic can judge, ``SANDBOX_NO_FAST=1``) goes
to the full CLI in ``sandbox.cli.main``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class _ListSettings:
    """What ``SandboxManager.list`` reads from the settings (the full ``Settings`` is pydantic)."""

    run_id: str | None

    @property
    def data_dir(self) -> Path:  # the same rule as Settings.data_dir (no SANDBOX_DATA_DIR: see list_settings)
        xdg = os.environ.get("XDG_DATA_HOME")
        return (Path(xdg) if xdg else Path.home() / ".local/share") / "sandbox"


def ls_json_options(argv: list[str]) -> tuple[Path | None, bool] | None:
    """(repo, all) when argv is ``ls --json [--all|-a] [--repo PATH]``, else None (full CLI)."""
    if not argv or argv[0] != "ls" or "--json" not in argv:
        return None
    repo: Path | None = None
    all_repos = False
    rest = argv[1:]
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--json":
            pass
        elif arg in ("--all", "-a"):
            all_repos = True
        elif arg == "--repo" and i + 1 < len(rest) and not rest[i + 1].startswith("-"):
            i += 1
            repo = Path(rest[i])
        elif arg.startswith("--repo=") and len(arg) > len("--repo="):
            repo = Path(arg[len("--repo="):])
        else:
            return None
        i += 1
    return repo, all_repos


def logs_options(argv: list[str]) -> tuple[str, int | None] | None:
    """(name, lines) when argv is ``logs NAME [-n N|--lines N]``, else None (full CLI)."""
    if len(argv) == 2:
        argv = [*argv, "", ""]
    if len(argv) == 4 and argv[0] == "logs" and argv[2] in ("-n", "--lines", "") and not argv[1].startswith("-"):
        if argv[2] == "":
            return argv[1], None
        if argv[3].isdigit():
            return argv[1], int(argv[3])
    return None


def send_options(argv: list[str]) -> tuple[str, str, bool] | None:
    """(name, text, enter) when argv is ``send NAME TEXT [--no-enter]``, else None (full CLI)."""
    enter = "--no-enter" not in argv
    rest = [a for a in argv if a != "--no-enter"]
    if len(rest) == 3 and rest[0] == "send" and not rest[1].startswith("-") \
            and (rest[2] == "-" or not rest[2].startswith("-")) and len(argv) - len(rest) <= 1:
        return rest[1], rest[2], enter
    return None


def list_settings(repo: Path | None) -> tuple[Path | None, _ListSettings] | None:
    """(the repository's main checkout, the settings ``list``/``logs``/``send`` read) as
    ``sandbox.config.load_settings(repo)`` would resolve them: ``SANDBOX_*`` env, then the repository
    file, then the user file (``sandbox.configfiles``, the same lookup). None when only the full CLI can
    tell (a value pydantic would convert or reject)."""
    from sandbox import configfiles

    top, files = configfiles.file_values(repo)
    env = [v for k, v in os.environ.items() if k.upper() == "SANDBOX_RUN_ID"]
    if len(env) > 1 or "data_dir" in files or any(k.upper() == "SANDBOX_DATA_DIR" for k in os.environ):
        return None  # (the data dir's own rule is in _ListSettings.data_dir)
    value = env[0] if env else files.get("run_id")
    if value is not None and not isinstance(value, str):
        return None
    return top, _ListSettings(value or None)


def _ls_json(top: Path | None, all_repos: bool, settings: _ListSettings) -> bool:
    """The same as ``sandbox.cli.ls(--json)``; False when it cannot answer here."""
    from sandbox.manager import SandboxManager

    scope = None if all_repos else top  # = gitops.scope(repo, all_repos): top is the same lookup
    try:
        found = SandboxManager(settings).list(repo=scope)  # type: ignore[arg-type]
    except AttributeError:  # list() now reads more settings than this knows: let the full CLI answer
        return False
    sys.stdout.write(json.dumps([s.to_json() for s in found], indent=2) + "\n")
    return True


def _logs(name: str, lines: int | None, settings: _ListSettings) -> bool:
    from sandbox.manager import SandboxManager

    try:
        text = SandboxManager(settings).logs(name, lines)  # type: ignore[arg-type]
    except AttributeError:  # reads more settings than this knows (read-only so far): full CLI
        return False
    sys.stdout.write(text)
    return True


def _send(name: str, text: str, enter: bool, settings: _ListSettings) -> bool:
    from sandbox.manager import SandboxManager

    mgr = SandboxManager(settings)  # type: ignore[arg-type]
    try:
        sb = mgr.require_running(name)
        if sb.state == "starting":  # waiting for readiness needs the full settings
            return False
    except AttributeError:
        return False
    if text == "-":
        text = sys.stdin.read()
    mgr.send(name, text, enter=enter, sb=sb)  # typed from here on: never falls back (no double typing)
    return True


def main() -> None:
    argv = sys.argv[1:]
    if not os.environ.get("SANDBOX_NO_FAST"):
        if argv == ["--version"]:
            from sandbox import __version__

            sys.stdout.write(f"sandbox {__version__}\n")
            sys.exit(0)
        repo: Path | None = None
        answer: Callable[[Path | None, _ListSettings], bool] | None = None
        if (ls := ls_json_options(argv)) is not None:
            repo, all_repos = ls
            answer = lambda top, st: _ls_json(top, all_repos, st)  # noqa: E731
        elif (lg := logs_options(argv)) is not None:
            answer = lambda top, st: _logs(*lg, settings=st)  # noqa: E731
        elif (sd := send_options(argv)) is not None:
            answer = lambda top, st: _send(*sd, settings=st)  # noqa: E731
        if answer is not None:
            from sandbox.errors import SandboxError

            try:
                resolved = list_settings(repo)
                if resolved is not None and answer(*resolved):
                    sys.exit(0)
            except SandboxError as e:
                if os.environ.get("SANDBOX_DEBUG"):
                    raise
                sys.stderr.write(f"sandbox: error: {e}\n")
                sys.exit(e.exit_code)
    from sandbox.cli import main as full

    full()
