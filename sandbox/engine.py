"""The one module that talks to the Docker engine (docker-py's low-level API client).

Every engine call goes through :class:`Engine`; docker-py and requests errors are translated
into ``sandbox.errors`` here and nowhere else. One HTTP connection pool is reused for the
life of the process. ``docker`` is imported lazily so that ``sandbox --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sandbox.errors import EngineError, EngineUnavailable, ImageMissing, NotFound, Conflict

if TYPE_CHECKING:
    import docker


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


def _explain(e: Any) -> str:
    explanation = getattr(e, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return str(explanation or e).strip()


class Engine:
    """A thin, typed façade over ``docker.APIClient`` with the calls `sandbox` needs."""

    def __init__(self, base_url: str | None = None, timeout: int = 60) -> None:
        self._base_url = base_url
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
        with translate("list containers"):
            return list(self.api.containers(all=all, filters={"label": labels}))

    def inspect(self, ref: str) -> dict[str, Any]:
        with translate(f"inspect {ref}"):
            return dict(self.api.inspect_container(ref))

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
        with translate(f"start {ref}"):
            self.api.start(ref)

    def stop(self, ref: str, timeout: int = 10) -> None:
        with translate(f"stop {ref}"):
            self.api.stop(ref, timeout=timeout)

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
        with translate(f"exec in {ref}"):
            ex = self.api.exec_create(ref, argv, stdout=True, stderr=True, user=user or "", workdir=workdir)
            out, err = self.api.exec_start(ex["Id"], demux=True)
            code = self.api.exec_inspect(ex["Id"])["ExitCode"]
        return ExecResult(int(code if code is not None else -1), out or b"", err or b"")

    def logs(self, ref: str, tail: int = 100) -> str:
        with translate(f"logs of {ref}"):
            return bytes(self.api.logs(ref, tail=tail)).decode("utf-8", "replace")

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
