"""The Swarm backend's engine calls: a headless agent as a one-replica service (docker-py, lazily).

An agent on Swarm is a service named ``sandbox-NAME`` with one replica, made from the headless
container spec (``sandbox.spawn.spec.build_headless``: the node clones the repository and pushes its
branch, nothing of the user's host is mounted). Swarm's own pieces do the rest: the restart policy
(``on-failure``, the agent's retry count), resource limits, the ``sandbox.*`` labels on the service
and, through ``container_labels``, on every task container (so discovery is the same label query as
for local agents, on each node's engine), and its secrets (the git token, the API key) as Swarm
secrets mounted at ``/run/secrets`` (never in the service's env or ``docker inspect``).

What Swarm's API (1.41, Docker 20.10) cannot say is dropped and documented: ``no-new-privileges``
(not a service option before API 1.44), and the task's tmpfs sizes are Swarm's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sandbox import contract
from sandbox import labels as L
from sandbox.engine import LOG_CONFIG, Engine, _docker_py, retry
from sandbox.errors import NotFound, UsageError

if TYPE_CHECKING:
    from sandbox.spawn.spec import ContainerSpec

SECRETS_DIR = "/run/secrets"
STOP_GRACE = 20  # seconds: the headless init pushes its WIP on SIGTERM within 10 s


class Swarm:
    """The swarm a manager engine leads: services, tasks, nodes, secrets."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.node_id = ""   # this engine's node (set by check)

    def _api(self) -> Any:
        return self.engine._client()

    def check(self) -> None:
        """A clear error unless this engine is a swarm manager."""
        with _docker_py("read the engine's swarm state"):
            info = self._api().info()
        swarm = info.get("Swarm") or {}
        self.node_id = str(swarm.get("NodeID") or "")
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise UsageError("this engine is not a Docker Swarm manager (engine = \"swarm\")",
                             hint="`docker swarm init` here, point DOCKER_HOST/DOCKER_CONTEXT at a manager, "
                                  "or use --engine local")

    # -- services ----------------------------------------------------------------------------
    def create(self, spec: ContainerSpec, *, network: str | None, secrets: dict[str, bytes],
               constraints: list[str]) -> str:
        """Create the agent's service (started by Swarm as soon as a node takes it); its id. The
        secrets are created first (labelled with the agent's name, removed with it, and at once when
        the service cannot be made)."""
        refs: list[Any] = []
        try:
            return self._create(spec, network, secrets, constraints, refs)
        except BaseException:
            for ref in refs:  # no service: its secrets go too
                with contextlib.suppress(Exception), _docker_py("remove secret"):
                    self._api().remove_secret(ref["SecretID"])
            raise

    def _create(self, spec: ContainerSpec, network: str | None, secrets: dict[str, bytes], constraints: list[str],
                refs: list[Any]) -> str:
        from docker import types

        name = spec.labels[L.NAME]
        env = dict(spec.env)
        uid, gid = spec.container_user  # (root: the supervisor, which alone reads the secrets and pushes)
        for key, data in secrets.items():  # key: the *_FILE variable's file name (git-token, …)
            secret_id = self._secret(f"{spec.name}.{key}", data, {**_own(spec.labels), L.NAME: name})
            refs.append(types.SecretReference(secret_id, f"{spec.name}.{key}", filename=key, uid=str(uid),
                                              gid=str(gid), mode=0o400))
        for var, path in list(env.items()):  # the spec names its files in the launch dir: Swarm's are here
            if var.endswith(contract.SECRET_FILE) and path.rsplit("/", 1)[-1] in secrets:
                env[var] = f"{SECRETS_DIR}/{path.rsplit('/', 1)[-1]}"
        mounts = [types.Mount(target=path, source="", type="tmpfs", tmpfs_size=_size(opts))
                  for path, opts in spec.tmpfs.items()]
        mounts += [types.Mount(target=path, source="", type="volume") for path in spec.volumes]
        container = types.ContainerSpec(
            image=spec.image, env=env, workdir=spec.workdir, user=f"{uid}:{gid}",
            labels=dict(spec.labels), mounts=mounts, secrets=refs, read_only=spec.read_only_root,
            cap_drop=["ALL"], cap_add=list(contract.SUPERVISOR_CAPS) if spec.supervised else None,
            stop_grace_period=STOP_GRACE * 10**9, init=False)
        resources = types.Resources(mem_limit=spec.limits.memory or None, cpu_limit=spec.limits.nano_cpus or None)
        template = types.TaskTemplate(
            container_spec=container, resources=resources,
            restart_policy=types.RestartPolicy(condition="on-failure", delay=int(0.5 * 10**9),
                                               max_attempts=int(spec.labels.get(L.RETRIES) or 3)),
            placement=types.Placement(constraints=constraints) if constraints else None,
            log_driver=types.DriverConfig(LOG_CONFIG["Type"], dict(LOG_CONFIG["Config"])))
        if spec.limits.pids:
            template["Resources"].setdefault("Limits", {})["Pids"] = spec.limits.pids
        with _docker_py(f"create service {spec.name}"):
            made = self._api().create_service(template, name=spec.name, labels=dict(spec.labels),
                                              networks=[network] if network else None)
        return str(made["ID"])

    def _secret(self, name: str, data: bytes, labels: dict[str, str]) -> str:
        with _docker_py(f"create secret {name}"):
            return str(self._api().create_secret(name, data, labels=labels)["ID"])

    def services(self, filters: list[str]) -> list[dict[str, Any]]:
        """Services whose labels match every filter (one call)."""
        def once() -> list[dict[str, Any]]:
            with _docker_py("list services"):
                return list(self._api().services(filters={"label": filters}))

        return retry.call(retry.READS, once)

    def tasks(self, service_ids: list[str]) -> list[dict[str, Any]]:
        """The tasks of these services (one call), newest first."""
        if not service_ids:
            return []
        with _docker_py("list tasks"):
            found = list(self._api().tasks(filters={"service": service_ids}))
        return sorted(found, key=lambda t: str(t.get("CreatedAt", "")), reverse=True)

    def scale(self, service_id: str, replicas: int) -> None:
        """Stop (0) or start (1) an agent's service."""
        with _docker_py(f"scale service {service_id}"):
            api = self._api()
            svc = api.inspect_service(service_id)
            spec = svc["Spec"]
            api.update_service(service_id, version=svc["Version"]["Index"], task_template=spec["TaskTemplate"],
                               name=spec["Name"], labels=spec.get("Labels"), mode={"Replicated": {"Replicas": replicas}},
                               networks=spec["TaskTemplate"].get("Networks"), fetch_current_spec=False)

    def remove(self, service_id: str, name: str, timeout: float = STOP_GRACE + 10) -> None:
        """Remove the service (its task gets SIGTERM: a headless agent pushes its work) and, once its
        tasks are gone, its secrets; gone already is fine."""
        try:
            with _docker_py(f"remove service {service_id}"):
                self._api().remove_service(service_id)
        except NotFound:
            pass
        deadline = time.monotonic() + timeout
        for secret in self.secrets_of(name):
            while True:
                try:
                    with _docker_py(f"remove secret {secret}"):
                        self._api().remove_secret(secret)
                    break
                except NotFound:
                    break
                except Exception:  # in use until the task's container is gone
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    def secrets_of(self, name: str) -> list[str]:
        with _docker_py("list secrets"):
            return [str(s["ID"]) for s in self._api().secrets(filters={"label": [f"{L.NAME}={name}"]})]

    def this_node(self) -> str:
        if not self.node_id:
            with _docker_py("read the engine's swarm state"):
                self.node_id = str((self._api().info().get("Swarm") or {}).get("NodeID") or "")
        return self.node_id

    def nodes(self) -> dict[str, str]:
        """Node id -> host name."""
        with _docker_py("list nodes"):
            return {str(n["ID"]): str((n.get("Description") or {}).get("Hostname") or n["ID"][:12])
                    for n in self._api().nodes()}

    def ensure_network(self, name: str) -> str:
        """The overlay network agents' services use (made on demand, attachable so a person can debug
        with a plain container; labelled as ours)."""
        found = [n for n in self.engine.networks(name) if n.get("Name") == name]
        if found:  # ours, or one the user named (swarm_network): it must reach the nodes
            net = found[0]
            if net.get("Scope") != "swarm":
                raise UsageError(f"network {name} is not a swarm network (scope {net.get('Scope')}): a service "
                                 "cannot join it", hint="create it with `docker network create -d overlay`, or set "
                                                        "swarm_network to another name")
            return str(net["Id"])
        with _docker_py(f"create network {name}"):
            return str(self._api().create_network(name, driver="overlay", attachable=True,
                                                  labels={L.MANAGED: "1"})["Id"])


def _own(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k in (L.MANAGED, L.RUN_ID)}


def _size(opts: str) -> int | None:
    """``rw,size=512m`` -> bytes."""
    for opt in opts.split(","):
        if opt.startswith("size="):
            raw = opt[5:].lower()
            units = {"k": 1024, "m": 1024**2, "g": 1024**3}
            return int(float(raw[:-1]) * units[raw[-1]]) if raw[-1] in units else int(raw)
    return None


def agent_containers(engine: Engine, swarm: Swarm, filters: list[str],
                     node_engine: Callable[[str], Engine | None]) -> list[dict[str, Any]]:
    """The agents on the swarm, as container list entries (what ``Engine.list_containers`` gives), so
    discovery is the same for both backends: the nodes (one call), the task containers on each node
    whose engine is reachable (one call each, side by side: this engine for its own node, a Docker
    context named after the node's host name for the others, ``node_engine``), the services (one
    call) and, for a service with no container found, its newest task (one call for all of them) as
    an entry with no container (state ``created``, the task's state as status). A service's older
    task containers (Swarm keeps a few) are left out: the running one, else the newest. Each entry
    says its node (``Node``) and, on another node, the context that reaches it (``Context``)."""
    nodes = swarm.nodes()
    here = swarm.this_node()
    reach: list[tuple[Engine, str]] = [(engine, "")]
    for node_id, host in sorted(nodes.items(), key=lambda kv: kv[1]):
        other = node_engine(host) if node_id != here else None
        if other is not None:
            reach.append((other, host))
    with ThreadPoolExecutor(max_workers=min(8, len(reach))) as pool:
        lists = list(pool.map(lambda pair: [{**c, "Context": pair[1]} for c in pair[0].list_containers(filters)], reach))
    best: dict[str, dict[str, Any]] = {}
    for c in (c for found in lists for c in found):
        labels = c.get("Labels") or {}
        service = labels.get(SWARM_SERVICE_LABEL)
        if not service:
            continue
        c = {**c, "Node": nodes.get(labels.get(SWARM_NODE_LABEL, ""), "")}
        have = best.get(service)
        if have is None or (c.get("State") == "running", c.get("Created", 0)) > (have.get("State") == "running",
                                                                                 have.get("Created", 0)):
            best[service] = c
    services = swarm.services(filters)
    missing = [s for s in services if s["ID"] not in best]
    tasks = swarm.tasks([s["ID"] for s in missing])
    for svc in missing:
        task = next((t for t in tasks if t.get("ServiceID") == svc["ID"]), {})
        status = task.get("Status") or {}
        labels = {**((svc.get("Spec") or {}).get("Labels") or {}), SWARM_SERVICE_LABEL: svc["ID"]}
        state = "created" if task.get("DesiredState") == "running" else "exited"
        best[svc["ID"]] = {"Id": "", "Names": ["/" + (svc.get("Spec") or {}).get("Name", "?")], "Labels": labels,
                           "State": state, "Status": f"swarm task {status.get('State', 'pending')}"
                           + (f": {status['Err']}" if status.get("Err") else ""), "Node": ""}
    live = {s["ID"] for s in services}
    return [c for sid, c in best.items() if sid in live]


SWARM_SERVICE_LABEL = L.SWARM_SERVICE
SWARM_NODE_LABEL = L.SWARM_NODE


def push_to_nodes(swarm: Swarm, image: str, registry: str | None, say: Any) -> list[str]:
    """Make ``image`` available on every node: with ``registry``, tag and push it there (the nodes pull
    it); else ``docker save | docker --context NODE load`` for each node but this one, through the
    Docker context named after the node's host name. The nodes that could not be served (why)."""
    import subprocess

    from sandbox.engine import context_host

    if registry:
        target = f"{registry.rstrip('/')}/{image}"
        with _docker_py(f"push {target}"):
            api = swarm._api()
            repo, _, tag = target.rpartition(":") if ":" in target.rsplit("/", 1)[-1] else (target, "", "latest")
            api.tag(image, repo, tag)
            for line in api.push(repo, tag=tag, stream=True, decode=True):
                if line.get("error"):
                    raise UsageError(f"push {target}: {line['error']}")
        say(f"pushed {target}: set image = \"{target}\" so the nodes pull it")
        return []
    here = swarm.this_node()
    missing = []
    for node_id, host in sorted(swarm.nodes().items(), key=lambda kv: kv[1]):
        if node_id == here:
            say(f"{host}: this engine (has {image})")
            continue
        if context_host(host) is None:
            missing.append(f"{host}: no Docker context named {host} (`docker context create {host} --docker host=ssh://USER@{host}`)")
            continue
        failed = load_on(image, host)
        if failed:
            missing.append(f"{host}: {failed}")
        else:
            say(f"{host}: loaded {image}")
    return missing


LOAD_TIMEOUT = 1800.0  # one node's `docker save | docker load` (an agent image is ~0.5 GB; ssh may be slow)


def load_on(image: str, context: str, timeout: float = LOAD_TIMEOUT) -> str | None:
    """``docker save IMAGE | docker --context CONTEXT load``: None when loaded, else why not. Bounded:
    the parent keeps no end of the pipe (a ``load`` that fails early ends ``save`` with a broken pipe
    instead of leaving it blocked on a full one), and both are killed at ``timeout``."""
    import subprocess

    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert save.stdout is not None
    try:
        load = subprocess.Popen(["docker", "--context", context, "load", "-q"], stdin=save.stdout,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    finally:
        save.stdout.close()
    try:
        _, err = load.communicate(timeout=timeout)
        save.wait(timeout=30)
    except subprocess.TimeoutExpired:
        for proc in (load, save):
            proc.kill()
            proc.wait()
        return f"docker save | docker load did not finish in {timeout:g} s"
    finally:
        if save.stderr is not None:
            save.stderr.close()
    if load.returncode:
        return f"docker load failed: {(err.strip().splitlines() or ['?'])[-1]}"
    if save.returncode:
        return f"docker save {image} failed (exit {save.returncode})"
    return None
