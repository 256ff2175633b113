"""The images: the offline base script, the agent image's contents, reuse by inputs digest.

The fast tests need no image; the `slow` ones use the real agent image (built or reused once per
session by conftest's ``agent_image``) and the docker CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from collections import deque
from pathlib import Path

import pytest

import sandbox
from sandbox import image
from sandbox.config import load_settings
from sandbox.engine import Engine
from sandbox.errors import ImageMissing

from .conftest import docker_ok


def run_in(img: str, *argv: str, entrypoint: str | None = None, user: str | None = "1234:1234") -> str:
    """`docker run --rm` one command in the image; its stdout (asserting exit 0)."""
    cmd = ["docker", "run", "--rm", "--network", "none"]
    if user:
        cmd += ["--user", user]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    proc = subprocess.run([*cmd, img, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


# -- fast: no image needed ---------------------------------------------------------------------
def test_inputs_digest_covers_every_input() -> None:
    files = {"Dockerfile.agent": b"FROM x\n", "sandbox/inside.py": b"print(1)\n"}
    base = image.inputs_digest(files, "0.2.189", "sha256:aaa")
    assert base == image.inputs_digest(dict(reversed(list(files.items()))), "0.2.189", "sha256:aaa")
    assert base.startswith("sha256:") and len(base) == 7 + 64
    changed = [
        image.inputs_digest({**files, "sandbox/inside.py": b"print(2)\n"}, "0.2.189", "sha256:aaa"),
        image.inputs_digest({**files, "sandbox/mockmodel.py": b""}, "0.2.189", "sha256:aaa"),
        image.inputs_digest(files, "0.2.190", "sha256:aaa"),
        image.inputs_digest(files, "0.2.189", "sha256:bbb"),
    ]
    assert len({base, *changed}) == 5


def test_version_tag_only_for_latest() -> None:
    assert image._version_ref("sandbox-agent:latest") == f"sandbox-agent:{sandbox.__version__}"
    assert image._version_ref("localhost:5000/team/agent") == f"localhost:5000/team/agent:{sandbox.__version__}"
    assert image._version_ref("sandbox-agent:dev") is None


def test_claude_binary_extracted_from_cached_wheel(tmp_path: Path) -> None:
    settings = load_settings(cache_dir=tmp_path, claude_sdk_version="9.9.9")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    arch = image._wheel_platform().split("_", 3)[-1]
    with zipfile.ZipFile(wheels / f"claude_agent_sdk-9.9.9-py3-none-manylinux_2_17_{arch}.whl", "w") as zf:
        zf.writestr(image.BUNDLED_CLAUDE, b"#!/bin/sh\necho '9.9.9 (Claude Code)'\n")
    lines: list[str] = []
    path = image.claude_binary(settings, lines.append)
    assert path == tmp_path / "claude" / "9.9.9" / "claude"
    assert os.access(path, os.X_OK) and b"Claude Code" in path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["claude"]  # no temp file left behind
    assert any("reusing" in line for line in lines)
    assert image.claude_binary(settings) == path  # cached: no wheel needed any more


def test_claude_binary_pip_failure_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        image, "_run_streaming", lambda argv, emit: (1, deque(["ERROR: No matching distribution found"]))
    )
    with pytest.raises(image.ImageBuildError, match="pip could not download claude-agent-sdk==9.9.8") as exc:
        image.claude_binary(load_settings(cache_dir=tmp_path, claude_sdk_version="9.9.8"))
    assert "No matching distribution" in str(exc.value) and "\n" not in str(exc.value)


def test_base_script_refuses_non_root() -> None:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root (to run the script as another user)")
    proc = subprocess.run(  # the script on stdin: `nobody` may not be able to read the checkout
        ["runuser", "-u", "nobody", "--", "bash", "-s", "sandbox-base:never-built"],
        input=image.BASE_SCRIPT.read_text(), capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert proc.returncode != 0
    assert "needs root" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.skipif(not docker_ok(), reason="needs the Docker engine")
def test_online_base_must_be_on_the_engine(tmp_path: Path) -> None:
    settings = load_settings(cache_dir=tmp_path)
    with pytest.raises(ImageMissing, match="never pulls"):
        image.build_agent(Engine(), settings, offline=False, base="sandbox-test/not-here:never")


# -- slow: the real agent image ----------------------------------------------------------------
@pytest.mark.slow
def test_labels(agent_image: str) -> None:
    labels = Engine().image_labels(agent_image)
    assert labels["org.opencontainers.image.version"] == sandbox.__version__
    assert labels["org.opencontainers.image.title"] == "sandbox-agent"
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    assert labels[image.LABEL_INPUTS].startswith("sha256:")
    assert labels[image.LABEL_CLAUDE] == load_settings().claude_sdk_version


@pytest.mark.slow
def test_claude_code_runs_as_any_uid(agent_image: str) -> None:
    assert "(Claude Code)" in run_in(agent_image, "--version", entrypoint="claude")


@pytest.mark.slow
def test_tools_and_modules(agent_image: str) -> None:
    out = run_in(
        agent_image, "-c",
        "tmux -V && git --version && python3 -c 'import sandbox.inside, sandbox.inside.mockmodel; print(\"modules ok\")'"
        " && git config --system --list",
        entrypoint="sh",
    )  # fmt: skip
    assert "tmux 3." in out and "git version 2." in out and "modules ok" in out
    assert "gc.auto=0" in out and "maintenance.auto=false" in out and "init.defaultbranch=main" in out
    assert "hookspath" not in out.lower()


@pytest.mark.slow
def test_default_user_is_not_root(agent_image: str) -> None:
    assert run_in(agent_image, "-u", entrypoint="id", user=None).strip() == "1000"
    assert "agent:x:1000:1000:" in run_in(agent_image, "/etc/passwd", entrypoint="cat")


@pytest.mark.slow
def test_pid1_is_tini(agent_image: str) -> None:
    out = subprocess.run(["docker", "image", "inspect", agent_image], capture_output=True, text=True, check=True).stdout
    config = json.loads(out)[0]["Config"]
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "/usr/bin/python3", "-P", "-s", "-m", "sandbox.inside", "init"]
    test = config["Healthcheck"]["Test"]
    assert test[:3] == ["CMD", "/bin/sh", "-c"] and "tmux has-session" in test[3] and "python" not in test[3]
    # The entrypoint's tini, as PID 1, with a command in place of `sandbox.inside init`.
    assert run_in(agent_image, "--", "cat", "/proc/1/comm", entrypoint="/usr/bin/tini").strip() == "tini"


@pytest.mark.slow
def test_layout_and_no_secrets(agent_image: str) -> None:
    out = run_in(
        agent_image, "-c",
        "stat -c '%n %a %u' /home/agent /run/sandbox-state /var/lib/sandbox /usr/local/bin/claude;"
        " find /var/lib/sandbox -mindepth 1; env",
        entrypoint="sh",
    )  # fmt: skip
    assert "/home/agent 1777 0" in out and "/run/sandbox-state 1777 0" in out
    assert "/var/lib/sandbox 755 0" in out and "/usr/local/bin/claude 755 0" in out
    assert "/var/lib/sandbox/" not in out  # launch.json and secrets.json arrive at create time only
    assert "HOME=/home/agent" in out and "PYTHONPATH=/opt/sandbox" in out and "DISABLE_AUTOUPDATER=1" in out
    assert "API_KEY" not in out and "TOKEN" not in out


@pytest.mark.slow
def test_second_build_is_a_reuse(agent_image: str) -> None:
    engine = Engine()
    lines: list[str] = []
    before = engine.image_id(agent_image)
    again = image.build_agent(engine, load_settings(image=agent_image), on_line=lines.append)
    assert not any(line.startswith("Step ") for line in lines), lines  # no build step ran
    assert again == before
    assert again == engine.image_id(agent_image)
    assert any(line.startswith(f"reusing {agent_image}") for line in lines), lines
    status = image.image_status(engine, load_settings(image=agent_image))
    assert status["exists"] and status["up_to_date"] and status["id"] == again, status
