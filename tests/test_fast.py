"""The hot commands (``ls``, ``ls --json``, ``logs``, ``send``, ``--version``, ``--help``) go through the one
typer app, import neither pydantic nor pydantic-settings nor docker-py, and answer as with the full
``Settings`` (``SANDBOX_NO_FAST=1``): the light settings reader and typer's own coercion agree with
pydantic wherever they take a value, and leave every other value to it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import typer
from typer._coercion import build_runtime_param
from typer.main import get_command

from sandbox import cli, lightsettings
from sandbox.config import Settings, settings_from
from sandbox.errors import UsageError
from sandbox.lightsettings import LightSettings, ManagerSettings, Refusal
from tests.conftest import Env, make_env, wait_for

HEAVY = {"pydantic", "pydantic_core", "pydantic_settings", "docker", "requests", "sandbox.config", "textual", "libtmux"}


def imported(res: Any) -> set[str]:
    """The modules a run with ``PYTHONPROFILEIMPORTTIME=1`` imported (from its stderr)."""
    return {line.rsplit("|", 1)[-1].strip() for line in res.err.splitlines() if line.startswith("import time:")}


def traced(env: Env, *args: str, **kw: Any) -> Any:
    extra = {**kw.pop("extra", {}), "PYTHONPROFILEIMPORTTIME": "1"}
    return env.run(*args, extra=extra, **kw)


def errors(res: Any) -> str:
    return "\n".join(line for line in res.err.splitlines() if not line.startswith("import time:"))


# -- the light settings reader against pydantic's Settings -------------------------------------------
CASES: list[tuple[dict[str, str], dict[str, Any], dict[str, Any]]] = [  # (environment, file values, flags)
    ({}, {}, {}),
    ({"SANDBOX_RUN_ID": "r-1"}, {"run_id": "from-file"}, {}),
    ({}, {"run_id": "from-file", "data_dir": "/srv/sb", "image": "img:1"}, {}),
    ({"SANDBOX_RUN_ID": ""}, {}, {}),
    ({"sandbox_run_id": "lower"}, {}, {}),
    ({"SANDBOX_RUN_ID": "a", "sandbox_run_id": "b"}, {}, {}),          # which wins is pydantic's to say
    ({"SANDBOX_DATA_DIR": "/d"}, {"data_dir": "/f"}, {}),
    ({"SANDBOX_DATA_DIR": ""}, {}, {}),
    ({}, {"run_id": 5}, {}),                                            # not a string: pydantic rejects it
    ({}, {"data_dir": 3}, {}),
    ({"SANDBOX_READY_TIMEOUT": "120"}, {}, {}),
    ({"SANDBOX_READY_TIMEOUT": "1.5"}, {"ready_timeout": 9}, {}),
    ({"SANDBOX_READY_TIMEOUT": " 1.5"}, {}, {}),
    ({"SANDBOX_READY_TIMEOUT": "1e3"}, {}, {}),
    ({"SANDBOX_READY_TIMEOUT": "soon"}, {}, {}),
    ({}, {"ready_timeout": 2.5}, {}),
    ({}, {"ready_timeout": True}, {}),
    ({}, {"ready_timeout": math.nan}, {}),
    ({}, {"ready_timeout": "30"}, {}),
    ({"SANDBOX_SYNC_TIMEOUT": "0"}, {}, {}),                            # gt=0: a usage error
    ({}, {"sync_timeout": -1}, {}),
    ({}, {"sync_timeout": 7}, {}),
    ({"SANDBOX_AGENT_UID": "1234", "SANDBOX_AGENT_GID": "007"}, {}, {}),
    ({"SANDBOX_AGENT_UID": "-1"}, {}, {}),
    ({}, {"agent_uid": 1000, "agent_gid": 1000.0}, {}),
    ({}, {"agent_uid": False}, {}),
    ({"SANDBOX_RETRIES": "many"}, {"memory": "lots"}, {}),             # not read by these commands
    ({"SANDBOX_IMAGE": "env:1"}, {}, {"image": "flag:1"}),
    ({}, {}, {"run_id": None, "image": None}),
    ({}, {}, {"retries": 2}),                                           # a flag it does not read
    ({"SANDBOX_NO_FAST": "1"}, {}, {}),
]


@pytest.mark.parametrize("environ, files, flags", CASES)
def test_light_settings_agree_with_pydantic_or_refuse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      environ: dict[str, str], files: dict[str, Any],
                                                      flags: dict[str, Any]) -> None:
    for key in [k for k in os.environ if k.upper().startswith("SANDBOX_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    got = lightsettings.light(files, flags, os.environ)
    # The full Settings of these sources, less the settings the light reader does not read (the
    # commands that read those judge them: a bad `memory` fails `spawn`, not `ls`).
    for key in [k for k in os.environ if k.upper().startswith("SANDBOX_")
                and k.upper()[len("SANDBOX_"):].lower() not in lightsettings.FIELDS]:
        monkeypatch.delenv(key)
    try:
        full: Settings | None = settings_from({k: v for k, v in files.items() if k in lightsettings.FIELDS},
                                              dict(flags))
    except UsageError:
        full = None
    if isinstance(got, Refusal):
        assert got.key and got.why
        return
    assert full is not None, f"light took a value pydantic rejects: {got}"
    for name in lightsettings.FIELDS:
        assert getattr(got, name) == getattr(full, name), name
    assert got.uid_gid() == full.uid_gid()


def test_refusals_are_the_cases_pydantic_must_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDBOX_NO_FAST", raising=False)
    assert lightsettings.light({"run_id": 5}, {}, {}) == Refusal("file", "run_id", "5 is not a plain str")
    assert isinstance(lightsettings.light({}, {}, {"SANDBOX_SYNC_TIMEOUT": "0"}), Refusal)
    assert isinstance(lightsettings.light({}, {}, {"SANDBOX_NO_FAST": "1"}), Refusal)
    assert lightsettings.light({"run_id": "x", "memory": "bogus"}, {}, {}) == LightSettings(run_id="x")


def test_both_settings_satisfy_the_protocol() -> None:
    def reads(s: ManagerSettings) -> tuple[Any, ...]:
        return s.run_id, s.data_dir, s.image, s.ready_timeout, s.sync_timeout, s.uid_gid()

    light, full = LightSettings(), Settings()
    assert reads(light) == reads(full)  # the defaults too
    assert set(lightsettings.FIELDS) <= set(Settings.model_fields)


def test_read_falls_to_the_full_settings_by_the_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no repository: only the user file (none here)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("SANDBOX_RUN_ID", "r-7")
    assert lightsettings.read(None) == (None, LightSettings(run_id="r-7"))
    monkeypatch.setenv("SANDBOX_READY_TIMEOUT", "1e3")
    top, settings = lightsettings.read(None)
    assert isinstance(settings, Settings) and settings.ready_timeout == 1000.0 and settings.run_id == "r-7"
    monkeypatch.setenv("SANDBOX_SYNC_TIMEOUT", "-1")
    with pytest.raises(UsageError, match="sync_timeout"):
        lightsettings.read(None)


# -- plain parameter values against typer's own (pydantic) coercion ------------------------------------
def _params() -> dict[tuple[str, str], Any]:
    root = get_command(cli.app)
    out = {}
    for cmd_name, cmd in root.commands.items():  # type: ignore[attr-defined]
        for p in cmd.params:
            out[(cmd_name, p.name)] = p
    return out


@pytest.mark.parametrize("command, param, value", [
    ("ls", "repo", "/tmp"), ("ls", "repo", "relative/dir"), ("ls", "repo", "-"),
    ("logs", "name", "a-1"), ("logs", "lines", "20"), ("logs", "lines", "007"), ("logs", "lines", "0"),
    ("logs", "lines", "abc"), ("logs", "lines", "-3"), ("logs", "lines", " 5"),
    ("send", "text", "echo 'a;b' $x"), ("send", "text", ""), ("send", "timeout", "1.5"),
    ("send", "timeout", "10"), ("send", "timeout", "1e3"), ("send", "timeout", "x"),
    ("exec", "argv", ("git", "log", "--oneline")), ("spawn", "retries", "3"), ("spawn", "retries", "abc"),
    ("spawn", "max_time", "2.5"), ("spawn", "mock_script", "/nonexistent/script.json"),
])
def test_plain_values_are_typers_own(command: str, param: str, value: Any) -> None:
    p = _params()[(command, param)]
    ctx = typer.Context(get_command(cli.app))

    def outcome(coerce: Any) -> Any:
        try:
            return ("ok", coerce(value, param=p, ctx=ctx))
        except typer.BadParameter as e:  # (typer's own class, re-exported)
            return ("error", e.format_message())

    plain = outcome(p._runtime_param._coerce_value)
    assert isinstance(p._runtime_param, cli._PlainValue)
    assert plain == outcome(build_runtime_param(p.type_descriptor)._coerce_value)


# -- through the real CLI -------------------------------------------------------------------------
def test_version_and_help_import_nothing_heavy(tmp_path: Path) -> None:
    env = make_env(tmp_path, "sandbox-agent:never-used")
    version = traced(env, "--version")
    assert version.code == 0 and version.out == "sandbox 0.1.0\n"
    assert not imported(version) & HEAVY and "typer" in imported(version)  # the one app
    helped = traced(env, "--help")
    assert helped.code == 0 and "Usage: sandbox" in helped.out and not imported(helped) & HEAVY
    for argv in (["ls", "--help"], ["logs", "--help"], ["send", "--help"]):
        res = traced(env, *argv)
        assert res.code == 0 and "Usage: sandbox" in res.out and not imported(res) & HEAVY, argv


def test_a_value_only_pydantic_can_judge_still_goes_to_it(tmp_path: Path) -> None:
    env = make_env(tmp_path, "sandbox-agent:never-used")
    res = traced(env, "logs", "x", "-n", "abc")  # typer's own message (through pydantic)
    assert res.code == 2 and "--lines" in errors(res) and "pydantic" in imported(res)
    res = traced(env, "ls", "--json", extra={"SANDBOX_SYNC_TIMEOUT": "0"})  # the full Settings judge it
    assert res.code == 2 and "sync_timeout" in errors(res) and "pydantic_settings" in imported(res)
    assert "docker" not in imported(res)


@pytest.mark.slow
def test_hot_commands_skip_pydantic_and_docker_and_answer_as_the_full_settings(env: Env, repo: Path) -> None:
    env.ok("spawn", "--agent-cmd", "bash", "--name", "fast-1", cwd=repo)
    full = {"SANDBOX_NO_FAST": "1"}  # the same commands with the full pydantic Settings

    listed = traced(env, "ls", "--json", cwd=repo)
    assert listed.code == 0 and not imported(listed) & HEAVY, imported(listed) & HEAVY
    assert "sandbox.manager" in imported(listed) and "sandbox.lightsettings" in imported(listed)
    fast = [{k: v for k, v in a.items() if k not in VOLATILE} for a in json.loads(listed.out)]
    slow = [{k: v for k, v in a.items() if k not in VOLATILE} for a in env.ok("ls", "--json", cwd=repo,
                                                                             extra=full).json()]
    assert [a["name"] for a in fast] == ["fast-1"] and fast == slow
    assert env.ok("ls", "--all", "--json", cwd=repo).json()[0]["name"] == "fast-1"

    table = traced(env, "ls", cwd=repo)
    assert table.code == 0 and not imported(table) & HEAVY
    assert table.out.splitlines()[0].split()[:3] == ["NAME", "AGENT/MODEL", "STATE"]
    assert table.out.splitlines()[1].split()[0] == "fast-1"
    assert [line.split()[0] for line in env.ok("ls", cwd=repo, extra=full).out.splitlines()] == ["NAME", "fast-1"]

    # send + logs: the text arrives byte-exact and the pane shows it
    sent = traced(env, "send", "fast-1", "echo fast-$((40+2)) 'a;b'", cwd=repo)
    assert sent.code == 0 and not imported(sent) & HEAVY, errors(sent)
    wait_for(lambda: "fast-42 a;b" in env.ok("logs", "fast-1", cwd=repo).out, 30, "the echo in the pane")
    logs = traced(env, "logs", "fast-1", "-n", "5", cwd=repo)
    assert logs.code == 0 and not imported(logs) & HEAVY
    assert logs.out == env.ok("logs", "fast-1", "-n", "5", cwd=repo, extra=full).out
    missing = traced(env, "logs", "nope-1", cwd=repo)
    assert missing.code == 4 and errors(missing).startswith("sandbox: error: no agent named 'nope-1'")
    assert not imported(missing) & HEAVY
    env.ok("rm", "--force", "fast-1", cwd=repo)


VOLATILE = {"status", "state", "activity", "agent_state", "reason", "exit_code", "attempt"}
