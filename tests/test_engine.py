"""The engine (docker-py, one transport) and its one error mapper: an engine answer is one
`sandbox.errors` type with the engine's own words."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import ThreadingMixIn, UnixStreamServer

import pytest

from sandbox.engine import Engine, engine_error
from sandbox.errors import Conflict, EngineError, EngineUnavailable, ImageMissing, NotFound, SandboxError
from tests.conftest import RUN_ID

# (HTTP status, the engine's message) -> the error type, its exit code
ANSWERS = [
    (400, "invalid reference format", EngineError, 6),
    (404, "No such container: x", NotFound, 4),
    (404, "No such image: nope:x", ImageMissing, 4),
    (409, "Container x is not running", Conflict, 5),
    (500, "driver failed programming external connectivity", EngineError, 6),
    (503, "the engine is shutting down", EngineError, 6),
]


@pytest.mark.parametrize(("status", "message", "kind", "code"), ANSWERS)
def test_engine_error_maps_each_status(status: int, message: str, kind: type, code: int) -> None:
    err = engine_error("exec in x", status, message + "\n")
    assert type(err) is kind and err.exit_code == code and str(err).startswith(f"exec in x: {message}")
    if isinstance(err, EngineError):
        assert err.status == status


def test_engine_error_without_an_answer_is_unreachable() -> None:
    err = engine_error("list containers", None, "FileNotFoundError: [Errno 2] No such file")
    assert type(err) is EngineUnavailable and err.exit_code == 7 and "cannot reach the Docker engine" in str(err)


# -- a fake engine: each call gets the same answer -------------------------------------------------
class _Server(ThreadingMixIn, UnixStreamServer):
    daemon_threads = True
    answer: tuple[int, str] = (500, "")


class _Handler(BaseHTTPRequestHandler):
    def address_string(self) -> str:  # (a unix socket has no client address)
        return "local"

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.endswith("/version"):  # docker-py's version="auto" asks first
            status, body = 200, {"ApiVersion": "1.41", "Version": "20.10.0"}
        else:
            status, message = self.server.answer  # type: ignore[attr-defined]
            body = {"message": message}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _reply


@pytest.fixture
def fake_engine(tmp_path: Path) -> Iterator[_Server]:
    server = _Server(str(tmp_path / "engine.sock"), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "message", "kind", "code"), ANSWERS)
def test_an_engine_answer_is_its_error(fake_engine: _Server, status: int, message: str, kind: type,
                                       code: int) -> None:
    fake_engine.answer = (status, message)
    engine = Engine(base_url=f"unix://{fake_engine.server_address}", timeout=5)
    for call, what in ((lambda: engine.image_labels("nope:x"), "inspect image nope:x"),
                       (lambda: engine.exec("x", ["true"]), "exec in x")):
        with pytest.raises(SandboxError) as info:
            call()
        assert type(info.value) is kind and info.value.exit_code == code, (what, info.value)
        assert str(info.value).startswith(f"{what}: {message}"), info.value
    engine.close()


def test_no_engine_there_is_unreachable(tmp_path: Path) -> None:
    engine = Engine(base_url=f"unix://{tmp_path}/none.sock", timeout=2)
    with pytest.raises(EngineUnavailable, match="cannot reach the Docker engine"):
        engine.image_id("x")


# -- the real engine ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stopped_container(agent_image: str) -> Iterator[str]:
    """A container that exists but does not run (created, never started)."""
    name = f"sandbox-lanes-{uuid.uuid4().hex[:8]}"
    Engine().create(name=name, image=agent_image, command=["sleep", "60"], labels={"sandbox.run-id": RUN_ID, "sandbox.test": "lanes"},
                    env={}, user="1000:1000", binds=[])
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=30)


def test_real_engine_answers_are_their_errors(stopped_container: str) -> None:
    engine = Engine()
    missing = f"sandbox-missing-{uuid.uuid4().hex[:8]}"
    for call in (lambda: engine.exec(missing, ["true"]), lambda: engine.logs(missing),
                 lambda: engine.start(missing), lambda: engine.stop(missing)):
        with pytest.raises(NotFound, match=f"No such container: {missing}"):
            call()
    engine.remove(missing)  # gone already: not an error
    assert engine.image_id("sandbox-test/not-here:never") is None
    with pytest.raises(ImageMissing):
        engine.image_labels("sandbox-test/not-here:never")
    with pytest.raises(Conflict, match="is not running"):
        engine.exec(stopped_container, ["true"])
    assert [c["Names"] for c in engine.list_containers([f"sandbox.run-id={RUN_ID}", "sandbox.test=lanes"])] == [[f"/{stopped_container}"]]
    engine.close()


@pytest.fixture(scope="module")
def base_image(agent_image: str) -> str:
    """The offline base (built with the agent image): a plain Debian whose command is ours to pick."""
    from sandbox.config import load_settings

    return load_settings().base_image


def test_real_engine_lifecycle_exec_and_logs(base_image: str) -> None:
    engine = Engine()
    name = f"sandbox-lanes-{uuid.uuid4().hex[:8]}"
    cid = engine.create(name=name, image=base_image, labels={"sandbox.run-id": RUN_ID, "sandbox.test": "lifecycle"}, env={},
                        command=["sh", "-c", "echo to-out; echo to-err >&2; exec sleep 60"], user="1000:1000",
                        binds=[])
    try:
        engine.start(cid)
        engine.start(cid)  # running already: fine
        res = engine.exec(cid, ["sh", "-c", "printf out; printf err >&2; exit 3"])
        assert (res.exit_code, res.stdout, res.stderr, res.text) == (3, b"out", b"err", "out")
        assert engine.exec_retried(cid, ["cat", "/etc/hostname"]).exit_code == 0
        assert "memory_stats" in engine.stats(cid, 5.0) and engine.stats_many([cid])[cid] is not None
        logs = engine.logs(cid, tail=10)
        assert "to-out" in logs and "to-err" in logs and "\x00" not in logs
        engine.stop(cid, timeout=1)
        engine.stop(cid, timeout=1)  # stopped already: fine
        assert engine._inspect(cid)["State"]["Running"] is False
    finally:
        engine.remove(cid)
        engine.remove(cid)
    with pytest.raises(NotFound):
        engine._inspect(cid)
    engine.close()
