"""Usage errors through the real CLI (a subprocess): one line on stderr, exit 2, no traceback.

None of these reach the Docker engine: the parser or the settings reject them first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.errors import UsageError
from tests.conftest import Env, make_env, make_repo


@pytest.fixture
def cli(tmp_path: Path) -> Env:
    return make_env(tmp_path, "sandbox-agent:never-used")


def one_usage_line(res, *words: str) -> str:  # type: ignore[no-untyped-def]
    assert "Traceback" not in res.err, res.err
    assert res.code == UsageError.exit_code == 2, (res.code, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sandbox: error: "), res.err
    for w in words:
        assert w in lines[0], lines[0]
    assert res.out == ""
    return lines[0]


@pytest.mark.parametrize("argv, words", [
    (["spawn", "--profile", "sealed"], ["profile", "sealed", "isolated"]),  # a bad setting value
    (["ls", "--bogus"], ["No such option: --bogus", "sandbox ls --help"]),
    (["ls", "--json", "--bogus"], ["--bogus"]),
    (["spawn", "--retries", "abc"], ["--retries", "integer"]),
    (["spawn", "--retries", "-1"], ["retries", "-1"]),
    (["logs", "x", "-n", "abc"], ["--lines"]),
    (["rm"], ["Missing argument"]),
    (["nosuchcommand"], ["nosuchcommand"]),
    (["image", "build", "--bogus"], ["--bogus", "sandbox image build --help"]),
])
def test_usage_error_is_one_line_exit_2(cli: Env, argv: list[str], words: list[str]) -> None:
    one_usage_line(cli.run(*argv), *words)


def test_bad_setting_from_env_or_file_is_a_usage_error(cli: Env, tmp_path: Path) -> None:
    one_usage_line(cli.run("config", "show", extra={"SANDBOX_RETRIES": "many"}), "retries", "many")
    repo = make_repo(tmp_path / "repo")
    (repo / ".sandbox.toml").write_text("retries = [\n")  # not TOML
    for argv in (["ls", "--json"], ["ls"], ["config", "show"]):
        one_usage_line(cli.run(*argv, cwd=repo), str(repo / ".sandbox.toml"))


def test_debug_shows_the_traceback(cli: Env) -> None:
    res = cli.run("ls", "--bogus", extra={"SANDBOX_DEBUG": "1"})
    assert res.code != 0 and "Traceback" in res.err and "--bogus" in res.err


def test_no_arguments_shows_the_help(cli: Env) -> None:
    for argv in ([], ["image"]):
        res = cli.run(*argv)
        assert res.code == 2 and "Traceback" not in res.err and "Usage: sandbox" in res.err, res.err
