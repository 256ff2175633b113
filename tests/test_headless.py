"""Headless mode: the agent image alone, run the way a Cloud Run-like host runs it — a read-only root
with a tmpfs /tmp, a memory limit, PORT published on 127.0.0.1 only, a random non-root uid — against
a git server of our own (``tests/gitserver.py``: git http-backend behind a token) in a second
container, on a network the test made. Real engine, real git, real Claude Code (scripted model).
Also ``compose.yaml`` (``docker compose up --scale agent=2``) and ``sandbox`` on its replicas."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import RUN_ID, Env, git, make_repo, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.claude]

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tok-" + uuid.uuid4().hex
PORT = 8080
SLOW_SCRIPT = {"turns": [], "default": {"steps": [
    {"tool": "Write", "input": {"file_path": "{cwd}/progress.txt", "content": "half done\n"}},
    {"tool": "Bash", "input": {"command": "python3 -c 'import time; time.sleep(120)'; echo slept",
                               "description": "think for a long time"}},
    {"text": "Done."}]}}


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
    return proc


@dataclass
class Remote:
    """The git server: its network, its container, the bare repositories it serves (on this host)."""

    network: str
    host: str
    srv: Path
    files: Path          # mounted read-only into the agents at /files
    image: str

    def url(self, repo: str = "app") -> str:
        return f"http://{self.host}:{PORT}/{repo}.git"

    def git(self, *args: str, repo: str = "app") -> str:
        return git(self.srv / f"{repo}.git", *args)

    def has(self, branch: str, repo: str = "app") -> bool:
        return subprocess.run(["git", "--git-dir", str(self.srv / f"{repo}.git"), "rev-parse", "--verify", "-q",
                               f"refs/heads/{branch}"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def remote(agent_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    base = tmp_path_factory.mktemp("remote")
    base.chmod(0o755)
    srv, files = base / "srv", base / "files"
    files.mkdir()
    seed = make_repo(base / "seed")
    (seed / "test_flaky.py").write_text("def test_flaky():\n    assert True\n")
    git(seed, "add", ".")
    git(seed, "commit", "-q", "-m", "a flaky test")
    srv.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(seed), str(srv / "app.git")], check=True)
    (files / "token").write_text(TOKEN + "\n")
    (files / "wrong-token").write_text("not-the-token\n")
    (files / "empty").write_text("")
    (files / "slow.json").write_text(json.dumps(SLOW_SCRIPT))
    (files / "tasks.txt").write_text("# one task a line\nfix the flaky test\nadd a changelog\n")
    shutil.copy(ROOT / "tests" / "gitserver.py", files / "gitserver.py")
    for p in files.iterdir():
        p.chmod(0o644)
    suffix = uuid.uuid4().hex[:8]
    network, host = f"sbx-hl-{suffix}", f"sbx-git-{suffix}"
    docker("network", "create", "--label", f"sandbox.run-id={RUN_ID}", network)
    try:
        # The server runs as root in its own container: it writes the bare repositories we inspect here.
        docker("run", "-d", "--name", host, "--network", network, "--label", f"sandbox.run-id={RUN_ID}",
               "--user", "0:0", "-v", f"{srv}:/srv/git", "-v", f"{files}:/files:ro", "--entrypoint", "python3",
               agent_image, "/files/gitserver.py", "/srv/git", str(PORT), "/files/token")
        wait_for(lambda: "serving" in docker("logs", host).stdout, 20, "the git server")
        yield Remote(network, host, srv, files, agent_image)
    finally:
        docker("rm", "-f", "-v", host, check=False)
        docker("network", "rm", network, check=False)


@dataclass
class Agent:
    name: str
    uid: int

    def port(self) -> str:
        return docker("port", self.name, f"{PORT}/tcp").stdout.split()[0]

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.port()}{path}", timeout=3) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (OSError, IndexError):
            return 0, b""

    def status(self) -> dict:
        code, body = self.get("/status")
        return json.loads(body) if code == 200 else {}

    def logs(self) -> str:
        proc = docker("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def wait_exit(self, timeout: float) -> int:
        return int(docker("wait", self.name, timeout=timeout).stdout.strip())


@pytest.fixture
def run_agent(remote: Remote) -> Iterator:
    made: list[str] = []

    def run(branch: str, task: str | None = "fix the flaky test", *, token: str = "token", extra: dict[str, str] | None = None,
            script: str | None = None, uid: int | None = None, args: tuple[str, ...] = ()) -> Agent:
        uid = random.randint(20000, 60000) if uid is None else uid
        name = f"sbx-hl-agent-{uuid.uuid4().hex[:8]}"
        env = {"SANDBOX_REPO": remote.url(), "SANDBOX_PUSH_BRANCH": branch, "SANDBOX_GIT_TOKEN_FILE": f"/files/{token}",
               "SANDBOX_MOCK_MODEL": "1", "PORT": str(PORT), **({"SANDBOX_TASK": task} if task else {}), **(extra or {})}
        if script:
            env["SANDBOX_MOCK_SCRIPT_FILE"] = f"/files/{script}"
        argv = ["run", "-d", "--name", name, "--label", f"sandbox.run-id={RUN_ID}", "--network", remote.network,
                "--read-only", "--tmpfs", "/tmp", "--memory", "1g", "--user", f"{uid}:{uid}",
                "-p", f"127.0.0.1::{PORT}", "-v", f"{remote.files}:/files:ro", *args]
        for k, v in env.items():
            argv += ["-e", f"{k}={v}"]
        docker(*argv, remote.image)
        made.append(name)
        return Agent(name, uid)

    yield run
    for name in made:
        docker("rm", "-f", "-v", name, check=False)


def test_run_pushes_the_agents_commit_serves_health_and_keeps_the_token_out(run_agent, remote: Remote) -> None:
    agent = run_agent("sandbox/flaky", extra={"SANDBOX_ON_DONE": "stay"})
    wait_for(lambda: agent.get("/healthz") == (200, b"ok\n"), 60, "/healthz while running")
    status = wait_for(lambda: (s := agent.status()).get("state") == "done" and s, 90, "the task done (/status)")
    assert status["branch"] == "sandbox/flaky" and status["attempt"] == 0 and status["exit_code"] == 0
    assert status["last_push"]["ok"] and status["last_push"]["sha"] == remote.git("rev-parse", "sandbox/flaky").strip()

    # The pushed branch carries the agent's commit, on the base.
    assert remote.git("log", "-1", "--format=%s", "sandbox/flaky").strip() == "sandbox: fix the flaky test"
    assert remote.git("show", "sandbox/flaky:SANDBOX_TASK.md") == "# Task\n\nfix the flaky test\n"
    assert remote.git("merge-base", "--is-ancestor", "main", "sandbox/flaky") == ""

    # The host's constraints held: read-only root, the memory limit, the random uid, 127.0.0.1 only.
    info = json.loads(docker("inspect", agent.name).stdout)[0]
    assert info["HostConfig"]["ReadonlyRootfs"] and info["HostConfig"]["Memory"] == 2**30
    assert info["Config"]["User"] == f"{agent.uid}:{agent.uid}"
    assert {b["HostIp"] for b in info["NetworkSettings"]["Ports"][f"{PORT}/tcp"]} == {"127.0.0.1"}
    assert docker("exec", agent.name, "id", "-u").stdout.strip() == str(agent.uid)

    # The token: in the credential helper's file only — not in the remote URL, the git config, the
    # agent's environment, the logs, the engine's view of the container, nor anything pushed. The
    # helper is in the supervisor's own git config; the agent's clone has none (its origin is the
    # supervisor's clone). Run as one uid (this random --user), the agent could still reach it: said so.
    assert TOKEN not in json.dumps(info)
    assert TOKEN not in agent.logs()
    assert "running as one uid: the agent can reach the push credential" in agent.logs()
    assert "running as one uid" in status["push_credential"]
    config = docker("exec", agent.name, "sh", "-c", "cat /tmp/sandbox/work/.git/config "
                    "/tmp/sandbox/home/.gitconfig").stdout
    assert "/tmp/.sandbox/remote.git" in config and TOKEN not in config and "credential" not in config
    helper = docker("exec", agent.name, "cat", "/tmp/.sandbox/git/.gitconfig").stdout
    assert remote.host in helper and "credential" in helper and TOKEN not in helper
    pane_env = docker("exec", agent.name, "sh", "-c", "cat /proc/$(cat /tmp/sandbox-agent-pid | cut -d' ' -f2)/environ"
                      ).stdout
    assert TOKEN not in pane_env and "SANDBOX_GIT_TOKEN" not in pane_env
    objects = subprocess.run(["git", "--git-dir", str(remote.srv / "app.git"), "cat-file", "--batch-all-objects",
                              "--batch"], capture_output=True).stdout
    assert TOKEN.encode() not in objects
    assert set(remote.git("for-each-ref", "--format=%(refname)").split()) >= {"refs/heads/sandbox/flaky"}

    # Still attachable: the agent runs in its tmux session.
    assert "fix the flaky test" in docker("exec", agent.name, "tmux", "capture-pane", "-p", "-t", "agent").stdout

    # Stopped after the task was done and pushed: the result stays 0.
    docker("stop", "-t", "10", agent.name, timeout=30)
    assert agent.wait_exit(10) == 0


def test_sigterm_mid_task_pushes_wip_and_a_retry_resumes_from_it(run_agent, remote: Remote) -> None:
    agent = run_agent("sandbox/slow", "a slow task", script="slow.json", extra={"SANDBOX_WIP_INTERVAL": "600"})
    wait_for(lambda: agent.status().get("agent") == "busy" and docker(
        "exec", agent.name, "test", "-f", "/tmp/sandbox/work/progress.txt", check=False).returncode == 0,
        90, "the agent mid-task (a file written, a long command running)")
    claimed = remote.git("rev-parse", "sandbox/slow").strip()
    assert claimed == remote.git("rev-parse", "main").strip()  # claimed at the base; the file not pushed yet

    t0 = time.monotonic()
    docker("kill", "--signal", "TERM", agent.name)
    code = agent.wait_exit(15)
    elapsed = time.monotonic() - t0
    assert code == 7 and elapsed < 10, (code, elapsed, agent.logs())
    tip = remote.git("log", "-1", "--format=%s%n%P", "sandbox/slow").split("\n")[:2]
    assert tip[0] == "sandbox: WIP (stopped)" and tip[1] == claimed
    assert remote.git("show", "sandbox/slow:progress.txt") == "half done\n"
    assert "stopped by SIGTERM: exit 7" in agent.logs()

    # A retry (Cloud Run's attempt 1) starts from the pushed branch, not from the base.
    wip = remote.git("rev-parse", "sandbox/slow").strip()
    retry = run_agent("sandbox/slow", "finish the slow task", extra={"CLOUD_RUN_TASK_ATTEMPT": "1"})
    assert retry.wait_exit(120) == 0, retry.logs()
    assert "from the pushed branch sandbox/slow" in retry.logs()
    assert remote.git("log", "-1", "--format=%s%n%P", "sandbox/slow").split("\n")[:2] == [
        "sandbox: finish the slow task", wip]
    assert remote.git("show", "sandbox/slow:progress.txt") == "half done\n"

    # A first attempt refuses a branch that exists: nothing is overwritten.
    again = run_agent("sandbox/slow", "start over")
    assert again.wait_exit(60) == 2
    assert "exists on the remote already" in again.logs()
    assert remote.git("log", "-1", "--format=%s", "sandbox/slow").strip() == "sandbox: finish the slow task"


def test_wrong_token_gives_one_clear_error(run_agent, remote: Remote) -> None:
    agent = run_agent("sandbox/denied", token="wrong-token")
    assert agent.wait_exit(60) == 3
    out = agent.logs()
    errors = [ln for ln in out.splitlines() if "error" in ln.lower()]
    assert errors == [f"sandbox headless: error: the remote {remote.url()} refused the credentials "
                      "(check SANDBOX_GIT_TOKEN_FILE)"], out
    assert "not-the-token" not in out and "Traceback" not in out
    assert not remote.has("sandbox/denied")


def test_bad_configuration_exits_2(run_agent, remote: Remote) -> None:
    agent = run_agent("sandbox/bad", None, extra={"SANDBOX_REPO": f"http://user:pw@{remote.host}:{PORT}/app.git"})
    assert agent.wait_exit(30) == 2
    assert agent.logs().strip().splitlines()[-1] == ("sandbox headless: error: SANDBOX_REPO must not carry "
                                                     "credentials: pass the token as SANDBOX_GIT_TOKEN_FILE")
    assert "pw" not in agent.logs().replace("push", "")
    # Root without the supervisor's capabilities cannot run the agent as another uid: refused, never as root.
    root = run_agent("sandbox/root", uid=0, args=("--cap-drop", "ALL"))
    assert root.wait_exit(30) == 2
    assert root.logs().strip().splitlines() == [
        "sandbox headless: error: started as root without the capabilities to run the agent as another uid: give "
        "the container SETUID, SETGID, SETPCAP, KILL (and nothing else), or run it as a non-root uid"]


def test_cloud_run_task_index_picks_a_task_of_the_list(run_agent, remote: Remote) -> None:
    agent = run_agent("sandbox/list-{index}", None, extra={"SANDBOX_TASKS_FILE": "/files/tasks.txt",
                                                           "CLOUD_RUN_TASK_INDEX": "1", "CLOUD_RUN_TASK_COUNT": "2"})
    assert agent.wait_exit(120) == 0, agent.logs()
    assert remote.git("log", "-1", "--format=%s", "sandbox/list-1").strip() == "sandbox: add a changelog"
    out_of_range = run_agent("sandbox/list-{index}", None, extra={"SANDBOX_TASKS_FILE": "/files/tasks.txt",
                                                                  "CLOUD_RUN_TASK_INDEX": "2"})
    assert out_of_range.wait_exit(30) == 2
    assert "task index 2 is out of range: /files/tasks.txt has 2 tasks" in out_of_range.logs()


# -- compose.yaml -------------------------------------------------------------------------------------------
def compose_argv() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed")


def test_compose_up_scale_two_listed_read_and_removed_by_sandbox(remote: Remote, env: Env, tmp_path: Path) -> None:
    project = f"sbxc{uuid.uuid4().hex[:8]}"
    override = tmp_path / "override.yaml"  # only what a test needs: the git server's network
    override.write_text(f"services:\n  agent:\n    networks: [default, gitnet]\n"
                        f"networks:\n  gitnet:\n    external: true\n    name: {remote.network}\n")
    uid = random.randint(20000, 60000)
    cenv = {**os.environ, "SANDBOX_IMAGE": remote.image, "SANDBOX_REPO": remote.url(),
            "SANDBOX_TASKS": str(remote.files / "tasks.txt"), "SANDBOX_GIT_TOKEN_PATH": str(remote.files / "token"),
            "ANTHROPIC_API_KEY_PATH": str(remote.files / "empty"), "SANDBOX_MOCK_MODEL": "1",
            "SANDBOX_RUN_ID": RUN_ID, "SANDBOX_UID": str(uid), "SANDBOX_GID": str(uid), "SANDBOX_MEMORY": "1g"}
    base = [*compose_argv(), "-p", project, "-f", str(ROOT / "compose.yaml"), "-f", str(override)]

    def compose(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, env=cenv, cwd=ROOT, timeout=timeout)

    def ours(kind: str) -> list[str]:
        return docker(kind, "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").stdout.split() \
            if kind != "container" else docker("ps", "-aq", "--filter",
                                               f"label=com.docker.compose.project={project}").stdout.split()

    try:
        up = compose("up", "-d", "--scale", "agent=2")
        assert up.returncode == 0, up.stderr
        names = {f"{project}-agent-1", f"{project}-agent-2"}

        def listed() -> list[dict]:
            rows = [r for r in env.ok("ls", "--all", "--json").json() if r["name"] in names]
            return rows if len(rows) == 2 and all(r["branch"] for r in rows) else []

        rows = wait_for(listed, 90, "both replicas in `sandbox ls --all`")
        assert {r["branch"] for r in rows} == {"sandbox/compose-0", "sandbox/compose-1"}
        assert all(r["mode"] == "headless" and r["worktree"] is None for r in rows)
        wait_for(lambda: remote.has("sandbox/compose-0") and remote.has("sandbox/compose-1") and {
            remote.git("log", "-1", "--format=%s", b).strip() for b in ("sandbox/compose-0", "sandbox/compose-1")} == {
            "sandbox: fix the flaky test", "sandbox: add a changelog"}, 120, "both tasks pushed")

        table = env.ok("ls", "--all").out
        assert f"{project}-agent-1" in table and f"{project}-agent-2" in table and "sandbox/compose-" in table
        (two,) = [r for r in rows if r["name"] == f"{project}-agent-2"]
        assert two["attach"].endswith(f"{two['container']} tmux attach -t agent")
        assert "Done: wrote SANDBOX_TASK.md" in env.ok("logs", f"{project}-agent-2").out
        env.ok("send", f"{project}-agent-2", "one more thing")
        wait_for(lambda: "one more thing" in env.ok("logs", f"{project}-agent-2").out, 30, "the text typed in")

        # `rm` stops it first (SIGTERM: its work pushed), then removes the container.
        removed = env.ok("rm", f"{project}-agent-1")
        assert removed.out.strip().startswith(f"removed {project}-agent-1")
        assert len(ours("container")) == 1
        assert env.run("logs", f"{project}-agent-1").code == 4
    finally:
        down = compose("down", "-v", "--remove-orphans")
    assert down.returncode == 0, down.stderr
    assert ours("container") == [] and ours("network") == [] and ours("volume") == []


# -- sandbox spawn --headless --------------------------------------------------------------------------------
@dataclass
class HostRemote:
    """A git server on this host, on the gateway of an agents' network (ICC off, as `sandbox` makes it)."""

    network: str
    url: str
    srv: Path
    token_file: Path

    def git(self, *args: str) -> str:
        return git(self.srv / "app.git", *args)


@pytest.fixture
def host_remote(tmp_path: Path) -> Iterator[HostRemote]:
    seed = make_repo(tmp_path / "seed")
    srv = tmp_path / "srv"
    srv.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(seed), str(srv / "app.git")], check=True)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    network = f"sbx-hs-{uuid.uuid4().hex[:8]}"
    docker("network", "create", "--label", "sandbox.managed=1", "--label", f"sandbox.run-id={RUN_ID}",
           "-o", "com.docker.network.bridge.enable_icc=false", network)
    server = None
    try:
        gateway = docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", network).stdout.strip()
        server = subprocess.Popen(["python3", str(ROOT / "tests" / "gitserver.py"), str(srv), f"{gateway}:0",
                                   str(token_file)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = server.stdout.readline() if server.stdout else ""
        assert "serving" in line, line
        yield HostRemote(network, f"http://{gateway}:{line.split()[-1]}/app.git", srv, token_file)
    finally:
        if server is not None:
            server.kill()
            server.wait(10)
        ids = docker("ps", "-aq", "--filter", f"label=sandbox.run-id={RUN_ID}", "--filter", f"network={network}"
                     ).stdout.split()
        if ids:
            docker("rm", "-f", "-v", *ids, check=False)
        docker("network", "rm", network, check=False)


def test_spawn_headless_runs_the_same_mode_on_the_local_engine(env: Env, host_remote: HostRemote, tmp_path: Path) -> None:
    extra = {"SANDBOX_NETWORK": host_remote.network}
    nowhere = tmp_path / "not-a-repo"
    nowhere.mkdir()
    res = env.ok("spawn", "--headless", "--repo-url", host_remote.url, "--git-token-file", str(host_remote.token_file),
                 "--name", "hl-1", "fix the flaky test", cwd=nowhere, extra=extra)
    assert res.out.strip() == "hl-1" and f"sandbox/hl-1 to {host_remote.url}" in res.err
    env.ok("wait", "hl-1", "--until", "exited", "--timeout", "90", extra=extra)
    assert host_remote.git("log", "-1", "--format=%s", "sandbox/hl-1").strip() == "sandbox: fix the flaky test"
    (row,) = [r for r in env.ok("ls", "--all", "--json", extra=extra).json() if r["name"] == "hl-1"]
    assert (row["mode"], row["worktree"], row["state"], row["exit_code"]) == ("headless", None, "exited", 0)
    assert row["branch"] == "sandbox/hl-1" and row["repo"] == host_remote.url
    info = json.loads(docker("inspect", "sandbox-hl-1").stdout)[0]
    assert info["HostConfig"]["ReadonlyRootfs"] and info["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert info["State"]["ExitCode"] == 0 and TOKEN not in json.dumps(info)
    assert "SANDBOX_GIT_TOKEN_FILE=/var/lib/sandbox/git-token" in info["Config"]["Env"]
    state_dir = env.data / "state" / "hl-1"
    assert state_dir.is_dir()
    # Started again (its state dir outlived the run): a retry, from the branch it pushed.
    pushed = host_remote.git("rev-parse", "sandbox/hl-1").strip()
    env.ok("start", "hl-1", extra=extra)
    # (not `wait --until exited` at once: the first run's `exited` is in the state file until the new init's
    # first write, and on a loaded machine that wait could return before the second run began)
    wait_for(lambda: docker("logs", "sandbox-hl-1").stdout.count("the agent's turn ended") >= 2, 90,
             "the second run to end")
    env.ok("wait", "hl-1", "--until", "exited", "--timeout", "90", extra=extra)
    logs = docker("logs", "sandbox-hl-1").stdout
    assert "attempt 1" in logs and f"from the pushed branch sandbox/hl-1 ({pushed[:12]}): resuming" in logs, logs
    assert docker("inspect", "-f", "{{.State.ExitCode}}", "sandbox-hl-1").stdout.strip() == "0"
    env.ok("rm", "hl-1", extra=extra)
    assert docker("inspect", "sandbox-hl-1", check=False).returncode != 0 and not state_dir.exists()


def test_spawn_headless_bad_input_leaves_nothing(env: Env, host_remote: HostRemote, tmp_path: Path) -> None:
    extra = {"SANDBOX_NETWORK": host_remote.network}
    creds = host_remote.url.replace("http://", "http://user:pw@")
    res = env.run("spawn", "--headless", "--repo-url", creds, "--name", "hl-bad", "t", extra=extra)
    assert res.code == 2 and res.err.strip().splitlines() == [
        "sandbox: error: SANDBOX_REPO must not carry credentials: pass the token as SANDBOX_GIT_TOKEN_FILE"]
    assert env.run("spawn", "--push-branch", "x", "t", extra=extra).code == 2  # (needs --repo-url)

    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    res = env.run("spawn", "--headless", "--repo-url", host_remote.url, "--git-token-file", str(wrong),
                  "--name", "hl-denied", "t", extra=extra)
    assert res.code == 8, res.err
    assert res.err.strip().splitlines() == [f"sandbox: error: agent hl-denied did not start: the remote "
                                            f"{host_remote.url} refused the credentials (check SANDBOX_GIT_TOKEN_FILE)"]
    left = docker("ps", "-aq", "--filter", f"label=sandbox.run-id={RUN_ID}", "--filter", "label=sandbox.mode=headless"
                  ).stdout.split()
    assert left == [] and not (env.data / "state" / "hl-denied").exists() and not (env.data / "state" / "hl-bad").exists()


def test_time_limit_pushes_work_in_progress_and_exits_6(run_agent, remote: Remote) -> None:
    agent = run_agent("sandbox/limited", "a slow task", script="slow.json",
                      extra={"SANDBOX_MAX_TIME": "12", "SANDBOX_WIP_INTERVAL": "1"})
    assert agent.wait_exit(90) == 6, agent.logs()
    logs = agent.logs()
    assert "(work in progress)" in logs and "max-time 12s reached: exit 6" in logs
    assert remote.git("show", "sandbox/limited:progress.txt") == "half done\n"


def test_any_agent_command_its_exit_is_the_result(run_agent, remote: Remote) -> None:
    commit = "sh -c 'echo done > done.txt && git add done.txt && git commit -qm \"by a script\"'"
    ok = run_agent("sandbox/script", "typed into it", extra={"SANDBOX_AGENT_CMD": commit})
    assert ok.wait_exit(60) == 0, ok.logs()
    assert remote.git("log", "-1", "--format=%s", "sandbox/script").strip() == "by a script"
    failing = run_agent("sandbox/failing", "t", extra={"SANDBOX_AGENT_CMD": "sh -c 'echo wip > wip.txt; exit 3'",
                                                         "SANDBOX_RETRIES": "1"})
    assert failing.wait_exit(60) == 5, failing.logs()
    assert "gave up after 2 failed attempts (last exit 3): exit 5" in failing.logs()
    assert remote.git("show", "sandbox/failing:wip.txt") == "wip\n"  # what it left is pushed as WIP
