"""Mission control: `wait --any`, the `notify` command, `sandbox top` (textual's headless pilot against
real agents) and `sandbox tile` (a real tmux server on its own socket)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Env, wait_for


@pytest.fixture
def spawned(env: Env, repo: Path):  # type: ignore[no-untyped-def]
    """Names to remove after the test (other tests count the agents of the run), even when it failed."""
    names: list[str] = []
    yield names
    for name in names:
        env.run("rm", "--force", "--delete-branch", name, cwd=repo)

WRITE_DOCS = bool(os.environ.get("SANDBOX_WRITE_DOCS"))  # write docs/top.svg (the README shows it)
PROMPT = "read -p 'Continue? (y/n) ' answer"  # the hook-less fallback calls this pane `waiting`


@pytest.mark.slow
def test_wait_any_returns_the_first_agent_that_needs_you_and_runs_notify(env: Env, repo: Path, tmp_path: Path,
                                                                         spawned: list[str]) -> None:
    spawned += ["w-1", "w-2"]
    out = tmp_path / "notified"
    (repo / ".sandbox.toml").write_text(
        "notify = " + json.dumps(f"sh -c 'echo \"$SANDBOX_AGENT $SANDBOX_STATE $SANDBOX_BRANCH\" > {out}'") + "\n")
    env.ok("trust", cwd=repo)  # notify applies from a trusted repository file only (tests/test_hostile_config.py)
    env.ok("spawn", "--agent-cmd", "bash", "--name", "w-1", cwd=repo)
    env.ok("spawn", "--agent-cmd", "bash", "--name", "w-2", cwd=repo)
    none = env.run("wait", "--any", "--until", "waiting", "--timeout", "1", cwd=repo)
    assert none.code == 9 and none.err.startswith("sandbox: error: no agent waiting after 1s"), none.err

    waiter = subprocess.Popen([env.python, "-m", "sandbox", "wait", "--any", "--until", "waiting", "--notify",
                               "--timeout", "60"], cwd=repo, env=env.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        env.ok("send", "w-2", PROMPT, cwd=repo)
        got, err = waiter.communicate(timeout=90)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, err
    assert got.strip() == "w-2 waiting"
    wait_for(lambda: out.exists() and out.read_text().strip() == "w-2 waiting sandbox/w-2", 10, "the notify command")
    # already waiting: at once
    assert env.ok("wait", "--any", "--until", "waiting", "--timeout", "5", cwd=repo).out.strip() == "w-2 waiting"
    both = env.run("wait", "w-1", "--any", cwd=repo)
    assert both.code == 2 and "name an agent, or pass --any" in both.err
    (repo / ".sandbox.toml").write_text('notify = "unclosed \'quote"\n')
    env.ok("trust", cwd=repo)
    bad = env.run("wait", "w-2", "--until", "waiting", "--notify", "--timeout", "5", cwd=repo)
    assert bad.code == 2 and bad.err.startswith("sandbox: error: invalid setting notify="), bad.err


# -- sandbox top, driven by textual's headless pilot ---------------------------------------------------
async def _until(pilot, check, timeout: float = 45, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.2)


def _in_process(env: Env, repo: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A manager in this process with the test user's environment (what the CLI would build)."""
    for key in [k for k in os.environ if k.startswith("SANDBOX_")]:
        monkeypatch.delenv(key)
    for key, value in env.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(repo)
    from sandbox.config import load_settings
    from sandbox.manager import SandboxManager

    return SandboxManager(load_settings(repo))


@pytest.mark.slow
@pytest.mark.claude
def test_top_shows_every_agent_follows_states_and_acts_through_keys(env: Env, repo: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    spawned: list[str]) -> None:
    spawned += ["cc-1", "sh-1"]
    import asyncio

    from textual.widgets import DataTable, Input, Static

    from sandbox.board import Board
    from sandbox.top import Confirm, TopApp

    env.ok("spawn", "--name", "cc-1", "write the task file", cwd=repo)
    env.ok("spawn", "--agent-cmd", "bash", "--name", "sh-1", "echo '[b]not bold[/b]' $((6*7))", cwd=repo)
    env.ok("wait", "cc-1", "--until", "idle", "--timeout", "120", cwd=repo)
    mgr = _in_process(env, repo, monkeypatch)
    attached: list[int] = []

    def attach(app, sb) -> None:  # type: ignore[no-untyped-def]
        # the real command reaches the real session (without a terminal: has-session instead of attach)
        argv = sb.attach_command()
        assert argv[:3] == ["docker", "exec", "-it"] and argv[4:6] == ["tmux", "attach"]
        attached.append(subprocess.run(["docker", "exec", argv[3], "tmux", "has-session", "-t", argv[-1]]).returncode)

    async def drive() -> None:
        board = Board(mgr, repo, stats_every=1.0)
        with board:
            app = TopApp(board, mgr, bell=True, attach=attach)
            async with app.run_test(size=(200, 45)) as pilot:
                table = app.query_one("#table", DataTable)

                def names() -> list[str]:
                    return [str(k.value) for k in table.rows]

                def cell(name: str, column: str) -> str:
                    return table.get_cell(name, column).plain

                await _until(pilot, lambda: sorted(names()) == ["cc-1", "sh-1"], what="both rows")
                assert cell("cc-1", "STATE") == "idle" and cell("cc-1", "TOKENS") != "-"
                assert cell("cc-1", "COST").startswith("$") and cell("sh-1", "TOKENS") == "-"
                assert cell("sh-1", "TASK / REASON") == "echo '[b]not bold[/b]' $((6*7))"  # shown, not markup
                await _until(pilot, lambda: cell("cc-1", "CPU").endswith("%"), what="engine stats")
                await _until(pilot, lambda: cell("cc-1", "DIFF") == "+3 -0 1f", what="the diffstat of the commit")

                # a state change appears, and a waiting agent floats to the top and rings
                env.ok("send", "sh-1", PROMPT, cwd=repo)
                await _until(pilot, lambda: names()[:1] == ["sh-1"] and cell("sh-1", "STATE") == "waiting",
                             what="sh-1 waiting, first")
                assert app.bells == 1
                # the preview is the selected agent's pane, agent text shown literally
                table.move_cursor(row=0)
                preview = app.query_one("#preview", Static)
                await _until(pilot, lambda: "[b]not bold[/b] 42" in str(preview.render()), what="the preview")
                if WRITE_DOCS:  # the picture in the README (docs/top.svg)
                    await pilot.pause(1.5)
                    app.save_screenshot("top.svg", str(Path(__file__).resolve().parent.parent / "docs"))

                # send through keys: s, the text, Enter
                await pilot.press("s")
                await _until(pilot, lambda: isinstance(app.screen.focused, Input), what="the send box")
                app.screen.query_one(Input).value = "y"
                await pilot.press("enter")
                await pilot.press("s")
                await _until(pilot, lambda: isinstance(app.screen.focused, Input), what="the send box")
                app.screen.query_one(Input).value = "echo top-$((40+2))"
                await pilot.press("enter")
                await _until(pilot, lambda: "top-42" in env.ok("logs", "sh-1", cwd=repo).out, what="the sent text")
                await _until(pilot, lambda: cell("sh-1", "STATE") == "idle", what="sh-1 idle again")

                # enter attaches (the real command, to the real session)
                table.move_cursor(row=names().index("sh-1"))
                await pilot.press("enter")
                await _until(pilot, lambda: attached == [0], what="attach")

                # / filters
                await pilot.press("slash")
                await _until(pilot, lambda: isinstance(app.screen.focused, Input), what="the filter box")
                app.screen.query_one(Input).value = "cc-"
                await pilot.press("enter")
                await _until(pilot, lambda: names() == ["cc-1"], what="the filter")
                # r asks first (n: nothing happens), x stops
                await pilot.press("r")
                await _until(pilot, lambda: isinstance(app.screen, Confirm), what="the rm question")
                await pilot.press("n")
                await pilot.press("x")
                await _until(pilot, lambda: cell("cc-1", "STATE") == "stopped", timeout=60, what="cc-1 stopped")
                svg = app.export_screenshot()
                assert "cc-1" in svg and "stopped" in svg
        assert board.counts["list"] < 60  # listed on events (at most once a second), not per refresh

    asyncio.run(drive())
    listed = {a["name"]: a for a in env.ok("ls", "--json", cwd=repo).json()}
    assert listed["cc-1"]["state"] == "stopped" and listed["sh-1"]["state"] == "idle"


# -- sandbox tile, against a real tmux server on its own socket --------------------------------------------
@pytest.fixture
def tmux_socket():  # type: ignore[no-untyped-def]
    import uuid

    import libtmux

    name = f"sbx-tile-{uuid.uuid4().hex[:8]}"
    yield name
    try:  # the finalizer never raises (as libtmux's own fixtures)
        libtmux.Server(socket_name=name).kill()
    except Exception:  # noqa: BLE001
        pass


@pytest.mark.slow
def test_tile_builds_and_reuses_one_pane_per_agent(env: Env, repo: Path, tmux_socket: str, spawned: list[str]) -> None:
    spawned += ["t-1", "t-2", "t-3"]
    import libtmux

    none = env.run("tile", "--socket", tmux_socket, "--no-attach", cwd=repo)
    assert none.code == 4 and none.err.strip() == "sandbox: error: no running agent to tile (see `sandbox ls`)"
    for name in ("t-1", "t-2"):
        env.ok("spawn", "--agent-cmd", "bash", "--name", name, cwd=repo)
    env.ok("send", "t-2", "echo tile-$((6*7))", cwd=repo)
    res = env.ok("tile", "--socket", tmux_socket, "--no-attach", cwd=repo)
    assert res.out.strip() == "sandbox" and "added t-1 t-2" in res.err

    server = libtmux.Server(socket_name=tmux_socket)
    session = server.sessions.get(session_name="sandbox")

    def shown() -> dict[str, str]:
        out = server.cmd("list-panes", "-s", "-t", "=sandbox", "-F", "#{pane_id} #{@sandbox-agent} #{pane_start_command}").stdout
        return {line.split()[1]: line for line in out}

    panes = shown()
    assert sorted(panes) == ["t-1", "t-2"]
    assert "docker exec -it sandbox-t-2 tmux attach -t t-2" in panes["t-2"]
    # each host pane is attached to its agent: the agent's screen shows in it
    pane = next(p for p in session.panes if p.pane_id == panes["t-2"].split()[0])
    wait_for(lambda: "tile-42" in "\n".join(pane.capture_pane()), 30, "the agent's screen in the host pane")

    # run again: reused, nothing doubled; a new agent gets its pane
    again = env.ok("tile", "--socket", tmux_socket, "--no-attach", cwd=repo)
    assert "added" not in again.err and sorted(shown()) == ["t-1", "t-2"]
    env.ok("spawn", "--agent-cmd", "bash", "--name", "t-3", cwd=repo)
    third = env.ok("tile", "--socket", tmux_socket, "--no-attach", cwd=repo)
    assert "added t-3" in third.err and sorted(shown()) == ["t-1", "t-2", "t-3"]
    assert len(session.windows) == 1
    layout = server.cmd("display-message", "-p", "-t", "=sandbox:", "#{window_layout}").stdout[0]
    assert layout.count(",") > 8  # three panes laid out (tiled), not stacked in one
    # stopping an agent closes its pane (its attach ends); tile brings the others back as they are
    env.ok("stop", "t-1", cwd=repo)
    wait_for(lambda: "t-1" not in shown(), 30, "t-1's pane closing")
    assert "added" not in env.ok("tile", "--socket", tmux_socket, "--no-attach", cwd=repo).err


# -- agent text in the TUI (no engine) -------------------------------------------------------------------
def test_agent_text_in_top_is_never_markup_or_escapes() -> None:
    from rich.console import Console

    from sandbox.board import Row
    from sandbox.manager import Sandbox
    from sandbox.top import cells

    hostile = "[link=https://evil.invalid]click[/link] [bold red]x[/] \x1b]52;c;cGF5bG9hZA==\x07\x1b[2J\x9b31m"
    sb = Sandbox(name="evil-1", container_id="c" * 12, container_name="sandbox-evil-1",
                 labels={"sandbox.task": hostile, "sandbox.branch": "sandbox/evil-1"}, engine_state="running",
                 status="Up", agent_state={"state": "busy", "usage": {hostile: {"input": 5, "output": 1}}})
    row = Row(sb, None, "", sb.cost())
    task = cells(row)[-1]
    assert task.plain.startswith("[link=https://evil.invalid]click[/link] [bold red]x[/] \\x1b]52;c;")
    assert "\x1b" not in task.plain and "\x07" not in task.plain and "\x9b" not in task.plain
    assert not task.spans  # no style came from the text
    console = Console(width=400, record=True, color_system=None, force_terminal=False)
    console.print(task)
    out = console.export_text()
    assert "[bold red]x[/]" in out and "\x1b" not in out and "click[/link]" in out


def test_top_refuses_without_a_terminal(tmp_path: Path) -> None:
    from tests.conftest import make_env

    env = make_env(tmp_path, "sandbox-agent:never-used")
    res = env.run("top")  # stdout is a pipe here
    assert res.code == 2 and res.err.strip() == ("sandbox: error: sandbox top needs a terminal "
                                                 "(for scripts: sandbox ls --wide --json)"), res.err
