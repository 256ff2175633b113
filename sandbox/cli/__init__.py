"""The command line: parse, call one library function, render. Errors leave through ``main()``.

Plain typer. ``run()`` is one command (the command server's child and ``sandbox.client``'s fallback
call it); ``main()`` is its error boundary. Each command imports what it needs and builds this
request's ``Settings`` (``config.load_settings``); the server has imported them all before it forks.

The commands, by group (``common``: the ``app`` and what they share):
  spawn.py   spawn, pool                  board.py   ls, top, tile, stats
  agents.py  attach … netlog, stop … rm   work.py    diff, conflicts, merge, sync, apply, push, pr, restore, gc
  plans.py   run, plan                    admin.py   trust, mock-model, image, config, mcp, server
A module registers its commands on ``app`` when imported: the order below is the order of ``sandbox --help``.
"""

# (No `from __future__ import annotations` here: typer would evaluate every command's annotation strings
# on each run, ~10 ms.)

import os
import sys
from typing import Any, Callable

import typer

from sandbox.cli import common
from sandbox.cli import spawn, board, agents, work, plans, admin  # (in this order: see the docstring)
from sandbox.cli.common import COMPLETE_MAX, COMPLETE_TIMEOUT, _complete_names, _err, app
from sandbox.errors import SandboxError, UsageError

app.add_typer(admin.image_app, name="image")
app.add_typer(admin.config_app, name="config")
app.add_typer(admin.mcp_app, name="mcp")
app.add_typer(admin.server_app, name="server")
app.add_typer(plans.plan_app, name="plan")

__all__ = ["app", "run", "main", "click_command", "usage_message", "_complete_names", "COMPLETE_MAX", "COMPLETE_TIMEOUT"]


def run(argv: list[str], cwd: str | None = None, env: dict[str, str] | None = None,
        stdio: tuple[int, int, int] | None = None, become: "Callable[[list[str]], None] | None" = None) -> int:
    """One command: ``argv`` (no program name) in ``cwd`` with ``env`` and the descriptors ``stdio`` as its
    stdin/stdout/stderr (each None: this process's own); its exit code. The one code path: the command
    server's child calls it with the client's, and ``sandbox.client`` in its own process when no server
    can run. ``become(argv)`` hands an interactive command's program to the caller instead of exec'ing it."""
    if stdio is not None:
        _adopt(stdio)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    common._BECOME = become
    sys.argv = ["sandbox", *argv]
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError as e:
            _err(f"sandbox: error: cannot enter the current directory {cwd}: {e.strerror}")
            return 1
    try:
        main(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    return 0


def _adopt(stdio: tuple[int, int, int]) -> None:
    """Make ``stdio`` this process's fds 0, 1, 2 and ``sys.stdin``/``stdout``/``stderr`` (buffered as
    Python buffers them: line-buffered on a terminal)."""
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)
    enc, errors = sys.stdout.encoding, sys.stdout.errors
    sys.stdin = sys.__stdin__ = open(0, "r", encoding=enc, errors=errors, closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding=enc, errors=errors, closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding=enc, errors="backslashreplace", closefd=False, buffering=1)


_CLICK: Any = None


def click_command() -> Any:
    """The command typer makes of ``app`` (``typer.main.get_command``: what ``app()`` builds again on each
    call, ~20 ms), built once: the command server builds it before it forks, so no command pays for it."""
    global _CLICK
    if _CLICK is None:
        _CLICK = typer.main.get_command(app)
    return _CLICK


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place errors reach the user (one line, documented exit code)."""
    debug = bool(os.environ.get("SANDBOX_DEBUG"))
    try:
        rc = click_command()(args=argv, prog_name="sandbox", standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except SandboxError as e:
        if debug:
            raise
        _err(f"sandbox: error: {e}")
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        _err("sandbox: aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        _err("sandbox: interrupted")
        sys.exit(130)
    except typer.TyperException as e:  # the parser's usage errors (unknown option, bad value, missing argument)
        if debug:
            raise
        help_text = _help_instead(e)
        if help_text is not None:  # `sandbox` or `sandbox image` alone: the help, as --help shows it
            _err(help_text.rstrip("\n"))
            sys.exit(UsageError.exit_code)
        _err(f"sandbox: error: {usage_message(e)}")
        sys.exit(UsageError.exit_code)
    except Exception as e:  # the unexpected
        if debug:
            raise
        _err(f"sandbox: internal error: {type(e).__name__}: {e} (set SANDBOX_DEBUG=1 for the traceback)")
        sys.exit(70)


def usage_message(e: typer.TyperException) -> str:
    """A parser error as one line: ``No such option: --bogus (see sandbox ls --help)``."""
    text = " ".join(e.format_message().split())
    path = getattr(getattr(e, "ctx", None), "command_path", None) or "sandbox"
    return f"{text} (see {path} --help)"


def _help_instead(e: typer.TyperException) -> str | None:
    """The help text when the 'error' is a group called with no arguments (``no_args_is_help``)."""
    ctx = getattr(e, "ctx", None)
    get_help = getattr(ctx, "get_help", None)
    if get_help is None:
        return None
    text = get_help()
    return text if isinstance(text, str) and e.format_message() == text else None
