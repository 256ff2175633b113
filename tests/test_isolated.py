"""The isolated profile, end to end: real engine, real Claude Code, real proxies, no internet.

The scripted model server runs as a container on an ordinary network the test makes (standing in
for the model API), with a stand-in registry beside it; `sandbox spawn --profile isolated` is told
to reach out through that network (``egress_network``) and to forward the model to the scripted
server (``model_upstream``), with a real-looking key in its environment. Everything else is what a
user gets: the agent's own internal network, the model proxy holding the key, the egress proxy
holding the allowlist, all made by spawn and removed by rm.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUN_ID, Env, git, leftovers, make_env, make_repo, wait_for
from tests.test_proxy import MODEL_SERVER, REGISTRY_SERVER, ip_on, net_create, net_info, serve, sh, wait_listening

pytestmark = pytest.mark.slow

REAL_KEY = "sk-ant-api03-REAL-" + uuid.uuid4().hex + uuid.uuid4().hex


@dataclass
class Iso:
    env: Env
    repo: Path
    outside: str
    model: str
    registry: str
    registry_ip: str
    gateway: str
    claude: str       # an isolated Claude Code agent, allowed registry.test
    peer: str         # a default-profile shell agent (another agent to fail to reach)


@pytest.fixture(scope="module")
def iso(tmp_path_factory: pytest.TempPathFactory, agent_image: str, proxy_image: str) -> Iterator[Iso]:
    root = tmp_path_factory.mktemp("iso")
    tag = uuid.uuid4().hex[:8]
    outside = f"sbx-test-isout-{tag}"
    made: list[str] = []
    net_create(outside)
    env = make_env(root, agent_image)
    repo = make_repo(root / "repo")
    env.env.update({"SANDBOX_EGRESS_NETWORK": outside, "SANDBOX_MODEL_UPSTREAM": "http://model.test:8642",
                    "ANTHROPIC_API_KEY": REAL_KEY, "SANDBOX_MOCK_MODEL": "off"})
    try:
        made.append(serve(f"sbx-test-isomodel-{tag}", outside, agent_image, MODEL_SERVER, "model.test"))
        made.append(serve(f"sbx-test-isoreg-{tag}", outside, agent_image, REGISTRY_SERVER, "registry.test",
                          "other.test"))
        wait_listening(made[0], 8642, agent_image)
        wait_listening(made[1], 443, agent_image)
        claude = env.ok("spawn", "--profile", "isolated", "--allow", "registry.test", "--name", "iso-claude",
                        "add login rate limiting", cwd=repo).out.strip()
        peer = env.ok("spawn", "--name", "iso-peer", "--agent-cmd", "bash", cwd=repo).out.strip()
        yield Iso(env, repo, outside, made[0], made[1], ip_on(made[1], outside), net_info(outside)[1], claude, peer)
    finally:
        env.run("rm", "--force", "iso-claude", "iso-peer", cwd=repo)
        subprocess.run(["docker", "rm", "-f", "-v", *made], capture_output=True)
        subprocess.run(["docker", "network", "rm", outside], capture_output=True)


def upstream_requests(container: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in sh("docker", "logs", container).splitlines() if line.startswith("{")]


def headers(record: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == name]


def test_claude_code_completes_its_task_through_the_model_proxy(iso: Iso) -> None:
    branch = f"sandbox/{iso.claude}"
    wait_for(lambda: iso.env.ok("ls", cwd=iso.repo) and "SANDBOX_TASK.md" in git(iso.repo, "ls-tree", "--name-only", branch),
             120, "the isolated agent's commit")
    assert git(iso.repo, "show", f"{branch}:SANDBOX_TASK.md") == "# Task\n\nadd login rate limiting\n"
    seen = upstream_requests(iso.model)
    assert seen, "the scripted model server got no request"
    for record in seen:  # the proxy put the real key in, whatever the agent sent
        assert headers(record, "x-api-key") == [REAL_KEY] and not headers(record, "authorization")
    rows = iso.env.ok("netlog", iso.claude, "--json").json()
    model = [r for r in rows if r["proxy"] == "model"]
    assert model and all(r["decision"] == "allowed" and r["code"] == 200 for r in model), rows
    # hooks and states work through the proxy: the answer of a second turn
    wait_for(lambda: iso.env.ok("ls", "--json", cwd=iso.repo).json()[0]["state"] == "idle", 60, "idle")
    answer = iso.env.ok("send", iso.claude, "now write the docs", "--wait", "--timeout", "120").out
    assert "Done" in answer, answer


SCAN = r"""
import os, sys
key = sys.stdin.buffer.read().strip()
hits = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    for what in ("environ", "cmdline"):
        try:
            if key in open(f"/proc/{pid}/{what}", "rb").read():
                hits.append(f"/proc/{pid}/{what}")
        except OSError:
            pass
files = 0
for top, dirs, names in os.walk("/"):
    if top == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
    for n in names:
        p = os.path.join(top, n)
        try:
            if os.path.islink(p) or not os.path.isfile(p) or os.path.getsize(p) > 512 << 20:
                continue
            files += 1
            if key in open(p, "rb").read():
                hits.append(p)
        except OSError:
            pass
print(files, *hits)
"""


def test_the_real_key_is_nowhere_in_the_agent_container(iso: Iso) -> None:
    container = f"sandbox-{iso.claude}"
    assert REAL_KEY not in sh("docker", "inspect", container)
    logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
    assert REAL_KEY not in logs.stdout + logs.stderr
    # every file the agent's uid can read (the key on stdin: never in an argv inside), every process's
    # environment and command line
    out = sh("docker", "exec", "-i", container, "python3", "-c", SCAN, input=REAL_KEY.encode(), timeout=300).split()
    assert int(out[0]) > 1000 and out[1:] == [], out[1:]
    # ... while it is in the model proxy (one file, its user's) and reached the model API
    assert REAL_KEY not in sh("docker", "inspect", f"{container}.model")
    assert REAL_KEY in sh("docker", "exec", "-u", "13:13", f"{container}.model", "cat", "/etc/sandbox-proxy/credential.conf")


PROBES = r"""
import json, socket, sys
cfg = json.loads(sys.argv[1])
def talk(host, port, data, timeout=5):
    out = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(data)
            while chunk := s.recv(65536):
                out += chunk
    except OSError as e:
        if not out:  # (a refusal may leave the connection open: what came is the answer)
            return "ERROR " + (e.strerror or type(e).__name__)
    return out.decode("latin-1")
def direct(host, port):
    try:
        socket.create_connection((host, port), timeout=4).close()
        return "open"
    except OSError as e:
        return "ERROR " + (e.strerror or type(e).__name__)
P = ("egress-proxy", 3128)
r = {
    "http_allowed": talk(*P, b"GET http://registry.test/simple/ HTTP/1.1\r\nHost: registry.test\r\nConnection: close\r\n\r\n"),
    "connect_allowed": talk(*P, b"CONNECT registry.test:443 HTTP/1.1\r\nHost: registry.test:443\r\n\r\n"
                            b"GET /tunnelled HTTP/1.1\r\nHost: registry.test\r\nConnection: close\r\n\r\n"),
    "connect_denied": talk(*P, b"CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n"),
    "raw_ip_denied": talk(*P, ("GET http://%s/ HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (cfg["ip"], cfg["ip"])).encode()),
    "gateway_denied": talk(*P, ("CONNECT %s:443 HTTP/1.1\r\n\r\n" % cfg["gateway"]).encode()),
    "peer_denied": talk(*P, ("CONNECT %s:22 HTTP/1.1\r\n\r\n" % cfg["peer"]).encode()),
    "direct_registry": direct(cfg["ip"], 443),
    "direct_gateway": direct(cfg["gateway"], 443),
    "direct_peer": direct(cfg["peer"], 22),
}
try:
    r["dns"] = socket.getaddrinfo("registry.test", 443)[0][4][0]
except OSError as e:
    r["dns"] = "ERROR " + str(e)
print(json.dumps(r))
"""


def test_egress_is_the_allowlist_and_netlog_shows_every_try(iso: Iso) -> None:
    peer_ip = next(iter(json.loads(sh("docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}",
                                      f"sandbox-{iso.peer}")).values()))["IPAddress"]
    cfg = {"ip": iso.registry_ip, "gateway": iso.gateway, "peer": peer_ip}
    r = json.loads(iso.env.ok("exec", iso.claude, "--", "python3", "-c", PROBES, json.dumps(cfg)).out)
    assert r["http_allowed"].startswith("HTTP/1.1 200") and '"path": "/simple/"' in r["http_allowed"], r
    assert r["connect_allowed"].startswith("HTTP/1.1 200") and '"path": "/tunnelled"' in r["connect_allowed"], r
    for key in ("connect_denied", "raw_ip_denied", "gateway_denied", "peer_denied"):
        assert r[key].startswith("HTTP/1.1 403"), (key, r[key])
    for key in ("direct_registry", "direct_gateway", "direct_peer", "dns"):  # never reached, never resolved
        assert r[key].startswith("ERROR") and "refused" not in r[key], (key, r[key])
    rows = iso.env.ok("netlog", iso.claude, "--json").json()
    tried = {(r["method"], r["host"], r["port"], r["decision"]) for r in rows if r["proxy"] == "egress"}
    assert {("GET", "registry.test", 80, "allowed"), ("CONNECT", "registry.test", 443, "allowed"),
            ("CONNECT", "other.test", 443, "denied"), ("GET", iso.registry_ip, 80, "denied"),
            ("CONNECT", iso.gateway, 443, "denied"), ("CONNECT", peer_ip, 22, "denied")} <= tried, tried
    table = iso.env.ok("netlog", iso.claude).out
    assert "other.test:443" in table and "denied" in table and "allowed" in table


def test_doctor_passes_on_isolated_and_fails_the_right_lines_on_default(iso: Iso) -> None:
    res = iso.env.run("doctor", iso.claude, "--json")
    checks = {c["check"]: c for c in json.loads(res.out)}
    assert res.code == 0 and all(c["ok"] for c in checks.values()), res.out
    for name in ("read-only root filesystem", "one network (its own internal one)", "model proxy reachable",
                 "allowed host reachable through the egress proxy", "a denied host is refused by the egress proxy",
                 "a raw IP is refused by the egress proxy", "the bridge gateways are unreachable",
                 "another agent is unreachable", "outside DNS refused", "the real key is absent (env, /proc, files)"):
        assert name in checks, name
    res = iso.env.run("doctor", iso.peer, "--as", "isolated", "--json")
    assert res.code == 1
    failing = {c["check"] for c in json.loads(res.out) if not c["ok"]}
    assert {"read-only root filesystem", "model proxy reachable", "a denied host is refused by the egress proxy",
            "the bridge gateways are unreachable", "the real key is absent (env, /proc, files)"} <= failing, failing
    assert "runs as a non-root uid" not in failing and "no capabilities" not in failing


BOMB = r"""
import os, time
n = 0
try:
    while n < 5000:
        if os.fork() == 0:
            time.sleep(2)
            os._exit(0)
        n += 1
except OSError as e:
    print("refused after", n, e.errno)
"""


def test_oom_and_fork_bomb_are_contained_and_reported_and_rm_removes_the_proxies(iso: Iso) -> None:
    extra = {"SANDBOX_MEMORY": "160m", "SANDBOX_PIDS_LIMIT": "96"}
    name = iso.env.ok("spawn", "--profile", "isolated", "--name", "iso-limits", "--agent-cmd", "bash",
                      cwd=iso.repo, extra=extra).out.strip()
    try:
        iso.env.ok("exec", name, "--", "sh", "-c", "echo kept > notes.txt")
        oom = iso.env.run("exec", name, "--", "python3", "-c", "b = [bytearray(16 << 20) for _ in range(64)]")
        assert oom.code == 137, (oom.code, oom.err)  # the kernel killed it at the memory limit
        bomb = iso.env.ok("exec", name, "--", "python3", "-c", BOMB)
        assert "refused after" in bomb.out, bomb.out
        rows = {r["name"]: r for r in iso.env.ok("ls", "--json", cwd=iso.repo).json()}
        row = rows[name]
        assert row["oom_kills"] >= 1 and row["pids_limit_hits"] >= 1, row
        assert row["state"] not in ("failed", "exited") and row["engine_state"] == "running"
        assert "OOM-killed" in iso.env.ok("ls", cwd=iso.repo).out
        assert iso.env.ok("exec", name, "--", "cat", "notes.txt").out == "kept\n"
        proxies = sh("docker", "ps", "-aq", "--filter", f"label=sandbox.proxy-of={name}").split()
        assert len(proxies) == 2  # the model proxy and the egress proxy
        running = lambda: sh("docker", "ps", "-q", "--filter", f"label=sandbox.proxy-of={name}").split()  # noqa: E731
        iso.env.ok("stop", name)
        assert running() == []  # stopped with their agent ...
        iso.env.ok("start", name)
        assert len(running()) == 2  # ... and back before it
        assert iso.env.ok("exec", name, "--", "cat", "notes.txt").out == "kept\n"
    finally:
        iso.env.ok("rm", "--force", name, cwd=iso.repo)
    assert sh("docker", "ps", "-aq", "--filter", f"label=sandbox.proxy-of={name}").split() == []
    assert sh("docker", "network", "ls", "-q", "--filter", f"label=sandbox.proxy-of={name}").split() == []


def test_the_offline_model_works_isolated_with_no_model_proxy(iso: Iso) -> None:
    extra = {"ANTHROPIC_API_KEY": "", "SANDBOX_MOCK_MODEL": "auto"}
    name = iso.env.ok("spawn", "--profile", "isolated", "--name", "iso-offline", "write the notes",
                      cwd=iso.repo, extra=extra).out.strip()
    try:
        wait_for(lambda: iso.env.ok("ls", cwd=iso.repo) and "SANDBOX_TASK.md" in git(
            iso.repo, "ls-tree", "--name-only", f"sandbox/{name}"), 120, "the offline agent's commit")
        roles = sh("docker", "ps", "-a", "--format", '{{.Label "sandbox.proxy-role"}}', "--filter",
                   f"label=sandbox.proxy-of={name}").split()
        assert roles == ["egress"]
    finally:
        iso.env.run("rm", "--force", name, cwd=iso.repo)


def test_a_runtime_the_engine_lacks_fails_closed(iso: Iso, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "rt")
    nets = sh("docker", "network", "ls", "-q", "--filter", f"label=sandbox.run-id={RUN_ID}").split()
    res = iso.env.run("spawn", "--profile", "isolated", "--runtime", "no-such-runtime", "--agent-cmd", "bash",
                      cwd=repo)
    assert res.code == 2 and "no runtime 'no-such-runtime'" in res.err and len(res.err.strip().splitlines()) == 1
    left = leftovers(iso.env, repo)
    assert left["containers"] == [] and left["branches"] == [] and not [w for w in left["workspaces"] if "/rt-" in w]
    assert sh("docker", "network", "ls", "-q", "--filter", f"label=sandbox.run-id={RUN_ID}").split() == nets


MODEL_PATH_PROBES = r"""
import json, socket
def raw(method, path, body=b"{}"):
    req = (f"{method} {path} HTTP/1.1\r\nHost: model-proxy\r\nx-api-key: placeholder\r\n"
           f"content-type: application/json\r\ncontent-length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    out = b""
    with socket.create_connection(("model-proxy", 8080), timeout=10) as s:
        s.sendall(req)
        while chunk := s.recv(65536):
            out += chunk
    return out.decode("latin-1").split("\r\n", 1)[0]
print(json.dumps({p: raw(m, p) for m, p in [
    ("GET", "/v1/files"), ("POST", "/v1/files"), ("POST", "/v1/messages/batches"), ("GET", "/v1/models"),
    ("GET", "/v1/messages"), ("POST", "/v1/messages/../files"), ("POST", "/v1/messages/%2e%2e/files"),
    ("POST", "/v1//files"), ("POST", "/v1/messages/count_tokens?beta=true")]}))
"""


def test_the_model_proxy_refuses_every_other_path_and_netlog_shows_it(iso: Iso) -> None:
    """Issue 26 item 7: the agent (its uid, `sandbox exec`) asks the model proxy for the provider's other
    endpoints with the key the proxy would add: nginx refuses them itself (403), the model API never sees
    them, and netlog names each path. The token count, a model API path, still passes."""
    before = len(upstream_requests(iso.model))
    got = json.loads(iso.env.ok("exec", iso.claude, "--", "python3", "-c", MODEL_PATH_PROBES).out)
    allowed = "/v1/messages/count_tokens?beta=true"
    assert got.pop(allowed).startswith("HTTP/1.1 200"), got
    assert all(status.startswith("HTTP/1.1 403") for status in got.values()), got
    seen = [r["path"] for r in upstream_requests(iso.model)[before:]]
    assert seen == [allowed], seen  # (the scripted server records POSTs: the refused ones never came)
    rows = [r for r in iso.env.ok("netlog", iso.claude, "--json").json() if r["proxy"] == "model"]
    denied = {(r["method"], r["path"]) for r in rows if r["decision"] == "denied" and r["code"] == 403}
    assert {("GET", "/v1/files"), ("POST", "/v1/files"), ("POST", "/v1/messages/batches"), ("GET", "/v1/models"),
            ("GET", "/v1/messages"), ("POST", "/v1/messages/../files")} <= denied, rows
    assert ("POST", allowed, "allowed") in {(r["method"], r["path"], r["decision"]) for r in rows}
    assert "/v1/files" in iso.env.ok("netlog", iso.claude).out
