"""One exception root for everything `sandbox` raises on purpose.

    SandboxError                  exit 1   anything we expected and can explain in one line
    ├── UsageError                exit 2   bad input: invalid name, unknown agent, bad option value
    ├── RepoError                 exit 3   not a git repository, no commits, workspace path exists
    ├── NotFound                  exit 4   no such agent / image
    │   └── ImageMissing          exit 4   the agent image is not built
    ├── Conflict                  exit 5   name taken, capacity full, refusing to lose work
    ├── EngineError               exit 6   the Docker engine refused or failed
    │   └── EngineUnavailable     exit 7   the Docker engine cannot be reached
    ├── AgentError                exit 8   the agent did not start / failed / exited while waited for
    │   ├── WaitTimeout           exit 9   `wait`, `send --wait`, `spawn --queue` ran out of time
    │   └── SyncError             exit 8   the agent's work cannot be taken: too big, not a commit, timed out
    └── GitError                  exit 3   a git command failed (argv and stderr attached)

Engine answers (docker-py's) are translated in ``sandbox.engine.engine_error``
only; git errors in ``sandbox.workspace.git`` only. The CLI prints ``str(err)`` as one line and exits with ``err.exit_code``.
"""

from __future__ import annotations


class SandboxError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(SandboxError):
    exit_code = 2


class RepoError(SandboxError):
    exit_code = 3


class GitError(RepoError):
    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        last = (stderr.strip().splitlines() or [""])[-1]
        super().__init__(f"git {' '.join(argv[1:3])} failed (exit {returncode}): {last}".rstrip(": "))
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class NotFound(SandboxError):
    exit_code = 4


class ImageMissing(NotFound):
    pass


class Conflict(SandboxError):
    exit_code = 5


class EngineError(SandboxError):
    exit_code = 6

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class EngineUnavailable(EngineError):
    exit_code = 7


class AgentError(SandboxError):
    exit_code = 8


class WaitTimeout(AgentError):
    exit_code = 9


class SyncError(AgentError):
    """The host refused what an agent's export sent (over a size limit, a ref that is not a commit) or
    the export did not finish in time; the host's refs keep what they had. ``setting`` names the limit
    that refused it, if one did."""

    def __init__(self, message: str, *, setting: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.setting = setting
