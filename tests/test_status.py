"""States, wait, send --wait, supervision (restarts, circuit breaker), capacity, time limits, health,
and the engine retry policies. Slow tests use the real engine, tmux and Claude Code (mock model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sandbox.engine import retry
from sandbox.errors import Conflict, EngineError, EngineUnavailable, NotFound
from tests.conftest import RUN_ID, Env, wait_for

ROOT = Path(__file__).resolve().parent.parent
FAST = {"SANDBOX_RETRY_BACKOFF": "0.2"}


def row(env: Env, name: str) -> dict:
    rows = [r for r in env.ok("ls", "--all", "--json").json() if r["name"] == name]
    assert rows, f"{name} not in ls"
    return rows[0]


def docker_json(container: str) -> dict:
    return json.loads(subprocess.run(["docker", "inspect", container], capture_output=True, text=True,
                                     check=True).stdout)[0]


# -- pure logic ------------------------------------------------------------------------------
@pytest.mark.parametrize("err, transient", [
    (EngineUnavailable("list containers: cannot reach the Docker engine (ConnectionError)"), True),
    (EngineError("start x: connection reset by peer", status=500), True),
    (EngineError("create c: 503 Service Unavailable", status=503), True),
    (EngineError("start x: OCI runtime create failed: exec: \"nope\": executable file not found", status=500), False),
    (EngineError("create c: invalid mount config for type \"bind\"", status=500), False),
    (EngineError("create c: bind source path does not exist: /x", status=500), False),
    (EngineError("create c: invalid reference format", status=400), False),
    (NotFound("inspect x: No such container: x"), False),
    (Conflict("create c: Conflict. The container name \"/c\" is already in use by container \"ab\""), False),
    (ValueError("not an engine error"), False),
])
def test_transient_classification(err: BaseException, transient: bool) -> None:
    assert retry.is_transient(err) is transient


def test_name_held_classification() -> None:
    assert retry.is_name_held(Conflict('create c: The container name "/c" is already in use by container "ab"'))
    assert retry.is_name_held(Conflict("remove x: removal of container x is already in progress"))
    assert not retry.is_name_held(Conflict("create container c: the name is taken"))
    assert not retry.is_name_held(EngineError("is already in use by container", status=500))


def test_policy_retries_transient_then_reraises_the_original() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise EngineUnavailable("list: connection reset")
        return "ok"

    assert retry.call(retry.READS, flaky) == "ok" and len(calls) == 3

    original = EngineUnavailable("list: connection refused")
    count: list[int] = []

    def down() -> None:
        count.append(1)
        raise original

    t0 = time.monotonic()
    with pytest.raises(EngineUnavailable) as info:
        retry.call(retry.READS, down)
    assert info.value is original and len(count) == 4 and time.monotonic() - t0 < 10

    config = EngineError("create: invalid mount config", status=500)
    count.clear()

    def bad() -> None:
        count.append(1)
        raise config

    with pytest.raises(EngineError):
        retry.call(retry.READS, bad)
    assert len(count) == 1  # a configuration error is never retried


def test_inside_backoff_is_exponential_jittered_and_capped() -> None:
    sys.path.insert(0, str(ROOT))
    from sandbox.inside import supervisor

    for n, full in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)):
        for _ in range(20):
            d = supervisor.backoff(n, 1.0)
            assert 0.5 * full <= d <= full


def _hook(state_dir: Path, event: str, payload: dict) -> dict:
    """A hook run (as the agent: it writes only its report), then the supervisor's merge of that report
    into the state file; the state file."""
    env = {**os.environ, "SANDBOX_STATE_DIR": str(state_dir), "PYTHONPATH": str(ROOT)}
    (state_dir / "agent").mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "sandbox.inside", "hook", event], input=json.dumps(payload),
                   text=True, env=env, check=True, timeout=30)
    subprocess.run([sys.executable, "-c", "from sandbox.inside.supervisor import merge_report; merge_report()"],
                   env=env, check=True, timeout=30)
    return json.loads((state_dir / "state.json").read_text())


def test_hook_mapping(tmp_path: Path) -> None:
    """The Claude Code hook → state mapping, with the payloads Claude Code sends on stdin."""
    transcript = tmp_path / "t.jsonl"
    lines = [
        {"type": "user", "message": {"role": "user", "content": "old prompt"}},
        {"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text", "text": "old"}]}},
        {"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": "new prompt"}]}},
        {"type": "assistant", "message": {"role": "assistant", "content": [{"type": "tool_use", "id": "1"}]}},
        {"type": "user", "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "1"}]}},
        {"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text", "text": "Answer."}]}},
    ]
    transcript.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert _hook(tmp_path, "UserPromptSubmit", {"prompt": "new prompt"})["state"] == "busy"
    assert _hook(tmp_path, "PreToolUse", {"tool_name": "Bash"})["state"] == "busy"
    st = _hook(tmp_path, "Stop", {"transcript_path": str(transcript), "stop_hook_active": False})
    assert st["state"] == "idle" and st["stops"] == 1 and st["prompts"] == 1
    assert (tmp_path / "agent" / "reply.txt").read_text() == "Answer."
    st = _hook(tmp_path, "Notification", {"message": "Claude needs your permission to use Bash",
                                          "notification_type": "permission_prompt"})
    assert st["state"] == "waiting" and "permission" in st["notification"]
    _hook(tmp_path, "Stop", {"last_assistant_message": "Done."})
    st = _hook(tmp_path, "Notification", {"message": "Claude is waiting for your input",
                                          "notification_type": "idle_prompt"})
    assert st["state"] == "idle"  # the long-idle reminder asks nothing new
    st = _hook(tmp_path, "Stop", {"last_assistant_message": "Shall I use Postgres or SQLite?"})
    assert st["state"] == "waiting" and st["reason"] == "question"


# -- real engine -----------------------------------------------------------------------------
def test_engine_create_is_idempotent_by_name_and_labels(agent_image: str) -> None:
    """A create whose first try took effect returns that container; a foreign holder is a Conflict at once."""
    from sandbox.engine import Engine

    engine = Engine()
    name = f"sandbox-status-{RUN_ID}"
    labels = {"sandbox.managed": "1", "sandbox.run-id": RUN_ID, "sandbox.name": name, "sandbox.created": "x"}
    kw = dict(name=name, image=agent_image, command=["sleep", "60"], env={}, user="1000:1000", binds=[])
    try:
        first = engine.create(labels=labels, **kw)  # type: ignore[arg-type]
        assert engine.create(labels=labels, **kw) == first  # type: ignore[arg-type]
        t0 = time.monotonic()
        with pytest.raises(Conflict, match="the name is taken"):
            engine.create(labels={**labels, "sandbox.created": "y"}, **kw)  # type: ignore[arg-type]
        assert time.monotonic() - t0 < 5
    finally:
        engine.remove(name)


def test_engine_unreachable_is_retried_bounded_and_reraised() -> None:
    from sandbox.engine import Engine

    t0 = time.monotonic()
    with pytest.raises(EngineUnavailable):
        Engine(base_url="tcp://127.0.0.1:9", timeout=2).list_containers(["sandbox.managed=1"])
    assert time.monotonic() - t0 < 15


@pytest.mark.slow
@pytest.mark.claude
def test_claude_states_send_wait_and_question(env: Env, repo: Path, tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({
        "turns": [
            {"match": "question", "steps": [{"ask": "Which database should I use?"}]},
            {"match": "slow", "steps": [{"tool": "Bash", "input": {"command": "sleep 4; echo slept"}},
                                        {"text": "Slept well."}]},
        ],
        "default": {"steps": [{"text": "The answer is 42."}]},
    }))
    name = env.ok("spawn", "--name", "st-claude", "--mock-script", str(script), "a slow task", cwd=repo).out.strip()
    seen: list[str] = []

    def idle_after_busy() -> bool:
        r = row(env, name)
        seen.append(r["state"])
        return r["state"] == "idle" and "busy" in seen

    wait_for(idle_after_busy, 90, "busy, then idle")
    r = row(env, name)
    assert r["attempt"] == 1 and r["activity"]

    res = env.ok("send", name, "what is the answer", "--wait", "--timeout", "90")
    assert res.out.strip() == "The answer is 42."
    assert row(env, name)["state"] == "idle"

    res = env.ok("send", name, "a question for you", "--wait", "--timeout", "90")
    assert res.out.strip() == "Which database should I use?"
    r = row(env, name)
    assert r["state"] == "waiting" and r["reason"] == "question"
    assert env.run("wait", name, "--until", "idle", "--timeout", "1").code == 9
    assert env.ok("wait", name, "--until", "any", "--timeout", "5").out.strip() == "waiting"

    # A permission prompt: the Notification hook, run in the container with Claude Code's payload
    # (the agent runs with --dangerously-skip-permissions, so Claude Code itself never asks).
    payload = json.dumps({"hook_event_name": "Notification", "notification_type": "permission_prompt",
                          "message": "Claude needs your permission to use Bash"})
    env.ok("send", name, "what now", "--wait", "--timeout", "90")
    assert row(env, name)["state"] == "idle"
    env.ok("exec", name, "--", "sh", "-c", f"echo '{payload}' | python3 -m sandbox.inside hook Notification")
    assert row(env, name)["state"] == "waiting"
    env.ok("rm", "--force", name)


COUNTING = ("sh -c 'n=$(cat .attempts 2>/dev/null || echo 0); n=$((n+1)); echo $n > .attempts; "
            "echo attempt-$n; sleep 0.5; [ $n -ge 3 ]'")


@pytest.mark.slow
def test_fails_twice_then_succeeds(env: Env, repo: Path) -> None:
    name = env.ok("spawn", "--name", "st-flaky", "--retries", "3", "--agent-cmd", COUNTING,
                  cwd=repo, extra=FAST).out.strip()
    res = env.run("wait", name, "--until", "exited", "--timeout", "120")
    assert res.code == 0, res.err
    r = row(env, name)
    assert (r["state"], r["exit_code"], r["attempt"]) == ("exited", 0, 3)
    history = r["agent_state"]["history"]
    assert [(h["attempt"], h["exit_code"]) for h in history] == [(1, 1), (2, 1), (3, 0)]
    out = env.ok("logs", name).out
    assert "attempt-3" in out  # the same pane (earlier attempts' screens are kept best-effort only)
    assert (Path(r["workspace"]) / ".attempts").read_text().strip() == "3"
    env.ok("rm", "--force", name)


@pytest.mark.slow
def test_always_failing_agent_is_failed_and_stays_down(env: Env, repo: Path) -> None:
    t0 = time.monotonic()
    # --no-wait: an agent that never gets ready makes a waiting spawn fail (and clean up), exit 8.
    name = env.ok("spawn", "--no-wait", "--name", "st-broken", "--retries", "2", "--agent-cmd",
                  "sh -c 'echo broken; exit 7'", cwd=repo, extra=FAST).out.strip()
    res = env.run("wait", name, "--until", "exited", "--timeout", "120")
    assert res.code == 0 and res.out.strip() == "failed", res
    elapsed = time.monotonic() - t0
    r = row(env, name)
    assert (r["state"], r["exit_code"], r["attempt"]) == ("failed", 7, 3)
    assert "gave up after 3 failed attempts" in r["reason"]
    assert elapsed < 120  # generous: the machine may be loaded; the backoff itself is < 1 s here
    gaps = [b["started"] - a["ended"] for a, b in zip(r["agent_state"]["history"], r["agent_state"]["history"][1:])]
    assert len(gaps) == 2 and all(g < 10 for g in gaps)
    # The circuit stays open: no further attempt (observed for a few seconds, bounded).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert row(env, name)["attempt"] == 3
    assert env.run("wait", name, "--until", "idle", "--timeout", "5").code == 8  # failed, not idle
    assert "failed" in env.ok("ls").out
    wait_for(lambda: docker_json(f"sandbox-{name}")["State"]["Health"]["Status"] == "unhealthy", 150, "unhealthy")
    assert docker_json(f"sandbox-{name}")["State"]["Running"]  # stays up: logs still work
    assert "broken" in env.ok("logs", name).out
    env.ok("rm", "--force", name)


@pytest.mark.slow
def test_killed_agent_and_killed_container(env: Env, repo: Path) -> None:
    name = env.ok("spawn", "--name", "st-kill", "--retries", "3", "--agent-cmd", "sleep 1000",
                  cwd=repo, extra=FAST).out.strip()
    container = f"sandbox-{name}"
    wait_for(lambda: docker_json(container)["State"]["Health"]["Status"] == "healthy", 150, "healthy")

    # 1. The agent's process is killed: restarted in the same pane, attempt 2.
    env.ok("exec", name, "--", "pkill", "-KILL", "-x", "sleep")
    r = wait_for(lambda: (lambda x: x if x["attempt"] == 2 and x["state"] in ("busy", "idle") else None)(
        row(env, name)), 60, "attempt 2")
    assert r["agent_state"]["history"][-1]["exit_code"] == 137

    # 2. The container's main process dies (killed from the host: the agent's uid cannot signal it, see
    # tests/test_hostile_uids.py): the engine's restart policy starts it again, attempt 3.
    subprocess.run(["docker", "exec", container, "pkill", "-KILL", "-f", "sandbox.inside init"], check=True)
    wait_for(lambda: row(env, name)["attempt"] == 3, 90, "attempt 3 after the container restart")
    assert docker_json(container)["RestartCount"] == 1
    wait_for(lambda: row(env, name)["state"] in ("busy", "idle"), 60, "ready after the container restart")

    # 3. `docker kill`: right at once `exited` with the engine's code; the engine never restarts a manual kill.
    subprocess.run(["docker", "kill", container], check=True, capture_output=True)
    r = row(env, name)
    assert (r["state"], r["exit_code"]) == ("exited", 137) and "container exited" in r["reason"]
    assert docker_json(container)["RestartCount"] == 1
    assert env.ok("start", name).out.strip() in ("busy", "idle")
    assert row(env, name)["attempt"] == 4
    env.ok("rm", "--force", name)


@pytest.mark.slow
def test_time_limits_stop_the_agent_and_keep_the_work(env: Env, repo: Path) -> None:
    name = env.ok("spawn", "--name", "st-maxtime", "--max-time", "3", "--agent-cmd",
                  "sh -c 'echo work > wip.txt; while :; do date; sleep 0.5; done'", cwd=repo).out.strip()
    idle = env.ok("spawn", "--name", "st-idle", "--idle-timeout", "3", "--agent-cmd", "sleep 1000",
                  cwd=repo).out.strip()
    assert env.ok("wait", name, "--until", "exited", "--timeout", "90").out.strip() == "stopped"
    r = row(env, name)
    assert r["reason"] == "max-time 3s reached" and r["engine_state"] == "running"
    workspace = Path(r["workspace"])
    assert (workspace / "wip.txt").read_text() == "work\n"
    assert "wip.txt" in env.ok("diff", name, "--uncommitted", "--stat").out  # kept, uncommitted
    assert env.ok("wait", idle, "--until", "exited", "--timeout", "90").out.strip() == "stopped"
    assert row(env, idle)["reason"] == "idle-timeout 3s reached"
    assert "max-time 3s reached" in env.ok("ls").out
    env.ok("rm", "--force", name, idle)


BUSY_FOREVER = "sh -c 'while :; do date; sleep 0.3; done'"
BUSY_THEN_QUIET = "sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do date; sleep 0.3; done; exec sleep 1000'"
WORKING = ("starting", "busy", "waiting")


def _spawn_all(env: Env, repo: Path, cmd: str, prefix: str, *flags: str) -> list:
    results: list = [None] * 6

    def one(i: int) -> None:
        results[i] = env.run("spawn", "--name", f"{prefix}{i}", "--max-agents", "3", *flags,
                             "--agent-cmd", cmd, cwd=repo, timeout=240)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.slow
def test_six_spawns_at_once_never_more_than_three_working(env: Env, repo: Path) -> None:
    results = _spawn_all(env, repo, BUSY_FOREVER, "cap")
    ok = [r for r in results if r.code == 0]
    refused = [r for r in results if r.code != 0]
    assert len(ok) == 3, [(r.code, r.err) for r in results]
    assert all(r.code == 5 and "capacity full" in r.err for r in refused)
    assert sum(1 for r in env.ok("ls", "--json", cwd=repo).json() if r["state"] in WORKING) == 3
    env.ok("rm", "--force", *[r.out.strip() for r in ok])

    # --queue: all six run, in turns; a sampler never sees more than three working.
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rows = env.run("ls", "--json", cwd=repo).json()
            peak[0] = max(peak[0], sum(1 for r in rows if r["state"] in WORKING))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        results = _spawn_all(env, repo, BUSY_THEN_QUIET, "q", "--queue")
    finally:
        stop.set()
        sampler.join()
    assert all(r.code == 0 for r in results), [(r.code, r.err) for r in results]
    assert 1 <= peak[0] <= 3
    env.ok("rm", "--force", *[r.out.strip() for r in results])


def test_a_failure_after_a_stable_run_restarts_at_once_a_crash_loop_backs_off(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT))
    from sandbox import contract, inside
    from sandbox.inside.supervisor import Supervisor

    monkeypatch.setattr(inside, "STATE", str(tmp_path / "state.json"))
    sup = Supervisor(contract.Launch(name="a", session="a", argv=["false"], workdir="/tmp", retries=3,
                                     backoff=1.0, stable_after=60.0))
    sup.attempt, sup.attempt_t0 = 1, time.time() - 120  # it ran for two minutes, then failed
    assert sup.on_exit(1) == 0.0
    assert json.loads((tmp_path / "state.json").read_text())["state"] == "starting"
    sup.attempt, sup.attempt_t0 = 2, time.time()  # and failed again at once: backoff(2)
    assert 1.0 <= sup.on_exit(1) <= 2.0
    sup.attempt, sup.attempt_t0 = 3, time.time()
    assert 2.0 <= sup.on_exit(1) <= 4.0
