"""The domain: a manager (collection) of agent sandboxes (snapshots).

``SandboxManager.spawn`` makes a worktree on a new branch, a container with it mounted, and a
tmux session inside running the agent; a spawn that fails half-way removes what it made.
Everything ``list`` shows comes from one label-filtered engine call plus local state files.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sandbox import agentfiles, cgroups, contract, crash, labels as L, pool, trace as trace_, usage as U
from sandbox.cgroups import Pressure
from sandbox.workspace import git as gitops
from sandbox.contract import CommandResult, S
from sandbox.engine import Engine
from sandbox.errors import AgentError, Conflict, GitError, ImageMissing, NotFound, RepoError, UsageError
from sandbox.workspace.git import BRANCH_PREFIX, WIP_PREFIX
from sandbox.tmux import Tmux

if TYPE_CHECKING:  # pydantic costs ~40 ms to import: `sandbox ls` does without it
    from sandbox import agents, capacity, spec as spec_  # (spawning only: imported there)
    from sandbox.config import Settings
    from sandbox.lightsettings import ManagerSettings

# Finding, listing and talking to agents read only ``ManagerSettings`` (the full ``Settings`` or
# ``lightsettings.LightSettings``); spawning needs the full ``Settings`` (``self: SandboxManager[Settings]``).
SettingsT = TypeVar("SettingsT", bound="ManagerSettings")

STATE_MOUNT = contract.STATE_MOUNT


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

    @property
    def session(self) -> str:
        return self.labels.get(L.SESSION, self.name)

    @property
    def headless(self) -> bool:
        """Started from the image alone (Compose, ``spawn --headless``): no workspace on this host; its
        work is in the branch it pushes."""
        return self.labels.get(L.MODE) == L.HEADLESS

    @property
    def worktree(self) -> Path:
        """The workspace on the host; for a headless agent, its clone inside the container."""
        return Path(self.labels.get(L.WORKTREE) or str(self.agent_state.get("workdir") or "/"))

    @property
    def agent_git(self) -> Path | None:
        """The agent's own git dir on the host (mounted at ``contract.AGENT_GIT``); never run git in it."""
        raw = self.labels.get(L.AGENT_GIT)
        return Path(raw) if raw else None

    @property
    def branch(self) -> str:
        return self.labels.get(L.BRANCH) or str(self.agent_state.get("branch") or "")

    @property
    def task(self) -> str:
        """The task's summary: its label; a headless replica's (one label set for all): its state's."""
        return self.labels.get(L.TASK) or L.summarize(str(self.agent_state.get("task") or ""))

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
            return str(own or contract.STARTING)
        if self.engine_state in ("exited", "dead"):
            return str(own) if own in (contract.STOPPED, contract.FAILED) else contract.EXITED
        if self.engine_state in ("created", "restarting"):
            return contract.STARTING
        return self.engine_state

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

    def attach_command(self) -> list[str]:
        where = ["--context", self.context] if self.context else []
        return ["docker", *where, "exec", "-it", self.container_name, "tmux", "attach", "-t", self.session]

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
            "worktree": None if self.headless else str(self.worktree),
            "workspace": str(self.worktree),
            "mode": self.labels.get(L.MODE) or "workspace",
            "backend": self.labels.get(L.BACKEND) or "local",
            "node": self.node or None,
            "base": self.labels.get(L.BASE),
            "created": self.labels.get(L.CREATED),
            "task": self.task,
            "session": self.session,
            "attach": " ".join(self.attach_command()),
            "oom_kills": self.pressure.oom_kills if self.pressure else None,
            "pids_limit_hits": self.pressure.pids_refused if self.pressure else None,
            "profile": self.labels.get(L.PROFILE, "default"),
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


def _read_state(state_dir: str | None) -> dict[str, Any]:
    """The agent's state file (untrusted: read through ``agentfiles``, never following a link, never
    blocking, capped). Not there yet: {}. There but unreadable: only a ``reason`` saying why."""
    if not state_dir:
        return {}
    state, reason = agentfiles.read_state(state_dir)
    if state is not None:
        return state
    return {} if reason == agentfiles.ABSENT else {"reason": reason}


def _tar(files: dict[str, tuple[bytes, int]], uid: int, gid: int, top: str) -> bytes:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        d = tarfile.TarInfo(top)
        d.type, d.mode, d.uid, d.gid = tarfile.DIRTYPE, 0o700, uid, gid
        tar.addfile(d)
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode, info.uid, info.gid = len(data), mode, uid, gid
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _every_container_of_ours(filters: list[str]) -> list[str]:
    """The engine-side filters that also match claimed warm pool containers (they carry no agent's
    labels): every container with our schema label, of this run id; the rest is for ``L.matches``."""
    return [L.SCHEMA_KEY, *(f for f in filters if f.startswith(L.RUN_ID + "="))]


def _write_state_files(container: spec_.ContainerSpec, uid: int, gid: int) -> None:
    """The spec's ``state_files`` into its state dir, which the host made a moment ago and no agent
    process has seen: created afresh (``O_EXCL``, no link followed), the agent's uid as owner."""
    state_dir = container.state_dir
    for name, (data, mode) in container.state_files().items():
        assert state_dir is not None
        fd = os.open(os.path.join(state_dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            os.write(fd, data)
            if os.getuid() == 0:
                os.fchown(fd, uid, gid)
        finally:
            os.close(fd)


def _chown_tree(uid: int, gid: int, *paths: Path) -> None:
    """Give the agent uid what the host made for it (its workspace and git dir), never following links."""
    for path in paths:
        os.lchown(path, uid, gid)
        for root, dirs, files in os.walk(path):
            for n in dirs + files:
                os.lchown(os.path.join(root, n), uid, gid)


class SandboxManager(Generic[SettingsT]):
    """Create, find and remove agent sandboxes. Holds one engine connection."""

    def __init__(self, settings: SettingsT, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or Engine()
        self._trace: Any = trace_.OFF  # (spawn --trace: a sandbox.trace.Trace)
        self._swarm: Any = None
        self._nodes: dict[str, Engine | None] = {}
        if getattr(settings, "engine", "local") not in ("local", "swarm"):
            raise UsageError(f"engine {settings.engine!r}: local or swarm")

    @property
    def on_swarm(self) -> bool:
        return getattr(self.settings, "engine", "local") == "swarm"

    @property
    def swarm(self) -> Any:
        """The Swarm backend (``sandbox.engine.swarm``), checked once: this engine must manage a swarm."""
        if self._swarm is None:
            from sandbox.engine.swarm import Swarm

            self._swarm = Swarm(self.engine)
            self._swarm.check()
        return self._swarm

    def _containers(self, filters: list[str]) -> list[dict[str, Any]]:
        """The engine side of discovery: this engine's containers, or the swarm's agents. A claimed warm
        pool container counts with the labels of its claim (``sandbox.pool``): then one list of every
        container of ours, and the filters applied here."""
        if self.on_swarm:
            from sandbox.engine.swarm import agent_containers

            return agent_containers(self.engine, self.swarm, filters, self._node_engine)
        claims = pool.claims(self.settings.data_dir)
        if not claims:
            return self.engine.list_containers(filters)
        found = []
        for c in self.engine.list_containers(_every_container_of_ours(filters)):
            labels = c.get("Labels") or {}
            if L.POOL_SLOT in labels:
                if labels[L.POOL_SLOT] not in claims:
                    continue  # (in the pool: not an agent)
                c = {**c, "Labels": claims[labels[L.POOL_SLOT]]}
            if L.matches(c["Labels"], filters):
                found.append(c)
        return found

    def _node_engine(self, context: str) -> Engine | None:
        """The engine of another swarm node, through the Docker context of that name (None: none)."""
        from sandbox.engine import context_host

        if context not in self._nodes:
            host = context_host(context)
            self._nodes[context] = Engine(base_url=host) if host else None
        return self._nodes[context]

    def engine_for(self, sb: Sandbox) -> Engine:
        """The engine that runs ``sb``'s container: this one, or its swarm node's."""
        return (self._node_engine(sb.context) if sb.context else None) or self.engine

    # -- finding -----------------------------------------------------------------------------
    def _filters(self, *extra: str, any_run: bool = False) -> list[str]:
        filters = L.managed_filter(*extra)
        if self.settings.run_id and not any_run:
            filters.append(f"{L.RUN_ID}={self.settings.run_id}")
        return filters

    def _snapshot(self, c: dict[str, Any]) -> Sandbox:
        lab = dict(c.get("Labels") or {})
        container_name = (c.get("Names") or ["/?"])[0].lstrip("/")
        return Sandbox(
            name=L.name_of(lab, container_name),
            container_id=c["Id"],
            container_name=container_name,
            labels=lab,
            engine_state=c.get("State", ""),
            status=c.get("Status", ""),
            agent_state=_read_state(lab.get(L.STATE_DIR)),
            image_id=str(c.get("ImageID") or ""),
            pressure=cgroups.pressure(str(c["Id"])) if c.get("State") == "running" else None,
            container_created=float(c.get("Created") or 0),
            node=str(c.get("Node") or ""),
            context=str(c.get("Context") or ""),
        )

    def list(self, repo: Path | None = None, *, exec_state: bool = False, sync: bool = True,
             any_run: bool = False) -> list[Sandbox]:
        """Every managed agent (of one repository when ``repo`` is given): one engine call.

        ``exec_state``: for a running agent whose state file this host cannot read (a remote
        engine), read it with one exec into that container. ``any_run``: also agents of other run
        ids (see ``Settings.run_id``). ``sync``: first bring over the commits
        of agents whose git changed (``refresh_branches``), so ``git log sandbox/NAME`` is current.
        """
        extra = [f"{L.REPO}={repo}"] if repo and not self.on_swarm else []  # (the swarm's agents clone: no repo here)
        found = [self._snapshot(c) for c in self._containers(self._filters(*extra, any_run=any_run))]
        if sync:
            self.refresh_branches(found)
        # (a headless agent without a state dir on this host, e.g. from Compose: its state by one exec)
        def needs_exec(sb: Sandbox) -> bool:
            return bool(exec_state or (sb.headless and not sb.labels.get(L.STATE_DIR))
                        or (sb.labels.get(L.STATE_DIR) and not os.path.isdir(sb.labels[L.STATE_DIR])))  # (remote)

        if sum(map(needs_exec, found)) > 1:  # one exec each, side by side
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=8) as pool:
                found = list(pool.map(lambda sb: self.with_exec_state(sb) if needs_exec(sb) else sb, found))
        else:
            found = [self.with_exec_state(sb) if needs_exec(sb) else sb for sb in found]
        return sorted(found, key=lambda s: (s.labels.get(L.CREATED, ""), s.name))

    def event_filters(self) -> list[str]:
        """The label filters of this manager's agents (managed, this run id): for ``Engine.events``;
        with warm pool agents about, every container of ours (a claimed one has no agent's labels)."""
        if pool.claims(self.settings.data_dir):
            return _every_container_of_ours(self._filters())
        return self._filters()

    def refreshed(self, sb: Sandbox) -> Sandbox:
        """``sb`` with its state file read again (local, no engine call; the container's state as it
        was). A file this host cannot read (remote engine) leaves the state as it was."""
        state = _read_state(sb.labels.get(L.STATE_DIR))
        return replace(sb, agent_state=state) if state else sb

    def with_exec_state(self, sb: Sandbox) -> Sandbox:
        if sb.agent_state or sb.engine_state != "running":
            return sb
        try:
            res = self.engine_for(sb).exec_retried(sb.container_id, agentfiles.exec_argv(f"{STATE_MOUNT}/state.json",
                                                                                  agentfiles.STATE_CAP))
        except (Conflict, NotFound):  # it stopped between the list and the exec: no state to read
            return sb
        state = None
        if res.exit_code == 0 and len(res.stdout) <= agentfiles.STATE_CAP:
            state, _ = agentfiles.parse_state(res.stdout)
        return replace(sb, agent_state=state or {})

    def with_stats(self, found: list[Sandbox], *, workers: int = 8) -> list[Sandbox]:
        """The snapshots with their containers' CPU and memory (running ones): one stats request per
        agent, side by side and bounded (``Engine.stats_many``: at most ``workers`` at once, each
        ~2 s: the engine's two samples for the CPU figure)."""
        running = [sb.container_id for sb in found if sb.engine_state == "running"]
        answers = self.engine.stats_many(running, workers=workers, one_shot=False)
        return [replace(sb, stats=U.from_answer(answers.get(sb.container_id))) if sb.container_id in answers else sb
                for sb in found]

    def get(self, name: str) -> Sandbox:
        found = self._containers(self._filters(f"{L.NAME}={name}"))
        if found:
            sb = self._snapshot(found[0])
            return self.with_exec_state(sb) if self.on_swarm else sb
        # A headless agent without a name label (a Compose replica): PROJECT-SERVICE-NUMBER, or its
        # container's name (Compose v1: PROJECT_SERVICE_NUMBER).
        for c in self.engine.list_containers(self._filters(f"{L.MODE}={L.HEADLESS}")):
            sb = self._snapshot(c)
            if name in (sb.name, sb.container_name) and not sb.labels.get(L.NAME):
                return self.with_exec_state(sb) if not sb.labels.get(L.STATE_DIR) else sb
        raise NotFound(f"no agent named {name!r}", hint="see `sandbox ls --all`")

    # -- spawning ----------------------------------------------------------------------------
    def _allocate_name(self, prefix: str, skip: set[str] | None = None) -> str:
        """The first free ``prefix-N``: no agent has it (on the engine), nor was it just tried (``skip``)."""
        taken = {c.get("Labels", {}).get(L.NAME) for c in self._containers(L.managed_filter())}
        taken |= skip or set()
        n = 1
        while f"{prefix}-{n}" in taken:
            n += 1
        return f"{prefix}-{n}"

    def spawn(
        self: SandboxManager[Settings],
        task: str | None,
        *,
        repo_path: Path | None = None,
        name: str | None = None,
        agent: str | None = None,
        model: str | None = None,
        agent_cmd: str | None = None,
        base: str | None = None,
        mock_script: dict[str, Any] | None = None,
        wait_ready: bool = True,
        on_step: Callable[[str], None] | None = None,
        queue: bool = False,
        trace: Any = None,
    ) -> Sandbox:
        from sandbox import agents, capacity

        s = self.settings
        step = on_step or (lambda _msg: None)
        self._trace = trace or trace_.OFF
        agent = agent or s.agent
        model = model if model is not None else s.model
        if name is not None:
            agents.check_name(name)
        if task is not None:
            agents.check_task(task)
        spec = agents.build(agent, model, task if agent_cmd is None else None, agent_cmd)
        if agent_cmd is not None:
            spec = agents.AgentSpec(spec.name, spec.argv, "type")
        if self.on_swarm:
            raise UsageError("on the swarm an agent clones its repository: a node far away has neither your "
                             "workspace nor its .git", hint='sandbox --engine swarm spawn --repo-url URL "the task"')
        from sandbox.engine import remote_engine

        if (remote := remote_engine()) is not None:
            raise UsageError(f"the engine at {remote} runs on another host: it cannot mount a workspace from here",
                             hint='use the clone mode: sandbox spawn --headless --repo-url URL "the task"')
        repo = gitops.find_repo(repo_path or Path.cwd())
        base_sha = gitops.resolve_commit(repo, base or "HEAD")
        image_id = self.engine.image_id(s.image)
        if image_id is None:
            raise ImageMissing(f"agent image {s.image} is not built", hint="run `sandbox image build`")

        self._trace.mark("resolve")
        explicit = name is not None
        prefix = agents.name_prefix(Path(spec.binary).name if agent_cmd is not None else spec.name, model)
        name = name or self._allocate_name(prefix)
        self._trace.mark("name")
        if s.max_agents is not None:
            step(f"waiting for a free slot (max {s.max_agents} agents)" if queue else "checking capacity")
        tried: set[str] = set()
        with capacity.Slot(s.data_dir / "capacity.lock", s.max_agents, self.working_count, queue=queue,
                           timeout=s.queue_timeout) as slot:
            for _ in range(50):
                try:
                    return self._spawn_named(name, spec, task, model, repo, base_sha, image_id, mock_script,
                                             wait_ready, step, slot, explicit)
                except _NameTaken:
                    if explicit:
                        raise Conflict(f"name {name!r} is taken", hint="pick another with --name") from None
                    tried.add(name)
                    name = self._allocate_name(prefix, tried)
        raise Conflict("could not find a free name; pass --name")

    def spawn_headless(
        self: SandboxManager[Settings],
        task: str | None,
        *,
        repo_url: str,
        name: str | None = None,
        agent: str | None = None,
        model: str | None = None,
        agent_cmd: str | None = None,
        base: str | None = None,
        branch: str | None = None,
        git_token_file: Path | None = None,
        mock_script: dict[str, Any] | None = None,
        wait_ready: bool = True,
        on_step: Callable[[str], None] | None = None,
    ) -> Sandbox:
        """Run the image's headless mode on this engine (``sandbox spawn --headless``): the agent clones
        ``repo_url`` in its container and pushes its work there; nothing of it on this host but its
        state dir. The same container a Cloud Run-like host runs (``spec.build_headless``)."""
        from sandbox import agents, spec as spec_
        from sandbox.inside import headless

        s = self.settings
        step = on_step or (lambda _msg: None)
        if not task or not task.strip():
            raise UsageError("a headless agent needs a task", hint='sandbox spawn --headless --repo-url URL "the task"')
        if name is not None:
            agents.check_name(name)
        agent = agent or s.agent
        model = model if model is not None else s.model
        aspec = agents.build(agent, model, task if agent_cmd is None else None, agent_cmd)
        token = ""
        if git_token_file is not None:
            try:
                token = git_token_file.read_text().strip()
            except OSError as e:
                raise UsageError(f"--git-token-file {git_token_file}: {e.strerror}") from None
        image_id = self.engine.image_id(s.image)
        if image_id is None:
            raise ImageMissing(f"agent image {s.image} is not built", hint="run `sandbox image build`")
        uid, gid = s.uid_gid()
        if uid == 0:
            raise UsageError("the agent never runs as root: set SANDBOX_AGENT_UID to a non-zero uid")
        secrets, use_mock = self._secrets(aspec)
        explicit = name is not None
        name = name or self._allocate_name(agents.name_prefix(
            Path(aspec.binary).name if agent_cmd is not None else aspec.name, model))
        if self._containers(L.managed_filter(f"{L.NAME}={name}")):
            raise Conflict(f"name {name!r} is taken", hint="pick another with --name")
        state_dir = s.data_dir / "state" / name
        req = spec_.HeadlessRequest(
            name=name, agent=aspec, model=model, task=task, repo_url=repo_url, branch=branch or BRANCH_PREFIX + name,
            base=base, image_id=image_id, image_ref=s.image, uid=uid, gid=gid,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), state_dir=state_dir, retries=s.retries,
            max_time=s.max_time, memory=s.memory_limit(), nano_cpus=int(s.cpus * 1e9) if s.cpus else 0,
            pids_limit=s.pids_limit, network=s.network, run_id=s.run_id, use_mock=use_mock, mock_script=mock_script,
            agent_cmd=agent_cmd, git_token=token, api_key=secrets.get("ANTHROPIC_API_KEY", ""))
        container = spec_.build_headless(req)
        try:  # the image's own rules, checked here first: a bad value is refused before anything exists
            headless.configure({**{k: v for k, v in container.env.items() if not k.endswith("_FILE")}, "HOME": "/tmp"})
        except headless.Failure as e:
            raise UsageError(str(e)) from None
        if self.on_swarm:
            return self._spawn_on_swarm(container, wait_ready, step)
        from sandbox import capacity

        with ExitStack() as undo, capacity.Slot(s.data_dir / "capacity.lock", s.max_agents, self.working_count) as slot:
            if state_dir.exists() and not explicit:
                shutil.rmtree(state_dir)
            state_dir.mkdir(parents=True, exist_ok=True)
            undo.callback(shutil.rmtree, state_dir, True)
            if os.getuid() == 0:
                os.chown(state_dir, uid, gid)
            step(f"container {container.name} (headless: {repo_url} -> {req.branch})")
            try:
                self._run(container, undo, slot)
            except _NameTaken:
                raise Conflict(f"name {name!r} is taken", hint="pick another with --name") from None
            sandbox = self.get(name)
            if wait_ready:
                step("waiting for the agent to be ready")
                sandbox = self.wait_ready(sandbox)
            undo.pop_all()
            return sandbox
        raise AssertionError("unreachable")

    def _spawn_on_swarm(self: SandboxManager[Settings], container: spec_.ContainerSpec, wait_ready: bool,
                        step: Callable[[str], None]) -> Sandbox:
        """A headless agent as a one-replica Swarm service: its secrets as Swarm secrets, its state in
        a tmpfs of its own (read with one exec), and every attempt a retry (a task Swarm restarts is a
        new container with the same environment: it resumes from the branch it pushed)."""
        name = container.labels[L.NAME]
        labels = {k: v for k, v in container.labels.items() if k != L.STATE_DIR}
        labels[L.BACKEND] = L.SWARM
        files = container.files()
        spec = replace(container, labels=labels, binds=(), volumes=(),
                       tmpfs={**container.tmpfs, STATE_MOUNT: "rw,size=16m"},
                       env={**container.env, "SANDBOX_ATTEMPT": "1"})
        with ExitStack() as undo:
            network = self.swarm.ensure_network(self.settings.swarm_network)
            step(f"service {spec.name} on the swarm (headless: {labels.get(L.REMOTE)} -> {labels.get(L.BRANCH)})")
            service = self.swarm.create(spec, network=network, secrets={k: v for k, (v, _) in files.items()},
                                        constraints=[])
            undo.callback(self.swarm.remove, service, name)
            sandbox = self.get(name)
            if wait_ready:
                step("waiting for the agent to be ready")
                sandbox = self.wait_ready(sandbox)
            undo.pop_all()
            return sandbox
        raise AssertionError("unreachable")

    def working_count(self) -> int:
        """Agents holding a capacity slot: starting, busy or waiting (one engine call)."""
        from sandbox.capacity import WORKING

        return sum(1 for sb in self.list(sync=False) if sb.state in WORKING)

    def _spawn_named(
        self: SandboxManager[Settings],
        name: str,
        agent: agents.AgentSpec,
        task: str | None,
        model: str | None,
        repo: gitops.Repo,
        base_sha: str,
        image_id: str,
        mock_script: dict[str, Any] | None,
        wait_ready: bool,
        step: Callable[[str], None],
        slot: capacity.Slot,
        explicit: bool,
    ) -> Sandbox:
        s = self.settings
        with _SpawnLock(s.data_dir, name) as held:
            if not held:
                raise _NameTaken(name)  # another spawn on this host is making this name
            return self._spawn_locked(name, agent, task, model, repo, base_sha, image_id, mock_script,
                                      wait_ready, step, slot, explicit)

    def spawning(self, name: str) -> bool:
        """Is a spawn of ``name`` running on this host (its lock held)? ``gc`` leaves what it makes alone."""
        return _SpawnLock.held(self.settings.data_dir, name)

    def _spawn_locked(
        self: SandboxManager[Settings],
        name: str,
        agent: agents.AgentSpec,
        task: str | None,
        model: str | None,
        repo: gitops.Repo,
        base_sha: str,
        image_id: str,
        mock_script: dict[str, Any] | None,
        wait_ready: bool,
        step: Callable[[str], None],
        slot: capacity.Slot,
        explicit: bool,
    ) -> Sandbox:
        s = self.settings
        if self._containers(L.managed_filter(f"{L.NAME}={name}")):
            raise _NameTaken(name)
        branch = BRANCH_PREFIX + name
        worktree = s.data_dir / "workspaces" / repo.slug / name
        agent_git = s.data_dir / "agent-git" / repo.slug / name
        state_dir = s.data_dir / "state" / name
        for path in (worktree, agent_git):
            if path.exists() or path.is_symlink():
                if not explicit:  # a parallel spawn took this name a moment ago: the next one
                    raise _NameTaken(name)
                raise RepoError(f"path already exists: {path}", hint="remove it or pick another --name")
        branches = gitops.heads(repo)
        if branch in branches:
            if not explicit:  # kept by an earlier agent of that name (rm keeps branches): the next name
                raise _NameTaken(name)
            raise Conflict(f"branch {branch} already exists in {repo.top}", hint="pick another --name")
        uid, gid = s.uid_gid()
        if uid == 0:
            raise UsageError("the agent never runs as root: set SANDBOX_AGENT_UID to a non-zero uid")
        from sandbox import spec as spec_

        ws = spec_.Workspace(path=worktree, agent_git=agent_git, objects=repo.common_dir / "objects",
                             state_dir=state_dir)
        req = self._request(name, agent, model, task, repo, branch, base_sha, image_id, mock_script, uid, gid)
        container = spec_.build(req, ws)
        if s.runtime and s.runtime not in (known := self.engine.runtimes()):
            raise UsageError(f"the engine has no runtime {s.runtime!r} (it has: {', '.join(known) or 'none'})",
                             hint="install and register it with the engine (daemon.json `runtimes`), or unset runtime")

        self._trace.mark("spec")
        if container.isolation is None and pool.root(s.data_dir).is_dir():
            key = pool.key_of(spec_.pool_parts(container, ws))
            while (found := self._take_slot(key)) is not None:
                warm = self._spawn_warm(found, req, repo, wait_ready, step, slot, branches)
                if warm is not None:
                    self._top_up_later(key, repo)
                    return warm
        with ExitStack() as undo:
            step(f"workspace {worktree} on branch {branch}")
            self._make_workspace(repo, ws, branch, base_sha, uid, gid, undo, name=name, branches=branches)
            self._trace.mark("workspace")
            crash.point("spawn:workspace")
            step(f"container {container.name}")
            self._run(container, undo, slot)
            crash.point("spawn:start")
            sandbox = self._until_ready(name, wait_ready, step)
            undo.pop_all()
            return sandbox
        raise AssertionError("unreachable")

    def _until_ready(self, name: str, wait_ready: bool, step: Callable[[str], None]) -> Sandbox:
        """Spawn, last step: the new agent's snapshot, once it accepts input (``wait_ready``)."""
        sandbox = self.get(name)
        self._trace.mark("get")
        if wait_ready:
            step("waiting for the agent to be ready")
            sandbox = self.wait_ready(sandbox)
            self._trace.mark("ready")
        crash.point("spawn:ready")
        return sandbox

    def _request(self: SandboxManager[Settings], name: str, agent: agents.AgentSpec, model: str | None,
                 task: str | None, repo: gitops.Repo, branch: str, base_sha: str, image_id: str,
                 mock_script: dict[str, Any] | None, uid: int, gid: int) -> spec_.Request:
        """The spawn's request, the settings applied."""
        from sandbox import spec as spec_

        s = self.settings
        secrets, use_mock = self._secrets(agent)
        return spec_.Request(
            name=name, agent=agent, model=model, task=task, repo_top=repo.top, common_dir=repo.common_dir,
            branch=branch, base=base_sha, image_id=image_id, image_ref=s.image, profile=s.profile, uid=uid,
            gid=gid, created=datetime.now(timezone.utc).isoformat(timespec="seconds"), retries=s.retries,
            retry_backoff=s.retry_backoff, max_time=s.max_time, idle_timeout=s.idle_timeout,
            memory=s.memory_limit(), nano_cpus=int(s.cpus * 1e9) if s.cpus else 0, pids_limit=s.pids_limit,
            network=s.network, run_id=s.run_id, use_mock=use_mock, mock_script=mock_script,
            git_identity=self._git_identity(repo), secrets=secrets, nofile=s.nofile, runtime=s.runtime,
            allow=tuple(s.allow), model_upstream=s.model_upstream, egress_network=s.egress_network,
            max_cost=s.max_cost, prices=s.price_table() if s.max_cost else None)

    def _make_workspace(self, repo: gitops.Repo, ws: spec_.Workspace, branch: str, base: str, uid: int, gid: int,
                        undo: ExitStack, *, name: str, fresh: bool = True,
                        branches: dict[str, str] | None = None) -> None:
        """The host branch, the agent's own repository and workspace, its state dir (each undone on
        failure). A pool's slot (``fresh=False``) has its directories, ``.git`` file and state dir
        already, mounted in its container."""
        gitops.branch_create(repo, branch, base)
        undo.callback(gitops.branch_delete, repo, branch)
        undo.callback(shutil.rmtree, ws.agent_git, True)
        undo.callback(shutil.rmtree, ws.path, True)
        gitops.workspace_create(repo, ws.path, ws.agent_git, branch, base, branches)
        if fresh:
            (ws.path / ".git").write_text(contract.GITFILE)
        if os.getuid() == 0:
            _chown_tree(uid, gid, ws.path, ws.agent_git)  # (the .git file too: git checks its owner; it is mounted ro)
        self._sync_mark(name, ws.agent_git)
        self._record_repo(repo)
        if not fresh:
            return
        if ws.state_dir.exists():
            shutil.rmtree(ws.state_dir)
        ws.state_dir.mkdir(parents=True)
        if os.getuid() == 0:
            os.chown(ws.state_dir, uid, gid)
        undo.callback(shutil.rmtree, ws.state_dir, True)

    def _run(self: SandboxManager[Settings], container: spec_.ContainerSpec, undo: ExitStack, slot: capacity.Slot) -> str:
        """Spawn, second half: create what the spec says, copy the launch files in, start it."""
        network_id = None
        if container.isolation is not None:
            from sandbox import isolation

            network_id = isolation.make(self.engine, container, self.settings.network, undo)
        elif not container.network.disabled:
            network_id = self.engine.ensure_network(container.network.name, {L.MANAGED: "1"},
                                                    icc=not container.network.isolated)
        self._trace.mark("network")
        try:
            cid = self.engine.create_from(container, network_id)
        except Conflict:
            raise _NameTaken(container.labels[L.NAME]) from None
        undo.callback(self.engine.remove, cid)
        self._trace.mark("create")
        crash.point("spawn:create")
        slot.recheck()
        self._hand_over(container, cid)
        self._trace.mark("copy")
        self.engine.start(cid)
        self._trace.mark("start")
        slot.release()  # the new agent is `starting` now: it counts itself
        return cid

    def _hand_over(self, container: spec_.ContainerSpec, cid: str) -> None:
        """What the init reads at its start: the launch document onto the state mount, the secrets (if
        any) by ``put_archive`` into the launch dir — never onto a mount."""
        uid, gid = container.user
        _write_state_files(container, uid, gid)
        if files := container.files():
            self.engine.put_archive(cid, contract.LAUNCH_DIR, _tar(files, uid, gid, "."))

    # -- the warm pool (sandbox.pool: the slots on this host; the containers on the engine) -------------
    def _take_slot(self, key: str) -> pool.Slot | None:
        """Claim the oldest started, unclaimed slot of pool ``key`` (None: the pool is empty)."""
        for found in pool.slots(self.settings.data_dir, key):
            if found.claimed or _read_state(str(found.state_dir)).get(S.STATE) != contract.POOLED:
                continue
            if pool.claim(found):
                return found
        return None

    def _spawn_warm(self: SandboxManager[Settings], found: pool.Slot, req: spec_.Request, repo: gitops.Repo,
                    wait_ready: bool, step: Callable[[str], None], cap: capacity.Slot,
                    branches: dict[str, str]) -> Sandbox | None:
        """Spawn into a claimed pool slot: its container takes the agent's name (the engine's names are
        unique: a taken one is ``_NameTaken``), the host makes the workspace in the slot's mounted
        directories, writes the launch document on its state mount and the claim (the agent's labels)
        beside the slot, and signals the waiting init. None: the slot's container is gone (dropped)."""
        from sandbox import spec as spec_

        ws = spec_.Workspace(path=found.workspace, agent_git=found.agent_git, objects=repo.common_dir / "objects",
                             state_dir=found.state_dir)
        container = spec_.build(req, ws)
        cid = found.container_id()
        try:
            if cid is None:
                raise NotFound("no container recorded")
            self.engine.rename(cid, container.name)
        except Conflict:
            pool.unclaim(found)
            raise _NameTaken(req.name) from None
        except NotFound:
            pool.drop_slot(found)
            return None
        self._trace.mark("claim")
        with ExitStack() as undo:
            undo.callback(pool.drop_slot, found)
            undo.callback(self.engine.remove, cid)
            step(f"workspace {ws.path} on branch {req.branch} (warm pool)")
            self._make_workspace(repo, ws, req.branch, req.base, req.uid, req.gid, undo, name=req.name,
                                 fresh=False, branches=branches)
            self._trace.mark("workspace")
            crash.point("spawn:workspace")
            self._hand_over(container, cid)
            pool.record_claim(found, {**container.labels, L.POOL: found.key, L.POOL_SLOT: found.id})
            cap.recheck()
            self.engine.signal(cid, contract.WAKE_SIGNAL)  # (tini passes it on to the init)
            cap.release()
            self._trace.mark("signal")
            crash.point("spawn:start")
            sandbox = self._until_ready(req.name, wait_ready, step)
            undo.pop_all()
            return sandbox
        raise AssertionError("unreachable")

    def _top_up_later(self, key: str, repo: gitops.Repo) -> None:
        """Top the pool up in the background: one short-lived ``sandbox pool --top-up KEY`` (no daemon),
        detached; it does nothing when another is at it or the pool is full."""
        import subprocess
        import sys

        subprocess.Popen([sys.executable, "-m", "sandbox", "pool", "--top-up", key], cwd=repo.top,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)

    def pool_key(self: SandboxManager[Settings], repo: gitops.Repo) -> tuple[str, Callable[[pool.Slot], spec_.ContainerSpec]]:
        """(the key of this repository's pool under these settings, a slot -> its container's spec)."""
        from sandbox import agents, spec as spec_

        s = self.settings
        image_id = self.engine.image_id(s.image)
        if image_id is None:
            raise ImageMissing(f"agent image {s.image} is not built", hint="run `sandbox image build`")
        uid, gid = s.uid_gid()
        if uid == 0:
            raise UsageError("the agent never runs as root: set SANDBOX_AGENT_UID to a non-zero uid")
        if s.profile == "isolated":
            raise UsageError("the isolated profile has no warm pool: its network and proxies are each agent's own",
                             hint="pool the default or the locked profile")
        # (what a slot's container fixes at create time only: the agent, base and task come with the claim)
        req0 = self._request("pool", agents.build(s.agent, s.model, None, None), s.model, None, repo,
                             BRANCH_PREFIX + "pool", "0" * 40, image_id, None, uid, gid)

        def for_slot(found: pool.Slot) -> tuple[spec_.ContainerSpec, spec_.Workspace]:
            ws = spec_.Workspace(path=found.workspace, agent_git=found.agent_git,
                                 objects=repo.common_dir / "objects", state_dir=found.state_dir)
            return spec_.build(replace(req0, name=found.id, branch=BRANCH_PREFIX + found.id), ws), ws

        probe = pool.Slot("", "probe", s.data_dir / "pool" / "probe")
        spec0, ws0 = for_slot(probe)
        key = pool.key_of(spec_.pool_parts(spec0, ws0))
        return key, lambda found: spec_.pooled(for_slot(found)[0], key, found.id)

    def pool_set(self: SandboxManager[Settings], repo: gitops.Repo, size: int, flags: dict[str, Any],
                 on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Keep ``size`` started, unclaimed containers for this repository and these settings (0: none);
        fills (or drains) now and waits until they are ready."""
        if size < 0:
            raise UsageError("--size must be 0 or more")
        key, _ = self.pool_key(repo)
        record = {"size": size, "repo": str(repo.top), "flags": flags, "image": self.settings.image,
                  "profile": self.settings.profile}
        pool.write_record(self.settings.data_dir, key, record)
        for other, was in pool.records(self.settings.data_dir).items():  # the same pool made before the image
            if other != key and all(was.get(f) == record[f] for f in ("repo", "image", "profile")):  # or settings changed
                pool.write_record(self.settings.data_dir, other, {**was, "size": 0})
                self.pool_fill(other, repo, wait=True, on_step=on_step)
        self.pool_fill(key, repo, wait=True, on_step=on_step)
        return self.pool_status(key)

    def pool_fill(self: SandboxManager[Settings], key: str, repo: gitops.Repo, *, wait: bool,
                  on_step: Callable[[str], None] | None = None) -> None:
        """Bring pool ``key`` to its size: drop slots whose container is gone or stopped, remove the
        unclaimed ones above the size, start new ones. One process at a time (the fill lock; another
        filler at work: ``wait=False`` returns at once)."""
        from sandbox import spec as spec_

        data = self.settings.data_dir
        step = on_step or (lambda _m: None)
        with pool.FillLock(data, key, wait=wait) as mine:
            if not mine:
                return
            record = pool.read_record(data, key) or {"size": 0}
            now_key, make = self.pool_key(repo) if record.get("size") else (key, None)
            if now_key != key:  # the settings changed since the pool was made: it serves nobody now
                record = {**record, "size": 0}
            running = {c["Id"]: c for c in self.engine.list_containers([f"{L.POOL}={key}"])}
            free = []
            for found in pool.slots(data, key):
                if found.claimed:
                    continue
                cid = found.container_id()
                c = running.get(cid or "")
                if c is None or c.get("State") not in ("running", "created"):
                    if pool.claim(found):
                        if cid:
                            self.engine.remove(cid)
                        pool.drop_slot(found)
                    continue
                free.append(found)
            for extra in free[int(record.get("size") or 0):]:
                if pool.claim(extra):
                    step(f"removing {extra.id}")
                    self.engine.remove(extra.container_id() or spec_.POOL_CONTAINER_PREFIX + extra.id)
                    pool.drop_slot(extra)
            started = []
            while make is not None and len(free) + len(started) < int(record.get("size") or 0):
                uid, gid = self.settings.uid_gid()
                found = pool.new_slot(data, key, uid, gid)
                step(f"starting {found.id} ({len(free) + len(started) + 1}/{record['size']})")
                container_name = spec_.POOL_CONTAINER_PREFIX + found.id
                try:
                    container = make(found)
                    network_id = None
                    if not container.network.disabled:
                        network_id = self.engine.ensure_network(container.network.name, {L.MANAGED: "1"},
                                                                icc=not container.network.isolated)
                    cid = self.engine.create_from(container, network_id)
                    (found.dir / "container").write_text(cid)
                    self.engine.start(cid)
                except BaseException:
                    self.engine.remove(found.container_id() or container_name)
                    pool.drop_slot(found)
                    raise
                started.append(found)
            if not int(record.get("size") or 0) and not pool.slots(data, key):
                shutil.rmtree(pool.pool_dir(data, key), ignore_errors=True)  # (emptied: no pool left to show)
            deadline = time.monotonic() + self.settings.ready_timeout
            while wait and started and time.monotonic() < deadline:
                started = [f for f in started if _read_state(str(f.state_dir)).get(S.STATE) != contract.POOLED]
                time.sleep(0.05)

    def pool_status(self, key: str | None = None) -> dict[str, Any]:
        """Every pool on this host (or pool ``key``): its record and its slots' counts — ``ready``
        (started, waiting for a claim), ``starting``, ``claimed``."""
        data = self.settings.data_dir
        out = []
        for k, record in pool.records(data).items():
            if key is not None and k != key:
                continue
            counts = {"ready": 0, "starting": 0, "claimed": 0}
            found_slots = pool.slots(data, k)
            if not record.get("size") and not found_slots and key is None:
                continue  # (an emptied pool: nothing to show)
            for found in found_slots:
                if found.claimed:
                    counts["claimed"] += 1
                elif _read_state(str(found.state_dir)).get(S.STATE) == contract.POOLED:
                    counts["ready"] += 1
                else:
                    counts["starting"] += 1
            out.append({"key": k, **{f: record.get(f) for f in ("size", "repo", "image", "profile")}, **counts})
        if key is not None:
            return out[0] if out else {"key": key, "size": 0, "repo": None, "image": None, "profile": None,
                                       "ready": 0, "starting": 0, "claimed": 0}
        return {"pools": out, "ready": sum(p["ready"] for p in out)}

    def proxies(self, name: str) -> list[dict[str, Any]]:
        """An isolated agent's proxy containers (none for other profiles), by label."""
        from sandbox import isolation

        return isolation.proxies(self.engine, name)

    def drop_isolation(self, name: str) -> None:
        """Remove an isolated agent's proxies and network (``sandbox.isolation.drop``)."""
        from sandbox import isolation

        isolation.drop(self.engine, name)

    def netlog(self, sb: Sandbox) -> list[Any]:
        """What an isolated agent's proxies saw (``sandbox.isolation.netlog``)."""
        from sandbox import isolation

        return isolation.netlog(self.engine, sb.name)

    def _secrets(self: SandboxManager[Settings], agent: agents.AgentSpec) -> tuple[dict[str, str], bool]:
        secrets = {k: os.environ[k] for k in self.settings.secret_env if os.environ.get(k)}
        mode = self.settings.mock_model
        has_key = any(k in secrets for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"))
        use_mock = agent.claude and (mode == "on" or (mode == "auto" and not has_key))
        return secrets, use_mock

    @staticmethod
    def _git_identity(repo: gitops.Repo) -> dict[str, str]:
        proc = gitops.git(repo.top, "config", "--get-regexp", r"^user\.(name|email)$", check=False)
        ident = {}
        for line in proc.stdout.splitlines():
            key, _, value = line.partition(" ")
            ident[key.split(".", 1)[1]] = value
        return ident

    def wait_ready(self, sandbox: Sandbox, timeout: float | None = None, since: float = 0.0) -> Sandbox:
        """Poll the local state file (no engine call) until the agent accepts input.

        States written before ``since`` (a previous run of the container) are ignored.
        """
        timeout = timeout if timeout is not None else self.settings.ready_timeout
        state_dir = sandbox.labels.get(L.STATE_DIR)
        deadline = time.monotonic() + timeout
        delay = 0.002
        checks = 0
        while True:
            # (no state dir here: a Compose replica's state file, read in its container)
            state = _read_state(state_dir) if state_dir else self.get(sandbox.name).agent_state
            st = state.get(S.STATE) if float(state.get(S.TS) or 0) >= since else None
            if st in contract.ACCEPTS_INPUT or (st == contract.EXITED and state.get(S.EXIT_CODE) == 0):
                return self.get(sandbox.name)  # (a quick agent may have started and finished already)
            if st in contract.TERMINAL:
                raise AgentError(f"agent {sandbox.name} did not start: {state.get(S.REASON) or st}")
            checks += 1
            if checks % 20 == 0:  # now and then, make sure the container is still there
                current = self.get(sandbox.name)
                if current.engine_state not in ("running", "created"):
                    tail = self.engine.logs(current.container_id, tail=20).strip().splitlines()
                    raise AgentError(f"agent {sandbox.name} stopped while starting: "
                                     f"{tail[-1] if tail else current.status}")
            if time.monotonic() > deadline:
                raise AgentError(f"agent {sandbox.name} not ready after {timeout:.0f}s",
                                 hint=f"see `sandbox logs {sandbox.name}`")
            time.sleep(delay)
            delay = min(delay * 1.25, 0.025)  # a local file read: polling often costs nothing, late costs latency

    # -- talking to an agent -------------------------------------------------------------------
    def require_running(self, name: str) -> Sandbox:
        """The agent, which must be running (one engine call)."""
        sb = self.get(name)
        if sb.engine_state != "running":
            raise AgentError(f"agent {name} is not running ({sb.state})", hint=f"`sandbox start {name}`")
        return sb

    def tmux(self, sb: Sandbox) -> Tmux:
        return Tmux(_DockerExecutor(self.engine_for(sb), sb.container_id), sb.session)

    def send(self, name: str, text: str, *, enter: bool = True, sb: Sandbox | None = None) -> Sandbox:
        """Type ``text`` into the agent's pane (after it is ready); ``sb``: a fresh snapshot already at hand."""
        sb = sb or self.require_running(name)
        if sb.state == "starting":
            sb = self.wait_ready(sb)
        self.tmux(sb).send(text, enter=enter)
        return sb

    def logs(self, name: str, lines: int | None = None) -> str:
        sb = self.require_running(name)
        return self.tmux(sb).capture(lines)

    def follow(self, name: str, interval: float = 0.5) -> Iterator[str]:
        """Yield new pane lines as they appear (until the agent stops)."""
        sb = self.require_running(name)
        tm = self.tmux(sb)
        seen: list[str] = []
        while True:
            lines = tm.capture(2000).splitlines()
            common = 0
            if seen:
                # find where the previous tail continues
                for k in range(min(len(seen), len(lines)), 0, -1):
                    if lines[:k] == seen[-k:]:
                        common = k
                        break
            for line in lines[common:]:
                yield line
            seen = lines
            time.sleep(interval)
            if not self.get(name).engine_state == "running":
                return

    def exec(self, name: str, argv: list[str]) -> CommandResult:
        sb = self.require_running(name)
        return self.engine_for(sb).exec(sb.container_id, argv)

    # -- lifecycle -----------------------------------------------------------------------------
    def stop(self, name: str, timeout: int = 10) -> Sandbox:
        sb = self.get(name)
        if sb.labels.get(L.BACKEND) == L.SWARM:
            self.swarm.scale(sb.labels[L.SWARM_SERVICE], 0)
            return sb
        if sb.engine_state == "running":
            self.engine.stop(sb.container_id, timeout=timeout)
        for c in self.proxies(name) if sb.labels.get(L.PROFILE) == "isolated" else []:
            if c.get("State") == "running":  # its way out is not needed while it is stopped (start brings it back)
                self.engine.stop(str(c["Id"]), timeout=2)
        return self.get(name)

    def start(self, name: str, wait_ready: bool = True) -> Sandbox:
        sb = self.get(name)
        since = time.time()
        if sb.labels.get(L.BACKEND) == L.SWARM:
            self.swarm.scale(sb.labels[L.SWARM_SERVICE], 1)
            return self.wait_ready(self.get(name), since=since) if wait_ready else self.get(name)
        if sb.engine_state != "running":
            for c in self.proxies(name) if sb.labels.get(L.PROFILE) == "isolated" else []:
                if c.get("State") != "running":  # an isolated agent's way out first
                    self.engine.start(str(c["Id"]))
            self._mark_user_start(sb)
            self.engine.start(sb.container_id)
            sb = self.get(name)
        else:
            since = 0.0
        return self.wait_ready(sb, since=since) if wait_ready else sb

    def _mark_user_start(self, sb: Sandbox) -> None:
        """Started by the user, not by the engine's restart policy: the init counts failures afresh (a
        ``failed`` agent gets its attempts again). A file copied into the stopped container, owned as
        its launch files are (the agent's uid:gid, as its state dir on the host)."""
        try:
            st = os.lstat(sb.labels[L.STATE_DIR])
            uid, gid = st.st_uid, st.st_gid
        except (KeyError, OSError):
            uid, gid = self.settings.uid_gid()
        files = {os.path.basename(contract.START_FILE): (b"{}\n", 0o600)}
        self.engine.put_archive(sb.container_id, contract.LAUNCH_DIR, _tar(files, uid, gid, "."))

    def restart(self, name: str) -> Sandbox:
        self.stop(name)
        return self.start(name)

    def remove(self, name: str, *, force: bool = False, delete_branch: bool = False,
               on_backup: Callable[[Any], None] | None = None,
               on_kept: Callable[[str], None] | None = None) -> Sandbox:
        """Remove the container, the workspace and the agent's git dir; the branch stays unless asked.

        First brings the agent's work over (``sync``) and refuses when the workspace has uncommitted
        changes or commits neither merged nor pushed (or cannot be read), unless ``force``. Once the
        container is gone, the final state is read once more and, when at risk, saved under a
        backup ref (see ``sandbox.workspace.work``), passed to ``on_backup``. When that final state cannot be
        read, the workspace and the agent's git dir are kept (what was read last is backed up) and
        ``on_kept`` gets why: nothing that could not be saved is ever deleted.
        """
        from sandbox.workspace import work

        sb = self.get(name)
        if sb.labels.get(L.BACKEND) == L.SWARM:  # its work is in the branch it pushes (SIGTERM: a WIP push first)
            self.swarm.remove(sb.labels[L.SWARM_SERVICE], sb.name)
            return sb
        if sb.headless:
            return self._remove_headless(sb, force=force)
        work.check_removable(self, sb, force=force)
        crash.point("rm:checked")
        self.drop_container(sb)
        crash.point("rm:container")
        gone = replace(sb, engine_state="removed")
        saved, unreadable = work.save_if_at_risk(self, gone)  # the agent is gone: this snapshot is final
        crash.point("rm:backup")
        if saved is not None and on_backup is not None:
            on_backup(saved)
        if unreadable:
            if on_kept is not None:
                on_kept(f"its final state cannot be read ({unreadable}): workspace kept at {sb.worktree}"
                        f" and {sb.agent_git}")
        else:
            self.drop_workspace(self.source(gone))
        crash.point("rm:workspace")
        if delete_branch:
            gitops.branch_delete(self.repo_of(sb), sb.branch)
        shutil.rmtree(sb.labels.get(L.STATE_DIR, "/nonexistent"), ignore_errors=True)
        if not unreadable and (found := pool.slot_of(self.settings.data_dir, sb.labels)) is not None:
            pool.drop_slot(found)  # (a warm pool's slot: its claim goes with it)
        return sb

    def _remove_headless(self, sb: Sandbox, *, force: bool) -> Sandbox:
        """A headless agent's work is in the branch it pushes: stop it first (SIGTERM: it pushes what
        is uncommitted as a WIP commit), then remove the container (and its state dir, if here). A
        final push that failed (exit 4) keeps the container for its log, unless ``force``."""
        if sb.engine_state == "running":
            self.engine.stop(sb.container_id, timeout=15)
            sb = self.get(sb.name)
        m = re.match(r"Exited \((-?\d+)\)", sb.status)
        if m and int(m.group(1)) == 4 and not force:
            raise Conflict(f"agent {sb.name} could not push its work (exit 4): container kept for its log",
                           hint=f"`docker logs {sb.container_name}`; `sandbox rm --force {sb.name}` removes it")
        self.engine.remove(sb.container_id, force=True)
        if sb.labels.get(L.STATE_DIR):
            shutil.rmtree(sb.labels[L.STATE_DIR], ignore_errors=True)
        return sb

    # -- the agent's work, brought over --------------------------------------------------------
    @staticmethod
    def repo_of(sb: Sandbox) -> gitops.Repo:
        return gitops.Repo(top=Path(sb.repo), common_dir=Path(sb.labels[L.GITDIR]))

    def source(self, sb: Sandbox) -> Source:
        if sb.headless:
            raise UsageError(f"agent {sb.name} is headless: its work is in branch {sb.branch or '?'} of "
                             f"{sb.labels.get(L.REMOTE) or 'its remote'}, not on this host",
                             hint="fetch that branch from the remote")
        uid = int(sb.labels.get(L.UID) or 0) or self.settings.uid_gid()[0]
        return Source(name=sb.name, repo=self.repo_of(sb), branch=sb.branch, workspace=sb.worktree,
                      agent_git=sb.agent_git, uid=uid, image=sb.image_id or self.settings.image,
                      container=sb.container_id if sb.engine_state == "running" else None)

    def _export_argv(self, src: Source, snapshot: bool) -> list[str]:
        objects = src.repo.common_dir / "objects"
        args = [*contract.EXPORT, "--objects", str(objects)]
        fallback = gitops.head_of(src.repo, src.branch)
        if fallback:
            args += ["--fallback", fallback]
        if snapshot:
            args += ["--snapshot", "--workdir", str(src.workspace)]
        if src.container is not None:
            return Engine.cli_exec(src.container, args)
        binds = [(str(objects), str(objects))]
        if _real_dir(src.agent_git):
            binds.append((str(src.agent_git), contract.AGENT_GIT))
        if snapshot and _real_dir(src.workspace):
            binds.append((str(src.workspace), str(src.workspace)))
        gid = os.lstat(src.workspace).st_gid if _real_dir(src.workspace) else src.uid
        labels = {L.READER: src.name, **({L.RUN_ID: self.settings.run_id} if self.settings.run_id else {})}
        return Engine.cli_run_reader(src.image, f"{src.uid}:{gid}", binds, args, labels)

    def sync(self, src: Source, *, snapshot: bool = True, timeout: float | None = None) -> Synced:
        """Fetch the agent's HEAD into ``sandbox/NAME`` (and, with ``snapshot``, a commit of its whole
        workspace into ``refs/sandbox/wip/NAME``) from inside its container, or from a throwaway
        reader container when it is not running. Never raises for an unreadable agent: the
        result says why, and the refs keep what was fetched last."""
        refspecs = [f"+{contract.EXPORT_HEAD}:refs/heads/{src.branch}"]
        if snapshot:
            refspecs.append(f"+{contract.EXPORT_WIP}:{WIP_PREFIX}{src.name}")
        mark = _signature(src.agent_git)
        try:
            gitops.fetch_from(src.repo, self._export_argv(src, snapshot), refspecs,
                              timeout=timeout if timeout is not None else self.settings.sync_timeout)
        except GitError as e:
            return Synced(ok=False, reason=_why(e.stderr) or f"git exited {e.code}")
        self._sync_mark(src.name, src.agent_git, mark)
        return Synced(ok=True)

    def _record_repo(self, repo: gitops.Repo) -> None:
        """Remember which repository a workspace slug belongs to (for ``gc --all-repos``), in a
        host-only file: nothing an agent can write ever says where its work goes."""
        path = self.settings.data_dir / "repos" / repo.slug
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(repo.top))

    def repo_record(self, slug: str) -> Path | None:
        try:
            return Path((self.settings.data_dir / "repos" / slug).read_text().strip())
        except OSError:
            return None

    def _sync_file(self, name: str) -> Path:
        return self.settings.data_dir / "sync" / name

    def _sync_mark(self, name: str, agent_git: Path | None, mark: str | None = None) -> None:
        path = self._sync_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(mark if mark is not None else _signature(agent_git))

    def refresh_branches(self, found: list[Sandbox], *, force: bool = False) -> None:
        """Bring over the commits of every listed agent whose git dir changed since the last
        fetch (a few ``lstat`` calls each, no exec when nothing changed; ``force``: every one);
        in parallel, bounded."""
        todo = []
        for sb in found:
            if sb.agent_git is None or not _real_dir(sb.agent_git):
                continue  # a remote engine, or gone
            try:
                last = self._sync_file(sb.name).read_text()
            except OSError:
                last = ""
            if force or _signature(sb.agent_git) != last:
                todo.append(self.source(sb))
        if not todo:
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(4, len(todo))) as pool:
            list(pool.map(lambda src: self.sync(src, snapshot=False, timeout=30), todo))

    def read_in(self, sb: Sandbox, argv: list[str]) -> CommandResult:
        """Run a command that only reads inside the agent's container (retried on transient errors)."""
        return self.engine_for(sb).exec_retried(sb.container_id, argv)

    def drop_container(self, sb: Sandbox) -> None:
        """Remove the agent's container and its proxies and network, if any (gone already is fine); its
        work must be saved by the caller."""
        self.engine.remove(sb.container_id, force=True)
        if sb.labels.get(L.PROFILE) == "isolated":
            self.drop_isolation(sb.name)

    def drop_workspace(self, src: Source) -> None:
        """Delete what the agent had on the host (its work must be saved by the caller). The agent's
        git dir goes first and the workspace last: cut short, what is left is an orphan workspace,
        which ``gc`` reads (a reader container) and backs up before removing it."""
        if src.agent_git is not None:
            shutil.rmtree(src.agent_git, ignore_errors=True)
        crash.point("rm:agent-git")
        shutil.rmtree(src.workspace, ignore_errors=True)
        gitops.ref_delete(src.repo, WIP_PREFIX + src.name)
        self._sync_file(src.name).unlink(missing_ok=True)


@dataclass(frozen=True)
class Source:
    """Where an agent's work is read from: its running container, else a reader container over
    its workspace and git dir."""

    name: str
    repo: gitops.Repo
    branch: str
    workspace: Path
    agent_git: Path | None
    uid: int
    image: str
    container: str | None = None


@dataclass(frozen=True)
class Synced:
    ok: bool
    reason: str = ""


def _why(stderr: str) -> str:
    """The telling line of a failed fetch: the export's own reason, else git's first fatal line,
    control characters removed (it may carry text from the agent's side)."""
    lines = ["".join(ch for ch in ln.strip() if ch.isprintable())[:200] for ln in stderr.splitlines()]
    for prefix in ("sandbox export:", "fatal:", "error:"):
        for ln in lines:
            if ln.startswith(prefix):
                return ln.removeprefix("sandbox export:").strip()
    return next((ln for ln in lines if ln), "")


def _real_dir(path: Path | None) -> bool:
    """A directory, not a link to one; False for what this user may not even look at (another user's)."""
    if path is None:
        return False
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _signature(agent_git: Path | None) -> str:
    """What changes when the agent commits, checks out or moves a ref (``lstat`` only: never follows
    or opens anything the agent wrote)."""
    if agent_git is None:
        return ""
    parts = []
    for rel in ("HEAD", "logs/HEAD", "packed-refs", "refs/heads", "refs/heads/sandbox"):
        try:
            st = os.lstat(agent_git / rel)
            parts.append(f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return " ".join(parts)


class _NameTaken(Exception):
    pass


class _SpawnLock:
    """``data_dir/spawning/NAME.lock``, flocked by the spawn of NAME while it runs (the kernel releases
    it when the process dies, however it dies): ``gc`` does not take what a live spawn is making for
    the leftovers of one that was cut short."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.path = data_dir / "spawning" / f"{name}.lock"
        self.fd = -1

    def __enter__(self) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = -1
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            self.path.unlink(missing_ok=True)  # (while held: a reader that opens it later finds nothing)
            os.close(self.fd)

    @staticmethod
    def held(data_dir: Path, name: str) -> bool:
        import fcntl

        try:
            fd = os.open(data_dir / "spawning" / f"{name}.lock", os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)


@dataclass(frozen=True)
class _DockerExecutor:
    engine: Engine
    container: str

    def run(self, argv: list[str]) -> CommandResult:
        return self.engine.exec(self.container, argv)
