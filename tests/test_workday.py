"""The working day (issue 28): shell completion, conflicts before merge, ports, editors, notifications.

Real engine, real git: shell agents (`--agent-cmd bash`) change files through `sandbox exec`.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.conftest import Env, git, make_env, wait_for  # noqa: F401

pytestmark = pytest.mark.slow


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def spawn(env: Env, repo: Path, prefix: str, *extra: str) -> str:
    return env.ok("spawn", "--name", uniq(prefix), "--agent-cmd", "bash", *extra, cwd=repo).out.strip()


def sh(env: Env, name: str, script: str) -> str:
    res = env.run("exec", name, "--", "sh", "-c", script)
    assert res.code == 0, f"{script}: {res.err}"
    return res.out


# -- completion --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shell,marker", [("bash", "complete -o default -F _sandbox_completion sandbox"),
                                          ("zsh", "#compdef sandbox"), ("fish", "complete --command sandbox")])
def test_completion_script_for_each_shell(tmp_path: Path, shell: str, marker: str) -> None:
    env = make_env(tmp_path, "unused:latest")
    res = env.ok("--show-completion", shell, extra={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert marker in res.out and "_SANDBOX_COMPLETE" in res.out


def test_completion_install_writes_the_shells_file(tmp_path: Path) -> None:
    env = make_env(tmp_path, "unused:latest")
    res = env.ok("--install-completion", "bash", extra={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert "bash completion installed" in res.out
    assert "sandbox" in (Path(env.env["HOME"]) / ".bashrc").read_text()


def complete(env: Env, words: str, cwd: Path) -> list[str]:
    n = len(words.split()) - (0 if words.endswith(" ") else 1)
    res = env.ok(extra={"_SANDBOX_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(n)}, cwd=cwd)
    return res.out.split()


def test_agent_names_are_completed(env: Env, repo: Path) -> None:
    a, b = spawn(env, repo, "cpl"), spawn(env, repo, "cpl")
    try:
        assert {a, b} <= set(complete(env, "sandbox attach ", repo))
        assert complete(env, f"sandbox diff {a[:-2]}", repo) == [a]
        assert a in complete(env, f"sandbox rm {b} ", repo)  # (each of rm's NAMEs)
        assert a in complete(env, "sandbox wait ", repo)  # (an optional NAME too)
        assert complete(env, "sandbox attach zzz-no-such", repo) == []
        # no engine: nothing, quietly, fast (never an error printed into the command line)
        res = env.run(extra={"_SANDBOX_COMPLETE": "complete_bash", "COMP_WORDS": "sandbox attach ",
                             "COMP_CWORD": "2", "DOCKER_HOST": "unix:///nonexistent.sock"}, cwd=repo, timeout=30)
        assert res.code == 0 and res.out.strip() == "" and res.err == ""
    finally:
        env.run("rm", "-f", a, b, cwd=repo)


# -- conflicts before merge --------------------------------------------------------------------------
def test_conflicts_of_two_agents_editing_one_file(env: Env, repo: Path) -> None:
    (repo / "app.py").write_text("a = 1\nb = 2\n")
    (repo / "other.py").write_text("x = 1\n")
    git(repo, "add", "."); git(repo, "commit", "-qm", "two files")
    a, b, c = spawn(env, repo, "cfa"), spawn(env, repo, "cfb"), spawn(env, repo, "cfc")
    try:
        # a commits a change to app.py (and attributes naming a merge driver the host's config defines:
        # never run on agent content); b changes the same line without committing; c touches other.py only
        marker = repo.parent / "driver-ran"
        git(repo, "config", "merge.pwn.driver", f"touch {marker}; false")
        sh(env, a, "printf 'a = 10\\nb = 2\\n' > app.py && echo '* merge=pwn' > .gitattributes"
                   " && git add .gitattributes && git commit -qam 'a: app'")
        sh(env, b, "printf 'a = 20\\nb = 2\\n' > app.py && echo new > notes.txt")
        sh(env, c, "printf 'x = 3\\n' > other.py && git commit -qam 'c: other'")
        # meanwhile the main checkout's own branch moves on app.py's line too (a conflict for a at merge)
        (repo / "app.py").write_text("a = 30\nb = 2\n")
        git(repo, "commit", "-qam", "main: app")
        got = env.ok("conflicts", "--json", cwd=repo).json()
        rows = {r["name"]: r for r in got["agents"]}
        assert got["target"] == "main" and set(rows) == {a, b, c}
        assert rows[a]["overlaps"] == {b: ["app.py"], "(main)": ["app.py"]}
        assert rows[a]["merges"] is False and rows[a]["conflicted"] == ["app.py"] and not marker.exists()
        assert rows[b]["files"] == ["app.py", "notes.txt"] and rows[b]["uncommitted"] is True
        assert rows[b]["overlaps"] == {a: ["app.py"], "(main)": ["app.py"]}
        assert rows[b]["merges"] is True  # (its branch has no commit yet: what merge takes merges)
        assert rows[c]["overlaps"] == {} and rows[c]["merges"] is True and rows[c]["files"] == ["other.py"]
        # the main checkout's uncommitted change counts as the target's
        (repo / "other.py").write_text("x = 4\n")
        got = env.ok("conflicts", c, "--json", cwd=repo).json()
        assert [r["name"] for r in got["agents"]] == [c] and got["agents"][0]["overlaps"] == {"(main)": ["other.py"]}
        assert got["main_uncommitted"] == ["other.py"]
        git(repo, "checkout", "--", "other.py")
        # nothing moved: the table, and the user's branch and files as they were
        before = git(repo, "rev-parse", "main").strip()
        shown = env.ok("conflicts", cwd=repo).out
        assert "CONFLICT: app.py" in shown and f"{b}: app.py" in shown
        assert git(repo, "rev-parse", "main").strip() == before and git(repo, "status", "--porcelain") == ""
        res = env.run("conflicts", "no-such-agent", cwd=repo)
        assert res.code == 4 and res.err.count("\n") == 1, res.err
    finally:
        env.run("rm", "-f", a, b, c, cwd=repo)


def test_top_marks_the_agents_that_edit_the_same_files(env: Env, repo: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`top`'s board: an agent's DIFF cell names the other agents of its repository that committed changes to
    the same files (from the host's branches); one editing other files is not marked."""
    import os

    from sandbox.board import Board
    from sandbox.config import load_settings
    from sandbox.manager import SandboxManager
    from sandbox.top import diff_cell

    (repo / "app.py").write_text("a = 1\n")
    git(repo, "add", "."); git(repo, "commit", "-qm", "app")
    a, b, c = spawn(env, repo, "ova"), spawn(env, repo, "ovb"), spawn(env, repo, "ovc")
    try:
        sh(env, a, "echo 'a = 2' > app.py && git commit -qam 'a: app'")
        sh(env, b, "echo 'a = 3' > app.py && git commit -qam 'b: app'")
        sh(env, c, "echo x > other.py && git add other.py && git commit -qm 'c: other'")
        for key in [k for k in os.environ if k.startswith("SANDBOX_")]:
            monkeypatch.delenv(key)
        for key, value in env.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.chdir(repo)
        board = Board(SandboxManager(load_settings(repo)), repo, events=False)
        board.refresh()  # (one listing: it brings the three branches over, then the diffstats and files)
        rows = {r.name: r for r in board.rows()}
        assert rows[a].overlaps == (b,) and rows[b].overlaps == (a,) and rows[c].overlaps == ()
        assert diff_cell(rows[a]).plain == f"{rows[a].diffstat} ! {b}" and "!" not in diff_cell(rows[c]).plain
    finally:
        env.run("rm", "-f", a, b, c, cwd=repo)


def test_rebase_moves_a_branch_onto_main_or_prompts_the_agent_with_the_conflicts(env: Env, repo: Path) -> None:
    (repo / "app.py").write_text("a = 1\n")
    git(repo, "add", "."); git(repo, "commit", "-qm", "app")
    a, b, c = spawn(env, repo, "rba"), spawn(env, repo, "rbb"), spawn(env, repo, "rbc")
    try:
        sh(env, a, "echo x > other.py && git add other.py && git commit -qm 'a: other'")
        sh(env, b, "echo 'a = 2' > app.py && git commit -qam 'b: app'")
        sh(env, c, "echo 'a = 4' > app.py")  # (uncommitted)
        (repo / "app.py").write_text("a = 3\n")
        git(repo, "commit", "-qam", "main: app")
        main = git(repo, "rev-parse", "main").strip()
        for name in (a, b, c):
            env.ok("wait", name, "--until", "idle", "--timeout", "60", cwd=repo)
        # a: no conflict — its branch now sits on main's commit, in its container and on the host
        res = env.ok("rebase", a, cwd=repo)
        assert f"{a}: rebased onto main" in res.out
        assert git(repo, "merge-base", "--is-ancestor", main, f"sandbox/{a}") == ""
        assert sh(env, a, "cat app.py && git log --format=%s -2") == "a = 3\na: other\nmain: app\n"
        assert env.ok("rebase", a, cwd=repo).out.strip() == f"{a}: already on main ({main[:12]})"
        # b: a conflict — aborted in its container, its branch and files as they were, and it is told
        before = git(repo, "rev-parse", f"sandbox/{b}").strip()
        res = env.run("rebase", b, cwd=repo)
        assert res.code == 5 and "app.py" in res.err and len(res.err.strip().splitlines()) == 1, res.err
        assert git(repo, "rev-parse", f"sandbox/{b}").strip() == before
        assert sh(env, b, "cat app.py && git status --porcelain") == "a = 2\n"
        wait_for(lambda: "rebasing it conflicts in app.py" in env.ok("logs", b, cwd=repo).out, 30, "the prompt")
        # c: uncommitted work is never moved
        res = env.run("rebase", c, cwd=repo)
        assert res.code == 5 and "uncommitted changes" in res.err, res.err
        assert sh(env, c, "cat app.py") == "a = 4\n"
        assert env.run("rebase", "no-such-agent", cwd=repo).code == 4
    finally:
        env.run("rm", "-f", a, b, c, cwd=repo)


# -- a current host branch without asking ---------------------------------------------------------------
def test_wait_returns_with_the_agents_commits_on_the_hosts_branch(env: Env, repo: Path) -> None:
    """When `wait` returns (the agent's turn is over), `git log sandbox/NAME` on the host already has what
    the agent committed: no `ls`, `diff` or `sync` in between."""
    name = spawn(env, repo, "cur")
    try:
        before = git(repo, "rev-parse", f"sandbox/{name}").strip()
        sh(env, name, "echo done > result.txt && git add result.txt && git commit -qm 'agent: result'")
        env.ok("wait", name, "--until", "idle", "--timeout", "60", cwd=repo)
        assert "agent: result" in git(repo, "log", "--format=%s", f"sandbox/{name}")
        assert git(repo, "rev-parse", f"sandbox/{name}~1").strip() == before
    finally:
        env.run("rm", "-f", name, cwd=repo)


# -- ports -------------------------------------------------------------------------------------------
def test_a_published_port_reaches_the_agents_server_on_loopback_only(env: Env, repo: Path) -> None:
    import json
    import subprocess
    import urllib.request

    (repo / "index.html").write_text("served by the agent\n")
    git(repo, "add", "."); git(repo, "commit", "-qm", "page")
    name = spawn(env, repo, "prt", "--port", "8000", "-p", "8001")
    try:
        # the agent learns its port from its environment and serves its workspace on it
        env.ok("send", name, 'python3 -m http.server "$SANDBOX_PORT" --bind 0.0.0.0 >/dev/null 2>&1 &')
        assert sh(env, name, 'echo "$SANDBOX_PORT $SANDBOX_PORTS"').strip() == "8000 8000,8001"
        row = [r for r in env.ok("ls", "--json", cwd=repo).json() if r["name"] == name][0]
        got = {p["container"]: p for p in row["ports"]}
        assert set(got) == {8000, 8001} and {p["host_ip"] for p in got.values()} == {"127.0.0.1"}
        where = env.ok("port", name, "8000").out.strip()
        assert where == f"127.0.0.1:{got[8000]['host_port']}"
        lines = env.ok("port", name).out.splitlines()
        assert lines == [f"8000 -> http://{where}", f"8001 -> http://127.0.0.1:{got[8001]['host_port']}"]

        def served() -> bytes | None:
            try:
                with urllib.request.urlopen(f"http://{where}/index.html", timeout=5) as r:
                    return r.read()
            except OSError:
                return None
        assert wait_for(served, 60, "the agent's server on its published port") == b"served by the agent\n"
        # bound to loopback only: the engine's own record says so (never 0.0.0.0 or ::)
        bindings = json.loads(subprocess.run(["docker", "inspect", "-f", "{{json .HostConfig.PortBindings}}",
                                              f"sandbox-{name}"], capture_output=True, text=True).stdout)
        assert {b["HostIp"] for v in bindings.values() for b in v} == {"127.0.0.1"}
        assert "8000->" in env.ok("ls", "--wide", cwd=repo).out
        res = env.run("port", name, "9999")
        assert res.code == 4 and res.err.count("\n") == 1, res.err
    finally:
        env.run("rm", "-f", name, cwd=repo)


def test_ports_are_refused_where_docker_publishes_nothing(env: Env, repo: Path) -> None:
    from tests.conftest import leftovers

    for profile in ("isolated", "locked"):
        res = env.run("spawn", "--agent-cmd", "bash", "--profile", profile, "--port", "3000", cwd=repo)
        assert res.code == 2 and res.err.count("\n") == 1 and "publishes no ports" in res.err, res.err
    res = env.run("spawn", "--agent-cmd", "bash", "--port", "70000", cwd=repo)
    assert res.code == 2 and res.err.count("\n") == 1 and "65535" in res.err, res.err
    assert leftovers(env, repo) == {"containers": [], "workspaces": [], "branches": [], "registered": []}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_host_ports_chosen_by_hand_or_from_the_range_and_a_port_in_use_refused(env: Env, repo: Path) -> None:
    """`--publish HOST:CONTAINER` binds that host port (on 127.0.0.1); `port_range` picks the others from the
    range; a chosen host port that is in use, or a range with none free, is one line, exit 2, nothing made."""
    import socket

    from tests.conftest import leftovers

    mine = _free_port()
    low = _free_port()
    extra = {"SANDBOX_PORT_RANGE": f"{low}-{low}"}
    name = env.ok("spawn", "--name", uniq("hpt"), "--agent-cmd", "bash", "--publish", f"{mine}:8000", "-p", "8001",
               cwd=repo, extra=extra).out.strip()
    try:
        assert env.ok("port", name, "8000").out.strip() == f"127.0.0.1:{mine}"
        assert env.ok("port", name, "8001").out.strip() == f"127.0.0.1:{low}"  # (the range's only port)
        # now both are taken: by hand, and the whole range
        res = env.run("spawn", "--agent-cmd", "bash", "--publish", f"{mine}:9000", cwd=repo)
        assert res.code == 2 and res.err.count("\n") == 1 and f"port {mine} on 127.0.0.1 is in use" in res.err, res.err
        res = env.run("spawn", "--agent-cmd", "bash", "-p", "9000", cwd=repo, extra=extra)
        assert res.code == 2 and res.err.count("\n") == 1 and "no free port left in port_range" in res.err, res.err
        res = env.run("spawn", "--agent-cmd", "bash", "-p", f"{mine}:9000", "-p", f"{mine}:9001", cwd=repo)
        assert res.code == 2 and "a host port is published once" in res.err, res.err
    finally:
        env.run("rm", "-f", "--delete-branch", name, cwd=repo)
    with socket.socket() as busy:  # (a port some other program of yours holds)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        res = env.run("spawn", "--agent-cmd", "bash", "-p", f"{busy.getsockname()[1]}:8000", cwd=repo)
        assert res.code == 2 and "is in use" in res.err, res.err
    assert leftovers(env, repo) == {"containers": [], "workspaces": [], "branches": [], "registered": []}


# -- editors -----------------------------------------------------------------------------------------
def test_code_opens_the_container_never_the_hosts_copy(env: Env, repo: Path, tmp_path: Path) -> None:
    import shlex

    from sandbox import editors

    name = spawn(env, repo, "ed")
    try:
        row = [r for r in env.ok("ls", "--json", cwd=repo).json() if r["name"] == name][0]
        argv = shlex.split(env.ok("code", name, "--print", cwd=repo).out)
        assert argv[:2] == ["code", "--folder-uri"] and len(argv) == 3
        target, path = editors.decode(argv[2])
        assert target == {"containerName": f"/sandbox-{name}"} and path == row["workspace"]
        assert row["workspace"] not in argv[:2] and not argv[2].startswith("file:")  # (no host path opened)
        # the hex is exactly the JSON the Dev Containers extension reads
        assert argv[2].split("+", 1)[1].split("/", 1)[0] == json_hex(name)
        assert shlex.split(env.ok("code", name, "--print", "--editor", "cursor", cwd=repo).out)[0] == "cursor"
        # no editor on PATH: the URI on stdout, one clear line on stderr, exit 1
        bare = tmp_path / "bin"
        bare.mkdir()
        for tool in ("git", "docker"):
            (bare / tool).symlink_to(__import__("shutil").which(tool))
        res = env.run("code", name, cwd=repo, extra={"PATH": str(bare)})
        assert res.code == 1 and res.out.strip() == argv[2] and res.err.count("\n") == 1, res
        assert "not on PATH" in res.err
        res = env.run("code", name, "--editor", "vim", cwd=repo)
        assert res.code == 2 and res.err.count("\n") == 1
    finally:
        env.run("rm", "-f", name, cwd=repo)


def json_hex(name: str) -> str:
    return ('{"containerName":"/sandbox-%s"}' % name).encode().hex()


# -- notifications that reach you --------------------------------------------------------------------
class Receiver:
    """A webhook receiver on 127.0.0.1: records each POST's JSON; answers the codes in ``answers`` first."""

    def __init__(self, answers: list[int] | None = None) -> None:
        import http.server
        import threading

        self.got: list[dict[str, object]] = []
        self.raw: list[tuple[str, dict[str, str], bytes]] = []  # (path, headers, body) of each accepted POST
        self.answers = list(answers or [])
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                import json

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code = outer.answers.pop(0) if outer.answers else 200
                if code == 200:
                    outer.raw.append((self.path, dict(self.headers), body))
                    if self.headers.get("Content-Type") == "application/json":
                        outer.got.append(json.loads(body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Agent:
    name, state, repo, branch = "a-1", "waiting", "/r", "sandbox/a-1"
    reason = "Continue?\x1b]52;c;cGF5bG9hZA==\x07 \u202e(y/n)\n" + "x" * 500


def test_webhook_post_is_bounded_retried_and_defanged() -> None:
    from sandbox import notify

    rx = Receiver([500, 503])
    try:
        assert notify.post(rx.url, notify.payload(Agent()), backoff=0.01) is None  # (third try)
        body = rx.got[0]
        assert set(body) == {"name", "state", "repo", "branch", "reason", "text"}
        assert body["name"] == "a-1" and body["state"] == "waiting" and body["branch"] == "sandbox/a-1"
        reason = str(body["reason"])
        assert "\x1b" not in reason and "\u202e" not in reason and "\n" not in reason and len(reason) <= 200
        rx.answers = [404]
        problem = notify.post(rx.url, notify.payload(Agent()), backoff=0.01)
        assert problem and "HTTP 404" in problem and "1 tries" in problem and "\n" not in problem  # (never retried)
        rx.answers = [500, 500, 500]
        assert "3 tries" in (notify.post(rx.url, {"x": "y"}, backoff=0.01) or "")
    finally:
        rx.close()
    assert "not delivered" in (notify.post("http://127.0.0.1:9/", {}, timeout=1, attempts=2, backoff=0.01) or "")
    assert "http://" in (notify.post("file:///etc/passwd", {}) or "")


def test_wait_notify_posts_the_webhook(env: Env, repo: Path) -> None:
    import subprocess

    rx = Receiver()
    config = Path(env.env["XDG_CONFIG_HOME"]) / "sandbox"
    config.mkdir(parents=True, exist_ok=True)
    (config / "config.toml").write_text(f'notify_url = "{rx.url}"\n')
    name = spawn(env, repo, "ntf")
    try:
        waiter = subprocess.Popen([env.python, "-m", "sandbox", "wait", "--any", "--until", "waiting", "--notify",
                                   "--timeout", "60"], cwd=repo, env=env.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            env.ok("send", name, "read -p 'Continue? (y/n) ' answer", cwd=repo)
            out, err = waiter.communicate(timeout=90)
        finally:
            waiter.kill()
        assert waiter.returncode == 0 and out.strip() == f"{name} waiting", err
        wait_for(lambda: rx.got, 10, "the webhook")
        body = rx.got[0]
        assert body["name"] == name and body["state"] == "waiting" and body["branch"] == f"sandbox/{name}"
        assert body["repo"] == str(repo)
        # a repository's file cannot point the webhook elsewhere without trust
        (config / "config.toml").write_text("")
        (repo / ".sandbox.toml").write_text('notify_url = "http://127.0.0.1:9/elsewhere"\n')
        res = env.run("wait", name, "--until", "waiting", "--notify", "--timeout", "5", cwd=repo)
        assert res.code == 2 and "notify_url" in res.err and "sandbox trust" in res.err, res.err
        (repo / ".sandbox.toml").write_text('notify_url = "ftp://x"\n')
        env.ok("trust", cwd=repo)
        res = env.run("wait", name, "--until", "waiting", "--notify", "--timeout", "5", cwd=repo)
        assert res.code == 2 and res.err.count("\n") == 1 and "notify_url" in res.err, res.err
    finally:
        (repo / ".sandbox.toml").unlink(missing_ok=True)  # (a bad value there refuses every command, rm too)
        assert env.run("rm", "-f", name, cwd=repo).code == 0
        rx.close()


def test_ntfy_and_desktop_targets(env: Env, repo: Path, tmp_path: Path) -> None:
    """`notify_url = "ntfy:TOPIC"`: an ntfy message (text, title, tags, priority) to `ntfy_url`'s topic;
    `notify = "desktop"`: notify-send with the agent's name and state. Bad topics: one line, exit 2."""
    import os
    import subprocess

    rx = Receiver()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shown = tmp_path / "notify-send.args"
    (bin_dir / "notify-send").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {shown}\n")
    os.chmod(bin_dir / "notify-send", 0o755)
    config = Path(env.env["XDG_CONFIG_HOME"]) / "sandbox"
    config.mkdir(parents=True, exist_ok=True)
    server = rx.url.rsplit("/", 1)[0]
    (config / "config.toml").write_text(f'notify = "desktop"\nnotify_url = "ntfy:team-agents"\nntfy_url = "{server}/"\n')
    name = spawn(env, repo, "nfy")
    extra = {"PATH": f"{bin_dir}:{env.env['PATH']}"}
    try:
        env.ok("send", name, "read -p 'Deploy? (y/n) ' answer", cwd=repo)
        res = env.run("wait", "--any", "--until", "waiting", "--notify", "--timeout", "60", cwd=repo, extra=extra)
        assert res.code == 0 and res.out.strip() == f"{name} waiting", res.err
        wait_for(lambda: rx.raw, 10, "the ntfy message")
        path, headers, body = rx.raw[0]
        assert path == "/team-agents" and headers["Title"] == f"sandbox: {name}" and headers["Tags"] == "waiting"
        assert headers["Priority"] == "high" and body.decode().startswith(f"sandbox: {name} is waiting")
        wait_for(lambda: shown.is_file(), 10, "notify-send")
        assert shown.read_text().splitlines() == ["--app-name=sandbox", f"sandbox: {name}",
                                                  f"{name} is waiting (sandbox/{name})"]
        (config / "config.toml").write_text('notify_url = "ntfy:no/slashes"\n')
        res = env.run("ls", cwd=repo)
        assert res.code == 2 and res.err.count("\n") == 1 and "ntfy:TOPIC" in res.err, res.err
    finally:
        (config / "config.toml").write_text("")
        assert env.run("rm", "-f", name, cwd=repo).code == 0
        rx.close()


def test_the_command_servers_watcher_posts_with_nothing_else_running(env: Env, repo: Path) -> None:
    rx = Receiver()
    config = Path(env.env["XDG_CONFIG_HOME"]) / "sandbox"
    config.mkdir(parents=True, exist_ok=True)
    (config / "config.toml").write_text(f'notify_url = "{rx.url}"\n')
    server = {"SANDBOX_SERVER": "1"}
    env.env.update(server)
    name = spawn(env, repo, "srv")  # (the server starts here, and its watcher with it)
    try:
        assert env.server_pids(), "no command server"
        env.ok("send", name, "read -p 'Continue? (y/n) ' answer", cwd=repo)  # no wait, no top
        wait_for(lambda: [b for b in rx.got if b["name"] == name and b["state"] == "waiting"], 30, "the watcher's POST")
        # the same transition once: wait --notify finds it sent already
        env.ok("wait", name, "--until", "waiting", "--notify", "--timeout", "10", cwd=repo)
        env.ok("stop", name, cwd=repo)
        wait_for(lambda: [b for b in rx.got if b["state"] in ("stopped", "exited")], 30, "the end's POST")
        states = [b["state"] for b in rx.got if b["name"] == name]
        assert states.count("waiting") == 1, states
    finally:
        env.run("rm", "-f", name, cwd=repo)
        env.stop_server()
        rx.close()


def test_the_watcher_sends_transitions_only_and_never_floods() -> None:
    from types import SimpleNamespace

    from sandbox import notify

    rx = Receiver()
    # first look: already waiting (not sent); then the agent flaps waiting/busy 10 times, then ends
    looks = [["waiting"], ["busy"], *[["waiting" if i % 2 == 0 else "busy"] for i in range(20)], ["exited"]]
    settings = SimpleNamespace(notify_url=rx.url, data_dir=None)

    def listing() -> list[SimpleNamespace]:
        return [SimpleNamespace(name="a", state=st, repo="/r", branch="sandbox/a", reason="", agent_state={})
                for st in looks.pop(0)]

    try:
        notify.watch(listing, settings, every=0.0, stop=lambda: not looks)
        wait_for(lambda: len(rx.got) >= notify.PER_AGENT[0], 10, "the watcher's POSTs")
        assert [b["state"] for b in rx.got] == ["waiting"] * notify.PER_AGENT[0]  # (then none for a while)
    finally:
        rx.close()
