"""The engine's two lanes (plain HTTP on a local socket, docker-py) and its one error mapper:
the same engine answer is the same `sandbox.errors` type whichever lane carried it."""

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

LANES = [pytest.param(True, id="plain-http"), pytest.param(False, id="docker-py")]

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


# -- a fake engine: both lanes get the very same answer ----------------------------------------
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
def test_both_lanes_raise_the_same_error_for_the_same_answer(fake_engine: _Server, status: int, message: str,
                                                             kind: type, code: int) -> None:
    fake_engine.answer = (status, message)
    url = f"unix://{fake_engine.server_address}"
    got = {}
    for plain in (True, False):
        engine = Engine(base_url=url, timeout=5, plain_http=plain)
        for call, what in ((lambda: engine.image_labels("nope:x"), "inspect image nope:x"),
                           (lambda: engine.exec("x", ["true"]), "exec in x")):
            with pytest.raises(SandboxError) as info:
                call()
            assert type(info.value) is kind, (plain, what, info.value)
            got[plain, what] = str(info.value)
        engine.close()
    for (plain, what), text in got.items():
        assert text == got[True, what] and text.startswith(f"{what}: {message}"), got


@pytest.mark.parametrize("plain", LANES)
def test_no_engine_there_is_unreachable_on_both_lanes(tmp_path: Path, plain: bool) -> None:
    engine = Engine(base_url=f"unix://{tmp_path}/none.sock", timeout=2, plain_http=plain)
    with pytest.raises(EngineUnavailable, match="cannot reach the Docker engine"):
        engine.image_id("x")


def test_a_local_socket_takes_plain_http_for_reads_and_docker_py_for_the_rest(tmp_path: Path) -> None:
    """Which lane is decided by the call and the engine's address, not by what was imported before."""
    local = Engine(base_url=f"unix://{tmp_path}/x.sock")
    assert local._sock == f"{tmp_path}/x.sock"
    assert Engine(base_url=f"unix://{tmp_path}/x.sock", plain_http=False)._sock is None
    assert Engine(base_url="tcp://127.0.0.1:9")._sock is None
    assert Engine(base_url="ssh://user@host")._sock is None


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


@pytest.mark.parametrize("plain", LANES)
def test_real_engine_answers_are_the_same_errors_on_both_lanes(plain: bool, stopped_container: str) -> None:
    engine = Engine(plain_http=plain)
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


@pytest.mark.parametrize("plain", LANES)
def test_real_engine_lifecycle_exec_and_logs_on_both_lanes(plain: bool, base_image: str) -> None:
    engine = Engine(plain_http=plain)
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
