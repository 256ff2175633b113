"""Spawn-to-ready and `ls` with 10 agents on the Swarm backend, beside the local backend, same run.

    .venv/bin/python bench/swarm.py [--agents 10] [--image sandbox-agent:latest]

Makes a one-node swarm on this engine when it has none (`docker swarm init --advertise-addr
127.0.0.1`, left again at the end, with the networks it made), an attachable overlay network and
the test suite's git server (``tests/gitserver.py``) on it. Then, interleaved: a shell agent spawned on
the swarm (headless: it clones from the git server) and one spawned locally (a workspace of a local
repository), N of each; then `sandbox ls --json` with N agents of each backend, 5 times. Medians.
Everything it made is removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = [str(ROOT / ".venv" / "bin" / "python"), "-m", "sandbox"]


def sh(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def timed(*argv: str, env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    sh(*argv, env=env, cwd=cwd)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--image", default=os.environ.get("SANDBOX_IMAGE", "sandbox-agent:latest"))
    args = ap.parse_args()
    state = sh("docker", "info", "--format", "{{.Swarm.LocalNodeState}}").strip()
    if state == "inactive":  # leaving the swarm again drops running containers' DNS names (Docker 20.10)
        out = sh("docker", "ps", "--format", "{{.Names}}\t{{.Networks}}")
        named = [n for n, _, nets in (line.partition("\t") for line in out.splitlines())
                 if set(nets.split(",")) - {"bridge", "host", "none", ""}]
        if named:
            raise SystemExit(f"refusing to make (and leave) a swarm: {len(named)} running container(s) on "
                             f"user-defined networks would lose their DNS names ({', '.join(named[:3])}…)")
    before = set(sh("docker", "network", "ls", "--format", "{{.Name}}").split())
    tag = uuid.uuid4().hex[:8]
    run_id, net, git_host = f"bench-swarm-{tag}", f"sbx-bench-swarm-{tag}", f"sbx-bench-git-{tag}"
    work = Path(tempfile.mkdtemp(prefix="sbx-bench-swarm-"))
    work.chmod(0o755)
    token = work / "files" / "token"
    env = {**os.environ, "SANDBOX_RUN_ID": run_id, "SANDBOX_IMAGE": args.image, "SANDBOX_SWARM_NETWORK": net,
           "XDG_DATA_HOME": str(work / "data"), "PYTHONPATH": str(ROOT)}
    swarm_env, local_env = {**env, "SANDBOX_ENGINE": "swarm"}, {**env, "SANDBOX_ENGINE": "local"}
    try:
        if state == "inactive":
            sh("docker", "swarm", "init", "--advertise-addr", "127.0.0.1")
        (work / "files").mkdir()
        token.write_text("bench-token\n")
        shutil.copy(ROOT / "tests" / "gitserver.py", work / "files" / "gitserver.py")
        for p in (work / "files").iterdir():
            p.chmod(0o644)
        repo = work / "repo"
        sh("git", "init", "-q", "-b", "main", str(repo))
        sh("git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-q", "--allow-empty", "-m", "init")
        sh("git", "clone", "-q", "--bare", str(repo), str(work / "srv" / "app.git"))
        sh("docker", "network", "create", "-d", "overlay", "--attachable", "--label", f"sandbox.run-id={run_id}", net)
        sh("docker", "run", "-d", "--name", git_host, "--network", net, "--label", f"sandbox.run-id={run_id}", "--user",
           "0:0", "-v", f"{work / 'srv'}:/srv/git", "-v", f"{work / 'files'}:/files:ro", "--entrypoint", "python3",
           args.image, "/files/gitserver.py", "/srv/git", "8080", "/files/token")
        time.sleep(1.0)
        url = f"http://{git_host}:8080/app.git"
        on_swarm, local = [], []
        for i in range(args.agents):
            on_swarm.append(timed(*SANDBOX, "spawn", "--repo-url", url, "--git-token-file", str(token), "--agent-cmd",
                                  "bash", "--name", f"bs{i + 1}", "x", env=swarm_env, cwd=work))
            local.append(timed(*SANDBOX, "spawn", "--agent-cmd", "bash", "--name", f"bl{i + 1}", env=local_env, cwd=repo))
        ls_swarm = [timed(*SANDBOX, "ls", "--json", env=swarm_env, cwd=work) for _ in range(5)]
        ls_local = [timed(*SANDBOX, "ls", "--json", env=local_env, cwd=repo) for _ in range(5)]
        listed = len(json.loads(sh(*SANDBOX, "ls", "--json", env=swarm_env, cwd=work)))
        ms = lambda xs: f"{statistics.median(xs) * 1000:.0f} ms"  # noqa: E731
        print(f"| metric ({args.agents} agents each) | swarm backend | local backend |\n|---|---|---|")
        print(f"| spawn until ready, shell agent (median) | {ms(on_swarm)} | {ms(local)} |")
        print(f"| `sandbox ls --json` (median of 5; swarm listed {listed}) | {ms(ls_swarm)} | {ms(ls_local)} |")
        return 0
    finally:
        for s in sh("docker", "service", "ls", "-q", "--filter", f"label=sandbox.run-id={run_id}", check=False).split():
            sh("docker", "service", "rm", s, check=False)
        ids = sh("docker", "ps", "-aq", "--filter", f"label=sandbox.run-id={run_id}", check=False).split()
        if ids:
            sh("docker", "rm", "-f", "-v", *ids, check=False)
        if state == "inactive":
            sh("docker", "swarm", "leave", "--force", check=False)
        else:
            for s in sh("docker", "secret", "ls", "-q", "--filter", f"label=sandbox.run-id={run_id}", check=False).split():
                sh("docker", "secret", "rm", s, check=False)
        sh("docker", "network", "rm", net, check=False)
        if state == "inactive" and "docker_gwbridge" not in before:  # what the swarm made goes with it
            sh("docker", "network", "rm", "docker_gwbridge", check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
