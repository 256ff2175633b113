"""The agent is the adversary: git attacks performed from inside a real container, then every host
command that reads its work. Nothing the agent planted may run on the host, no host-only content
may reach an output, nothing may hang, and the host's repository must stay intact (``git fsck
--strict``; ``main`` and other agents' branches unchanged).

Planted commands would create files in a host directory (``markers/``) that is mounted in no
container, so a marker can only appear if a host process ran the agent's code.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import TEST_USER, Env, git

pytestmark = pytest.mark.slow
BOUND = 90  # seconds: no host command may take longer (a hang is a failure, not a stuck CI)


def run(env: Env, *args: str, cwd: Path | None = None) -> tuple[int, str]:
    res = env.run(*args, cwd=cwd, timeout=BOUND)
    return res.code, res.out + res.err


def sh(env: Env, name: str, script: str) -> str:
    res = env.run("exec", name, "--", "sh", "-c", script, timeout=BOUND)
    assert res.code == 0, f"{script}: {res.err}"
    return res.out


def plant(env: Env, name: str, markers: Path) -> None:
    """Everything an agent can set in its own repository and workspace to make git run code."""
    evil = f"#!/bin/sh\\ntouch {markers}/ran-$1 2>/dev/null; cat\\n"
    script = "; ".join([
        "set -e",
        f"printf '{evil}' > evil.sh && chmod +x evil.sh",
        "W=$PWD",
        # its own config: every key that makes git run a command
        "git config filter.x.clean \"$W/evil.sh clean\"",
        "git config filter.x.smudge \"$W/evil.sh smudge\"",
        "git config filter.x.process \"$W/evil.sh process\"",
        "git config diff.x.textconv \"$W/evil.sh textconv\"",
        "git config diff.external \"$W/evil.sh external\"",
        "git config merge.x.driver \"$W/evil.sh merge\"",
        "git config core.fsmonitor \"$W/evil.sh fsmonitor\"",
        "git config core.hooksPath \"$W/hooks\"",
        "git config core.pager \"$W/evil.sh pager\"",
        "git config core.sshCommand \"$W/evil.sh ssh\"",
        "git config core.askPass \"$W/evil.sh askpass\"",
        "git config uploadpack.packObjectsHook \"$W/evil.sh packobjects\"",
        "git config alias.status \"!$W/evil.sh alias\"",
        "printf '[core]\\n\\tfsmonitor = %s/evil.sh include\\n' \"$W\" > inc.cfg",
        "git config include.path \"$W/inc.cfg\"",
        # hooks, in its git dir and in the hooksPath
        "mkdir -p hooks",
        "for h in pre-commit post-commit post-checkout reference-transaction pre-push post-merge; do "
        "printf '#!/bin/sh\\n%s/evil.sh hook-%s\\n' \"$W\" $h > hooks/$h; chmod +x hooks/$h; "
        "cp hooks/$h \"$(git rev-parse --git-dir)/hooks/$h\" 2>/dev/null || "
        "{ mkdir -p \"$(git rev-parse --git-dir)/hooks\" && cp hooks/$h \"$(git rev-parse --git-dir)/hooks/$h\"; }; done",
        # a commondir pointing at a directory of its making, as the probe did with the shared .git
        "mkdir -p evilcommon && git config --file evilcommon/config filter.x.clean \"$W/evil.sh commondir\"",
        "printf '%s/evilcommon\\n' \"$W\" > \"$(git rev-parse --git-dir)/commondir.planted\"",
        # attributes that name the drivers: committed, and in the uncommitted state too
        "printf '* filter=x diff=x merge=x\\n' > .gitattributes",
        "echo committed > c.txt",
        "git -c core.hooksPath=/dev/null add -A && git -c core.hooksPath=/dev/null commit -qm planted --no-verify",
        "echo uncommitted >> c.txt && echo new > untracked.txt",
    ])
    sh(env, name, script)


def assert_intact(repo: Path, main_before: str, others: dict[str, str], markers: Path, g=git) -> None:  # type: ignore[no-untyped-def]
    assert sorted(p.name for p in markers.iterdir()) == [], "a planted command ran on the host"
    g(repo, "fsck", "--strict", "--no-dangling")
    assert g(repo, "rev-parse", "main").strip() == main_before
    for branch, sha in others.items():
        assert g(repo, "rev-parse", branch).strip() == sha, f"{branch} moved"


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    path = tmp_path / "markers"
    path.mkdir()
    path.chmod(0o777)
    return path


def victim(env: Env, repo: Path) -> tuple[str, dict[str, str]]:
    """Another agent with committed work on its host branch (which no other agent may touch)."""
    name = env.ok("spawn", "--name", f"victim-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo).out.strip()
    sh(env, name, "echo mine > v.txt && git add v.txt && git commit -qm victim-work")
    env.ok("sync", name)
    return name, {f"sandbox/{name}": git(repo, "rev-parse", f"sandbox/{name}").strip()}


@pytest.mark.parametrize("profile", ["default", "locked", "isolated"])
def test_planted_git_config_hooks_attributes_never_run_on_the_host(
        env: Env, repo: Path, tmp_path: Path, markers: Path, profile: str, request: pytest.FixtureRequest) -> None:
    if profile == "isolated":
        request.getfixturevalue("proxy_image")
    git(repo, "branch", "release")
    other, others = victim(env, repo)
    others["release"] = git(repo, "rev-parse", "release").strip()
    main_before = git(repo, "rev-parse", "main").strip()
    name = env.ok("spawn", "--name", f"evil-{uuid.uuid4().hex[:6]}", "--profile", profile, "--agent-cmd", "bash",
                  cwd=repo).out.strip()
    plant(env, name, markers)
    # The agent also tries the host's side directly: the host's .git is not there, its objects are read-only.
    for attempt in (f"touch {repo}/.git/config", f"touch {repo}/.git/objects/x",
                    f"git update-ref refs/heads/sandbox/{other} HEAD && test -e {repo}/.git/refs/heads/sandbox/{other}"):
        assert env.run("exec", name, "--", "sh", "-c", attempt, timeout=BOUND).code != 0, attempt

    # Every host command that reads the agent's work.
    for args in (["ls"], ["ls", "--json"], ["sync", name], ["diff", name], ["diff", name, "--stat"],
                 ["diff", name, "--uncommitted"], ["gc"]):
        code, out = run(env, *args, cwd=repo)
        assert code == 0, (args, out)
    diff = run(env, "diff", name, cwd=repo)[1]
    assert "+++ b/untracked.txt" in diff and "+uncommitted" in diff and "+++ b/.gitattributes" in diff
    assert run(env, "rm", name, cwd=repo)[0] == 5  # refused: unmerged and uncommitted work
    code, out = run(env, "merge", name, "--include-uncommitted", "--into", "release", cwd=repo)
    assert code == 0, out
    assert git(repo, "show", "release:untracked.txt") == "new\n"
    others["release"] = git(repo, "rev-parse", "release").strip()
    sh(env, name, "echo later > later.txt")  # new work, neither merged nor committed
    code, out = run(env, "apply", name, cwd=repo)
    assert code == 0 and "c.txt" in out, out
    git(repo, "reset", "-q", "--hard")
    git(repo, "clean", "-qfdx")
    code, out = run(env, "rm", "--force", name, cwd=repo)
    assert code == 0 and "refs/sandbox/backup/" in out, out
    code, out = run(env, "restore", name, "--path", str(tmp_path / "restored"), cwd=repo)
    assert code == 0, out
    assert (tmp_path / "restored" / "untracked.txt").read_text() == "new\n"
    assert (tmp_path / "restored" / "later.txt").read_text() == "later\n"
    code, out = run(env, "gc", "--apply", cwd=repo)
    assert code == 0, out
    assert_intact(repo, main_before, others, markers)
    env.ok("rm", "--force", other)


def test_object_substitution_and_forged_head_do_not_reach_the_users_history(
        env: Env, repo: Path, markers: Path) -> None:
    other, others = victim(env, repo)
    main_before = git(repo, "rev-parse", "main").strip()
    blob = git(repo, "rev-parse", "main:README.md").strip()
    name = env.ok("spawn", "--name", f"subst-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo).out.strip()
    # 1. A valid object of other content under the README blob's name, in the agent's own store (the
    #    host's store is read-only: the same write there fails).
    fake = "import zlib,sys; sys.stdout.buffer.write(zlib.compress(b'blob 7\\x00HACKED\\n'))"
    sh(env, name, f"G=$(git rev-parse --git-dir); mkdir -p $G/objects/{blob[:2]} && "
                  f"python3 -c \"{fake}\" > $G/objects/{blob[:2]}/{blob[2:]}")
    host_obj = f"{repo}/.git/objects/{blob[:2]}/{blob[2:]}"
    assert env.run("exec", name, "--", "sh", "-c", f"python3 -c \"{fake}\" > {host_obj}").code != 0
    # 2. A forged HEAD: the agent's HEAD names a branch "main" of its own, with its commit on it.
    sh(env, name, "git checkout -q -b main && echo forged > f.txt && git add f.txt && git commit -qm forged "
                  "&& echo dirty > d.txt")
    for args in (["ls"], ["diff", name], ["merge", name, "--include-uncommitted", "--into", "side"]):
        if args[0] == "merge":
            git(repo, "branch", "side")
        code, out = run(env, *args, cwd=repo)
        assert code == 0, (args, out)
        assert "HACKED" not in out
    assert git(repo, "show", "side:f.txt") == "forged\n" and git(repo, "show", "side:d.txt") == "dirty\n"
    # The user's own checkout and history are the originals.
    (repo / "README.md").write_text("scratch\n")
    git(repo, "checkout", "--", "README.md")
    assert (repo / "README.md").read_text() == "# demo\n"
    assert git(repo, "cat-file", "blob", blob) == "# demo\n"
    assert_intact(repo, main_before, others, markers)
    env.ok("rm", "--force", name)
    env.ok("rm", "--force", other)


def test_malformed_objects_are_refused_by_the_hosts_fetch(env: Env, repo: Path, markers: Path) -> None:
    """A .gitmodules that abuses option parsing (a url starting with '-') is refused by the host's
    fsck of everything it receives: the sync fails with a reason, the host branch does not move."""
    main_before = git(repo, "rev-parse", "main").strip()
    name = env.ok("spawn", "--name", f"mod-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo).out.strip()
    before = git(repo, "rev-parse", f"sandbox/{name}").strip()
    sh(env, name, f"printf '[submodule \"x\"]\\n\\tpath = x\\n\\turl = --upload-pack=touch {markers}/ran-url\\n'"
                  " > .gitmodules && git add .gitmodules && git commit -qm modules")
    code, out = run(env, "sync", name, cwd=repo)
    assert code == 8 and "cannot read its work" in out, out
    assert git(repo, "rev-parse", f"sandbox/{name}").strip() == before
    code, out = run(env, "rm", name, cwd=repo)
    assert code == 5 and "cannot be read" in out, out  # unreadable work is never deleted silently
    ws = Path(env.ok("ls", "--json", cwd=repo).json()[0]["workspace"])
    code, out = run(env, "rm", "--force", name, cwd=repo)  # the container goes; what cannot be read stays
    assert code == 0 and "workspace kept at" in out and (ws / ".gitmodules").is_file(), out
    assert_intact(repo, main_before, {}, markers)


def test_agent_tools_cannot_hang_or_flood_the_host(env: Env, repo: Path) -> None:
    """An export that never answers, or answers without end, is bounded by the host's fetch."""
    name = env.ok("spawn", "--name", f"hang-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo).out.strip()
    # The export runs in its container as the agent's uid (it reads the agent's files; its ~/.gitconfig no
    # longer counts): the agent stops it with a signal, from a loop of its own.
    stopper = "while :; do pkill -STOP -f sandbox[.]inside.*export; sleep 0.05; done"
    sh(env, name, f"echo x > y.txt && nohup sh -c '{stopper}' >/dev/null 2>&1 &")
    env.env["SANDBOX_SYNC_TIMEOUT"] = "5"
    try:
        code, out = run(env, "diff", name, cwd=repo)
        assert code == 8 and "timed out" in out, out
        info = json.loads(subprocess.run(["docker", "inspect", f"sandbox-{name}"], capture_output=True,
                                         text=True).stdout)
        assert info[0]["State"]["Running"]
        assert run(env, "rm", name, cwd=repo)[0] == 5  # cannot be read: refused
        # Once the container is gone, a fresh reader container (without the agent's ~/.gitconfig) reads
        # the final state: the work is backed up.
        code, out = run(env, "rm", "--force", name, cwd=repo)
        assert code == 0 and "refs/sandbox/backup/" in out, out
    finally:
        del env.env["SANDBOX_SYNC_TIMEOUT"]


def test_planted_git_code_never_runs_for_a_non_root_user(unprivileged: Env) -> None:
    """A non-root user's host commands never run the agent's planted git code: the design holds (the
    host never runs git in the agent's repository), whatever git's ownership check would add (the
    agent has a uid of its own now: AGENT_UID_OFFSET + the user's)."""
    env = unprivileged
    repo = env.root / "repo"
    markers = env.root / "markers"
    markers.mkdir()
    subprocess.run(["chown", f"{TEST_USER}:{TEST_USER}", str(markers)], check=True)

    def ugit(repo: Path, *args: str) -> str:  # the user's own git, in the user's repository
        proc = subprocess.run(["runuser", "-u", TEST_USER, "--", "git", "-C", str(repo), *args],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    main_before = ugit(repo, "rev-parse", "main").strip()
    name = env.ok("spawn", "--agent-cmd", "bash", cwd=repo).out.strip()
    plant(env, name, markers)
    for args in (["ls"], ["diff", name], ["diff", name, "--stat"], ["gc"]):
        code, out = run(env, *args, cwd=repo)
        assert code == 0, (args, out)
    assert run(env, "rm", name, cwd=repo)[0] == 5
    code, out = run(env, "rm", "--force", name, cwd=repo)
    assert code == 0 and "refs/sandbox/backup/" in out, out
    assert_intact(repo, main_before, {}, markers, ugit)


def _on_a_terminal(env: Env, *args: str, cwd: Path) -> bytes:
    """The CLI's output as a terminal receives it (stdout is a pty)."""
    import os
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI with the test's environment, stdout on the pty
        os.chdir(cwd)
        os.execve(env.python, [env.python, "-m", "sandbox", *args], env.env)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    return out


def test_agent_text_never_reaches_the_terminal_raw(env: Env, repo: Path) -> None:
    """File contents in a diff: control sequences are shown, not obeyed, on a terminal; into a pipe the
    bytes are unchanged (the diff still applies). (The pane needs no such test: tmux renders it, and
    capture-pane prints text, not the sequences the agent wrote.)"""
    name = env.ok("spawn", "--name", f"esc-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo).out.strip()
    sh(env, name, "printf 'title \\033]0;PWNED\\007 clear \\033[2J end\\n' > esc.txt")
    tty = _on_a_terminal(env, "diff", name, cwd=repo)
    assert b"esc.txt" in tty and b"\x1b" not in tty and b"\x07" not in tty and b"\\x1b]0;PWNED" in tty
    piped = env.ok("diff", name, cwd=repo).out
    assert "\x1b]0;PWNED\x07" in piped
    env.ok("rm", "--force", name)


def test_sandbox_never_takes_a_repository_the_agent_made_in_its_workspace(env: Env, repo: Path, markers: Path) -> None:
    """A `sub/.git` the agent made is its repository, not the user's: run from there, sandbox refuses."""
    name = env.ok("spawn", "--name", f"nest-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo).out.strip()
    ws = Path(env.ok("ls", "--json", cwd=repo).json()[0]["workspace"])
    sh(env, name, f"mkdir -p sub && cd sub && git init -q && git config core.fsmonitor 'touch {markers}/ran-nested'"
                  " && git config core.hooksPath /nonexistent && git commit -q --allow-empty -m nested")
    for args in (["spawn", "--agent-cmd", "bash"], ["gc"], ["diff", name]):
        res = env.run(*args, cwd=ws / "sub", timeout=BOUND)
        if args[0] == "diff":  # an agent's name works from anywhere: its work comes from its container
            assert res.code == 0, res.err
            continue
        assert res.code == 3 and "inside the agent workspace" in res.err, (args, res.err)
    assert sorted(p.name for p in markers.iterdir()) == []
    assert len(env.ok("ls", "--json", "--all", cwd=repo).json()) == 1  # nothing was spawned there
    env.ok("rm", "--force", name)
