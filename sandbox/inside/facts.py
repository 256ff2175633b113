"""``python3 -m sandbox.inside facts``: what the agent's container is, seen from inside (stdlib only).

Prints one JSON object for ``sandbox doctor`` on the host, which judges it against the profile: the
process's uid, capabilities, no_new_privs and seccomp mode (``/proc/self/status``), whether the root is
read-only (``/proc/self/mounts``), the writable mounts, the network interfaces, whether the Docker socket
is there, and whether the state dir and the workspace can be written. Nothing here is trusted by the
host beyond what it reports about itself (the agent could lie about its own container; doctor is for
the user's peace of mind, not a security boundary).

``--probe JSON`` (the isolated profile) adds egress probes, each bounded to a few seconds and run in
parallel: TCP to the model proxy; through the egress proxy, an allowed host, a denied host and a raw IP
(``CONNECT``, the HTTP status squid answers); directly, a raw IP, the bridge gateway and another agent
(``open`` or why not); an outside name through DNS. ``key_sha256``/``key_len`` (the real key's hash,
never the key) make it look for the key in every process's environment and command line and in the
files it can read under the writable places (windows of that length hashed; the key itself never
enters the container).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor


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


PROBE_TIMEOUT = 3.0


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def _direct(target: str) -> str:
    """``open``, or why a TCP connection to ``host:port`` failed (refused, unreachable, timeout…)."""
    try:
        with socket.create_connection(_split(target), timeout=PROBE_TIMEOUT):
            return "open"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return type(e).__name__ if not e.strerror else e.strerror.lower()


def _via_proxy(proxy: str, target: str) -> str:
    """The HTTP status the egress proxy answers to ``CONNECT target`` (or why there was none)."""
    try:
        with socket.create_connection(_split(proxy), timeout=PROBE_TIMEOUT) as s:
            s.settimeout(PROBE_TIMEOUT)
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = s.recv(512).decode("latin-1")
    except OSError as e:
        return "error: " + (e.strerror or type(e).__name__).lower()
    m = re.match(r"HTTP/1\.[01] (\d{3})", head)
    return m.group(1) if m else "no HTTP answer"


def _resolves(name: str) -> str:
    """``resolved ADDR`` or ``failed: why``; a resolver that does not answer within the probe's time
    is a failure too (getaddrinfo has no timeout: it runs in a thread left behind)."""
    result: list[str] = []

    def lookup() -> None:
        try:
            result.append("resolved " + socket.getaddrinfo(name, 443, proto=socket.IPPROTO_TCP)[0][4][0])
        except OSError as e:
            result.append("failed: " + str(e)[:80])

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(PROBE_TIMEOUT)
    return result[0] if result else "failed: no answer"


KEY_CHARS = re.compile(rb"[A-Za-z0-9._~+/=-]+")
SCAN_CAP = 64 * 1024 * 1024   # bytes of files read at most
RUN_CAP = 8192                # longer runs of key characters are looked at in their first RUN_CAP bytes


def _has_key(data: bytes, digest: str, n: int) -> bool:
    for m in KEY_CHARS.finditer(data):
        run = m.group()[:RUN_CAP]
        for i in range(0, len(run) - n + 1):
            if hashlib.sha256(run[i:i + n]).hexdigest() == digest:
                return True
    return False


def _key_places(digest: str, n: int, roots: list[str]) -> tuple[list[str], int]:
    """Where the key with this hash and length is found: processes' environ/cmdline, readable files."""
    found: list[str] = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        for what in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    if _has_key(f.read(1 << 20).replace(b"\0", b"\n"), digest, n):
                        found.append(f"/proc/{pid}/{what}")
            except OSError:
                pass
    budget = SCAN_CAP
    for root in roots:
        for top, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
            for name in files:
                path = os.path.join(top, name)
                try:
                    if os.path.islink(path) or not os.path.isfile(path) or budget <= 0:
                        continue
                    with open(path, "rb", opener=lambda p, fl: os.open(p, fl | os.O_NONBLOCK | os.O_NOFOLLOW)) as f:
                        data = f.read(min(budget, 8 << 20))
                except OSError:
                    continue
                budget -= len(data)
                if _has_key(data, digest, n):
                    found.append(path)
    return found, SCAN_CAP - budget


def probes(spec: dict, workdir: str) -> dict:
    jobs = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        if spec.get("model"):
            jobs["model_proxy"] = pool.submit(_direct, spec["model"])
        egress = spec.get("egress")
        for key in ("allowed", "denied", "raw_ip"):
            if egress and spec.get(key):
                jobs[f"{key}_via_proxy"] = pool.submit(_via_proxy, egress, spec[key])
        for key in ("raw_ip", "peer"):
            if spec.get(key):
                jobs[f"{key}_direct"] = pool.submit(_direct, spec[key])
        gateways = {g: pool.submit(_direct, g) for g in spec.get("gateways") or []}
        dns = _resolves(spec["dns"]) if spec.get("dns") else None
        out: dict = {k: f.result() for k, f in jobs.items()}
        if dns is not None:
            out["dns_outside"] = dns
        if gateways:
            out["gateways_direct"] = {g: f.result() for g, f in gateways.items()}
    if spec.get("key_sha256") and spec.get("key_len"):
        roots = [workdir, "/tmp", os.environ.get("HOME") or "/home/agent", "/run/sandbox-state", "/var/lib/sandbox"]
        places, scanned = _key_places(str(spec["key_sha256"]), int(spec["key_len"]), roots)
        out["key_found_in"], out["key_bytes_scanned"] = places, scanned
    return out


def facts(argv: list[str]) -> int:
    probe = None
    if "--probe" in argv:
        i = argv.index("--probe")
        probe = json.loads(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
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
    if probe is not None:
        out["probes"] = probes(probe, workdir)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0
