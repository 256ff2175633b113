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
- git credentials only through a credential helper in its own git config, scoped to the remote's
  host, reading the token file at each use: never in the URL, the environment of the agent, labels,
  logs or the pushed refs.

The exit code is the result (``contract.HEADLESS_EXIT``). Works with a read-only root (HOME, the
workspace and the state go under /tmp then) and any non-root uid.
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
    path = env.get(name + "_FILE", "")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip(), path
        except OSError as e:
            raise Failure(CONFIG, f"{name}_FILE: cannot read {path}: {e.strerror}") from None
    return env.get(name, "").strip(), ""


def _number(env: dict[str, str], name: str, default: str, kind: type = int) -> Any:
    raw = env.get(name, "").strip() or default
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
        raise Failure(CONFIG, f"SANDBOX_TASKS_FILE: cannot read {path}: {e.strerror}") from None
    if text.lstrip().startswith("["):
        try:
            tasks = json.loads(text)
        except ValueError as e:
            raise Failure(CONFIG, f"SANDBOX_TASKS_FILE {path}: not JSON: {e}") from None
        if not isinstance(tasks, list) or not all(isinstance(t, str) and t.strip() for t in tasks):
            raise Failure(CONFIG, f"SANDBOX_TASKS_FILE {path}: a JSON task list is an array of non-empty strings")
    else:
        tasks = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not tasks:
        raise Failure(CONFIG, f"SANDBOX_TASKS_FILE {path}: no tasks in it")
    return tasks


def claim(claims: str, count: int, me: str) -> int:
    """The first task of ``count`` no other replica claimed (a file per task, created exclusively, in
    a directory the replicas share); the one this container claimed before, after a restart."""
    try:
        os.makedirs(claims, exist_ok=True)
    except OSError:
        pass
    if not (os.path.isdir(claims) and os.access(claims, os.W_OK | os.X_OK)):
        raise Failure(CONFIG, f"SANDBOX_TASK_CLAIMS: {claims} is not a writable directory")
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
    raise Failure(CONFIG, f"all {count} tasks of SANDBOX_TASKS_FILE are claimed (more replicas than tasks)")


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

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.token, self.api_key) if len(s) >= 4)


def configure(env: dict[str, str]) -> Config:
    """The run's settings from the environment (``contract.HEADLESS_ENV``); ``Failure(2)`` when wrong."""
    from sandbox import agents
    from sandbox.errors import UsageError

    repo = env.get("SANDBOX_REPO", "").strip()
    parts = urlsplit(repo)
    if "://" in repo:
        if parts.scheme not in ("http", "https", "git", "file", "ssh"):
            raise Failure(CONFIG, f"SANDBOX_REPO: unsupported scheme {parts.scheme!r} (http, https, git, file, ssh)")
        if parts.password is not None or (parts.username and parts.scheme in ("http", "https")):
            raise Failure(CONFIG, "SANDBOX_REPO must not carry credentials: pass the token as SANDBOX_GIT_TOKEN_FILE")
    name = env.get("SANDBOX_NAME", "").strip() or os.uname().nodename
    task = env.get("SANDBOX_TASK", "")
    tasks_file = env.get("SANDBOX_TASKS_FILE", "").strip()
    index_raw = (env.get("SANDBOX_TASK_INDEX") or env.get("CLOUD_RUN_TASK_INDEX") or "").strip()
    index = _number(env, "SANDBOX_TASK_INDEX", index_raw or "0")
    if tasks_file:
        if task.strip():
            raise Failure(CONFIG, "set SANDBOX_TASK or SANDBOX_TASKS_FILE, not both")
        tasks = read_tasks(tasks_file)
        claims = env.get("SANDBOX_TASK_CLAIMS", "").strip()
        if not index_raw and claims:
            index = claim(claims, len(tasks), name)
        if index >= len(tasks):
            raise Failure(CONFIG, f"task index {index} is out of range: {tasks_file} has {len(tasks)} tasks")
        count = env.get("CLOUD_RUN_TASK_COUNT", "").strip()
        if count.isdigit() and int(count) != len(tasks):
            log(f"note: CLOUD_RUN_TASK_COUNT={count} but {tasks_file} has {len(tasks)} tasks")
        task = tasks[index]
    if not task.strip():
        raise Failure(CONFIG, "no task: set SANDBOX_TASK or SANDBOX_TASKS_FILE")
    branch = (env.get("SANDBOX_PUSH_BRANCH", "").strip() or "sandbox/task-{index}").replace("{index}", str(index))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,200}", branch) or ".." in branch or branch.endswith(
            (".lock", "/", ".")) or "//" in branch:
        raise Failure(CONFIG, f"SANDBOX_PUSH_BRANCH: {branch!r} is not a valid branch name")
    agent = env.get("SANDBOX_AGENT", "").strip() or "claude"
    model = env.get("SANDBOX_MODEL", "").strip()
    try:
        spec = agents.build(agent, model or None, task, env.get("SANDBOX_AGENT_CMD") or None)
    except UsageError as e:
        raise Failure(CONFIG, f"SANDBOX_AGENT/SANDBOX_AGENT_CMD: {e}") from None
    on_done = env.get("SANDBOX_ON_DONE", "").strip() or "exit"
    if on_done not in ("exit", "stay"):
        raise Failure(CONFIG, f"SANDBOX_ON_DONE={on_done!r}: exit or stay")
    attempt = _number(env, "SANDBOX_ATTEMPT", (env.get("SANDBOX_ATTEMPT") or env.get("CLOUD_RUN_TASK_ATTEMPT")
                                                or "0").strip())
    home = env.get("HOME", "") or "/home/agent"
    if not _writable(home):
        home = f"{TMP_ROOT}/home"
    workspace = env.get("SANDBOX_WORKSPACE", "").strip() or (
        f"{TMP_ROOT}/work" if home.startswith(TMP_ROOT) else os.path.join(home, "work"))
    state_dir = C.STATE_MOUNT if _writable(C.STATE_MOUNT) else f"{TMP_ROOT}/state"
    token, token_file = _secret(env, "SANDBOX_GIT_TOKEN")
    api_key, _ = _secret(env, "ANTHROPIC_API_KEY")
    mock = env.get("SANDBOX_MOCK_MODEL", "").strip().lower() in ("1", "true", "yes", "on")
    script = None
    script_file = env.get("SANDBOX_MOCK_SCRIPT_FILE", "").strip()
    if script_file:
        try:
            with open(script_file, encoding="utf-8") as f:
                script = json.load(f)
        except (OSError, ValueError) as e:
            raise Failure(CONFIG, f"SANDBOX_MOCK_SCRIPT_FILE {script_file}: {e}") from None
    port = _number(env, "PORT", env.get("PORT", "").strip() or "0")
    return Config(
        repo=repo, task=task, index=index, branch=branch, base=env.get("SANDBOX_BASE", "").strip(),
        argv=list(spec.argv), delivery=spec.delivery, claude=spec.claude, model=model,
        retries=_number(env, "SANDBOX_RETRIES", "3"), max_time=_number(env, "SANDBOX_MAX_TIME", "0", float),
        wip_interval=_number(env, "SANDBOX_WIP_INTERVAL", "120", float) or 120.0, on_done=on_done,
        attempt=attempt, name=name, session=env.get("SANDBOX_SESSION", "").strip() or "agent", home=home,
        workspace=workspace, state_dir=state_dir, git_name=env.get("SANDBOX_GIT_NAME", "").strip() or "sandbox agent",
        git_email=env.get("SANDBOX_GIT_EMAIL", "").strip() or "agent@sandbox.invalid",
        git_user=env.get("SANDBOX_GIT_USER", "").strip() or "x-access-token", token=token, token_file=token_file,
        api_key=api_key, mock=mock, mock_script=script, port=port)


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


class Git:
    """Git in the agent's workspace, for the init (argv lists; hooks and fsmonitor off; no prompts)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        self.env.update(HOME=cfg.home, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", SSH_ASKPASS="/bin/false",
                        GIT_SSH_COMMAND="ssh -o BatchMode=yes")
        self.env.pop("SANDBOX_GIT_TOKEN", None)

    def run(self, *args: str, cwd: str | None = None, timeout: float = 120.0, index: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, GIT_INDEX_FILE=index) if index else self.env
        p = subprocess.run(["git", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", *args],
                           cwd=cwd or self.cfg.workspace, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=max(1.0, timeout))
        if check and p.returncode != 0:
            raise subprocess.CalledProcessError(p.returncode, args[0], p.stdout, p.stderr)
        return p

    def out(self, *args: str, **kw: Any) -> str:
        return self.run(*args, **kw).stdout.strip()

    def why(self, stderr: str) -> str:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        pick = next((ln for ln in lines if ln.startswith(("fatal:", "error:", "remote:"))), lines[-1] if lines else "")
        return clean(pick, self.cfg.secrets)


def setup_git(cfg: Config, git: Git) -> None:
    """The container's own git config ($HOME/.gitconfig): identity, and for http(s) remotes with a
    token, a credential helper scoped to the remote's host that reads the token file at each use."""
    conf = os.path.join(cfg.home, ".gitconfig")
    if os.path.exists(conf):
        os.unlink(conf)
    settings = [("user.name", cfg.git_name), ("user.email", cfg.git_email), ("push.default", "current"),
                ("advice.detachedHead", "false")]
    parts = urlsplit(cfg.repo)
    if cfg.token and parts.scheme in ("http", "https"):
        token_file = cfg.token_file
        if not token_file:  # given in the environment: kept in a file of its own, out of the agent's env
            os.makedirs(f"{TMP_ROOT}/secrets", mode=0o700, exist_ok=True)
            token_file = f"{TMP_ROOT}/secrets/git-token"
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(cfg.token + "\n")
        scope = f"credential.{parts.scheme}://{parts.netloc}"
        helper = f"!{shlex.quote(sys.executable)} -m sandbox.inside credential {shlex.quote(token_file)}"
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
            hint = "check SANDBOX_GIT_TOKEN_FILE" if cfg.token else "no token given: set SANDBOX_GIT_TOKEN_FILE"
            raise Failure(REMOTE, f"the remote {cfg.repo} refused the credentials ({hint})")
        raise Failure(REMOTE, f"cannot read the remote {cfg.repo}: {git.why(p.stderr)}")
    for line in p.stdout.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref:
            return sha
    return ""


def prepare(cfg: Config, git: Git) -> str:
    """Clone and check out the branch: from the pushed branch on a retry (attempt > 0), else from the
    base. The remote's sha of the branch ("" when it has none): the lease of the first push."""
    pushed = remote_head(git, cfg, f"refs/heads/{cfg.branch}")
    if pushed and cfg.attempt == 0:
        raise Failure(CONFIG, f"the branch {cfg.branch} exists on the remote already: set SANDBOX_ATTEMPT=1 to "
                              "resume from it, or choose another SANDBOX_PUSH_BRANCH")
    parent = os.path.dirname(cfg.workspace.rstrip("/")) or "/"
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(cfg.workspace) and os.listdir(cfg.workspace):
        raise Failure(CONFIG, f"SANDBOX_WORKSPACE {cfg.workspace} is not empty")
    log(f"cloning {cfg.repo}" + (f" (attempt {cfg.attempt})" if cfg.attempt else ""))
    p = git.run("clone", "--quiet", "--no-checkout", "--", cfg.repo, cfg.workspace, cwd=parent, timeout=600,
                check=False)
    if p.returncode != 0:
        raise Failure(REMOTE, f"cannot clone {cfg.repo}: {git.why(p.stderr)}")
    if pushed:
        start, what = pushed, f"the pushed branch {cfg.branch} ({pushed[:12]}): resuming"
    else:
        base = cfg.base or "HEAD"
        found = ""
        for cand in (f"refs/remotes/origin/{base}", base):
            q = git.run("rev-parse", "--verify", "--quiet", "--end-of-options", cand + "^{commit}", check=False)
            if q.returncode == 0:
                found = q.stdout.strip()
                break
        if not found:
            raise Failure(CONFIG, f"SANDBOX_BASE {base!r}: no such branch, tag or commit in {cfg.repo}")
        start, what = found, f"base {base} ({found[:12]})" + (" (nothing pushed yet)" if cfg.attempt else "")
    p = git.run("checkout", "--quiet", "-B", cfg.branch, start, check=False)
    if p.returncode != 0:
        raise Failure(CONFIG, f"cannot check out {cfg.branch}: {git.why(p.stderr)}")
    log(f"branch {cfg.branch} from {what}")
    return pushed


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
                body = dict(STATUS, agent=I.read_state().get(C.S.STATE))
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
class Headless(I.Supervisor):
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
        """The whole workspace as a commit: the agent's HEAD when nothing is uncommitted, else a WIP
        commit on top of it (a temporary index: the agent's own index and HEAD stay as they are)."""
        head = self.git.out("rev-parse", "--verify", "HEAD^{commit}")
        index = f"{TMP_ROOT}/wip.index"
        own = os.path.join(self.cfg.workspace, ".git", "index")
        tree = None
        if os.path.isfile(own) and not os.path.islink(own):  # its stat data spares rehashing every file
            with open(own, "rb") as src, open(index, "wb") as dst:
                dst.write(src.read())
            if self.git.run("add", "--all", "--ignore-errors", "--", ".", index=index, check=False).returncode == 0:
                tree = self.git.run("write-tree", index=index, check=False).stdout.strip() or None
        if tree is None:  # no index, or one caught mid-write: from HEAD's tree
            if os.path.exists(index):
                os.unlink(index)
            self.git.run("read-tree", head, index=index)
            self.git.run("add", "--all", "--ignore-errors", "--", ".", index=index, check=False)
            tree = self.git.out("write-tree", index=index)
        if tree == self.git.out("rev-parse", f"{head}^{{tree}}"):
            return head
        if self.remote and self.git.out("log", "-1", "--format=%T %P", self.remote, check=False) == f"{tree} {head}":
            return self.remote  # the WIP commit pushed last already holds this state
        return self.git.out("commit-tree", tree, "-p", head, "-m", f"sandbox: WIP ({why})\n\nNot committed by the "
                            f"agent: its workspace when it was {why}.")

    def push(self, sha: str, why: str, timeout: float = 60.0) -> bool:
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
            I.write_state(None, branch=self.cfg.branch, pushed=sha, pushed_at=now)
            log(f"pushed {self.cfg.branch} at {sha[:12]} ({why})")
        else:
            log(f"error: push of {self.cfg.branch} failed ({why}): {reason}")
        return ok

    def push_now(self, why: str, timeout: float = 60.0) -> bool:
        try:
            sha = self.snapshot(why)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            log(f"error: cannot snapshot the workspace ({why}): {clean(str(getattr(e, 'stderr', '') or e))}")
            return False
        return self.push(sha, why, timeout)

    # the supervisor's hooks
    def tick(self, now: float) -> None:
        if now >= self.next_wip:
            self.next_wip = now + self.cfg.wip_interval
            self.push_now("work in progress")
        if self.result is None and self.hooks:
            st = I.read_state()
            if int(st.get(C.S.STOPS) or 0) >= 1 and st.get(C.S.STATE) in (C.IDLE, C.WAITING):
                self.finished(OK, "the agent's turn ended: task done")

    def idle_forever(self) -> int:
        """The agent ended (exited, failed for good, or stopped by the time limit)."""
        st = I.read_state()
        state = st.get(C.S.STATE)
        code = OK if state == C.EXITED else AGENT_FAILED if state == C.FAILED else TIME_LIMIT
        self.finished(code, str(st.get(C.S.REASON) or state))
        while True:  # SANDBOX_ON_DONE=stay: until SIGTERM, ticking WIP pushes
            I._sleep(I.TICK)
            self.tick(time.time())

    def finished(self, code: int, reason: str) -> None:
        """The task is over: push the final state; end the run (or, ``stay``, keep serving)."""
        ok = self.push_now("final" if code == OK else "ended")
        self.result = code if ok else PUSH
        STATUS.update(state="done" if self.result == OK else "failed", exit_code=self.result, reason=reason)
        log(f"{reason}: exit {self.result}" + (" (staying up: SANDBOX_ON_DONE=stay)" if self.cfg.on_done == "stay"
                                                else ""))
        if self.cfg.on_done == "exit":
            _state(C.EXITED if self.result == OK else C.FAILED, exit_code=self.result, reason=reason)
            raise _End(self.result)

    def terminated(self, started: float) -> int:
        """SIGTERM: stop the agent, push what is uncommitted as a WIP commit, within the budget."""
        pane = I._pane(self.session)
        if pane is not None and not pane["dead"] and pane["pid"]:
            try:
                os.killpg(pane["pid"], signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + KILL_GRACE
            while time.monotonic() < deadline and not (I._pane(self.session) or {"dead": True})["dead"]:
                time.sleep(0.05)
        if self.result is None:
            _state(C.STOPPED, reason="stopped (SIGTERM)")
        left = TERM_BUDGET - (time.monotonic() - started)
        ok = self.push_now("stopped", timeout=max(1.0, left))
        code = (self.result if self.result is not None else STOPPED) if ok else PUSH
        STATUS.update(state="stopped", exit_code=code)
        log(f"stopped by SIGTERM: exit {code} after {time.monotonic() - started:.1f} s")
        return code


def _state(state: str, **fields: Any) -> None:
    """The end in the state file, for `sandbox ls` (never fatal: there may be nowhere to write it)."""
    try:
        I.write_state(state, **fields)
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
            if os.getuid() == 0:  # (Claude Code refuses to skip permissions as root; so do we, for every agent)
                raise Failure(CONFIG, "the agent never runs as root: run the image as a non-root uid (--user)")
            cfg = configure(dict(os.environ))
            STATUS.update(state="cloning", name=cfg.name, branch=cfg.branch, attempt=cfg.attempt,
                          task_index=cfg.index, last_push=None, pushes=0)
            if cfg.port:
                serve_status(cfg.port)
            for d in (TMP_ROOT, cfg.home, cfg.state_dir):
                os.makedirs(d, exist_ok=True)
            I.STATE_DIR, I.STATE = cfg.state_dir, os.path.join(cfg.state_dir, C.STATE_FILE)
            prev = I.read_state()  # a state dir that outlives the container (`sandbox start` of a spawned one)
            if prev.get("mode") == "headless" and prev.get("pushed") and cfg.attempt == 0:
                cfg.attempt = int(prev.get("run_attempt") or 0) + 1
                log(f"started again after a run that pushed {str(prev['pushed'])[:12]}: attempt {cfg.attempt}")
            if prev:
                os.unlink(I.STATE)  # this run's supervisor starts afresh
            STATUS["attempt"] = cfg.attempt
            log(f"{cfg.name}: task {cfg.index}, branch {cfg.branch}, attempt {cfg.attempt}")
            git = Git(cfg)
            setup_git(cfg, git)
            lease = prepare(cfg, git)
            sup = start(cfg, git, lease)
            if not sup.push(sup.git.out("rev-parse", "HEAD"), "claimed"):
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
        _state(C.FAILED, exit_code=e.code, reason=str(e))
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
                      max_time=cfg.max_time)
    launch_file = f"{TMP_ROOT}/launch.json"
    I._write(launch_file, launch.to_json())
    env = {k: v for k, v in os.environ.items() if k not in ("SANDBOX_GIT_TOKEN", "SANDBOX_GIT_TOKEN_FILE",
                                                            "ANTHROPIC_API_KEY_FILE")}
    env.update(HOME=cfg.home, SANDBOX_LAUNCH_FILE=launch_file, SANDBOX_STATE_DIR=cfg.state_dir)
    if cfg.claude:  # where _setup_home puts Claude Code's settings and hooks (on the state dir, as for spawned agents)
        env["CLAUDE_CONFIG_DIR"] = I.claude_dir()
    if cfg.api_key:
        env["ANTHROPIC_API_KEY"] = cfg.api_key
    I.install_wake()
    os.environ.clear()
    os.environ.update(env)
    if cfg.mock:
        I._start_mock(launch, env)
    identity = f"[user]\n\tname = {cfg.git_name}\n\temail = {cfg.git_email}\n"
    conf = os.path.join(cfg.home, ".gitconfig")
    keep = I._read(conf)
    I._setup_home(launch, env.get("ANTHROPIC_API_KEY"))  # (writes a .gitconfig of identity only: ours back)
    I._write(conf, keep if keep else identity)
    os.environ.clear()
    os.environ.update(env)
    from shutil import which

    if which(cfg.argv[0]) is None:
        raise Failure(CONFIG, f"{cfg.argv[0]}: command not found in the image")
    sup = Headless(launch, cfg, git, lease)  # (reads the state file: before anything is written to it)
    I.write_state(None, name=cfg.name, mode="headless", branch=cfg.branch, task_index=cfg.index, run_attempt=cfg.attempt,
                  workdir=cfg.workspace, task=cfg.task[:200])
    return sup
