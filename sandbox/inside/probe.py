"""``sandbox.inside probe JSON``: the isolated profile's egress probes, run inside the container (stdlib only).

Everything else ``sandbox doctor`` proves, it reads from outside (the engine's inspect, the host's
``/proc`` of the container's processes, the key scan: ``sandbox.doctor.gather``); only what the
container's network lets through can be seen only from in there. So the host runs this one program,
the isolated way (``contract.PROBE``: ``python3 -I -S``, code from the image's root-owned copy, cwd
``/``, as ``contract.NOBODY``: nothing the agent can write is imported or read), and prints one JSON
object: each probe bounded to a few seconds, in parallel: TCP to the model proxy; through the egress
proxy, an allowed host, a denied host and a raw IP (``CONNECT``, the HTTP status squid answers);
directly, a raw IP, the bridge gateways and another agent (``open`` or why not); an outside name
through DNS. The key never enters the container, nor its hash or length (the host scans for it).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

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


def probes(spec: dict) -> dict:
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
    return out


def probe(argv: list[str]) -> int:
    """``probe JSON``: the probes ``JSON`` (``sandbox.doctor.probe_plan``) names, as one JSON object."""
    try:
        spec = json.loads(argv[0]) if argv else None
    except ValueError:
        spec = None
    if not isinstance(spec, dict):
        print("usage: sandbox.inside probe JSON", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(probes(spec)) + "\n")
    return 0
