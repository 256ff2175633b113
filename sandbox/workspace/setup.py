"""``[setup]``: what prepares an agent's workspace (README "Setup").

- ``copy``: gitignored files of the main checkout copied into the new workspace by the host, when it
  makes the workspace (``copy_in``, before the agent's uid gets it): read with no link followed
  (every component opened ``O_NOFOLLOW`` from the checkout's top: a symlink anywhere is refused), regular
  files only, at most ``MAX_FILE_BYTES`` each; written with no link followed; kept out of the agent's
  ``git add`` (its ``info/exclude``) and out of every WIP snapshot (the export's ``--exclude``, from a
  host-only record ``data_dir/copied/NAME``). Checked before anything is made (``checked``: exit 2).
- ``run``: a shell command the container's supervisor runs in the agent's pane, as the agent, in the
  workspace, before the agent (``sandbox.inside``: ``Supervisor.run_setup``); never on the host. Its
  result is in the state file (``contract.S.SETUP``); a failed one fails the spawn (``explained``).

Both are ``trust`` keys of a repository's ``.sandbox.toml`` (``configfiles.REPO_TRUST``).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.errors import AgentError, UsageError

if TYPE_CHECKING:
    from sandbox.config import Settings
    from sandbox.workspace.git import Repo

MAX_FILE_BYTES = 16 * 1024 * 1024  # a copied file: configuration and secrets, not data
RECORDS = "copied"                 # data_dir/copied/NAME: the copied paths (JSON), host-only
TAIL_SHOWN = 10                    # lines of a failed setup's output a spawn prints


class SetupFailed(AgentError):
    """The spawn's ``[setup] run`` failed: its exit code in the message, its last lines in ``tail``."""

    def __init__(self, message: str, tail: list[str], *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.tail = tail


@dataclass(frozen=True)
class Copy:
    path: str                      # relative, normalised
    data: bytes = field(repr=False)
    mode: int = 0o600


def checked(settings: Settings, repo: Repo) -> tuple[Copy, ...]:
    """The ``copy`` files of ``repo``'s main checkout, read now, before anything is made; one
    ``UsageError`` line (exit 2) for a missing file, a symlink (anywhere on the path), a directory or
    other non-file, one over ``MAX_FILE_BYTES``, a tracked file (it is in the workspace already) or
    one git does not ignore (it would end up in a commit); and for the isolated profile without
    ``--allow-copy`` (its point is that none of your secrets reaches the container)."""
    from sandbox.workspace import git as gitops

    paths = list(settings.setup.copy_)
    if not paths:
        return ()
    if settings.profile == "isolated" and not settings.setup.allow_copy:
        raise UsageError(f"the isolated profile keeps your files out of the container: [setup] copy would put "
                         f"{', '.join(paths)} into it", hint="pass --allow-copy to copy them anyway, or drop [setup] copy")
    copies = tuple(_read(repo.top, p) for p in paths)  # (first: git would follow a link, or refuse one)
    tracked, unignored = gitops.tracked_or_unignored(repo, paths)
    if tracked:
        raise UsageError(f"[setup] copy: {tracked[0]} is tracked by git (the workspace has it from the commit)",
                         hint="copy takes gitignored files only, such as .env")
    if unignored:
        raise UsageError(f"[setup] copy: {unignored[0]} is not ignored by git (the agent would commit it)",
                         hint=f"add it to .gitignore (or .git/info/exclude) in {repo.top}")
    return copies


def _read(top: Path, rel: str) -> Copy:
    """``top/rel`` read with no link followed on any component; a ``UsageError`` otherwise."""
    parts = rel.split("/")
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise UsageError(f"[setup] copy: cannot open {top}: {e.strerror}") from None
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nfd = os.open(part, flags | (os.O_NONBLOCK if last else os.O_DIRECTORY), dir_fd=fd)
            except OSError as e:
                where = "/".join(parts[: i + 1])
                if e.errno == errno.ENOENT:
                    raise UsageError(f"[setup] copy: {rel} does not exist in {top}") from None
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(top / where):
                    raise UsageError(f"[setup] copy: {where} is a symbolic link (copy follows none)",
                                     hint="name the file itself") from None
                raise UsageError(f"[setup] copy: cannot open {where}: {e.strerror}") from None
            os.close(fd)
            fd = nfd
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"[setup] copy: {rel} is not a regular file (copy takes files)")
        if st.st_size > MAX_FILE_BYTES:
            raise UsageError(f"[setup] copy: {rel} is over {MAX_FILE_BYTES // (1024 * 1024)} MiB")
        chunks, left = [], MAX_FILE_BYTES + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > MAX_FILE_BYTES:
            raise UsageError(f"[setup] copy: {rel} is over {MAX_FILE_BYTES // (1024 * 1024)} MiB")
        return Copy(rel, data, stat.S_IMODE(st.st_mode) & 0o777)
    finally:
        os.close(fd)


def copy_in(copies: tuple[Copy, ...], workspace: Path, agent_git: Path, data_dir: Path, name: str) -> None:
    """Write ``copies`` into a workspace the host made a moment ago (before it is given to the agent's
    uid, which then owns them as every file there), list them in the agent's ``info/exclude`` (its
    ``git add -A`` leaves them out), and record them for the export (``export_args``). Always records
    (an agent of an earlier name's copies never hide this one's files)."""
    record = data_dir / RECORDS / name
    if not copies:
        record.unlink(missing_ok=True)
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps([c.path for c in copies]) + "\n")
    for c in copies:
        _write_new(workspace, c)
    info = agent_git / "info"
    info.mkdir(exist_ok=True)
    with open(info / "exclude", "a", encoding="utf-8") as f:
        f.write("# sandbox: [setup] copy (your files, never committed)\n")
        f.write("".join("/" + _pattern(c.path) + "\n" for c in copies))


def _write_new(top: Path, c: Copy) -> None:
    """``top/c.path`` created (its directories too), no link followed, never over an existing file."""
    parts = c.path.split("/")
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        out = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, c.mode or 0o600, dir_fd=fd)
        try:
            view = memoryview(c.data)
            while view:
                view = view[os.write(out, view):]
            os.fchmod(out, c.mode or 0o600)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _pattern(path: str) -> str:
    """A path as a gitignore pattern that matches exactly it (git's special characters escaped)."""
    out = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in path)
    if out[:1] in ("#", "!"):
        out = "\\" + out
    return out[:-1] + "\\ " if out.endswith(" ") else out


def copied(data_dir: Path, name: str) -> list[str]:
    """The paths ``[setup] copy`` put into agent ``name``'s workspace (host-only record; [] without one)."""
    try:
        value = json.loads((data_dir / RECORDS / name).read_text())
    except (OSError, ValueError):
        return []
    return [p for p in value if isinstance(p, str)] if isinstance(value, list) else []


def export_args(data_dir: Path, name: str) -> list[str]:
    """The export's arguments that keep the copied files out of the WIP snapshot."""
    return [arg for p in copied(data_dir, name) for arg in ("--exclude", p)]


def launch_fields(settings: Settings) -> dict[str, Any]:
    """``Launch``'s setup fields from the settings (``spec.Request.setup``)."""
    s = settings.setup
    return {"setup": s.run or "", "setup_rerun": s.rerun, "setup_timeout": s.timeout}


def ready_timeout(settings: Settings) -> float:
    """How long a spawn waits for its agent: ``ready_timeout``, plus the setup's own limit when there is one."""
    return settings.ready_timeout + (settings.setup.timeout if settings.setup.run else 0.0)


def explained(err: AgentError, state_dir: str | None) -> AgentError:
    """A spawn's wait that failed: a ``SetupFailed`` (its last lines, defanged) when the agent's setup
    failed (the state file, the supervisor's own, says so), else ``err`` as it was."""
    from sandbox import agentfiles, terminal
    from sandbox.contract import S

    if not state_dir:
        return err
    state, _ = agentfiles.read_state(state_dir)
    record = (state or {}).get(S.SETUP)
    if not isinstance(record, dict) or record.get(S.EXIT_CODE) in (0, None) and not record.get(S.RUNNING):
        return err
    raw = record.get(S.TAIL)
    tail = [terminal.one_line(str(line))[:300] for line in (raw if isinstance(raw, list) else [])][-TAIL_SHOWN:]
    return SetupFailed(err.message, tail, hint=err.hint)
