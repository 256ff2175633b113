"""Load: N spawns of a shell agent at 8 in parallel, then N removals at 8 in parallel.

0 orphan containers, workspaces, agent git dirs, branches or state dirs; 0 duplicate names; spawn
p50/p95/p99; engine calls counted by a proxy on DOCKER_HOST and engine retries (SANDBOX_RETRY_LOG)
per 1,000 calls. N = 16 by default (CI), 200 with SANDBOX_RELIABILITY_SCALE=full.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import RUN_ID, leftovers, make_env, make_repo
from tests.reliability.conftest import MARKS, count, record
from tests.reliability.engines import CountingProxy

pytestmark = MARKS
PARALLEL = 8


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def test_load_spawn_then_remove(tmp_path: Path, agent_image: str) -> None:
    n = count(16, 200)
    env = make_env(tmp_path, agent_image)
    repo = make_repo(tmp_path / "repo")
    sock = tmp_path / "engine.sock"
    proxy = CountingProxy(str(sock))
    retries = tmp_path / "retries.log"
    env.env.update(DOCKER_HOST=f"unix://{sock}", SANDBOX_RETRY_LOG=str(retries))

    def timed(*args: str) -> tuple[float, object]:
        t0 = time.monotonic()
        res = env.run(*args, cwd=repo, timeout=600)
        return time.monotonic() - t0, res

    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(PARALLEL) as pool:
            spawned = list(pool.map(lambda _: timed("spawn", "--agent-cmd", "sh"), range(n)))
        spawn_wall = time.monotonic() - t0
        failed = [r for _, r in spawned if r.code != 0]  # type: ignore[attr-defined]
        assert not failed, [(r.code, r.err) for r in failed[:5]]  # type: ignore[attr-defined]
        names = [r.out.strip() for _, r in spawned]  # type: ignore[attr-defined]
        assert len(set(names)) == n, f"duplicate names: {sorted(x for x in names if names.count(x) > 1)}"
        listed = env.ok("ls", "--json", cwd=repo).json()
        assert sorted(r["name"] for r in listed) == sorted(names)
        assert all(r["state"] in ("idle", "busy") for r in listed), [r["state"] for r in listed]
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=sandbox.run-id={RUN_ID}",
                              "--filter", f"label=sandbox.repo={repo}"], capture_output=True, text=True).stdout.split()
        assert len(ids) == n

        t0 = time.monotonic()
        with ThreadPoolExecutor(PARALLEL) as pool:
            removed = list(pool.map(lambda name: timed("rm", "--delete-branch", name), names))
        rm_wall = time.monotonic() - t0
        failed = [r for _, r in removed if r.code != 0]  # type: ignore[attr-defined]
        assert not failed, [(r.code, r.err) for r in failed[:5]]  # type: ignore[attr-defined]
        calls = proxy.count
    finally:
        proxy.close()
        env.env.pop("DOCKER_HOST")
    assert leftovers(env, repo) == {"containers": [], "workspaces": [], "branches": [], "registered": []}
    assert not list((env.data / "state").glob("*")) and not list((env.data / "spawning").glob("*"))
    assert env.ok("gc", cwd=repo).out.count("would rm") == 0
    n_retries = len(retries.read_text().splitlines()) if retries.exists() else 0
    times = [t for t, _ in spawned]
    rm_times = [t for t, _ in removed]
    record("load", {
        "spawns": n, "parallel": PARALLEL, "duplicate_names": n - len(set(names)), "orphans": 0,
        "spawn_p50_s": round(pct(times, 50), 2), "spawn_p95_s": round(pct(times, 95), 2),
        "spawn_p99_s": round(pct(times, 99), 2), "spawn_wall_s": round(spawn_wall, 1),
        "rm_p50_s": round(statistics.median(rm_times), 2), "rm_p95_s": round(pct(rm_times, 95), 2),
        "rm_wall_s": round(rm_wall, 1), "engine_calls": calls, "engine_retries": n_retries,
        "retries_per_1000_calls": round(1000 * n_retries / max(calls, 1), 2), "cpus": os.cpu_count(),
    })
