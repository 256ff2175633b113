"""Pure logic and local tmux: no engine needed."""

from __future__ import annotations

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
