"""The Swarm backend on a one-node swarm the test makes (and leaves as it found it, even on failure).

`docker swarm init --advertise-addr 127.0.0.1` on this engine; an attachable overlay network; the
token-guarded git server (``tests/gitserver.py``) as a container on it. Then what a user does with
``--engine swarm``: spawn (a headless agent as a one-replica service), ls (NODE column), the attach
command, send/logs, a commit pushed by Claude Code (scripted model), a task killed and brought back by
the service's restart policy, rm (service and secrets gone, the pushed branch kept). And the refusals:
a workspace spawn on the swarm, a workspace spawn on a remote engine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox import contract

from tests.conftest import RUN_ID, Env, git, make_env, make_repo, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "swarm-token-" + uuid.uuid4().hex
PORT = 8080


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
    return proc


def networks() -> set[str]:
    return set(docker("network", "ls", "--format", "{{.Name}}").stdout.split())


def containers_on_user_networks() -> list[str]:
    """Running containers attached to a network other than bridge, host or none, but this test run's
    own (whatever an earlier test left for the session's reaper)."""
    out = docker("ps", "--format", '{{.Names}}\t{{.Networks}}\t{{.Label "sandbox.run-id"}}').stdout
    rows = [line.split("\t") for line in out.splitlines() if line]
    return [r[0] for r in rows if len(r) == 3 and r[2] != RUN_ID and set(r[1].split(",")) - {"bridge", "host", "none", ""}]


@dataclass
class Cluster:
    env: Env
    srv: Path
    url: str
    token_file: Path
    cwd: Path

    def has(self, branch: str) -> bool:
        return subprocess.run(["git", "--git-dir", str(self.srv / "app.git"), "rev-parse", "--verify", "-q",
                               f"refs/heads/{branch}"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def cluster(agent_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    before = networks()
    made_swarm = state == "inactive"
    if state not in ("inactive", "active"):
        pytest.fail(f"the engine's swarm state is {state!r}: neither inactive nor active")
    if made_swarm and (named := containers_on_user_networks()):
        # Found here (Docker 20.10): `docker swarm leave --force` drops the embedded-DNS names of the
        # containers already running on user-defined networks (an isolated agent loses its proxies'
        # names). Making and leaving a swarm would not leave the engine as it found it.
        pytest.skip(f"{len(named)} running container(s) on user-defined networks ({', '.join(named[:3])}…) would "
                    "lose their DNS names when the test leaves the swarm it makes")
    base = tmp_path_factory.mktemp("swarm")
    base.chmod(0o755)
    srv, files = base / "srv", base / "files"
    files.mkdir()
    seed = make_repo(base / "seed")
    srv.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(seed), str(srv / "app.git")], check=True)
    (files / "token").write_text(TOKEN + "\n")
    shutil.copy(ROOT / "tests" / "gitserver.py", files / "gitserver.py")
    for p in files.iterdir():
        p.chmod(0o644)
    suffix = uuid.uuid4().hex[:8]
    network, host = f"sbx-swarm-{suffix}", f"sbx-swgit-{suffix}"
    env = make_env(base / "user", agent_image)
    env.env.update({"SANDBOX_ENGINE": "swarm", "SANDBOX_SWARM_NETWORK": network})
    cwd = base / "elsewhere"
    cwd.mkdir()
    try:
        if made_swarm:
            docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        docker("network", "create", "-d", "overlay", "--attachable", "--label", f"sandbox.run-id={RUN_ID}", network)
        docker("run", "-d", "--name", host, "--network", network, "--label", f"sandbox.run-id={RUN_ID}",
               "--user", "0:0", "-v", f"{srv}:/srv/git", "-v", f"{files}:/files:ro", "--entrypoint", "python3",
               agent_image, "/files/gitserver.py", "/srv/git", str(PORT), "/files/token")
        wait_for(lambda: "serving" in docker("logs", host).stdout + docker("logs", host).stderr, 20, "the git server")
        yield Cluster(env, srv, f"http://{host}:{PORT}/app.git", files / "token", cwd)
    finally:
        services = docker("service", "ls", "-q", "--filter", f"label=sandbox.run-id={RUN_ID}", check=False).stdout.split()
        if services:
            docker("service", "rm", *services, check=False)
        docker("rm", "-f", "-v", host, check=False)
        if made_swarm:
            docker("swarm", "leave", "--force", check=False, timeout=120)
            if "docker_gwbridge" not in before:  # what the swarm made goes with it
                docker("network", "rm", "docker_gwbridge", check=False)
        else:
            secrets = docker("secret", "ls", "-q", "--filter", f"label=sandbox.run-id={RUN_ID}", check=False).stdout.split()
            if secrets:
                docker("secret", "rm", *secrets, check=False)
        docker("network", "rm", network, check=False)


def spawn(c: Cluster, name: str, *args: str) -> str:
    return c.env.ok("spawn", "--repo-url", c.url, "--git-token-file", str(c.token_file), "--name", name, *args,
                    cwd=c.cwd, timeout=240).out.strip()


def row(c: Cluster, name: str) -> dict:
    (found,) = [r for r in c.env.ok("ls", "--json", cwd=c.cwd).json() if r["name"] == name]
    return found


def test_a_shell_agent_on_the_swarm_is_listed_reached_and_brought_back(cluster: Cluster) -> None:
    c = cluster
    name = spawn(c, "sw-sh", "--agent-cmd", "bash", "echo started")
    try:
        assert name == "sw-sh"
        r = row(c, name)
        hostname = docker("info", "--format", "{{.Name}}").stdout.strip()
        assert (r["backend"], r["node"], r["mode"]) == ("swarm", hostname, "headless") and r["state"] in ("busy", "idle")
        assert r["attach"].startswith("docker exec -it sandbox-sw-sh.1.") and r["attach"].endswith("tmux attach -t sw-sh")
        table = c.env.ok("ls", cwd=c.cwd).out
        assert "NODE" in table.splitlines()[0] and hostname in table
        service = json.loads(docker("service", "inspect", "sandbox-sw-sh").stdout)[0]["Spec"]
        task = service["TaskTemplate"]
        assert service["Labels"]["sandbox.name"] == "sw-sh" and task["ContainerSpec"]["Labels"]["sandbox.backend"] == "swarm"
        assert task["RestartPolicy"]["Condition"] == "on-failure" and task["ContainerSpec"]["ReadOnly"] is True
        # The task starts as root with the supervisor's capabilities alone: it reads the secrets (root's, 0400)
        # and pushes; the agent runs as SANDBOX_AGENT_UID with none (issue 26, item 6).
        spec_ = task["ContainerSpec"]
        assert spec_["CapabilityDrop"] == ["ALL"] and spec_["User"] == "0:0"
        assert spec_["CapabilityAdd"] == list(contract.SUPERVISOR_CAPS)
        agent_uid = next(e for e in spec_["Env"] if e.startswith("SANDBOX_AGENT_UID=")).split("=", 1)[1]
        assert not agent_uid.startswith("0")
        assert {(s["File"]["UID"], s["File"]["Mode"]) for s in spec_["Secrets"]} == {("0", 0o400)}
        assert task["Resources"]["Limits"]["Pids"] == 1024 and task["Resources"]["Limits"]["MemoryBytes"] == 4 * 1024**3
        assert TOKEN not in json.dumps(service)  # the token is a Swarm secret
        assert [s["File"]["Name"] for s in task["ContainerSpec"]["Secrets"]] == ["git-token"]
        c.env.ok("send", name, "echo marker-$((6*7))", cwd=c.cwd)
        wait_for(lambda: "marker-42" in c.env.ok("logs", name, cwd=c.cwd).out, 30, "the typed command's output")
        # A task killed: the service's restart policy starts a new one, which ls finds
        first = docker("ps", "-q", "--filter", "label=sandbox.name=sw-sh", "--filter", "status=running").stdout.split()
        assert len(first) == 1
        docker("kill", first[0])
        wait_for(lambda: (ids := docker("ps", "-q", "--filter", "label=sandbox.name=sw-sh", "--filter",
                                        "status=running").stdout.split()) and ids != first, 60, "a new task")
        wait_for(lambda: row(c, name)["state"] in ("busy", "idle") and row(c, name)["container_id"][:12] != first[0],
                 60, "ls on the new task")
    finally:
        c.env.ok("rm", name, cwd=c.cwd, timeout=120)
    assert docker("service", "inspect", "sandbox-sw-sh", check=False).returncode != 0
    assert docker("secret", "ls", "-q", "--filter", "label=sandbox.name=sw-sh").stdout.split() == []
    assert c.has("sandbox/sw-sh")  # the work stays in the branch it pushed
    assert all(r["name"] != name for r in c.env.ok("ls", "--json", cwd=c.cwd).json())


@pytest.mark.claude
def test_claude_code_on_the_swarm_pushes_its_commit(cluster: Cluster) -> None:
    c = cluster
    name = spawn(c, "sw-claude", "fix the flaky test")
    try:
        c.env.ok("wait", name, "--until", "exited", "--timeout", "120", cwd=c.cwd)
        assert c.has(f"sandbox/{name}")
        log = git(c.srv / "app.git", "log", "-1", "--format=%s", f"sandbox/{name}").strip()
        assert log == "sandbox: fix the flaky test"
        assert row(c, name)["state"] == "exited"
    finally:
        c.env.ok("rm", name, cwd=c.cwd, timeout=120)


def test_workspace_spawns_are_refused_where_the_engine_cannot_mount_them(cluster: Cluster, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    res = cluster.env.run("spawn", "--agent-cmd", "bash", cwd=repo)
    assert res.code == 2 and "clones its repository" in res.err and "--repo-url" in res.err
    res = cluster.env.run("spawn", "--agent-cmd", "bash", cwd=repo,
                          extra={"SANDBOX_ENGINE": "local", "DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert res.code == 2 and "runs on another host" in res.err and "--headless --repo-url" in res.err
    assert git(repo, "branch", "--list", "sandbox/*") == ""


def test_docker_context_selects_the_engine_and_a_remote_one_gets_no_workspace(env: Env, repo: Path, tmp_path: Path) -> None:
    config = tmp_path / "docker-config"
    docker("--config", str(config), "context", "create", "here", "--docker", "host=unix:///var/run/docker.sock")
    docker("--config", str(config), "context", "create", "far", "--docker", "host=tcp://127.0.0.1:9")
    here = {"DOCKER_CONFIG": str(config), "DOCKER_CONTEXT": "here"}
    name = env.ok("spawn", "--agent-cmd", "bash", "--name", "ctx-1", cwd=repo, extra=here).out.strip()
    try:
        assert [r["name"] for r in env.ok("ls", "--json", cwd=repo, extra=here).json()] == [name]
    finally:
        env.ok("rm", "--force", name, cwd=repo, extra=here)
    far = {"DOCKER_CONFIG": str(config), "DOCKER_CONTEXT": "far"}
    res = env.run("spawn", "--agent-cmd", "bash", cwd=repo, extra=far)
    assert res.code == 2 and "tcp://127.0.0.1:9 runs on another host" in res.err, res.err
    res = env.run("ls", cwd=repo, extra=far)  # that engine is not there: one line, no traceback
    assert res.code != 0 and "cannot reach the Docker engine" in res.err and "Traceback" not in res.err
    assert git(repo, "branch", "--list", "sandbox/*").split() == ["sandbox/ctx-1"]  # (rm keeps it; nothing new)


def test_a_name_taken_on_the_swarm_is_refused_and_leaves_no_secret(cluster: Cluster) -> None:
    c = cluster
    name = spawn(c, "sw-twice", "--agent-cmd", "bash", "x")
    try:
        res = c.env.run("spawn", "--repo-url", c.url, "--git-token-file", str(c.token_file), "--name", name,
                        "--agent-cmd", "bash", "x", cwd=c.cwd)
        assert res.code != 0 and len(res.err.strip().splitlines()) == 1, res.err
        secrets = docker("secret", "ls", "--format", "{{.Name}}", "--filter", f"label=sandbox.name={name}").stdout.split()
        assert secrets == [f"sandbox-{name}.git-token"]  # the first agent's only
    finally:
        c.env.ok("rm", name, cwd=c.cwd, timeout=120)
