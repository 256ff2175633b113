"""Runs inside the agent container (standard library only).

``python3 -m sandbox.inside init``    the container's main process (under tini): set up HOME,
                                      start the mock model if asked, start the tmux session
                                      running the agent, keep the state file, wait.
``python3 -m sandbox.inside hook EV`` Claude Code hook: turn an event into a state.

With no launch file and ``SANDBOX_REPO`` set, ``init`` runs headless (``sandbox.inside.headless``):
configured from the environment, it clones, runs the agent under this supervisor and pushes its work.

The init loop is the supervisor: it restarts a failing agent in the same pane with backoff and
jitter (a circuit breaker after ``retries``), enforces ``max_time``/``idle_timeout``, and computes
a fallback state for agents without hooks (pane activity, prompt patterns). See README "States".
It sleeps until one of tmux's hooks signals it (``WAKE_SIGNAL``: the pane died, keys were sent or
pasted, a client attached), so a death or an input is seen at once and an idle agent costs no
polling; it only ticks for what needs a clock: the fallback state and time limits, every ``TICK``
while the pane changes, less often (up to ``TICK_MAX``) while it does not. A hook-less agent that
has been quiet for ``PARK_AFTER`` s is *parked*: the supervisor execs a tiny ``sh`` (``PARK``) that
waits for a hook's signal, the pane's next output (tmux's activity alert) or the next time limit,
then execs the supervisor again (``init --resume``), which carries on where it was: no resident Python
while nothing happens. The pane runs the agent under a tiny ``sh`` wrapper that records its exit code.

Inputs, copied in by the host before start: ``/var/lib/sandbox/launch.json`` (argv, task,
workdir, session, …) and ``/var/lib/sandbox/secrets.json`` (API keys, mode 0400). Output: the
state file ``/run/sandbox-state/state.json``, on a mount the host reads without an exec.
"""

from __future__ import annotations

# The init stays resident in every container: only light modules at the top (pathlib, typing,
# subprocess and random cost ~3 MiB of RSS per agent; json, os, select, signal are cheap).
import fcntl
import json
import os
import re
import select
import signal
import sys
import time

from sandbox import contract as C  # (stdlib only, light)
from sandbox.contract import CommandResult

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

def _launch_file() -> str:
    """Where the launch document is: ``$SANDBOX_LAUNCH_FILE`` (headless mode: its own, in /tmp; the init
    sets it for the hooks), else on the state mount (written by the host before start, or by a warm
    pool's claim), else the launch dir (an agent of an earlier version)."""
    given = os.environ.get("SANDBOX_LAUNCH_FILE")
    if given:
        return given
    return C.LAUNCH_FILE if os.path.exists(C.LAUNCH_FILE) else C.STATE_LAUNCH_FILE


LAUNCH = _launch_file()
SECRETS = C.SECRETS_FILE
STATE_DIR = os.environ.get("SANDBOX_STATE_DIR", C.STATE_MOUNT)
STATE = os.path.join(STATE_DIR, C.STATE_FILE)
TMUX_CONF = "/tmp/sandbox-tmux.conf"
INIT_PID = "/tmp/sandbox-init.pid"          # the supervisor's pid: a hook wakes it (WAKE_SIGNAL)
PARK_FILE = "/tmp/sandbox-park.json"        # a parked supervisor's own state, for its resume
# The wake-up signal: one whose default action is to be ignored, so that one arriving while the
# process is between two programs (parking, resuming: no handler yet) is lost, never fatal; both
# sides look at the pane once their handler is in place.
WAKE_SIGNAL = getattr(signal, C.WAKE_SIGNAL)
TALLY = "/tmp/sandbox-usage.json"           # the token tally of the transcript so far (sandbox.usage.Tally)
TRANSCRIPT_CAP = 64 * 1024 * 1024           # read at most this much of the transcript per hook run
MOCK_KEY = "sk-ant-sandbox-mock-model-offline-0000"


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
    "SessionStart": "idle",
    "UserPromptSubmit": "busy",
    "PreToolUse": "busy",
    "PostToolUse": "busy",
    "Notification": "waiting",
    "Stop": "idle",
    "SubagentStop": "busy",
}


def read_state() -> dict[str, Any]:
    try:
        return dict(json.loads(_read(STATE)))
    except (OSError, ValueError):
        return {}


def write_state(state: str | None = None, **fields: Any) -> dict[str, Any]:
    """Atomically replace the state file, keeping fields not given (``state=None`` keeps it).
    A lock serialises this read-modify-write between the init loop and the hooks."""
    try:
        fd = os.open(os.path.join(STATE_DIR, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        fd = -1
    try:
        data = read_state()
        data.update(fields)
        if state is not None:
            if data.get("state") != state:
                data["since"] = time.time()
            data["state"] = state
        data["ts"] = time.time()
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


def _setup_home(launch: C.Launch, api_key: str | None) -> None:
    home = os.environ.get("HOME", "/home/agent")
    os.makedirs(home, exist_ok=True)
    workdir = launch.workdir
    ident = launch.git_identity
    gitconfig = "[user]\n\tname = {}\n\temail = {}\n".format(
        ident.get("name") or f"sandbox agent {launch.name}", ident.get("email") or "agent@sandbox.invalid"
    )
    _write(os.path.join(home, ".gitconfig"), gitconfig)
    _write(TMUX_CONF, 
        "set -g remain-on-exit on\nset -g scroll-on-clear on\nset -g history-limit 50000\nset -g default-terminal tmux-256color\n"
        "set -g status-right ' sandbox:#{session_name} '\n"
        + tmux_wake_conf(os.getpid())
    )
    if not launch.claude:
        return
    # Claude Code's own files (settings, first-run answers, conversations) live on the state mount
    # (CLAUDE_CONFIG_DIR, see ``claude_dir``): they survive a restart of the container even where
    # $HOME is a tmpfs (locked, isolated), so a restarted agent resumes its conversation.
    config_dir = claude_dir()
    os.makedirs(config_dir, exist_ok=True)
    for claude_json in (os.path.join(config_dir, ".claude.json"), os.path.join(home, ".claude.json")):
        cfg = _json_object(claude_json)
        cfg.update({"hasCompletedOnboarding": True, "bypassPermissionsModeAccepted": True, "autoUpdates": False})
        if api_key:
            cfg["customApiKeyResponses"] = {"approved": [api_key[-20:]], "rejected": []}
        projects = cfg.setdefault("projects", {})
        projects.setdefault(workdir, {})["hasTrustDialogAccepted"] = True
        projects[workdir]["hasCompletedProjectOnboarding"] = True
        _replace(claude_json, json.dumps(cfg))
    hook_cmd = f"{sys.executable} -m sandbox.inside hook"
    hooks = {ev: [{"hooks": [{"type": "command", "command": f"{hook_cmd} {ev}"}]}] for ev in HOOK_STATES}
    # Merged into what Claude Code wrote: on its first start it moves `bypassPermissionsModeAccepted`
    # out of .claude.json into settings.json as `skipDangerousModePermissionPrompt` (a migration it
    # runs once); rewriting settings.json without that key brought the "Bypass Permissions mode"
    # dialog back on every restart.
    settings_path = os.path.join(config_dir, "settings.json")
    settings = _json_object(settings_path)
    settings.update({"hooks": hooks, "skipDangerousModePermissionPrompt": True})
    _replace(settings_path, json.dumps(settings))


def tmux_wake_conf(pid: int) -> str:
    """The tmux hooks that wake the supervisor: the pane died, keys were sent or pasted into it
    (`sandbox send`), a client attached (never parked then), and the activity alert (armed only
    while parked: ``PARK``; it disarms itself, as it fires once per arming)."""
    wake = f'run-shell -b "kill -{WAKE_SIGNAL.name[3:]} {pid}"'
    hooks = {"pane-died": wake, "after-send-keys": wake, "after-paste-buffer": wake,
             "client-attached": f"set -w monitor-activity off ; {wake}",
             "alert-activity": f"set -w monitor-activity off ; {wake}"}
    return "set -g activity-action any\nset -g visual-activity off\n" + "".join(
        f"set-hook -g {event} '{cmd}'\n" for event, cmd in hooks.items())


def claude_dir() -> str:
    """Claude Code's config dir in the container (``CLAUDE_CONFIG_DIR``): on the state mount."""
    return os.path.join(STATE_DIR, "claude")


def _json_object(path: str) -> dict[str, Any]:
    try:
        value = json.loads(_read(path))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _start_mock(launch: C.Launch, env: dict[str, str]) -> None:
    ready = "/tmp/sandbox-mock.port"
    if os.path.exists(ready):
        os.unlink(ready)
    argv = [sys.executable, "-m", "sandbox.inside.mockmodel", "--host", "127.0.0.1", "--port", "0",
            "--ready-file", ready, "--log", "/tmp/sandbox-mock.log"]
    script = launch.mock_script
    if script:
        _write("/tmp/sandbox-mock-script.json", json.dumps(script))
        argv += ["--script", "/tmp/sandbox-mock-script.json"]
    null = os.open(os.devnull, os.O_RDWR)
    os.posix_spawn(sys.executable, argv, os.environ, setsid=True, file_actions=[
        (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)])
    os.close(null)
    deadline = time.monotonic() + 15
    while not os.path.exists(ready):
        if time.monotonic() > deadline:
            raise RuntimeError("mock model did not start")
        time.sleep(0.02)
    env["ANTHROPIC_BASE_URL"] = f"http://127.0.0.1:{_read(ready).strip()}"
    env["ANTHROPIC_API_KEY"] = MOCK_KEY
    env.pop("ANTHROPIC_AUTH_TOKEN", None)


# -- the supervisor ---------------------------------------------------------------------------
# Fallback state for agents without hooks: the pane's last output time and a few prompt patterns.
QUIET = 2.0  # seconds without pane output before a hook-less agent counts as idle
PROMPT_PATTERNS = re.compile(
    r"(\(y/n\)|\[y/n\]|\[Y/n\]|\[y/N\]|\(yes/no\)|Do you want to|Allow .*\?|Press Enter|Continue\?|Approve)",
    re.IGNORECASE,
)
TERMINAL = C.TERMINAL
TICK = 1.0    # the loop's period when something needs a clock (fallback state, time limits) and changes
TICK_MAX = 4.0  # ... growing (x2 a quiet tick) to this while nothing changes; back to TICK on any change
NAP = 60.0    # otherwise: only a hook's signal (or this safety net) wakes it
PARK_AFTER = 6.0  # a hook-less agent idle (or waiting) this long, unchanged, is parked (see PARK)
PARK_NAP = 300    # a parked supervisor looks again at least this often (s), whatever happens
WAKE: list[int] = []  # the read end of the signal wake-up pipe, set up by init()
SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{7,127}$")  # a Claude Code session id (never an option)


def _sleep(seconds: float) -> bool:
    """Sleep, cut short by a signal (``WAKE_SIGNAL`` from one of tmux's hooks): whether it was."""
    if not WAKE:
        time.sleep(seconds)
        return False
    ready, _, _ = select.select(WAKE, [], [], seconds)
    if ready:
        os.read(WAKE[0], 512)
    return bool(ready)


# What `_pane` asks tmux (one call); the park script compares the first, third and last to what they were.
PANE_FORMAT = "#{pane_dead}|#{pane_dead_status}|#{pane_dead_signal}|#{pane_pid}|#{window_activity}|#{session_attached}"


def _pane(session: str) -> dict[str, Any] | None:
    """The agent pane: dead, exit code (None while unknown), pid, last activity (epoch s), clients
    attached; None without a session. A process killed by signal N counts as exit 128+N, as in a shell."""
    res = tmux("list-panes", "-t", f"={session}:", "-F", PANE_FORMAT, check=False)
    parts = (res.text.split("\n") or [""])[0].split("|")
    if res.exit_code != 0 or len(parts) != 6:
        return None
    dead = parts[0] == "1"
    code: int | None = None
    if dead and parts[1].lstrip("-").isdigit():
        code = int(parts[1])
    elif dead and parts[2].isdigit():
        code = 128 + int(parts[2])
    return {"dead": dead, "code": code, "pid": int(parts[3]) if parts[3].isdigit() else 0,
            "activity": float(parts[4]) if parts[4].isdigit() else time.time(),
            "attached": int(parts[5]) if parts[5].isdigit() else 0}


EXIT_FILE = "/tmp/sandbox-agent-exit"
PID_FILE = "/tmp/sandbox-agent-pid"


TASK_FILE = "/tmp/sandbox-task"          # the task, for the wrapper to pass as the last argument
TYPED_FILE = "/tmp/sandbox-task-typed"   # the task as typed (loaded into a tmux buffer)

# The pane's process: records "ATTEMPT PID", runs the agent as its child, records "ATTEMPT CODE"
# (tmux 3.3 does not always keep a respawned pane's exit status). `trap :` (a handler, not
# "ignore") keeps the wrapper alive on Ctrl-C while the agent, after exec, gets the default action.
# With a task file, its content (byte-exact: the `.` keeps trailing newlines) is the agent's last
# argument: a task of any size up to the kernel's limit for one argument, never through tmux's
# command line (16 KiB).
WRAPPER = (
    'a=$1; f=$2; shift 2; echo "$a $$" > /tmp/.pid.$$ && mv -f /tmp/.pid.$$ ' + str(PID_FILE) + '; '
    'trap : INT QUIT TSTP; '
    'if [ -n "$f" ]; then t=$(cat "$f"; echo .); t=${t%.}; "$@" "$t"; else "$@"; fi; c=$?; '
    'echo "$a $c" > /tmp/.exit.$$ && mv -f /tmp/.exit.$$ ' + str(EXIT_FILE) + '; exit $c'
)


def agent_command(attempt: int, argv: list[str], task_file: str = "") -> list[str]:
    return ["/bin/sh", "-c", WRAPPER, "sandbox-agent", str(attempt), task_file, *argv]


RAW_WAIT = 3.0   # how long a typed task waits for the agent to set its terminal up


def _terminal(session: str) -> tuple[int, bytes] | None:
    """The agent pane's terminal: (lflag, the VLNEXT character), or None when it cannot be read."""
    import termios  # (only to type a task: not resident)

    tty = tmux("display-message", "-p", "-t", C.tmux_target(session), "#{pane_tty}", check=False).text.strip()
    if not tty.startswith("/dev/"):
        return None
    try:
        fd = os.open(tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        attrs = termios.tcgetattr(fd)
    except termios.error:
        return None
    finally:
        os.close(fd)
    lnext = attrs[6][termios.VLNEXT]
    return int(attrs[3]), lnext if isinstance(lnext, bytes) else bytes([lnext])


def typed_text(session: str, attempt: int, text: str) -> str:
    """``text`` as it must be typed so the agent reads it byte-exact, once its terminal is set up.

    A terminal starts cooked: its line discipline turns ^C, ^\\, ^Z into signals and ^U, ^W, DEL,
    ^D into edits, and typing a task before the agent switched its terminal to raw had those bytes
    obeyed (a ^\\ killed the agent, on every retry). So: wait until this attempt's agent runs and
    its terminal leaves canonical mode (raw, or a shell's line editor), up to ``RAW_WAIT``; a
    program that keeps it canonical (one reading lines) gets each control character but newline and
    tab quoted with VLNEXT (^V), which the line discipline turns into that literal character."""
    import termios

    deadline = time.monotonic() + RAW_WAIT + 10.0  # (the agent's process itself may take a moment)
    started: float | None = None
    mode = None
    while time.monotonic() < deadline:
        if started is None and _agent_running(attempt):
            started = time.monotonic()
        mode = _terminal(session)
        if started is not None and (mode is None or not mode[0] & termios.ICANON
                                    or time.monotonic() - started >= RAW_WAIT):
            break
        time.sleep(0.02)
    if mode is None or not mode[0] & termios.ICANON or not mode[0] & termios.IEXTEN or mode[1] in (b"\0", b""):
        return text
    lnext = mode[1].decode("latin-1")
    return "".join(lnext + ch if (ch < " " and ch not in "\n\t") or ch == "\x7f" else ch for ch in text)


def _agent_running(attempt: int) -> bool:
    """Has this attempt's agent process been started (by the pane's wrapper)?"""
    try:
        return int(_read(PID_FILE).split()[0]) == attempt
    except (OSError, ValueError, IndexError):
        return False


def _exit_code(attempt: int, pane: dict[str, Any] | None) -> int:
    try:
        got, code = _read(EXIT_FILE).split()
        if int(got) == attempt:
            return int(code)
    except (OSError, ValueError):
        pass
    return -1 if pane is None or pane["code"] is None else int(pane["code"])


def backoff(failures: int, base: float, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: base·2^(failures-1), capped, times a factor in [0.5, 1]."""
    import random  # only when an agent failed: not resident in every container

    return min(cap, base * 2 ** max(0, failures - 1)) * random.uniform(0.5, 1.0)


SCREEN: dict[str, Any] = {}  # the last quiet screen's verdict: {"activity": pane activity, "state": idle|waiting}


def _fallback_state(session: str, pane: dict[str, Any], now: float) -> str:
    """busy while the pane has output (within QUIET s), else waiting on a prompt pattern, else idle.
    The screen is read once per quiet spell: with no output since (the same pane activity, whose
    clock only moves forward), it is the same screen."""
    if now - pane["activity"] < QUIET:
        return "busy"
    if SCREEN.get("activity") != pane["activity"]:
        tail = tmux("capture-pane", "-p", "-t", f"={session}:", check=False).text.rstrip().splitlines()[-3:]
        SCREEN.update(activity=pane["activity"],
                      state="waiting" if tail and PROMPT_PATTERNS.search("\n".join(tail)) else "idle")
    return str(SCREEN["state"])


def _kill_agent(pid: int) -> None:
    """TERM the agent's process group (tmux made it a session leader), KILL after 3 s."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


class Supervisor:
    """Runs the agent in the tmux pane; restarts it on failure; enforces the time limits."""

    def __init__(self, launch: C.Launch, parked: dict[str, Any] | None = None) -> None:
        self.launch = launch
        self.session = launch.session
        self.argv = [str(a) for a in launch.argv]
        self.retries = int(launch.retries)
        self.base = float(launch.backoff)
        self.stable_after = float(launch.stable_after)
        self.max_time = float(launch.max_time or 0)
        self.idle_timeout = float(launch.idle_timeout or 0)
        self.hooks = bool(launch.claude)
        self.t0 = time.time()
        prev = read_state()
        self.attempt = int(prev.get("attempt", 0))
        self.failures = int(prev.get("failures", 0))
        # `sandbox start`/`restart` (not the engine's restart policy); a resumed supervisor started nothing
        by_user = parked is None and os.path.exists(C.START_FILE)
        if by_user:
            try:
                os.unlink(C.START_FILE)
            except OSError:
                pass
        if by_user or prev.get("state") in (None, "stopped", "exited", C.POOLED):
            self.failures = 0  # a first start, or started again by the user
        elif prev.get("state") != "failed":
            self.failures += 1  # the container died under a live agent (the engine restarted it)
        self.circuit_open = not by_user and (prev.get("state") == "failed" or self.failures > self.retries)
        self.attempt_t0 = 0.0
        self.parked = parked
        if parked is not None:  # resumed after a park (same container run): carry on where it was
            self.t0, self.attempt, self.failures = float(parked["t0"]), int(parked["attempt"]), int(parked["failures"])
            self.attempt_t0, self.circuit_open = float(parked["attempt_t0"]), False

    def resumable(self) -> str | None:
        """The conversation to resume (Claude Code: the session id its hooks recorded, while its
        transcript is there), else None: the agent gets its task as on its first start."""
        if not self.launch.resume:
            return None
        prev = read_state()
        sid, transcript = prev.get(C.S.SESSION_ID), prev.get(C.S.TRANSCRIPT)
        if not isinstance(sid, str) or not SESSION_RE.match(sid) or not isinstance(transcript, str):
            return None
        try:
            return sid if os.path.getsize(transcript) > 0 else None
        except OSError:
            return None

    needs_tick = False  # headless mode: `tick` runs every TICK

    def tick(self, now: float) -> None:
        """Called on every wake-up of the loop (headless mode: work-in-progress pushes, the end)."""

    def start_agent(self) -> None:
        SCREEN.clear()  # (a new pane)
        self.attempt += 1
        self.attempt_t0 = time.time()
        launch = self.launch
        argv, task_file = list(self.argv), ""
        task_in_argv = launch.delivery == "arg" and bool(launch.task) and bool(argv) and argv[-1] == launch.task
        if task_in_argv:
            argv.pop()  # (passed through a file: see WRAPPER)
        session = self.resumable()
        if session is not None:
            argv += [a.replace("{session}", session) for a in launch.resume]
        elif task_in_argv:
            _replace(TASK_FILE, launch.task)
            task_file = TASK_FILE
        reason = None if self.attempt == 1 else f"restarted (attempt {self.attempt})"
        if session is not None:
            reason = f"resumed its conversation (attempt {self.attempt})"
        write_state("starting", attempt=self.attempt, failures=self.failures, exit_code=None, reason=reason,
                    prompts=0, activity=self.attempt_t0, started=self.attempt_t0, resumed=session is not None,
                    over_budget=None)
        target = C.tmux_target(self.session)
        cmd = agent_command(self.attempt, argv, task_file)
        typed = launch.delivery == "type" and bool(launch.task) and session is None
        if self.attempt > 1 and tmux("has-session", "-t", f"={self.session}", check=False).exit_code == 0:
            tmux("respawn-pane", "-k", "-t", target, "-c", launch.workdir, "--", *cmd)
        else:
            tmux("-f", TMUX_CONF, "new-session", "-d", "-s", self.session, "-x", "140", "-y", "45",
                 "-c", launch.workdir, "--", *cmd)
        if not self.hooks and not typed:  # (a typed task first: the loop reports it once typed)
            self._report_started()
        if typed:
            # From a file (tmux's command line holds 16 KiB), once the agent's terminal is set up.
            _replace(TYPED_FILE, typed_text(self.session, self.attempt, launch.task))
            # (not checked: an agent that ended at once has no pane to type into; the loop sees it end)
            tmux("load-buffer", "-b", "sandbox-task", TYPED_FILE, ";",
                 "paste-buffer", "-p", "-d", "-r", "-b", "sandbox-task", "-t", target, ";",
                 "send-keys", "-t", target, "Enter", check=False)

    def _report_started(self) -> None:
        """A hook-less agent just (re)started: ``busy`` (its screen is being drawn) as soon as the pane's
        wrapper has started it, without waiting for the loop's first look (a spawn waits on this)."""
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            if _agent_running(self.attempt):
                write_state("busy", activity=time.time())
                return
            time.sleep(0.002)

    def on_exit(self, code: int) -> float | None:
        """The agent's process ended: a delay before restarting it, or None to stay down."""
        history = list(read_state().get("history") or [])[-19:]
        history.append({"attempt": self.attempt, "exit_code": code, "started": self.attempt_t0, "ended": time.time()})
        write_state(None, history=history)
        if code == 0:
            write_state("exited", exit_code=0, reason="agent exited cleanly")
            return None
        stable = time.time() - self.attempt_t0 >= self.stable_after
        if stable:
            self.failures = 0  # it ran fine for a while: this failure starts a new count
        self.failures += 1
        if self.failures > self.retries:
            write_state("failed", exit_code=code, failures=self.failures,
                        reason=f"gave up after {self.failures} failed attempts (last exit {code})")
            return None
        # The first failure after a stable run restarts at once (a one-off); a crash loop backs off.
        delay = 0.0 if stable else backoff(self.failures, self.base)
        write_state("starting", exit_code=code, failures=self.failures,
                    reason=f"exit {code}: restart {self.failures}/{self.retries} in {delay:.1f}s")
        return delay

    def stop_agent(self, pid: int, reason: str) -> None:
        write_state("stopped", reason=reason)
        if pid:
            _kill_agent(pid)

    def can_park(self) -> bool:
        """Whether a quiet agent may be parked (see PARK): a hook-less agent under this class (a
        subclass with a clock of its own, headless mode, never is)."""
        return not self.hooks and not self.needs_tick and type(self).tick is Supervisor.tick

    def run(self) -> int:
        restart_at: float | None = None
        last_activity = 0.0
        period = TICK   # adaptive: TICK after a change, x2 a quiet tick up to TICK_MAX
        quiet_since = time.time()  # since when nothing changed (the state, the pane's activity)
        if self.parked is not None:
            last_activity = float(self.parked.get("last_activity") or 0)
            SCREEN.update(self.parked.get("screen") or {})
            woke = True  # (resumed because something happened or a limit is due: look at once)
        elif self.circuit_open:
            write_state("failed", failures=self.failures,
                        reason=read_state().get("reason") or f"gave up after {self.failures} failed attempts")
            return self.idle_forever()
        else:
            self.start_agent()
            woke = False
        needs_clock = not self.hooks or bool(self.max_time or self.idle_timeout) or self.needs_tick
        seen: tuple[Any, ...] = ()
        while True:
            if self.parked is not None:
                self.parked = None  # (the first round: no sleep)
            else:
                wait = (TICK if self.needs_tick else period) if needs_clock else NAP
                if not self.hooks and time.time() - self.attempt_t0 < 2.0:
                    wait = 0.02  # a hook-less agent just (re)started: report it ready without delay
                if restart_at is not None:
                    wait = max(0.0, restart_at - time.time())
                woke = _sleep(wait)  # until a hook's signal, or the clock
            now = time.time()
            self.tick(now)
            if restart_at is not None:
                if now >= restart_at:
                    restart_at = None
                    try:
                        self.start_agent()
                    except SpawnFailed:
                        self.attempt -= 1
                        restart_at = now + TICK  # (the pids limit: try again in a moment)
                    period, quiet_since = TICK, time.time()
                continue
            try:
                pane = _pane(self.session)
                over = read_state().get(C.S.OVER_BUDGET) if self.launch.max_cost else None
                if over:  # a hook saw the cost estimate pass --max-cost: stop, keep the work
                    self.stop_agent(pane["pid"] if pane and not pane["dead"] else 0, str(over))
                    return self.idle_forever()
                if pane is None or pane["dead"]:
                    restart_at = self.on_exit(_exit_code(self.attempt, pane))
                    if restart_at is None:
                        return self.idle_forever()
                    restart_at += now
                    continue
                state = read_state()
                activity = float(state.get("activity") or 0)
                if not self.hooks or state.get("state") == "busy":
                    # Claude Code redraws its screen while idle: with hooks, pane output counts only when busy.
                    activity = max(activity, pane["activity"])
                if self.max_time and now - self.t0 >= self.max_time:
                    self.stop_agent(pane["pid"], f"max-time {self.max_time:g}s reached")
                    return self.idle_forever()
                if self.idle_timeout and now - activity >= self.idle_timeout:
                    self.stop_agent(pane["pid"], f"idle-timeout {self.idle_timeout:g}s reached")
                    return self.idle_forever()
                new = None
                if not self.hooks and state.get("state") not in TERMINAL and _agent_running(self.attempt):
                    new = _fallback_state(self.session, pane, now)  # hook-less agents: the documented fallback
                if (new and new != state.get("state")) or activity > last_activity + 0.5:
                    write_state(new, activity=activity)
                    last_activity = activity
                now_seen = (new or state.get("state"), pane["activity"], pane["attached"])
                if woke or now_seen != seen:
                    period, quiet_since, seen = TICK, now, now_seen
                else:
                    period = min(TICK_MAX, period * 2)
                    if (now - quiet_since >= PARK_AFTER and new in ("idle", "waiting") and not pane["attached"]
                            and self.can_park()):
                        self.park(pane, last_activity)  # (returns only when it could not)
                        period, quiet_since = TICK, time.time()
            except SpawnFailed:
                continue  # no process could start (the pids limit): look again at the next tick, never give up

    def park(self, pane: dict[str, Any], last_activity: float) -> None:
        """Hand over to ``PARK`` (an exec: same pid, no Python left) until something happens: a hook's
        signal, the pane's next output, the next time limit (or ``PARK_NAP``); then ``resume``."""
        now = time.time()
        due = [float(PARK_NAP)]
        if self.max_time:
            due.append(self.t0 + self.max_time - now)
        if self.idle_timeout:
            due.append(last_activity + self.idle_timeout - now)
        nap = max(1, int(min(due) + 0.999))
        expect = f"0|{pane['activity']:.0f}|0"  # alive, the activity, no client: what it must still be
        try:
            _replace(PARK_FILE, json.dumps({
                "t0": self.t0, "attempt": self.attempt, "failures": self.failures, "attempt_t0": self.attempt_t0,
                "last_activity": last_activity, "screen": dict(SCREEN), "at": now}))
            # ($0: its command line still names the init, for whoever looks for it: ps, pkill -f)
            os.execv("/bin/sh", ["/bin/sh", "-c", PARK, "sandbox.inside init (parked)", self.session, expect, str(nap),
                                 sys.executable])
        except OSError:
            return  # (no /tmp space, no sh: stay resident, as before)

    def idle_forever(self) -> int:
        """Stay up with the pane (and its history) in place, so `logs` still works; a TERM ends it."""
        while True:
            time.sleep(3600)


# A parked supervisor (an exec of `Supervisor.park`: the init's pid, tini's child): $1 session, $2 what
# the pane must still be (dead|activity|attached), $3 seconds until the next time limit, $4 python.
# Its trap is set first; then one tmux call arms the activity alert (cleared, then monitor-activity on:
# it fires once, see tmux_wake_conf) and checks the pane, so that a change before the trap is not
# missed; then it waits for a signal or the clock, and execs the supervisor again (`init --resume`): a
# TERM (docker stop) through `init --resume --term`, which does what the resident init does on it.
PARK = (
    'p=$4; k=; back() { [ -n "$k" ] && kill "$k" 2>/dev/null; exec "$p" -m sandbox.inside init --resume "$@"; }; '
    'trap "back" URG; trap "back --term" TERM INT; '
    'now=$(tmux kill-session -C -t "=$1" \\; set -w -t "=$1:" monitor-activity on \\; '
    'list-panes -t "=$1:" -F "#{pane_dead}|#{window_activity}|#{session_attached}" 2>/dev/null); '
    '[ "$now" = "$2" ] || back; '
    'sleep "$3" & k=$!; wait "$k"; k=; back'
)


def install_wake() -> None:
    """tmux tells the supervisor at once when the agent's pane dies, keys are sent to it, a client
    attaches (see tmux_wake_conf): a WAKE_SIGNAL handled (not blocked: tmux and the agent would
    inherit a blocked mask) and turned into a readable pipe that the loop waits on."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(WAKE_SIGNAL, lambda signum, frame: None)
    WAKE.append(wake_r)


def _which(cmd: str, path: str) -> str | None:
    """``shutil.which`` without importing shutil (a resident init's memory, a warm start's time)."""
    if "/" in cmd:
        return cmd if os.access(cmd, os.X_OK) and not os.path.isdir(cmd) else None
    for d in path.split(os.pathsep):
        full = os.path.join(d or ".", cmd)
        if os.access(full, os.X_OK) and not os.path.isdir(full):
            return full
    return None


def _pooled() -> None:
    """A warm pool's container (``SANDBOX_POOL`` set, no launch document yet): started, no agent, no
    tmux. Waits for the claim: the host writes the launch document on the state mount and signals
    (``WAKE_SIGNAL``, forwarded by tini); a slow look catches a lost signal."""
    install_wake()
    write_state("pooled", reason="in the warm pool, waiting for a spawn to claim it")
    while not os.path.exists(C.STATE_LAUNCH_FILE):
        _sleep(NAP)


def _on_term(signum: int, frame: Any) -> None:
    """SIGTERM (docker stop): the agent is stopped, the tmux server with it; the init ends."""
    if read_state().get("state") not in ("failed", "stopped"):
        write_state("stopped", reason="stopped")
    write_state(None, ended=time.time())  # (a running container with this set has a new init coming)
    tmux("kill-server", check=False)
    sys.exit(0)


def resume(argv: list[str]) -> int:
    """The supervisor again after a park (see PARK): same pid, same environment (the secrets in it);
    nothing is set up or started again; ``--term``: it was a SIGTERM."""
    if "--term" in argv:
        _on_term(signal.SIGTERM, None)
    install_wake()
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    # Off again: armed while parked only (it would wake the loop at each output). One call.
    launch = C.Launch.from_json(_read(LAUNCH))
    tmux("set", "-w", "-t", C.tmux_target(launch.session), "monitor-activity", "off", check=False)
    try:
        parked = json.loads(_read(PARK_FILE))
    except (OSError, ValueError):
        parked = None
    if not isinstance(parked, dict):  # (cannot happen but by hand: start over as a container restart would)
        write_state("failed", reason="the supervisor lost its state while parked")
        return Supervisor(launch).idle_forever()
    return Supervisor(launch, parked).run()


def init() -> int:
    global LAUNCH
    if not os.path.exists(LAUNCH) and os.environ.get("SANDBOX_REPO"):
        from sandbox.inside import headless  # (only then: the resident init of a spawned agent stays light)

        return headless.main()
    if not os.path.exists(LAUNCH) and os.environ.get(C.POOL_ENV):
        _pooled()
        LAUNCH = C.STATE_LAUNCH_FILE
    os.environ["SANDBOX_LAUNCH_FILE"] = LAUNCH  # (the hooks: the same document)
    launch = C.Launch.from_json(_read(LAUNCH))
    secrets: dict[str, str] = {}
    if os.path.exists(SECRETS):
        secrets = json.loads(_read(SECRETS))
    env = dict(os.environ)
    env.update(secrets)
    env["SANDBOX_NAME"] = launch.name
    if not WAKE:
        install_wake()

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)

    sup = Supervisor(launch)
    try:
        _replace(INIT_PID, str(os.getpid()))
    except OSError:
        pass
    if not sup.circuit_open:  # at once: what a previous run of the container left is not the state now
        write_state("starting", ended=None, reason="container started")
    else:
        write_state(None, ended=None)
    argv = sup.argv
    if launch.mock_model:
        _start_mock(launch, env)
    if launch.claude:
        env["CLAUDE_CONFIG_DIR"] = claude_dir()
    _setup_home(launch, env.get("ANTHROPIC_API_KEY"))
    os.environ.clear()
    os.environ.update(env)
    if _which(argv[0], env.get("PATH", os.defpath)) is None:
        write_state("failed", attempt=1, reason=f"{argv[0]}: command not found in the image", exit_code=127)
        return sup.idle_forever()  # (up as `failed`: exiting would have the engine restart it, unless-stopped)
    return sup.run()


def _last_answer(payload: dict[str, Any]) -> str:
    """The assistant's text for the last prompt: from the Stop payload, else its transcript."""
    direct = payload.get("last_assistant_message")
    if isinstance(direct, str) and direct.strip():
        return direct
    path = payload.get("transcript_path")
    if not isinstance(path, str):
        return ""
    deadline = time.monotonic() + 2.0
    while True:
        texts: list[str] = []
        try:
            lines = _read(path).splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            msg = entry.get("message") if isinstance(entry, dict) else None
            if not isinstance(msg, dict):
                continue
            content = msg.get("content")
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
            kinds = {b.get("type") for b in blocks if isinstance(b, dict)}
            if entry.get("type") == "user" and "text" in kinds and "tool_result" not in kinds:
                texts = []  # a new prompt: the answer starts after it
            elif entry.get("type") == "assistant":
                texts += [str(b["text"]) for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
        if texts or time.monotonic() > deadline:
            return "\n".join(texts)
        time.sleep(0.1)


def _usage(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The token totals per model of Claude Code's transcript (``transcript_path``), read on from where
    the last hook run stopped (``TALLY``, under a lock: hooks may run side by side)."""
    path = payload.get("transcript_path")
    if not isinstance(path, str) or not path:
        return None
    from sandbox import usage as U  # (not in the resident init)

    try:
        fd = os.open(TALLY + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        fd = -1
    try:
        try:
            tally = U.Tally(json.loads(_read(TALLY)))
        except (OSError, ValueError):
            tally = U.Tally()
        try:
            with open(path, "rb") as f:
                f.seek(tally.offsets.get(path, 0))
                data = f.read(TRANSCRIPT_CAP)
        except OSError:
            return None
        tally.feed(path, data)
        _replace(TALLY, tally.to_json())
        return tally.usage()
    finally:
        if fd >= 0:
            os.close(fd)


def _await_in_transcript(payload: dict[str, Any], timeout: float = 1.0) -> None:
    """PreToolUse: the model call that asked for this tool may reach the transcript just after the hook
    starts; its usage must count before the budget lets the tool run. Wait (briefly, bounded) until the
    tool call's id is in the transcript's tail."""
    path, needle = payload.get("transcript_path"), payload.get("tool_use_id")
    if not isinstance(path, str) or not isinstance(needle, str) or not needle:
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 1024 * 1024))
                if needle.encode() in f.read():
                    return
        except OSError:
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)


def _usage_safely(payload: dict[str, Any]) -> dict[str, Any] | None:
    """``_usage``, never failing the hook (the state must move on whatever the transcript holds)."""
    try:
        return _usage(payload)
    except Exception:  # noqa: BLE001
        return None


def _wake_init() -> None:
    try:
        os.kill(int(_read(INIT_PID).strip()), WAKE_SIGNAL)
    except (OSError, ValueError):
        pass


# The events after which the transcript may hold a new model answer: the tokens are totalled then.
USAGE_EVENTS = ("PreToolUse", "PostToolUse", "Stop", "SubagentStop", "Notification")


def hook(event: str) -> int:
    try:
        raw = sys.stdin.read()
        payload = json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        payload = {}
    payload = payload if isinstance(payload, dict) else {}
    state = HOOK_STATES.get(event)
    if state is None:
        return 0
    current = read_state()
    if current.get("state") in TERMINAL:
        return 0
    fields: dict[str, Any] = {"event": event, "activity": time.time()}
    sid, transcript = payload.get("session_id"), payload.get("transcript_path")
    if isinstance(sid, str) and SESSION_RE.match(sid) and isinstance(transcript, str) and len(transcript) < 4096:
        fields[C.S.SESSION_ID], fields[C.S.TRANSCRIPT] = sid, transcript  # what a restart resumes
    if event == "UserPromptSubmit":
        fields["prompts"] = int(current.get("prompts", 0)) + 1
    elif event == "SessionStart" and int(current.get("prompts", 0)) == 0 and not current.get(C.S.RESUMED) \
            and payload.get("source") != "resume":
        # A task given as the prompt argument is submitted right after start: busy, not idle.
        launch = C.Launch.from_json(_read(LAUNCH))
        if launch.task and launch.delivery == "arg":
            state = "busy"
    elif event == "Notification":
        message = str(payload.get("message") or "")
        kind = str(payload.get("notification_type") or "")
        fields["notification"] = message[:300]
        if kind == "idle_prompt" or "waiting for your input" in message:
            return 0  # Claude Code's reminder after a long idle: still idle, nothing new is asked
    elif event == "Stop":
        answer = _last_answer(payload)
        _replace(os.path.join(STATE_DIR, C.REPLY_FILE), answer)
        fields["stops"] = int(current.get("stops", 0)) + 1
        if answer.rstrip().endswith("?"):
            state = "waiting"  # the turn ended with a question for the user
            fields["reason"] = "question"
    over = None
    if event in USAGE_EVENTS:
        if event == "PreToolUse":
            _await_in_transcript(payload)
        used = _usage_safely(payload)
        if event == "Stop" and used is not None:
            # The turn's last answer may reach the transcript just after this hook starts (as for
            # _last_answer): read again briefly until its calls are there.
            deadline = time.monotonic() + 1.0
            while used == (current.get(C.S.USAGE) or {}) and time.monotonic() < deadline:
                time.sleep(0.1)
                used = _usage_safely(payload) or used
        if used is not None:
            fields[C.S.USAGE] = used
            try:
                launch = C.Launch.from_json(_read(LAUNCH))
            except (OSError, ValueError, TypeError):
                launch = None
            if launch is not None and launch.max_cost:
                from sandbox import usage as U

                over = U.Budget(float(launch.max_cost), list(launch.prices or [])).exceeded(used)
    if over:
        fields[C.S.OVER_BUDGET] = over
    if state != "waiting":
        fields["reason"] = None
    write_state(state, **fields)
    if over:
        _wake_init()  # the supervisor stops the agent
        if event == "PreToolUse":
            print(f"sandbox: {over}: the agent is being stopped", file=sys.stderr)
            return 2  # Claude Code does not run this tool
    return 0


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python3 -m sandbox.inside init|hook EVENT|export [...]", file=sys.stderr)
        return 2
    if argv[0] == "init":
        try:
            return resume(argv[2:]) if argv[1:2] == ["--resume"] else init()
        except Exception as err:  # noqa: BLE001 - the container's main process: never exit on a fault
            # (exiting would have the engine restart the container without end: restart policy unless-stopped)
            try:
                write_state("failed", reason=f"the init failed: {type(err).__name__}: {err}"[:300])
            except Exception:  # noqa: BLE001,S110 - nothing more to say
                pass
            while True:
                time.sleep(3600)
    if argv[0] == "hook":
        return hook(argv[1] if len(argv) > 1 else "")
    if argv[0] == "export":  # (a separate module: the resident init never loads it)
        from sandbox.inside.export import export

        return export(argv[1:])
    if argv[0] == "credential":  # headless mode's git credential helper
        from sandbox.inside.headless import credential

        return credential(argv[1:])
    if argv[0] == "facts":  # for `sandbox doctor`
        from sandbox.inside.facts import facts

        return facts(argv[1:])
    print(f"unknown command {argv[0]!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
