"""The warm pool (`sandbox pool`): started containers that `spawn` claims, on the real engine.

What a user sees: pool containers are never agents in `ls`; a spawn takes one (its container id is a
pool container's, renamed to the agent's; the plain-docker attach works); two spawns at once never
take the same slot; the pool tops itself up in the background; a warm agent has the same security
options as a cold spawn of its profile; `rm` and `gc` clean up after it; `--size 0` empties it.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import RUN_ID, Env, wait_for


def _pool_ids() -> list[str]:
    return subprocess.run(["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=sandbox.run-id={RUN_ID}",
                           "--filter", "label=sandbox.pool"], capture_output=True, text=True).stdout.split()


def _inspect(ref: str) -> dict:
    out = subprocess.run(["docker", "inspect", ref], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]


def _ready(env: Env, repo: Path) -> int:
    return int(env.ok("pool", "--json", cwd=repo).json()["ready"])


SECURITY = ("CapDrop", "SecurityOpt", "PidsLimit", "Memory", "NanoCpus", "Ulimits", "RestartPolicy",
            "ReadonlyRootfs", "Privileged", "CapAdd")


def test_warm_spawn_claims_a_pool_container_and_the_pool_tops_up(env: Env, repo: Path) -> None:
    got = env.ok("pool", "--size", "2", "--json", cwd=repo).json()
    assert got["ready"] == 2 and got["size"] == 2 and got["repo"] == str(repo)
    pooled = set(_pool_ids())
    assert len(pooled) == 2
    for cid in pooled:
        labels = _inspect(cid)["Config"]["Labels"]
        assert "sandbox.managed" not in labels and "sandbox.name" not in labels
    assert env.ok("ls", "--json", cwd=repo).json() == []  # a pool container is no agent

    try:
        out = env.ok("spawn", "--agent-cmd", "bash", "--name", "warm", "--json", cwd=repo).json()
        assert out["name"] == "warm" and out["branch"] == "sandbox/warm"
        c = _inspect("sandbox-warm")
        assert c["Id"] in pooled, "the spawn made a container instead of claiming one of the pool's"
        # The plain-docker way in, and the agent's labels where `ls` reads them
        has = subprocess.run(["docker", "exec", "sandbox-warm", "tmux", "has-session", "-t", "=warm"])
        assert has.returncode == 0
        agents = env.ok("ls", "--json", cwd=repo).json()
        assert [a["name"] for a in agents] == ["warm"] and agents[0]["state"] in ("idle", "busy", "ready")
        # It works in its workspace on its branch, and the host brings its work over
        env.ok("send", "warm", "git checkout -q -b nope 2>/dev/null; echo warm-work > warm.txt && git add warm.txt "
               "&& git commit -qm warm && echo done-$((6*7))", cwd=repo)
        wait_for(lambda: "done-42" in env.ok("logs", "warm", cwd=repo).out, 60, "the commit in the warm agent")
        assert "warm.txt" in env.ok("diff", "warm", cwd=repo).out
        # The pool refills itself (a detached top-up, no daemon)
        wait_for(lambda: _ready(env, repo) == 2, 60, "the pool topped up to 2")
        assert len(set(_pool_ids()) - {c["Id"]}) == 2
        # The same security options as a cold spawn of the profile
        warm_hc = {k: c["HostConfig"].get(k) for k in SECURITY}
        env.ok("pool", "--size", "0", cwd=repo)
        assert _pool_ids() == [c["Id"]] and _ready(env, repo) == 0
        env.ok("spawn", "--agent-cmd", "bash", "--name", "cold", cwd=repo)
        cold = _inspect("sandbox-cold")
        assert cold["Id"] != c["Id"] and "sandbox.pool" not in cold["Config"]["Labels"]
        assert {k: cold["HostConfig"].get(k) for k in SECURITY} == warm_hc
        # (both start as root, their supervisor's; the agent's uid is the same in both)
        assert cold["Config"]["User"] == c["Config"]["User"] == "0:0"
        assert cold["Config"]["Labels"]["sandbox.uid"] == c["Config"]["Labels"]["sandbox.uid"] != "0"
        slot_dir = Path(out["workspace"]).parent
        assert slot_dir.is_dir() and (slot_dir / "claim.json").is_file()
        env.ok("rm", "--force", "warm", "cold", cwd=repo)
        assert not slot_dir.exists(), "rm left the warm agent's slot behind"
    finally:
        env.run("pool", "--size", "0", cwd=repo)
        env.run("rm", "--force", "warm", "cold", cwd=repo)
    assert _pool_ids() == []


def test_parallel_spawns_never_share_a_slot_and_gc_drops_only_dead_slots(env: Env, repo: Path) -> None:
    env.ok("pool", "--size", "2", "--profile", "locked", cwd=repo)
    pooled = set(_pool_ids())
    names = ["pa", "pb", "pc"]
    try:
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda n: env.run("spawn", "--agent-cmd", "bash", "--profile", "locked",
                                                      "--name", n, cwd=repo), names))
        assert all(r.code == 0 for r in results), [r.err for r in results]
        ids = [_inspect(f"sandbox-{n}")["Id"] for n in names]
        assert len(set(ids)) == 3, "two spawns got the same container"
        assert len(set(ids) & pooled) <= 2
        assert len(set(ids) & pooled) >= 1, "no spawn claimed from the pool"
        for n in names:  # the locked profile holds, warm or cold
            hc = _inspect(f"sandbox-{n}")["HostConfig"]
            assert hc["ReadonlyRootfs"] is True and hc["NetworkMode"] == "none"
        wait_for(lambda: _ready(env, repo) == 2, 60, "the pool topped up to 2")
        # gc: a healthy pool is left alone; a slot whose container died goes
        plan = env.ok("gc", cwd=repo).out
        assert " pool " not in plan, plan
        victim = sorted(set(_pool_ids()) - set(ids))[0]
        subprocess.run(["docker", "rm", "-f", victim], capture_output=True, check=True)
        plan = env.ok("gc", "--apply", cwd=repo).out
        assert "pool" in plan and "its container is gone" in plan, plan
        assert sorted(set(_pool_ids()) - set(ids)) != [] and victim not in _pool_ids()
        status = env.ok("pool", "--json", cwd=repo).json()
        assert status["ready"] == 1, status
        assert sorted(a["name"] for a in env.ok("ls", "--json", cwd=repo).json()) == names
    finally:
        env.run("pool", "--size", "0", "--profile", "locked", cwd=repo)
        env.run("rm", "--force", *names, cwd=repo)
    assert _pool_ids() == []
