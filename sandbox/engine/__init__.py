"""The one module that talks to the Docker engine: :class:`Engine`, and one error mapper.

Two lanes, chosen by what the call is (never by what happened to be imported before):

* **plain HTTP** on the engine's local unix socket — no docker-py, no requests (importing them
  costs ~100 ms, more than the call): the calls that are one small request each and that the hot
  commands (``ls``, ``logs``, ``send``) and ``spawn`` make: list, inspect (container, image), create
  (the Engine API's own JSON, written once for both lanes in ``_create``), ``put_archive``, network
  lists, exec, logs, start, stop, rename, signal, remove. Only when the engine is a local socket
  without TLS (``DOCKER_HOST`` unset or ``unix://``).
* **docker-py** (its low-level ``APIClient``, imported lazily, one connection pool for the life of
  the process): the calls where it does real work — network create/remove, the proxies' create,
  build (tar context, streamed progress), tag; and every call when the engine is not a local socket
  (``tcp://``, ``ssh://``, TLS).

Both lanes raise through :func:`engine_error` (HTTP status + the engine's message →
``sandbox.errors``): the same engine answer is the same error whichever lane carried it. No
docker-py object leaves this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from sandbox.engine import retry
from sandbox.contract import CommandResult
from sandbox.errors import Conflict, EngineError, EngineUnavailable, ImageMissing, NotFound, SandboxError

if TYPE_CHECKING:
    import docker

    from sandbox.proxy import ProxyContainer
    from sandbox.spec import ContainerSpec

# A 404 about an image (docker-py's ImageNotFound matches the same texts).
_NO_SUCH_IMAGE = re.compile(r"no such image|repository does not exist|no pull access", re.IGNORECASE)


def engine_error(what: str, status: int | None, message: str) -> SandboxError:
    """The error for an engine's answer: its HTTP ``status`` and message (``status`` None: no answer,
    the engine could not be reached — ``message`` says why). The one mapping, for both lanes."""
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
    """The docker-py lane's errors (and requests') through :func:`engine_error`."""
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


def engine_address() -> str:
    """Where this process's engine is: ``$DOCKER_HOST``, else ``$DOCKER_CONTEXT``'s, else the local socket."""
    return os.environ.get("DOCKER_HOST") or context_host() or "unix:///var/run/docker.sock"


def remote_engine() -> str | None:
    """The engine's address when it is not on this host (``tcp://``, ``ssh://``…): it cannot bind-mount
    a path of this host. None for a local unix socket."""
    address = engine_address()
    return None if address.startswith(("unix://", "npipe://")) else address


def _local_socket(base_url: str | None) -> str | None:
    """The engine's unix socket path when it is a plain local one (no TLS), else None."""
    if base_url is None:
        if os.environ.get("DOCKER_TLS_VERIFY") or os.environ.get("DOCKER_CERT_PATH"):
            return None
        base_url = engine_address()
    return base_url[len("unix://"):] if base_url.startswith("unix://") else None


def _request(sock_path: str, method: str, path: str, what: str, timeout: float,
             body: dict[str, Any] | None = None, *, tar: bytes | None = None) -> tuple[dict[str, str], bytes]:
    """One request on the engine's unix socket (the plain-HTTP lane): HTTP/1.0, so the engine answers
    unchunked and closes the connection. The body: JSON, or a ``tar`` archive. The answer's headers
    (lower-case names) and body."""
    data = json.dumps(body).encode() if body is not None else (tar or b"")
    head = f"{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: {len(data)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    elif tar is not None:
        head += "Content-Type: application/x-tar\r\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(sock_path)
            conn.sendall(head.encode() + b"\r\n" + data)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except OSError as e:
        raise engine_error(what, None, f"{type(e).__name__}: {e}") from e
    raw_head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError) as e:  # not an engine's answer at all (no status to map)
        raise EngineError(f"{what}: unreadable answer from the engine: {raw_head[:80]!r}") from e
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if status >= 400:
        try:
            message = str(json.loads(payload).get("message", ""))
        except (ValueError, AttributeError):
            message = payload.decode("utf-8", "replace")
        raise engine_error(what, status, message)
    return headers, payload


def _json(payload: bytes, what: str) -> Any:
    try:
        return json.loads(payload)
    except ValueError as e:
        raise EngineError(f"{what}: unreadable answer from the engine") from e


def _frames(stream: bytes) -> list[tuple[int, bytes]]:
    """The engine's multiplexed stream (8-byte frame headers: stream 1 stdout, 2 stderr) as
    (stream, data) in order."""
    frames, i = [], 0
    while i + 8 <= len(stream):
        kind, size = stream[i], int.from_bytes(stream[i + 4:i + 8], "big")
        frames.append((kind, stream[i + 8:i + 8 + size]))
        i += 8 + size
    return frames


def _demux(stream: bytes) -> tuple[bytes, bytes]:
    """Split a multiplexed exec stream into stdout and stderr."""
    frames = _frames(stream)
    return (b"".join(d for k, d in frames if k != 2), b"".join(d for k, d in frames if k == 2))


def _is_multiplexed(headers: dict[str, str], stream: bytes) -> bool:
    """Engines before API 1.42 call every log stream raw: a frame header at the start tells."""
    if headers.get("content-type") == "application/vnd.docker.multiplexed-stream":
        return True
    return len(stream) >= 8 and stream[0] in (0, 1, 2) and stream[1:4] == b"\0\0\0"


def _q(ref: str) -> str:
    return urllib.parse.quote(ref, safe="/:@")


class Engine:
    """The calls `sandbox` makes to the engine, typed; each one on its lane (see the module doc)."""

    def __init__(self, base_url: str | None = None, timeout: int = 60, *, plain_http: bool = True) -> None:
        """``plain_http=False``: docker-py for every call, even on a local socket (tests compare the lanes)."""
        self._base_url = base_url
        self._sock = _local_socket(base_url) if plain_http else None  # None: no plain-HTTP lane
        self._timeout = timeout
        self._api: docker.APIClient | None = None

    def _client(self) -> docker.APIClient:
        """The docker-py lane (connects on first use)."""
        if self._api is None:
            import docker

            with _docker_py("connect"):
                base_url = self._base_url or (None if os.environ.get("DOCKER_HOST") else context_host())
                if base_url:
                    self._api = docker.APIClient(base_url=base_url, timeout=self._timeout, version="auto",
                                                 use_ssh_client=base_url.startswith("ssh://"))
                else:
                    self._api = docker.from_env(timeout=self._timeout, version="auto").api
        return self._api

    def _http(self, method: str, path: str, what: str, body: dict[str, Any] | None = None,
              timeout: float | None = None, *, tar: bytes | None = None) -> tuple[dict[str, str], bytes]:
        assert self._sock is not None
        return _request(self._sock, method, path, what, self._timeout if timeout is None else timeout, body,
                        tar=tar)

    # -- containers (plain HTTP on a local socket) ----------------------------------------------
    def list_containers(self, labels: list[str], *, all: bool = True) -> list[dict[str, Any]]:
        """One engine call: containers matching every ``key`` or ``key=value`` label filter."""
        what = "list containers"

        def once() -> list[dict[str, Any]]:
            if self._sock is not None:
                query = urllib.parse.urlencode({"all": int(all), "filters": json.dumps({"label": labels})})
                return list(_json(self._http("GET", f"/containers/json?{query}", what)[1], what))
            with _docker_py(what):
                return list(self._client().containers(all=all, filters={"label": labels}))

        return retry.call(retry.READS, once)

    def _inspect(self, ref: str) -> dict[str, Any]:
        what = f"inspect {ref}"
        if self._sock is not None:
            return dict(_json(self._http("GET", f"/containers/{_q(ref)}/json", what)[1], what))
        with _docker_py(what):
            return dict(self._client().inspect_container(ref))

    def networks_of(self, ref: str) -> dict[str, dict[str, Any]]:
        """The networks a container is attached to: name -> its endpoint (IPAddress, Gateway…)."""
        found = retry.call(retry.READS, self._inspect, ref)
        return dict((found.get("NetworkSettings") or {}).get("Networks") or {})

    def start(self, ref: str) -> None:
        def once() -> None:
            if self._sock is not None:
                self._http("POST", f"/containers/{_q(ref)}/start", f"start {ref}")  # (304: running already)
                return
            with _docker_py(f"start {ref}"):
                self._client().start(ref)

        retry.call(retry.LIFECYCLE, once)

    def stop(self, ref: str, timeout: int = 10) -> None:
        def once() -> None:
            if self._sock is not None:  # (304: stopped already)
                self._http("POST", f"/containers/{_q(ref)}/stop?t={int(timeout)}", f"stop {ref}",
                           timeout=self._timeout + timeout)
                return
            with _docker_py(f"stop {ref}"):
                self._client().stop(ref, timeout=timeout)

        retry.call(retry.LIFECYCLE, once)

    def rename(self, ref: str, name: str) -> None:
        """Give a container another name (atomic at the engine: Conflict when another holds it)."""
        what = f"rename {ref} to {name}"
        if self._sock is not None:
            self._http("POST", f"/containers/{_q(ref)}/rename?{urllib.parse.urlencode({'name': name})}", what)
            return
        with _docker_py(what):
            self._client().rename(ref, name)

    def signal(self, ref: str, signame: str) -> None:
        """Send a signal to a running container's main process (``docker kill --signal``)."""
        what = f"signal {ref}"
        if self._sock is not None:
            self._http("POST", f"/containers/{_q(ref)}/kill?signal={_q(signame)}", what)
            return
        with _docker_py(what):
            self._client().kill(ref, signal=signame)

    def remove(self, ref: str, *, force: bool = True) -> None:
        """Remove a container (and its anonymous volumes); one that is gone already, or whose removal
        is in progress, is not an error."""
        what = f"remove {ref}"
        try:
            if self._sock is not None:
                self._http("DELETE", f"/containers/{_q(ref)}?force={int(force)}&v=1", what)
            else:
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
        if self._sock is not None:  # three small requests
            spec: dict[str, Any] = {"AttachStdout": True, "AttachStderr": True, "Cmd": argv, "User": user or ""}
            if workdir:
                spec["WorkingDir"] = workdir
            exec_id = str(_json(self._http("POST", f"/containers/{_q(ref)}/exec", what, spec)[1], what)["Id"])
            _, stream = self._http("POST", f"/exec/{exec_id}/start", what, {"Detach": False, "Tty": False})
            code = _json(self._http("GET", f"/exec/{exec_id}/json", what)[1], what).get("ExitCode")
            out, err = _demux(stream)
            return CommandResult(int(code if code is not None else -1), out, err)
        with _docker_py(what):
            api = self._client()
            ex = api.exec_create(ref, argv, stdout=True, stderr=True, user=user or "", workdir=workdir)
            out, err = api.exec_start(ex["Id"], demux=True)
            code = api.exec_inspect(ex["Id"])["ExitCode"]
        return CommandResult(int(code if code is not None else -1), out or b"", err or b"")

    def exec_retried(self, ref: str, argv: list[str]) -> CommandResult:
        """An exec that only reads (cat, capture-pane): safe to repeat, so retried on transient errors."""
        return retry.call(retry.READS, self.exec, ref, argv)

    def logs(self, ref: str, tail: int | None = 100, *, stderr: bool = True) -> str:
        """The container's last ``tail`` lines of output (None: all; stdout and, unless not
        ``stderr``, stderr, in order)."""
        what = f"logs of {ref}"
        if self._sock is not None:
            query = f"stdout=1&stderr={int(stderr)}&tail={'all' if tail is None else int(tail)}"
            headers, stream = self._http("GET", f"/containers/{_q(ref)}/logs?{query}", what)
            if _is_multiplexed(headers, stream):
                stream = b"".join(data for _, data in _frames(stream))
            return stream.decode("utf-8", "replace")
        with _docker_py(what):
            return bytes(self._client().logs(ref, stderr=stderr, tail="all" if tail is None else tail)
                         ).decode("utf-8", "replace")

    def stats(self, ref: str, timeout: float = 10.0, *, one_shot: bool = True) -> dict[str, Any]:
        """One sample of a container's resource use, not a stream. ``one_shot``: the engine's next sample
        (its collector samples every second) without the one before it (``precpu_stats`` empty: CPU %
        needs two of these); else it waits for two samples (~2 s) and gives both (``docker stats
        --no-stream``)."""
        what = f"stats of {ref}"
        if self._sock is not None:
            path = f"/containers/{_q(ref)}/stats?stream=0" + ("&one-shot=1" if one_shot else "")
            return dict(_json(self._http("GET", path, what, timeout=timeout)[1], what))
        with _docker_py(what):
            return dict(self._client().stats(ref, stream=False, one_shot=True if one_shot else None))

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
        filters = json.dumps(wanted)
        query = urllib.parse.urlencode({"filters": filters, **({"since": f"{since:.3f}"} if since else {})})
        if self._sock is None:
            with _docker_py("container events"):
                stream = self._client().events(decode=True, filters=wanted, since=int(since) if since else None)
            try:
                for event in stream:
                    if stop():
                        return
                    yield dict(event)
            finally:
                stream.close()
            return
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(1.0)
            conn.connect(self._sock)
            conn.sendall(f"GET /events?{query} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        except OSError as e:
            raise engine_error("container events", None, f"{type(e).__name__}: {e}") from e
        buf, head_done = b"", False
        with conn:
            while not stop():
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                if not head_done:
                    if b"\r\n\r\n" not in buf:
                        continue
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
                        raise engine_error("container events", None, head.split(b"\r\n", 1)[0].decode("latin-1"))
                    head_done = True
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        try:
                            yield dict(json.loads(line))
                        except (ValueError, TypeError):
                            continue

    @staticmethod
    def cli_exec(ref: str, argv: list[str], *, stdin: bool = True) -> list[str]:
        """The docker CLI's argv for an exec whose standard streams are a pipe (e.g. a git transport)."""
        return ["docker", "exec", *(["-i"] if stdin else []), "--workdir", "/", ref, *argv]

    @staticmethod
    def cli_run_reader(image: str, user: str, binds: list[tuple[str, str]], argv: list[str],
                       labels: dict[str, str]) -> list[str]:
        """The docker CLI's argv for a throwaway, locked-down container that only reads ``binds``
        (host path, container path; all read-only, a missing source is an error, never created):
        no network, no capabilities, read-only root, a small /tmp, removed when it ends."""
        out = ["docker", "run", "--rm", "-i", "--network", "none", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges:true", "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=2g",
               "--pids-limit", "256", "--user", user, "--entrypoint", argv[0], "--workdir", "/tmp"]
        for key, value in labels.items():
            out += ["--label", f"{key}={value}"]
        for src, dst in binds:
            out += ["--mount", f"type=bind,source={src},target={dst},readonly"]
        return [*out, image, *argv[1:]]

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
    ) -> str:
        def once() -> str:
            try:
                return self._create(name=name, image=image, command=command, labels=labels, env=env,
                                    user=user, binds=binds, working_dir=working_dir, host_config=host_config,
                                    healthcheck=healthcheck)
            except (EngineError, Conflict) as err:
                took, status = self._created_already(name, labels)  # retried only if it did not happen
                if took is not None:
                    return took
                if retry.is_name_held(err) and status not in ("removing", "dead"):
                    raise Conflict(f"create container {name}: the name is taken") from err
                raise err

        return retry.call(retry.NAME_RELEASE, once)

    def create_from(self, spec: ContainerSpec, network_id: str | None = None) -> str:
        """Create (not start) the container a ``sandbox.spec.ContainerSpec`` describes: Docker's wording
        (capabilities, security options, mounts, limits) lives here and nowhere else."""
        host_config: dict[str, Any] = {
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "PidsLimit": spec.limits.pids,
            # unless-stopped: back after its init died (OOM, killed) and after an engine restart or a
            # reboot (on-failure is not applied then); `sandbox stop`, `docker stop`/`kill` are manual
            # stops, which it respects. The init bounds the restarts: it counts each as a failed attempt
            # and, past `retries`, stays up as `failed` (README "Supervision and retries"). A headless
            # agent is never restarted by the engine: its exit code is the result.
            "RestartPolicy": {"Name": "unless-stopped" if spec.engine_restarts else "no"},
            "Ulimits": [{"Name": "nofile", "Soft": spec.nofile, "Hard": spec.nofile}],
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
        binds = [f"{b.source}:{b.target}:{'ro' if b.read_only else 'rw'}" for b in spec.binds]
        return self.create(name=spec.name, image=spec.image, command=None, labels=spec.labels, env=spec.env,
                           user=f"{spec.user[0]}:{spec.user[1]}", binds=binds, working_dir=spec.workdir,
                           host_config=host_config)

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
                host_config: dict[str, Any] | None, healthcheck: dict[str, Any] | None) -> str:
        """One create, in the Engine API's own wording (``host_config``: HostConfig's fields), on either lane."""
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
        what = f"create container {name}"
        if self._sock is not None:
            query = urllib.parse.urlencode({"name": name})
            return str(_json(self._http("POST", f"/containers/create?{query}", what, config)[1], what)["Id"])
        with _docker_py(what):
            return str(self._client().create_container_from_config(config, name=name)["Id"])

    def put_archive(self, ref: str, path: str, data: bytes) -> None:
        """Unpack the tar ``data`` at ``path`` in the container (created or running)."""
        what = f"copy into {ref}"
        if self._sock is not None:
            self._http("PUT", f"/containers/{_q(ref)}/archive?{urllib.parse.urlencode({'path': path})}", what,
                       tar=data)
            return
        with _docker_py(what):
            self._client().put_archive(ref, path, data)

    # -- networks --------------------------------------------------------------------------
    def networks(self, name: str) -> list[dict[str, Any]]:
        """Networks named exactly ``name`` (the engine's name filter matches substrings); oldest first.
        More than one happens when two creates raced (the engine's duplicate check is not atomic)."""
        def once() -> list[dict[str, Any]]:
            what = f"list networks {name}"
            if self._sock is not None:
                query = urllib.parse.urlencode({"filters": json.dumps({"name": [name]})})
                found = list(_json(self._http("GET", f"/networks?{query}", what)[1], what))
            else:
                with _docker_py(what):
                    found = self._client().networks(names=[name])
            return sorted((n for n in found if n.get("Name") == name),
                          key=lambda n: (str(n.get("Created", "")), str(n.get("Id", ""))))

        return retry.call(retry.READS, once)

    def ensure_network(self, name: str, labels: dict[str, str], *, icc: bool = False) -> str:
        """The id of bridge network ``name`` carrying ``labels``, created if missing (race-safe: a create
        that loses gets Conflict and takes the winner's; if both were created, everyone picks the oldest
        and the loser's is removed). ``icc=False``: containers on it cannot talk to each other.
        A network of that name that is not ours, or lets containers talk, is refused (Conflict)."""
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
            # Two creates at once can both succeed (the engine's duplicate check is not atomic), and the
            # other one, older, may show in the list only a moment after ours: look again once settled.
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
        if self._sock is not None:
            return dict(_json(self._http("GET", f"/images/{_q(ref)}/json", what)[1], what))
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

    # -- images (docker-py) --------------------------------------------------------------------
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

    def tag_image(self, image: str, repository: str, tag: str) -> None:
        with _docker_py(f"tag {image}"):
            self._client().tag(image, repository, tag)

    def close(self) -> None:
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.close()

