"""``sandbox doctor``: prove a live agent's profile from inside its container, one line per property.

``judge`` (pure) compares what the container reports about itself (``contract.FACTS``, run with one
exec) with what its profile promises (README "Security"), so a property that does not hold is a
failing line and a non-zero exit. For the isolated profile, ``probe_plan`` first gathers what the
probes aim at (its proxies, an allowed host, the gateways, another agent, the real key's hash).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sandbox import contract, labels as L

if TYPE_CHECKING:
    from sandbox.manager import Sandbox, SandboxManager

DENIED_HOST = "example.com"      # never on an allowlist by default: the egress proxy must refuse it
RAW_IP = "1.1.1.1:443"
# A TCP answer, even a refusal (RST), means the address was reached: only these mean "not reachable"
_UNREACHED = ("timeout", "no route to host", "network is unreachable", "host is unreachable")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    seen: str


def judge(facts: dict[str, Any], profile: str, workdir: str) -> list[Check]:
    """The checks of ``profile`` (``default`` or ``locked``) against ``facts``."""
    checks = [
        Check("runs as a non-root uid", int(facts.get("uid", 0)) != 0, f"uid {facts.get('uid')}"),
        Check("no capabilities", int(facts.get("cap_eff", -1)) == 0, f"CapEff {int(facts.get('cap_eff', -1)):#x}"),
        Check("no_new_privs set", facts.get("no_new_privs") is True, str(facts.get("no_new_privs"))),
        Check("seccomp filter on", int(facts.get("seccomp", 0)) == 2, f"mode {facts.get('seccomp')}"),
        Check("no Docker socket", facts.get("docker_socket") is False, str(facts.get("docker_socket"))),
        Check("workspace writable", facts.get("workspace_writable") is True, workdir),
    ]
    mounts = [str(m) for m in facts.get("writable_mounts") or []]
    allowed = {workdir, contract.AGENT_GIT, contract.STATE_MOUNT, contract.LAUNCH_DIR}
    strays = [m for m in mounts if m not in allowed and not m.startswith(("/tmp", "/home/agent", "/etc/host",
                                                                          "/etc/resolv", "/dev"))]
    checks.append(Check("writable mounts: only the workspace, its git dir and the state dir", not strays,
                        ", ".join(mounts) or "none"))
    interfaces = [str(i) for i in facts.get("interfaces") or []]
    if profile == "locked":
        checks += [
            Check("read-only root filesystem", facts.get("read_only_root") is True, str(facts.get("read_only_root"))),
            Check("no network (only lo)", interfaces == ["lo"], ", ".join(interfaces)),
        ]
    elif profile == "isolated":
        checks += [
            Check("read-only root filesystem", facts.get("read_only_root") is True, str(facts.get("read_only_root"))),
            Check("one network (its own internal one)", len(interfaces) == 2 and "lo" in interfaces,
                  ", ".join(interfaces)),
        ]
        checks += _egress_checks(dict(facts.get("probes") or {}))
    else:
        checks.append(Check("a network interface besides lo (default profile)", len(interfaces) > 1,
                            ", ".join(interfaces)))
    return checks


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
    if "key_found_in" in p:
        places = list(p["key_found_in"] or [])
        out.append(Check("the real key is absent (env, /proc, files)", not places,
                         ", ".join(places[:5]) or f"not found in {int(p.get('key_bytes_scanned') or 0)} bytes"))
    return out


def probe_plan(mgr: SandboxManager[Any], sb: Sandbox) -> dict[str, Any]:
    """What the isolated profile's probes aim at, for ``--probe`` of ``contract.FACTS``."""
    from sandbox import isolation, proxy, spec

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
    key = _real_key(mgr, proxies.get("model"))
    if key:
        plan["key_sha256"], plan["key_len"] = hashlib.sha256(key.encode()).hexdigest(), len(key)
    return plan


def _real_key(mgr: SandboxManager[Any], model_proxy: dict[str, Any] | None) -> str | None:
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
