"""The CPU cost of watching: `sandbox top` with N agents (default 20), measured.

    .venv/bin/python bench/top.py [--agents 20] [--busy 2] [--seconds 60] [--json FILE]

Not part of the test suite. Spawns N shell agents (``--agent-cmd bash``; ``--busy`` of them print a line
every half second, so their state files change), then runs the real ``sandbox top`` app (the same
``Board`` and ``TopApp``, textual's headless driver: everything but the terminal writes) in this process
for a warm-up and then ``--seconds``, and reports the process's CPU time over that window (user + system,
all threads: the board's poller, event watcher and stats, textual's loop) as a % of one core, with the
engine calls the board made. Everything it creates carries ``sandbox.run-id=bench-top-…`` and lives in a
temporary directory; it is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("SANDBOX_IMAGE", "sandbox-agent:latest")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--busy", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    run_id = f"bench-top-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="sbx-bench-top-"))
    env = {**os.environ, "XDG_DATA_HOME": str(tmp / "data"), "XDG_CONFIG_HOME": str(tmp / "config"),
           "SANDBOX_RUN_ID": run_id, "SANDBOX_IMAGE": IMAGE, "SANDBOX_READY_TIMEOUT": "120",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "PYTHONPATH": str(ROOT)}
    repo = tmp / "repo"
    try:
        repo.mkdir()
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@invalid", "-C", str(repo)]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True, env=env)
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "init"], check=True, env=env)

        def spawn(i: int) -> None:
            name = f"top-{i + 1}"
            subprocess.run([sys.executable, "-m", "sandbox", "spawn", "--agent-cmd", "bash", "--name", name],
                           cwd=repo, env=env, check=True, capture_output=True, text=True)
            if i < args.busy:
                subprocess.run([sys.executable, "-m", "sandbox", "send", name,
                                "while :; do date; sleep 0.5; done"], cwd=repo, env=env, check=True,
                               capture_output=True)

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(spawn, range(args.agents)))
        print(f"spawned {args.agents} agents ({args.busy} busy) in {time.monotonic() - t0:.0f} s", flush=True)

        for key in [k for k in os.environ if k.startswith("SANDBOX_")]:
            del os.environ[key]
        os.environ.update({k: v for k, v in env.items() if k.startswith(("SANDBOX_", "XDG_", "GIT_"))})
        os.chdir(repo)
        from sandbox.board import Board
        from sandbox.config import load_settings
        from sandbox.manager import SandboxManager
        from sandbox.top import TopApp

        mgr = SandboxManager(load_settings(repo))
        figures: dict[str, object] = {}

        async def watch() -> None:
            board = Board(mgr, repo)
            with board:
                app = TopApp(board, mgr)
                async with app.run_test(size=(200, 50)) as pilot:
                    await pilot.pause(args.warmup)
                    rows = len(app.query_one("#table").rows)  # type: ignore[attr-defined]
                    before = dict(board.counts)
                    c0, w0 = cpu_seconds(), time.monotonic()
                    await pilot.pause(args.seconds)
                    c1, w1 = cpu_seconds(), time.monotonic()
                    after = dict(board.counts)
            wall = w1 - w0
            figures.update({
                "agents": args.agents, "busy": args.busy, "rows_shown": rows, "seconds": round(wall, 1),
                "cpu_seconds": round(c1 - c0, 3), "cpu_percent_of_one_core": round((c1 - c0) / wall * 100, 2),
                "engine_lists_per_second": round((after["list"] - before["list"]) / wall, 3),
                "stats_requests_per_second": round((after["stats"] - before["stats"]) / wall, 2),
                "state_execs": after["exec"] - before["exec"], "events": after["events"] - before["events"],
                "cores": os.cpu_count(), "image": IMAGE,
            })

        asyncio.run(watch())
        print(json.dumps(figures, indent=2))
        print(f"sandbox top, {args.agents} agents: {figures['cpu_percent_of_one_core']} % of one core "
              f"({figures['engine_lists_per_second']} engine lists/s, {figures['stats_requests_per_second']} stats "
              f"requests/s, {figures['state_execs']} execs)")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        return 0
    finally:
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=sandbox.run-id={run_id}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"cleaned up: {len(ids)} containers labelled sandbox.run-id={run_id}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
