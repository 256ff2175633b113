"""Which backend runs the agents, chosen once from the settings (``engine``: local or swarm): the
``Backend`` protocol, its two kinds (``Local``: this engine's containers; ``OnSwarm``: one-replica Swarm
services, ``sandbox.engine.swarm``) and ``choose``. The manager asks its backend, never which one it is:
discovery (``containers``), the engine running an agent (``engine_for``), whether a workspace agent can
run here (``refuse_workspace``) and where a headless agent runs (``run_headless``)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from sandbox import contract, labels as L, pool
from sandbox.engine import Engine
from sandbox.errors import UsageError

if TYPE_CHECKING:
    from sandbox.config import Settings
    from sandbox.engine.swarm import Swarm
    from sandbox.manager import SandboxManager
    from sandbox.snapshot import Sandbox
    from sandbox.spawn import spec as spec_


class Backend(Protocol):
    """What runs the agents. ``clones``: its agents clone their repository (no workspace, no repository
    label, no state dir on this host: their state is read in their container)."""

    clones: bool

    @property
    def swarm(self) -> Swarm:
        """The Swarm calls of this engine (an agent labelled as a Swarm service: stop, start, rm; pushing
        the image to the nodes); checked once: this engine must manage a swarm."""
        ...

    def containers(self, filters: list[str]) -> list[dict[str, Any]]:
        """The engine side of discovery: the agents' containers as the engine's list entries."""
        ...

    def engine_for(self, sb: Sandbox) -> Engine:
        """The engine that runs ``sb``'s container."""
        ...

    def refuse_workspace(self) -> None:
        """Raise (one clear line) when an agent with a workspace from this host cannot run here."""
        ...

    def run_headless(self, mgr: SandboxManager, container: spec_.ContainerSpec, req: spec_.HeadlessRequest, *,
                     explicit: bool, wait_ready: bool, step: Callable[[str], None]) -> Sandbox:
        """Run a headless agent's spec (``spec.build_headless``); its snapshot."""
        ...


def every_container_of_ours(filters: list[str]) -> list[str]:
    """The engine-side filters that also match claimed warm pool containers (they carry no agent's
    labels): every container with our schema label, of this run id; the rest is for ``L.matches``."""
    return [L.SCHEMA_KEY, *(f for f in filters if f.startswith(L.RUN_ID + "="))]


class _SwarmCalls:
    engine: Engine
    _swarm: Swarm | None = None

    @property
    def swarm(self) -> Swarm:
        """This engine's Swarm calls (``sandbox.engine.swarm``), checked once: it must manage a swarm."""
        if self._swarm is None:
            from sandbox.engine.swarm import Swarm

            self._swarm = Swarm(self.engine)
            self._swarm.check()
        return self._swarm


class Local(_SwarmCalls):
    """This engine's containers (a local socket, or a remote engine for headless agents)."""

    clones = False

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    def containers(self, filters: list[str]) -> list[dict[str, Any]]:
        """A claimed warm pool container counts with the labels of its claim (``sandbox.pool``): then one
        list of every container of ours, and the filters applied here."""
        claims = pool.claims(self.settings.data_dir)
        if not claims:
            return self.engine.list_containers(filters)
        found = []
        for c in self.engine.list_containers(every_container_of_ours(filters)):
            labels = c.get("Labels") or {}
            if L.POOL_SLOT in labels:
                if labels[L.POOL_SLOT] not in claims:
                    continue  # (in the pool: not an agent)
                c = {**c, "Labels": claims[labels[L.POOL_SLOT]]}
            if L.matches(c["Labels"], filters):
                found.append(c)
        return found

    def engine_for(self, sb: Sandbox) -> Engine:
        return self.engine

    def refuse_workspace(self) -> None:
        from sandbox.engine import remote_engine

        if (remote := remote_engine()) is not None:
            raise UsageError(f"the engine at {remote} runs on another host: it cannot mount a workspace from here",
                             hint='use the clone mode: sandbox spawn --headless --repo-url URL "the task"')

    def run_headless(self, mgr: SandboxManager, container: spec_.ContainerSpec, req: spec_.HeadlessRequest, *,
                     explicit: bool, wait_ready: bool, step: Callable[[str], None]) -> Sandbox:
        from sandbox.spawn import runner

        return runner.run_headless(mgr, container, req, explicit=explicit, wait_ready=wait_ready, step=step)


class OnSwarm(_SwarmCalls):
    """A Docker Swarm: each agent a one-replica service (headless: it clones and pushes), its task's
    container on any node, reached through the Docker context of that node's name."""

    clones = True

    def __init__(self, engine: Engine, network: str) -> None:
        self.engine = engine
        self.network = network
        self._nodes: dict[str, Engine | None] = {}

    def containers(self, filters: list[str]) -> list[dict[str, Any]]:
        from sandbox.engine.swarm import agent_containers

        return agent_containers(self.engine, self.swarm, filters, self._node_engine)

    def _node_engine(self, context: str) -> Engine | None:
        """The engine of another swarm node, through the Docker context of that name (None: none)."""
        from sandbox.engine import context_host

        if context not in self._nodes:  # (its address, and its TLS material: docker-py's ContextAPI)
            self._nodes[context] = Engine(context=context) if context_host(context) else None
        return self._nodes[context]

    def engine_for(self, sb: Sandbox) -> Engine:
        return (self._node_engine(sb.context) if sb.context else None) or self.engine

    def refuse_workspace(self) -> None:
        raise UsageError("on the swarm an agent clones its repository: a node far away has neither your "
                         "workspace nor its .git", hint='sandbox --engine swarm spawn --repo-url URL "the task"')

    def run_headless(self, mgr: SandboxManager, container: spec_.ContainerSpec, req: spec_.HeadlessRequest, *,
                     explicit: bool, wait_ready: bool, step: Callable[[str], None]) -> Sandbox:
        """A headless agent as a one-replica Swarm service: its secrets as Swarm secrets, its state in
        a tmpfs of its own (read with one exec), and every attempt a retry (a task Swarm restarts is a
        new container with the same environment: it resumes from the branch it pushed)."""
        from sandbox.spawn import runner

        name = container.labels[L.NAME]
        labels = {k: v for k, v in container.labels.items() if k != L.STATE_DIR}
        labels[L.BACKEND] = L.SWARM
        files = container.files()
        spec = replace(container, labels=labels, binds=(), volumes=(),
                       tmpfs={**container.tmpfs, contract.STATE_MOUNT: "rw,size=16m"},
                       env={**container.env, contract.H.ATTEMPT: "1"})
        with ExitStack() as undo:
            network = self.swarm.ensure_network(self.network)
            step(f"service {spec.name} on the swarm (headless: {labels.get(L.REMOTE)} -> {labels.get(L.BRANCH)})")
            service = self.swarm.create(spec, network=network, secrets={k: v for k, (v, _) in files.items()},
                                        constraints=[])
            undo.callback(self.swarm.remove, service, name)
            sandbox = runner.when_ready(mgr, name, wait_ready, step)
            undo.pop_all()
            return sandbox
        raise AssertionError("unreachable")


def choose(settings: Settings, engine: Engine) -> Local | OnSwarm:
    """The backend the settings name (``engine``: local or swarm)."""
    kind = getattr(settings, "engine", "local")
    if kind == "swarm":
        return OnSwarm(engine, getattr(settings, "swarm_network", ""))
    if kind != "local":
        raise UsageError(f"engine {settings.engine!r}: local or swarm")
    return Local(engine, settings)
