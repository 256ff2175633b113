"""Bad input: byte-exact delivery to the agent, or one clear error line, a non-zero exit and
nothing left behind; never a shell, never a partial spawn.

Tasks reach the agent two ways (sandbox/agents.py): as its last argument (Claude Code: read back
from the agent process's /proc/PID/cmdline) or typed into its terminal (any command: a reader
that puts its terminal in raw mode with bracketed paste, and one that keeps it cooked, `cat`).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from tests.conftest import Env, git, leftovers, make_env, make_repo, wait_for
from tests.reliability.conftest import MARKS, count

pytestmark = MARKS

# A raw-mode reader: bracketed paste on, terminal raw, everything between the paste markers saved.
RAW_READER = r'''
import os, sys, tty
os.write(1, b"\x1b[?2004h")
tty.setraw(0)
buf = b""
while b"\x1b[201~" not in buf:
    buf += os.read(0, 65536)
data = buf[buf.index(b"\x1b[200~") + 6:buf.index(b"\x1b[201~")]
open(".received.tmp", "wb").write(data)
os.rename(".received.tmp", "received.bin")
while True:
    os.read(0, 65536)
'''

HYP = settings(max_examples=count(6, 40), deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
def world(tmp_path_factory: pytest.TempPathFactory, agent_image: str) -> tuple[Env, Path]:
    root = tmp_path_factory.mktemp("bad")
    env = make_env(root, agent_image)
    repo = make_repo(root / "repo")
    (repo / "reader.py").write_text(RAW_READER)
    git(repo, "add", "reader.py")
    git(repo, "commit", "-qm", "reader")
    return env, repo


def one_error_line(res, code: int) -> None:  # type: ignore[no-untyped-def]
    assert res.code == code, (res.code, res.out, res.err)
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sandbox: error: "), res.err
    assert "Traceback" not in res.err


def nothing_left(env: Env, repo: Path) -> None:
    assert leftovers(env, repo) == {"containers": [], "workspaces": [], "branches": [], "registered": []}


def received(env: Env, name: str, file: str = "received.bin", timeout: float = 30) -> bytes:
    workspace = Path(env.ok("ls", "--json").json()[0]["workspace"])
    wait_for(lambda: (workspace / file).exists(), timeout, f"{file} in the workspace")
    return (workspace / file).read_bytes()


def agent_argv(name: str, binary: str) -> list[bytes]:
    """The argv of the agent process named ``binary`` in the container, as the kernel has it."""
    for _ in range(100):
        out = subprocess.run(["docker", "exec", f"sandbox-{name}", "sh", "-c",
                              f"for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/cmdline | head -1 | grep -qx '{binary}' "
                              f"&& cat $p/cmdline && exit 0; done; exit 1"], capture_output=True)
        if out.returncode == 0:
            return out.stdout.split(b"\0")[:-1]
        time.sleep(0.1)
    raise AssertionError(f"no {binary} process in sandbox-{name}")


@pytest.mark.claude
@pytest.mark.parametrize("size", [20 * 1024, 100 * 1024])
def test_large_task_reaches_claude_code_byte_exact(world, size: int) -> None:
    """A 20 KB / 100 KB task (it failed with `command too long` from tmux): through a file, as argv."""
    env, repo = world
    line = "Implement the feature; quotes ' \" `x` $HOME ü → 日本 \\ end\n"
    task = (line * (size // len(line.encode()) + 1)).encode()[:size].decode("utf-8", "ignore")
    name = env.ok("spawn", "--name", f"big{size // 1024}", task, cwd=repo, timeout=240).out.strip()
    argv = agent_argv(name, "claude")
    assert argv[-1] == task.encode()
    wait_for(lambda: env.ok("ls", "--json").json()[0]["agent_state"].get("stops", 0) >= 1, 120, "the turn")
    env.ok("rm", "--force", name)


def test_task_too_large_or_with_nul_is_one_clear_error(world) -> None:
    env, repo = world
    one_error_line(env.run("spawn", "--agent-cmd", "cat", "-", input="x" * (128 * 1024), cwd=repo), 2)
    one_error_line(env.run("spawn", "--agent-cmd", "cat", "-", input="a\0b", cwd=repo), 2)
    nothing_left(env, repo)


def test_task_typed_before_the_terminal_is_raw_is_not_read_as_keystrokes(world) -> None:
    """^\\ ^C ^Z ^D ^U DEL in a typed task: a cooked-mode agent (cat) gets them as bytes (quoted
    with ^V), is not killed, and is not restarted; a raw-mode agent gets the task byte-exact."""
    env, repo = world
    task = "start \x1c quit \x03 int \x1a susp \x04 eof \x15 kill \x17 werase \x7f del \x16 lnext end"
    name = env.ok("spawn", "--name", "cooked", "--agent-cmd", "sh -c 'cat > received.txt'", task, cwd=repo).out.strip()
    data = wait_for(lambda: (b := received(env, name, "received.txt")).endswith(b"\n") and b, 20, "the whole line")
    assert data == task.encode() + b"\n"
    row = env.ok("ls", "--json").json()[0]
    assert row["attempt"] == 1 and row["state"] not in ("exited", "failed", "starting"), row
    env.ok("rm", "--force", name)

    name = env.ok("spawn", "--name", "raw", "--agent-cmd", "python3 reader.py", task, cwd=repo).out.strip()
    assert received(env, name) == task.encode()
    assert env.ok("ls", "--json").json()[0]["attempt"] == 1
    env.ok("rm", "--force", name)


def test_large_typed_task_and_send(world) -> None:
    """100 KB typed (a custom agent) and sent (`sandbox send`): byte-exact (tmux set-buffer failed)."""
    env, repo = world
    task = ("typed line with ; and \\; and 'quotes' ü\n" * 2600)[: 100 * 1024]
    name = env.ok("spawn", "--name", "bigtyped", "--agent-cmd", "python3 reader.py", task, cwd=repo).out.strip()
    assert received(env, name, timeout=60) == task.encode()
    env.ok("rm", "--force", name)
    name = env.ok("spawn", "--name", "bigsend", "--agent-cmd", "python3 reader.py", cwd=repo).out.strip()
    env.ok("send", name, "-", input=task)
    assert received(env, name, timeout=60) == task.encode()
    env.ok("rm", "--force", name)


def test_control_characters_in_ls_are_escaped(world) -> None:
    env, repo = world
    evil = "task \x1b]0;pwned\x07 \x1b[2J\x1b[31mred \x9b31m c1"
    name = env.ok("spawn", "--name", "evil", "--agent-cmd", "sleep infinity", evil, cwd=repo).out.strip()
    out = env.ok("ls", cwd=repo).out
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "\\x1b]0;pwned\\x07" in out
    assert json.loads(env.ok("ls", "--json").out)[0]["task"].startswith("task \x1b]0;pwned")  # JSON: exact
    env.ok("rm", "--force", name)


# -- generated input ------------------------------------------------------------------------------
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=300)


@HYP
@given(task=texts)
def test_generated_tasks_arrive_byte_exact(world, task: str) -> None:
    assume(task != "-")  # ("-" reads the task from stdin)
    env, repo = world
    res = env.run("spawn", "--agent-cmd", "python3 reader.py", "--", task, cwd=repo)  # (`--`: "-x" is a task too)
    assert res.code == 0, res.err
    name = res.out.strip()
    try:
        assert received(env, name) == task.encode()
    finally:
        env.ok("rm", "--force", "--delete-branch", name)
    nothing_left(env, repo)


@HYP
@given(name=st.one_of(st.from_regex(r"\A[a-z][a-z0-9_-]{0,20}\Z"), texts,
                      st.sampled_from(["-x", "--help", "../up", "a/b", "a b", "ä", "x" * 64, ".", "a;id"])))
def test_generated_names_spawn_or_are_refused(world, name: str) -> None:
    env, repo = world
    res = env.run("spawn", "--name", name, "--agent-cmd", "sleep infinity", "--no-wait", cwd=repo)
    if res.code == 0:
        assert res.out.strip() == name
        env.ok("rm", "--force", "--delete-branch", name)
    else:
        one_error_line(res, 2)
    nothing_left(env, repo)


@HYP
@given(base=st.one_of(st.sampled_from(["--upload-pack=touch /tmp/sandbox-pwned", "--output=/tmp/sandbox-pwned",
                                       "-h", "--all", "HEAD~999", "main;touch /tmp/sandbox-pwned",
                                       "$(touch /tmp/sandbox-pwned)", "@{-1}", "refs/../x", ":/", "HEAD^{tree}"]),
                      texts))
def test_generated_base_values_never_reach_git_as_options(world, base: str) -> None:
    env, repo = world
    res = env.run("spawn", "--base", base, "--agent-cmd", "sleep infinity", "--no-wait", cwd=repo)
    assert not Path("/tmp/sandbox-pwned").exists()
    if res.code == 0:  # a revision that names a commit
        env.ok("rm", "--force", "--delete-branch", res.out.strip())
    else:
        one_error_line(res, 2 if base.startswith("-") and res.code == 2 else 3)
    nothing_left(env, repo)


@HYP
@given(value=texts)
def test_generated_env_and_config_values_are_taken_or_refused(world, value: str) -> None:
    """Settings from the environment and from the repository's .sandbox.toml: used, or one error (exit 2)."""
    env, repo = world
    for extra, file in (({"SANDBOX_MEMORY": value}, None), ({}, f"memory = {json.dumps(value)}\n"),
                        ({}, value)):
        cfg = repo / ".sandbox.toml"
        if file is not None:
            cfg.write_text(file)
        try:
            res = env.run("config", "show", cwd=repo, extra=extra)
        finally:
            cfg.unlink(missing_ok=True)
        if res.code != 0:
            one_error_line(res, 2)
        else:
            json.loads(res.out)
    nothing_left(env, repo)
