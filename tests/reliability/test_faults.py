"""Container faults: an OOM kill (memory limit), a fork bomb (pids limit), a full disk in the
workspace's filesystem (a small loop-mounted ext4), the agent's init killed. Each time: the state
`ls` shows is right, the host stays healthy, the work in the workspace is intact."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Env, git, make_env, make_repo, wait_for
from tests.reliability.conftest import MARKS, record

pytestmark = MARKS


def row(env: Env, name: str) -> dict:
    (r,) = [r for r in env.ok("ls", "--json").json() if r["name"] == name]
    return r


def with_work(env: Env, repo: Path, name: str, *extra: str) -> Path:
    env.ok("spawn", "--name", name, "--agent-cmd", "bash", *extra, cwd=repo)
    res = env.run("exec", name, "--", "sh", "-c",
                  f"echo {name} > c.txt && git add c.txt && git commit -qm {name} && echo wip-{name} > wip.txt")
    assert res.code == 0, res.err
    return Path(row(env, name)["workspace"])


def intact(ws: Path, name: str) -> None:
    assert (ws / "c.txt").read_text() == f"{name}\n" and (ws / "wip.txt").read_text() == f"wip-{name}\n"


def host_healthy(env: Env) -> float:
    t0 = time.monotonic()
    assert subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    env.ok("ls", timeout=30)
    return time.monotonic() - t0


@pytest.fixture
def world(tmp_path: Path, agent_image: str) -> tuple[Env, Path]:
    return make_env(tmp_path, agent_image), make_repo(tmp_path / "repo")


def test_oom_kill_and_fork_bomb(world) -> None:  # type: ignore[no-untyped-def]
    env, repo = world
    env.env.update(SANDBOX_MEMORY="128m", SANDBOX_PIDS_LIMIT="64")
    try:
        ws = with_work(env, repo, "oom")
        env.ok("send", "oom", "python3 -c 'b = bytearray(700 * 2**20); print(len(b))'; echo after-oom")
        wait_for(lambda: "after-oom" in env.ok("logs", "oom").out.split("echo after-oom")[-1], 60, "the hog to be killed")
        r = row(env, "oom")
        assert r["oom_kills"] and r["oom_kills"] >= 1 and r["state"] in ("idle", "busy") and r["attempt"] == 1, r
        assert "OOM-killed" in env.ok("ls").out
        intact(ws, "oom")

        ws2 = with_work(env, repo, "bomb")
        env.ok("send", "bomb", "f(){ f|f& }; f")
        wait_for(lambda: (row(env, "bomb")["pids_limit_hits"] or 0) > 0, 60, "the pids limit to be hit")
        healthy = host_healthy(env)
        assert row(env, "bomb")["engine_state"] == "running"
        intact(ws2, "bomb")
        env.ok("stop", "bomb", timeout=120)  # the bomb goes with the container; the work stays
        got = row(env, "bomb")
        assert got["state"] in ("stopped", "exited"), (got["state"], got["reason"])
        for name, w in (("oom", ws), ("bomb", ws2)):
            env.ok("rm", "--force", name, timeout=120)
            refs = git(repo, "for-each-ref", "--format=%(refname)", f"refs/sandbox/backup/{name}/").split()
            assert any(git(repo, "show", f"{ref}:wip.txt").strip() == f"wip-{name}" for ref in refs)
    finally:  # (a failure here must not leave two agents for the tests after it to find)
        for name in ("oom", "bomb"):
            env.run("rm", "--force", name, timeout=120)
    record("faults oom+fork bomb", {"oom_kills": r["oom_kills"], "host_ls_during_bomb_s": round(healthy, 2)})


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    if shutil.which("mkfs.ext4") is None or subprocess.run(["losetup", "-f"], capture_output=True).returncode != 0:
        pytest.skip("needs mkfs.ext4 and a free loop device (root)")
    img, mnt = tmp_path / "disk.img", tmp_path / "small"
    subprocess.run(["truncate", "-s", "48M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["docker", "rm", "-f", "sandbox-full"], capture_output=True)  # (nothing may hold it)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        img.unlink(missing_ok=True)


def test_full_disk_in_the_workspace_filesystem(world, small_disk: Path) -> None:  # type: ignore[no-untyped-def]
    env, repo = world
    env.env["XDG_DATA_HOME"] = str(small_disk)  # workspaces, agent git dirs and state dirs on 48 MB
    ws = with_work(env, repo, "full")
    env.ok("send", "full", "dd if=/dev/zero of=fill bs=1M; echo filled-$?")
    wait_for(lambda: "filled-1" in env.ok("logs", "full").out.split("echo filled")[-1], 60, "the disk to fill")
    assert shutil.disk_usage(small_disk).free < 1024 * 1024
    host_healthy(env)
    time.sleep(3)  # the agent's state keeps being written (or kept as it was): the init must not die of it
    r = row(env, "full")
    assert r["engine_state"] == "running" and r["state"] in ("idle", "busy") and r["attempt"] == 1, r
    intact(ws, "full")
    env.ok("send", "full", "rm -f fill; echo freed")
    wait_for(lambda: "freed" in env.ok("logs", "full").out.split("echo freed")[-1], 30, "space again")
    wait_for(lambda: row(env, "full")["state"] == "idle", 30, "the state written again")
    env.ok("rm", "--force", "full", timeout=120)
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/sandbox/backup/full/").split()
    assert any(git(repo, "show", f"{ref}:wip.txt").strip() == "wip-full" for ref in refs)


def test_init_killed(world) -> None:  # type: ignore[no-untyped-def]
    env, repo = world
    ws = with_work(env, repo, "init", "--retries", "1")
    kill = ["docker", "exec", "sandbox-init", "pkill", "-KILL", "-f", "sandbox.inside init"]
    # (pkill's own exit is 137 when the container's teardown, once its init is gone, beats it)
    assert subprocess.run(kill).returncode in (0, 137)
    wait_for(lambda: (r := row(env, "init"))["attempt"] == 2 and r["state"] in ("idle", "busy"), 60, "back after the kill")
    intact(ws, "init")
    env.ok("send", "init", "echo alive-$((6*7))")
    wait_for(lambda: "alive-42" in env.ok("logs", "init").out, 20, "typing after the restart")
    assert subprocess.run(kill).returncode in (0, 137)  # again, within the stable time: past --retries 1 -> failed
    wait_for(lambda: row(env, "init")["state"] == "failed", 60, "failed after too many deaths")
    time.sleep(2)
    r = row(env, "init")
    assert r["state"] == "failed" and r["engine_state"] == "running", r  # up (logs work), not restarting
    host_healthy(env)
    intact(ws, "init")
    # the user's restart (not the engine's): the failure count starts afresh, the agent is back
    assert env.ok("restart", "init", timeout=120).out.strip() in ("idle", "busy")
    r = row(env, "init")
    assert r["state"] in ("idle", "busy") and r["attempt"] == 3, r
    env.ok("rm", "--force", "init")
