"""Baseline safety: unprivileged agent, no socket, secrets invisible, planted git code never runs."""

from __future__ import annotations

import json
import pwd
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TEST_USER, Env, git, wait_for

pytestmark = pytest.mark.slow
SECRET = "sk-ant-api03-TESTSECRET-0123456789abcdefghijklmnop"


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def test_secrets_reach_the_agent_but_not_inspect_or_logs(env: Env, repo: Path) -> None:
    extra = {"ANTHROPIC_API_KEY": SECRET, "OPENAI_API_KEY": SECRET + "-openai"}
    name = env.ok("spawn", "--agent-cmd", "bash", cwd=repo, extra=extra).out.strip()
    env.ok("send", name, "printenv ANTHROPIC_API_KEY > key.txt; printenv OPENAI_API_KEY >> key.txt")
    workspace = Path(env.ok("ls", "--json", cwd=repo).json()[0]["workspace"])
    wait_for(lambda: (workspace / "key.txt").exists() and len((workspace / "key.txt").read_text().splitlines()) == 2,
             20, "the agent to see its keys")
    assert (workspace / "key.txt").read_text() == f"{SECRET}\n{SECRET}-openai\n"
    (workspace / "key.txt").unlink()

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
    # The container's own user is root (its supervisor) with only the supervisor's capabilities; the
    # agent runs as its uid with none (the exec above, and the pane: tests/test_hostile_uids.py).
    assert info["Config"]["User"] == "0:0" and info["HostConfig"]["CapDrop"] == ["ALL"]
    assert sorted(info["HostConfig"]["CapAdd"]) == ["CAP_KILL", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID"] or \
        sorted(info["HostConfig"]["CapAdd"]) == ["KILL", "SETGID", "SETPCAP", "SETUID"]
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


def test_non_root_user_agent_runs_as_a_uid_of_its_own_and_commits(unprivileged: Env) -> None:
    """A non-root user's agent runs as AGENT_UID_OFFSET + the user's uid: its workspace and git dir are
    that uid's (never the user's: git's ownership check refuses them for the user), its commits reach
    the user's branch, and ``rm`` deletes what the user could not (a container as the agent's uid)."""
    from sandbox.config import AGENT_UID_OFFSET

    env = unprivileged
    repo = env.root / "repo"
    user = pwd.getpwnam(TEST_USER)
    agent_uid, agent_gid = AGENT_UID_OFFSET + user.pw_uid, AGENT_UID_OFFSET + user.pw_gid
    spawned = env.ok("spawn", "--agent-cmd", "bash", cwd=repo)
    name = spawned.out.strip()
    assert "worktree:" not in spawned.err and "/workspaces/" not in spawned.out + spawned.err
    info = json.loads(docker("inspect", f"sandbox-{name}"))[0]
    labels = info["Config"]["Labels"]  # (the container's user is its root supervisor; the agent a uid of its own)
    assert info["Config"]["User"] == "0:0" and (labels["sandbox.uid"], labels["sandbox.gid"]) == (
        str(agent_uid), str(agent_gid))
    assert env.ok("exec", name, "--", "id", "-u").out.strip() == str(agent_uid)
    res = env.run("exec", name, "--", "sh", "-c", "echo hi > mine.txt && git add mine.txt && git commit -qm by-agent")
    assert res.code == 0, res.err
    row = env.ok("ls", "--json", cwd=repo).json()[0]
    workspace, agent_git = Path(row["workspace"]), Path(labels["sandbox.agent-git"])
    assert (workspace / "mine.txt").stat().st_uid == agent_uid
    for top in (workspace, agent_git, Path(labels["sandbox.state-dir"]) / "agent"):
        st = top.stat()
        assert (st.st_uid, st.st_gid) == (agent_uid, agent_gid), top
    assert all(p.stat().st_mode & 0o777 == 0o711 for p in (workspace, agent_git))
    listing = subprocess.run(["runuser", "-u", TEST_USER, "--", "ls", str(workspace)], capture_output=True, text=True)
    assert listing.returncode != 0  # (the user cannot even list it)
    out = subprocess.run(["runuser", "-u", TEST_USER, "--", "git", "-C", str(repo), "log", "-1", "--format=%s",
                          f"sandbox/{name}"], capture_output=True, text=True)
    assert out.stdout.strip() == "by-agent", out.stderr
    assert env.run("rm", name, cwd=repo).code == 5  # unmerged work: refused
    env.ok("rm", "--force", name, cwd=repo)  # backed up by the non-root user, then removed (as the agent's uid)
    assert not workspace.exists() and not agent_git.exists() and not Path(labels["sandbox.state-dir"]).exists()


def test_locked_profile_has_no_network_and_a_read_only_root(env: Env, repo: Path) -> None:
    name = env.ok("spawn", "--profile", "locked", "--agent-cmd", "bash", cwd=repo).out.strip()
    info = json.loads(docker("inspect", f"sandbox-{name}"))[0]
    assert info["HostConfig"]["NetworkMode"] == "none" and info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["Config"]["Labels"]["sandbox.profile"] == "locked"
    interfaces = env.ok("exec", name, "--", "cat", "/proc/net/dev").out.splitlines()[2:]
    assert [line.split(":")[0].strip() for line in interfaces] == ["lo"]
    assert env.run("exec", name, "--", "touch", "/etc/planted").code != 0
    # The workspace stays writable and git still commits onto the host's branch.
    res = env.run("exec", name, "--", "sh", "-c", "echo x > f.txt && git add f.txt && git commit -qm locked-commit")
    assert res.code == 0, res.err
    env.ok("ls", cwd=repo)  # any sandbox command brings the agent's commits over
    assert git(repo, "log", "-1", "--format=%s", f"sandbox/{name}").strip() == "locked-commit"
    env.ok("rm", "--force", name)  # locked-commit is unmerged: rm needs --force (backup) since issue #4
