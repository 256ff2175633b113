"""Baseline safety: unprivileged agent, no socket, secrets invisible, planted git code never runs."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Env, git, make_env, make_repo, wait_for

pytestmark = pytest.mark.slow
SECRET = "sk-ant-api03-TESTSECRET-0123456789abcdefghijklmnop"


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def test_secrets_reach_the_agent_but_not_inspect_or_logs(env: Env, repo: Path) -> None:
    extra = {"ANTHROPIC_API_KEY": SECRET, "OPENAI_API_KEY": SECRET + "-openai"}
    name = env.ok("spawn", "--agent-cmd", "bash", cwd=repo, extra=extra).out.strip()
    env.ok("send", name, "printenv ANTHROPIC_API_KEY > key.txt; printenv OPENAI_API_KEY >> key.txt")
    worktree = Path(env.ok("ls", "--json", cwd=repo).json()[0]["worktree"])
    wait_for(lambda: (worktree / "key.txt").exists() and len((worktree / "key.txt").read_text().splitlines()) == 2,
             20, "the agent to see its keys")
    assert (worktree / "key.txt").read_text() == f"{SECRET}\n{SECRET}-openai\n"
    (worktree / "key.txt").unlink()

    container = f"sandbox-{name}"
    assert SECRET not in docker("inspect", container)
    assert SECRET not in subprocess.run(["docker", "logs", container], capture_output=True, text=True).stdout
    assert SECRET not in docker("image", "inspect", env.env["SANDBOX_IMAGE"])
    assert SECRET not in docker("history", "--no-trunc", env.env["SANDBOX_IMAGE"])
    assert SECRET not in env.ok("ls", "--json", cwd=repo).out
    shown = env.ok("config", "show", cwd=repo, extra=extra).out
    assert SECRET not in shown and "ANTHROPIC_API_KEY" in shown
    env.ok("rm", name)


def test_agent_is_unprivileged_and_has_no_socket_or_home(env: Env, repo: Path) -> None:
    name = env.ok("spawn", "--agent-cmd", "bash", cwd=repo).out.strip()
    status = env.ok("exec", name, "--", "cat", "/proc/self/status").out
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[0] != "0"
    assert int(fields["CapEff"].strip(), 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    info = json.loads(docker("inspect", f"sandbox-{name}"))[0]
    sources = [m["Source"] for m in info["Mounts"]]
    assert not any("docker.sock" in s for s in sources)
    assert not any(s in (str(Path.home()), env.env["HOME"]) for s in sources)
    assert info["HostConfig"]["Privileged"] is False
    assert info["Config"]["User"] not in ("", "0", "root", "0:0")
    # PID 1 is an init (tini), so signals and zombies are handled.
    assert "tini" in env.ok("exec", name, "--", "cat", "/proc/1/cmdline").out
    env.ok("rm", name)


def test_agent_cannot_reach_the_hosts_git(env: Env, repo: Path, tmp_path: Path) -> None:
    """The host's .git is not in the container (only its objects, read-only); the workspace's .git
    file is read-only. What the agent does to its own repository stays there (see test_hostile.py)."""
    name = env.ok("spawn", "--agent-cmd", "bash", cwd=repo).out.strip()
    marker = tmp_path / "PWNED"
    gitdir = repo / ".git"
    attempts = [
        f"printf '#!/bin/sh\\ntouch {marker}\\n' > {gitdir}/hooks/post-commit",
        f"git config --file {gitdir}/config alias.st '!touch {marker}'",
        f"touch {gitdir}/objects/planted",
        f"rm -f {gitdir}/objects/*/*",
        "echo 'gitdir: /tmp/evil' > .git",
        "rm -f .git",
    ]
    for cmd in attempts:
        res = env.run("exec", name, "--", "sh", "-c", cmd)
        assert res.code != 0, f"the agent managed to run: {cmd}"
    assert env.ok("exec", name, "--", "git", "status", "--short", "--branch").out.startswith(f"## sandbox/{name}")
    git(repo, "fsck", "--strict")
    env.ok("rm", name)
    assert not marker.exists()


def test_sandbox_host_git_calls_do_not_run_repo_hooks(env: Env, repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "HOOK-RAN"
    hook = repo / ".git" / "hooks" / "post-checkout"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    git(repo, "config", "core.fsmonitor", f"touch {marker}; true")
    name = env.ok("spawn", "--agent-cmd", "bash", cwd=repo).out.strip()
    env.ok("ls", cwd=repo)
    env.ok("rm", name, cwd=repo)
    assert not marker.exists()


TEST_USER = "sbxtest"


@pytest.fixture(scope="session")
def user_python() -> str:
    """A Python the test user can run, with sandbox's runtime dependencies (ours lives under /root)."""
    if os.getuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root to create a test user (CI runs as root)")
    venv = Path("/var/tmp/sandbox-test-user-venv")
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import docker, typer, tenacity, pydantic_settings"]
    if not python.exists() or subprocess.run(probe, capture_output=True).returncode != 0:
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "docker", "typer", "tenacity",
                        "pydantic-settings"], check=True)
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
        ids = docker("ps", "-aq", "--filter", f"label=sandbox.repo={root / 'repo'}").split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_non_root_user_agent_runs_as_that_user_and_commits(unprivileged: Env) -> None:
    env = unprivileged
    repo = env.root / "repo"
    user = pwd.getpwnam(TEST_USER)
    name = env.ok("spawn", "--agent-cmd", "bash", cwd=repo).out.strip()
    info = json.loads(docker("inspect", f"sandbox-{name}"))[0]
    assert info["Config"]["User"] == f"{user.pw_uid}:{user.pw_gid}"
    res = env.run("exec", name, "--", "sh", "-c", "echo hi > mine.txt && git add mine.txt && git commit -qm by-agent")
    assert res.code == 0, res.err
    worktree = Path(env.ok("ls", "--json", cwd=repo).json()[0]["worktree"])
    assert (worktree / "mine.txt").stat().st_uid == user.pw_uid
    out = subprocess.run(["runuser", "-u", TEST_USER, "--", "git", "-C", str(repo), "log", "-1", "--format=%s",
                          f"sandbox/{name}"], capture_output=True, text=True)
    assert out.stdout.strip() == "by-agent", out.stderr
    assert env.run("rm", name, cwd=repo).code == 5  # unmerged work: refused
    env.ok("rm", "--force", name, cwd=repo)  # backed up by the non-root user, then removed
    assert not worktree.exists()


def test_locked_profile_has_no_network_and_a_read_only_root(env: Env, repo: Path) -> None:
    name = env.ok("spawn", "--profile", "locked", "--agent-cmd", "bash", cwd=repo).out.strip()
    info = json.loads(docker("inspect", f"sandbox-{name}"))[0]
    assert info["HostConfig"]["NetworkMode"] == "none" and info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["Config"]["Labels"]["sandbox.profile"] == "locked"
    interfaces = env.ok("exec", name, "--", "cat", "/proc/net/dev").out.splitlines()[2:]
    assert [line.split(":")[0].strip() for line in interfaces] == ["lo"]
    assert env.run("exec", name, "--", "touch", "/etc/planted").code != 0
    # The worktree stays writable and git still commits onto the host's branch.
    res = env.run("exec", name, "--", "sh", "-c", "echo x > f.txt && git add f.txt && git commit -qm locked-commit")
    assert res.code == 0, res.err
    env.ok("ls", cwd=repo)  # any sandbox command brings the agent's commits over
    assert git(repo, "log", "-1", "--format=%s", f"sandbox/{name}").strip() == "locked-commit"
    env.ok("rm", "--force", name)  # locked-commit is unmerged: rm needs --force (backup) since issue #4
