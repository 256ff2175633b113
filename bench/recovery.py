"""Supervision figures, medians of 5 (issue #3). Needs the engine and the agent image.

    .venv/bin/python bench/recovery.py [--agents 20] [--skip-claude]

1. Death to ready again: the agent's process is killed (`pkill -KILL` in the container), until
   `state.json` shows the next attempt ready (shell agent: busy/idle; Claude Code: its SessionStart
   hook → idle); the container's main process killed (engine restart policy), until the same.
   Measured with retry_backoff=0.5 (the default: first restart after 0.25–0.5 s) and 0.05 (overhead).
2. `sandbox ls --all --json` and `sandbox ls --all` (the real CLI, a subprocess each) with N agents
   in mixed states, against `docker ps --filter label=sandbox.managed=1 --filter label=sandbox.run-id=ID`
   in the same run.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = f"bench-recovery-{uuid.uuid4().hex[:8]}"


def sh(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.repo = tmp / "repo"
        self.repo.mkdir()
        sh("git", "-C", str(self.repo), "init", "-q", "-b", "main")
        sh("git", "-C", str(self.repo), "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-q",
           "--allow-empty", "-m", "init")
        self.data = tmp / "data"
        self.env = {**os.environ, "XDG_DATA_HOME": str(self.data), "XDG_CONFIG_HOME": str(tmp / "config"),
                    "SANDBOX_RUN_ID": RUN_ID, "PYTHONPATH": str(ROOT), "SANDBOX_READY_TIMEOUT": "300"}
        self.cli = [sys.executable, "-m", "sandbox"]

    def sandbox(self, *args: str, extra: dict[str, str] | None = None, check: bool = True) -> str:
        return sh(*self.cli, *args, env={**self.env, **(extra or {})}, cwd=self.repo, check=check)

    def state(self, name: str) -> dict:
        try:
            return json.loads((self.data / "sandbox" / "state" / name / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def ready_again(self, name: str, attempt: int, ready: tuple[str, ...], timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.state(name)
            if int(st.get("attempt") or 0) > attempt and st.get("state") in ready:
                return time.time()
            time.sleep(0.01)
        raise SystemExit(f"{name}: not ready again after {timeout}s: {self.state(name)}")

    def death_to_ready(self, name: str, kill: list[str], ready: tuple[str, ...]) -> float:
        """Seconds from the kill (container clock = host clock) to the next attempt ready."""
        attempt = int(self.state(name).get("attempt") or 0)
        deadline = time.monotonic() + 30
        while True:  # until the kill found its process (it may still be starting)
            proc = subprocess.run(["docker", "exec", f"sandbox-{name}", "sh", "-c", 'date +%s.%N; "$@"', "sh", *kill],
                                  capture_output=True, text=True)
            if proc.returncode in (0, 137) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        t_death = float(proc.stdout.split()[0])
        return self.ready_again(name, attempt, ready) - t_death


def median5(fn) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    runs = [fn() for _ in range(5)]
    return statistics.median(runs), runs


def fmt(runs: list[float]) -> str:
    return ", ".join(f"{r * 1000:.0f}" for r in runs)


def recovery(b: Bench, skip_claude: bool) -> None:
    """Each run kills a fresh agent once: its first restart (the backoff grows with consecutive failures)."""
    print("## death to ready again (ms; median of 5, runs)")
    cases = [("shell agent, process killed", "sleep 100000", ["pkill", "-KILL", "-x", "sleep"], ("busy", "idle")),
             ("shell agent, container's init killed (engine restart policy)", "sleep 100000",
              ["pkill", "-KILL", "-f", "sandbox.inside init"], ("busy", "idle"))]
    if not skip_claude:
        cases.append(("Claude Code (mock model), process killed", None, ["pkill", "-KILL", "-x", "claude"], ("idle",)))
    n = [0]
    for backoff in ("0.5", "0.05"):
        for label, cmd, kill, ready in cases:
            def once() -> float:
                n[0] += 1
                name = f"rec-{n[0]}"
                b.sandbox("spawn", "--name", name, *(["--agent-cmd", cmd] if cmd else []),
                          extra={"SANDBOX_RETRY_BACKOFF": backoff})
                if cmd is None:
                    b.sandbox("wait", name, "--until", "idle", "--timeout", "120")
                try:
                    return b.death_to_ready(name, kill, ready)
                finally:
                    b.sandbox("rm", "--force", name, check=False)

            med, runs = median5(once)
            print(f"{label}, retry_backoff={backoff}: {med * 1000:.0f} ms  [{fmt(runs)}]")


MIX = [  # (how many, agent command, then)
    (5, "sh -c 'while :; do date; sleep 0.3; done'", None),   # busy
    (5, "sleep 100000", None),                                # idle
    (4, "sh -c 'exit 3'", None),                              # failed (retries 0)
    (3, "true", None),                                        # exited(0)
    (3, "sleep 100000", "stop"),                              # stopped
]


def listing(b: Bench, n: int) -> None:
    jobs = []
    i = 0
    scale = n / sum(m[0] for m in MIX)
    for count, cmd, then in MIX:
        for _ in range(max(1, round(count * scale))):
            jobs.append((f"mix-{i}", cmd, then))
            i += 1

    def spawn(job: tuple[str, str, str | None]) -> None:
        name, cmd, then = job
        b.sandbox("spawn", "--no-wait", "--name", name, "--retries", "0", "--agent-cmd", cmd)
        if then == "stop":
            b.sandbox("wait", name, "--until", "any", "--timeout", "300", check=False)
            b.sandbox("stop", name)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(spawn, jobs))
    deadline = time.monotonic() + 300
    while True:  # settled: no agent still starting
        rows = json.loads(b.sandbox("ls", "--all", "--json"))
        if not any(r["state"] == "starting" for r in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    states: dict[str, int] = {}
    for r in rows:
        if r["name"].startswith("mix-"):
            states[r["state"]] = states.get(r["state"], 0) + 1
    print(f"\n## listing {len(jobs)} agents in mixed states {states} (ms; median of 5, runs)")

    def timed(argv: list[str], env: dict[str, str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=env, cwd=b.repo, check=True)
        return time.perf_counter() - t0

    docker = ["docker", "ps", "-a", "--filter", "label=sandbox.managed=1", "--filter", f"label=sandbox.run-id={RUN_ID}"]
    for label, argv in (("sandbox ls --all --json", [*b.cli, "ls", "--all", "--json"]),
                        ("sandbox ls --all", [*b.cli, "ls", "--all"]),
                        (" ".join(docker), docker)):
        med, runs = median5(lambda: timed(argv, b.env))
        print(f"{label}: {med * 1000:.0f} ms  [{fmt(runs)}]")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--skip-claude", action="store_true")
    ap.add_argument("--only", choices=["recovery", "listing"])
    args = ap.parse_args()
    print(f"# bench/recovery.py  run id {RUN_ID}  load {os.getloadavg()[0]:.1f}  {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-recovery-") as tmp:
        b = Bench(Path(tmp))
        try:
            if args.only in (None, "recovery"):
                recovery(b, args.skip_claude)
            if args.only in (None, "listing"):
                listing(b, args.agents)
        finally:
            ids = sh("docker", "ps", "-aq", "--filter", f"label=sandbox.run-id={RUN_ID}").split()
            if ids:
                sh("docker", "rm", "-f", "-v", *ids, check=False)
            sh("chmod", "-R", "u+rwX", tmp, check=False)
    print(f"load afterwards {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
