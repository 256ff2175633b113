"""Spawn, first half: a pure description of the container an agent gets (no engine, no git, no I/O).

``build`` turns (agent preset, settings, profile, repository, workspace) into a ``ContainerSpec``:
image, user, mounts, limits, network, labels, the launch document and the files to copy in. The
runner in ``sandbox.manager`` creates what a spec says and undoes it on failure; the engine module
translates it into Docker's wording (``Engine.create``). A new profile is a function in
``PROFILES``; a new workspace mode is another ``Workspace`` (its ``binds``); a new backend takes the
same spec.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from sandbox import __version__, contract, labels as L, proxy
from sandbox.agents import AgentSpec
from sandbox.contract import H

CONTAINER_PREFIX = "sandbox-"


@dataclass(frozen=True)
class Bind:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class Limits:
    memory: int = 0        # bytes; 0 = unlimited
    nano_cpus: int = 0     # 1e9 = one CPU; 0 = unlimited
    pids: int = 1024


@dataclass(frozen=True)
class Network:
    """Where the container's network comes from: ``none``, or a bridge of ours (made on demand)."""

    name: str                    # "none", or the bridge's name
    isolated: bool = True        # a bridge without container-to-container traffic (ICC off)
    internal: bool = False       # no route out and no address for the host (the isolated profile's own)

    @property
    def disabled(self) -> bool:
        return self.name == "none"


@dataclass(frozen=True)
class Workspace:
    """The clone workspace mode: the agent's working files and its own git dir on the host, the host
    repository's object store it borrows (read-only; None: it borrows nothing, its git dir holds a
    pack of what its base reaches — the ``reachable`` objects mode), and its state dir."""

    path: Path
    agent_git: Path
    objects: Path | None
    state_dir: Path

    @property
    def objects_mode(self) -> str:
        return "reachable" if self.objects is None else "shared"

    def binds(self) -> tuple[Bind, ...]:
        """The workspace (rw) under a read-only ``.git`` file that points at the agent's own git dir (rw,
        at a path that exists only in the container), the host's objects read-only (when shared), the
        state dir."""
        return (
            Bind(str(self.path), str(self.path)),
            Bind(str(self.path / ".git"), str(self.path / ".git"), read_only=True),
            Bind(str(self.agent_git), contract.AGENT_GIT),
            *([Bind(str(self.objects), str(self.objects), read_only=True)] if self.objects is not None else []),
            Bind(str(self.state_dir), contract.STATE_MOUNT),
        )


@dataclass(frozen=True)
class ContainerSpec:
    """Everything about one agent's container, before anything exists."""

    name: str                                  # the container's name (sandbox-NAME)
    image: str                                 # an image ID (never pulled)
    user: tuple[int, int]                      # the agent's uid, gid: never 0 (the container's own user is
                                               # root when ``launch.uid`` is set: see ``supervised``)
    workdir: str
    labels: dict[str, str]
    env: dict[str, str]
    binds: tuple[Bind, ...]
    limits: Limits
    network: Network
    launch: contract.Launch
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  # copied in, never in inspect
    read_only_root: bool = False
    tmpfs: dict[str, str] = field(default_factory=dict)
    volumes: tuple[str, ...] = ()              # anonymous volumes at these paths (removed with it)
    nofile: int = 4096                         # open files per process
    runtime: str | None = None                 # OCI runtime (None: the engine's default)
    isolation: Isolation | None = None         # the isolated profile's proxies (made first by the runner)
    engine_restarts: bool = True               # unless-stopped; False: never (a headless run's exit is its result)
    ports: tuple[int, ...] = ()                # container TCP ports published on the host's 127.0.0.1 only
    port_hosts: tuple[tuple[int, int], ...] = ()  # (container port, the host port chosen for it); else the engine's pick

    @property
    def supervised(self) -> bool:
        """The container starts as root with only ``contract.SUPERVISOR_CAPS``: its supervisor runs the
        agent as ``user`` with none (``Launch.uid``; headless: ``SANDBOX_AGENT_UID``, and the supervisor
        alone holds the git token and pushes). False: all as ``user``."""
        return bool(self.launch.uid)

    @property
    def container_user(self) -> tuple[int, int]:
        """The uid:gid the container (its init, tmux, a plain ``docker exec``) runs as."""
        return (0, 0) if self.supervised else self.user

    def files(self) -> dict[str, tuple[bytes, int]]:
        """What is copied into ``contract.LAUNCH_DIR`` (``put_archive``) before start: name -> (content,
        mode): the secrets, when there are any (never on a mount the host or the agent shares)."""
        return {"secrets.json": (json.dumps(self.secrets).encode(), 0o400)} if self.secrets else {}

    def state_files(self) -> dict[str, tuple[bytes, int]]:
        """What the host writes into the agent's state dir before start (``contract.STATE_LAUNCH_FILE``
        inside): the launch document, which holds no secret."""
        return {contract.STATE_LAUNCH: (self.launch.to_json().encode(), 0o600)}

    @property
    def state_dir(self) -> str | None:
        """The host directory mounted at ``contract.STATE_MOUNT``."""
        return next((b.source for b in self.binds if b.target == contract.STATE_MOUNT), None)


@dataclass(frozen=True)
class Isolation:
    """What an isolated agent needs before it starts: its internal network and the two proxies on it
    (``sandbox.proxy``), which reach out through ``egress_network``. ``model`` is None when there is
    no key to inject (the bundled offline model runs inside the agent's container)."""

    network: str                               # the agent's internal network (its own)
    egress_network: str                        # an ordinary bridge the proxies reach out through
    allow: tuple[proxy.Allowed, ...]
    model: tuple[proxy.Upstream, proxy.Credential] | None = field(default=None, repr=False)
    labels: dict[str, str] = field(default_factory=dict)   # on the network and the proxies

    def proxy_name(self, container: str, role: str) -> str:
        """``sandbox-NAME.model``: a dot, which no agent name has, so never another agent's name."""
        return f"{container}.{role}"


# The names an isolated agent reaches its proxies by (aliases on its internal network)
MODEL_PROXY_HOST = "model-proxy"
EGRESS_PROXY_HOST = "egress-proxy"
PLACEHOLDER_KEY = "sk-ant-sandbox-placeholder-the-real-key-is-in-the-model-proxy"
# Which credential the model proxy injects for which variable, in order of preference
_CREDENTIALS = (("ANTHROPIC_API_KEY", "x-api-key"), ("ANTHROPIC_AUTH_TOKEN", "bearer"),
                ("CLAUDE_CODE_OAUTH_TOKEN", "bearer"))
DEFAULT_MODEL_UPSTREAM = "https://api.anthropic.com"


# -- profiles: small transformations of a spec ------------------------------------------------------
def default_profile(spec: ContainerSpec, req: Request) -> ContainerSpec:
    """The agents' own bridge network (no agent-to-agent traffic); outbound as the host allows."""
    return spec


_READ_ONLY_TMPFS = {"/tmp": "rw,nosuid,nodev,size=512m", "/home/agent": "rw,nosuid,nodev,size=512m,mode=1777"}


def locked_profile(spec: ContainerSpec, req: Request) -> ContainerSpec:
    """No network at all, a read-only root: only the workspace, /tmp and $HOME are writable. The launch
    files are copied in before start: an anonymous volume takes them where the read-only root cannot."""
    return replace(spec, network=Network("none"), read_only_root=True, tmpfs=dict(_READ_ONLY_TMPFS),
                   volumes=(*spec.volumes, contract.LAUNCH_DIR))


def isolated_profile(spec: ContainerSpec, req: Request) -> ContainerSpec:
    """The locked filesystem, and a network of its own with no way out but two proxies: the model
    proxy (which holds the real key: the agent gets a placeholder) and the egress proxy (the
    allowlist, default empty). No secret of the user's goes into the container."""
    from sandbox import proxy

    iso_labels = {L.PROXY_OF: req.name, **({L.RUN_ID: req.run_id} if req.run_id else {})}
    model = None
    secrets: dict[str, str] = {}
    for var, kind in _CREDENTIALS:
        value = req.secrets.get(var)
        if value and not req.use_mock:
            upstream = req.model_upstream or req.secrets.get("ANTHROPIC_BASE_URL") or DEFAULT_MODEL_UPSTREAM
            model = (proxy.parse_upstream(upstream), proxy.Credential(kind, value))
            secrets = {var: PLACEHOLDER_KEY,
                       "ANTHROPIC_BASE_URL": f"http://{MODEL_PROXY_HOST}:{proxy.MODEL_PORT}"}
            break
    egress = f"http://{EGRESS_PROXY_HOST}:{proxy.EGRESS_PORT}"
    env = {**spec.env, "HTTPS_PROXY": egress, "HTTP_PROXY": egress, "https_proxy": egress, "http_proxy": egress,
           "NO_PROXY": f"{MODEL_PROXY_HOST},localhost,127.0.0.1", "no_proxy": f"{MODEL_PROXY_HOST},localhost,127.0.0.1"}
    allow = proxy.parse_allow(req.allow)
    labels = {**spec.labels, L.ALLOW: ",".join(str(a) for a in allow)}
    network = f"{spec.name}.net"
    return replace(spec, network=Network(network, isolated=False, internal=True), read_only_root=True,
                   tmpfs=dict(_READ_ONLY_TMPFS), volumes=(*spec.volumes, contract.LAUNCH_DIR), env=env,
                   labels=labels, secrets=secrets,
                   isolation=Isolation(network, req.egress_network or req.network, allow, model, iso_labels))


PROFILES: dict[str, Callable[[ContainerSpec, Request], ContainerSpec]] = {
    "default": default_profile,
    "locked": locked_profile,
    "isolated": isolated_profile,
}


@dataclass(frozen=True)
class Request:
    """What a spawn was asked for, resolved (settings applied, names chosen, paths made)."""

    name: str
    agent: AgentSpec
    model: str | None
    task: str | None
    repo_top: Path
    common_dir: Path
    branch: str
    base: str
    image_id: str
    image_ref: str
    profile: str
    uid: int
    gid: int
    created: str                   # ISO 8601, UTC
    retries: int = 3
    retry_backoff: float = 0.5
    max_time: float | None = None
    idle_timeout: float | None = None
    memory: int = 0
    nano_cpus: int = 0
    pids_limit: int = 1024
    network: str = "sandbox-net"
    run_id: str | None = None
    use_mock: bool = False
    mock_script: dict[str, object] | None = None
    git_identity: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    nofile: int = 4096
    runtime: str | None = None
    allow: tuple[str, ...] = ()              # isolated: the egress allowlist (hosts, presets)
    model_upstream: str | None = None        # isolated: where the model proxy forwards
    egress_network: str | None = None        # isolated: the proxies' way out (default: ``network``)
    max_cost: float | None = None            # USD budget (the container's hooks judge it)
    disk: int = 0                            # bytes of workspace + git + state dir (the host watches it; 0: none)
    prices: list[dict[str, dict[str, float]]] | None = None  # the price table for the budget (sandbox.usage)
    extra_labels: tuple[tuple[str, str], ...] = ()  # e.g. a plan's (labels.PLAN, …): static facts of the caller
    ports: tuple[int, ...] = ()              # container ports published on 127.0.0.1 (a free host port each)
    port_hosts: tuple[tuple[int, int], ...] = ()  # the host ports chosen (``HOST:CONTAINER``, ``port_range``)
    setup: str = ""                          # `[setup] run`: run in the container before the agent (Launch.setup)
    setup_rerun: bool = False                # ... again at every start of the container
    setup_timeout: float = 900.0             # ... killed (failed) past this many seconds


def labels_for(req: Request, ws: Workspace) -> dict[str, str]:
    labels = {
        L.MANAGED: "1",
        L.SCHEMA_KEY: L.SCHEMA,
        L.NAME: req.name,
        L.AGENT: req.agent.name,
        L.MODEL: req.model or "",
        L.REPO: str(req.repo_top),
        L.GITDIR: str(req.common_dir),
        L.BRANCH: req.branch,
        L.BASE: req.base,
        L.WORKSPACE: str(ws.path),
        L.AGENT_GIT: str(ws.agent_git),
        L.OBJECTS: ws.objects_mode,
        L.IMAGE: req.image_ref,
        L.PROFILE: req.profile,
        L.CREATED: req.created,
        L.VERSION: __version__,
        L.TASK: L.summarize(req.task or ""),
        L.SESSION: req.name,
        L.UID: str(req.uid),
        L.GID: str(req.gid),
        L.STATE_DIR: str(ws.state_dir),
        L.RETRIES: str(req.retries),
        L.MAX_TIME: f"{req.max_time:g}" if req.max_time else "",
        L.IDLE_TIMEOUT: f"{req.idle_timeout:g}" if req.idle_timeout else "",
        L.MAX_COST: f"{req.max_cost:g}" if req.max_cost else "",
        L.DISK: str(req.disk) if req.disk else "",
    }
    if req.run_id:
        labels[L.RUN_ID] = req.run_id
    labels.update({k: v for k, v in req.extra_labels if k.startswith(L.PREFIX) and k not in labels})
    return labels


def build(req: Request, ws: Workspace) -> ContainerSpec:
    """The container for ``req`` in workspace ``ws`` (pure: the same inputs give the same spec)."""
    if req.uid == 0:
        raise ValueError("the agent never runs as root")
    if req.profile not in PROFILES:
        raise ValueError(f"unknown profile {req.profile!r}")
    launch = contract.Launch(
        name=req.name,
        session=req.name,
        argv=list(req.agent.argv),
        workdir=str(ws.path),
        task=req.task or "",
        delivery=req.agent.delivery,
        claude=req.agent.claude,
        mock_model=req.use_mock,
        mock_script=dict(req.mock_script) if req.mock_script else None,
        git_identity=dict(req.git_identity),
        retries=req.retries,
        backoff=req.retry_backoff,
        max_time=req.max_time or 0.0,
        idle_timeout=req.idle_timeout or 0.0,
        max_cost=req.max_cost or 0.0,
        prices=[dict(layer) for layer in req.prices] if req.max_cost and req.prices else None,
        resume=list(req.agent.resume),
        uid=req.uid,
        gid=req.gid,
        setup=req.setup,
        setup_rerun=req.setup_rerun,
        setup_timeout=req.setup_timeout,
    )
    spec = ContainerSpec(
        name=CONTAINER_PREFIX + req.name,
        image=req.image_id,
        user=(req.uid, req.gid),
        workdir=str(ws.path),
        labels=labels_for(req, ws),
        env={H.NAME: req.name, **port_env(req.ports)},
        binds=ws.binds(),
        limits=Limits(memory=req.memory, nano_cpus=req.nano_cpus, pids=req.pids_limit),
        network=Network(req.network),
        launch=launch,
        secrets=dict(req.secrets),
        nofile=req.nofile,
        runtime=req.runtime,
        ports=tuple(req.ports), port_hosts=tuple(req.port_hosts),
    )
    return PROFILES[req.profile](spec, req)


PORTS_PROFILES = ("default",)  # locked has no network; isolated's internal network publishes nothing


def port_env(ports: tuple[int, ...]) -> dict[str, str]:
    """What the agent is told of its published ports: ``SANDBOX_PORT`` (the first), ``SANDBOX_PORTS``."""
    return {"SANDBOX_PORT": str(ports[0]), "SANDBOX_PORTS": ",".join(map(str, ports))} if ports else {}


# -- the warm pool: the same container, started before its agent is known ------------------------------
POOL_CONTAINER_PREFIX = "sandbox-pool."  # + the slot's id (a dot, which no agent name has)


def pool_parts(spec: ContainerSpec, ws: Workspace) -> dict[str, object]:
    """What a container fixes when it is created and a spawn must find in a pool's container: the
    image, user, limits, network, filesystem, environment and the repository's object store it
    mounts (none of a slot's own paths, none of the agent's name, task or launch document)."""
    return {"image": spec.image, "user": list(spec.user), "limits": asdict(spec.limits),
            "network": asdict(spec.network), "read_only_root": spec.read_only_root, "tmpfs": spec.tmpfs,
            "volumes": list(spec.volumes), "nofile": spec.nofile, "runtime": spec.runtime,
            "restarts": spec.engine_restarts, "ports": list(spec.ports), "env": {k: v for k, v in spec.env.items() if k != H.NAME},
            "objects": str(ws.objects or ""), "profile": spec.labels.get(L.PROFILE),
            "run_id": spec.labels.get(L.RUN_ID), "version": __version__}


def pooled(spec: ContainerSpec, key: str, slot: str) -> ContainerSpec:
    """``spec`` (built for a slot's workspace) as a pool's container: no agent's labels (not
    ``sandbox.managed``: it is no agent until claimed), no secrets, and ``contract.POOL_ENV``, which
    makes its init wait for a claim. The same security options as a spawn of that profile."""
    if spec.isolation is not None:
        raise ValueError("the isolated profile has no warm pool (its network and proxies are the agent's own)")
    labels = {L.SCHEMA_KEY: L.SCHEMA, L.POOL: key, L.POOL_SLOT: slot, L.PROFILE: spec.labels.get(L.PROFILE, ""),
              L.IMAGE: spec.labels.get(L.IMAGE, ""), L.CREATED: spec.labels.get(L.CREATED, ""),
              L.VERSION: __version__, L.UID: spec.labels.get(L.UID, "")}
    if spec.labels.get(L.RUN_ID):
        labels[L.RUN_ID] = spec.labels[L.RUN_ID]
    env = {k: v for k, v in spec.env.items() if k != H.NAME}
    env[contract.POOL_ENV] = "1"
    return replace(spec, name=POOL_CONTAINER_PREFIX + slot, labels=labels, env=env, secrets={})


# -- headless: the image alone, configured by its environment (sandbox.inside.headless) -------------------
@dataclass(frozen=True)
class HeadlessSpec(ContainerSpec):
    """A headless agent's container: no launch document (its absence, with ``SANDBOX_REPO`` set, is what
    makes the init headless); its secrets are files copied into ``contract.LAUNCH_DIR`` before start,
    named by ``*_FILE`` variables (never in ``docker inspect``)."""

    payload: dict[str, tuple[bytes, int]] = field(default_factory=dict, repr=False)

    def files(self) -> dict[str, tuple[bytes, int]]:
        return dict(self.payload)

    def state_files(self) -> dict[str, tuple[bytes, int]]:
        return {}  # (no launch document: its absence, with SANDBOX_REPO, is what makes the init headless)


@dataclass(frozen=True)
class HeadlessRequest:
    """What ``sandbox spawn --headless`` was asked for, resolved."""

    name: str
    agent: AgentSpec
    model: str | None
    task: str
    repo_url: str
    branch: str
    base: str | None
    image_id: str
    image_ref: str
    uid: int
    gid: int
    created: str
    state_dir: Path
    retries: int = 3
    max_time: float | None = None
    wip_interval: float | None = None
    memory: int = 0
    nano_cpus: int = 0
    pids_limit: int = 1024
    network: str = "sandbox-net"
    run_id: str | None = None
    use_mock: bool = False
    mock_script: dict[str, object] | None = None
    agent_cmd: str | None = None
    git_identity: dict[str, str] = field(default_factory=dict)
    git_token: str = field(default="", repr=False)
    api_key: str = field(default="", repr=False)


def headless_env(req: HeadlessRequest) -> dict[str, str]:
    """The headless contract's variables (``contract.HEADLESS_ENV``) for ``req``: no secret among them."""
    file_ = contract.SECRET_FILE  # (the secrets: files in the launch dir, named by NAME_FILE)
    env = {
        H.REPO: req.repo_url,
        H.TASK: req.task,
        H.PUSH_BRANCH: req.branch,
        H.NAME: req.name,
        H.SESSION: req.name,
        H.AGENT: req.agent.name if req.agent.name != "custom" else "claude",
        H.RETRIES: str(req.retries),
        H.ON_DONE: "exit",   # the cloud behaviour: the exit code is the result
        H.ATTEMPT: "0",
    }
    optional = {H.BASE: req.base, H.MODEL: req.model, H.AGENT_CMD: req.agent_cmd,
                H.MAX_TIME: f"{req.max_time:g}" if req.max_time else None,
                H.WIP_INTERVAL: f"{req.wip_interval:g}" if req.wip_interval else None,
                H.GIT_NAME: req.git_identity.get("name"), H.GIT_EMAIL: req.git_identity.get("email"),
                H.MOCK_MODEL: "1" if req.use_mock else None}
    env.update({k: v for k, v in optional.items() if v})
    files = contract.LAUNCH_DIR
    if req.git_token:
        env[H.GIT_TOKEN + file_] = f"{files}/git-token"
    if req.api_key:
        env[H.API_KEY + file_] = f"{files}/anthropic-api-key"
    if req.mock_script:
        env[H.MOCK_SCRIPT_FILE] = f"{files}/mock-script.json"
    env[H.AGENT_UID] = f"{req.uid}:{req.gid}"  # (the container starts as root: its supervisor)
    return env


def build_headless(req: HeadlessRequest) -> HeadlessSpec:
    """The container for a headless agent on the local engine (pure): the image alone, as a Cloud
    Run-like host runs it — read-only root, tmpfs /tmp, limits, no restarts by the engine (a retry is
    a new run with ``SANDBOX_ATTEMPT`` > 0) — plus this host's state dir, so `sandbox ls` reads it. It
    starts as root with only ``contract.SUPERVISOR_CAPS`` (``supervised``): the init reads the token
    (root's, 0400) and pushes; the agent runs as ``req.uid`` with no credential."""
    if req.uid == 0:
        raise ValueError("the agent never runs as root")
    labels = {
        L.MANAGED: "1", L.SCHEMA_KEY: L.SCHEMA, L.NAME: req.name, L.MODE: L.HEADLESS, L.AGENT: req.agent.name,
        L.MODEL: req.model or "", L.REMOTE: req.repo_url, L.BRANCH: req.branch, L.IMAGE: req.image_ref,
        L.PROFILE: "headless", L.CREATED: req.created, L.VERSION: __version__, L.TASK: L.summarize(req.task),
        L.SESSION: req.name, L.UID: str(req.uid), L.STATE_DIR: str(req.state_dir), L.RETRIES: str(req.retries),
        L.MAX_TIME: f"{req.max_time:g}" if req.max_time else "",
    }
    if req.run_id:
        labels[L.RUN_ID] = req.run_id
    payload: dict[str, tuple[bytes, int]] = {}
    if req.git_token:
        payload["git-token"] = (req.git_token.encode() + b"\n", 0o400)
    if req.api_key:
        payload["anthropic-api-key"] = (req.api_key.encode() + b"\n", 0o400)
    if req.mock_script:
        payload["mock-script.json"] = (json.dumps(req.mock_script).encode(), 0o400)
    launch = contract.Launch(name=req.name, session=req.name, argv=list(req.agent.argv), workdir="/tmp",  # (a record;
                             uid=req.uid, gid=req.gid)  # its uid: the container starts as root, see `supervised`)
    return HeadlessSpec(
        name=CONTAINER_PREFIX + req.name, image=req.image_id, user=(req.uid, req.gid), workdir="/tmp", labels=labels,
        env=headless_env(req), binds=(Bind(str(req.state_dir), contract.STATE_MOUNT),),
        limits=Limits(memory=req.memory, nano_cpus=req.nano_cpus, pids=req.pids_limit), network=Network(req.network),
        engine_restarts=False, launch=launch, read_only_root=True, tmpfs={"/tmp": "rw,nosuid,nodev,size=2g"},
        volumes=(contract.LAUNCH_DIR,), payload=payload)
