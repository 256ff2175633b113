"""`sandbox doctor`: the profile proved from inside the live container (real engine), and the judge (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox import contract
from sandbox.doctor import judge
from tests.conftest import Env

GOOD = {"uid": 1000, "gid": 1000, "cap_eff": 0, "no_new_privs": True, "seccomp": 2, "read_only_root": False,
        "writable_mounts": ["/w", contract.AGENT_GIT, contract.STATE_MOUNT], "interfaces": ["lo", "eth0"],
        "docker_socket": False, "workspace_writable": True, "etc_writable": False}


@pytest.mark.parametrize(("change", "failing"), [
    ({}, []),
    ({"uid": 0}, ["runs as a non-root uid"]),
    ({"cap_eff": 0x20}, ["no capabilities"]),
    ({"no_new_privs": False}, ["no_new_privs set"]),
    ({"seccomp": 0}, ["seccomp filter on"]),
    ({"docker_socket": True}, ["no Docker socket"]),
    ({"writable_mounts": ["/w", "/root"]}, ["writable mounts: only the workspace, its git dir and the state dir"]),
])
def test_judge_fails_exactly_the_broken_property(change: dict, failing: list[str]) -> None:
    checks = judge({**GOOD, **change}, "default", "/w")
    assert [c.name for c in checks if not c.ok] == failing


def test_judge_locked_wants_no_network_and_a_read_only_root() -> None:
    failing = [c.name for c in judge(GOOD, "locked", "/w") if not c.ok]
    assert failing == ["read-only root filesystem", "no network (only lo)"]
    ok = {**GOOD, "read_only_root": True, "interfaces": ["lo"]}
    assert all(c.ok for c in judge(ok, "locked", "/w"))


@pytest.mark.slow
def test_doctor_passes_on_each_profile_and_fails_the_right_lines(env: Env, repo: Path) -> None:
    default = env.ok("spawn", "--name", "doc-d", "--agent-cmd", "bash", cwd=repo).out.strip()
    locked = env.ok("spawn", "--name", "doc-l", "--profile", "locked", "--agent-cmd", "bash", cwd=repo).out.strip()
    try:
        out = env.ok("doctor", default).out
        assert out.count("ok  ") == 8 and "FAIL" not in out, out
        assert env.ok("doctor", locked).out.count("ok  ") == 9
        res = env.run("doctor", default, "--as", "locked", "--json")
        assert res.code == 1
        failing = [c["check"] for c in json.loads(res.out) if not c["ok"]]
        assert failing == ["read-only root filesystem", "no network (only lo)"]
        env.ok("stop", default)
        res = env.run("doctor", default)
        assert res.code != 0 and "not running" in res.err
    finally:
        env.run("rm", "--force", default, locked)
