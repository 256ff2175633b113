"""`sandbox doctor`: the profile proved from outside the live container (real engine, the host's /proc),
and the judge (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox import contract
from sandbox.doctor import judge
from tests.conftest import Env

PROC = {"pid": 10, "uid": [1000, 1000, 1000, 1000], "cap_eff": 0, "cap_prm": 0, "cap_bnd": 0, "cap_amb": 0,
        "no_new_privs": 1, "seccomp": 2}
MOUNTS = [{"source": "/h/w", "destination": "/w", "rw": True, "type": "bind", "docker_socket": False},
          {"source": "/h/g", "destination": contract.AGENT_GIT, "rw": True, "type": "bind", "docker_socket": False},
          {"source": "/h/s", "destination": contract.STATE_MOUNT, "rw": True, "type": "bind", "docker_socket": False},
          {"source": "/h/o", "destination": "/h/o", "rw": False, "type": "bind", "docker_socket": False}]
GOOD = {"user": "1000:1000", "privileged": False, "read_only_root": False, "cap_add": [], "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"], "network_mode": "a" * 64, "networks": {"sandbox-net": {}},
        "mounts": MOUNTS, "tmpfs": {}, "memory": 4 << 30, "nano_cpus": 2_000_000_000, "cpu_quota": 0,
        "pids_limit": 1024, "processes": [PROC, {**PROC, "pid": 11}], "unreadable": [],
        "kernel": {"interfaces": ["lo", "eth0"], "mounts": [["/", "overlay", "rw,relatime"]]}}
LOCKED = {**GOOD, "read_only_root": True, "network_mode": "none", "networks": {}, "tmpfs": {"/tmp": "", "/home/agent": ""},
          "kernel": {"interfaces": ["lo"], "mounts": [["/", "overlay", "ro,relatime"]]}}


def _proc(**change: object) -> dict:
    return {**GOOD, "processes": [PROC, {**PROC, "pid": 11, **change}]}


@pytest.mark.parametrize(("change", "failing"), [
    ({}, []),
    ({"user": "0:0"}, ["runs as a non-root uid"]),
    ({"user": ""}, ["runs as a non-root uid"]),
    (_proc(uid=[1000, 0, 1000, 1000]), ["runs as a non-root uid"]),
    ({"cap_add": ["NET_ADMIN"]}, ["no capabilities"]),
    ({"cap_drop": []}, ["no capabilities"]),
    (_proc(cap_bnd=0x20), ["no capabilities"]),
    ({"privileged": True}, ["not privileged"]),
    ({"security_opt": []}, ["no_new_privs set"]),
    (_proc(no_new_privs=0), ["no_new_privs set"]),
    ({"security_opt": ["no-new-privileges:true", "seccomp=unconfined"]}, ["seccomp filter on"]),
    (_proc(seccomp=0), ["seccomp filter on"]),
    ({"mounts": [*MOUNTS, {"source": "/var/run", "destination": "/x", "rw": False, "docker_socket": True}]},
     ["no Docker socket"]),
    ({"mounts": [*MOUNTS, {"source": "/root", "destination": "/root", "rw": True}]},
     ["writable mounts: only the workspace, its git dir and the state dir"]),
    ({"mounts": MOUNTS[1:]}, ["workspace writable"]),
    ({"pids_limit": 0}, ["memory, CPU and process limits set"]),
    ({"memory": 0, "nano_cpus": 0}, ["memory, CPU and process limits set"]),
    ({"network_mode": "host"}, ["a network interface besides lo (default profile)"]),
])
def test_judge_fails_exactly_the_broken_property(change: dict, failing: list[str]) -> None:
    checks = judge({**GOOD, **change}, "default", "/w")
    assert [c.name for c in checks if not c.ok] == failing


ROOT = {**PROC, "pid": 1, "uid": [0, 0, 0, 0], "cap_eff": 0x1e0, "cap_prm": 0x1e0, "cap_bnd": 0x1e0}
SUPERVISED = {**GOOD, "user": "0:0", "agent_uid": "1000", "cap_add": [f"CAP_{c}" for c in contract.SUPERVISOR_CAPS],
              "processes": [ROOT, PROC, {**PROC, "pid": 11}]}


@pytest.mark.parametrize(("change", "failing"), [
    ({}, []),
    ({"cap_add": [*SUPERVISED["cap_add"], "CAP_DAC_OVERRIDE"]}, ["runs as a non-root uid", "no capabilities"]),
    ({"agent_uid": ""}, ["runs as a non-root uid", "no capabilities"]),
    ({"processes": [ROOT, {**PROC, "cap_eff": 0x20}]}, ["no capabilities"]),
    ({"processes": [ROOT, {**PROC, "uid": [1001, 1001, 1001, 1001]}]}, ["runs as a non-root uid"]),
    ({"processes": [ROOT, {**PROC, "no_new_privs": 0}]}, ["no_new_privs set"]),
])
def test_judge_a_supervised_container_by_its_agents_processes(change: dict, failing: list[str]) -> None:
    """The container's user is its root supervisor with only contract.SUPERVISOR_CAPS: the agent's
    processes (the non-root ones) are judged — its uid, no capabilities; no_new_privs for all."""
    checks = judge({**SUPERVISED, **change}, "default", "/w")
    assert [c.name for c in checks if not c.ok] == failing


def test_judge_locked_wants_no_network_and_a_read_only_root_from_the_engine_and_the_kernel() -> None:
    failing = [c.name for c in judge(GOOD, "locked", "/w") if not c.ok]
    assert failing == ["read-only root filesystem", "no network (only lo)"]
    assert all(c.ok for c in judge(LOCKED, "locked", "/w"))
    # the engine says so, the kernel does not: fails
    lying = {**LOCKED, "kernel": {"interfaces": ["lo", "eth0"], "mounts": [["/", "overlay", "rw"]]}}
    assert [c.name for c in judge(lying, "locked", "/w") if not c.ok] == ["read-only root filesystem",
                                                                        "no network (only lo)"]


def test_judge_never_passes_what_the_host_cannot_see() -> None:
    """A process whose /proc entry this host cannot read (another user's, a remote engine's PID) makes
    the kernel's properties not verifiable: failing lines, never a pass."""
    blind = {**LOCKED, "processes": [PROC], "unreadable": ["process 12: no /proc entry here"],
             "kernel": {"unreadable": "not a process of this container"}}
    checks = {c.name: c for c in judge(blind, "locked", "/w")}
    for name in ("runs as a non-root uid", "no capabilities", "no_new_privs set", "seccomp filter on",
                 "read-only root filesystem", "no network (only lo)"):
        assert not checks[name].ok and not checks[name].verifiable, name
        assert checks[name].seen.startswith("not verifiable from outside"), checks[name].seen
    nothing = {**LOCKED, "processes": [], "unreadable": []}
    assert not next(c for c in judge(nothing, "locked", "/w") if c.name == "no capabilities").ok


def test_judge_isolated_key_scan() -> None:
    iso = {**LOCKED, "networks": {"sandbox-x.net": {"internal": True}},
           "kernel": {"interfaces": ["lo", "eth0"], "mounts": [["/", "overlay", "ro"]]}}
    name = "the real key is absent (env, /proc, files)"

    def key(scan: object) -> object:
        return next(c for c in judge({**iso, "key_scan": scan}, "isolated", "/w") if c.name == name)

    assert key({"found": [], "unreadable": [], "files": 3, "bytes": 10, "incomplete": ""}).ok
    assert not key({"found": ["process 7 environ"], "unreadable": [], "incomplete": ""}).ok
    assert not key({"found": [], "unreadable": [], "incomplete": "more than 100000 files"}).verifiable
    assert not key({"found": [], "unreadable": ["writable layer: not readable here"], "incomplete": ""}).ok
    assert not key(None).ok
    assert next(c for c in judge(iso, "isolated", "/w") if c.name == "one network (its own internal one)").ok


def test_key_scan_reads_no_link_fifo_or_more_than_its_bound(tmp_path: Path) -> None:
    import os

    from sandbox import hostproc

    key = b"sk-ant-REAL-" + b"k" * 80
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "plain.txt").write_bytes(b"x" * (hostproc.CHUNK - 5) + key + b"y")  # across chunks
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "k.txt").write_bytes(key)
    os.symlink(outside / "k.txt", tmp_path / "link.txt")
    os.symlink(outside, tmp_path / "dirlink")
    os.mkfifo(tmp_path / "fifo")
    scan = hostproc.KeyScan(key)
    scan.tree("/w", str(tmp_path))
    assert scan.found == ["/w/a/plain.txt"] and not scan.incomplete
    (tmp_path / "a" / "plain.txt").unlink()
    scan = hostproc.KeyScan(key)
    scan.tree("/w", str(tmp_path))
    assert scan.found == [] and scan.files == 2  # the link and the FIFO (and the dir link): never followed or read
    old = hostproc.MAX_FILES
    hostproc.MAX_FILES = 1
    try:
        scan = hostproc.KeyScan(key)
        scan.tree("/w", str(tmp_path))
        assert scan.incomplete.startswith("more than 1 files")
    finally:
        hostproc.MAX_FILES = old


@pytest.mark.slow
def test_doctor_passes_on_each_profile_and_fails_the_right_lines(env: Env, repo: Path) -> None:
    default = env.ok("spawn", "--name", "doc-d", "--agent-cmd", "bash", cwd=repo).out.strip()
    locked = env.ok("spawn", "--name", "doc-l", "--profile", "locked", "--agent-cmd", "bash", cwd=repo).out.strip()
    try:
        out = env.ok("doctor", default).out
        assert out.count("ok  ") == 10 and "FAIL" not in out, out
        assert env.ok("doctor", locked).out.count("ok  ") == 11
        res = env.run("doctor", default, "--as", "locked", "--json")
        assert res.code == 1
        failing = [c["check"] for c in json.loads(res.out) if not c["ok"]]
        assert failing == ["read-only root filesystem", "no network (only lo)"]
        env.ok("stop", default)
        res = env.run("doctor", default)
        assert res.code != 0 and "not running" in res.err
    finally:
        env.run("rm", "--force", default, locked)


def test_docker_socket_is_a_socket_source_or_an_engine_dir(tmp_path: Path) -> None:
    import socket

    from sandbox.doctor import _docker_socket

    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "engine.sock"))
        assert _docker_socket(str(tmp_path / "engine.sock")) and _docker_socket("/var/run")
        (tmp_path / "w").mkdir()
        (tmp_path / "w" / "docker.sock").write_text("not a socket")  # what an agent may name a file
        assert not _docker_socket(str(tmp_path / "w")) and not _docker_socket(str(tmp_path))
    finally:
        sock.close()
