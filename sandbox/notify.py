"""The ``notify`` setting: a command of the user's run when an agent starts to need them.

The command line is split like a shell would split it (``shlex.split``) but never run through one:
it is an argv, and what it learns of the agent comes in the environment — ``SANDBOX_AGENT`` (the
name), ``SANDBOX_STATE``, ``SANDBOX_REPO``, ``SANDBOX_BRANCH`` — values sandbox made (labels and
state names), never text the agent wrote (no task, reason or pane text). It runs detached (its own
session, stdin from /dev/null), and sandbox does not wait for it. Stdlib only.

    notify = "notify-send sandbox 'an agent needs you'"           # desktop
    notify = "sh -c 'printf \\"%s is %s\\\\n\\" \\"$SANDBOX_AGENT\\" \\"$SANDBOX_STATE\\" >> ~/agents.log'"
"""

from __future__ import annotations

import os
import shlex
import subprocess
from typing import Any

from sandbox.errors import UsageError


def argv(command: str) -> list[str]:
    """The ``notify`` setting as an argv; a value that does not split is a usage error."""
    try:
        parts = shlex.split(command)
    except ValueError as e:
        raise UsageError(f"invalid setting notify={command!r}: {e}") from e
    if not parts:
        raise UsageError("invalid setting notify='': empty command")
    return parts


def environment(sb: Any) -> dict[str, str]:
    """What the command learns: sandbox's own values only (``sb``: a ``manager.Sandbox``)."""
    return {"SANDBOX_AGENT": sb.name, "SANDBOX_STATE": sb.state, "SANDBOX_REPO": sb.repo, "SANDBOX_BRANCH": sb.branch}


_started: list[subprocess.Popen[bytes]] = []


def run(command: str, sb: Any) -> str | None:
    """Start the command for ``sb``; None, or why it could not be started (one line). Commands
    started before that have ended are reaped (a long-running ``top`` leaves no zombies)."""
    args = argv(command)
    _started[:] = [p for p in _started if p.poll() is None]
    try:
        proc = subprocess.Popen(args, env={**os.environ, **environment(sb)}, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         close_fds=True)
    except OSError as e:
        return f"notify: cannot run {args[0]}: {e.strerror or e}"
    _started.append(proc)
    return None
