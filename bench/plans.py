"""A plan's scheduling overhead per task (issue #23). Needs the engine and the agent image.

    .venv/bin/python bench/plans.py [--tasks 6]

A chain of N shell agents (each: commit a file, exit 0), each starting from the branch of the one before:
1. `sandbox run chain.toml --wait` (sandbox/plan.py's driver);
2. a shell loop doing the same by hand: `sandbox spawn --base sandbox/PREV --agent-cmd …`, `sandbox wait
   NAME --until exited`, `sandbox sync NAME`, next.
The overhead of a link is the time from a task's end (its state file's `since` when it went `exited`) to
its dependent's container being created (the engine's `Created`, ns): what the scheduler adds between two
tasks, the spawn's own work up to `create` included. Medians and the worst over the N-1 links.
Everything it creates carries its own run id and is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = f"bench-plans-{uuid.uuid4().hex[:8]}"
CMD = "sh -c 'date +%s.%N > {f} && git add {f} && git commit -qm {f}'"


def sh(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def created(container: str) -> float:
    """The engine's creation time of a container, epoch seconds (ns precision)."""
    raw = sh("docker", "inspect", "-f", "{{.Created}}", container).strip()
    whole, _, frac = raw.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float("0." + (frac or "0"))


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.repo = tmp / "repo"
        self.repo.mkdir()
        sh("git", "-C", str(self.repo), "init", "-q", "-b", "main")
        sh("git", "-C", str(self.repo), "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-q",
           "--allow-empty", "-m", "init")
        self.data = tmp / "data" / "sandbox"
        self.env = {**os.environ, "XDG_DATA_HOME": str(tmp / "data"), "XDG_CONFIG_HOME": str(tmp / "config"),
                    "SANDBOX_RUN_ID": RUN_ID, "PYTHONPATH": str(ROOT), "SANDBOX_READY_TIMEOUT": "300"}
        self.cli = [sys.executable, "-m", "sandbox"]

    def sandbox(self, *args: str) -> str:
        return sh(*self.cli, *args, env=self.env, cwd=self.repo)

    def ended(self, name: str) -> float:
        state = json.loads((self.data / "state" / name / "state.json").read_text())
        assert state["state"] == "exited" and state["exit_code"] == 0, state
        return float(state["since"])

    def plan(self, n: int, tmp: Path) -> list[float]:
        body = "".join(f'[[task]]\nname = "t{i}"\ntext = "t{i}"\nagent_cmd = "{CMD.format(f=f"p{i}.txt")}"\n'
                       + (f'after = ["t{i - 1}"]\n' if i else "") for i in range(n))
        path = tmp / "chain.toml"
        path.write_text('name = "chain"\nmax_agents = 1\n' + body)
        t0 = time.monotonic()
        got = json.loads(self.sandbox("run", str(path), "--wait", "--json"))
        self.wall_plan = time.monotonic() - t0
        names = [r["agent"] for r in got["tasks"]]
        return [created(f"sandbox-{b}") - self.ended(a) for a, b in zip(names, names[1:])]

    def loop(self, n: int) -> list[float]:
        """The same chain by hand, as a shell script would: spawn, wait, sync, next."""
        names = [f"loop-{RUN_ID[-8:]}-{i}" for i in range(n)]
        t0 = time.monotonic()
        for i, name in enumerate(names):
            base = ["--base", f"sandbox/{names[i - 1]}"] if i else []
            self.sandbox("spawn", "--name", name, *base, "--no-wait", "--retries", "0",
                         "--agent-cmd", CMD.format(f=f"l{i}.txt"), name)
            self.sandbox("wait", name, "--until", "exited", "--timeout", "300")
            self.sandbox("sync", name)
        self.wall_loop = time.monotonic() - t0
        return [created(f"sandbox-{b}") - self.ended(a) for a, b in zip(names, names[1:])]

    def cleanup(self) -> None:
        ids = sh("docker", "ps", "-aq", "--filter", f"label=sandbox.run-id={RUN_ID}").split()
        if ids:
            subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True)


def summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.2f} s, worst {max(xs):.2f} s over {len(xs)} links"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-plans-") as tmp:
        b = Bench(Path(tmp))
        try:
            plan = b.plan(args.tasks, Path(tmp))
            loop = b.loop(args.tasks)
        finally:
            b.cleanup()
    print(f"chain of {args.tasks} shell tasks, a task's end to its dependent's container created:")
    print(f"  sandbox run --wait:                     {summary(plan)}  (wall {b.wall_plan:.1f} s)")
    print(f"  shell loop (spawn, wait, sync):         {summary(loop)}  (wall {b.wall_loop:.1f} s)")
    print(json.dumps({"plan": plan, "loop": loop, "wall_plan": b.wall_plan, "wall_loop": b.wall_loop}))


if __name__ == "__main__":
    main()
