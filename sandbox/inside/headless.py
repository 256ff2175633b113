"""Headless mode of the agent image (standard library only): the image alone, on a Cloud Run-like host.

No ``sandbox`` CLI on the host, no host workspace, no ``docker exec``: started with no launch file and
``SANDBOX_REPO`` set, the init (``python3 -m sandbox.inside init``) lands here. It configures itself
from the ``SANDBOX_*`` variables of ``contract.HEADLESS_ENV`` (secrets also as ``NAME_FILE``), clones
into its writable workspace, runs the agent in its tmux session under the same supervisor as a
spawned agent (so a local run can still be attached), and hands the work back through git:

- the branch is pushed at once (claimed: a first attempt refuses a branch that exists), then a
  snapshot of the workspace every ``SANDBOX_WIP_INTERVAL`` seconds when it changed, then the final
  state; every push is ``--force-with-lease`` on what this run pushed last (never someone else's);
- SIGTERM: the agent is stopped, what is uncommitted becomes a WIP commit (parent: the agent's HEAD),
  pushed, then exit 7 — well within the 10 s a host gives;
- attempt > 0 (``SANDBOX_ATTEMPT`` / ``CLOUD_RUN_TASK_ATTEMPT``): resume from the pushed branch;
- ``PORT``: ``GET /healthz`` and ``GET /status`` (JSON) on ``0.0.0.0:$PORT``;
- the agent holds no push credential: started as root (``spawn --headless``, compose.yaml, Swarm: the
  container keeps only ``contract.SUPERVISOR_CAPS``), the init is the supervisor and runs the agent as
  ``SANDBOX_AGENT_UID``. Only the supervisor has the token (a credential helper in its own git HOME,
  root's alone, reading the token file at each use: never in the URL, the agent's environment or
  files, labels, logs or the pushed refs) and its own bare clone (``contract.HEADLESS_MIRROR``), which
  is the agent's ``origin`` to clone and fetch from. Each push takes the agent's work as git objects
  (a fetch whose upload-pack runs as the agent's uid: the supervisor never runs git, hooks, filters or
  config of the agent's repository), then pushes one commit to ``SANDBOX_PUSH_BRANCH`` alone, from
  its own repository. The agent's ``git push`` prints ``contract.AGENTS_DO_NOT_PUSH`` and fails;
- started as a non-root uid (a host that forces one: ``docker run --user``, the image's own USER), all
  runs as that one uid as before, and the log and ``/status`` say that the agent can reach the push
  credential.

The exit code is the result (``contract.HEADLESS_EXIT``). Works with a read-only root (HOME, the
workspace and the state go under /tmp then).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sandbox import contract as C
from sandbox import inside as I
from sandbox.contract import H, S
from sandbox.inside import home
from sandbox.inside import supervisor as SV

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PREFIX = "sandbox headless: "
TMP_ROOT = "/tmp/sandbox"
TERM_BUDGET = 8.5        # seconds from SIGTERM to exit (hosts kill after 10)
KILL_GRACE = 1.0         # of which the agent gets this long to end after TERM
OK, CONFIG, REMOTE, PUSH, AGENT_FAILED, TIME_LIMIT, STOPPED, INTERNAL = 0, 2, 3, 4, 5, 6, 7, 70


class Failure(Exception):
    """Ends the run with one clear line and ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Terminated(BaseException):
    """Raised by the SIGTERM handler into whatever the init was doing (a subprocess is killed)."""


class _End(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def log(message: str) -> None:
    print(PREFIX + message, flush=True)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(text: str, secrets: tuple[str, ...] = ()) -> str:
    """One printable line of what a tool said, secrets cut out (defence in depth: git never prints
    the helper's password)."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return _CONTROL.sub(" ", " ".join(text.split()))[:300]


# -- configuration --------------------------------------------------------------------------------------
def _secret(env: dict[str, str], name: str) -> tuple[str, str]:
    """(value, path of the file it came from or ""): ``NAME_FILE`` wins over ``NAME``."""
    path = env.get(name + C.SECRET_FILE, "")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip(), path
        except OSError as e:
            raise Failure(CONFIG, f"{name}{C.SECRET_FILE}: cannot read {path}: {e.strerror}") from None
    return env.get(name, "").strip(), ""


def _value(env: dict[str, str], name: str) -> str:
    """The variable ``name`` (stripped), or its default in the contract when it is unset or empty."""
    return env.get(name, "").strip() or C.HEADLESS_DEFAULT[name]


def _number(env: dict[str, str], name: str, default: str | None = None, kind: type = int) -> Any:
    raw = env.get(name, "").strip() or (C.HEADLESS_DEFAULT[name] if default is None else default)
    try:
        value = kind(raw)
    except ValueError:
        raise Failure(CONFIG, f"{name}={raw!r}: not a number") from None
    if value < 0:
        raise Failure(CONFIG, f"{name}={raw!r}: must not be negative")
    return value


def _writable(path: str) -> bool:
    """Can this uid make ``path`` (or write in it)? Asked of its nearest existing ancestor; nothing made."""
    while not os.path.exists(path):
        parent = os.path.dirname(path.rstrip("/")) or "/"
        if parent == path:
            break
        path = parent
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def read_tasks(path: str) -> list[str]:
    """A task list: a JSON array of strings, or one task a line (blank lines and ``#`` lines skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise Failure(CONFIG, f"{H.TASKS_FILE}: cannot read {path}: {e.strerror}") from None
    if text.lstrip().startswith("["):
        try:
            tasks = json.loads(text)
        except ValueError as e:
            raise Failure(CONFIG, f"{H.TASKS_FILE} {path}: not JSON: {e}") from None
        if not isinstance(tasks, list) or not all(isinstance(t, str) and t.strip() for t in tasks):
            raise Failure(CONFIG, f"{H.TASKS_FILE} {path}: a JSON task list is an array of non-empty strings")
    else:
        tasks = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not tasks:
        raise Failure(CONFIG, f"{H.TASKS_FILE} {path}: no tasks in it")
    return tasks


def claim(claims: str, count: int, me: str) -> int:
    """The first task of ``count`` no other replica claimed (a file per task, created exclusively, in
    a directory the replicas share); the one this container claimed before, after a restart."""
    try:
        os.makedirs(claims, exist_ok=True)
    except OSError:
        pass
    if not (os.path.isdir(claims) and os.access(claims, os.W_OK | os.X_OK)):
        raise Failure(CONFIG, f"{H.TASK_CLAIMS}: {claims} is not a writable directory")
    for i in range(count):
        path = os.path.join(claims, f"task-{i}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read().strip() == me:
                        return i
            except OSError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        return i
    raise Failure(CONFIG, f"all {count} tasks of {H.TASKS_FILE} are claimed (more replicas than tasks)")


@dataclass
class Config:
    repo: str
    task: str
    index: int
    branch: str
    base: str
    argv: list[str]
    delivery: str
    claude: bool
    model: str
    retries: int
    max_time: float
    wip_interval: float
    on_done: str
    attempt: int
    name: str
    session: str
    home: str
    workspace: str
    state_dir: str
    git_name: str
    git_email: str
    git_user: str
    token: str = field(repr=False, default="")
    token_file: str = ""
    api_key: str = field(repr=False, default="")
    mock: bool = False
    mock_script: dict[str, Any] | None = None
    port: int = 0
    agent: tuple[int, int] = C.HEADLESS_AGENT   # the agent's uid:gid when the init is root (``split``)
    split: bool = False                         # the init is root: the supervisor, another uid than the agent

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.token, self.api_key) if len(s) >= 4)


def configure(env: dict[str, str]) -> Config:
    """The run's settings from the environment (``contract.HEADLESS_ENV``); ``Failure(2)`` when wrong."""
    from sandbox import agents
    from sandbox.errors import UsageError

    repo = _value(env, H.REPO)
    if not repo:  # (compose.yaml passes it through empty when unset, so that `down` works without it)
        raise Failure(CONFIG, f"{H.REPO} is not set: the URL of the repository to clone")
    parts = urlsplit(repo)
    if "://" in repo:
        if parts.scheme not in ("http", "https", "git", "file", "ssh"):
            raise Failure(CONFIG, f"{H.REPO}: unsupported scheme {parts.scheme!r} (http, https, git, file, ssh)")
        if parts.password is not None or (parts.username and parts.scheme in ("http", "https")):
            raise Failure(CONFIG, f"{H.REPO} must not carry credentials: pass the token as "
                                  f"{H.GIT_TOKEN}{C.SECRET_FILE}")
    name = _value(env, H.NAME) or os.uname().nodename
    task = env.get(H.TASK, "")
    tasks_file = _value(env, H.TASKS_FILE)
    index_raw = (env.get(H.TASK_INDEX) or env.get(H.RUN_TASK_INDEX) or "").strip()
    index = _number(env, H.TASK_INDEX, index_raw or "0")
    if tasks_file:
        if task.strip():
            raise Failure(CONFIG, f"set {H.TASK} or {H.TASKS_FILE}, not both")
        tasks = read_tasks(tasks_file)
        claims = _value(env, H.TASK_CLAIMS)
        if not index_raw and claims:
            index = claim(claims, len(tasks), name)
        if index >= len(tasks):
            raise Failure(CONFIG, f"task index {index} is out of range: {tasks_file} has {len(tasks)} tasks")
        count = _value(env, H.RUN_TASK_COUNT)
        if count.isdigit() and int(count) != len(tasks):
            log(f"note: {H.RUN_TASK_COUNT}={count} but {tasks_file} has {len(tasks)} tasks")
        task = tasks[index]
    if not task.strip():
        raise Failure(CONFIG, f"no task: set {H.TASK} or {H.TASKS_FILE}")
    branch = _value(env, H.PUSH_BRANCH).replace("{index}", str(index))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,200}", branch) or ".." in branch or branch.endswith(
            (".lock", "/", ".")) or "//" in branch:
        raise Failure(CONFIG, f"{H.PUSH_BRANCH}: {branch!r} is not a valid branch name")
    agent = _value(env, H.AGENT)
    model = _value(env, H.MODEL)
    try:
        spec = agents.build(agent, model or None, task, env.get(H.AGENT_CMD) or None)
    except UsageError as e:
        raise Failure(CONFIG, f"{H.AGENT}/{H.AGENT_CMD}: {e}") from None
    on_done = _value(env, H.ON_DONE)
    if on_done not in ("exit", "stay"):
        raise Failure(CONFIG, f"{H.ON_DONE}={on_done!r}: exit or stay")
    attempt = _number(env, H.ATTEMPT, (env.get(H.ATTEMPT) or env.get(H.RUN_TASK_ATTEMPT)
                                       or C.HEADLESS_DEFAULT[H.ATTEMPT]).strip())
    home = env.get("HOME", "") or "/home/agent"
    if not _writable(home):
        home = f"{TMP_ROOT}/home"
    workspace = _value(env, H.WORKSPACE) or (
        f"{TMP_ROOT}/work" if home.startswith(TMP_ROOT) else os.path.join(home, "work"))
    state_dir = C.STATE_MOUNT if _writable(C.STATE_MOUNT) else f"{TMP_ROOT}/state"
    token, token_file = _secret(env, H.GIT_TOKEN)
    api_key, _ = _secret(env, H.API_KEY)
    mock = _value(env, H.MOCK_MODEL).lower() in ("1", "true", "yes", "on")
    script = None
    script_file = _value(env, H.MOCK_SCRIPT_FILE)
    if script_file:
        try:
            with open(script_file, encoding="utf-8") as f:
                script = json.load(f)
        except (OSError, ValueError) as e:
            raise Failure(CONFIG, f"{H.MOCK_SCRIPT_FILE} {script_file}: {e}") from None
    port = _number(env, H.PORT, "0")
    raw_uid = _value(env, H.AGENT_UID)
    m = re.fullmatch(r"(\d{1,9})(?::(\d{1,9}))?", raw_uid)
    if not m or int(m.group(1)) == 0 or m.group(2) == "0":
        raise Failure(CONFIG, f"{H.AGENT_UID}={raw_uid!r}: a non-root uid, or uid:gid")
    agent_id = (int(m.group(1)), int(m.group(2) or m.group(1)))
    return Config(
        repo=repo, task=task, index=index, branch=branch, base=_value(env, H.BASE),
        argv=list(spec.argv), delivery=spec.delivery, claude=spec.claude, model=model,
        retries=_number(env, H.RETRIES), max_time=_number(env, H.MAX_TIME, kind=float),
        wip_interval=_number(env, H.WIP_INTERVAL, kind=float) or 120.0, on_done=on_done,
        attempt=attempt, name=name, session=_value(env, H.SESSION), home=home,
        workspace=workspace, state_dir=state_dir, git_name=_value(env, H.GIT_NAME),
        git_email=_value(env, H.GIT_EMAIL), git_user=_value(env, H.GIT_USER), token=token, token_file=token_file,
        api_key=api_key, mock=mock, mock_script=script, port=port, agent=agent_id)


# -- git ------------------------------------------------------------------------------------------------
def credential(argv: list[str]) -> int:
    """``python3 -m sandbox.inside credential FILE get``: git's credential helper protocol, answering
    ``get`` with the token read from FILE now (so a rotated secret file is used as it is)."""
    if len(argv) < 2 or argv[1] != "get":
        return 0  # store / erase: nothing kept
    sys.stdin.read()
    try:
        with open(argv[0], encoding="utf-8") as f:
            token = f.read().strip()
    except OSError:
        return 1
    if token:
        sys.stdout.write(f"password={token}\n")
    return 0


_AUTH = re.compile(r"Authentication failed|could not read (Username|Password)|returned error: 40[13]|"
                   r"access denied|HTTP Basic: Access denied|Invalid username or password", re.IGNORECASE)


TOKEN_FILE = H.GIT_TOKEN + C.SECRET_FILE  # the git token's file (a host gives it so, never the value)
SECRET_ENV = tuple(n for v in C.HEADLESS_ENV if v.secret for n in (v.name, v.name + C.SECRET_FILE))
MIRROR = C.HEADLESS_MIRROR       # the supervisor's own bare clone: it pushes from here (the agent's origin)
GIT_HOME = C.HEADLESS_GIT_HOME   # the supervisor's git HOME: its config (the credential helper), a token
SNAPSHOT_REF = "refs/sandbox/snapshot"  # in the agent's repository: the commit a push takes
ONE_UID = ("running as one uid: the agent can reach the push credential (start the container as root with "
           "the capabilities " + ", ".join(C.SUPERVISOR_CAPS) + " to keep it the supervisor's)")


class Git:
    """Git for the init (argv lists; hooks and fsmonitor off; no prompts), in two places that never mix:
    ``run`` — the supervisor's own repository (``MIRROR``) and the remote, with its HOME (``GIT_HOME``:
    the credential) — and ``agent`` — the agent's workspace, as the agent's uid, with the agent's HOME."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        base = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and k not in (
            *SECRET_ENV, "TMUX_TMPDIR")}
        base.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", SSH_ASKPASS="/bin/false",
                    GIT_SSH_COMMAND="ssh -o BatchMode=yes")
        self.base = base
        self.env = dict(base, HOME=GIT_HOME)

    def _run(self, argv: list[str], cwd: str, env: dict[str, str], timeout: float,
             check: bool) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=max(1.0, timeout))
        if check and p.returncode != 0:
            raise subprocess.CalledProcessError(p.returncode, argv[:4], p.stdout, p.stderr)
        return p

    def run(self, *args: str, cwd: str | None = None, timeout: float = 120.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """git in the supervisor's own repository (or ``cwd``), as the supervisor."""
        return self._run([C.GIT, "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", *args],
                         cwd or MIRROR, self.env, timeout, check)

    def out(self, *args: str, **kw: Any) -> str:
        return self.run(*args, **kw).stdout.strip()

    def agent_env(self, index: str | None = None) -> dict[str, str]:
        env = dict(self.base, HOME=self.cfg.home)
        if index:
            env["GIT_INDEX_FILE"] = index
        return env

    def as_agent(self, argv: list[str], *, cwd: str | None = None, timeout: float = 120.0, index: str | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        """``argv`` as the agent (its uid, no capabilities: ``contract.as_agent``; as is with one uid)."""
        return self._run(I.agent_argv(argv), cwd or "/", self.agent_env(index), timeout, check)

    def agent(self, *args: str, cwd: str | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
        """git in the agent's workspace (or ``cwd``), as the agent (what its repository holds runs as its
        uid; the directory is entered by that uid too: ``-C``)."""
        return self.as_agent([C.GIT, "-C", cwd or self.cfg.workspace, "-c", "core.hooksPath=/dev/null",
                              "-c", "core.fsmonitor=false", *args], **kw)

    def agent_out(self, *args: str, **kw: Any) -> str:
        return self.agent(*args, **kw).stdout.strip()

    def upload_pack(self) -> str:
        """The ``--upload-pack`` command that serves the agent's repository to the supervisor's fetch:
        run as the agent, with its HOME (the supervisor's git reads none of the agent's files itself)."""
        return shlex.join(I.agent_argv(["env", f"HOME={self.cfg.home}", C.GIT, "upload-pack"]))

    def why(self, stderr: str) -> str:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        pick = next((ln for ln in lines if ln.startswith(("fatal:", "error:", "remote:"))), lines[-1] if lines else "")
        return clean(pick, self.cfg.secrets)


def agent_can(cfg: Config, test: str, path: str) -> bool:
    """Whether the agent's uid may ``test`` (``-r``, ``-w``...) ``path`` (asked as that uid)."""
    try:
        return subprocess.run(I.agent_argv(["test", test, path]), cwd="/", stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def agent_mkdir(cfg: Config, path: str) -> bool:
    """``path`` (and its parents) made by the agent's uid, so that it is the agent's; whether it can write there."""
    try:
        return subprocess.run(I.agent_argv(["sh", "-c", 'mkdir -p -- "$1" && test -w "$1"', "sh", path]), cwd="/",
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def split_uids(cfg: Config) -> None:
    """Started as root: the supervisor runs the agent as ``cfg.agent`` (``sandbox.inside.AGENT``), and the
    agent's places (HOME, workspace, its side of the state dir) are made by the agent's uid. Without the
    capabilities to do so: ``Failure(2)``, never the agent as root."""
    cfg.split = True
    os.umask(0o022)  # (the supervisor's clone must be readable by the agent's uid, whatever umask the host gave)
    del I.AGENT[:]
    I.AGENT.extend(cfg.agent)
    if not agent_can(cfg, "-d", "/"):
        raise Failure(CONFIG, "started as root without the capabilities to run the agent as another uid: give the "
                              "container " + ", ".join(C.SUPERVISOR_CAPS) + " (and nothing else), or run it as a "
                              "non-root uid")
    if not agent_mkdir(cfg, cfg.home):
        cfg.home = f"{TMP_ROOT}/home"
        if not agent_mkdir(cfg, cfg.home):
            raise Failure(CONFIG, f"the agent's uid {cfg.agent[0]} cannot write {cfg.home}")
        if not cfg.workspace.startswith(TMP_ROOT) and not os.environ.get(H.WORKSPACE, "").strip():
            cfg.workspace = f"{TMP_ROOT}/work"
    parent = os.path.dirname(cfg.workspace.rstrip("/")) or "/"
    if not agent_mkdir(cfg, parent):
        raise Failure(CONFIG, f"{H.WORKSPACE} {cfg.workspace}: the agent's uid {cfg.agent[0]} cannot write {parent}")
    if _writable(C.STATE_MOUNT) or _host_owned(C.STATE_MOUNT):
        cfg.state_dir = C.STATE_MOUNT
    else:
        cfg.state_dir = f"{C.SUPERVISOR_DIR}/state"  # (the supervisor's; the agent makes its own side in it)
        os.makedirs(cfg.state_dir, exist_ok=True)
        os.chmod(cfg.state_dir, 0o1777)
    if not agent_mkdir(cfg, os.path.join(cfg.state_dir, C.AGENT_STATE)):
        raise Failure(CONFIG, f"the agent's uid {cfg.agent[0]} cannot write its side of the state dir {cfg.state_dir}")


def _host_owned(path: str) -> bool:
    """A state dir a non-root host user owns (``spawn --headless`` by one): root writes it as its owner
    (``sandbox.inside.write_state``), as for a spawned agent."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid != 0 and os.path.isdir(path)


def _unlink_state() -> None:
    """The state file gone (a new run starts afresh): as the state dir's owner when root may not write there."""
    try:
        os.unlink(I.STATE)
    except PermissionError:
        if os.geteuid() != 0:
            raise
        st = os.stat(I.STATE_DIR)
        os.setegid(st.st_gid)
        os.seteuid(st.st_uid)
        try:
            os.unlink(I.STATE)
        finally:
            os.seteuid(0)
            os.setegid(0)


def credential_reach(cfg: Config) -> str:
    """Who can reach the push credential: "the supervisor" — or why the agent can too (logged)."""
    if not cfg.split:
        return ONE_UID
    if cfg.token_file and agent_can(cfg, "-r", cfg.token_file):
        return (f"{TOKEN_FILE} {cfg.token_file} is readable by the agent's uid {cfg.agent[0]}: the agent "
                "can reach the push credential (make the file root's alone: owner 0, mode 0400)")
    return "the supervisor"


def setup_git(cfg: Config, git: Git) -> None:
    """The supervisor's own git config (``GIT_HOME``, its uid's alone): identity, and for http(s) remotes
    with a token, a credential helper scoped to the remote's host that reads the token file at each use."""
    os.makedirs(GIT_HOME, mode=0o700, exist_ok=True)
    os.chmod(GIT_HOME, 0o700)
    conf = os.path.join(GIT_HOME, ".gitconfig")
    if os.path.exists(conf):
        os.unlink(conf)
    settings = [("user.name", cfg.git_name), ("user.email", cfg.git_email), ("advice.detachedHead", "false"),
                ("protocol.file.allow", "always")]  # (the agent's work is fetched from its repository's path)
    parts = urlsplit(cfg.repo)
    if cfg.token and parts.scheme in ("http", "https"):
        token_file = cfg.token_file
        if not token_file:  # given in the environment: kept in a file of the supervisor's, out of the agent's env
            token_file = os.path.join(GIT_HOME, "token")
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(cfg.token + "\n")
        scope = f"credential.{parts.scheme}://{parts.netloc}"
        helper = "!" + shlex.join(C.inside("credential", token_file))  # (isolated python: nothing of the agent's)
        settings += [(f"{scope}.helper", helper), (f"{scope}.username", cfg.git_user)]
    for key, value in settings:
        git.run("config", "--file", conf, key, value, cwd="/")


def remote_head(git: Git, cfg: Config, ref: str) -> str:
    """The remote's sha of ``ref`` ("" when absent); ``Failure(3)`` when the remote refuses or is away."""
    try:
        p = git.run("ls-remote", "--", cfg.repo, ref, cwd="/", timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise Failure(REMOTE, f"the remote {cfg.repo} did not answer within 60 s") from None
    if p.returncode != 0:
        if _AUTH.search(p.stderr):
            hint = f"check {TOKEN_FILE}" if cfg.token else f"no token given: set {TOKEN_FILE}"
            raise Failure(REMOTE, f"the remote {cfg.repo} refused the credentials ({hint})")
        raise Failure(REMOTE, f"cannot read the remote {cfg.repo}: {git.why(p.stderr)}")
    for line in p.stdout.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref:
            return sha
    return ""


def agent_gitconfig(cfg: Config, git: Git) -> None:
    """The agent's global git config, as the agent: its origin (the supervisor's clone, root's) is a
    repository it may read; ``git push`` with no arguments goes to origin (and is refused there)."""
    for key, value in (("safe.directory", MIRROR), ("push.default", "current")):
        git.agent("config", "--global", key, value, cwd="/")


def prepare(cfg: Config, git: Git) -> tuple[str, str]:
    """The supervisor's clone of the remote, then the agent's clone of it (as the agent), checked out on
    the branch: from the pushed branch on a retry (attempt > 0), else from the base. The remote's sha of
    the branch ("" when it has none: the lease of the first push) and the commit checked out."""
    pushed = remote_head(git, cfg, f"refs/heads/{cfg.branch}")
    if pushed and cfg.attempt == 0:
        raise Failure(CONFIG, f"the branch {cfg.branch} exists on the remote already: set {H.ATTEMPT}=1 to "
                              f"resume from it, or choose another {H.PUSH_BRANCH}")
    parent = os.path.dirname(cfg.workspace.rstrip("/")) or "/"
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(cfg.workspace) and os.listdir(cfg.workspace):
        raise Failure(CONFIG, f"{H.WORKSPACE} {cfg.workspace} is not empty")
    log(f"cloning {cfg.repo}" + (f" (attempt {cfg.attempt})" if cfg.attempt else ""))
    import shutil

    shutil.rmtree(MIRROR, ignore_errors=True)
    p = git.run("clone", "--bare", "--quiet", "--", cfg.repo, MIRROR, cwd="/", timeout=600, check=False)
    if p.returncode != 0:
        raise Failure(REMOTE, f"cannot clone {cfg.repo}: {git.why(p.stderr)}")
    if pushed:
        start, what = pushed, f"the pushed branch {cfg.branch} ({pushed[:12]}): resuming"
    else:
        base = cfg.base or "HEAD"
        found = ""
        for cand in (f"refs/heads/{base}", base):
            q = git.run("rev-parse", "--verify", "--quiet", "--end-of-options", cand + "^{commit}", check=False)
            if q.returncode == 0:
                found = q.stdout.strip()
                break
        if not found:
            raise Failure(CONFIG, f"{H.BASE} {base!r}: no such branch, tag or commit in {cfg.repo}")
        start, what = found, f"base {base} ({found[:12]})" + (" (nothing pushed yet)" if cfg.attempt else "")
    agent_gitconfig(cfg, git)
    # --shared: the agent's clone borrows the supervisor's objects (read-only to it: an alternate), no second copy
    p = git.agent("clone", "--quiet", "--no-checkout", "--shared", "--", MIRROR, cfg.workspace, cwd=parent,
                  timeout=600, check=False)
    if p.returncode != 0:
        raise Failure(INTERNAL, f"cannot clone the supervisor's copy for the agent: {git.why(p.stderr)}")
    script = f"echo {shlex.quote(C.AGENTS_DO_NOT_PUSH.format(branch=cfg.branch))} >&2; exit 1"
    refuse = "ext::sh -c " + script.replace("%", "%%").replace(" ", "% ")  # (ext's quoting: "% " is a space)
    for key, value in (("remote.origin.pushurl", refuse), ("protocol.ext.allow", "always")):
        git.agent("config", key, value)  # (the agent may undo this: it still has no credential to push with)
    p = git.agent("checkout", "--quiet", "-B", cfg.branch, start, check=False)
    if p.returncode != 0:
        raise Failure(CONFIG, f"cannot check out {cfg.branch}: {git.why(p.stderr)}")
    log(f"branch {cfg.branch} from {what}")
    return pushed, start


# -- the status server ------------------------------------------------------------------------------------
STATUS: dict[str, Any] = {"state": "starting"}


def serve_status(port: int) -> None:
    """``GET /healthz`` (200 while the init is well; 503 once it failed) and ``GET /status`` (JSON) on
    ``0.0.0.0:PORT``, in a daemon thread."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                bad = STATUS.get("state") == "failed"
                self._answer(503 if bad else 200, b"failed\n" if bad else b"ok\n", "text/plain")
            elif path == "/status":
                body = dict(STATUS, agent=I.read_state().get(S.STATE))
                self._answer(200, json.dumps(body).encode() + b"\n", "application/json")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="status", daemon=True).start()


# -- the run ----------------------------------------------------------------------------------------------
class Headless(SV.Supervisor):
    """The supervisor, plus: work-in-progress pushes on its clock, the end of the task, the result."""

    needs_tick = True

    def __init__(self, launch: C.Launch, cfg: Config, git: Git, lease: str) -> None:
        super().__init__(launch)
        self.cfg = cfg
        self.git = git
        self.remote = lease          # what the remote's branch is (our last push): the next lease
        self.next_wip = time.time() + cfg.wip_interval
        self.result: int | None = None
        self.pushes = 0

    # what is pushed
    def snapshot(self, why: str) -> str:
        """The whole workspace as a commit, made as the agent in its repository: the agent's HEAD when
        nothing is uncommitted, else a WIP commit on top of it (a temporary index: the agent's own index
        and HEAD stay as they are)."""
        g = self.git
        head = g.agent_out("rev-parse", "--verify", "HEAD^{commit}")
        index = os.path.join(self.cfg.workspace, ".git", "sandbox-wip.index")
        tree = None
        # its own index's stat data spares rehashing every file (copied as the agent: its files, its uid)
        if g.as_agent(["cp", "-f", "--", os.path.join(self.cfg.workspace, ".git", "index"), index],
                      check=False).returncode == 0:
            if g.agent("add", "--all", "--ignore-errors", "--", ".", index=index, check=False).returncode == 0:
                tree = g.agent("write-tree", index=index, check=False).stdout.strip() or None
        if tree is None:  # no index, or one caught mid-write: from HEAD's tree
            g.as_agent(["rm", "-f", "--", index], check=False)
            g.agent("read-tree", head, index=index)
            g.agent("add", "--all", "--ignore-errors", "--", ".", index=index, check=False)
            tree = g.agent_out("write-tree", index=index)
        if tree == g.agent_out("rev-parse", f"{head}^{{tree}}"):
            return head
        if self.remote and g.agent_out("log", "-1", "--format=%T %P", self.remote, check=False) == f"{tree} {head}":
            return self.remote  # the WIP commit pushed last already holds this state
        return g.agent_out("-c", f"user.name={self.cfg.git_name}", "-c", f"user.email={self.cfg.git_email}",
                           "commit-tree", tree, "-p", head, "-m", f"sandbox: WIP ({why})\n\nNot committed by the "
                           f"agent: its workspace when it was {why}.")

    def take(self, sha: str, timeout: float) -> str:
        """The agent's commit ``sha`` (and what it needs) into the supervisor's own repository, as git
        objects only: the agent's repository names it (``SNAPSHOT_REF``), the supervisor's git fetches
        it through an upload-pack that runs as the agent. What was fetched (the commit pushed next)."""
        self.git.agent("update-ref", SNAPSHOT_REF, sha, timeout=timeout)
        self.git.run("fetch", "--quiet", "--no-tags", "--no-recurse-submodules", "--no-write-fetch-head",
                     "--upload-pack", self.git.upload_pack(), "--", self.cfg.workspace,
                     f"+{SNAPSHOT_REF}:{SNAPSHOT_REF}", timeout=timeout)
        return self.git.out("rev-parse", "--verify", f"{SNAPSHOT_REF}^{{commit}}")

    def push(self, sha: str, why: str, timeout: float = 60.0) -> bool:
        """``sha`` (in the supervisor's repository) to ``SANDBOX_PUSH_BRANCH``, the one ref it pushes."""
        if sha == self.remote:
            return True
        lease = f"--force-with-lease=refs/heads/{self.cfg.branch}:{self.remote}"
        try:
            p = self.git.run("push", "--quiet", "--no-verify", lease, "origin", f"{sha}:refs/heads/{self.cfg.branch}",
                             timeout=timeout, check=False)
            ok, reason = p.returncode == 0, "" if p.returncode == 0 else self.git.why(p.stderr)
        except subprocess.TimeoutExpired:
            ok, reason = False, f"no answer within {timeout:.0f} s"
        now = time.time()
        STATUS["last_push"] = {"sha": sha if ok else None, "at": now, "ok": ok, "why": why, "reason": reason or None}
        if ok:
            self.remote = sha
            self.pushes += 1
            STATUS["pushes"] = self.pushes
            STATUS["pushed"] = sha
            I.write_state(None, {S.BRANCH: self.cfg.branch, S.PUSHED: sha, S.PUSHED_AT: now})
            log(f"pushed {self.cfg.branch} at {sha[:12]} ({why})")
        else:
            log(f"error: push of {self.cfg.branch} failed ({why}): {reason}")
        return ok

    def push_now(self, why: str, timeout: float = 60.0) -> bool:
        t0 = time.monotonic()
        try:
            sha = self.snapshot(why)
            if sha != self.remote:
                sha = self.take(sha, max(1.0, timeout - (time.monotonic() - t0)))
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            log(f"error: cannot snapshot the workspace ({why}): {clean(str(getattr(e, 'stderr', '') or e))}")
            return False
        return self.push(sha, why, max(1.0, timeout - (time.monotonic() - t0)))

    # the supervisor's hooks
    def tick(self, now: float) -> None:
        if now >= self.next_wip:
            self.next_wip = now + self.cfg.wip_interval
            self.push_now("work in progress")
        if self.result is None and self.hooks:
            st = I.read_state()
            if int(st.get(S.STOPS) or 0) >= 1 and st.get(S.STATE) in (C.IDLE, C.WAITING):
                self.finished(OK, "the agent's turn ended: task done")

    def idle_forever(self) -> int:
        """The agent ended (exited, failed for good, or stopped by the time limit)."""
        st = I.read_state()
        state = st.get(S.STATE)
        code = OK if state == C.EXITED else AGENT_FAILED if state == C.FAILED else TIME_LIMIT
        self.finished(code, str(st.get(S.REASON) or state))
        while True:  # SANDBOX_ON_DONE=stay: until SIGTERM, ticking WIP pushes
            SV._sleep(SV.TICK)
            self.tick(time.time())

    def finished(self, code: int, reason: str) -> None:
        """The task is over: push the final state; end the run (or, ``stay``, keep serving)."""
        ok = self.push_now("final" if code == OK else "ended")
        self.result = code if ok else PUSH
        STATUS.update(state="done" if self.result == OK else "failed", exit_code=self.result, reason=reason)
        log(f"{reason}: exit {self.result}" + (f" (staying up: {H.ON_DONE}=stay)" if self.cfg.on_done == "stay"
                                                else ""))
        if self.cfg.on_done == "exit":
            _state(C.EXITED if self.result == OK else C.FAILED, {S.EXIT_CODE: self.result, S.REASON: reason})
            raise _End(self.result)

    def terminated(self, started: float) -> int:
        """SIGTERM: stop the agent, push what is uncommitted as a WIP commit, within the budget."""
        pane = SV._pane(self.session)
        if pane is not None and not pane["dead"] and pane["pid"]:
            try:
                os.killpg(pane["pid"], signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + KILL_GRACE
            while time.monotonic() < deadline and not (SV._pane(self.session) or {"dead": True})["dead"]:
                time.sleep(0.05)
        if self.result is None:
            _state(C.STOPPED, {S.REASON: "stopped (SIGTERM)"})
        left = TERM_BUDGET - (time.monotonic() - started)
        ok = self.push_now("stopped", timeout=max(1.0, left))
        code = (self.result if self.result is not None else STOPPED) if ok else PUSH
        STATUS.update(state="stopped", exit_code=code)
        log(f"stopped by SIGTERM: exit {code} after {time.monotonic() - started:.1f} s")
        return code


def _state(state: str, fields: dict[str, Any]) -> None:
    """The end in the state file, for `sandbox ls` (never fatal: there may be nowhere to write it)."""
    try:
        I.write_state(state, fields)
    except OSError:
        pass


def main() -> int:
    """The headless init: configure, clone, run the agent, push; the exit code is the result."""
    started = [0.0]

    def on_term(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the handling below must not be cut short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        started[0] = time.monotonic()
        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    sup: Headless | None = None
    try:
        try:
            if I.EARLY_TERM:  # a SIGTERM while the init was still importing (sandbox.inside.EARLY_TERM)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                started[0] = I.EARLY_TERM[0]
                raise Terminated()
            cfg = configure(dict(os.environ))
            I._own_dir(C.SUPERVISOR_DIR, 0o711)  # (the supervisor's: its git, its clone, tmux's socket)
            if os.getuid() == 0:  # the supervisor; the agent runs as cfg.agent (never as root)
                split_uids(cfg)
            else:
                for d in (TMP_ROOT, cfg.home, cfg.state_dir):
                    os.makedirs(d, exist_ok=True)
            reach = credential_reach(cfg)
            STATUS.update(state="cloning", name=cfg.name, branch=cfg.branch, attempt=cfg.attempt,
                          task_index=cfg.index, last_push=None, pushes=0, push_credential=reach,
                          uids={"supervisor": os.getuid(), "agent": cfg.agent[0] if cfg.split else os.getuid()})
            if reach != "the supervisor":
                log("warning: " + reach)
            if cfg.port:
                serve_status(cfg.port)
            I.STATE_DIR, I.STATE = cfg.state_dir, os.path.join(cfg.state_dir, C.STATE_FILE)
            I.AGENT_DIR = os.path.join(cfg.state_dir, C.AGENT_STATE)
            I.REPORT = os.path.join(I.AGENT_DIR, C.REPORT_FILE)
            prev = I.read_state()  # a state dir that outlives the container (`sandbox start` of a spawned one)
            if prev.get(S.MODE) == "headless" and prev.get(S.PUSHED) and cfg.attempt == 0:
                cfg.attempt = int(prev.get(S.RUN_ATTEMPT) or 0) + 1
                log(f"started again after a run that pushed {str(prev[S.PUSHED])[:12]}: attempt {cfg.attempt}")
            if prev:
                _unlink_state()  # this run's supervisor starts afresh
            STATUS["attempt"] = cfg.attempt
            log(f"{cfg.name}: task {cfg.index}, branch {cfg.branch}, attempt {cfg.attempt}")
            git = Git(cfg)
            setup_git(cfg, git)
            lease, first = prepare(cfg, git)
            sup = start(cfg, git, lease)
            if not sup.push(first, "claimed"):
                raise Failure(PUSH, f"cannot push {cfg.branch} to {cfg.repo} (see above)")
            STATUS["state"] = "running"
            return sup.run()
        except Terminated:
            if sup is None:
                log("stopped by SIGTERM before the agent started: nothing to push")
                return STOPPED
            return sup.terminated(started[0])
    except _End as e:
        return e.code
    except Failure as e:
        STATUS.update(state="failed", exit_code=e.code, reason=str(e))
        _state(C.FAILED, {S.EXIT_CODE: e.code, S.REASON: str(e)})
        log(f"error: {e}")
        return e.code
    except Terminated:  # a second signal while handling the first: never 137
        return STOPPED
    except Exception as e:  # noqa: BLE001 - the one boundary: one line, never a traceback with secrets
        log(f"internal error: {type(e).__name__}: {clean(str(e))}")
        if sup is not None:  # no work lost on this path either
            try:
                sup.push_now("ended by an internal error", timeout=TERM_BUDGET)
            except BaseException:  # noqa: BLE001 - best effort, then the documented code
                pass
        return INTERNAL
    finally:
        if sup is not None:
            I.tmux("kill-server", check=False)


def start(cfg: Config, git: Git, lease: str) -> Headless:
    """HOME (Claude Code's first-run answers, hooks), the mock model, the launch document for the hooks,
    the agent's environment (no git token in it); the supervisor, not yet running."""
    launch = C.Launch(name=cfg.name, session=cfg.session, argv=cfg.argv, workdir=cfg.workspace, task=cfg.task,
                      delivery=cfg.delivery, claude=cfg.claude, mock_model=cfg.mock, mock_script=cfg.mock_script,
                      git_identity={"name": cfg.git_name, "email": cfg.git_email}, retries=cfg.retries,
                      max_time=cfg.max_time, uid=cfg.agent[0] if cfg.split else 0, gid=cfg.agent[1] if cfg.split else 0)
    launch_file = f"{C.SUPERVISOR_DIR}/launch.json"  # (the supervisor's, readable: the agent's hooks read it)
    I._replace(launch_file, launch.to_json())
    os.chmod(launch_file, 0o644)
    env = {k: v for k, v in os.environ.items() if k not in (H.GIT_TOKEN, TOKEN_FILE, H.API_KEY + C.SECRET_FILE)}
    env.update({"HOME": cfg.home, C.LAUNCH_ENV: launch_file, C.STATE_DIR_ENV: cfg.state_dir,
                "GIT_TERMINAL_PROMPT": "0"})  # (a `git push` of the agent's asks nobody for a password)
    if cfg.claude:  # where _setup_home puts Claude Code's settings and hooks (on the state dir, as for spawned agents)
        env["CLAUDE_CONFIG_DIR"] = home.claude_dir()
    if cfg.api_key:
        env[H.API_KEY] = cfg.api_key
    SV.install_wake()
    I.prepare(launch)  # (root: the agent's uid from launch.uid; else one uid for the supervisor and the agent)
    home.write_tmux_conf(os.getpid())
    env["TMUX_TMPDIR"] = os.environ["TMUX_TMPDIR"]
    os.environ.clear()
    os.environ.update(env)
    if cfg.mock:
        home._start_mock(launch, env)
    I.as_agent_call(home._setup_home, launch, env.get(H.API_KEY))  # (as the agent: its files)
    agent_gitconfig(cfg, git)  # (_setup_home wrote a .gitconfig of identity only)
    os.environ.clear()
    os.environ.update(env)
    from shutil import which

    if which(cfg.argv[0]) is None:
        raise Failure(CONFIG, f"{cfg.argv[0]}: command not found in the image")
    sup = Headless(launch, cfg, git, lease)  # (reads the state file: before anything is written to it)
    I.write_state(None, {S.NAME: cfg.name, S.MODE: "headless", S.BRANCH: cfg.branch, S.TASK_INDEX: cfg.index,
                         S.RUN_ATTEMPT: cfg.attempt, S.WORKDIR: cfg.workspace, S.TASK: cfg.task[:200]})
    return sup
