"""`[toolchain]` (issue 28, README "Toolchain"): a repository's own base image with the agent layer on top.

Real engine, real images: a base made here (the offline base plus a marker tool) used through `[toolchain] base`
and through `.devcontainer/devcontainer.json`; a spawned shell agent finds the marker tool on its PATH. Every
image made here carries a unique name and is removed at the end.
"""

from __future__ import annotations

import io
import json
import platform
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import image
from tests.conftest import Env, leftovers

pytestmark = pytest.mark.slow

OFFLINE_BASE = "sandbox-base:bookworm"
CACHE = Path.home() / ".cache" / "sandbox"  # the host's Claude Code binary, not a per-test download


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def docker(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["docker", *args], input=stdin, capture_output=True, timeout=300)


def nothing_left(env: Env, repo: Path) -> None:
    assert leftovers(env, repo) == {"containers": [], "workspaces": [], "branches": [], "registered": []}


def remove_images(*references: str) -> None:
    """Every image whose name matches one of ``references`` (docker's reference filter), never raising."""
    for ref in references:
        ids = docker("images", "-q", "--filter", f"reference={ref}").stdout.decode().split()
        if ids:
            docker("rmi", "--force", *sorted(set(ids)))


@pytest.fixture
def tc_env(env: Env) -> Env:
    env.env["SANDBOX_CACHE_DIR"] = str(CACHE)
    return env


@pytest.fixture
def marker_base(agent_image: str) -> Iterator[str]:
    """The offline base plus /usr/local/bin/marker-tool, built here under a unique name."""
    if docker("image", "inspect", OFFLINE_BASE).returncode != 0:
        pytest.skip(f"{OFFLINE_BASE} is not on the engine (`sandbox image build` makes it)")
    ref = f"sandbox-test-marker-{uuid.uuid4().hex[:8]}:1"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in (("Dockerfile", f"FROM {OFFLINE_BASE}\nCOPY marker-tool /usr/local/bin/\n".encode(), 0o644),
                                 ("marker-tool", b"#!/bin/sh\necho marker-tool-ok\n", 0o755)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    res = docker("build", "-q", "--force-rm", "-t", ref, "-", stdin=buf.getvalue())  # (a failed RUN leaves no container)
    assert res.returncode == 0, res.stderr.decode()
    try:
        yield ref
    finally:
        remove_images(ref)


def agent_images(repo: Path) -> str:
    return f"{image.TOOLCHAIN_PREFIX}{image.Toolchain(repo, '').name}"


def status(env: Env, repo: Path) -> dict:
    return json.loads(env.ok("image", "status", cwd=repo).out)["repository"]


def test_base_and_devcontainer_give_the_agent_the_repositorys_toolchain(tc_env: Env, repo: Path, marker_base: str) -> None:
    env = tc_env
    (repo / ".sandbox.toml").write_text(f'[toolchain]\nbase = "{marker_base}"\n')
    # untrusted: refused like every key that chooses an image, before anything is made
    res = env.run("spawn", "--agent-cmd", "bash", "--name", uniq("tc"), cwd=repo)
    assert res.code == 2 and "is not trusted and sets toolchain" in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1
    nothing_left(env, repo)
    env.ok("trust", cwd=repo)
    names: list[str] = []
    try:
        before = status(env, repo)
        assert before["exists"] is False and before["base"] == marker_base and "base = " in before["why"]
        name = uniq("tc")
        names.append(name)
        env.ok("spawn", "--agent-cmd", "bash", "--name", name, cwd=repo)  # (built here: its inputs were new)
        assert env.ok("exec", name, "--", "marker-tool").out.strip() == "marker-tool-ok"
        assert env.ok("exec", name, "--", "sh", "-c", "command -v tmux git python3 claude").code == 0
        now = status(env, repo)
        assert now["exists"] is True and now["reason"] == "up to date"
        assert now["image"].startswith(agent_images(repo) + ":")
        labels = docker("ps", "--filter", f"label=sandbox.name={name}", "--format", '{{.Label "sandbox.image"}}')
        assert labels.stdout.decode().strip() == now["image"]
        env.ok("rm", "--force", name, cwd=repo)

        # the devcontainer's image, through an empty (trusted) [toolchain] table: the same base, the same image
        (repo / ".devcontainer").mkdir()
        (repo / ".devcontainer" / "devcontainer.json").write_text(
            '{\n  // the team\'s image\n  "name": "demo",\n  "image": "%s", /* no build */\n}\n' % marker_base)
        (repo / ".sandbox.toml").write_text("[toolchain]\n")
        env.ok("trust", cwd=repo)
        dev = status(env, repo)
        assert "devcontainer.json image = " in dev["why"] and dev["image"] == now["image"], dev
        name = uniq("tc")
        names.append(name)
        env.ok("spawn", "--agent-cmd", "bash", "--name", name, cwd=repo)
        assert docker("images", "-q", "--filter", f"reference={agent_images(repo)}").stdout.split() == \
            [now["id"].removeprefix("sha256:")[:12].encode()]  # cached by its inputs: no second build
        assert env.ok("exec", name, "--", "marker-tool").out.strip() == "marker-tool-ok"
        env.ok("rm", "--force", name, cwd=repo)
    finally:
        for name in names:
            env.run("rm", "--force", name, cwd=repo)
        remove_images(agent_images(repo))


def test_a_devcontainer_dockerfile_is_built_first_and_a_change_makes_it_stale(tc_env: Env, repo: Path, agent_image: str) -> None:
    env = tc_env
    if docker("image", "inspect", OFFLINE_BASE).returncode != 0:
        pytest.skip(f"{OFFLINE_BASE} is not on the engine")
    dev = repo / ".devcontainer"
    dev.mkdir()
    dockerfile = (f"FROM {OFFLINE_BASE}\nARG WORD\n"
                  "RUN printf '#!/bin/sh\\necho %s\\n' \"$WORD\" > /usr/local/bin/marker-tool && chmod 755 /usr/local/bin/marker-tool\n")
    (dev / "Dockerfile").write_text(dockerfile)
    (dev / "devcontainer.json").write_text('{"build": {"dockerfile": "Dockerfile", "args": {"WORD": "built-from-devcontainer"}}}')
    (repo / ".sandbox.toml").write_text("[toolchain]\n")
    env.ok("trust", cwd=repo)
    tc = image.Toolchain(repo, "")
    name = uniq("tc")
    try:
        assert "build.dockerfile = 'Dockerfile'" in status(env, repo)["why"]
        out = env.ok("image", "build", cwd=repo).out.split("\n")
        built = status(env, repo)
        assert built["exists"] is True and built["base"] == tc.built_base
        assert any(line.startswith(built["image"] + " ") for line in out), out
        env.ok("spawn", "--agent-cmd", "bash", "--name", name, cwd=repo)
        assert env.ok("exec", name, "--", "marker-tool").out.strip() == "built-from-devcontainer"
        env.ok("rm", "--force", name, cwd=repo)
        (dev / "Dockerfile").write_text(dockerfile + "RUN true\n")
        stale = status(env, repo)
        assert stale["exists"] is False and "not built from today's inputs" in stale["reason"], stale
        err = env.ok("image", "build", cwd=repo).err
        again = status(env, repo)
        assert again["exists"] is True and again["image"] != built["image"]
        assert f"removed {built['image']}" in err  # the earlier build, no container uses it any more
        tags = docker("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={agent_images(repo)}")
        assert tags.stdout.decode().split() == [again["image"]]
    finally:
        env.run("rm", "--force", name, cwd=repo)
        remove_images(agent_images(repo), tc.built_base)


def test_missing_base_is_one_line_exit_2_and_nothing_is_left(tc_env: Env, repo: Path) -> None:
    env = tc_env
    missing = f"sandbox-test-nope-{uuid.uuid4().hex[:8]}:1"
    (repo / ".sandbox.toml").write_text(f'[toolchain]\nbase = "{missing}"\n')
    env.ok("trust", cwd=repo)
    for argv in (("spawn", "--agent-cmd", "bash", "--name", uniq("tc")), ("image", "build")):
        res = env.run(*argv, cwd=repo)
        assert res.code == 2, (argv, res.err)
        lines = res.err.strip().splitlines()
        assert lines[-1].startswith("sandbox: error:") and f"base image {missing} is not on the engine" in lines[-1]
        assert "never pulls" in lines[-1]
    assert status(env, repo)["exists"] is False
    nothing_left(env, repo)
    assert docker("images", "-q", "--filter", f"reference={agent_images(repo)}").stdout.strip() == b""


def test_bad_toolchain_settings_are_one_line_exit_2(tc_env: Env, repo: Path) -> None:
    env = tc_env
    for text, says in (('[toolchain]\nbse = "x:1"\n', "toolchain.bse"),
                       ('[toolchain]\nbase = "a:1"\ndockerfile = "Dockerfile"\n', "base or dockerfile, not both"),
                       ('[toolchain]\ndockerfile = "../Dockerfile"\n', "relative to the checkout"),
                       ("[toolchain]\n", "names no image or build.dockerfile")):
        (repo / ".sandbox.toml").write_text(text)
        (repo / ".devcontainer").mkdir(exist_ok=True)
        (repo / ".devcontainer" / "devcontainer.json").write_text('{"name": "no image here"}')
        env.ok("trust", cwd=repo)
        res = env.run("spawn", "--agent-cmd", "bash", "--name", uniq("tc"), cwd=repo)
        assert res.code == 2 and says in res.err, (text, res.err)
        assert len(res.err.strip().splitlines()) == 1, res.err
    nothing_left(env, repo)


def test_a_base_the_agent_layer_cannot_run_on_gets_one_clear_error(tc_env: Env, repo: Path) -> None:
    """A base with no shell (a tiny tar imported here): named before anything is built; so is Alpine's musl."""
    env = tc_env
    ref = f"sandbox-test-noshell-{uuid.uuid4().hex[:8]}:1"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("etc/os-release")
        data = b"ID=nothing\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert docker("import", "-", ref, stdin=buf.getvalue()).returncode == 0
    try:
        (repo / ".sandbox.toml").write_text(f'[toolchain]\nbase = "{ref}"\n')
        env.ok("trust", cwd=repo)
        res = env.run("image", "build", cwd=repo)
        assert res.code == 2, res.err
        last = res.err.strip().splitlines()[-1]
        assert f"base image {ref} cannot run /bin/sh" in last and "Debian- or Ubuntu-like base" in last, last
        nothing_left(env, repo)
    finally:
        remove_images(ref, agent_images(repo))


def test_jsonc_of_devcontainer_json() -> None:
    text = '{\n "image": "a://b", // x\n "s": "/* kept */", /* gone */\n "l": [1, 2,],\n}'
    assert json.loads(image._strip_jsonc(text)) == {"image": "a://b", "s": "/* kept */", "l": [1, 2]}


PATCH_LOADER = ("import os; p = os.path.realpath('/bin/sh'); d = open(p, 'rb').read(); "
                "a, b = b'/lib64/ld-linux-x86-64.so.2', b'/lib64/ld-other-x86-64.so.2'; "
                "open(p + '.new', 'wb').write(d.replace(a, b)); os.chmod(p + '.new', 0o755); os.replace(p + '.new', p); "
                "os.symlink(os.path.realpath(a.decode()), b.decode()); os.unlink(a.decode())")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the base made here patches the x86-64 loader's path")
def test_a_base_without_glibcs_loader_is_named_as_such(tc_env: Env, repo: Path, agent_image: str) -> None:
    """What Alpine (musl) looks like to Claude Code: a shell that runs, no glibc loader where it is looked for.
    Made here from the offline base: its /bin/sh re-pointed at another loader path, the glibc one removed."""
    env = tc_env
    if docker("image", "inspect", OFFLINE_BASE).returncode != 0:
        pytest.skip(f"{OFFLINE_BASE} is not on the engine")
    ref = f"sandbox-test-noglibc-{uuid.uuid4().hex[:8]}:1"
    dockerfile = f"FROM {OFFLINE_BASE}\nRUN {json.dumps(['/usr/bin/python3', '-c', PATCH_LOADER])}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    res = docker("build", "-q", "--force-rm", "-t", ref, "-", stdin=buf.getvalue())  # (a failed RUN leaves no container)
    assert res.returncode == 0, res.stderr.decode()
    try:
        (repo / ".sandbox.toml").write_text(f'[toolchain]\nbase = "{ref}"\n')
        env.ok("trust", cwd=repo)
        res = env.run("spawn", "--agent-cmd", "bash", "--name", uniq("tc"), cwd=repo)
        assert res.code == 2, res.err
        lines = res.err.strip().splitlines()
        assert len(lines) == 1 and f"base image {ref} has no glibc (/lib64/ld-linux-x86-64.so.2 is missing" in lines[0], lines
        nothing_left(env, repo)
    finally:
        remove_images(ref, agent_images(repo))
