"""A snapshot of one agent (``Sandbox``): its labels, its container's state and its agent state, as
one engine listing and the agent's state file show them; and its published ports (``Port``).
No engine call here: ``SandboxManager`` makes the snapshots."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sandbox import agentfiles, contract, labels as L, usage as U
from sandbox.cgroups import Pressure
from sandbox.contract import S


@dataclass(frozen=True)
class Port:
    """One published port of an agent: its container port and where the host reaches it."""

    container: int
    host_ip: str
    host_port: int

    @property
    def url(self) -> str:
        return f"http://{self.host_ip}:{self.host_port}"

    def to_json(self) -> dict[str, Any]:
        return {"container": self.container, "host_ip": self.host_ip, "host_port": self.host_port, "url": self.url}


def published(raw: Any) -> tuple[Port, ...]:
    """The published TCP ports of the engine's list answer (``Ports``: ``PrivatePort``, ``PublicPort``,
    ``IP``, ``Type``), by container port; none when the container runs no more (the engine lists them
    only while it runs)."""
    found = {(int(p["PrivatePort"]), str(p.get("IP") or ""), int(p["PublicPort"]))
             for p in raw or [] if isinstance(p, dict) and p.get("Type", "tcp") == "tcp"
             and isinstance(p.get("PrivatePort"), int) and isinstance(p.get("PublicPort"), int)}
    return tuple(Port(c, ip, h) for c, ip, h in sorted(found))


@dataclass(frozen=True)
class Sandbox:
    """A snapshot of one agent: its labels, its container's state, its agent state."""

    name: str
    container_id: str
    container_name: str
    labels: dict[str, str]
    engine_state: str                  # created / running / exited / paused / …
    status: str                        # the engine's human status ("Up 3 minutes (healthy)")
    agent_state: dict[str, Any] = field(default_factory=dict)
    image_id: str = ""
    pressure: Pressure | None = None   # the kernel's OOM kills / refused forks (running, local engine)
    container_created: float = 0.0     # epoch seconds (the engine's): the age of a container without the label
    node: str = ""                     # swarm: the node running its task
    context: str = ""                  # swarm: the Docker context reaching that node ("" = this engine)
    stats: U.Stats | None = None       # CPU and memory now (``SandboxManager.with_stats``; None: not asked)
    host_reason: str = ""              # why the host stopped it (its disk: ``sandbox.disk``), from a host-only file
    stale: str = ""                    # why its branch could not be brought over just now (``list``'s sync)
    ports: tuple[Port, ...] = ()       # its published ports (the engine's list answer)

    @property
    def session(self) -> str:
        return self.labels.get(L.SESSION, self.name)

    @property
    def headless(self) -> bool:
        """Started from the image alone (Compose, ``spawn --headless``): no workspace on this host; its
        work is in the branch it pushes."""
        return self.labels.get(L.MODE) == L.HEADLESS

    @property
    def workspace(self) -> Path:
        """The workspace on the host; for a headless agent, its clone inside the container."""
        return Path(self.labels.get(L.WORKSPACE) or str(self.agent_state.get(S.WORKDIR) or "/"))

    @property
    def agent_git(self) -> Path | None:
        """The agent's own git dir on the host (mounted at ``contract.AGENT_GIT``); never run git in it."""
        raw = self.labels.get(L.AGENT_GIT)
        return Path(raw) if raw else None

    @property
    def branch(self) -> str:
        return self.labels.get(L.BRANCH) or str(self.agent_state.get(S.BRANCH) or "")

    @property
    def task(self) -> str:
        """The task's summary: its label; a headless replica's (one label set for all): its state's."""
        return self.labels.get(L.TASK) or L.summarize(str(self.agent_state.get(S.TASK) or ""))

    @property
    def repo(self) -> str:
        return self.labels.get(L.REPO, "")

    @property
    def state(self) -> str:
        """One word (README "States"): the agent's state file while the container runs, else
        what the container's end says (stopped by us / failed for good / exited)."""
        own = self.agent_state.get(S.STATE)
        if self.engine_state == "running":
            if self.agent_state.get(S.ENDED):  # what the last run's init wrote as it ended: a new one is starting
                return contract.STARTING
            if self.supervisor_silent:
                return contract.FAILED
            return str(own or contract.STARTING)
        if self.engine_state in ("exited", "dead"):
            if self.host_reason:
                return contract.STOPPED
            return str(own) if own in (contract.STOPPED, contract.FAILED) else contract.EXITED
        if self.engine_state in ("created", "restarting"):
            return contract.STARTING
        return self.engine_state

    @property
    def supervisor_silent(self) -> float | None:
        """Seconds since the supervisor last wrote the state file, when that is past
        ``contract.HEARTBEAT_STALE`` while the container runs and the agent has not ended: it stopped
        answering (stopped, hung), so nothing the file says holds (a guard that does not run is none)."""
        ts = self.agent_state.get(S.TS)
        if self.engine_state != "running" or not isinstance(ts, (int, float)) or self.agent_state.get(S.ENDED) \
                or self.agent_state.get(S.STATE) in (*contract.TERMINAL, contract.POOLED):
            return None
        silent = time.time() - float(ts)
        return silent if silent > contract.HEARTBEAT_STALE else None

    @property
    def exit_code(self) -> int | None:
        """The agent's last exit code; for a container that died, the container's."""
        code = self.agent_state.get(S.EXIT_CODE)
        if self.engine_state in ("exited", "dead") and self.agent_state.get(S.STATE) not in contract.TERMINAL:
            m = re.match(r"Exited \((-?\d+)\)", self.status)
            return int(m.group(1)) if m else code
        return int(code) if code is not None else None

    @property
    def reason(self) -> str:
        if self.host_reason and self.engine_state in ("exited", "dead"):
            return self.host_reason
        silent = self.supervisor_silent
        if silent is not None:
            return f"the supervisor stopped answering (no heartbeat for {silent:.0f}s)"
        if self.engine_state in ("exited", "dead") and self.state == contract.EXITED \
                and self.agent_state.get(S.STATE) != contract.EXITED:
            return f"container exited ({self.exit_code})"
        return str(self.agent_state.get(S.REASON) or "")

    @property
    def attempt(self) -> int:
        return int(self.agent_state.get(S.ATTEMPT) or 0)

    @property
    def activity(self) -> float | None:
        """Epoch seconds of the agent's last activity (hook event or pane output)."""
        ts = self.agent_state.get(S.ACTIVITY) or self.agent_state.get(S.TS)
        return float(ts) if ts else None

    @property
    def created(self) -> datetime | None:
        raw = self.labels.get(L.CREATED)
        if raw:
            return datetime.fromisoformat(raw)
        return datetime.fromtimestamp(self.container_created, timezone.utc) if self.container_created else None

    @property
    def usage(self) -> dict[str, dict[str, int]]:
        """Model tokens per model (Claude Code's transcript, totalled by its hooks into the state file;
        checked: the state file is the agent's). Empty for agents without hooks."""
        return U.clean(self.agent_state.get(S.USAGE))

    @property
    def tokens(self) -> dict[str, int] | None:
        """Every model's tokens added up; None when the agent reports none (not Claude Code)."""
        used = self.usage
        return U.totals(used) if used else None

    def cost(self, prices: U.Table | None = None) -> U.Cost | None:
        """The cost estimate from the price table ``prices`` (default: ``sandbox.usage.PRICES``); None
        without tokens."""
        used = self.usage
        return U.cost(used, prices or [U.PRICES]) if used else None

    @property
    def agent_user(self) -> str:
        """``UID:GID`` of the agent (``docker exec --user``): what reads or runs as the agent never runs as
        the container's root supervisor (headless too: its init is root, see ``headless.split_uids``). ""
        for a headless container without the uid label (the container's own user)."""
        if self.labels.get(L.MODE) == L.HEADLESS and not self.labels.get(L.UID):
            return ""
        uid = self.labels.get(L.UID) or "1000"
        return f"{uid}:{self.labels.get(L.GID) or uid}"

    def attach_command(self) -> list[str]:
        where = ["--context", self.context] if self.context else []
        return ["docker", *where, "exec", "-it", self.container_name, "tmux", "attach", "-t", self.session]

    def exec_command(self, argv: list[str]) -> list[str]:
        """``docker exec -it`` of ``argv`` in the agent's workspace, as the agent (never its root supervisor)."""
        where = ["--context", self.context] if self.context else []
        user = ["--user", self.agent_user] if self.agent_user else []
        return ["docker", *where, "exec", "-it", *user, "-w", str(self.workspace), self.container_name, *argv]

    def to_json(self, prices: U.Table | None = None) -> dict[str, Any]:
        spent = self.cost(prices)
        return {
            "name": self.name,
            "container": self.container_name,
            "container_id": self.container_id,
            "state": self.state,
            "attempt": self.attempt,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "activity": (datetime.fromtimestamp(self.activity, timezone.utc).isoformat(timespec="seconds")
                         if self.activity else None),
            "engine_state": self.engine_state,
            "status": self.status,
            "agent": self.labels.get(L.AGENT),
            "model": self.labels.get(L.MODEL) or None,
            "branch": self.branch,
            "repo": self.repo or self.labels.get(L.REMOTE, ""),
            "worktree": None if self.headless else str(self.workspace),  # (the first name of "workspace":
            "workspace": str(self.workspace),                             # kept for scripts that read it)
            "mode": self.labels.get(L.MODE) or "workspace",
            "backend": self.labels.get(L.BACKEND) or "local",
            "node": self.node or None,
            "base": self.labels.get(L.BASE),
            "created": self.labels.get(L.CREATED),
            "task": self.task,
            "plan": self.labels.get(L.PLAN) or None,
            "plan_task": self.labels.get(L.PLAN_TASK) or None,
            "plan_attempt": int(self.labels[L.PLAN_ATTEMPT]) if self.labels.get(L.PLAN_ATTEMPT, "").isdigit() else None,
            "session": self.session,
            "attach": " ".join(self.attach_command()),
            "oom_kills": self.pressure.oom_kills if self.pressure else None,
            "pids_limit_hits": self.pressure.pids_refused if self.pressure else None,
            "profile": self.labels.get(L.PROFILE, "default"),
            "stale": self.stale or None,
            "ports": [p.to_json() for p in self.ports],
            "tokens": self.tokens,
            "tokens_by_model": self.usage or None,
            "cost_usd": spent.usd if spent else None,
            "cost_unpriced_models": list(spent.unpriced) if spent else None,
            "max_cost": float(self.labels[L.MAX_COST]) if self.labels.get(L.MAX_COST) else None,
            "prompts": self.agent_state.get(S.PROMPTS) or 0,
            "turns": self.agent_state.get(S.STOPS) or 0,
            **(self.stats.as_dict() if self.stats else
               {"cpu_percent": None, "memory_bytes": None, "memory_limit": None}),
            "agent_state": self.agent_state,
            "labels": self.labels,
        }


def read_state(state_dir: str | None) -> dict[str, Any]:
    """The agent's state file (untrusted: read through ``agentfiles``, never following a link, never
    blocking, capped). Not there yet: {}. There but unreadable: only a ``reason`` saying why."""
    if not state_dir:
        return {}
    state, reason = agentfiles.read_state(state_dir)
    if state is not None:
        return state
    return {} if reason == agentfiles.ABSENT else {"reason": reason}

