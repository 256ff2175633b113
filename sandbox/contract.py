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
