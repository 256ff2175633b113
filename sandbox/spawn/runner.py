"""Where a spawn happens: the pre-checks (one place), the request (``Spawn``: what a spawn of one name
was asked and resolved), the spec (``sandbox.spawn.spec``, pure) and then the one runner, ``run``:
create what the spec says (or take a claimed warm pool container), hand over the launch document and
the secrets, start (or wake) it, each step undone on failure. Cold, warm, headless and pool-fill
spawns all go through ``run``; a Swarm service is the backend's (``sandbox.backend``).

``SandboxManager.spawn`` / ``spawn_headless`` call ``spawn`` / ``spawn_headless`` here.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox import agents, capacity, contract, crash, labels as L, pool, trace as trace_
from sandbox.workspace import setup as setup_
from sandbox.config import port_pairs
from sandbox.configfiles import memory_bytes
from sandbox.engine import LOOPBACK
from sandbox.errors import AgentError, Conflict, ImageMissing, RepoError, UsageError
from sandbox.spawn import spec as spec_, trees
from sandbox.workspace import git as gitops
from sandbox.workspace.git import BRANCH_PREFIX

if TYPE_CHECKING:
    from sandbox.config import Settings
    from sandbox.manager import SandboxManager
    from sandbox.snapshot import Sandbox


class NameTaken(Exception):
    pass


@dataclass(frozen=True)
class Spawn:
    """One spawn of a named agent: what it was asked for, resolved (the agent's preset, the base commit,
    the image), and how it reports (``step``, ``trace``) and counts (``slot``)."""

    name: str
    agent: agents.AgentSpec
    task: str | None
    model: str | None
    repo: gitops.Repo
    base_sha: str
    image_id: str
    uid: int                                         # the agent's uid:gid (never root)
    gid: int
    mock_script: dict[str, Any] | None
    wait_ready: bool
    step: Callable[[str], None]
    slot: capacity.Slot
    explicit: bool                                   # the user named it (else a taken name is the next one)
    trace: Any = trace_.OFF                          # spawn --trace: a sandbox.trace.Trace
    labels: tuple[tuple[str, str], ...] = ()         # more sandbox.* labels (a plan's)
    copies: tuple[Any, ...] = ()                     # [setup] copy: the files read and checked (setup.Copy)
    image_ref: str = ""                              # the image's name (a toolchain's; "": settings.image)
    port_hosts: tuple[tuple[int, int], ...] = ()     # the host ports chosen for its published ports


# -- the pre-checks, one place ---------------------------------------------------------------------
def image_and_user(mgr: SandboxManager) -> tuple[str, int, int]:
    """(the agent image's id, the agent's uid, gid): the image must be built, the uid not root."""
    s = mgr.settings
    uid, gid = s.uid_gid()
    if uid == 0:
        raise UsageError("the agent never runs as root: set SANDBOX_AGENT_UID to a non-zero uid")
    image_id = mgr.engine.image_id(s.image)
    if image_id is None:
        raise ImageMissing(f"agent image {s.image} is not built", hint="run `sandbox image build`")
    return image_id, uid, gid


def repo_image(mgr: SandboxManager, top: Path, step: Callable[[str], None]) -> tuple[str, str, int, int]:
    """(the image's ref, its id, the agent's uid, gid) for a workspace agent of the repository at ``top``: its
    ``[toolchain]``'s image (README "Toolchain"), built here when its inputs changed (a step line says so;
    a missing base is refused before anything is made), else ``image_and_user``'s."""
    if mgr.settings.toolchain is None:  # (the common case: sandbox.image is not even imported)
        image_id, uid, gid = image_and_user(mgr)
        return mgr.settings.image, image_id, uid, gid
    from sandbox import image

    tc = image.toolchain_of(mgr.settings, top)
    assert tc is not None
    uid, gid = mgr.settings.uid_gid()
    if uid == 0:
        raise UsageError("the agent never runs as root: set SANDBOX_AGENT_UID to a non-zero uid")
    announced: list[bool] = []

    def said(line: str) -> None:  # one step line when a build starts; its progress is the build's own
        if not announced and line.startswith("building "):
            announced.append(True)
            step(f"{line} (once; `sandbox image build` does it ahead)")

    ref, image_id = image.toolchain_image(mgr.engine, mgr.settings, tc, on_line=said)
    return ref, image_id, uid, gid


def agent_of(mgr: SandboxManager, agent: str | None, model: str | None, task: str | None,
             agent_cmd: str | None, name: str | None, *, check_task: bool = True) -> tuple[agents.AgentSpec, str | None, str]:
    """(the agent's preset, the model, the prefix of its name): the name (and ``check_task``: the task) checked."""
    s = mgr.settings
    model = model if model is not None else s.model
    if name is not None:
        agents.check_name(name)
    if task is not None and check_task:
        agents.check_task(task)
    aspec = agents.build(agent or s.agent, model, task if agent_cmd is None else None, agent_cmd)
    prefix = agents.name_prefix(Path(aspec.binary).name if agent_cmd is not None else aspec.name, model)
    return aspec, model, prefix


def _free(port: int) -> bool:
    """Whether the host's 127.0.0.1:``port`` can be bound now (the engine binds it there at start)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def host_ports(s: Settings) -> tuple[tuple[int, int], ...]:
    """The host port of each published port that gets one chosen here: ``HOST:CONTAINER``'s (it must be
    free: else one line, exit 2), then, with ``port_range``, the first free ones of the range for the
    rest (none free: exit 2); the others are the engine's pick. Chosen now, bound at the container's
    start: another program may take one in between (the start then fails and the spawn is undone)."""
    pairs = port_pairs(s.ports)
    chosen = {c: h for c, h in pairs if h}
    for c, h in chosen.items():
        if not _free(h):
            raise UsageError(f"port {h} on {LOOPBACK} is in use (asked for container port {c})",
                             hint="pick another host port, or publish the container port alone (a free one)")
    if s.port_range:
        low, high = map(int, s.port_range.split("-"))
        taken = set(chosen.values())
        candidates = (p for p in range(low, high + 1) if p not in taken and _free(p))
        for c, h in pairs:
            if not h:
                picked = next(candidates, None)
                if picked is None:
                    raise UsageError(f"no free port left in port_range {s.port_range} on {LOOPBACK}",
                                     hint="widen port_range, or unset it (the engine picks)")
                chosen[c] = picked
    return tuple((c, chosen[c]) for c, _ in pairs if c in chosen)


def allocate_name(mgr: SandboxManager, prefix: str, skip: set[str] | None = None) -> str:
    """The first free ``prefix-N``: no agent has it (on the engine), nor was it just tried (``skip``)."""
    taken = {c.get("Labels", {}).get(L.NAME) for c in mgr.containers(L.managed_filter())}
    taken |= skip or set()
    n = 1
    while f"{prefix}-{n}" in taken:
        n += 1
    return f"{prefix}-{n}"


# -- a workspace agent (cold, or into a warm pool's slot) -----------------------------------------
def spawn(mgr: SandboxManager, task: str | None, *, repo_path: Path | None = None, name: str | None = None,
          agent: str | None = None, model: str | None = None, agent_cmd: str | None = None, base: str | None = None,
          mock_script: dict[str, Any] | None = None, wait_ready: bool = True,
          on_step: Callable[[str], None] | None = None, queue: bool = False, trace: Any = None,
          labels: dict[str, str] | None = None) -> Sandbox:
    """``SandboxManager.spawn``: an agent with its own workspace on a new branch of the repository."""
    s = mgr.settings
    step = on_step or (lambda _msg: None)
    trace = trace or trace_.OFF
    aspec, model, prefix = agent_of(mgr, agent, model, task, agent_cmd, name)
    if agent_cmd is not None:
        aspec = agents.AgentSpec(aspec.name, aspec.argv, "type")
    mgr.backend.refuse_workspace()
    if s.ports and s.profile not in spec_.PORTS_PROFILES:
        raise UsageError(f"the {s.profile} profile publishes no ports ({'no network' if s.profile == 'locked' else 'its internal network reaches nothing outside but its proxies'})",
                         hint="drop --port (and `ports` in the settings), or use the default profile")
    repo = gitops.find_repo(repo_path or Path.cwd())
    base_sha = gitops.resolve_commit(repo, base or "HEAD")
    copies = setup_.checked(s, repo)  # [setup] copy: read and checked before anything is made
    port_hosts = host_ports(s)  # (a chosen host port in use: refused before anything is made)
    image_ref, image_id, uid, gid = repo_image(mgr, repo.top, step)  # (last: it may build the toolchain's image)

    trace.mark("resolve")
    explicit = name is not None
    name = name or allocate_name(mgr, prefix)
    trace.mark("name")
    if s.max_agents is not None:
        step(f"waiting for a free slot (max {s.max_agents} agents)" if queue else "checking capacity")
    tried: set[str] = set()
    with capacity.Slot(s.data_dir / "capacity.lock", s.max_agents, mgr.working_count, queue=queue,
                       timeout=s.queue_timeout) as slot:
        job = Spawn(name=name, agent=aspec, task=task, model=model, repo=repo, base_sha=base_sha, image_id=image_id,
                    uid=uid, gid=gid, mock_script=mock_script, wait_ready=wait_ready, step=step, slot=slot, explicit=explicit,
                    trace=trace, labels=tuple(sorted((labels or {}).items())), copies=copies,
                    image_ref=image_ref, port_hosts=port_hosts)
        for _ in range(50):
            try:
                return _spawn_named(mgr, job)
            except NameTaken:
                if explicit:
                    raise Conflict(f"name {job.name!r} is taken", hint="pick another with --name") from None
                tried.add(job.name)
                job = replace(job, name=allocate_name(mgr, prefix, tried))
    raise Conflict("could not find a free name; pass --name")


def _spawn_named(mgr: SandboxManager, job: Spawn) -> Sandbox:
    with SpawnLock(mgr.settings.data_dir, job.name) as held:
        if not held:
            raise NameTaken(job.name)  # another spawn on this host is making this name
        return _spawn_locked(mgr, job)


def _spawn_locked(mgr: SandboxManager, job: Spawn) -> Sandbox:
    from sandbox.spawn import warm

    s = mgr.settings
    name, repo = job.name, job.repo
    if mgr.containers(L.managed_filter(f"{L.NAME}={name}")):
        raise NameTaken(name)
    branch = BRANCH_PREFIX + name
    workspace = s.data_dir / "workspaces" / repo.slug / name
    agent_git = s.data_dir / "agent-git" / repo.slug / name
    state_dir = s.data_dir / "state" / name
    for path in (workspace, agent_git):
        if path.exists() or path.is_symlink():
            if not job.explicit:  # a parallel spawn took this name a moment ago: the next one
                raise NameTaken(name)
            raise RepoError(f"path already exists: {path}", hint="remove it or pick another --name")
    branches = gitops.heads(repo)
    if branch in branches:
        if not job.explicit:  # kept by an earlier agent of that name (rm keeps branches): the next name
            raise NameTaken(name)
        raise Conflict(f"branch {branch} already exists in {repo.top}", hint="pick another --name")
    uid, gid = job.uid, job.gid
    ws = spec_.Workspace(path=workspace, agent_git=agent_git, objects=mgr.objects_for(repo), state_dir=state_dir)
    if ws.objects is not None and not trees.readable_by(ws.objects, uid, gid):
        raise RepoError(f"the agent (uid {uid}) cannot read {ws.objects}: it borrows your objects read-only",
                        hint='set objects = "reachable" (its own pack), or `chmod -R o+rX` that directory')
    req = request(mgr, name, job.agent, job.model, job.task, repo, branch, job.base_sha, job.image_id,
                  job.mock_script, uid, gid, job.labels, image_ref=job.image_ref, port_hosts=job.port_hosts)
    container = spec_.build(req, ws)
    if s.runtime and s.runtime not in (known := mgr.engine.runtimes()):
        raise UsageError(f"the engine has no runtime {s.runtime!r} (it has: {', '.join(known) or 'none'})",
                         hint="install and register it with the engine (daemon.json `runtimes`), or unset runtime")

    job.trace.mark("spec")
    if container.isolation is None and pool.root(s.data_dir).is_dir():
        key = pool.key_of(spec_.pool_parts(container, ws))
        while (found := warm.take_slot(mgr, key)) is not None:
            sandbox = warm.spawn_warm(mgr, found, req, job, branches)
            if sandbox is not None:
                warm.top_up_later(key, repo)
                return sandbox
    with ExitStack() as undo:
        job.step(f"workspace on branch {branch}")
        trees.make_workspace(mgr, repo, ws, branch, job.base_sha, uid, gid, undo, name=name, image=job.image_id,
                             branches=branches, trace=job.trace, copies=job.copies)
        crash.point("spawn:workspace")
        job.step(f"container {container.name}")
        run(mgr, container, undo, job.slot, trace=job.trace)
        crash.point("spawn:start")
        sandbox = until_ready(mgr, job)
        undo.pop_all()
        return sandbox
    raise AssertionError("unreachable")


def until_ready(mgr: SandboxManager, job: Spawn) -> Sandbox:
    """Spawn, last step: the new agent's snapshot, once it accepts input (``wait_ready``)."""
    sandbox = mgr.get(job.name)
    job.trace.mark("get")
    if job.wait_ready:
        job.step("waiting for the agent to be ready")
        try:  # ([setup] run's own time, and its failure with its last lines)
            sandbox = mgr.wait_ready(sandbox, timeout=setup_.ready_timeout(mgr.settings))
        except AgentError as e:
            raise setup_.explained(e, sandbox.labels.get(L.STATE_DIR)) from None
        job.trace.mark("ready")
    crash.point("spawn:ready")
    return sandbox


def request(mgr: SandboxManager, name: str, agent: agents.AgentSpec, model: str | None, task: str | None,
            repo: gitops.Repo, branch: str, base_sha: str, image_id: str, mock_script: dict[str, Any] | None,
            uid: int, gid: int, extra_labels: tuple[tuple[str, str], ...] = (), *,
            image_ref: str = "", port_hosts: tuple[tuple[int, int], ...] = ()) -> spec_.Request:
    """The spawn's request, the settings applied."""
    s = mgr.settings
    secrets, use_mock = secrets_of(mgr, agent)
    return spec_.Request(
        name=name, agent=agent, model=model, task=task, repo_top=repo.top, common_dir=repo.common_dir,
        branch=branch, base=base_sha, image_id=image_id, image_ref=image_ref or s.image, profile=s.profile, uid=uid,
        gid=gid, created=datetime.now(timezone.utc).isoformat(timespec="seconds"), retries=s.retries,
        retry_backoff=s.retry_backoff, max_time=s.max_time, idle_timeout=s.idle_timeout,
        memory=s.memory_limit(), nano_cpus=int(s.cpus * 1e9) if s.cpus else 0, pids_limit=s.pids_limit,
        network=s.network, run_id=s.run_id, use_mock=use_mock, mock_script=mock_script,
        git_identity=git_identity(repo), secrets=secrets, nofile=s.nofile, runtime=s.runtime,
        allow=tuple(s.allow), model_upstream=s.model_upstream, egress_network=s.egress_network,
        max_cost=s.max_cost, prices=s.price_table() if s.max_cost else None, extra_labels=extra_labels,
        ports=tuple(c for c, _ in port_pairs(s.ports)), port_hosts=port_hosts, **setup_.launch_fields(s),
        disk=memory_bytes(s.disk) or 0)


def secrets_of(mgr: SandboxManager, agent: agents.AgentSpec) -> tuple[dict[str, str], bool]:
    secrets = {k: os.environ[k] for k in mgr.settings.secret_env if os.environ.get(k)}
    mode = mgr.settings.mock_model
    has_key = any(k in secrets for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"))
    use_mock = agent.claude and (mode == "on" or (mode == "auto" and not has_key))
    return secrets, use_mock


def git_identity(repo: gitops.Repo) -> dict[str, str]:
    proc = gitops.git(repo.top, "config", "--get-regexp", r"^user\.(name|email)$", check=False)
    ident = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        ident[key.split(".", 1)[1]] = value
    return ident


# -- a headless agent (the image alone: it clones, it pushes) -------------------------------------
def spawn_headless(mgr: SandboxManager, task: str | None, *, repo_url: str, name: str | None = None,
                   agent: str | None = None, model: str | None = None, agent_cmd: str | None = None,
                   base: str | None = None, branch: str | None = None, git_token_file: Path | None = None,
                   mock_script: dict[str, Any] | None = None, wait_ready: bool = True,
                   on_step: Callable[[str], None] | None = None) -> Sandbox:
    """``SandboxManager.spawn_headless``: the image's headless mode on this backend (``spec.build_headless``)."""
    from sandbox.inside import headless

    s = mgr.settings
    step = on_step or (lambda _msg: None)
    if not task or not task.strip():
        raise UsageError("a headless agent needs a task", hint='sandbox spawn --headless --repo-url URL "the task"')
    aspec, model, prefix = agent_of(mgr, agent, model, task, agent_cmd, name, check_task=False)
    token = ""
    if git_token_file is not None:
        try:
            token = git_token_file.read_text().strip()
        except OSError as e:
            raise UsageError(f"--git-token-file {git_token_file}: {e.strerror}") from None
    image_id, uid, gid = image_and_user(mgr)
    secrets, use_mock = secrets_of(mgr, aspec)
    explicit = name is not None
    name = name or allocate_name(mgr, prefix)
    if mgr.containers(L.managed_filter(f"{L.NAME}={name}")):
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
    return mgr.backend.run_headless(mgr, container, req, explicit=explicit, wait_ready=wait_ready, step=step)


def run_headless(mgr: SandboxManager, container: spec_.ContainerSpec, req: spec_.HeadlessRequest, *,
                 explicit: bool, wait_ready: bool, step: Callable[[str], None]) -> Sandbox:
    """A headless agent on this engine: its state dir (the agent's uid's), then ``run``."""
    s = mgr.settings
    state_dir, image_id, uid, gid = req.state_dir, req.image_id, req.uid, req.gid
    with ExitStack() as undo, capacity.Slot(s.data_dir / "capacity.lock", s.max_agents, mgr.working_count) as slot:
        if state_dir.exists() and not explicit:
            mgr.remove_tree(state_dir, image_id)
        trees.make_state_dir(state_dir, uid, gid, supervised=container.supervised)
        undo.callback(mgr.remove_tree, state_dir, image_id)
        if os.getuid() != 0:  # (its agent's side; the top stays the supervisor's, as for a spawned agent)
            trees.chown_in_container(mgr, [state_dir / contract.AGENT_STATE if container.supervised else state_dir],
                                     uid, gid, image_id)
        step(f"container {container.name} (headless: {req.repo_url} -> {req.branch})")
        try:
            run(mgr, container, undo, slot)
        except NameTaken:
            raise Conflict(f"name {req.name!r} is taken", hint="pick another with --name") from None
        sandbox = when_ready(mgr, req.name, wait_ready, step)
        undo.pop_all()
        return sandbox
    raise AssertionError("unreachable")


def when_ready(mgr: SandboxManager, name: str, wait_ready: bool, step: Callable[[str], None]) -> Sandbox:
    """A headless spawn's last step: its snapshot, once it accepts input (``wait_ready``)."""
    sandbox = mgr.get(name)
    if wait_ready:
        step("waiting for the agent to be ready")
        sandbox = mgr.wait_ready(sandbox)
    return sandbox


# -- the runner ------------------------------------------------------------------------------------
def run(mgr: SandboxManager, container: spec_.ContainerSpec, undo: ExitStack, slot: capacity.Slot | None = None,
        *, claimed: str | None = None, handover: bool = True, on_created: Callable[[str], None] | None = None,
        before_start: Callable[[], None] | None = None, trace: Any = trace_.OFF) -> str:
    """Run what the spec says: create its network (and an isolated agent's proxies) and its container
    (or take ``claimed``, a warm pool container renamed to the agent), hand over the launch document and
    the secrets (``handover``: a pool's container gets none until claimed), then start it (a claimed one
    is woken: ``contract.WAKE_SIGNAL``). Each thing made is undone by ``undo`` if a later step fails; the
    capacity ``slot`` is released once the agent counts itself (``starting``). The container's id."""
    engine = mgr.engine
    agent = L.NAME in container.labels  # (a pool's container is no agent until claimed)
    if claimed is None:
        network_id = None
        locks = mgr.settings.data_dir / "locks"  # (the shared network: one maker at a time, Engine.ensure_network)
        if container.isolation is not None:
            from sandbox import isolation

            network_id = isolation.make(engine, container, mgr.settings.network, undo, locks)
        elif not container.network.disabled:
            network_id = engine.ensure_network(container.network.name, {L.MANAGED: "1"},
                                               icc=not container.network.isolated, lock_dir=locks)
        trace.mark("network")
        try:
            cid = engine.create_from(container, network_id)
        except Conflict:
            if not agent:
                raise
            raise NameTaken(container.labels[L.NAME]) from None
        undo.callback(engine.remove, cid)
        if on_created is not None:
            on_created(cid)
        trace.mark("create")
        if agent:
            crash.point("spawn:create")
    else:
        cid = claimed
    if slot is not None and claimed is None:
        slot.recheck()
    if handover:
        hand_over(mgr, container, cid)
    if before_start is not None:
        before_start()
    if claimed is None:
        trace.mark("copy")
        engine.start(cid)
        trace.mark("start")
        if slot is not None:
            slot.release()  # the new agent is `starting` now: it counts itself
    else:
        if slot is not None:
            slot.recheck()
        engine.signal(cid, contract.WAKE_SIGNAL)  # (tini passes it on to the init)
        if slot is not None:
            slot.release()
        trace.mark("signal")
    return cid


def hand_over(mgr: SandboxManager, container: spec_.ContainerSpec, cid: str) -> None:
    """What the init reads at its start: the launch document onto the state mount, the secrets (if
    any) by ``put_archive`` into the launch dir — never onto a mount."""
    uid, gid = container.container_user
    _write_state_files(container, uid, gid)
    if files := container.files():
        mgr.engine.put_archive(cid, contract.LAUNCH_DIR, tar(files, uid, gid, "."))


def tar(files: dict[str, tuple[bytes, int]], uid: int, gid: int, top: str) -> bytes:
    """The launch dir's files as a tar for ``put_archive``, owned by ``uid:gid`` (a supervised container:
    root's, 0700: the agent reads none of it; the image alone: the agent's own)."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        d = tarfile.TarInfo(top)
        d.type, d.mode, d.uid, d.gid = tarfile.DIRTYPE, 0o700, uid, gid
        t.addfile(d)
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode, info.uid, info.gid = len(data), mode, uid, gid
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _write_state_files(container: spec_.ContainerSpec, uid: int, gid: int) -> None:
    """The spec's ``state_files`` into its state dir, which the host made a moment ago and no agent
    process has seen: created afresh (``O_EXCL``, no link followed), ``uid:gid`` as owner, readable by
    all (the launch document holds no secret; the agent's hooks read it)."""
    state_dir = container.state_dir
    for name, (data, mode) in container.state_files().items():
        assert state_dir is not None
        fd = os.open(os.path.join(state_dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            os.write(fd, data)
            if os.getuid() == 0:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode | 0o044)
        finally:
            os.close(fd)


class SpawnLock:
    """``data_dir/spawning/NAME.lock``, flocked by the spawn of NAME while it runs (the kernel releases
    it when the process dies, however it dies): ``gc`` does not take what a live spawn is making for
    the leftovers of one that was cut short."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.path = data_dir / "spawning" / f"{name}.lock"
        self.fd = -1

    def __enter__(self) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            # The holder before us unlinks the file while it holds it (below): a file we opened before
            # that unlink is a dead inode, and a lock on it guards nothing — a third process may create
            # and lock the path anew. Held is held only while the path still names our inode.
            try:
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return True
            os.close(fd)

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            self.path.unlink(missing_ok=True)  # (while held: a reader that opens it later finds nothing)
            os.close(self.fd)
            self.fd = -1

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
