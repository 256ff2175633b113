"""What every command module shares: the ``app``, the root options, the NAME and --repo parameters (with
shell completion), the manager of this request's ``Settings``, stderr, and ``_become`` (the hand-over of
an interactive command's program). Imports nothing of the command modules."""

# (No `from __future__ import annotations` here: typer would evaluate every command's annotation strings
# on each run, ~10 ms.)

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from sandbox import __version__
from sandbox.errors import UsageError

app = typer.Typer(
    name="sandbox",
    help="Every AI coding agent in its own Docker container: its own git workspace mounted, tmux inside, "
    "found again through container labels.",
    no_args_is_help=True,
    add_completion=True,  # typer's --install-completion / --show-completion (bash, zsh, fish)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

RepoOpt = Annotated[Optional[Path], typer.Option("--repo", help="The repository (default: the one around the current directory).")]


def _complete_names(incomplete: str) -> list[str]:
    """Shell completion of a NAME argument: the names of this user's agents (every repository) that
    start with ``incomplete``, from the engine's one list call (labels only: no sync, no state file),
    at most ``COMPLETE_MAX``, within ``COMPLETE_TIMEOUT`` seconds; nothing at all on any error (a
    completion must never print into the user's command line)."""
    try:
        from sandbox.config import load_settings
        from sandbox.engine import Engine
        from sandbox.manager import SandboxManager

        mgr = SandboxManager(load_settings(None), Engine(timeout=COMPLETE_TIMEOUT))
        return mgr.names(incomplete)[:COMPLETE_MAX]
    except Exception:  # (quiet: a broken engine or settings file shows up in the command itself)
        return []


COMPLETE_TIMEOUT = 2  # seconds for the engine's answer while completing a name
COMPLETE_MAX = 200
NameArg = Annotated[str, typer.Argument(help="The agent's name.", autocompletion=_complete_names)]
AllowConfigOpt = Annotated[bool, typer.Option("--allow-config", help="Also bring a change to .sandbox.toml or .devcontainer/ (settings the host obeys; review them first).")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sandbox {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    engine: Annotated[Optional[str], typer.Option("--engine", help="Where agents run: local (this engine) or swarm (the Docker Swarm this engine manages); default: the engine setting.")] = None,
) -> None:
    """Run `sandbox COMMAND --help` for each command's options and an example."""
    if engine is not None:
        if engine not in ("local", "swarm"):
            raise UsageError(f"--engine {engine!r}: local or swarm")
        os.environ["SANDBOX_ENGINE"] = engine  # (the flag, seen by both settings readers)


if TYPE_CHECKING:
    from sandbox.manager import SandboxManager


def _manager(repo: Path | None = None, **flags: Any) -> "SandboxManager":
    """A manager with this request's ``Settings`` (``config.load_settings``: flags, environment, files)."""
    from sandbox.config import load_settings
    from sandbox.manager import SandboxManager

    return SandboxManager(load_settings(repo, **flags))


def _reader(repo: Path | None = None) -> "tuple[Path | None, SandboxManager]":
    """(the repository's main checkout or None, a manager with this request's ``Settings``): for the
    commands that also need the checkout the settings files were looked up in."""
    from sandbox import configfiles
    from sandbox.config import settings_from
    from sandbox.manager import SandboxManager

    top, values = configfiles.file_values(repo)
    return top, SandboxManager(settings_from(values, {}))


def _agent(name: str):  # type: ignore[no-untyped-def]
    """The manager and a fresh snapshot of the agent ``name``."""
    mgr = _manager()
    return mgr, mgr.get(name)


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


_BECOME: "Callable[[list[str]], None] | None" = None  # run(become=…): the server's hand-over to its client


def _become(argv: list[str]) -> None:
    """Replace this command by ``argv`` (attach, exec on a terminal, tile): ``os.execvp`` here; through
    the command server the client process does it (its terminal, its job control)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if _BECOME is not None:
        _BECOME(argv)
    os.execvp(argv[0], argv)
