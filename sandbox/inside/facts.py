"""``python3 -m sandbox.inside facts``: what the agent's container is, seen from inside (stdlib only).

Prints one JSON object for ``sandbox doctor`` on the host, which judges it against the profile: the
process's uid, capabilities, no_new_privs and seccomp mode (``/proc/self/status``), whether the root is
read-only (``/proc/self/mounts``), the writable mounts, the network interfaces, whether the Docker socket
is there, and whether the state dir and the workspace can be written. Nothing here is trusted by the
host beyond what it reports about itself (the agent could lie about its own container; doctor is for
the user's peace of mind, not a security boundary).
"""

from __future__ import annotations

import json
import os
import sys


def _status() -> dict[str, str]:
    out = {}
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


def _mounts() -> list[tuple[str, str, str]]:
    found = []
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4:
                found.append((parts[1], parts[2], parts[3]))
    return found


def _writable(path: str) -> bool:
    probe = os.path.join(path, f".sandbox-doctor-{os.getpid()}")
    try:
        with open(probe, "w", encoding="utf-8") as f:
            f.write("x")
        os.unlink(probe)
        return True
    except OSError:
        return False


def facts(argv: list[str]) -> int:
    workdir = argv[0] if argv else os.getcwd()
    st = _status()
    mounts = _mounts()
    root = [opts for target, _, opts in mounts if target == "/"]
    with open("/proc/net/dev", encoding="utf-8") as f:
        interfaces = [line.split(":")[0].strip() for line in f.readlines()[2:]]
    pseudo = ("proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "tmpfs", "devtmpfs", "overlay")
    out = {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cap_eff": int(st.get("CapEff", "0") or "0", 16),
        "no_new_privs": st.get("NoNewPrivs") == "1",
        "seccomp": int(st.get("Seccomp", "0") or "0"),
        "read_only_root": bool(root) and "ro" in root[-1].split(","),
        "writable_mounts": sorted({t for t, fs, o in mounts if "rw" in o.split(",") and fs not in pseudo and t != "/"}),
        "interfaces": interfaces,
        "docker_socket": any(os.path.exists(p) for p in ("/var/run/docker.sock", "/run/docker.sock")),
        "workspace_writable": _writable(workdir),
        "etc_writable": _writable("/etc"),
    }
    sys.stdout.write(json.dumps(out) + "\n")
    return 0
