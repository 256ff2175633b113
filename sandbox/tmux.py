"""tmux inside the agent's container, driven with argv lists through an :class:`Executor`.

The driver does not know about Docker: a :class:`Executor` runs an argv somewhere (``docker
exec`` into a container, a swarm task's node, or a local process) and returns its result.
User text is always passed as one argv element (``set-buffer -- TEXT``), never through a shell.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Protocol

from sandbox.contract import CommandResult, tmux_literal as literal, tmux_pastes, tmux_target
from sandbox.errors import AgentError

BUFFER = "sandbox-send"
__all__ = ["BUFFER", "Executor", "LocalExecutor", "Tmux", "literal"]


class Executor(Protocol):
    def run(self, argv: list[str]) -> CommandResult: ...


@dataclass(frozen=True)
class LocalExecutor:
    """Runs argv on this machine; ``prefix`` can point tmux at a socket (``["-L", "x"]``)."""

    prefix: tuple[str, ...] = ()

    def run(self, argv: list[str]) -> CommandResult:
        if argv and argv[0] == "tmux":
            argv = ["tmux", *self.prefix, *argv[1:]]
        proc = subprocess.run(argv, capture_output=True)
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)


class Tmux:
    """One tmux session, reached through an executor."""

    def __init__(self, executor: Executor, session: str) -> None:
        self.executor = executor
        self.session = session

    @property
    def target(self) -> str:
        return tmux_target(self.session)

    def _run(self, *args: str, check: bool = True) -> CommandResult:
        res = self.executor.run(["tmux", *args])
        if check and res.exit_code != 0:
            err = res.stderr.decode("utf-8", "replace").strip() or f"exit {res.exit_code}"
            raise AgentError(f"tmux {args[0]} in session {self.session!r} failed: {err}")
        return res

    def has_session(self) -> bool:
        return self._run("has-session", "-t", f"={self.session}", check=False).exit_code == 0

    def send(self, text: str, *, enter: bool = True) -> None:
        """Type ``text`` byte-exact (as a bracketed paste), then Enter; a long text in chunks."""
        for args in tmux_pastes(self.target, text, buffer=BUFFER, enter=enter):
            if args:
                self._run(*args)

    def capture(self, lines: int | None = None) -> str:
        """The pane's text; ``lines`` of scrollback (None = all of it)."""
        start = "-" if lines is None else str(-int(lines))
        res = self._run("capture-pane", "-p", "-J", "-S", start, "-t", self.target)
        text = res.text
        return text.rstrip("\n") + "\n" if text.strip() else ""
