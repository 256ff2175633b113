"""Agent presets: how each CLI is started in the pane and how it gets its task.

``arg``: the task is the agent's own prompt argument (Claude Code, Codex, Gemini CLI) — nothing
is typed, so nothing can be lost to a dialog. ``type``: the task is typed into the pane once the
session exists (aider, any custom command).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Literal

from sandbox.errors import UsageError

Delivery = Literal["arg", "type"]


@dataclass(frozen=True)
class AgentSpec:
    name: str
    argv: tuple[str, ...]
    delivery: Delivery
    claude: bool = False  # Claude Code: first-run answers, hooks, optional mock model
    resume: tuple[str, ...] = ()  # instead of the task after a restart, once a conversation exists

    @property
    def binary(self) -> str:
        return self.argv[0]


PRESETS = ("claude", "codex", "gemini", "aider")


def build(agent: str, model: str | None, task: str | None, agent_cmd: str | None = None) -> AgentSpec:
    """The argv to run for ``agent`` (a preset name, or ``custom`` with ``agent_cmd``)."""
    if agent_cmd is not None:
        try:
            argv = shlex.split(agent_cmd)
        except ValueError as e:
            raise UsageError(f"--agent-cmd: {e}") from e
        if not argv:
            raise UsageError("--agent-cmd is empty")
        return AgentSpec("custom", tuple(argv), "type")
    m = ["--model", model] if model else []
    t = [task] if task else []
    if agent == "claude":
        return AgentSpec(agent, ("claude", "--dangerously-skip-permissions", *m, *t), "arg", claude=True,
                         resume=("--resume", "{session}"))
    if agent == "codex":
        # Codex's own sandbox fails under Docker's seccomp profile: the container is the sandbox.
        return AgentSpec(agent, ("codex", "--dangerously-bypass-approvals-and-sandbox", *m, *t), "arg")
    if agent == "gemini":
        return AgentSpec(agent, ("gemini", "--yolo", *m, *(["--prompt-interactive", task] if task else [])), "arg")
    if agent == "aider":
        return AgentSpec(agent, ("aider", "--yes-always", *m), "type")
    raise UsageError(f"unknown agent {agent!r}", hint=f"choose one of {', '.join(PRESETS)} or pass --agent-cmd")


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(
            f"invalid name {name!r}",
            hint="use letters, digits, '-' and '_', starting with a letter or digit, at most 63 characters",
        )
    return name


TASK_MAX = 128 * 1024 - 1  # bytes: Linux's limit for one argument (MAX_ARG_STRLEN, with its NUL)


def check_task(task: str) -> str:
    """A task the agent can receive byte-exact (as its last argument, or typed from a file)."""
    try:
        size = len(task.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError("the task is not valid UTF-8") from None
    if "\0" in task:
        raise UsageError("the task contains a NUL byte", hint="no program can receive one as an argument or typed text")
    if size > TASK_MAX:
        raise UsageError(f"the task is {size} bytes; at most {TASK_MAX} fit",
                         hint="put the long part in a file in the repository and point the task at it")
    return task


def name_prefix(agent: str, model: str | None) -> str:
    """``sonnet`` for ``--model sonnet``; the agent's name without a model."""
    base = (model or agent).rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", base).strip("-_") or "agent"
    return base[:50]
