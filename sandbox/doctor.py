"""``sandbox doctor``: prove a live agent's profile from inside its container, one line per property.

``judge`` (pure) compares what the container reports about itself (``contract.FACTS``, run with one
exec) with what its profile promises (README "Security"), so a property that does not hold is a
failing line and a non-zero exit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandbox import contract


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
    else:
        checks.append(Check("a network interface besides lo (default profile)", len(interfaces) > 1,
                            ", ".join(interfaces)))
    return checks
