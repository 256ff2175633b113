"""The spawn spec (pure: no engine) and the host/container contract, one property at a time; and,
through the CLI, that every setting `config show` reports is the value `spawn` used."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sandbox import contract, labels as L
from sandbox.spawn import spec
from sandbox.agents import AgentSpec
from sandbox.tmux import LocalExecutor, Tmux
from tests.conftest import Env

WS = spec.Workspace(path=Path("/data/ws/repo-1/a-1"), agent_git=Path("/data/git/repo-1/a-1"),
                    objects=Path("/src/repo/.git/objects"), state_dir=Path("/data/state/a-1"))
SECRET = "sk-ant-secret-value-0123456789"


def request(**over: Any) -> spec.Request:
    base: dict[str, Any] = dict(
        name="a-1", agent=AgentSpec("claude", ("claude", "--dangerously-skip-permissions", "do it"), "arg", True),
        model="sonnet", task="do it", repo_top=Path("/src/repo"), common_dir=Path("/src/repo/.git"),
        branch="sandbox/a-1", base="0" * 40, image_id="sha256:abc", image_ref="sandbox-agent:latest",
        profile="default", uid=1000, gid=1000, created="2026-12-01T00:00:00+00:00", retries=3,
        retry_backoff=0.5, memory=4 * 1024**3, nano_cpus=2_000_000_000, pids_limit=1024,
        network="sandbox-net", run_id="r1", git_identity={"name": "U", "email": "u@x"},
        secrets={"ANTHROPIC_API_KEY": SECRET})
    base.update(over)
    return spec.Request(**base)


def test_default_profile_spec() -> None:
    s = spec.build(request(), WS)
    assert s.name == "sandbox-a-1" and s.image == "sha256:abc" and s.user == (1000, 1000)
    assert s.workdir == str(WS.path)
    binds = {(b.source, b.target): b.read_only for b in s.binds}
    assert binds == {
        (str(WS.path), str(WS.path)): False,
        (str(WS.path / ".git"), str(WS.path / ".git")): True,         # the agent cannot repoint its .git
        (str(WS.agent_git), contract.AGENT_GIT): False,               # its own repository
        (str(WS.objects), str(WS.objects)): True,                     # the host's objects, read-only
        (str(WS.state_dir), contract.STATE_MOUNT): False,
    }
    assert not any("docker.sock" in b.source or b.source.endswith("/.git") and b.target != b.source
                   for b in s.binds)
    assert s.network == spec.Network("sandbox-net", isolated=True) and not s.read_only_root
    assert s.limits == spec.Limits(memory=4 * 1024**3, nano_cpus=2_000_000_000, pids=1024)
    assert s.labels[L.RUN_ID] == "r1" and s.labels[L.AGENT_GIT] == str(WS.agent_git)
    assert s.labels[L.WORKSPACE] == str(WS.path) and s.labels[L.RETRIES] == "3"
    assert s.labels[L.SCHEMA_KEY] == L.SCHEMA and s.labels[L.MANAGED] == "1"
    # The secret is only in the files copied in, never in labels, env or the launch document.
    assert SECRET not in json.dumps(s.labels) + json.dumps(s.env) + s.launch.to_json()
    files = s.files()
    assert json.loads(files["secrets.json"][0]) == {"ANTHROPIC_API_KEY": SECRET}
    assert files["secrets.json"][1] == 0o400 and s.state_files()["launch.json"][1] == 0o600
    assert SECRET not in json.dumps({k: v.decode() for k, (v, _) in s.state_files().items()})
    assert s.state_dir == str(WS.state_dir)


def test_locked_profile_is_a_transformation_of_the_default() -> None:
    default = spec.build(request(), WS)
    locked = spec.build(request(profile="locked"), WS)
    assert locked.network.disabled and locked.read_only_root
    assert set(locked.tmpfs) == {"/tmp", "/home/agent"} and locked.volumes == (contract.LAUNCH_DIR,)
    assert locked.binds == default.binds and locked.limits == default.limits
    assert replace(locked, network=default.network, read_only_root=False, tmpfs={}, volumes=(),
                   labels=default.labels) == default


def test_isolated_profile_keeps_the_key_out_and_points_at_its_proxies() -> None:
    default = spec.build(request(), WS)
    iso = spec.build(request(profile="isolated", allow=("pypi", "registry.test"), model_upstream="http://m.test:8642"), WS)
    # the locked filesystem
    assert iso.read_only_root and set(iso.tmpfs) == {"/tmp", "/home/agent"} and iso.volumes == (contract.LAUNCH_DIR,)
    assert all("size=" in opts for opts in iso.tmpfs.values())
    assert iso.binds == default.binds and iso.limits == default.limits and iso.nofile == 4096
    # its own internal network, reachable by its proxies only
    assert iso.network == spec.Network("sandbox-a-1.net", isolated=False, internal=True)
    assert iso.isolation is not None and iso.isolation.network == "sandbox-a-1.net"
    assert iso.isolation.egress_network == "sandbox-net"
    assert iso.isolation.proxy_name(iso.name, "model") == "sandbox-a-1.model"
    assert [str(a) for a in iso.isolation.allow] == ["files.pythonhosted.org", "pypi.org", "registry.test"]
    assert iso.labels[L.ALLOW] == "files.pythonhosted.org,pypi.org,registry.test"
    assert iso.isolation.labels == {L.PROXY_OF: "a-1", L.RUN_ID: "r1"}
    # the real key only in the model proxy's credential; the agent holds a placeholder
    upstream, credential = iso.isolation.model
    assert (upstream.url, credential.kind, credential.value) == ("http://m.test:8642", "x-api-key", SECRET)
    assert json.loads(iso.files()["secrets.json"][0]) == {
        "ANTHROPIC_API_KEY": spec.PLACEHOLDER_KEY, "ANTHROPIC_BASE_URL": "http://model-proxy:8080"}
    everything = json.dumps([iso.labels, iso.env, iso.launch.to_json(), iso.files()["secrets.json"][0].decode()])
    assert SECRET not in everything
    assert iso.env["HTTPS_PROXY"] == "http://egress-proxy:3128" and "model-proxy" in iso.env["NO_PROXY"]


def test_isolated_profile_other_keys_and_the_offline_model() -> None:
    token = spec.build(request(profile="isolated", secrets={"CLAUDE_CODE_OAUTH_TOKEN": SECRET, "OPENAI_API_KEY": "o" * 20}), WS)
    assert token.isolation.model[1].kind == "bearer"
    assert token.isolation.model[0].url == "https://api.anthropic.com:443"
    assert json.loads(token.files()["secrets.json"][0]) == {
        "CLAUDE_CODE_OAUTH_TOKEN": spec.PLACEHOLDER_KEY, "ANTHROPIC_BASE_URL": "http://model-proxy:8080"}  # no other key
    offline = spec.build(request(profile="isolated", secrets={}, use_mock=True), WS)
    assert offline.isolation.model is None and offline.files() == {}
    assert offline.isolation.allow == ()
    with pytest.raises(ValueError, match="allowlist entry"):
        spec.build(request(profile="isolated", allow=("bad host",)), WS)


@pytest.mark.parametrize(("over", "field", "value"), [
    ({"memory": 0, "nano_cpus": 0}, "limits", spec.Limits(0, 0, 1024)),
    ({"pids_limit": 64}, "limits", spec.Limits(4 * 1024**3, 2_000_000_000, 64)),
    ({"network": "other-net"}, "network", spec.Network("other-net")),
    ({"run_id": None}, "labels", None),
    ({"runtime": "runsc"}, "runtime", "runsc"),
    ({"nofile": 1024}, "nofile", 1024),
])
def test_each_option_changes_only_its_part(over: dict[str, Any], field: str, value: Any) -> None:
    before, after = spec.build(request(), WS), spec.build(request(**over), WS)
    if field == "labels":
        assert L.RUN_ID not in after.labels
    else:
        assert getattr(after, field) == value
    assert after.binds == before.binds and after.user == before.user


def test_launch_document_carries_the_request() -> None:
    s = spec.build(request(max_time=30.0, idle_timeout=5.0, use_mock=True, mock_script={"turns": []}), WS)
    doc = contract.Launch.from_json(s.state_files()["launch.json"][0].decode())
    assert doc == s.launch
    assert doc.argv == ["claude", "--dangerously-skip-permissions", "do it"] and doc.delivery == "arg"
    assert doc.claude and doc.mock_model and doc.mock_script == {"turns": []}
    assert (doc.retries, doc.backoff, doc.max_time, doc.idle_timeout) == (3, 0.5, 30.0, 5.0)
    assert doc.workdir == str(WS.path) and doc.session == "a-1" and doc.git_identity == {"name": "U", "email": "u@x"}


def test_spec_refuses_root_and_unknown_profiles() -> None:
    with pytest.raises(ValueError, match="root"):
        spec.build(request(uid=0), WS)
    with pytest.raises(ValueError, match="profile"):
        spec.build(request(profile="nope"), WS)


def test_contract_launch_round_trip_ignores_unknown_fields() -> None:
    doc = contract.Launch(name="n", session="n", argv=["bash"], workdir="/w", task="t;", delivery="type")
    raw = json.loads(doc.to_json())
    raw["from_a_newer_host"] = 1
    raw["mock_script"] = None
    assert contract.Launch.from_json(json.dumps(raw)) == doc


def test_contract_tmux_paste_is_one_literal_paste() -> None:
    argv = contract.tmux_paste("=s:", "a;", buffer="b")
    assert argv[:5] == ["set-buffer", "-b", "b", "--", "a\\;"] and argv[-5:] == [";", "send-keys", "-t", "=s:", "Enter"]
    assert contract.tmux_paste("=s:", "x", buffer="b", enter=False)[-1] == "=s:"
    assert contract.tmux_paste("=s:", "", buffer="b") == ["send-keys", "-t", "=s:", "Enter"]
    assert contract.tmux_paste("=s:", "", buffer="b", enter=False) == []
    paste = contract.tmux_paste_file("=s:", "/f", buffer="b")
    assert paste[:5] == ["load-buffer", "-b", "b", "/f", ";"] and paste[5:] == argv[6:]  # (the same paste after)


def test_engine_translates_a_spec_into_dockers_wording(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox.engine import Engine

    seen: dict[str, Any] = {}
    monkeypatch.setattr(Engine, "create", lambda self, **kw: seen.update(kw) or "cid")
    engine = Engine.__new__(Engine)
    assert engine.create_from(spec.build(request(profile="locked"), WS)) == "cid"
    hc = seen["host_config"]  # (the Engine API's own field names: both lanes send them as they are)
    assert hc["CapDrop"] == ["ALL"] and hc["SecurityOpt"] == ["no-new-privileges:true"]
    assert hc["NetworkMode"] == "none" and hc["ReadonlyRootfs"] is True and hc["Memory"] == 4 * 1024**3
    assert hc["Mounts"] == [{"Target": contract.LAUNCH_DIR, "Type": "volume"}]
    assert hc["RestartPolicy"] == {"Name": "unless-stopped"}  # back after an engine restart; the init bounds it
    # the container (its supervisor) as root with only the supervisor's capabilities; the agent's uid in
    # the launch document (its pane runs as that, with none)
    assert f"{WS.path / '.git'}:{WS.path / '.git'}:ro" in seen["binds"] and seen["user"] == "0:0"
    assert hc["CapAdd"] == ["SETUID", "SETGID", "SETPCAP", "KILL"]
    built = spec.build(request(profile="locked"), WS)
    assert (built.launch.uid, built.launch.gid) == built.user == (1000, 1000) and built.supervised
    seen.clear()
    engine.create_from(spec.build(request(), WS), "net-id")
    assert seen["host_config"]["NetworkMode"] == "net-id" and "ReadonlyRootfs" not in seen["host_config"]
    assert seen["host_config"]["Ulimits"] == [{"Name": "nofile", "Soft": 4096, "Hard": 4096}]
    assert "Runtime" not in seen["host_config"]
    seen.clear()
    engine.create_from(spec.build(request(runtime="runsc"), WS), "net-id")
    assert seen["host_config"]["Runtime"] == "runsc"


def test_long_text_is_pasted_in_chunks_between_characters() -> None:
    """tmux refuses a command line over 16 KiB: a long text fills the buffer in chunks, then one paste."""
    text = ("ü→日本;" * 3000) + "end;"
    calls = contract.tmux_pastes("=s:", text, buffer="b")
    *fills, paste = calls
    assert len(fills) > 2 and paste[:2] == ["paste-buffer", "-p"] and paste[-5:] == [";", "send-keys", "-t", "=s:", "Enter"]
    assert fills[0][:4] == ["set-buffer", "-b", "b", "--"] and all(f[:5] == ["set-buffer", "-a", "-b", "b", "--"] for f in fills[1:])
    chunks = [f[-1] for f in fills]
    assert all(len(c.encode()) <= contract.PASTE_CHUNK + 1 for c in chunks)
    assert "".join(c[:-2] + ";" if c.endswith("\\;") else c for c in chunks) == text
    assert contract.tmux_pastes("=s:", "short", buffer="b") == [contract.tmux_paste("=s:", "short", buffer="b")]


def test_task_limits() -> None:
    from sandbox import agents
    from sandbox.errors import UsageError

    assert agents.check_task("x" * agents.TASK_MAX)
    for bad in ("x" * (agents.TASK_MAX + 1), "a\0b", "\udcff"):
        with pytest.raises(UsageError):
            agents.check_task(bad)


def test_host_and_inside_type_the_same_paste(tmp_path: Path) -> None:
    """The host's driver and the contract's argv builders (the init's typed task: from a file) type the
    same, byte-exact."""
    sock = f"sbx-spec-{tmp_path.name[-8:]}"
    ex = LocalExecutor(("-L", sock))
    (tmp_path / "typed").write_text("three;")
    try:
        ex.run(["tmux", "new-session", "-d", "-s", "p", "-x", "80", "-y", "10", "cat"])
        Tmux(ex, "p").send("one;")
        ex.run(["tmux", *contract.tmux_paste(contract.tmux_target("p"), "two;", buffer="x")])
        ex.run(["tmux", *contract.tmux_paste_file(contract.tmux_target("p"), str(tmp_path / "typed"), buffer="y")])
        from tests.conftest import wait_for

        wait_for(lambda: "three;" in Tmux(ex, "p").capture(), 10, "the three pastes")
        out = Tmux(ex, "p").capture()
        assert out.count("one;") >= 1 and out.count("two;") >= 1 and "\\;" not in out
    finally:
        ex.run(["tmux", "kill-server"])


# -- through the CLI: what `config show` says is what `spawn` used -------------------------------------
NOT_SPAWN = {  # settings that do not shape a spawned container, and why
    "base_image": "image build only", "cache_dir": "image build only", "claude_sdk_version": "image build only",
    "ready_timeout": "how long spawn waits", "queue_timeout": "how long --queue waits",
    "max_agents": "admission, not the container", "sync_timeout": "reading work later",
    "max_sync_bytes": "reading work later (test_hostile_sync.py)", "max_blob_bytes": "reading work later",
    "notify": "run by top / wait --notify on the host", "ntfy_url": "where notify_url = ntfy:TOPIC posts (host)", "mcp": "sandbox mcp's policy, read by its tools (test_mcp.py)",
    "secret_env": "names of variables (checked by test_security)", "secrets": "masked values",
    "repo_file": "the repository file's trust, not a setting (tests/test_trust.py)",
    "mock_model": "decides the launch document's mock_model (checked below)",
    "agent": "overridden here by --agent-cmd (the claude label: test_e2e.py)",
    "runtime": "unset here: the engine has only runc (a missing one: test_isolated.py)",
    "allow": "isolated profile only (test_isolated.py)", "model_upstream": "isolated profile only (test_isolated.py)",
    "egress_network": "isolated profile only (test_isolated.py)",
    "engine": "local here (the swarm backend: test_swarm.py)", "swarm_network": "swarm backend only (test_swarm.py)",
    "image_registry": "swarm backend only (image push-to-nodes)",
    "trusted_filters": "host git drivers allowed on agent content (diff, merge, apply, restore; test_hostile_review.py)",
    "server": "how commands run on the host (test_server.py)", "server_idle": "the command server's idle exit (test_server.py)",
    "notify_url": "the webhook of wait --notify, top and the command server's watcher (test_workday.py)",
    "setup": "[setup] run (the launch document's setup) and copy (the workspace): test_setup.py",
    "toolchain": "None here: the [toolchain] image of a repository is test_toolchain.py's",
    "port_range": "which host ports spawn picks for `ports` (test_workday.py)",
}


@pytest.mark.slow
def test_every_setting_config_show_reports_is_what_spawn_used(env: Env, repo: Path) -> None:
    import os

    if os.getuid() != 0:
        pytest.skip("sets the agent's uid, which needs root")
    extra = {"SANDBOX_RETRIES": "2", "SANDBOX_RETRY_BACKOFF": "0.25", "SANDBOX_MAX_TIME": "3600",
             "SANDBOX_IDLE_TIMEOUT": "1800", "SANDBOX_MEMORY": "1g", "SANDBOX_CPUS": "1.5",
             "SANDBOX_PIDS_LIMIT": "512", "SANDBOX_MODEL": "opus", "SANDBOX_AGENT_UID": "61001",
             "SANDBOX_AGENT_GID": "61002", "SANDBOX_MOCK_MODEL": "off", "SANDBOX_NOFILE": "2048",
             "SANDBOX_MAX_COST": "5", "SANDBOX_PRICES": '{"claude-*": {"input": 2, "output": 8}}',
             "SANDBOX_PORTS": "[3000]"}
    (repo / ".sandbox.toml").write_text('profile = "default"\nagent = "claude"\n')
    shown = env.ok("config", "show", cwd=repo, extra=extra).json()
    name = env.ok("spawn", "--agent-cmd", "bash", "--name", "cfg-1", cwd=repo, extra=extra).out.strip()
    try:
        info = json.loads(subprocess.run(["docker", "inspect", f"sandbox-{name}"], capture_output=True,
                                         text=True, check=True).stdout)[0]
        labels, hc = info["Config"]["Labels"], info["HostConfig"]
        launch = json.loads(env.ok("exec", name, "--", "cat", contract.STATE_LAUNCH_FILE, extra=extra).out)
        used = {
            "image": labels[L.IMAGE], "profile": labels[L.PROFILE],
            "model": labels[L.MODEL], "retries": int(labels[L.RETRIES]), "retry_backoff": launch["backoff"],
            "max_time": float(labels[L.MAX_TIME]), "idle_timeout": float(labels[L.IDLE_TIMEOUT]),
            "memory": "1g" if hc["Memory"] == 1024**3 else hc["Memory"], "cpus": hc["NanoCpus"] / 1e9,
            "pids_limit": hc["PidsLimit"], "run_id": labels[L.RUN_ID],
            "agent_uid": launch["uid"], "agent_gid": launch["gid"],  # (the container's own user: root, its supervisor)
            "data_dir": str(Path(labels[L.STATE_DIR]).parent.parent),
            "network": next(iter(info["NetworkSettings"]["Networks"])),
            "nofile": next(u["Hard"] for u in hc["Ulimits"] if u["Name"] == "nofile"),
            "max_cost": float(labels[L.MAX_COST]), "prices": launch["prices"][0],  # (the setting's layer first)
            "disk": "10g" if labels[L.DISK] == str(10 * 1024**3) else labels[L.DISK],
            "objects": labels[L.OBJECTS],
            "ports": sorted(int(k.split("/")[0]) for k in hc.get("PortBindings") or {}),  # (no host port chosen)
        }
        assert launch["mock_model"] is False and shown["mock_model"] == "off"
        for key, value in shown.items():
            if key in NOT_SPAWN:
                continue
            assert key in used, f"setting {key!r}: say what spawn does with it (or add it to NOT_SPAWN)"
            assert used[key] == value, (key, used[key], value)
    finally:
        env.ok("rm", "--force", name, extra=extra)
