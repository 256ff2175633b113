"""A plan of N shell tasks at 4 at a time (issue #23): four lanes, each task after the one four before it,
and a last task after every lane's end (it starts from the host's merge of four branches).

Every task done, one agent per task (counted by label), never more than 4 of the plan's agents at work at
once (from the audit log), the last task's tree holds every task's file; the wall time and the scheduling
overhead per task (a task's end to its dependent's `starting` in the log) as figures. N = 8 in CI, 30 with
SANDBOX_RELIABILITY_SCALE (e.g. 4, or full).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

from tests.conftest import RUN_ID, git, make_env, make_repo
from tests.reliability.conftest import MARKS, count, record

pytestmark = MARKS
LANES = 4


def test_plan_of_n_tasks_at_4_at_a_time(tmp_path: Path, agent_image: str) -> None:
    n = count(8, 30)
    env = make_env(tmp_path, agent_image)
    repo = make_repo(tmp_path / "repo")
    cmd = "sh -c 'echo {i} > t{i}.txt && git add t{i}.txt && git commit -qm t{i}'"
    body = ""
    for i in range(n):
        after = f'after = ["t{i - LANES}"]\n' if i >= LANES else ""
        body += f'[[task]]\nname = "t{i}"\ntext = "t{i}"\nagent_cmd = "{cmd.format(i=i)}"\n{after}'
    ends = [f"t{i}" for i in range(max(0, n - LANES), n)]
    body += ('[[task]]\nname = "end"\ntext = "end"\nagent_cmd = "sh -c \'ls > end.txt && git add end.txt && '
             f'git commit -qm end\'"\nafter = {json.dumps(ends)}\n')
    path = tmp_path / "big.toml"
    path.write_text(f'name = "big"\nmax_agents = {LANES}\n' + body)
    try:
        t0 = time.monotonic()
        res = env.run("run", str(path), "--wait", "--json", cwd=repo, timeout=120 + 30 * n)
        wall = time.monotonic() - t0
        assert res.code == 0, res.err
        got = json.loads(res.out)
        assert all(r["state"] == "done" and r["attempt"] == 1 for r in got["tasks"]), got
        labels = subprocess.run(["docker", "ps", "-a", "--filter", f"label=sandbox.run-id={RUN_ID}", "--filter",
                                 "label=sandbox.plan=big", "--format", '{{.Label "sandbox.plan-task"}}'],
                                capture_output=True, text=True, check=True).stdout.split()
        assert sorted(labels) == sorted([f"t{i}" for i in range(n)] + ["end"])  # one agent per task
        log = [json.loads(x) for x in (env.data / "plans" / "big" / "log.jsonl").read_text().splitlines()]
        at_work, peak = set(), 0
        for e in log:
            if e["to"] in ("starting", "running"):
                at_work.add(e["task"])
            elif e["to"] in ("done", "failed"):
                at_work.discard(e["task"])
            peak = max(peak, len(at_work))
        assert peak <= LANES
        end_branch = got["tasks"][-1]["branch"]
        seen = git(repo, "show", f"{end_branch}:end.txt").split()
        assert {f"t{i}.txt" for i in range(n)} <= set(seen)
        done_at = {e["task"]: e.get("ended") or e["time"] for e in log if e["to"] == "done"}
        overhead = [e["time"] - done_at[f"t{int(e['task'][1:]) - LANES}"] for e in log
                    if e["to"] == "starting" and e["task"].startswith("t") and int(e["task"][1:]) >= LANES]
        record("plans", {"tasks": n + 1, "max_agents": LANES, "wall_s": round(wall, 1), "peak_at_work": peak,
                         "agents": len(labels), "overhead_p50_s": round(statistics.median(overhead), 2),
                         "overhead_max_s": round(max(overhead), 2)})
    finally:
        env.run("plan", "rm", "big", "--force", "--delete-branch", cwd=repo, timeout=300)
