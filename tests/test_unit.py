"""Pure logic and local tmux: no engine needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import libtmux
import pytest

from sandbox import agents, labels
from sandbox.config import load_settings
from sandbox.errors import UsageError
from sandbox.tmux import LocalExecutor, Tmux, literal
from tests.conftest import make_repo


def test_claude_preset_passes_model_and_task_as_arguments() -> None:
    spec = agents.build("claude", "sonnet", "fix the bug; then 'test' it", None)
    assert spec.argv == ("claude", "--dangerously-skip-permissions", "--model", "sonnet", "fix the bug; then 'test' it")
    assert spec.delivery == "arg" and spec.claude


def test_presets_and_custom_command() -> None:
    assert agents.build("codex", None, "t", None).argv[:2] == ("codex", "--dangerously-bypass-approvals-and-sandbox")
    assert agents.build("aider", "gpt-4o", "t", None).delivery == "type"
    custom = agents.build("claude", None, None, "python3 -m my.agent --flag 'a b'")
    assert custom.argv == ("python3", "-m", "my.agent", "--flag", "a b") and custom.delivery == "type"
    with pytest.raises(UsageError, match="unknown agent"):
        agents.build("cursor", None, None, None)
    with pytest.raises(UsageError):
        agents.build("claude", None, None, "unbalanced 'quote")


@pytest.mark.parametrize("good", ["sonnet-1", "a", "A_b-9", "x" * 63])
def test_valid_names(good: str) -> None:
    assert agents.check_name(good) == good


@pytest.mark.parametrize("bad", ["", "-a", "_a", "a b", "a.b", "a/b", "x" * 64, "é"])
def test_invalid_names(bad: str) -> None:
    with pytest.raises(UsageError):
        agents.check_name(bad)


def test_name_prefix() -> None:
    assert agents.name_prefix("claude", "sonnet") == "sonnet"
    assert agents.name_prefix("claude", None) == "claude"
    assert agents.name_prefix("codex", "openai/gpt-4.1") == "gpt-4-1"


def test_task_summary_is_one_bounded_line() -> None:
    assert labels.summarize("a\n  b\tc") == "a b c"
    long = labels.summarize("x" * 500)
    assert len(long) == labels.TASK_SUMMARY_MAX and long.endswith("…")


def test_tmux_literal_escapes_a_trailing_separator() -> None:
    assert literal("a;") == "a\\;" and literal(";") == "\\;" and literal("a;b") == "a;b"


TEXTS = [
    "plain",
    "quotes ' \" `x` $HOME $(id) && | ; end;",
    "back\\slash \\; and \\\\;",
    "unicode ü → 日本 🙂",
    "-starts-with-dash",
    ";",
]


@pytest.mark.parametrize("text", TEXTS)
def test_send_is_byte_exact_through_real_tmux(server: libtmux.Server, tmp_path: Path, text: str) -> None:
    out = tmp_path / "out.txt"
    server.new_session(session_name="s", window_command=f"cat > {out}")
    tm = Tmux(LocalExecutor(("-L", server.socket_name or "")), "s")
    assert tm.has_session()
    tm.send(text)
    import time

    deadline = time.monotonic() + 10
    while not (out.exists() and out.read_text(encoding="utf-8").endswith("\n")):
        assert time.monotonic() < deadline, "text never arrived"
        time.sleep(0.02)
    assert out.read_text(encoding="utf-8") == text + "\n"


def test_capture_returns_scrollback(server: libtmux.Server) -> None:
    server.new_session(session_name="s", window_command="seq 1 1500; sleep 30")
    tm = Tmux(LocalExecutor(("-L", server.socket_name or "")), "s")
    import time

    deadline = time.monotonic() + 10
    while "1500" not in tm.capture(10):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    everything = tm.capture()
    assert "\n1\n" in "\n" + everything and "1500" in everything
    assert len(tm.capture(10).splitlines()) <= 60


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "cfg"
    (cfg / "sandbox").mkdir(parents=True)
    (cfg / "sandbox" / "config.toml").write_text('image = "from-user"\nagent = "codex"\nmodel = "user-model"\n')
    repo = make_repo(tmp_path / "repo")  # a real repository: its file is found through git
    (repo / ".sandbox.toml").write_text('image = "from-repo"\nmodel = "repo-model"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(cfg))
    monkeypatch.delenv("SANDBOX_IMAGE", raising=False)
    from sandbox import configfiles

    configfiles.trust(repo)  # `image` applies from a repository file the user trusted (tests/test_trust.py)
    s = load_settings(repo)
    assert (s.image, s.agent, s.model) == ("from-repo", "codex", "repo-model")
    monkeypatch.setenv("SANDBOX_IMAGE", "from-env")
    assert load_settings(repo).image == "from-env"
    assert load_settings(repo, image="from-flag").image == "from-flag"


def test_config_show_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-very-secret-value-1234")
    shown = load_settings().masked()
    assert shown["secrets"]["ANTHROPIC_API_KEY"] == "****1234"
    assert "very-secret" not in repr(shown)


def test_agent_never_runs_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUDO_UID", raising=False)
    uid, gid = load_settings().uid_gid()
    assert uid != 0 and gid != 0


def _commands() -> list[list[str]]:
    from typer.main import get_command

    from sandbox.cli import app

    root = get_command(app)
    out: list[list[str]] = []

    def walk(cmd, path: list[str]) -> None:  # type: ignore[no-untyped-def]
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, path + [name])
        else:
            out.append(path)

    walk(root, [])
    return out


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p))
def test_every_command_has_help_with_an_example(path: list[str]) -> None:
    res = subprocess.run([sys.executable, "-m", "sandbox", *path, "--help"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "Example:" in res.stdout, f"`sandbox {' '.join(path)} --help` has no example"


def test_every_command_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for path in _commands():
        assert f"sandbox {' '.join(path)}" in readme, f"README does not document `sandbox {' '.join(path)}`"


def test_the_cli_package_is_groups_over_one_common_module() -> None:
    """``sandbox/cli/``: each group module imports ``common`` alone of the package (no cycle, no group
    reaching into another), none is over ~500 lines, and each imports alone."""
    import ast
    import importlib

    pkg = Path(__file__).resolve().parent.parent / "sandbox" / "cli"
    for f in sorted(pkg.glob("*.py")):
        text = f.read_text()
        assert len(text.splitlines()) <= 500, f"{f.name}: {len(text.splitlines())} lines"
        if f.name == "__init__.py":
            continue
        ours = {n.module for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ImportFrom) and n.module
                and n.module.startswith("sandbox.cli")}
        assert ours <= ({"sandbox.cli.common"} if f.name != "common.py" else set()), (f.name, ours)
        probe = f"import sandbox.cli.{f.stem}"
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        assert res.returncode == 0, (probe, res.stderr)
    assert importlib.import_module("sandbox.cli").app is importlib.import_module("sandbox.cli.common").app


# -- files the agent writes for the host (sandbox/agentfiles.py) --------------------------------------
def _secret_file(tmp_path: Path) -> tuple[Path, str]:
    import uuid

    marker = f"SBX-SECRET-{uuid.uuid4().hex}"
    secret = tmp_path / "root-only" / "secret.json"
    secret.parent.mkdir(mode=0o700)
    secret.write_text(json.dumps({"state": "idle", "reason": marker}))
    secret.chmod(0o600)
    return secret, marker


def test_agent_file_is_read_when_it_is_a_small_regular_file(tmp_path: Path) -> None:
    from sandbox import agentfiles

    (tmp_path / "f").write_bytes(b"x" * 10)
    assert agentfiles.read(tmp_path, "f", 10) == agentfiles.Read(b"x" * 10, "")
    over = agentfiles.read(tmp_path, "f", 9)
    assert over.data is None and over.reason == "f is larger than 0 KiB" and not over.absent
    missing = agentfiles.read(tmp_path, "nope", 10)
    assert missing.data is None and missing.absent
    assert agentfiles.read(tmp_path / "no-dir", "f", 10).absent
    assert agentfiles.read(tmp_path, "../f", 10).data is None


def test_agent_file_never_follows_a_link(tmp_path: Path) -> None:
    from sandbox import agentfiles

    secret, marker = _secret_file(tmp_path)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.json").symlink_to(secret)
    got = agentfiles.read(state_dir, "state.json", agentfiles.STATE_CAP, "state file")
    assert got == agentfiles.Read(None, "state file is a symbolic link")
    (state_dir / "reply.txt").symlink_to("/dev/zero")
    assert agentfiles.read(state_dir, "reply.txt", agentfiles.REPLY_CAP).reason == "reply.txt is a symbolic link"
    # The directory itself a link (to a directory holding the secret): not followed either.
    (tmp_path / "linked").symlink_to(secret.parent)
    got = agentfiles.read(tmp_path / "linked", "secret.json", agentfiles.STATE_CAP)
    assert got.data is None and "not a plain directory" in got.reason and marker not in got.reason


def test_agent_file_never_blocks_on_a_fifo_or_reads_a_special_file(tmp_path: Path) -> None:
    import os
    import stat
    import time

    from sandbox import agentfiles

    os.mkfifo(tmp_path / "state.json")
    t0 = time.monotonic()
    got = agentfiles.read(tmp_path, "state.json", agentfiles.STATE_CAP, "state file")
    assert got == agentfiles.Read(None, "state file is not a regular file (a FIFO)")
    wfd = os.open(tmp_path / "state.json", os.O_RDWR | os.O_NONBLOCK)  # a writer holding it open: still refused
    try:
        assert agentfiles.read(tmp_path, "state.json", 10).data is None
    finally:
        os.close(wfd)
    (tmp_path / "d").mkdir()
    assert agentfiles.read(tmp_path, "d", 10).reason == "d is not a regular file (a directory)"
    if os.getuid() == 0:  # a device node (the agent cannot make one: no CAP_MKNOD; root here can)
        os.mknod(tmp_path / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
        assert agentfiles.read(tmp_path, "zero", 10).data is None
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize("raw, reason", [
    (b"[1, 2]", "state file is not a JSON object"),
    (b'"idle"', "state file is not a JSON object"),
    (b"null", "state file is not a JSON object"),
    (b"{not json", "state file is not valid JSON"),
    (b"\xff\xfe{}", "state file is not valid JSON"),
    (b"[" * 200_000, "state file is not valid JSON"),  # deep nesting: a RecursionError, not a crash
    (b'{"ts": NaN}', "state file is not valid JSON"),
])
def test_state_that_is_not_an_object_counts_as_missing(raw: bytes, reason: str) -> None:
    from sandbox import agentfiles

    assert agentfiles.parse_state(raw) == (None, reason)


def test_hostile_state_values_cannot_break_ls(tmp_path: Path) -> None:
    from sandbox import agentfiles
    from sandbox.snapshot import Sandbox, read_state as _read_state

    hostile = {"state": "idle\x1b[2J\x07", "reason": "r" * 5000, "attempt": "many", "exit_code": 1e300,
               "stops": True, "ts": 1e308, "activity": -5, "since": "x", "failures": [1], "extra": {"kept": 1}}
    (tmp_path / "state.json").write_text(json.dumps(hostile))
    state = _read_state(str(tmp_path))
    assert state["state"] == "idle?[2J?" and len(state["reason"]) == agentfiles.REASON_MAX + 1
    assert not {"attempt", "exit_code", "stops", "ts", "activity", "since", "failures"} & set(state)
    assert state["extra"] == {"kept": 1}
    sb = Sandbox("a", "id", "sandbox-a", {"sandbox.worktree": "/w"}, "running", "Up", state)
    out = sb.to_json()
    assert out["state"] == "idle?[2J?" and out["attempt"] == 0 and out["activity"] is None
    assert out["workspace"] == out["worktree"] == "/w" == str(sb.workspace)  # (both keys: "worktree" is its first name)


def test_unreadable_state_file_is_a_reason_on_the_snapshot(tmp_path: Path) -> None:
    import os

    from sandbox.snapshot import Sandbox, read_state as _read_state

    assert _read_state(str(tmp_path)) == {}  # not written yet: no reason, still "starting"
    os.mkfifo(tmp_path / "state.json")
    state = _read_state(str(tmp_path))
    assert state == {"reason": "state file is not a regular file (a FIFO)"}
    sb = Sandbox("a", "id", "sandbox-a", {"sandbox.worktree": "/w"}, "running", "Up", state)
    assert sb.state == "starting" and sb.reason == "state file is not a regular file (a FIFO)"
    (tmp_path / "state.json").unlink()
    (tmp_path / "state.json").write_text("[]")
    assert _read_state(str(tmp_path)) == {"reason": "state file is not a JSON object"}


class _FakeEngine:
    def __init__(self, stdout: bytes, code: int = 0) -> None:
        self.stdout, self.code, self.calls = stdout, code, []  # type: ignore[var-annotated]

    def exec_retried(self, ref: str, argv: list[str]):  # type: ignore[no-untyped-def]
        from sandbox.contract import CommandResult

        self.calls.append(argv)
        return CommandResult(self.code, self.stdout, b"")


def test_reply_is_read_safely_and_the_exec_fallback_is_bounded(tmp_path: Path) -> None:
    import types

    from sandbox import agentfiles, waiting
    from sandbox.errors import AgentError
    from sandbox.manager import Sandbox

    secret, marker = _secret_file(tmp_path)
    state_dir = tmp_path / "state"
    sb = Sandbox("a", "cid", "sandbox-a", {"sandbox.state-dir": str(state_dir)}, "running", "Up")
    state_dir = state_dir / "agent"  # (the agent's side of its state dir: reply.txt is there)
    state_dir.mkdir(parents=True)
    mgr = types.SimpleNamespace(engine=_FakeEngine(b"from the container"))
    mgr.read_in = lambda sb, argv: mgr.engine.exec_retried(sb.container_id, argv)
    # No local file (a remote engine): one bounded exec inside the container.
    assert waiting._reply(mgr, sb) == "from the container"  # type: ignore[arg-type]
    argv = mgr.engine.calls[-1]
    assert argv[:3] == ["/usr/bin/timeout", "-s", "KILL"] and "/usr/bin/head" in argv and str(agentfiles.REPLY_CAP + 1) in argv
    mgr.engine = _FakeEngine(b"z" * (agentfiles.REPLY_CAP + 1))
    with pytest.raises(AgentError, match="larger than 1 MiB"):
        waiting._reply(mgr, sb)  # type: ignore[arg-type]
    mgr.engine = _FakeEngine(b"", code=1)
    assert waiting._reply(mgr, sb) == ""  # type: ignore[arg-type]
    # A local file: read on the host, never through a link, and no exec.
    (state_dir / "reply.txt").write_text("Answer.")
    assert waiting._reply(mgr, sb) == "Answer."  # type: ignore[arg-type]
    (state_dir / "reply.txt").unlink()
    (state_dir / "reply.txt").symlink_to(secret)
    calls = len(mgr.engine.calls)
    with pytest.raises(AgentError, match="reply file is a symbolic link") as info:
        waiting._reply(mgr, sb)  # type: ignore[arg-type]
    assert marker not in str(info.value) and len(mgr.engine.calls) == calls


def test_default_limits_and_unlimited() -> None:
    from sandbox.config import load_settings, memory_bytes

    s = load_settings()
    assert s.memory_limit() == 4 * 1024**3 and s.cpus == 2.0 and s.network == "sandbox-net"
    none = load_settings(memory="0", cpus=0)
    assert none.memory_limit() == 0 and none.cpus == 0
    assert memory_bytes("512m") == 512 * 1024**2 and memory_bytes("1GB") == 1024**3 and memory_bytes("100") == 100
    from sandbox.errors import UsageError

    with pytest.raises(UsageError, match="memory must be a size"):
        load_settings(memory="lots")


def test_terminal_defang_shows_control_characters() -> None:
    import io

    from sandbox.terminal import defang, for_stream

    assert defang("a\x1b[2Jb\tc\nd\x07\x9b") == "a\\x1b[2Jb\tc\nd\\x07\\x9b"

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert for_stream("\x1b]0;x\x07", Tty()) == "\\x1b]0;x\\x07"
    assert for_stream("\x1b]0;x\x07", io.StringIO()) == "\x1b]0;x\x07"


def test_gc_takes_only_settled_proxies_of_agents_that_are_gone() -> None:
    import time as _time

    from sandbox import gc

    old, now = _time.time() - 3600, _time.time()
    dropped: list[str] = []

    class Mgr:
        def drop_isolation(self, name: str) -> None:
            dropped.append(name)

    candidates = [{"Labels": {"sandbox.proxy-of": "gone-1"}, "Created": old},
                  {"Labels": {"sandbox.proxy-of": "gone-1"}, "Created": "2020-01-01T00:00:00.123456789Z"},
                  {"Labels": {"sandbox.proxy-of": "alive-1"}, "Created": old},
                  {"Labels": {"sandbox.proxy-of": "spawning-1"}, "Created": now}]
    actions = gc._gc_proxies(Mgr(), {"alive-1"}, candidates)  # type: ignore[arg-type]
    assert [(a.kind, a.target) for a in actions] == [("proxy", "gone-1")]
    actions[0].run()
    assert dropped == ["gone-1"]
