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
POOL_ENV = "SANDBOX_POOL"                      # set on a warm pool's container: the init waits for a claim
POOLED = "pooled"                              # its state until then (never an agent's)
WAKE_SIGNAL = "SIGURG"  # what wakes the init (tmux's hooks, a pool's claim): ignored by default, so never fatal
REPLY_FILE = "reply.txt"                       # in STATE_MOUNT: the last turn's answer (Claude Code)
AGENT_GIT = "/var/lib/sandbox-git"             # the agent's own git dir (host: data_dir/agent-git/SLUG/NAME)
GITFILE = "gitdir: " + AGENT_GIT + "\n"        # the workspace's .git file (mounted read-only over it)

# -- the export ---------------------------------------------------------------------------------------
EXPORT = ["python3", "-m", "sandbox.inside", "export"]
FACTS = ["python3", "-m", "sandbox.inside", "facts"]   # + the workdir: one JSON object (sandbox doctor)
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


def tmux_paste(target: str, text: str, *, buffer: str, enter: bool = True) -> list[str]:
    """tmux arguments (after ``tmux``) that type ``text`` into ``target`` byte-exact, as one bracketed
    paste (never through a shell or key names), then Enter; one tmux invocation."""
    tail = [";", "send-keys", "-t", target, "Enter"] if enter else []
    if not text:
        return ["send-keys", "-t", target, "Enter"] if enter else []
    return ["set-buffer", "-b", buffer, "--", tmux_literal(text), ";",
            "paste-buffer", "-p", "-d", "-r", "-b", buffer, "-t", target, *tail]


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
    tail = [";", "send-keys", "-t", target, "Enter"] if enter else []
    return [*fill, ["paste-buffer", "-p", "-d", "-r", "-b", buffer, "-t", target, *tail]]


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


HEADLESS_ENV = (
    EnvVar("SANDBOX_REPO", True, False, "", "the repository to clone (http(s)://, git://, file://; no credentials in it)"),
    EnvVar("SANDBOX_TASK", "task", False, "", "the task (or SANDBOX_TASKS_FILE)"),
    EnvVar("SANDBOX_TASKS_FILE", "task", False, "", "a task list: a JSON array of strings, or one task a line; "
           "the task index picks one"),
    EnvVar("SANDBOX_TASK_INDEX", False, False, "", "which task of the list (default CLOUD_RUN_TASK_INDEX, else a claim "
           "in SANDBOX_TASK_CLAIMS, else 0)"),
    EnvVar("SANDBOX_TASK_CLAIMS", False, False, "", "a directory shared by replicas (Compose): each claims the first "
           "free task"),
    EnvVar("SANDBOX_BASE", False, False, "", "the base ref: branch, tag or commit (default: the remote's HEAD)"),
    EnvVar("SANDBOX_PUSH_BRANCH", False, False, "sandbox/task-{index}", "the branch pushed ({index}: the task index)"),
    EnvVar("SANDBOX_AGENT", False, False, "claude", "agent preset: claude, codex, gemini, aider"),
    EnvVar("SANDBOX_AGENT_CMD", False, False, "", "any command instead of a preset (the task is typed into it)"),
    EnvVar("SANDBOX_MODEL", False, False, "", "the model passed to the agent"),
    EnvVar("SANDBOX_RETRIES", False, False, "3", "restarts after a non-zero exit, then exit 5"),
    EnvVar("SANDBOX_MAX_TIME", False, False, "0", "seconds before the agent is stopped (WIP pushed, exit 6); 0 = none"),
    EnvVar("SANDBOX_WIP_INTERVAL", False, False, "120", "seconds between work-in-progress pushes"),
    EnvVar("SANDBOX_ON_DONE", False, False, "exit", "exit: end when the task is done; stay: keep running (attach, "
           "logs) until stopped"),
    EnvVar("SANDBOX_GIT_NAME", False, False, "sandbox agent", "the commits' author name"),
    EnvVar("SANDBOX_GIT_EMAIL", False, False, "agent@sandbox.invalid", "the commits' author email"),
    EnvVar("SANDBOX_GIT_USER", False, False, "x-access-token", "the user name sent with the token"),
    EnvVar("SANDBOX_GIT_TOKEN", False, True, "", "the git token (http(s) remotes), through a credential helper"),
    EnvVar("ANTHROPIC_API_KEY", False, True, "", "Claude Code's API key"),
    EnvVar("SANDBOX_MOCK_MODEL", False, False, "0", "1: the scripted offline model instead of an API (demos, tests)"),
    EnvVar("SANDBOX_MOCK_SCRIPT_FILE", False, False, "", "the scripted model's script (JSON)"),
    EnvVar("SANDBOX_ATTEMPT", False, False, "0", "> 0: a retry: resume from the pushed branch when there is one "
           "(default CLOUD_RUN_TASK_ATTEMPT); 0: a first attempt refuses a branch that exists"),
    EnvVar("SANDBOX_NAME", False, False, "", "the agent's name (default: the host name)"),
    EnvVar("SANDBOX_SESSION", False, False, "agent", "the tmux session's name"),
    EnvVar("SANDBOX_WORKSPACE", False, False, "", "where to clone (default $HOME/work, or /tmp/sandbox/work when "
           "HOME is not writable)"),
    EnvVar("PORT", False, False, "", "serve GET /healthz and GET /status on 0.0.0.0:PORT"),
    EnvVar("CLOUD_RUN_TASK_INDEX", False, False, "", "set by Cloud Run Jobs: the task index"),
    EnvVar("CLOUD_RUN_TASK_COUNT", False, False, "", "set by Cloud Run Jobs: the number of tasks"),
    EnvVar("CLOUD_RUN_TASK_ATTEMPT", False, False, "", "set by Cloud Run Jobs: the retry number"),
)

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
