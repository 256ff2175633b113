"""The one module that talks to the Docker engine (docker-py's low-level API client).

Every engine call goes through :class:`Engine`; docker-py and requests errors are translated
into ``sandbox.errors`` here and nowhere else. One HTTP connection pool is reused for the
life of the process. ``docker`` is imported lazily so that ``sandbox --help`` stays fast, and
listing containers on a local socket skips docker-py altogether (one plain HTTP GET) so that
``sandbox ls`` stays fast too.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sandbox import retry
from sandbox.errors import Conflict, EngineError, EngineUnavailable, ImageMissing, NotFound, SandboxError

if TYPE_CHECKING:
    import docker

    from sandbox.spec import ContainerSpec


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


@contextlib.contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn docker-py / requests errors into sandbox errors with one readable line."""
    import docker.errors
    import requests.exceptions

    try:
        yield
    except docker.errors.ImageNotFound as e:
        raise ImageMissing(f"{what}: image not found", hint="run `sandbox image build`") from e
    except docker.errors.NotFound as e:
        raise NotFound(f"{what}: {_explain(e)}") from e
    except docker.errors.APIError as e:
        status = e.status_code
        if status == 409:
            raise Conflict(f"{what}: {_explain(e)}") from e
        raise EngineError(f"{what}: {_explain(e)}", status=status) from e
    except docker.errors.DockerException as e:
        raise EngineUnavailable(f"{what}: cannot reach the Docker engine ({e})") from e
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError) as e:
        raise EngineUnavailable(f"{what}: cannot reach the Docker engine ({type(e).__name__})") from e


def _local_socket(base_url: str | None) -> str | None:
    """The engine's unix socket path when it is a plain local one (no TLS), else None."""
    if base_url is None:
        if os.environ.get("DOCKER_TLS_VERIFY") or os.environ.get("DOCKER_CERT_PATH"):
            return None
        base_url = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return base_url[len("unix://"):] if base_url.startswith("unix://") else None


def _request(sock_path: str, method: str, path: str, what: str, timeout: float,
             body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    """One request on the engine's unix socket, without docker-py/requests (importing them costs
    ~100 ms per command): HTTP/1.0, so the engine answers unchunked and closes the connection."""
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.0\r\nHost: docker\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(sock_path)
            conn.sendall(head.encode() + b"\r\n" + data)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except OSError as e:
        raise EngineUnavailable(f"{what}: cannot reach the Docker engine ({type(e).__name__}: {e})") from e
    status_head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    try:
        status = int(status_head.split(b" ", 2)[1])
    except (IndexError, ValueError) as e:
        raise EngineError(f"{what}: unreadable answer from the engine: {status_head[:80]!r}") from e
    if status >= 400:
        try:
            message = str(json.loads(payload).get("message", "")).strip()
        except (ValueError, AttributeError):
            message = payload.decode("utf-8", "replace").strip()
        if status == 404:
            raise NotFound(f"{what}: {message}")
        if status == 409:
            raise Conflict(f"{what}: {message}")
        raise EngineError(f"{what}: {message}", status=status)
    return status, payload


def _get_json(sock_path: str, path: str, what: str, timeout: float) -> Any:
    _, payload = _request(sock_path, "GET", path, what, timeout)
    try:
        return json.loads(payload)
    except ValueError as e:
        raise EngineError(f"{what}: unreadable answer from the engine") from e


def _demux(stream: bytes) -> tuple[bytes, bytes]:
    """Split the engine's multiplexed exec stream (8-byte frame headers) into stdout and stderr."""
    out, err, i = bytearray(), bytearray(), 0
    while i + 8 <= len(stream):
        kind, size = stream[i], int.from_bytes(stream[i + 4:i + 8], "big")
        (err if kind == 2 else out).extend(stream[i + 8:i + 8 + size])
        i += 8 + size
    return bytes(out), bytes(err)


def _explain(e: Any) -> str:
    explanation = getattr(e, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return str(explanation or e).strip()


class Engine:
    """A thin, typed façade over ``docker.APIClient`` with the calls `sandbox` needs."""

    def __init__(self, base_url: str | None = None, timeout: int = 60) -> None:
        self._base_url = base_url
        self._sock = _local_socket(base_url)  # listing goes straight to a local socket (no docker-py)
        self._timeout = timeout
        self._api: docker.APIClient | None = None

    @property
    def api(self) -> docker.APIClient:
        if self._api is None:
            import docker

            with translate("connect"):
                if self._base_url:
                    self._api = docker.APIClient(base_url=self._base_url, timeout=self._timeout, version="auto")
                else:
                    self._api = docker.from_env(timeout=self._timeout, version="auto").api
        return self._api

    def ping(self) -> None:
        with translate("ping"):
            self.api.ping()

    # -- containers ------------------------------------------------------------------------
    def list_containers(self, labels: list[str], *, all: bool = True) -> list[dict[str, Any]]:
        """One engine call: containers matching every ``key`` or ``key=value`` label filter."""
        def once() -> list[dict[str, Any]]:
            if self._sock is not None and self._api is None:
                query = urllib.parse.urlencode({"all": int(all), "filters": json.dumps({"label": labels})})
                return list(_get_json(self._sock, f"/containers/json?{query}", "list containers", self._timeout))
            with translate("list containers"):
                return list(self.api.containers(all=all, filters={"label": labels}))

        return retry.call(retry.READS, once)

    def inspect(self, ref: str) -> dict[str, Any]:
        def once() -> dict[str, Any]:
            with translate(f"inspect {ref}"):
                return dict(self.api.inspect_container(ref))

        return retry.call(retry.READS, once)

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
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "pids_limit": spec.limits.pids,
            "restart_policy": {"Name": "on-failure", "MaximumRetryCount": spec.restart_retries},
        }
        if spec.limits.memory:
            host_config["mem_limit"] = spec.limits.memory
        if spec.limits.nano_cpus:
            host_config["nano_cpus"] = spec.limits.nano_cpus
        if spec.network.disabled:
            host_config["network_mode"] = "none"
        elif network_id is not None:
            host_config["network_mode"] = network_id
        if spec.read_only_root:
            host_config["read_only"] = True
        if spec.tmpfs:
            host_config["tmpfs"] = dict(spec.tmpfs)
        if spec.volumes:
            host_config["mounts"] = [{"Target": path, "Type": "volume"} for path in spec.volumes]
        binds = [f"{b.source}:{b.target}:{'ro' if b.read_only else 'rw'}" for b in spec.binds]
        return self.create(name=spec.name, image=spec.image, command=None, labels=spec.labels, env=spec.env,
                           user=f"{spec.user[0]}:{spec.user[1]}", binds=binds, working_dir=spec.workdir,
                           host_config=host_config)

    def _created_already(self, name: str, labels: dict[str, str]) -> tuple[str | None, str | None]:
        """(id of container ``name`` if it carries our ``labels`` — our earlier create took effect,
        the holder's status) — (None, None) when no container has that name."""
        try:
            with translate(f"inspect {name}"):
                found = self.api.inspect_container(name)
        except SandboxError:
            return None, None
        have = found.get("Config", {}).get("Labels") or {}
        status = str((found.get("State") or {}).get("Status") or "")
        mine = status not in ("removing", "dead") and all(have.get(k) == v for k, v in labels.items())
        return (str(found["Id"]) if mine else None), status

    def _create(self, *, name: str, image: str, command: list[str] | None, labels: dict[str, str],
                env: dict[str, str], user: str, binds: list[str], working_dir: str | None,
                host_config: dict[str, Any] | None, healthcheck: dict[str, Any] | None) -> str:
        with translate(f"create container {name}"):
            hc = self.api.create_host_config(binds=binds, **(host_config or {}))
            created = self.api.create_container(
                image=image,
                command=command,
                name=name,
                labels=labels,
                environment=env,
                user=user,
                working_dir=working_dir,
                host_config=hc,
                healthcheck=healthcheck,
                detach=True,
                tty=False,
                stdin_open=False,
            )
            return str(created["Id"])

    def start(self, ref: str) -> None:
        def once() -> None:
            with translate(f"start {ref}"):
                self.api.start(ref)

        retry.call(retry.LIFECYCLE, once)

    def stop(self, ref: str, timeout: int = 10) -> None:
        def once() -> None:
            with translate(f"stop {ref}"):
                self.api.stop(ref, timeout=timeout)

        retry.call(retry.LIFECYCLE, once)

    def restart(self, ref: str, timeout: int = 10) -> None:
        with translate(f"restart {ref}"):
            self.api.restart(ref, timeout=timeout)

    def remove(self, ref: str, *, force: bool = True) -> None:
        """Remove a container; a container that is already gone is not an error."""
        try:
            with translate(f"remove {ref}"):
                self.api.remove_container(ref, force=force, v=True)
        except NotFound:
            pass
        except EngineError as e:
            # "removal of container ... is already in progress" is success for us.
            if "already in progress" not in str(e):
                raise

    def put_archive(self, ref: str, path: str, data: bytes) -> None:
        with translate(f"copy into {ref}"):
            self.api.put_archive(ref, path, data)

    def exec(self, ref: str, argv: list[str], *, user: str | None = None, workdir: str | None = None) -> ExecResult:
        """Run argv (never a shell string) in a running container and collect its output."""
        if self._sock is not None and self._api is None:  # three plain requests, no docker-py
            what, sock = f"exec in {ref}", self._sock
            spec: dict[str, Any] = {"AttachStdout": True, "AttachStderr": True, "Cmd": argv, "User": user or ""}
            if workdir:
                spec["WorkingDir"] = workdir
            _, made = _request(sock, "POST", f"/containers/{urllib.parse.quote(ref)}/exec", what, self._timeout, spec)
            exec_id = str(json.loads(made)["Id"])
            _, stream = _request(sock, "POST", f"/exec/{exec_id}/start", what, self._timeout,
                                 {"Detach": False, "Tty": False})
            code = _get_json(sock, f"/exec/{exec_id}/json", what, self._timeout).get("ExitCode")
            out, err = _demux(stream)
            return ExecResult(int(code if code is not None else -1), out, err)
        with translate(f"exec in {ref}"):
            ex = self.api.exec_create(ref, argv, stdout=True, stderr=True, user=user or "", workdir=workdir)
            out, err = self.api.exec_start(ex["Id"], demux=True)
            code = self.api.exec_inspect(ex["Id"])["ExitCode"]
        return ExecResult(int(code if code is not None else -1), out or b"", err or b"")

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

    def read(self, ref: str, argv: list[str]) -> ExecResult:
        """An exec that only reads (cat, capture-pane): safe to repeat, so retried on transient errors."""
        return retry.call(retry.READS, self.exec, ref, argv)

    def logs(self, ref: str, tail: int = 100) -> str:
        with translate(f"logs of {ref}"):
            return bytes(self.api.logs(ref, tail=tail)).decode("utf-8", "replace")

    # -- networks --------------------------------------------------------------------------
    def networks(self, name: str) -> list[dict[str, Any]]:
        """Networks named exactly ``name`` (the engine's name filter matches substrings); oldest first.
        More than one happens when two creates raced (the engine's duplicate check is not atomic)."""
        def once() -> list[dict[str, Any]]:
            with translate(f"list networks {name}"):
                found = self.api.networks(names=[name])
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
            with translate(f"create network {name}"):
                made = str(self.api.create_network(name, driver="bridge", options={icc_opt: str(icc).lower()},
                                                   labels=labels, check_duplicate=True)["Id"])
        except Conflict:
            pass  # another spawn created it first
        winner = pick()
        if winner is None:
            raise EngineError(f"create network {name}: the engine does not list it")
        if made is not None and made != winner:
            self.remove_network(made)
        return winner

    def remove_network(self, ref: str) -> bool:
        """Remove a network; False when it is gone already or still in use."""
        try:
            with translate(f"remove network {ref}"):
                self.api.remove_network(ref)
        except (NotFound, Conflict, EngineError):
            return False
        return True

    # -- images ----------------------------------------------------------------------------
    def image_id(self, ref: str) -> str | None:
        """The image's ID, or None when the engine does not have it (never pulls)."""
        try:
            with translate(f"inspect image {ref}"):
                return str(self.api.inspect_image(ref)["Id"])
        except NotFound:
            return None

    def image_labels(self, ref: str) -> dict[str, str]:
        with translate(f"inspect image {ref}"):
            return dict(self.api.inspect_image(ref)["Config"].get("Labels") or {})

    def import_image(self, tar_path: str, repository: str, tag: str, changes: list[str] | None = None) -> str:
        """``docker import``: a root filesystem tarball becomes an image."""
        with translate(f"import {repository}:{tag}"):
            out = self.api.import_image_from_file(tar_path, repository=repository, tag=tag, changes=changes)
        image_id = self.image_id(f"{repository}:{tag}")
        if image_id is None:
            raise EngineError(f"import {repository}:{tag} did not produce an image: {out!r}")
        return image_id

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
        with translate(f"build {tag}"):
            stream = self.api.build(
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
        with translate(f"tag {image}"):
            self.api.tag(image, repository, tag)

    def close(self) -> None:
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.close()


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
