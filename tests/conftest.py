"""Shared fixtures: real engine, real git, real tmux, the real agent image.

Every test runs the real CLI in a subprocess with its own HOME, XDG dirs and git config, and
stamps what it creates with a run id label; a session finalizer removes all of it, even when a
test fails.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

RUN_ID = f"test-{uuid.uuid4().hex[:10]}"
IMAGE = os.environ.get("SANDBOX_TEST_IMAGE", "sandbox-agent:latest")
# Every CLI run goes through the tested user's own command server (sandbox/client.py), stopped when its test
# ends (stray ones idle out soon); SANDBOX_SERVER=0 runs the whole suite without one.
SERVER_IDLE = "60"
os.environ.setdefault("SANDBOX_SERVER_IDLE", SERVER_IDLE)
_ENVS: list["Env"] = []


def docker_ok() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def agent_image() -> str:
    """The agent image, built (or reused) once per session."""
    if not docker_ok():
        pytest.fail("the Docker engine is not reachable: the suite needs it")
    from sandbox import image
    from sandbox.config import load_settings
    from sandbox.engine import Engine

    engine = Engine()
    if os.environ.get("SANDBOX_TEST_SKIP_BUILD"):  # iterate on an image you built yourself
        assert engine.image_id(IMAGE), f"{IMAGE} is not built"
        return IMAGE
    image.build_agent(engine, load_settings(image=IMAGE), offline=True, on_line=lambda line: None)
    return IMAGE


@pytest.fixture(scope="session")
def proxy_image() -> str:
    """The isolated profile's proxy image, built (or reused) once per session."""
    if not docker_ok():
        pytest.fail("the Docker engine is not reachable: the suite needs it")
    from sandbox import image, proxy
    from sandbox.engine import Engine

    return image.build_proxy(Engine(), proxy.IMAGE)


AGENT_NETWORK = "sandbox-net"  # the default profile's network (Settings.network), made on demand by spawn


def network_exists(name: str) -> bool:
    return subprocess.run(["docker", "network", "inspect", name], capture_output=True).returncode == 0


@pytest.fixture(scope="session", autouse=True)
def reaper() -> Iterator[None]:
    """Remove every container this run created, whatever happened; and the agents' network when this
    run made it and nothing uses it any more (other runs may share it: `docker network rm` refuses then)."""
    had_network = docker_ok() and network_exists(AGENT_NETWORK)
    yield
    for made in _ENVS:
        made.stop_server()
    if not docker_ok():
        return
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=sandbox.run-id={RUN_ID}"],
                         capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True)
    nets = subprocess.run(["docker", "network", "ls", "-q", "--filter", f"label=sandbox.run-id={RUN_ID}"],
                          capture_output=True, text=True).stdout.split()
    if nets:  # isolated agents' own networks, the tests' own
        subprocess.run(["docker", "network", "rm", *nets], capture_output=True)
    if not had_network and network_exists(AGENT_NETWORK):
        subprocess.run(["docker", "network", "rm", AGENT_NETWORK], capture_output=True)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):  # type: ignore[no-untyped-def]
        return json.loads(self.out)


@dataclass
class Env:
    """An isolated user environment to drive the CLI in."""

    root: Path
    env: dict[str, str]
    user: str | None = None  # run through `runuser -u USER` when set
    python: str = sys.executable

    def run(self, *args: str, cwd: Path | None = None, extra: dict[str, str] | None = None,
            input: str | None = None, timeout: float = 180) -> Result:
        env = {**self.env, **(extra or {})}
        argv = [self.python, "-m", "sandbox", *args]
        if self.user:
            argv = ["runuser", "-u", self.user, "--", "env", *[f"{k}={v}" for k, v in env.items()], *argv]
            env = dict(os.environ)
        proc = subprocess.run(argv, cwd=cwd or self.root, env=env, input=input, capture_output=True,
                              text=True, timeout=timeout)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, **kw) -> Result:  # type: ignore[no-untyped-def]
        res = self.run(*args, **kw)
        assert res.code == 0, f"sandbox {' '.join(args)} exited {res.code}\nstdout: {res.out}\nstderr: {res.err}"
        return res

    @property
    def data(self) -> Path:
        return Path(self.env["XDG_DATA_HOME"]) / "sandbox"

    def server_pids(self) -> list[int]:
        """The pids of this environment's command servers (of any code), from their sockets."""
        from sandbox import client

        if not self.root.exists():
            return []
        try:
            where = client.socket_dir(self.env, create=False) if not self.user else None
        except OSError:
            return []
        if where is None:  # another user's: ask through the CLI
            res = self.run("server", "status", "--json", timeout=30)
            pid = json.loads(res.out or "{}").get("pid") if res.code == 0 else None
            return [pid] if pid else []
        pids = []
        for name in os.listdir(where):
            if name.startswith(client.data_key(self.env) + "-") and name.endswith(".sock"):
                try:
                    sock = client.connect(os.path.join(where, name))
                except OSError:
                    continue
                if sock is not None:
                    try:
                        sock.settimeout(5)
                        client.request(sock, {"op": "status"})
                        pids += [int(msg["pid"]) for msg in client.frames(sock)][:1]
                    finally:
                        sock.close()
        return pids

    def stop_server(self) -> None:
        """Stop this environment's command servers; never raises."""
        try:
            for pid in self.server_pids():
                os.kill(pid, 15)
        except Exception:
            pass


def make_env(root: Path, image: str, user: str | None = None) -> Env:
    home = root / "home"
    for d in (home, root / "data", root / "config", root / "cache"):
        d.mkdir(parents=True, exist_ok=True)
    gitconfig = home / ".gitconfig"
    gitconfig.write_text("[user]\n\tname = Test User\n\temail = test@example.invalid\n[init]\n\tdefaultBranch = main\n")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_DATA_HOME": str(root / "data"),
        "XDG_CONFIG_HOME": str(root / "config"),
        "XDG_CACHE_HOME": str(root / "cache"),
        "GIT_CONFIG_GLOBAL": str(gitconfig),
        "GIT_CONFIG_NOSYSTEM": "1",
        "SANDBOX_IMAGE": image,
        "SANDBOX_RUN_ID": RUN_ID,
        "SANDBOX_READY_TIMEOUT": "120",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "LANG": "C.UTF-8",
    }
    for name in ("DOCKER_HOST", "SANDBOX_SERVER", "SANDBOX_SERVER_IDLE"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    made = Env(root=root, env=env, user=user)
    _ENVS.append(made)
    return made


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
                               "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "T",
                               "GIT_COMMITTER_EMAIL": "t@x"})
    assert proc.returncode == 0, f"git {args}: {proc.stderr}"
    return proc.stdout


def make_repo(path: Path, commit: bool = True) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    if commit:
        (path / "README.md").write_text("# demo\n")
        git(path, "add", "README.md")
        git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def env(tmp_path: Path, agent_image: str) -> Iterator[Env]:
    made = make_env(tmp_path, agent_image)
    yield made
    made.stop_server()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def wait_for(check: Callable[[], object], timeout: float = 60, what: str = "condition") -> object:
    """Bounded polling; never a bare sleep."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def leftovers(env: Env, repo: Path) -> dict[str, list[str]]:
    """What a failed command might have left behind: containers, workspaces (and the agents' git
    dirs), branches, git worktree records."""
    containers = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=sandbox.run-id={RUN_ID}",
                                 "--filter", f"label=sandbox.repo={repo}"], capture_output=True, text=True).stdout.split()
    workspaces = [str(p) for d in ("workspaces", "agent-git") for p in (env.data / d).glob("*/*")]
    branches = git(repo, "branch", "--list", "sandbox/*").split() if (repo / ".git").exists() else []
    registered = [line for line in git(repo, "worktree", "list", "--porcelain").splitlines()
                  if line.startswith("worktree ")][1:] if (repo / ".git").exists() else []
    return {"containers": containers, "workspaces": workspaces, "branches": branches, "registered": registered}


# -- a non-root invoking user ------------------------------------------------------------------------
TEST_USER = "sbxtest"


@pytest.fixture(scope="session")
def user_python() -> str:
    """A Python the test user can run, with sandbox's runtime dependencies at the pinned versions
    (ours lives under /root)."""
    if os.getuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root to create a test user (CI runs as root)")
    venv = Path("/var/tmp/sandbox-test-user-venv")
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import docker, typer, tenacity, pydantic_settings"]
    if not python.exists() or subprocess.run(probe, capture_output=True).returncode != 0:
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--clear", str(venv)], check=True)
        constraints = Path(__file__).resolve().parent.parent / "constraints.txt"
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(constraints), "docker", "typer",
                        "tenacity", "pydantic-settings"], check=True)
    return str(python)


@pytest.fixture
def unprivileged(agent_image: str, user_python: str) -> Iterator[Env]:
    """A non-root user in the docker group, with its own HOME and repository."""
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--groups", "docker", TEST_USER], check=True)
    root = Path(tempfile.mkdtemp(prefix="sbx-user-"))
    root.chmod(0o755)
    user_env = make_env(root, agent_image, user=TEST_USER)
    user_env.python = user_python
    shutil.copytree(Path(__file__).resolve().parent.parent / "sandbox", root / "src" / "sandbox",
                    ignore=shutil.ignore_patterns("__pycache__"))
    user_env.env["PYTHONPATH"] = str(root / "src")
    make_repo(root / "repo")
    subprocess.run(["chown", "-R", f"{TEST_USER}:{TEST_USER}", str(root)], check=True)
    try:
        yield user_env
    finally:
        user_env.stop_server()
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=sandbox.repo={root / 'repo'}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
