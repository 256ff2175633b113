"""``sandbox doctor``: prove a live agent's profile from outside its container, one line per property.

Nothing the agent can write answers for it: an agent that plants a ``usercustomize.py`` or a ``.pth`` in
its HOME, or anything in its working directory, must not be able to make a profile pass. So ``gather``
reads the facts on the host: the engine's inspect (user, read-only root, CapAdd/CapDrop, privileged,
security options, networks, mounts, limits) and the host kernel's ``/proc/<pid>`` of each of the
container's processes (``sandbox.hostproc``: uid, capabilities, NoNewPrivs, Seccomp; its network
interfaces and mounts), and for the isolated profile it scans for the real key on the host (the
processes' environ/cmdline, the writable mounts' host sources, the writable layer, tmpfs through
``/proc/<pid>/root``: neither the key nor its hash ever goes into the container). Only the egress probes
run inside, isolated from everything the agent can write (``contract.PROBE`` as ``contract.NOBODY``,
cwd ``/``). ``judge`` (pure) compares those facts with what the profile promises (README "Security"):
a property that does not hold, or that cannot be seen from here ("not verifiable from outside"), is a
failing line and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sandbox import contract, hostproc, labels as L
from sandbox.errors import SandboxError

if TYPE_CHECKING:
    from sandbox.manager import Sandbox, SandboxManager

DENIED_HOST = "example.com"      # never on an allowlist by default: the egress proxy must refuse it
RAW_IP = "1.1.1.1:443"
# A TCP answer, even a refusal (RST), means the address was reached: only these mean "not reachable"
_UNREACHED = ("timeout", "no route to host", "network is unreachable", "host is unreachable")
UNVERIFIABLE = "not verifiable from outside"
# Where the container may write besides the workspace: its git dir, the state dir, the launch dir's
# volume (locked, isolated, headless) and the tmpfs of /tmp and $HOME
_WRITABLE = (contract.AGENT_GIT, contract.STATE_MOUNT, contract.LAUNCH_DIR, "/tmp", "/home/agent")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    seen: str
    verifiable: bool = True      # False: the host could not see it (never a pass)


def _unverified(name: str, why: str) -> Check:
    return Check(name, False, f"{UNVERIFIABLE}: {why}", verifiable=False)


def _uid_of(user: str) -> int | None:
    """The uid of the engine's ``User`` (``61000:61000``, ``61000``); None for a name or nothing."""
    first = user.partition(":")[0]
    return int(first) if first.isdigit() else None


def _kernel_check(name: str, facts: dict[str, Any], engine_ok: bool, engine_seen: str,
                  per_process: Any, describe: str) -> Check:
    """A property the engine configures and the kernel enforces: both must say so, for every process;
    a process the host cannot read makes it not verifiable (never a pass)."""
    procs = [p for p in facts.get("processes") or [] if isinstance(p, dict)]
    unreadable = [str(u) for u in facts.get("unreadable") or []]
    bad = [p for p in procs if not per_process(p)]
    seen = f"{engine_seen}; kernel: {describe} in {len(procs)} process(es)"
    if not engine_ok or bad:
        return Check(name, False, engine_seen + ("" if not bad else "; kernel: " + ", ".join(
            f"pid {p.get('pid')}: {_show(p)}" for p in bad[:4])))
    if unreadable or not procs:
        return _unverified(name, "; ".join(unreadable[:3]) or "no process of the container seen")
    return Check(name, True, seen)


def _show(p: dict[str, Any]) -> str:
    caps = "/".join(f"{int(p[k]):#x}" if isinstance(p.get(k), int) else "?" for k in ("cap_eff", "cap_prm", "cap_bnd"))
    return f"uid {p.get('uid')}, CapEff/Prm/Bnd {caps}, NoNewPrivs {p.get('no_new_privs')}, Seccomp {p.get('seccomp')}"


def judge(facts: dict[str, Any], profile: str, workdir: str) -> list[Check]:
    """The checks of ``profile`` (``default``, ``locked`` or ``isolated``) against ``facts`` (``gather``)."""
    user = str(facts.get("user") or "")
    uid = _uid_of(user)
    cap_drop = [str(c).upper() for c in facts.get("cap_drop") or []]
    cap_add = [str(c) for c in facts.get("cap_add") or []]
    opts = [str(o) for o in facts.get("security_opt") or []]
    nnp = any(re.fullmatch(r"no-new-privileges(:true|=true)?", o) for o in opts)
    unconfined = any(re.fullmatch(r"seccomp[:=]unconfined", o) for o in opts)
    # A supervised container (README "Security"): the container's user is its root supervisor, with no more
    # than contract.SUPERVISOR_CAPS; what is judged then is the agent's processes (every non-root one) —
    # the agent's uid, no capabilities. Else every process of the container is the agent's.
    agent_uid = str(facts.get("agent_uid") or "")
    kept = {c.upper().removeprefix("CAP_") for c in cap_add}
    supervised = uid == 0 and agent_uid.isdigit() and int(agent_uid) != 0 and kept <= set(contract.SUPERVISOR_CAPS)
    agent = dict(facts, processes=[p for p in facts.get("processes") or [] if isinstance(p, dict)
                                   and p.get("uid") and 0 not in p["uid"]]) if supervised else facts
    who = f"User {user or 'unset'}" + (f" (its supervisor), the agent's uid {agent_uid}" if supervised else "")
    checks = [
        _kernel_check("runs as a non-root uid", agent, supervised or (uid is not None and uid != 0), who,
                      lambda p: bool(p.get("uid")) and 0 not in p["uid"]
                      and (not supervised or set(p["uid"]) == {int(agent_uid)}),
                      "no uid 0" if not supervised else f"the agent's processes uid {agent_uid}"),
        _kernel_check("no capabilities", agent, ("ALL" in cap_drop or "CAP_ALL" in cap_drop) and (
                      not cap_add or supervised),
                      f"CapDrop {','.join(cap_drop) or 'none'}, CapAdd {','.join(cap_add) or 'none'}"
                      + (" (the supervisor's)" if supervised and cap_add else ""),
                      lambda p: all(p.get(k) == 0 for k in ("cap_eff", "cap_prm", "cap_bnd", "cap_amb")),
                      "CapEff/CapPrm/CapBnd/CapAmb 0"),
        Check("not privileged", facts.get("privileged") is False, f"Privileged {facts.get('privileged')}"),
        _kernel_check("no_new_privs set", facts, nnp, "SecurityOpt " + (",".join(opts) or "none"),
                      lambda p: p.get("no_new_privs") == 1, "NoNewPrivs 1"),
        _kernel_check("seccomp filter on", facts, not unconfined,
                      "seccomp " + ("unconfined" if unconfined else "the engine's profile"),
                      lambda p: p.get("seccomp") == 2, "Seccomp 2 (filter)"),
    ]
    mounts = [m for m in facts.get("mounts") or [] if isinstance(m, dict)]
    sockets = [str(m.get("source")) for m in mounts if m.get("docker_socket")]
    checks.append(Check("no Docker socket", not sockets, ", ".join(sockets) or "none mounted"))
    writable = sorted({str(m.get("destination")) for m in mounts if m.get("rw")} | set(facts.get("tmpfs") or {}))
    checks.append(Check("workspace writable", workdir in writable, workdir))
    strays = [w for w in writable if w != workdir and w not in _WRITABLE]
    checks.append(Check("writable mounts: only the workspace, its git dir and the state dir", not strays,
                        ", ".join(writable) or "none"))
    limits = {"memory": int(facts.get("memory") or 0), "cpus": int(facts.get("nano_cpus") or 0) / 1e9
              or int(facts.get("cpu_quota") or 0) / 100_000, "pids": int(facts.get("pids_limit") or 0)}
    checks.append(Check("memory, CPU and process limits set", all(v > 0 for v in limits.values()),
                        f"memory {limits['memory'] / (1 << 30):.2g} GiB, {limits['cpus']:g} CPUs, "
                        f"{limits['pids']} processes" if all(v > 0 for v in limits.values())
                        else ", ".join(f"{k} unlimited" for k, v in limits.items() if v <= 0)))
    kernel = facts.get("kernel") if isinstance(facts.get("kernel"), dict) else {}
    interfaces = [str(i) for i in kernel.get("interfaces") or []]
    root_ro = [m for m in kernel.get("mounts") or [] if isinstance(m, list) and m[:1] == ["/"]]
    networks = dict(facts.get("networks") or {})
    mode = str(facts.get("network_mode") or "")

    def ro_root() -> Check:
        name = "read-only root filesystem"
        if facts.get("read_only_root") is not True:
            return Check(name, False, "ReadonlyRootfs false")
        if not root_ro:
            return _unverified(name, str(kernel.get("unreadable") or "the container's mounts unseen"))
        ok = "ro" in str(root_ro[-1][2]).split(",")
        return Check(name, ok, "ReadonlyRootfs true; kernel: / " + ("ro" if ok else "rw"))

    def net(name: str, engine_ok: bool, engine_seen: str, want: Any) -> Check:
        if not engine_ok:
            return Check(name, False, engine_seen)
        if not interfaces:
            return _unverified(name, str(kernel.get("unreadable") or "the container's interfaces unseen"))
        return Check(name, bool(want(interfaces)), f"{engine_seen}; kernel: {', '.join(interfaces)}")

    nets_seen = ("" if re.fullmatch(r"[0-9a-f]{64}", mode) else f"NetworkMode {mode or '?'}, ") + "networks " + (", ".join(
        f"{n}{' (internal)' if v.get('internal') else ''}" for n, v in networks.items()) or "none")
    if profile == "locked":
        checks += [ro_root(), net("no network (only lo)", mode == "none" and not networks, nets_seen,
                                  lambda i: i == ["lo"])]
    elif profile == "isolated":
        one = len(networks) == 1 and all(v.get("internal") is True for v in networks.values())
        checks += [ro_root(), net("one network (its own internal one)", one, nets_seen,
                                  lambda i: len(i) == 2 and "lo" in i)]
        checks += _egress_checks(dict(facts.get("probes") or {}))
        checks.append(_key_check(facts.get("key_scan")))
    else:
        own_net = mode not in ("none", "host") and not mode.startswith("container:") and bool(networks)
        checks.append(net("a network interface besides lo (default profile)", own_net,
                          nets_seen, lambda i: len(i) > 1))
    return checks


def _key_check(scan: Any) -> Check:
    name = "the real key is absent (env, /proc, files)"
    if not isinstance(scan, dict):
        return _unverified(name, "no real key known on this host to look for")
    found = [str(f) for f in scan.get("found") or []]
    if found:
        return Check(name, False, ", ".join(found[:5]))
    if scan.get("incomplete") or scan.get("unreadable"):
        return _unverified(name, str(scan.get("incomplete") or "; ".join(map(str, scan["unreadable"][:3]))))
    return Check(name, True, f"not found in {int(scan.get('files') or 0)} files, {int(scan.get('bytes') or 0)} bytes"
                 " and the processes' environ and cmdline")


def _unreached(seen: object) -> bool:
    return isinstance(seen, str) and seen in _UNREACHED


def _egress_checks(p: dict[str, Any]) -> list[Check]:
    out = []
    if "model_proxy" in p:
        out.append(Check("model proxy reachable", p["model_proxy"] == "open", str(p["model_proxy"])))
    if "allowed_via_proxy" in p:
        out.append(Check("allowed host reachable through the egress proxy", p["allowed_via_proxy"] == "200",
                         f"CONNECT: {p['allowed_via_proxy']}"))
    out += [
        Check("a denied host is refused by the egress proxy", p.get("denied_via_proxy") == "403",
              f"CONNECT {DENIED_HOST}: {p.get('denied_via_proxy', 'not probed')}"),
        Check("a raw IP is refused by the egress proxy", p.get("raw_ip_via_proxy") == "403",
              f"CONNECT {RAW_IP}: {p.get('raw_ip_via_proxy', 'not probed')}"),
        Check("a raw IP is unreachable directly", _unreached(p.get("raw_ip_direct")),
              f"{RAW_IP}: {p.get('raw_ip_direct', 'not probed')}"),
    ]
    gateways = dict(p.get("gateways_direct") or {})
    out.append(Check("the bridge gateways are unreachable", bool(gateways) and all(map(_unreached, gateways.values())),
                     ", ".join(f"{g}: {v}" for g, v in gateways.items()) or "not probed"))
    if "peer_direct" in p:
        out.append(Check("another agent is unreachable", _unreached(p["peer_direct"]), str(p["peer_direct"])))
    out.append(Check("outside DNS refused", str(p.get("dns_outside", "")).startswith("failed"),
                     str(p.get("dns_outside", "not probed"))))
    return out


def probe_plan(mgr: SandboxManager, sb: Sandbox) -> dict[str, Any]:
    """What the isolated profile's probes aim at (``contract.PROBE``'s JSON)."""
    from sandbox import isolation, proxy
    from sandbox.spawn import spec

    proxies = {c.get("Labels", {}).get(L.PROXY_ROLE): c for c in isolation.proxies(mgr.engine, sb.name)}
    allow = [a for a in sb.labels.get(L.ALLOW, "").split(",") if a and not a.startswith("*")]
    plan: dict[str, Any] = {
        "egress": f"{spec.EGRESS_PROXY_HOST}:{proxy.EGRESS_PORT}",
        "denied": f"{DENIED_HOST}:443", "raw_ip": RAW_IP, "dns": DENIED_HOST,
        "gateways": isolation.gateways(mgr.engine, sb.container_id, sb.name),
    }
    if "model" in proxies or sb.labels.get(L.PROFILE) != "isolated":
        plan["model"] = f"{spec.MODEL_PROXY_HOST}:{proxy.MODEL_PORT}"
    if allow:
        plan["allowed"] = allow[0] if re.search(r":\d+$", allow[0]) else f"{allow[0]}:443"
    peer = isolation.peer_address(mgr.engine, sb.container_id)
    if peer:
        plan["peer"] = f"{peer}:22"
    return plan


def _real_key(mgr: SandboxManager, model_proxy: dict[str, Any] | None) -> str | None:
    """The key the model proxy injects (read from its file, as its user); else the one in this
    environment (judging another profile ``--as isolated``)."""
    from sandbox import proxy

    if model_proxy is not None and model_proxy.get("State") == "running":
        res = mgr.engine.exec(str(model_proxy["Id"]), ["cat", proxy.CREDENTIAL_CONF],
                              user=f"{proxy.PROXY_UID}:{proxy.PROXY_GID}")
        m = re.search(r'(?:x-api-key "|Bearer )([A-Za-z0-9._~+/=-]+)"', res.text)
        if res.exit_code == 0 and m:
            return m.group(1)
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"):
        if os.environ.get(var):
            return os.environ[var]
    return None


_SOCKET_DIRS = ("/", "/run", "/var/run", "/run/docker", "/var/run/docker")  # where an engine's socket lives


def _docker_socket(source: str) -> bool:
    """Whether a mount's host source is a socket, or a directory an engine's socket lives in (a file the
    agent names docker.sock in its own workspace is neither)."""
    if not source:
        return False
    try:
        if stat.S_ISSOCK(os.stat(source).st_mode):
            return True
    except OSError:
        return source.endswith(".sock")
    return os.path.normpath(source) in _SOCKET_DIRS


def gather(mgr: SandboxManager, sb: Sandbox, profile: str) -> dict[str, Any]:
    """The facts of a running agent's container, seen from outside (the engine, the host's kernel); for
    ``isolated`` also the egress probes (inside, isolated) and the key scan (on the host)."""
    engine = mgr.engine_for(sb)
    ins = engine.inspect(sb.container_id)
    cid = str(ins.get("Id") or sb.container_id)
    host = dict(ins.get("HostConfig") or {})
    networks: dict[str, dict[str, Any]] = {}
    for name, endpoint in dict((ins.get("NetworkSettings") or {}).get("Networks") or {}).items():
        if name == "none":  # (NetworkMode none: the engine lists its null network)
            continue
        try:
            internal = bool(engine.inspect_network(str((endpoint or {}).get("NetworkID") or name)).get("Internal"))
        except SandboxError:
            internal = None
        networks[name] = {"internal": internal}
    mounts = [{"source": str(m.get("Source") or ""), "destination": str(m.get("Destination") or ""),
               "rw": bool(m.get("RW")), "type": str(m.get("Type") or ""),
               "docker_socket": _docker_socket(str(m.get("Source") or ""))} for m in ins.get("Mounts") or []]
    facts: dict[str, Any] = {
        "user": str((ins.get("Config") or {}).get("User") or ""), "privileged": bool(host.get("Privileged")),
        "read_only_root": bool(host.get("ReadonlyRootfs")), "cap_add": list(host.get("CapAdd") or []),
        "cap_drop": list(host.get("CapDrop") or []), "security_opt": list(host.get("SecurityOpt") or []),
        "network_mode": str(host.get("NetworkMode") or ""), "networks": networks, "mounts": mounts,
        "tmpfs": dict(host.get("Tmpfs") or {}), "memory": int(host.get("Memory") or 0),
        "nano_cpus": int(host.get("NanoCpus") or 0), "cpu_quota": int(host.get("CpuQuota") or 0),
        "pids_limit": int(host.get("PidsLimit") or 0),
        "agent_uid": str(((ins.get("Config") or {}).get("Labels") or {}).get(L.UID) or ""),
    }
    pids = engine.top(cid)
    seen = [hostproc.process(pid, cid) for pid in pids]
    if any(isinstance(p, hostproc.Unreadable) for p in seen):  # ended since (an exec, a short command)?
        still = set(engine.top(cid))
        pids = [pid for pid in pids if pid in still]
        seen = [p for p in seen if (p.pid if isinstance(p, hostproc.Unreadable) else p["pid"]) in still]
    facts["processes"] = [p for p in seen if isinstance(p, dict)]
    facts["unreadable"] = [f"process {p.pid}: {p.why}" for p in seen if isinstance(p, hostproc.Unreadable)]
    init = int((ins.get("State") or {}).get("Pid") or 0)
    ns = hostproc.namespace(init, cid) if init else hostproc.Unreadable(0, "no init process")
    facts["kernel"] = ns if isinstance(ns, dict) else {"unreadable": ns.why}
    if profile == "isolated":
        facts["probes"] = _probes(engine, cid, probe_plan(mgr, sb))
        from sandbox import isolation

        proxies = {c.get("Labels", {}).get(L.PROXY_ROLE): c for c in isolation.proxies(mgr.engine, sb.name)}
        key = _real_key(mgr, proxies.get("model"))
        if key:
            facts["key_scan"] = _scan(key, ins, pids, cid, init).as_dict()
    return facts


def _probes(engine: Any, cid: str, plan: dict[str, Any]) -> dict[str, Any]:
    """The egress probes, run inside the isolated way: as ``contract.NOBODY``, cwd ``/``."""
    res = engine.exec(cid, [*contract.PROBE, json.dumps(plan)], user=contract.NOBODY, workdir="/")
    try:
        out = json.loads(res.text) if res.exit_code == 0 else None
    except ValueError:
        out = None
    return out if isinstance(out, dict) else {}


def _scan(key: str, ins: dict[str, Any], pids: list[int], cid: str, init: int) -> hostproc.KeyScan:
    """Where the key is, read from the host: the processes, the writable mounts' sources, the tmpfs
    (through the init's root), the writable layer (when this host can read it)."""
    scan = hostproc.KeyScan(key.encode())
    scan.processes(pids, cid)
    for m in ins.get("Mounts") or []:
        if m.get("RW") and m.get("Source"):
            scan.tree(str(m.get("Destination")), str(m["Source"]))
    for target in dict((ins.get("HostConfig") or {}).get("Tmpfs") or {}):
        scan.in_root_of(init, cid, target)
    upper = str(((ins.get("GraphDriver") or {}).get("Data") or {}).get("UpperDir") or "")
    if upper and os.path.isdir(upper):
        scan.tree("writable layer", upper)
    elif upper:
        scan.unreadable.append(f"writable layer: {upper} not readable here")
    return scan
