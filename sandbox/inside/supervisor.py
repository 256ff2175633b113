"""The supervisor: the container's resident init (``python3 -m sandbox.inside init``), see the package's
docstring. ``init`` sets up and starts the agent's pane, ``Supervisor`` keeps it (restarts with backoff, time
limits, the fallback state of hook-less agents, the agent's report merged into the state file), ``PARK``
execs a tiny ``sh`` while nothing happens and ``resume`` comes back (standard library only)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import sys
import time

from sandbox import contract as C
from sandbox import inside as I
from sandbox.contract import S
from sandbox.inside import (EARLY_TERM, INIT_PID, PARK_FILE, SECRETS, SESSION_RE, SUP_DIR, TMUX_CONF, WAKE_SIGNAL,
                            SpawnFailed, _EARLY, _beat, _nonempty, _read, _read_report, _replace, agent_argv,
                            as_agent_call, prepare, read_state, tmux, write_state)
from sandbox.inside.home import _setup_home, _start_mock, claude_dir, tmux_wake_conf, write_tmux_conf

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any



# -- the supervisor ---------------------------------------------------------------------------
# Fallback state for agents without hooks: the pane's last output time and a few prompt patterns.
QUIET = 2.0  # seconds without pane output before a hook-less agent counts as idle
PROMPT_PATTERNS = re.compile(
    r"(\(y/n\)|\[y/n\]|\[Y/n\]|\[y/N\]|\(yes/no\)|Do you want to|Allow .*\?|Press Enter|Continue\?|Approve)",
    re.IGNORECASE,
)
TICK = 1.0    # the loop's period when something needs a clock (fallback state, time limits) and changes
TICK_MAX = 4.0  # ... growing (x2 a quiet tick) to this while nothing changes; back to TICK on any change
NAP = 60.0    # otherwise: only a hook's signal (or this safety net) wakes it
PARK_AFTER = 6.0  # a hook-less agent idle (or waiting) this long, unchanged, is parked (see PARK)
PARK_NAP = 300    # a parked supervisor looks again at least this often (s), whatever happens


def _sleep(seconds: float) -> bool:
    """Sleep, cut short by a signal (``WAKE_SIGNAL`` from one of tmux's hooks): whether it was."""
    if not I.WAKE:
        time.sleep(seconds)
        return False
    ready, _, _ = select.select(I.WAKE, [], [], seconds)
    for fd in ready:
        try:
            os.read(fd, 4096)
        except BlockingIOError:
            pass
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


TASK_FILE = SUP_DIR + "/task"            # the task, for the wrapper (the agent) to pass as the last argument
TYPED_FILE = SUP_DIR + "/task-typed"     # the task as typed (loaded into a tmux buffer)

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
    """The pane's command: the wrapper, as the agent (``agent_argv``)."""
    return agent_argv(["/bin/sh", "-c", WRAPPER, "sandbox-agent", str(attempt), task_file, *argv])


# The setup's pane process ($1: the command, $2: SETUP_EXIT, where its exit code goes: tmux 3.3 does not
# always keep a dead pane's status): its output between two lines of ours; on success the screen
# is cleared, which tmux (scroll-on-clear) scrolls into the history, so the agent's pane, respawned over
# it, keeps all of it in the scrollback.
SETUP_WRAPPER = (
    'printf "sandbox: setup: %s\\n" "$1"; /bin/sh -c "$1"; c=$?; echo "$c" > "$2"; '
    'if [ $c = 0 ]; then echo "sandbox: setup done"; printf "\\033[H\\033[2J"; '
    'else echo "sandbox: setup failed (exit $c)"; fi; exit $c'
)
SETUP_EXIT = SUP_DIR + "/setup-exit"  # the supervisor's, writable by all (in its own dir: no link there)
SETUP_TAIL = 10  # last lines of a setup's output kept in the state file (a failed spawn shows them)

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
        return C.BUSY
    if SCREEN.get("activity") != pane["activity"]:
        tail = tmux("capture-pane", "-p", "-t", f"={session}:", check=False).text.rstrip().splitlines()[-3:]
        SCREEN.update(activity=pane["activity"],
                      state=C.WAITING if tail and PROMPT_PATTERNS.search("\n".join(tail)) else C.IDLE)
    return str(SCREEN["state"])



MERGED: list[Any] = [None]  # the report's (attempt, seq) merged last


_KINDS = {"str": (str,), "line": (str,), "int": (int,), "time": (int, float), "dict": (dict,)}  # (STATE_TYPES)


def merge_report() -> None:
    """What the agent's side reported (its hooks: busy/idle/waiting, activity, usage, …), merged into
    the state file, type-checked and bounded, for this attempt only; the state only while the agent
    runs (never out of an ended state). Untrusted: the agent may write anything there."""
    report = _read_report()
    cur = read_state()
    key = (report.get(S.ATTEMPT), report.get(S.SEQ))
    if not report or key == MERGED[0] or report.get(S.ATTEMPT) != cur.get(S.ATTEMPT):
        return
    MERGED[0] = key
    fields: dict[str, Any] = {}
    for name, kind in C.REPORTED.items():
        if name == S.STATE or name not in report:
            continue
        value = report[name]
        if value is None and name in (S.REASON, S.OVER_BUDGET):
            fields[name] = None
        elif isinstance(value, _KINDS[kind]) and not isinstance(value, bool):
            fields[name] = value[:300] if isinstance(value, str) and name != S.TRANSCRIPT else value
    if isinstance(fields.get(S.TRANSCRIPT), str) and len(fields[S.TRANSCRIPT]) >= 4096:
        del fields[S.TRANSCRIPT]
    state = report.get(S.STATE)
    if state not in (C.IDLE, C.BUSY, C.WAITING) or cur.get(S.STATE) in C.TERMINAL:
        state = None
    if cur.get(S.STATE) in C.TERMINAL:
        fields.pop(S.REASON, None)
    write_state(state, fields)


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
        self.attempt = int(prev.get(S.ATTEMPT, 0))
        self.failures = int(prev.get(S.FAILURES, 0))
        # `sandbox start`/`restart` (not the engine's restart policy); a resumed supervisor started nothing
        by_user = parked is None and os.path.exists(C.START_FILE)
        if by_user:
            try:
                os.unlink(C.START_FILE)
            except OSError:
                pass
        if by_user or prev.get(S.STATE) in (None, C.STOPPED, C.EXITED, C.POOLED):
            self.failures = 0  # a first start, or started again by the user
        elif prev.get(S.STATE) != C.FAILED:
            self.failures += 1  # the container died under a live agent (the engine restarted it)
        self.circuit_open = not by_user and (prev.get(S.STATE) == C.FAILED or self.failures > self.retries)
        self.attempt_t0 = 0.0
        self.pane_made = False  # the setup made the session: the agent's first start respawns its pane
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
        sid, transcript = prev.get(S.SESSION_ID), prev.get(S.TRANSCRIPT)
        if not isinstance(sid, str) or not SESSION_RE.match(sid) or not isinstance(transcript, str):
            return None
        try:  # (as the agent: Claude Code keeps its transcripts in directories only its uid may enter)
            as_agent_call(_nonempty, transcript)
        except (OSError, RuntimeError):
            return None
        return sid

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
        write_state(C.STARTING, {S.ATTEMPT: self.attempt, S.FAILURES: self.failures, S.EXIT_CODE: None,
                                 S.REASON: reason, S.PROMPTS: 0, S.ACTIVITY: self.attempt_t0,
                                 S.STARTED: self.attempt_t0, S.RESUMED: session is not None, S.OVER_BUDGET: None})
        target = C.tmux_target(self.session)
        cmd = agent_command(self.attempt, argv, task_file)
        typed = launch.delivery == "type" and bool(launch.task) and session is None
        if (self.attempt > 1 or self.pane_made) and \
                tmux("has-session", "-t", f"={self.session}", check=False).exit_code == 0:
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
            tmux(*C.tmux_paste_file(target, TYPED_FILE, buffer="sandbox-task"), check=False)

    def setup_due(self) -> bool:
        """Whether ``[setup] run`` runs at this start of the container: there is one, the circuit is closed,
        and it never succeeded here (the state file, the supervisor's own, says) or it reruns every start."""
        if not self.launch.setup or self.circuit_open:
            return False
        last = read_state().get(S.SETUP)
        return bool(self.launch.setup_rerun) or not (isinstance(last, dict) and last.get(S.EXIT_CODE) == 0)

    def run_setup(self) -> bool:
        """``[setup] run`` in the agent's pane (so its output is in the scrollback, `sandbox logs`), as the
        agent, in the workspace, with the agent's environment; waited for (woken by tmux's pane-died hook),
        killed past ``setup_timeout``. Its exit code (tmux's, of the pane: never a file the agent writes)
        and last lines go into the state file; a failure is ``failed`` with its reason. True: it passed."""
        launch = self.launch
        started = time.time()
        timeout = float(launch.setup_timeout or 0) or 900.0
        write_state(C.STARTING, {S.REASON: f"setup: {launch.setup}"[:300],
                                 S.SETUP: {S.RUNNING: True, S.STARTED: started}})
        try:
            os.unlink(SETUP_EXIT)
        except FileNotFoundError:
            pass
        fd = os.open(SETUP_EXIT, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o622)  # (the supervisor's file, which the setup's uid may only write: no CAP_CHOWN here)
        os.close(fd)
        cmd = agent_argv(["/bin/sh", "-c", SETUP_WRAPPER, "sandbox-setup", launch.setup, SETUP_EXIT])
        tmux("-f", TMUX_CONF, "new-session", "-d", "-s", self.session, "-x", "140", "-y", "45",
             "-c", launch.workdir, "--", *cmd)
        self.pane_made = True
        timed_out = False
        while True:
            pane = _pane(self.session)
            if pane is None or pane["dead"]:
                break
            if not timed_out and time.time() - started >= timeout:
                timed_out = True
                _kill_agent(pane["pid"])
                continue
            _sleep(1.0)
            _beat()
        code = -1 if pane is None or pane["code"] is None else int(pane["code"])
        try:
            written = _read(SETUP_EXIT).strip()
            if written.lstrip("-").isdigit() and not timed_out:
                code = int(written)
        except OSError:
            pass
        lines = tmux("capture-pane", "-p", "-J", "-S", "-2000", "-t", C.tmux_target(self.session), check=False).text
        tail = [ln.rstrip()[:300] for ln in lines.splitlines()
                if ln.strip() and not ln.startswith(("Pane is dead", "sandbox: setup"))][-SETUP_TAIL:]
        record = {S.EXIT_CODE: code, S.SECONDS: round(time.time() - started, 3), S.ENDED: time.time(), S.TAIL: tail}
        if code == 0 and not timed_out:
            write_state(C.STARTING, {S.REASON: "setup done", S.SETUP: record})
            self.t0 = time.time()  # (max_time is the agent's own time)
            return True
        why = f"timed out after {timeout:g}s" if timed_out else f"exit {code}"
        write_state(C.FAILED, {S.EXIT_CODE: code, S.SETUP: record,
                               S.REASON: f"setup failed ({why}): {tail[-1] if tail else 'no output'}"[:300]})
        return False

    def _report_started(self) -> None:
        """A hook-less agent just (re)started: ``busy`` (its screen is being drawn) as soon as the pane's
        wrapper has started it, without waiting for the loop's first look (a spawn waits on this)."""
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            if _agent_running(self.attempt):
                write_state(C.BUSY, {S.ACTIVITY: time.time()})
                return
            time.sleep(0.002)

    def on_exit(self, code: int) -> float | None:
        """The agent's process ended: a delay before restarting it, or None to stay down."""
        history = list(read_state().get(S.HISTORY) or [])[-19:]
        history.append({S.ATTEMPT: self.attempt, S.EXIT_CODE: code, S.STARTED: self.attempt_t0, S.ENDED: time.time()})
        write_state(None, {S.HISTORY: history})
        if code == 0:
            write_state(C.EXITED, {S.EXIT_CODE: 0, S.REASON: "agent exited cleanly"})
            return None
        stable = time.time() - self.attempt_t0 >= self.stable_after
        if stable:
            self.failures = 0  # it ran fine for a while: this failure starts a new count
        self.failures += 1
        if self.failures > self.retries:
            write_state(C.FAILED, {S.EXIT_CODE: code, S.FAILURES: self.failures,
                                   S.REASON: f"gave up after {self.failures} failed attempts (last exit {code})"})
            return None
        # The first failure after a stable run restarts at once (a one-off); a crash loop backs off.
        delay = 0.0 if stable else backoff(self.failures, self.base)
        write_state(C.STARTING, {S.EXIT_CODE: code, S.FAILURES: self.failures,
                                 S.REASON: f"exit {code}: restart {self.failures}/{self.retries} in {delay:.1f}s"})
        return delay

    def stop_agent(self, pid: int, reason: str) -> None:
        write_state(C.STOPPED, {S.REASON: reason})
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
            reason = read_state().get(S.REASON) or f"gave up after {self.failures} failed attempts"
            write_state(C.FAILED, {S.FAILURES: self.failures, S.REASON: reason})
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
            if self.hooks:
                merge_report()
            _beat()
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
                over = read_state().get(S.OVER_BUDGET) if self.launch.max_cost else None
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
                activity = float(state.get(S.ACTIVITY) or 0)
                if not self.hooks or state.get(S.STATE) == C.BUSY:
                    # Claude Code redraws its screen while idle: with hooks, pane output counts only when busy.
                    activity = max(activity, pane["activity"])
                if self.max_time and now - self.t0 >= self.max_time:
                    self.stop_agent(pane["pid"], f"max-time {self.max_time:g}s reached")
                    return self.idle_forever()
                if self.idle_timeout and now - activity >= self.idle_timeout:
                    self.stop_agent(pane["pid"], f"idle-timeout {self.idle_timeout:g}s reached")
                    return self.idle_forever()
                new = None
                if not self.hooks and state.get(S.STATE) not in C.TERMINAL and _agent_running(self.attempt):
                    new = _fallback_state(self.session, pane, now)  # hook-less agents: the documented fallback
                if (new and new != state.get(S.STATE)) or activity > last_activity + 0.5:
                    write_state(new, {S.ACTIVITY: activity})
                    last_activity = activity
                now_seen = (new or state.get(S.STATE), pane["activity"], pane["attached"])
                if woke or now_seen != seen:
                    period, quiet_since, seen = TICK, now, now_seen
                else:
                    period = min(TICK_MAX, period * 2)
                    if (now - quiet_since >= PARK_AFTER and new in (C.IDLE, C.WAITING) and not pane["attached"]
                            and self.can_park()):
                        self.park(pane, last_activity)  # (returns only when it could not)
                        period, quiet_since = TICK, time.time()
            except SpawnFailed:
                continue  # no process could start (the pids limit): look again at the next tick, never give up

    def park(self, pane: dict[str, Any], last_activity: float) -> None:
        """Hand over to ``PARK`` (an exec: same pid, no Python left) until something happens: a hook's
        signal, the pane's next output, the next time limit (or ``PARK_NAP``); then ``resume``."""
        now = time.time()
        due = [float(PARK_NAP), C.HEARTBEAT]  # (a resume writes the heartbeat)
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
            _sleep(C.HEARTBEAT)
            _beat()


# A parked supervisor (an exec of `Supervisor.park`: the init's pid, tini's child): $1 session, $2 what
# the pane must still be (dead|activity|attached), $3 seconds until the next time limit, $4 python.
# Its trap is set first; then one tmux call arms the activity alert (cleared, then monitor-activity on:
# it fires once, see tmux_wake_conf) and checks the pane, so that a change before the trap is not
# missed; then it waits for a signal or the clock, and execs the supervisor again (`init --resume`): a
# TERM (docker stop) through `init --resume --term`, which does what the resident init does on it.
PARK = (
    'p=$4; k=; back() { [ -n "$k" ] && kill "$k" 2>/dev/null; exec "$p" -P -s -m sandbox.inside init --resume "$@"; }; '
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
    I.WAKE.append(wake_r)


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
    write_state(C.POOLED, {S.REASON: "in the warm pool, waiting for a spawn to claim it"})
    while not os.path.exists(C.STATE_LAUNCH_FILE):
        _sleep(C.HEARTBEAT)
        _beat()


def _on_term(signum: int, frame: Any) -> None:
    """SIGTERM (docker stop): the agent is stopped, the tmux server with it; the init ends."""
    if read_state().get(S.STATE) not in (C.FAILED, C.STOPPED):
        write_state(C.STOPPED, {S.REASON: "stopped"})
    write_state(None, {S.ENDED: time.time()})  # (a running container with this set has a new init coming)
    try:
        tmux("kill-server", check=False)
    except SpawnFailed:  # (no fork left: a fork bomb at the pids limit) everything this init may signal goes
        os.kill(-1, signal.SIGKILL)  # (the container is stopping; kill(-1) spares this process and tini)
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
    launch = C.Launch.from_json(_read(I.LAUNCH))
    prepare(launch)
    tmux("set", "-w", "-t", C.tmux_target(launch.session), "monitor-activity", "off", check=False)
    try:
        parked = json.loads(_read(PARK_FILE))
    except (OSError, ValueError):
        parked = None
    if not isinstance(parked, dict):  # (cannot happen but by hand: start over as a container restart would)
        write_state(C.FAILED, {S.REASON: "the supervisor lost its state while parked"})
        return Supervisor(launch).idle_forever()
    return Supervisor(launch, parked).run()


def init() -> int:
    """The init of a spawned agent's container (a launch document; ``main`` sends a headless one to
    ``sandbox.inside.headless``)."""
    if _EARLY:  # not headless after all (a launch file): a SIGTERM acts as it always did
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if EARLY_TERM:
            os.kill(os.getpid(), signal.SIGTERM)
    if not os.path.exists(I.LAUNCH) and os.environ.get(C.POOL_ENV):
        _pooled()
        I.LAUNCH = C.STATE_LAUNCH_FILE
    os.environ[C.LAUNCH_ENV] = I.LAUNCH  # (the hooks: the same document)
    launch = C.Launch.from_json(_read(I.LAUNCH))
    secrets: dict[str, str] = {}
    if os.path.exists(SECRETS):
        secrets = json.loads(_read(SECRETS))
    env = dict(os.environ)
    env.update(secrets)
    env[C.H.NAME] = launch.name
    if not I.WAKE:
        install_wake()

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)

    prepare(launch)
    env["TMUX_TMPDIR"] = SUP_DIR  # (the supervisor's tmux; the agent's pane goes without it: contract.as_agent)
    write_tmux_conf(os.getpid())
    try:
        _replace(INIT_PID, str(os.getpid()))
    except OSError:
        pass
    sup = Supervisor(launch)
    if not sup.circuit_open:  # at once: what a previous run of the container left is not the state now
        write_state(C.STARTING, {S.ENDED: None, S.REASON: "container started"})
    else:
        write_state(None, {S.ENDED: None})
    argv = sup.argv
    if launch.mock_model:
        _start_mock(launch, env)
    if launch.claude:
        env["CLAUDE_CONFIG_DIR"] = claude_dir()
    os.environ.clear()
    os.environ.update(env)
    as_agent_call(_setup_home, launch, env.get("ANTHROPIC_API_KEY"))
    os.environ.clear()
    os.environ.update(env)
    if _which(argv[0], env.get("PATH", os.defpath)) is None:
        write_state(C.FAILED, {S.ATTEMPT: 1, S.REASON: f"{argv[0]}: command not found in the image", S.EXIT_CODE: 127})
        return sup.idle_forever()  # (up as `failed`: exiting would have the engine restart it, unless-stopped)
    if sup.setup_due() and not sup.run_setup():
        return sup.idle_forever()  # (its pane and output stay: `sandbox logs`; a start by the user runs it again)
    return sup.run()
