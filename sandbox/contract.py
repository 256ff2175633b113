"""What crosses the boundary between the host and the agent's container (standard library only;
imported by the host's modules and by ``sandbox.inside``, which runs in every container).

- **Paths** inside the container.
- **The launch document** (``Launch``): written by the host before start (``launch.json``), read by the
  container's init and hooks.
- **The state file** (``state.json`` in the state dir): written by the container, read by the host as
  untrusted input (``sandbox.agentfiles``). Its fields and values are named here.
- **tmux argv** for what both sides type into a pane (a literal paste), so the escaping lives once.
- **``CommandResult``**: what running a command gives, on either side (host and container).
- **The export**: the agent's git lives in the container's side of the boundary — its own repository
  (``AGENT_GIT``, a directory the host creates once and never runs git in again) whose objects borrow
  the host repository's store through a read-only mount. The host reads the agent's work only as a
  pack that ``EXPORT`` produces inside a container and the host's own ``git fetch`` verifies; the refs
  it advertises are ``EXPORT_HEAD`` (the agent's HEAD) and ``EXPORT_WIP`` (the whole workspace).
"""

from __future__ import annotations

import json
from collections import namedtuple
from dataclasses import asdict, dataclass, field, fields

TYPE_CHECKING = False  # (typing costs memory in the resident init; annotations are strings anyway)
if TYPE_CHECKING:
    from typing import Any

# -- paths ------------------------------------------------------------------------------------------
LAUNCH_DIR = "/var/lib/sandbox"                # launch.json, secrets.json (copied in before start)
LAUNCH_FILE = LAUNCH_DIR + "/launch.json"
SECRETS_FILE = LAUNCH_DIR + "/secrets.json"    # API keys: mode 0400, the agent's uid
START_FILE = LAUNCH_DIR + "/start.json"        # copied in by `sandbox start`: started by the user (the
                                               # failure count and the circuit breaker start afresh)
STATE_MOUNT = "/run/sandbox-state"             # the per-agent state dir (host: data_dir/state/NAME)
STATE_FILE = "state.json"                      # in STATE_MOUNT
STATE_LAUNCH = "launch.json"                   # in STATE_MOUNT: the launch document, written there by the
STATE_LAUNCH_FILE = STATE_MOUNT + "/" + STATE_LAUNCH  # host before start (or a warm pool's claim)
LAUNCH_ENV = "SANDBOX_LAUNCH_FILE"             # names another launch document (headless: the supervisor's);
STATE_DIR_ENV = "SANDBOX_STATE_DIR"            # another state dir: for the init and the hooks it starts
POOL_ENV = "SANDBOX_POOL"                      # set on a warm pool's container: the init waits for a claim
POOLED = "pooled"                              # its state until then (never an agent's)
WAKE_SIGNAL = "SIGURG"  # what wakes the init (tmux's hooks, a pool's claim): ignored by default, so never fatal
AGENT_STATE = "agent"                          # in STATE_MOUNT: the agent's side, which its uid writes (the
AGENT_STATE_DIR = STATE_MOUNT + "/" + AGENT_STATE  # hooks' REPORT_FILE, REPLY_FILE, Claude Code's config dir);
REPORT_FILE = "report.json"                    # STATE_FILE itself is the supervisor's alone (it merges the report)
REPLY_FILE = "reply.txt"                       # in AGENT_STATE_DIR: the last turn's answer (Claude Code)
# The supervisor's own directory in the container (root's, 0711: the agent enters nothing it does not name):
# the tmux server's socket (TMUX_TMPDIR: $SUPERVISOR_DIR/tmux-0/default, 0700), its config, the wake FIFO
SUPERVISOR_DIR = "/tmp/.sandbox"
WAKE_FIFO = SUPERVISOR_DIR + "/wake"           # a hook writes a byte here: the supervisor looks at once
HEARTBEAT = 60.0    # the supervisor writes STATE_FILE at least this often (s) while its agent is not ended
HEARTBEAT_STALE = 300.0  # no write for this long (s) in a running container: the supervisor stopped answering
# Capabilities the container keeps (all others dropped, no-new-privileges set), for its root supervisor
# alone: SETUID/SETGID to run the agent as its own uid:gid (setpriv), SETPCAP to clear the agent's
# bounding set, KILL to stop an agent of another uid. The agent's processes have none of them.
SUPERVISOR_CAPS = ("SETUID", "SETGID", "SETPCAP", "KILL")
# Headless mode started as root (`spawn --headless`, compose.yaml, Swarm): the init is the supervisor, the
# agent runs as SANDBOX_AGENT_UID, and only the supervisor holds the git credential — in its own git HOME
# (root's, 0700: the credential helper's config, a token given in the environment) — and pushes, only
# SANDBOX_PUSH_BRANCH, from its own bare clone (root's, readable: the agent's `origin`, fetched from,
# never pushed to). The agent's clone has no credential; its `git push` prints AGENTS_DO_NOT_PUSH.
HEADLESS_GIT_HOME = SUPERVISOR_DIR + "/git"
HEADLESS_MIRROR = SUPERVISOR_DIR + "/remote.git"
HEADLESS_AGENT = (1000, 1000)                  # the image's `agent` user: SANDBOX_AGENT_UID's default
AGENTS_DO_NOT_PUSH = "sandbox: agents do not push here: the supervisor pushes {branch} (claim, work in progress, final)"
AGENT_GIT = "/var/lib/sandbox-git"             # the agent's own git dir (host: data_dir/agent-git/SLUG/NAME)
GITFILE = "gitdir: " + AGENT_GIT + "\n"        # the workspace's .git file (mounted read-only over it)

# -- programs the host starts inside the container ----------------------------------------------------
# The agent writes its HOME (a user site: usercustomize.py, .pth files), its working directory and any file
# a PYTHON* variable could name: nothing of that may run in a program the host starts. So each runs the
# image's own interpreter by absolute path, isolated (`-I`: no PYTHON* variables, no user site, no cwd on
# sys.path; `-S`: no `site` at all), with code imported only from the image's root-owned copy (INSIDE_ROOT,
# put on sys.path explicitly), its cwd `/` (Engine.cli_exec, Engine.exec's workdir).
PYTHON = "/usr/bin/python3"
GIT = "/usr/bin/git"                           # the export's git, by absolute path (no PATH lookup)
INSIDE_ROOT = "/opt/sandbox"                   # the image's copy of the stdlib-only modules (root-owned)
NOBODY = "65534:65534"                         # who runs what needs none of the agent's files (the probes)
ISOLATED = [PYTHON, "-I", "-S", "-c",
            f"import sys; sys.path.insert(0, {INSIDE_ROOT!r}); from sandbox.inside import main; "
            "raise SystemExit(main(sys.argv[1:]))"]


def inside(*args: str) -> list[str]:
    """The argv of ``sandbox.inside ARGS`` run the isolated way (``ISOLATED``): for every program the host
    starts in an agent's container or a reader container over its files."""
    return [*ISOLATED, *args]


# -- the export ---------------------------------------------------------------------------------------
EXPORT = inside("export")                      # as the agent's uid: it reads the agent's files
PROBE = inside("probe")                        # + JSON: the isolated profile's egress probes (sandbox
                                               # doctor), as NOBODY: they need none of the agent's files
EXPORT_HEAD = "refs/heads/head"
EXPORT_WIP = "refs/heads/wip"


class CommandResult(namedtuple("CommandResult", "exit_code stdout stderr")):
    """What a finished command gave — on the host (``docker exec``, a local tmux) and inside the
    container (``sandbox.inside``'s tmux calls) alike: its exit code and its raw output."""

    __slots__ = ()
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        """``stdout`` decoded (UTF-8, undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")


# -- the launch document ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    """Everything the container's init needs to run the agent (``launch.json``)."""

    name: str
    session: str
    argv: list[str]
    workdir: str
    task: str = ""
    delivery: str = "arg"          # "arg": the task is in argv; "type": typed into the pane once it runs
    claude: bool = False           # Claude Code: first-run answers and hooks in $HOME
    mock_model: bool = False       # run the scripted model on 127.0.0.1 in the container
    mock_script: dict[str, Any] | None = None
    git_identity: dict[str, str] = field(default_factory=dict)
    retries: int = 3               # restarts after a non-zero exit, then `failed`
    backoff: float = 0.5           # first restart delay (s), doubled each time, jittered
    stable_after: float = 60.0     # an attempt that ran this long resets the failure count
    max_time: float = 0.0          # 0 = no limit
    idle_timeout: float = 0.0      # 0 = no limit
    max_cost: float = 0.0          # USD; 0 = no budget (stopped, work kept, when the estimate passes it)
    prices: list[Any] | None = None  # the price table (layers) the budget is judged with (sandbox.usage)
    resume: list[str] = field(default_factory=list)  # args instead of the task once a conversation exists
                                   # ("{session}": the id the hooks recorded), e.g. ["--resume", "{session}"]
    uid: int = 0                   # the agent's uid:gid: the supervisor (root) runs it so in the pane, with no
    gid: int = 0                   # capabilities; 0: as the supervisor itself (an image started with --user)
    setup: str = ""                # `[setup] run`: a shell command run in the pane, as the agent, in workdir,
    setup_rerun: bool = False      # before the agent: once (until it succeeded), or at each container start
    setup_timeout: float = 900.0   # seconds; past it the setup is killed (failed)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Launch:
        """The document a host wrote (fields this version does not know are ignored)."""
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known and v is not None})


# -- the state file -----------------------------------------------------------------------------------
class S:
    """The state file's fields (``state.json``): the container writes them, the host reads them."""

    STATE = "state"          # one of STATES
    TS = "ts"                # epoch seconds of the last write
    SINCE = "since"          # when STATE last changed
    ATTEMPT = "attempt"      # 1, 2, … (restarts by the supervisor)
    FAILURES = "failures"    # consecutive failed attempts
    EXIT_CODE = "exit_code"  # the agent's last exit code
    REASON = "reason"        # why it is stopped/failed/waiting (one line)
    ACTIVITY = "activity"    # epoch seconds of the last hook event or pane output
    STOPS = "stops"          # Claude Code turns ended (Stop hook)
    PROMPTS = "prompts"      # prompts submitted (UserPromptSubmit hook)
    EVENT = "event"          # the last hook event
    HISTORY = "history"      # [{attempt, exit_code, started, ended}], the last 20
    USAGE = "usage"          # {model: {input, output, cache_write, cache_read, calls}} (Claude Code's transcript)
    OVER_BUDGET = "over_budget"  # set by a hook when the cost estimate passed max_cost: the init stops the agent
    SESSION_ID = "session_id"  # Claude Code's conversation (hooks), resumed after a restart
    TRANSCRIPT = "transcript"  # its transcript file (in the container); resumed only while it exists
    RESUMED = "resumed"      # this attempt continues a recorded conversation (no task given again)
    ENDED = "ended"          # epoch s the container's init ended (SIGTERM); cleared by the next init
    NOTIFICATION = "notification"  # Claude Code's last Notification message (hooks)
    SETUP = "setup"          # the supervisor's: {exit_code, seconds, ended, tail} of the last `[setup] run`
                             # ({running: true, started} while it runs)
    STARTED = "started"      # epoch s this attempt started (also in HISTORY's entries and in SETUP)
    SECONDS = "seconds"      # in SETUP: how long it ran
    TAIL = "tail"            # in SETUP: its last lines
    RUNNING = "running"      # in SETUP: true while it runs
    SEQ = "seq"              # REPORT_FILE's own: one more at every report (the supervisor merges each once)
    # headless mode's (sandbox.inside.headless), what the host shows without a workspace of its own:
    NAME = "name"
    MODE = "mode"            # "headless"
    BRANCH = "branch"        # SANDBOX_PUSH_BRANCH
    TASK = "task"            # its first 200 characters
    TASK_INDEX = "task_index"
    RUN_ATTEMPT = "run_attempt"  # SANDBOX_ATTEMPT
    WORKDIR = "workdir"      # the agent's workspace in the container
    PUSHED = "pushed"        # the last commit pushed
    PUSHED_AT = "pushed_at"  # epoch s of that push


# The fields whose type is checked, each once: by the host (``agentfiles.parse_state``: "int", "time" —
# epoch seconds —, "line" — one line it prints; a field of another type is dropped) and by the supervisor
# for what the agent reports (REPORTED). The others are read with their own checks (``usage.clean``, …).
STATE_TYPES = {S.STATE: "line", S.REASON: "line", S.TS: "time", S.SINCE: "time", S.ACTIVITY: "time",
               S.ATTEMPT: "int", S.EXIT_CODE: "int", S.FAILURES: "int", S.STOPS: "int", S.PROMPTS: "int",
               S.EVENT: "str", S.SESSION_ID: "str", S.TRANSCRIPT: "str", S.USAGE: "dict", S.OVER_BUDGET: "str",
               S.NOTIFICATION: "str"}

# What the agent's side may report (REPORT_FILE, written by the hooks as the agent's uid): the supervisor
# merges these fields, type-checked, into STATE_FILE; everything else there is the supervisor's own.
REPORTED = {k: STATE_TYPES[k] for k in (S.STATE, S.EVENT, S.ACTIVITY, S.PROMPTS, S.STOPS, S.SESSION_ID,
                                        S.TRANSCRIPT, S.USAGE, S.OVER_BUDGET, S.NOTIFICATION, S.REASON)}


def as_agent(uid: int, gid: int, argv: list[str]) -> list[str]:
    """``argv`` run as the agent (util-linux's setpriv, from the root supervisor): its uid:gid, no
    supplementary groups, no capabilities (inheritable and bounding sets cleared), no_new_privs, and
    without the supervisor's tmux directory in its environment."""
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--", "env", "-u", "TMUX_TMPDIR", *argv]


STARTING, READY, IDLE, BUSY, WAITING = "starting", "ready", "idle", "busy", "waiting"
EXITED, FAILED, STOPPED = "exited", "failed", "stopped"
STATES = (STARTING, READY, IDLE, BUSY, WAITING, EXITED, FAILED, STOPPED)
TERMINAL = (EXITED, FAILED, STOPPED)   # the agent is not running (and will not be restarted)
ACCEPTS_INPUT = (READY, IDLE, BUSY, WAITING)


# -- tmux ---------------------------------------------------------------------------------------------
def tmux_literal(arg: str) -> str:
    """Protect an argv element from tmux's command parser: tmux treats an element ending in ';' as a
    command separator, and one ending in '\\;' as a literal ';' (dropping that backslash), so a
    trailing ';' is escaped and the text arrives byte-exact."""
    return arg[:-1] + "\\;" if arg.endswith(";") else arg


def _paste_buffer(target: str, buffer: str, enter: bool) -> list[str]:
    """The one paste: ``buffer`` into ``target`` as a bracketed paste, byte-exact (``-r``: no newline
    translation), the buffer deleted after (``-d``); then Enter."""
    tail = [";", "send-keys", "-t", target, "Enter"] if enter else []
    return ["paste-buffer", "-p", "-d", "-r", "-b", buffer, "-t", target, *tail]


def tmux_paste(target: str, text: str, *, buffer: str, enter: bool = True) -> list[str]:
    """tmux arguments (after ``tmux``) that type ``text`` into ``target`` byte-exact, as one bracketed
    paste (never through a shell or key names), then Enter; one tmux invocation."""
    if not text:
        return ["send-keys", "-t", target, "Enter"] if enter else []
    return ["set-buffer", "-b", buffer, "--", tmux_literal(text), ";", *_paste_buffer(target, buffer, enter)]


def tmux_paste_file(target: str, path: str, *, buffer: str, enter: bool = True) -> list[str]:
    """``tmux_paste`` of the text in the file ``path`` (``load-buffer``: any size, one tmux invocation;
    the init types a task this way)."""
    return ["load-buffer", "-b", buffer, path, ";", *_paste_buffer(target, buffer, enter)]


PASTE_CHUNK = 8000  # bytes of text per tmux invocation (tmux refuses a command line over 16 KiB)


def tmux_pastes(target: str, text: str, *, buffer: str, enter: bool = True) -> list[list[str]]:
    """``tmux_paste`` for text of any size: the buffer filled in chunks (``set-buffer -a``, one tmux
    invocation each, split between characters), then one paste; a short text is one invocation."""
    if len(text.encode()) <= PASTE_CHUNK:
        return [tmux_paste(target, text, buffer=buffer, enter=enter)]
    chunks, cur, size = [], [], 0
    for ch in text:
        n = len(ch.encode())
        if size + n > PASTE_CHUNK:
            chunks.append("".join(cur))
            cur, size = [], 0
        cur.append(ch)
        size += n
    chunks.append("".join(cur))
    fill = [["set-buffer", *(["-a"] if i else []), "-b", buffer, "--", tmux_literal(c)] for i, c in enumerate(chunks)]
    return [*fill, _paste_buffer(target, buffer, enter)]


def tmux_target(session: str) -> str:
    """The exact session's current pane (``=`` stops tmux from matching a prefix)."""
    return f"={session}:"


# -- headless mode --------------------------------------------------------------------------------
# The agent image alone (no `sandbox` on the host, no launch file: Cloud Run Jobs, Compose, plain
# `docker run`): with no launch file and ``SANDBOX_REPO`` set, the init configures itself from these
# variables (``sandbox.inside.headless``). ``deploy/`` and ``compose.yaml`` are checked against them.
class EnvVar(namedtuple("EnvVar", "name required secret default doc")):
    """One variable of the headless contract. ``required``: True, False, or the name of a group of
    which one must be set; ``secret``: also accepted as ``NAME_FILE`` (a file holding the value),
    never printed."""

    __slots__ = ()


class H:
    """The headless contract's variable names, spelled once: ``HEADLESS_ENV`` documents them, the init
    reads them (``sandbox.inside.headless.configure``), the host sets them (``spec.headless_env``,
    ``Backend.run_headless``). ``compose.yaml`` and ``deploy/`` spell them in YAML (checked against it)."""

    REPO = "SANDBOX_REPO"
    TASK = "SANDBOX_TASK"
    TASKS_FILE = "SANDBOX_TASKS_FILE"
    TASK_INDEX = "SANDBOX_TASK_INDEX"
    TASK_CLAIMS = "SANDBOX_TASK_CLAIMS"
    BASE = "SANDBOX_BASE"
    PUSH_BRANCH = "SANDBOX_PUSH_BRANCH"
    AGENT = "SANDBOX_AGENT"
    AGENT_CMD = "SANDBOX_AGENT_CMD"
    MODEL = "SANDBOX_MODEL"
    RETRIES = "SANDBOX_RETRIES"
    MAX_TIME = "SANDBOX_MAX_TIME"
    WIP_INTERVAL = "SANDBOX_WIP_INTERVAL"
    ON_DONE = "SANDBOX_ON_DONE"
    GIT_NAME = "SANDBOX_GIT_NAME"
    GIT_EMAIL = "SANDBOX_GIT_EMAIL"
    GIT_USER = "SANDBOX_GIT_USER"
    GIT_TOKEN = "SANDBOX_GIT_TOKEN"
    API_KEY = "ANTHROPIC_API_KEY"
    MOCK_MODEL = "SANDBOX_MOCK_MODEL"
    MOCK_SCRIPT_FILE = "SANDBOX_MOCK_SCRIPT_FILE"
    ATTEMPT = "SANDBOX_ATTEMPT"
    AGENT_UID = "SANDBOX_AGENT_UID"
    NAME = "SANDBOX_NAME"
    SESSION = "SANDBOX_SESSION"
    WORKSPACE = "SANDBOX_WORKSPACE"
    PORT = "PORT"
    RUN_TASK_INDEX = "CLOUD_RUN_TASK_INDEX"
    RUN_TASK_COUNT = "CLOUD_RUN_TASK_COUNT"
    RUN_TASK_ATTEMPT = "CLOUD_RUN_TASK_ATTEMPT"


SECRET_FILE = "_FILE"   # a secret variable's NAME + this: the file holding its value (``EnvVar.secret``)


HEADLESS_ENV = (
    EnvVar(H.REPO, True, False, "", "the repository to clone (http(s)://, git://, file://; no credentials in it)"),
    EnvVar(H.TASK, "task", False, "", "the task (or SANDBOX_TASKS_FILE)"),
    EnvVar(H.TASKS_FILE, "task", False, "", "a task list: a JSON array of strings, or one task a line; "
           "the task index picks one"),
    EnvVar(H.TASK_INDEX, False, False, "", "which task of the list (default CLOUD_RUN_TASK_INDEX, else a claim "
           "in SANDBOX_TASK_CLAIMS, else 0)"),
    EnvVar(H.TASK_CLAIMS, False, False, "", "a directory shared by replicas (Compose): each claims the first "
           "free task"),
    EnvVar(H.BASE, False, False, "", "the base ref: branch, tag or commit (default: the remote's HEAD)"),
    EnvVar(H.PUSH_BRANCH, False, False, "sandbox/task-{index}", "the branch pushed ({index}: the task index)"),
    EnvVar(H.AGENT, False, False, "claude", "agent preset: claude, codex, gemini, aider"),
    EnvVar(H.AGENT_CMD, False, False, "", "any command instead of a preset (the task is typed into it)"),
    EnvVar(H.MODEL, False, False, "", "the model passed to the agent"),
    EnvVar(H.RETRIES, False, False, "3", "restarts after a non-zero exit, then exit 5"),
    EnvVar(H.MAX_TIME, False, False, "0", "seconds before the agent is stopped (WIP pushed, exit 6); 0 = none"),
    EnvVar(H.WIP_INTERVAL, False, False, "120", "seconds between work-in-progress pushes"),
    EnvVar(H.ON_DONE, False, False, "exit", "exit: end when the task is done; stay: keep running (attach, "
           "logs) until stopped"),
    EnvVar(H.GIT_NAME, False, False, "sandbox agent", "the commits' author name"),
    EnvVar(H.GIT_EMAIL, False, False, "agent@sandbox.invalid", "the commits' author email"),
    EnvVar(H.GIT_USER, False, False, "x-access-token", "the user name sent with the token"),
    EnvVar(H.GIT_TOKEN, False, True, "", "the git token (http(s) remotes), through a credential helper"),
    EnvVar(H.API_KEY, False, True, "", "Claude Code's API key"),
    EnvVar(H.MOCK_MODEL, False, False, "0", "1: the scripted offline model instead of an API (demos, tests)"),
    EnvVar(H.MOCK_SCRIPT_FILE, False, False, "", "the scripted model's script (JSON)"),
    EnvVar(H.ATTEMPT, False, False, "0", "> 0: a retry: resume from the pushed branch when there is one "
           "(default CLOUD_RUN_TASK_ATTEMPT); 0: a first attempt refuses a branch that exists"),
    EnvVar(H.AGENT_UID, False, False, "{}:{}".format(*HEADLESS_AGENT), "uid[:gid] the agent runs as when the "
           "container starts as root (the supervisor alone then reads the token and pushes)"),
    EnvVar(H.NAME, False, False, "", "the agent's name (default: the host name)"),
    EnvVar(H.SESSION, False, False, "agent", "the tmux session's name"),
    EnvVar(H.WORKSPACE, False, False, "", "where to clone (default $HOME/work, or /tmp/sandbox/work when "
           "HOME is not writable)"),
    EnvVar(H.PORT, False, False, "", "serve GET /healthz and GET /status on 0.0.0.0:PORT"),
    EnvVar(H.RUN_TASK_INDEX, False, False, "", "set by Cloud Run Jobs: the task index"),
    EnvVar(H.RUN_TASK_COUNT, False, False, "", "set by Cloud Run Jobs: the number of tasks"),
    EnvVar(H.RUN_TASK_ATTEMPT, False, False, "", "set by Cloud Run Jobs: the retry number"),
)
HEADLESS_DEFAULT = {v.name: v.default for v in HEADLESS_ENV}  # a variable unset or empty: its value

# Exit codes of the headless init: the result of the run (README "Run anywhere").
HEADLESS_EXIT = {
    0: "the agent finished and the branch was pushed",
    2: "bad configuration (a variable missing or invalid, the branch exists on a first attempt)",
    3: "the remote refused or cannot be reached (clone, fetch: authentication, not found)",
    4: "a push failed (work may be lost: see the log)",
    5: "the agent failed (gave up after SANDBOX_RETRIES restarts); its work was pushed",
    6: "the time limit (SANDBOX_MAX_TIME) was reached; work in progress was pushed",
    7: "stopped (SIGTERM) before the task was done; work in progress was pushed",
    70: "internal error",
}
