"""The agent is the adversary: a headless agent holds no push credential (issue 26, item 6).

Before: the image alone against a token-guarded git server, ``SANDBOX_PUSH_BRANCH=sandbox/hp``; the
agent's own command ran ``git push -f origin HEAD:refs/heads/main`` and the remote's main moved (the
credential helper sat in the agent's ~/.gitconfig, the token file was readable by its uid).

Now a headless container that starts as root with only the supervisor's capabilities runs the agent as
another uid with no credential: the supervisor alone reads the token and pushes, only to
SANDBOX_PUSH_BRANCH. The attack below is the agent's own command, in a real container, against the
real token-guarded git server of ``tests/test_headless.py``; every command is bounded in time and every
container removed, even when a check fails.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import contract
from tests.conftest import RUN_ID, wait_for
from tests.test_headless import PORT, TOKEN, Agent, Remote, docker, remote  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow]

AGENT_UID = 4242
# The agent's command (what a prompt-injected agent would run): its own work committed, then every way
# to the credential it can think of, each one's output kept in /tmp/attack/ for the test to read.
ATTACK = r"""
mkdir -p /tmp/attack
echo work > work.txt && git add work.txt && git commit -qm "the agent's work"
git push -f origin HEAD:refs/heads/main > /tmp/attack/push-origin 2>&1; echo "exit $?" >> /tmp/attack/push-origin
git push -f "$REMOTE" HEAD:refs/heads/main > /tmp/attack/push-url 2>&1; echo "exit $?" >> /tmp/attack/push-url
git push > /tmp/attack/push-plain 2>&1; echo "exit $?" >> /tmp/attack/push-plain
printf 'protocol=http\nhost=%s\n\n' "$HOST" | git credential fill > /tmp/attack/fill 2>&1
echo "exit $?" >> /tmp/attack/fill
for f in /token/token /tmp/.sandbox/git/token /tmp/.sandbox/git/.gitconfig /proc/1/environ; do
  cat "$f" > /tmp/attack/read-$(echo "$f" | tr / _) 2>&1
done
ls -la /tmp/.sandbox/git > /tmp/attack/ls-git 2>&1
python3 -m sandbox.inside credential /token/token get < /dev/null > /tmp/attack/helper 2>&1
echo "exit $?" >> /tmp/attack/helper
git -C /tmp/.sandbox/remote.git push -f origin HEAD:refs/heads/main > /tmp/attack/push-mirror 2>&1
echo "exit $?" >> /tmp/attack/push-mirror
git fetch origin > /tmp/attack/fetch 2>&1; echo "exit $?" >> /tmp/attack/fetch
id -u > /tmp/attack/uid
echo attacked > /tmp/attack/done
"""


@pytest.fixture
def token_dir(tmp_path: Path) -> Path:
    """The token as a secret store gives it: a file root's alone (owner 0, mode 0400)."""
    d = tmp_path / "token"
    d.mkdir()
    (d / "token").write_text(TOKEN + "\n")
    (d / "token").chmod(0o400)
    d.chmod(0o755)
    return d


@pytest.fixture
def started(remote: Remote) -> Iterator[list[str]]:  # noqa: F811 - the fixture imported above
    made: list[str] = []
    yield made
    for name in made:
        docker("rm", "-f", "-v", name, check=False)


def run(remote: Remote, made: list[str], token_dir: Path, branch: str, command: str, *,  # noqa: F811
        root: bool = True, args: tuple[str, ...] = ()) -> Agent:
    name = f"sbx-hp-{uuid.uuid4().hex[:8]}"
    env = {"SANDBOX_REPO": remote.url(), "SANDBOX_PUSH_BRANCH": branch, "SANDBOX_GIT_TOKEN_FILE": "/token/token",
           "SANDBOX_MOCK_MODEL": "1", "PORT": str(PORT), "SANDBOX_TASK": "do the task", "SANDBOX_ON_DONE": "stay",
           "SANDBOX_AGENT_CMD": command, "REMOTE": remote.url(), "HOST": f"{remote.host}:{PORT}"}
    if root:  # as spawn --headless, compose.yaml and Swarm start it
        who = ["--user", "0:0", "--cap-drop", "ALL", *[a for c in contract.SUPERVISOR_CAPS for a in ("--cap-add", c)],
               "--security-opt", "no-new-privileges"]
        env["SANDBOX_AGENT_UID"] = f"{AGENT_UID}:{AGENT_UID}"
    else:  # a host that forces a non-root uid
        who = ["--user", f"{AGENT_UID}:{AGENT_UID}"]
    argv = ["run", "-d", "--name", name, "--label", f"sandbox.run-id={RUN_ID}", "--network", remote.network,
            "--read-only", "--tmpfs", "/tmp", "--memory", "1g", *who, "-p", f"127.0.0.1::{PORT}",
            "-v", f"{token_dir}:/token:ro", *args]
    for k, v in env.items():
        argv += ["-e", f"{k}={v}"]
    docker(*argv, remote.image)
    made.append(name)
    return Agent(name, AGENT_UID)


def test_the_agents_push_to_main_fails_and_only_the_supervisor_pushes_its_branch(
        remote: Remote, started: list[str], token_dir: Path) -> None:  # noqa: F811
    main = remote.git("rev-parse", "main").strip()
    agent = run(remote, started, token_dir, "sandbox/hp", f"sh -c {shlex.quote(ATTACK)}")
    status = wait_for(lambda: (s := agent.status()).get("state") in ("done", "failed") and s, 120,
                      "the task done (/status)")
    assert status["state"] == "done" and status["exit_code"] == 0, (status, agent.logs())

    def attack(name: str) -> str:
        return docker("exec", agent.name, "cat", f"/tmp/attack/{name}", check=False).stdout

    assert attack("done") == "attacked\n" and attack("uid") == f"{AGENT_UID}\n"

    # The remote's main did not move; no push of the agent's got through, each one said why.
    assert remote.git("rev-parse", "main").strip() == main
    refused = contract.AGENTS_DO_NOT_PUSH.format(branch="sandbox/hp")
    for how in ("push-origin", "push-plain"):
        out = attack(how)
        assert refused in out and not out.endswith("exit 0\n"), (how, out)
    for how in ("push-url", "push-mirror", "fill", "helper"):
        out = attack(how)
        assert not out.endswith("exit 0\n") and TOKEN not in out, (how, out)
    assert "terminal prompts disabled" in attack("push-url") or "could not read" in attack("push-url").lower()
    assert attack("fetch").endswith("exit 0\n"), attack("fetch")  # (fetching still works: from the supervisor's clone)

    # The token was not readable by the agent's uid: not its file, not the supervisor's, not PID 1's env.
    for f in ("/token/token", "/tmp/.sandbox/git/token", "/tmp/.sandbox/git/.gitconfig", "/proc/1/environ"):
        out = attack("read-" + f.replace("/", "_"))
        assert TOKEN not in out and ("Permission denied" in out or "No such file" in out), (f, out)
    assert "Permission denied" in attack("ls-git")

    # The contract's pushes still happened, to SANDBOX_PUSH_BRANCH alone, by the supervisor.
    logs = agent.logs()
    assert "pushed sandbox/hp at" in logs and "(claimed)" in logs and "(final)" in logs, logs
    assert remote.git("log", "-1", "--format=%s", "sandbox/hp").strip() == "the agent's work"
    assert remote.git("show", "sandbox/hp:work.txt") == "work\n"
    assert remote.git("merge-base", "--is-ancestor", main, "sandbox/hp") == ""
    assert status["push_credential"] == "the supervisor" and status["uids"] == {"supervisor": 0, "agent": AGENT_UID}
    assert "can reach the push credential" not in logs and TOKEN not in logs

    # The agent's processes run as its uid; the supervisor (PID 1's child, the init) as root.
    ps = docker("exec", agent.name, "ps", "-eo", "uid=,args=").stdout
    init = [ln for ln in ps.splitlines() if "sandbox.inside init" in ln]
    assert init and all(ln.split()[0] == "0" for ln in init), ps
    mock = [ln for ln in ps.splitlines() if "mockmodel" in ln or "sandbox-agent" in ln]
    assert all(ln.split()[0] == str(AGENT_UID) for ln in mock), ps


def test_one_uid_says_the_agent_can_reach_the_credential(remote: Remote, started: list[str],  # noqa: F811
                                                          token_dir: Path) -> None:
    (token_dir / "token").chmod(0o444)  # (one uid: the agent's uid must read it, so the agent can)
    agent = run(remote, started, token_dir, "sandbox/hp-one", "sh -c 'echo one > one.txt'", root=False)
    status = wait_for(lambda: (s := agent.status()).get("state") in ("done", "failed") and s, 120, "the task done")
    assert status["state"] == "done", agent.logs()
    line = ("sandbox headless: warning: running as one uid: the agent can reach the push credential (start the "
            "container as root with the capabilities SETUID, SETGID, SETPCAP, KILL to keep it the supervisor's)")
    assert line in agent.logs().splitlines(), agent.logs()
    assert "running as one uid" in status["push_credential"]
    assert remote.git("show", "sandbox/hp-one:one.txt") == "one\n"  # (it still works as before)


def test_sigterm_wip_is_pushed_by_the_supervisor_within_the_budget(remote: Remote, started: list[str],  # noqa: F811
                                                                    token_dir: Path) -> None:
    """The WIP path as two uids: the snapshot made as the agent (its index, its objects), taken by the
    supervisor's fetch, pushed — within the 10 s a host gives after SIGTERM."""
    cmd = "sh -c 'echo half > progress.txt; exec sleep 300'"
    agent = run(remote, started, token_dir, "sandbox/hp-term", cmd)
    wait_for(lambda: docker("exec", agent.name, "test", "-f", "/tmp/sandbox/work/progress.txt",
                            check=False).returncode == 0 and agent.status().get("pushes") == 1, 60,
             "the agent mid-task, its branch claimed")
    claimed = remote.git("rev-parse", "sandbox/hp-term").strip()
    t0 = time.monotonic()
    docker("kill", "--signal", "TERM", agent.name)
    code = agent.wait_exit(15)
    elapsed = time.monotonic() - t0
    assert code == 7 and elapsed < 10, (code, elapsed, agent.logs())
    tip = remote.git("log", "-1", "--format=%s%n%P%n%an", "sandbox/hp-term").split("\n")[:3]
    assert tip[0] == "sandbox: WIP (stopped)" and tip[1] == claimed and tip[2] == "sandbox agent", tip
    assert remote.git("show", "sandbox/hp-term:progress.txt") == "half\n"


def test_a_state_dir_a_non_root_host_user_owns_is_written_by_the_supervisor(
        remote: Remote, started: list[str], token_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """``spawn --headless`` by a non-root user: the state dir's top is that user's (root in the container
    has no DAC_OVERRIDE), its ``agent/`` the agent's. The supervisor still writes the state there (as
    its owner), a previous run's file included, and the agent cannot write it."""
    import os

    state = tmp_path / "state"
    (state / "agent").mkdir(parents=True)
    (state / "state.json").write_text('{"state": "exited", "mode": "headless"}')
    os.chown(state, 5000, 5000)
    os.chown(state / "state.json", 5000, 5000)
    os.chown(state / "agent", AGENT_UID, AGENT_UID)
    state.chmod(0o755)
    agent = run(remote, started, token_dir, "sandbox/hp-state", "sh -c 'echo s > s.txt; touch /run/sandbox-state/x "
                "2> /tmp/denied; cat /tmp/denied'", args=("-v", f"{state}:{contract.STATE_MOUNT}"))
    wait_for(lambda: (s := agent.status()).get("state") in ("done", "failed") and s, 120, "the task done")
    written = json.loads((state / "state.json").read_text())
    assert written["mode"] == "headless" and written["pushed"] == remote.git("rev-parse", "sandbox/hp-state").strip()
    assert (state / "state.json").stat().st_uid == 5000 and not (state / "x").exists(), agent.logs()
    assert docker("exec", agent.name, "cat", "/tmp/denied").stdout.count("Permission denied") == 1


def test_a_token_file_the_agent_can_read_is_said(remote: Remote, started: list[str],  # noqa: F811
                                                  token_dir: Path) -> None:
    (token_dir / "token").chmod(0o444)  # (a host that left the secret readable by all)
    agent = run(remote, started, token_dir, "sandbox/hp-readable", "true")
    status = wait_for(lambda: (s := agent.status()).get("state") in ("done", "failed") and s, 120, "the task done")
    line = (f"sandbox headless: warning: SANDBOX_GIT_TOKEN_FILE /token/token is readable by the agent's uid {AGENT_UID}: "
            "the agent can reach the push credential (make the file root's alone: owner 0, mode 0400)")
    assert line in agent.logs().splitlines(), agent.logs()
    assert status["state"] == "done" and status["push_credential"] == line.split("warning: ", 1)[1]
