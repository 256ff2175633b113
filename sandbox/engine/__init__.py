"""The one module that talks to the Docker engine: :class:`Engine`, and one error mapper.

docker-py's low-level ``APIClient`` (imported lazily, one connection pool for the life of the process:
in the command server, the life of a command's fork), for every call on every kind of engine (a local
socket, ``tcp://``, ``ssh://``, TLS). Its errors go through :func:`engine_error` (HTTP status + the
engine's message → ``sandbox.errors``). No docker-py object leaves this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from sandbox.engine import retry
from sandbox import contract
from sandbox.contract import CommandResult
from sandbox.errors import Conflict, EngineError, EngineUnavailable, ImageMissing, NotFound, SandboxError

# The log of every container sandbox creates (agents, pool slots, proxies, swarm tasks; compose.yaml says the
# same): the agent can write to its init's stdout, and Docker's own default json-file log has no bound. The
# `local` driver keeps at most max-file compressed files of max-size each; `docker logs` reads it as usual.
LOOPBACK = "127.0.0.1"  # where an agent's published ports are bound on the host (never all addresses)
LOG_CONFIG: dict[str, Any] = {"Type": "local", "Config": {"max-size": "10m", "max-file": "3"}}

if TYPE_CHECKING:
    from pathlib import Path

    import docker

    from sandbox.proxy import ProxyContainer
    from sandbox.spawn.spec import ContainerSpec

# A 404 about an image (docker-py's ImageNotFound matches the same texts).
_NO_SUCH_IMAGE = re.compile(r"no such image|repository does not exist|no pull access", re.IGNORECASE)


def engine_error(what: str, status: int | None, message: str) -> SandboxError:
    """The error for an engine's answer: its HTTP ``status`` and message (``status`` None: no answer,
    the engine could not be reached — ``message`` says why). The one mapping."""
    message = message.strip()
    if status is None:
        return EngineUnavailable(f"{what}: cannot reach the Docker engine ({message})")
    if status == 404:
        if _NO_SUCH_IMAGE.search(message):
            return ImageMissing(f"{what}: {message}", hint="run `sandbox image build`")
        return NotFound(f"{what}: {message}")
    if status == 409:
        return Conflict(f"{what}: {message}")
    return EngineError(f"{what}: {message}", status=status)


@contextlib.contextmanager
def _docker_py(what: str) -> Iterator[None]:
    """docker-py's errors (and requests') through :func:`engine_error`."""
    import docker.errors
    import requests.exceptions

    try:
        yield
    except docker.errors.APIError as e:
        raise engine_error(what, e.status_code, _explain(e)) from e
    except docker.errors.DockerException as e:  # no engine there (docker-py's own words)
        raise engine_error(what, None, str(e)) from e
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError) as e:
        raise engine_error(what, None, type(e).__name__) from e


def _explain(e: Any) -> str:
    explanation = getattr(e, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return str(explanation or e).strip()


def context_host(name: str | None = None) -> str | None:
    """The engine address of Docker context ``name`` (default ``$DOCKER_CONTEXT``), read from the
    docker CLI's own store (``~/.docker/contexts``); None for ``default`` or an unknown context."""
    import hashlib

    config = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    if name is None:
        name = os.environ.get("DOCKER_CONTEXT")
    if name is None:  # `docker context use NAME`
        try:
            with open(os.path.join(config, "config.json"), encoding="utf-8") as f:
                name = json.load(f).get("currentContext")
        except (OSError, ValueError, AttributeError):
            name = None
    if not name or name == "default":
        return None
    meta = os.path.join(config, "contexts", "meta", hashlib.sha256(name.encode()).hexdigest(), "meta.json")
    try:
        with open(meta, encoding="utf-8") as f:
            host = json.load(f)["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(host) if host else None


def _context_tls(name: str) -> bool:
    """Whether Docker context ``name`` has TLS material in the CLI's store (only whether: docker-py reads it)."""
    import hashlib

    config = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.isdir(os.path.join(config, "contexts", "tls", hashlib.sha256(name.encode()).hexdigest()))


def engine_address() -> str:
    """Where this process's engine is: ``$DOCKER_HOST``, else ``$DOCKER_CONTEXT``'s, else the local socket."""
    return os.environ.get("DOCKER_HOST") or context_host() or "unix:///var/run/docker.sock"


def remote_engine() -> str | None:
    """The engine's address when it is not on this host (``tcp://``, ``ssh://``…): it cannot bind-mount
    a path of this host. None for a local unix socket."""
    address = engine_address()
    return None if address.startswith(("unix://", "npipe://")) else address


class Engine:
    """The calls `sandbox` makes to the engine, typed (see the module doc)."""

    def __init__(self, base_url: str | None = None, timeout: int = 60, *, context: str | None = None) -> None:
        """``context``: that Docker context's engine (its address and its TLS material), e.g. a swarm node's."""
        self._context = context
        if base_url is None:  # a context's address: the one named, else the current one ($DOCKER_HOST wins)
            base_url = context_host(context) if context else None if os.environ.get("DOCKER_HOST") else context_host()
        self._base_url = base_url
        self._timeout = timeout
        self._apis: dict[float, docker.APIClient] = {}

    def _client(self, timeout: float | None = None) -> docker.APIClient:
        """docker-py's client (connects on first use): ``$DOCKER_HOST`` (with ``DOCKER_TLS_VERIFY`` and
        ``DOCKER_CERT_PATH``), else the Docker context's endpoint through docker-py's own ``ContextAPI`` —
        its TLS certificates too (a context's ``Host`` alone would dial a TLS engine without them).
        ``timeout``: another bound on each request than the engine's (``stats``): a client of its own."""
        timeout = self._timeout if timeout is None else timeout
        if timeout not in self._apis:
            import docker
            from docker.context import ContextAPI

            with _docker_py("connect"):
                kwargs: dict[str, Any] = {}
                if self._context is not None or not os.environ.get("DOCKER_HOST"):
                    kwargs = ContextAPI.kwargs_from_context(self._context)
                    name = self._context or os.environ.get("DOCKER_CONTEXT")
                    if not kwargs and name and context_host(name) and _context_tls(name):
                        # (docker-py finds contexts beside the CLI's config.json only; without TLS material
                        # the context's address is all there is, and _base_url has it)
                        from sandbox.errors import UsageError

                        raise UsageError(f"docker-py cannot read the TLS certificates of Docker context {name!r}: "
                                         "it looks for contexts only beside the docker CLI's config.json",
                                         hint="create it: echo '{}' > ${DOCKER_CONFIG:-~/.docker}/config.json")
                if self._base_url and kwargs.get("base_url") != self._base_url:
                    kwargs = {"base_url": self._base_url}
                if kwargs.get("tls"):
                    # The context's own CA: requests lets $REQUESTS_CA_BUNDLE replace a session's CA for each
                    # request unless the session ignores the environment — so no "auto" version lookup
                    # before that is set.
                    from docker.constants import MINIMUM_DOCKER_API_VERSION

                    api = docker.APIClient(**kwargs, timeout=timeout, version=MINIMUM_DOCKER_API_VERSION)
                    api.trust_env = False
                    api._version = api._retrieve_server_version()
                elif kwargs:
                    api = docker.APIClient(**kwargs, timeout=timeout, version="auto",
                                           use_ssh_client=str(kwargs["base_url"]).startswith("ssh://"))
                else:
                    api = docker.from_env(timeout=timeout, version="auto").api
                self._apis[timeout] = api
        return self._apis[timeout]

    # -- containers ----------------------------------------------------------------------------
    def list_containers(self, labels: list[str], *, all: bool = True) -> list[dict[str, Any]]:
        """One engine call: containers matching every ``key`` or ``key=value`` label filter."""
        what = "list containers"

        def once() -> list[dict[str, Any]]:
            with _docker_py(what):
                return list(self._client().containers(all=all, filters={"label": labels}))

        return retry.call(retry.READS, once)

    def _inspect(self, ref: str) -> dict[str, Any]:
        what = f"inspect {ref}"
        with _docker_py(what):
            return dict(self._client().inspect_container(ref))

    def networks_of(self, ref: str) -> dict[str, dict[str, Any]]:
        """The networks a container is attached to: name -> its endpoint (IPAddress, Gateway…)."""
        found = retry.call(retry.READS, self._inspect, ref)
        return dict((found.get("NetworkSettings") or {}).get("Networks") or {})

    def inspect(self, ref: str) -> dict[str, Any]:
        """The container as the engine describes it (``docker inspect``: HostConfig, Mounts, networks,
        GraphDriver, State): what ``sandbox doctor`` proves from outside. Read-only, retried."""
        return retry.call(retry.READS, self._inspect, ref)

    def top(self, ref: str) -> list[int]:
        """The host PIDs of a running container's processes (the engine's ``top``)."""
        what = f"top of {ref}"

        def once() -> dict[str, Any]:
            with _docker_py(what):
                return dict(self._client().top(ref))

        answer = retry.call(retry.READS, once)
        titles = [str(t) for t in answer.get("Titles") or []]
        if "PID" not in titles:
            return []
        col = titles.index("PID")
        return [int(row[col]) for row in answer.get("Processes") or [] if str(row[col]).isdigit()]

    def inspect_network(self, ref: str) -> dict[str, Any]:
        """A network as the engine describes it (``Internal``, ``Options``, ``IPAM``…); read-only."""
        return self._inspect_network(ref)

    def start(self, ref: str) -> None:
        def once() -> None:
            with _docker_py(f"start {ref}"):
                self._client().start(ref)  # (304: running already)

        retry.call(retry.LIFECYCLE, once)

    def stop(self, ref: str, timeout: int = 10) -> None:
        def once() -> None:
            with _docker_py(f"stop {ref}"):  # (304: stopped already; docker-py waits the engine's timeout + timeout)
                self._client().stop(ref, timeout=timeout)

        retry.call(retry.LIFECYCLE, once)

    def rename(self, ref: str, name: str) -> None:
        """Give a container another name (atomic at the engine: Conflict when another holds it)."""
        what = f"rename {ref} to {name}"
        with _docker_py(what):
            self._client().rename(ref, name)

    def signal(self, ref: str, signame: str) -> None:
        """Send a signal to a running container's main process (``docker kill --signal``)."""
        what = f"signal {ref}"
        with _docker_py(what):
            self._client().kill(ref, signal=signame)

    def remove(self, ref: str, *, force: bool = True) -> None:
        """Remove a container (and its anonymous volumes); one that is gone already, or whose removal
        is in progress, is not an error."""
        what = f"remove {ref}"
        try:
            with _docker_py(what):
                self._client().remove_container(ref, force=force, v=True)
        except NotFound:
            pass
        except (Conflict, EngineError) as e:  # "removal of container ... is already in progress" (409)
            if "already in progress" not in str(e):
                raise

    def exec(self, ref: str, argv: list[str], *, user: str | None = None,
             workdir: str | None = None) -> CommandResult:
        """Run argv (never a shell string) in a running container and collect its output."""
        what = f"exec in {ref}"
        with _docker_py(what):
            api = self._client()
            ex = api.exec_create(ref, argv, stdout=True, stderr=True, user=user or "", workdir=workdir)
            out, err = api.exec_start(ex["Id"], demux=True)
            code = api.exec_inspect(ex["Id"])["ExitCode"]
        return CommandResult(int(code if code is not None else -1), out or b"", err or b"")

    def exec_retried(self, ref: str, argv: list[str], *, user: str | None = None) -> CommandResult:
        """An exec that only reads (cat, capture-pane): safe to repeat, so retried on transient errors."""
        return retry.call(retry.READS, self.exec, ref, argv, user=user)

    def logs(self, ref: str, tail: int | None = 100, *, stderr: bool = True) -> str:
        """The container's last ``tail`` lines of output (None: all; stdout and, unless not
        ``stderr``, stderr, in order)."""
        what = f"logs of {ref}"
        with _docker_py(what):
            return bytes(self._client().logs(ref, stderr=stderr, tail="all" if tail is None else tail)
                         ).decode("utf-8", "replace")

    def stats(self, ref: str, timeout: float = 10.0, *, one_shot: bool = True) -> dict[str, Any]:
        """One sample of a container's resource use, not a stream. ``one_shot``: the engine's next sample
        (its collector samples every second) without the one before it (``precpu_stats`` empty: CPU %
        needs two of these); else it waits for two samples (~2 s) and gives both (``docker stats
        --no-stream``)."""
        with _docker_py(f"stats of {ref}"):
            return dict(self._client(timeout).stats(ref, stream=False, one_shot=True if one_shot else None))

    def stats_many(self, refs: list[str], *, workers: int = 8, timeout: float = 10.0,
                   one_shot: bool = True) -> dict[str, dict[str, Any] | None]:
        """``stats`` of each container, side by side (at most ``workers`` requests at once, each bounded
        by ``timeout``); None for a container whose sample failed (gone, or the engine slow)."""
        if not refs:
            return {}
        from concurrent.futures import ThreadPoolExecutor

        def one(ref: str) -> dict[str, Any] | None:
            try:
                return self.stats(ref, timeout, one_shot=one_shot)
            except SandboxError:
                return None

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(refs)))) as pool:
            return dict(zip(refs, pool.map(one, refs)))

    # The container events that change what a listing shows (not exec_*: every healthcheck and every
    # `capture-pane` is an exec, and would make a watcher list again and again).
    LIFECYCLE_EVENTS = ("create", "start", "restart", "die", "stop", "kill", "destroy", "pause", "unpause", "oom",
                        "rename", "health_status")

    def events(self, labels: list[str], stop: Callable[[], bool], *, since: float | None = None,
               actions: tuple[str, ...] = LIFECYCLE_EVENTS) -> Iterator[dict[str, Any]]:
        """The engine's container events (``actions``: by default the lifecycle ones) for containers
        matching the ``labels`` filters, as they happen, until ``stop()`` is true (checked every second)
        or the engine closes the stream. One long request; re-list after it ends (events replay
        only recent history)."""
        wanted = {"type": ["container"], "label": labels, "event": list(actions)}
        import docker.errors
        import requests.exceptions

        with _docker_py("container events"):
            stream = self._client().events(decode=True, filters=wanted, since=f"{since:.3f}" if since else None)
            try:  # (docker-py's stream would end quietly on a refusal: the engine's answer is its error)
                stream._response.raise_for_status()
            except requests.exceptions.HTTPError as e:
                stream.close()
                docker.errors.create_api_error_from_http_exception(e)
        done = threading.Event()

        def watch() -> None:  # docker-py's way to end a blocked stream: close() from another thread
            while not done.wait(1.0):
                if stop():
                    stream.close()
                    return

        threading.Thread(target=watch, name="events-stop", daemon=True).start()
        try:
            with _docker_py("container events"):
                for event in stream:
                    if stop():
                        return
                    yield dict(event)
        finally:
            done.set()
            stream.close()

    @staticmethod
    def cli_exec(ref: str, argv: list[str], *, stdin: bool = True, user: str | None = None,
                 env: dict[str, str] | None = None) -> list[str]:
        """The docker CLI's argv for an exec whose standard streams are a pipe (e.g. a git transport)."""
        env_args = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        return ["docker", "exec", *(["-i"] if stdin else []), *(["--user", user] if user else []), *env_args,
                "--workdir", "/", ref, *argv]

    @staticmethod
    def cli_run_reader(image: str, user: str, binds: list[tuple[str, str]], argv: list[str],
                       labels: dict[str, str]) -> list[str]:
        """The docker CLI's argv for a throwaway, locked-down container that only reads ``binds``
        (host path, container path; all read-only, a missing source is an error, never created):
        no network, no capabilities, read-only root, a small /tmp, removed when it ends."""
        out = ["docker", "run", "--rm", "-i", "--network", "none", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges:true", "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=2g",
               "--pids-limit", "256", "--user", user, "--entrypoint", argv[0], "--workdir", "/tmp",
               "--log-driver", "none"]  # (its output is the pack the caller reads: never kept in a log too)
        for key, value in labels.items():
            out += ["--label", f"{key}={value}"]
        for src, dst in binds:
            out += ["--mount", f"type=bind,source={src},target={dst},readonly"]
        return [*out, image, *argv[1:]]

    @staticmethod
    def run_tool(image: str, user: str, binds: list[tuple[str, str]], argv: list[str], labels: dict[str, str],
                 *, caps: tuple[str, ...] = (), timeout: float = 300.0) -> CommandResult:
        """``argv`` (trusted: the image's own programs) in a throwaway container that works on ``binds``
        (host path, container path; read-write, a missing source is an error, never created) as
        ``user``, with only ``caps``: no network, read-only root, no log, removed when it ends. What the
        host cannot do to an agent's files itself (give them to the agent's uid, delete them)."""
        import subprocess

        out = ["docker", "run", "--rm", "--network", "none", "--cap-drop", "ALL",
               *[a for cap in caps for a in ("--cap-add", cap)], "--security-opt", "no-new-privileges:true",
               "--read-only", "--pids-limit", "64", "--user", user, "--entrypoint", argv[0], "--workdir", "/",
               "--log-driver", "none"]
        for key, value in labels.items():
            out += ["--label", f"{key}={value}"]
        for src, dst in binds:
            out += ["--mount", f"type=bind,source={src},target={dst}"]
        try:
            proc = subprocess.run([*out, image, *argv[1:]], stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return CommandResult(124, b"", f"{argv[0]}: timed out after {timeout:g}s".encode())
        except OSError as e:
            return CommandResult(127, b"", f"docker: {e.strerror}".encode())
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)

    # -- containers (docker-py) ----------------------------------------------------------------
    def create(
        self,
        *,
        name: str,
        image: str,
        command: list[str] | None,
        labels: dict[str, str],
        env: dict[str, str],
        user: str,
        binds: list[str],
        working_dir: str | None = None,
        host_config: dict[str, Any] | None = None,
        healthcheck: dict[str, Any] | None = None,
        exposed: list[str] | None = None,
    ) -> str:
        def once() -> str:
            try:
                return self._create(name=name, image=image, command=command, labels=labels, env=env,
                                    user=user, binds=binds, working_dir=working_dir, host_config=host_config,
                                    healthcheck=healthcheck, exposed=exposed)
            except (EngineError, Conflict) as err:
                took, status = self._created_already(name, labels)  # retried only if it did not happen
                if took is not None:
                    return took
                if retry.is_name_held(err) and status not in ("removing", "dead"):
                    raise Conflict(f"create container {name}: the name is taken") from err
                raise err

        return retry.call(retry.NAME_RELEASE, once)

    def create_from(self, spec: ContainerSpec, network_id: str | None = None) -> str:
        """Create (not start) the container a ``sandbox.spawn.spec.ContainerSpec`` describes: Docker's wording
        (capabilities, security options, mounts, limits) lives here and nowhere else."""
        host_config: dict[str, Any] = {
            "CapDrop": ["ALL"],
            # a supervised container's root init keeps these few (contract.SUPERVISOR_CAPS); its agent none
            "CapAdd": list(contract.SUPERVISOR_CAPS) if spec.supervised else [],
            "SecurityOpt": ["no-new-privileges:true"],
            "PidsLimit": spec.limits.pids,
            # unless-stopped: back after its init died (OOM, killed) and after an engine restart or a
            # reboot (on-failure is not applied then); `sandbox stop`, `docker stop`/`kill` are manual
            # stops, which it respects. The init bounds the restarts: it counts each as a failed attempt
            # and, past `retries`, stays up as `failed` (README "Supervision and retries"). A headless
            # agent is never restarted by the engine: its exit code is the result.
            "RestartPolicy": {"Name": "unless-stopped" if spec.engine_restarts else "no"},
            "Ulimits": [{"Name": "nofile", "Soft": spec.nofile, "Hard": spec.nofile}],
            "LogConfig": LOG_CONFIG,
        }
        if spec.limits.memory:
            host_config["Memory"] = spec.limits.memory
        if spec.limits.nano_cpus:
            host_config["NanoCpus"] = spec.limits.nano_cpus
        if spec.network.disabled:
            host_config["NetworkMode"] = "none"
        elif network_id is not None:
            host_config["NetworkMode"] = network_id
        if spec.read_only_root:
            host_config["ReadonlyRootfs"] = True
        if spec.tmpfs:
            host_config["Tmpfs"] = dict(spec.tmpfs)
        if spec.volumes:
            host_config["Mounts"] = [{"Target": path, "Type": "volume"} for path in spec.volumes]
        if spec.runtime:
            host_config["Runtime"] = spec.runtime
        if spec.ports:  # each on the host's loopback only (never 0.0.0.0): the port chosen, or a free one the engine picks
            chosen = dict(spec.port_hosts)
            host_config["PortBindings"] = {f"{p}/tcp": [{"HostIp": LOOPBACK, "HostPort": str(chosen.get(p) or "")}]
                                           for p in spec.ports}
        binds = [f"{b.source}:{b.target}:{'ro' if b.read_only else 'rw'}" for b in spec.binds]
        return self.create(name=spec.name, image=spec.image, command=None, labels=spec.labels, env=spec.env,
                           user="{}:{}".format(*spec.container_user), binds=binds, working_dir=spec.workdir,
                           host_config=host_config, exposed=[f"{p}/tcp" for p in spec.ports])

    def create_proxy(self, pc: ProxyContainer, *, name: str, image: str, labels: dict[str, str], network: str,
                     alias: str, outside: str, runtime: str | None = None) -> str:
        """Create (not start) one of an isolated agent's proxies (``sandbox.proxy``): on the agent's
        internal ``network`` as ``alias`` and on the ordinary ``outside`` bridge; no capabilities,
        read-only root, small limits. Its configuration goes in with ``put_archive`` before start."""
        host_config: dict[str, Any] = {
            "cap_drop": list(pc.cap_drop), "security_opt": list(pc.security_opt), "read_only": pc.read_only_root,
            "tmpfs": dict(pc.tmpfs), "mounts": [{"Target": path, "Type": "volume"} for path in pc.volumes],
            "mem_limit": 256 * 1024**2, "pids_limit": 256, "network_mode": network,
            "ulimits": [{"Name": "nofile", "Soft": 4096, "Hard": 4096}],
            "restart_policy": {"Name": "unless-stopped"},  # back with its agent after an engine restart
            "log_config": {"type": LOG_CONFIG["Type"], "config": dict(LOG_CONFIG["Config"])},
        }
        if runtime:
            host_config["runtime"] = runtime

        def once() -> str:
            try:
                with _docker_py(f"create container {name}"):
                    api = self._client()
                    created = api.create_container(
                        image=image, command=list(pc.command), name=name, labels=labels, user=pc.user,
                        host_config=api.create_host_config(**host_config), detach=True,
                        networking_config=api.create_networking_config(
                            {network: api.create_endpoint_config(aliases=[alias])}))
                    cid = str(created["Id"])
            except (EngineError, Conflict) as err:
                took, _ = self._created_already(name, labels)
                if took is None:
                    raise err
                cid = took
            self.connect(cid, outside)
            return cid

        return retry.call(retry.NAME_RELEASE, once)

    def connect(self, ref: str, network: str) -> None:
        """Attach a created container to one more network (already attached is fine)."""
        try:
            with _docker_py(f"connect {ref} to {network}"):
                self._client().connect_container_to_network(ref, network)
        except (Conflict, EngineError) as e:
            if "already exists" not in str(e):
                raise

    def runtimes(self) -> list[str]:
        """The OCI runtimes this engine knows (``docker info``)."""
        def once() -> list[str]:
            with _docker_py("read the engine's info"):
                return sorted((self._client().info().get("Runtimes") or {}).keys())

        return retry.call(retry.READS, once)

    def _created_already(self, name: str, labels: dict[str, str]) -> tuple[str | None, str | None]:
        """(id of container ``name`` if it carries our ``labels`` — our earlier create took effect,
        the holder's status) — (None, None) when no container has that name."""
        try:
            found = self._inspect(name)
        except SandboxError:
            return None, None
        have = found.get("Config", {}).get("Labels") or {}
        status = str((found.get("State") or {}).get("Status") or "")
        mine = status not in ("removing", "dead") and all(have.get(k) == v for k, v in labels.items())
        return (str(found["Id"]) if mine else None), status

    def _create(self, *, name: str, image: str, command: list[str] | None, labels: dict[str, str],
                env: dict[str, str], user: str, binds: list[str], working_dir: str | None,
                host_config: dict[str, Any] | None, healthcheck: dict[str, Any] | None,
                exposed: list[str] | None = None) -> str:
        """One create, in the Engine API's own wording (``host_config``: HostConfig's fields)."""
        config: dict[str, Any] = {
            "Image": image, "Labels": labels, "Env": [f"{k}={v}" for k, v in env.items()], "User": user,
            "Tty": False, "OpenStdin": False, "AttachStdout": False, "AttachStderr": False,
            "HostConfig": {"Binds": list(binds), **(host_config or {})},
        }
        if command is not None:
            config["Cmd"] = list(command)
        if working_dir:
            config["WorkingDir"] = working_dir
        if healthcheck:
            config["Healthcheck"] = healthcheck
        if exposed:
            config["ExposedPorts"] = {p: {} for p in exposed}
        what = f"create container {name}"
        with _docker_py(what):
            return str(self._client().create_container_from_config(config, name=name)["Id"])

    def put_archive(self, ref: str, path: str, data: bytes) -> None:
        """Unpack the tar ``data`` at ``path`` in the container (created or running)."""
        what = f"copy into {ref}"
        with _docker_py(what):
            self._client().put_archive(ref, path, data)

    # -- networks --------------------------------------------------------------------------
    def networks(self, name: str) -> list[dict[str, Any]]:
        """Networks named exactly ``name`` (the engine's name filter matches substrings); oldest first.
        More than one happens when two creates raced (the engine's duplicate check is not atomic)."""
        def once() -> list[dict[str, Any]]:
            what = f"list networks {name}"
            with _docker_py(what):
                found = self._client().networks(names=[name])
            return sorted((n for n in found if n.get("Name") == name),
                          key=lambda n: (str(n.get("Created", "")), str(n.get("Id", ""))))

        return retry.call(retry.READS, once)

    def ensure_network(self, name: str, labels: dict[str, str], *, icc: bool = False,
                       lock_dir: Path | None = None) -> str:
        """The id of bridge network ``name`` carrying ``labels``, created if missing. ``icc=False``:
        containers on it cannot talk to each other. A network of that name that is not ours, or lets
        containers talk, is refused (Conflict).

        Race-safe on one host with ``lock_dir``: the look-and-create runs under an flock there, so two
        spawns at once make one network. Without it (or across hosts) it converges as best it can: the
        engine's duplicate check is not atomic (concurrent creates may all succeed), so a create that
        loses takes the winner's, everyone picks the oldest, and a loser's own is removed — but a
        network still being created may not be listed yet, which is why spawns pass the lock."""
        if lock_dir is None:
            return self._ensure_network(name, labels, icc)
        import fcntl

        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / f"network-{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # (kept, never unlinked: an unlinked lock file guards nothing)
            return self._ensure_network(name, labels, icc)
        finally:
            os.close(fd)

    def _ensure_network(self, name: str, labels: dict[str, str], icc: bool) -> str:
        icc_opt = "com.docker.network.bridge.enable_icc"

        def pick() -> str | None:
            found = self.networks(name)
            if not found:
                return None
            net = found[0]
            have = net.get("Labels") or {}
            if (net.get("Driver") != "bridge" or any(have.get(k) != v for k, v in labels.items())
                    or (net.get("Options") or {}).get(icc_opt, "true") != str(icc).lower()):
                raise Conflict(f"network {name} exists but was not made by sandbox (driver, labels or {icc_opt} differ)",
                               hint=f"remove it (`docker network rm {name}`) or set SANDBOX_NETWORK to another name")
            return str(net["Id"])

        existing = pick()
        if existing is not None:
            return existing
        made: str | None = None
        try:
            with _docker_py(f"create network {name}"):
                made = str(self._client().create_network(name, driver="bridge", labels=labels, check_duplicate=True,
                                                         options={icc_opt: str(icc).lower()})["Id"])
        except Conflict:
            pass  # another spawn created it first
        winner = pick()
        if made is not None and winner == made:
            # Two creates at once can both succeed, and the other one, older, may show in the list only
            # a moment after ours: look again once settled.
            import time

            time.sleep(0.2)
            winner = pick()
        if winner is None:
            raise EngineError(f"create network {name}: the engine does not list it")
        if made is not None and made != winner:
            self.remove_network(made)
        return winner

    def create_internal_network(self, name: str, labels: dict[str, str]) -> tuple[str, str]:
        """A bridge with no route out and no address for the host on it (``sandbox.proxy``'s
        INTERNAL_NETWORK_OPTIONS); containers on it may talk to each other (the agent to its
        proxies). (id, subnet). One of that name made by an earlier try with our labels is taken."""
        def subnet_of(net: dict[str, Any]) -> str:
            configs = (net.get("IPAM") or {}).get("Config") or [{}]
            return str(configs[0].get("Subnet") or "")

        for net in self.networks(name):
            have = net.get("Labels") or {}
            if net.get("Internal") and all(have.get(k) == v for k, v in labels.items()):
                return str(net["Id"]), subnet_of(self._inspect_network(str(net["Id"])))
            raise Conflict(f"network {name} exists but was not made by sandbox for this agent",
                           hint=f"remove it (`docker network rm {name}`)")
        from sandbox.proxy import INTERNAL_NETWORK_OPTIONS  # (not at import: `ls` never needs it)

        options = {**INTERNAL_NETWORK_OPTIONS, "com.docker.network.bridge.enable_icc": "true"}
        with _docker_py(f"create network {name}"):
            made = str(self._client().create_network(name, driver="bridge", internal=True, labels=labels,
                                                     options=options, check_duplicate=True)["Id"])
        return made, subnet_of(self._inspect_network(made))

    def _inspect_network(self, ref: str) -> dict[str, Any]:
        def once() -> dict[str, Any]:
            with _docker_py(f"inspect network {ref}"):
                return dict(self._client().inspect_network(ref))

        return retry.call(retry.READS, once)

    def list_networks(self, labels: list[str]) -> list[dict[str, Any]]:
        def once() -> list[dict[str, Any]]:
            with _docker_py("list networks"):
                return list(self._client().networks(filters={"label": labels}))

        return retry.call(retry.READS, once)

    def remove_network(self, ref: str) -> bool:
        """Remove a network; False when it is gone already or still in use."""
        try:
            with _docker_py(f"remove network {ref}"):
                self._client().remove_network(ref)
        except (NotFound, Conflict, EngineError):
            return False
        return True

    # -- images ------------------------------------------------------------------------------
    def _inspect_image(self, ref: str) -> dict[str, Any]:
        what = f"inspect image {ref}"
        with _docker_py(what):
            return dict(self._client().inspect_image(ref))

    def image_id(self, ref: str) -> str | None:
        """The image's ID, or None when the engine does not have it (never pulls)."""
        try:
            return str(self._inspect_image(ref)["Id"])
        except NotFound:
            return None

    def image_labels(self, ref: str) -> dict[str, str]:
        return dict((self._inspect_image(ref).get("Config") or {}).get("Labels") or {})

    def build_image(
        self,
        context_dir: str,
        dockerfile: str,
        tag: str,
        *,
        buildargs: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> str:
        """Build with the engine's classic builder (never pulls); stream progress lines."""
        with _docker_py(f"build {tag}"):
            stream = self._client().build(
                path=context_dir,
                dockerfile=dockerfile,
                tag=tag,
                buildargs=buildargs or {},
                labels=labels or {},
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            )
            for chunk in stream:
                if "error" in chunk:
                    raise EngineError(f"build {tag}: {str(chunk['error']).strip()}")
                line = chunk.get("stream") or chunk.get("status")
                if line and on_line:
                    on_line(str(line).rstrip("\n"))
        image_id = self.image_id(tag)
        if image_id is None:
            raise EngineError(f"build {tag} finished without an image")
        return image_id

    def image_tags(self, repository: str) -> list[str]:
        """The ``repository:tag`` references the engine has of ``repository`` (one list call)."""
        with _docker_py(f"list images {repository}"):
            found = self._client().images(filters={"reference": repository})
        return sorted(t for image in found for t in (image.get("RepoTags") or []) if t.rpartition(":")[0] == repository)

    def remove_image(self, ref: str) -> bool:
        """Untag or remove ``ref`` (never forced); False when a container still uses it, or it is gone."""
        try:
            with _docker_py(f"remove image {ref}"):
                self._client().remove_image(ref)
        except (NotFound, Conflict, EngineError):
            return False
        return True

    def tag_image(self, image: str, repository: str, tag: str) -> None:
        with _docker_py(f"tag {image}"):
            self._client().tag(image, repository, tag)

    def close(self) -> None:
        for api in self._apis.values():
            with contextlib.suppress(Exception):
                api.close()

