"""Runs inside the agent container (standard library only).

``python3 -m sandbox.inside init``    the container's main process (under tini): set up HOME,
                                      start the mock model if asked, start the tmux session
                                      running the agent, keep the state file, wait.
``python3 -m sandbox.inside hook EV`` Claude Code hook: turn an event into a state.

The modules: this one is the ground both sides stand on (the paths, the state file the supervisor
alone writes, the agent's report it reads, tmux run without a shell, becoming the agent, ``main``);
``supervisor`` the resident init; ``home`` what the init writes before any pane runs (HOME, Claude
Code's settings, tmux.conf, the mock model); ``hooks`` the agent's side (Claude Code's hooks, run as
the agent); ``headless`` the image alone; ``export``, ``probe``: what the host starts, isolated.

With no launch file and ``SANDBOX_REPO`` set, ``init`` runs headless (``sandbox.inside.headless``):
configured from the environment, it clones, runs the agent under this supervisor and pushes its work.

The init loop is the supervisor (``sandbox.inside.supervisor``): it restarts a failing agent in the
same pane with backoff and jitter (a circuit breaker after ``retries``), enforces
``max_time``/``idle_timeout``, and computes a fallback state for agents without hooks (pane activity,
prompt patterns). See README "States". It sleeps until one of tmux's hooks signals it
(``WAKE_SIGNAL``: the pane died, keys were sent or pasted, a client attached), so a death or an input is
seen at once and an idle agent costs no polling; it only ticks for what needs a clock: the fallback
state and time limits, every ``TICK`` while the pane changes, less often (up to ``TICK_MAX``) while it
does not. A hook-less agent that has been quiet for ``PARK_AFTER`` s is *parked*: the supervisor execs
a tiny ``sh`` (``PARK``) that waits for a hook's signal, the pane's next output (tmux's activity alert)
or the next time limit, then execs the supervisor again (``init --resume``), which carries on where it
was: no resident Python while nothing happens. The pane runs the agent under a tiny ``sh`` wrapper that
records its exit code.

Inputs, copied in by the host before start: ``/var/lib/sandbox/launch.json`` (argv, task,
workdir, session, …) and ``/var/lib/sandbox/secrets.json`` (API keys, mode 0400). Output: the
state file ``/run/sandbox-state/state.json``, on a mount the host reads without an exec.
"""

from __future__ import annotations

import os
import signal
import sys
import time

# A headless container's main process (`-m sandbox.inside init`, SANDBOX_REPO set: sys.argv is
# ["-m", "init"] while the package is imported): a SIGTERM that comes while it is still importing
# (before headless.main's handler: ~0.5 s on a busy host) is remembered instead of ending it as 143,
# and headless.main ends as a stop (exit 7: README "Run anywhere"). Set before any other import (so
# SANDBOX_REPO, contract.H.REPO, is spelled here once more).
EARLY_TERM: list[float] = []
_EARLY = sys.argv[:2] == ["-m", "init"] and len(sys.argv) == 2 and bool(os.environ.get("SANDBOX_REPO"))
if _EARLY:
    signal.signal(signal.SIGTERM, lambda signum, frame: EARLY_TERM.append(time.monotonic()))

# The init stays resident in every container: only light modules at the top (pathlib, typing,
# subprocess and random cost ~3 MiB of RSS per agent; json, os, select, signal are cheap).
import fcntl  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

from sandbox import contract as C  # (stdlib only, light)
from sandbox.contract import CommandResult, S

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

def _launch_file() -> str:
    """Where the launch document is: ``$SANDBOX_LAUNCH_FILE`` (headless mode: its own, in /tmp; the init
    sets it for the hooks), else on the state mount (written by the host before start, or by a warm
    pool's claim), else the launch dir (an agent of an earlier version)."""
    given = os.environ.get(C.LAUNCH_ENV)
    if given:
        return given
    return C.LAUNCH_FILE if os.path.exists(C.LAUNCH_FILE) else C.STATE_LAUNCH_FILE


LAUNCH = _launch_file()
SECRETS = C.SECRETS_FILE
STATE_DIR = os.environ.get(C.STATE_DIR_ENV, C.STATE_MOUNT)
STATE = os.path.join(STATE_DIR, C.STATE_FILE)
AGENT_DIR = os.path.join(STATE_DIR, C.AGENT_STATE)   # the agent's side: the hooks' report, reply.txt, Claude's config
REPORT = os.path.join(AGENT_DIR, C.REPORT_FILE)
SUP_DIR = C.SUPERVISOR_DIR                  # the supervisor's own (see contract): never the agent's to write
TMUX_CONF = SUP_DIR + "/tmux.conf"
PARK_FILE = SUP_DIR + "/park.json"          # a parked supervisor's own state, for its resume
INIT_PID = SUP_DIR + "/init.pid"            # the supervisor's pid (for whoever looks: tests, ps)
# The agent's uid:gid when the supervisor is root and runs it as that (``Launch.uid``): set by init/resume.
AGENT: list[int] = []
# The wake-up signal: one whose default action is to be ignored, so that one arriving while the
# process is between two programs (parking, resuming: no handler yet) is lost, never fatal; both
# sides look at the pane once their handler is in place.
WAKE_SIGNAL = getattr(signal, C.WAKE_SIGNAL)
# What the supervisor sleeps on (_sleep selects on all): the read end of the signal pipe
# (supervisor.install_wake) and of the wake FIFO (prepare()).
WAKE: list[int] = []
SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{7,127}$")  # a Claude Code session id (never an option)


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _replace(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file beside it, then rename)."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    _write(tmp, text)
    os.replace(tmp, path)

# Claude Code hook event -> agent state.
HOOK_STATES = {
    "SessionStart": C.IDLE,
    "UserPromptSubmit": C.BUSY,
    "PreToolUse": C.BUSY,
    "PostToolUse": C.BUSY,
    "Notification": C.WAITING,
    "Stop": C.IDLE,
    "SubagentStop": C.BUSY,
}


def read_state() -> dict[str, Any]:
    try:
        return dict(json.loads(_read(STATE)))
    except (OSError, ValueError):
        return {}


STATE_OWNER: list[int] = []  # uid, gid to write the state dir as, when root may not (see write_state)


def write_state(state: str | None = None, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Atomically replace the state file with ``fields`` (``contract.S``'s names) and ``state``, keeping
    fields not given (``state=None`` keeps it): the
    supervisor's alone (the hooks report through ``REPORT``, see ``merge_report``). Every write is
    also its heartbeat (``S.TS``; see ``contract.HEARTBEAT``). A root supervisor whose state dir is a
    non-root host user's own (root here has no CAP_DAC_OVERRIDE) writes it as that owner: its
    effective uid only, for the write (its real and saved uid stay 0: the agent still cannot signal it)."""
    if not STATE_OWNER and os.geteuid() == 0 and not os.access(STATE_DIR, os.W_OK, effective_ids=True):
        try:
            st = os.stat(STATE_DIR)
            if st.st_uid != 0:
                STATE_OWNER.extend((st.st_uid, st.st_gid))
        except OSError:
            pass
    if not STATE_OWNER:
        return _write_state(state, fields or {})
    os.setegid(STATE_OWNER[1])
    os.seteuid(STATE_OWNER[0])
    try:
        return _write_state(state, fields or {})
    finally:
        os.seteuid(0)
        os.setegid(0)


def _write_state(state: str | None, fields: dict[str, Any]) -> dict[str, Any]:
    try:
        fd = os.open(os.path.join(STATE_DIR, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        fd = -1
    try:
        data = read_state()
        data.update(fields)
        if state is not None:
            if data.get(S.STATE) != state:
                data[S.SINCE] = time.time()
            data[S.STATE] = state
        data[S.TS] = BEAT[0] = time.time()
        try:
            _replace(STATE, json.dumps(data))
        except OSError:  # a full disk (the state dir shares the workspace's filesystem): kept as it was,
            tmp = os.path.join(STATE_DIR, f".{C.STATE_FILE}.{os.getpid()}.tmp")  # written at the next change
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return data
    finally:
        if fd >= 0:
            os.close(fd)


BEAT = [0.0]  # when this process last wrote the state file


def _beat() -> None:
    """The heartbeat: the state file written again when nothing else wrote it for ``HEARTBEAT`` s."""
    if time.time() - BEAT[0] >= C.HEARTBEAT:
        write_state(None)


def _own_dir(path: str, mode: int) -> None:
    """``path`` a directory of this process's uid with ``mode``: whatever else is there (the agent's,
    left in a /tmp that outlived a container restart) is moved aside first (root owns /tmp)."""
    try:
        st = os.lstat(path)
        if (st.st_mode & 0o170000) == 0o040000 and st.st_uid == os.geteuid():
            os.chmod(path, mode)
            return
        os.rename(path, f"{path}.{os.getpid()}.{time.time_ns()}.old")
    except FileNotFoundError:
        pass
    os.mkdir(path, mode)
    os.chmod(path, mode)


def _drop_to_agent() -> None:
    """In a child of the root supervisor: become the agent (its uid:gid, no groups); the kernel clears
    the capabilities of a uid that leaves 0."""
    if AGENT:
        os.setgroups([])
        os.setresgid(AGENT[1], AGENT[1], AGENT[1])
        os.setresuid(AGENT[0], AGENT[0], AGENT[0])


def as_agent_call(fn: Any, *args: Any) -> None:
    """``fn(*args)`` as the agent, in a forked child (the files it writes are the agent's own); at once
    when the supervisor is not root."""
    if not AGENT:
        fn(*args)
        return
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _drop_to_agent()
            fn(*args)
            code = 0
        except BaseException as err:  # noqa: BLE001 - reported by the exit code
            try:
                os.write(2, f"sandbox: as the agent: {type(err).__name__}: {err}\n".encode())
            except OSError:
                pass
        os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 0:
        raise RuntimeError(f"{getattr(fn, '__name__', 'a step')} as the agent exited {code}")


def _nonempty(path: str) -> None:
    """Raise unless ``path`` is a file with something in it."""
    if os.path.getsize(path) <= 0:
        raise OSError(f"{path}: empty")


def agent_argv(argv: list[str]) -> list[str]:
    """``argv`` as the agent runs it: through ``contract.as_agent`` when the supervisor is root."""
    return C.as_agent(AGENT[0], AGENT[1], argv) if AGENT else list(argv)


def prepare(launch: C.Launch) -> None:
    """The supervisor's side, before any pane runs: as root with ``Launch.uid`` set, the agent's uid is
    recorded (``AGENT``); its own directory (socket, config, FIFO) made afresh; the wake FIFO opened."""
    del AGENT[:]
    if os.geteuid() == 0 and launch.uid:
        AGENT.extend((int(launch.uid), int(launch.gid or launch.uid)))
    os.environ["TMUX_TMPDIR"] = SUP_DIR
    _own_dir(SUP_DIR, 0o711)
    try:
        os.unlink(C.WAKE_FIFO)
    except FileNotFoundError:
        pass
    os.mkfifo(C.WAKE_FIFO, 0o600)
    os.chmod(C.WAKE_FIFO, 0o622)  # (the agent's hooks open it to write one byte; nobody else reads it)
    WAKE.append(os.open(C.WAKE_FIFO, os.O_RDWR | os.O_NONBLOCK))  # (a writer of its own: no EOF spin)
    if not AGENT and not os.path.isdir(AGENT_DIR):  # (one uid for all: the agent's side made here)
        os.makedirs(AGENT_DIR, exist_ok=True)


class SpawnFailed(OSError):
    """No process could be started (EAGAIN at the pids limit: a fork bomb in the container). The
    supervisor waits and looks again: it never takes it for the agent's death, and never dies of it."""


def tmux(*args: str, check: bool = True) -> CommandResult:
    """Run tmux with argv (no shell), without the subprocess module (see the imports); its stdout
    (stderr is not kept)."""
    r, w = os.pipe()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        pid = os.posix_spawnp("tmux", ["tmux", *args], os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_DUP2, null, 2)])
    except OSError as err:
        os.close(r)
        raise SpawnFailed(err.errno, f"tmux {args[0]}: {err.strerror}") from None
    finally:
        os.close(w)
        os.close(null)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if check and code != 0:
        raise RuntimeError(f"tmux {args[0]} exited {code}")
    return CommandResult(code, b"".join(chunks), b"")


REPORT_CAP = 256 * 1024


def _read_report() -> dict[str, Any]:
    """The agent's report (``REPORT``: written by its hooks as its uid): never a link followed, never
    blocking, capped; {} when it is anything but a small JSON object."""
    try:
        fd = os.open(REPORT, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o170000) != 0o100000 or st.st_size > REPORT_CAP:
            return {}
        value = json.loads(os.read(fd, REPORT_CAP + 1).decode("utf-8", "replace"))
    except (OSError, ValueError, RecursionError):
        return {}
    finally:
        os.close(fd)
    return value if isinstance(value, dict) else {}


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python3 -m sandbox.inside init|hook EVENT|export [...]", file=sys.stderr)
        return 2
    if argv[0] == "init":
        try:
            if argv[1:2] != ["--resume"] and not os.path.exists(LAUNCH) and C.H.REPO in os.environ:
                # the image alone (SANDBOX_REPO set but empty: headless refuses it), imported only then:
                # the resident init of a spawned agent stays light
                from sandbox.inside import headless

                return headless.main()
            from sandbox.inside import supervisor

            return supervisor.resume(argv[2:]) if argv[1:2] == ["--resume"] else supervisor.init()
        except Exception as err:  # noqa: BLE001 - the container's main process: never exit on a fault
            # (exiting would have the engine restart the container without end: restart policy unless-stopped)
            try:
                write_state(C.FAILED, {S.REASON: f"the init failed: {type(err).__name__}: {err}"[:300]})
            except Exception:  # noqa: BLE001,S110 - nothing more to say
                pass
            while True:
                time.sleep(3600)
    if argv[0] == "hook":  # (the agent's side: never loads the supervisor)
        from sandbox.inside.hooks import hook

        return hook(argv[1] if len(argv) > 1 else "")
    if argv[0] == "export":  # (a separate module: the resident init never loads it)
        from sandbox.inside.export import export

        return export(argv[1:])
    if argv[0] == "credential":  # headless mode's git credential helper
        from sandbox.inside.headless import credential

        return credential(argv[1:])
    if argv[0] == "probe":  # for `sandbox doctor` (the isolated profile's egress probes)
        from sandbox.inside.probe import probe

        return probe(argv[1:])
    print(f"unknown command {argv[0]!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
