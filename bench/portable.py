"""Headless (portable) run figures, medians of 5 (issue #11). Needs the engine and the agent image.

    .venv/bin/python bench/portable.py [--reps 5] [--image sandbox-agent:latest]

The image alone, run as a Cloud Run-like host runs it (read-only root, tmpfs /tmp, 1 GiB, a random
non-root uid) against a git server in a second container (``tests/gitserver.py``: git http-backend
behind a token) on a network of its own, with the real Claude Code against the scripted model:

1. container start -> first push: from the engine's ``State.StartedAt`` to the log line of the first
   push (the branch claimed, right after the clone; both engine timestamps);
   container start -> the agent's commit pushed: the same, to the final push of a one-commit task;
2. SIGTERM -> exit: an agent mid-task (a file written, a long command running) is sent SIGTERM
   (``docker kill -s TERM``) until ``docker wait`` returns; its exit code (7: WIP pushed) is checked.

Everything it creates carries the label ``sandbox.run-id=bench-portable-…`` and is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = f"bench-portable-{uuid.uuid4().hex[:8]}"
TOKEN = "bench-" + uuid.uuid4().hex
SLOW = {"turns": [], "default": {"steps": [
    {"tool": "Write", "input": {"file_path": "{cwd}/progress.txt", "content": "half done\n"}},
    {"tool": "Bash", "input": {"command": "python3 -c 'import time; time.sleep(300)'; echo slept",
                               "description": "think"}},
    {"text": "Done."}]}}


def sh(*argv: str, check: bool = True, timeout: float = 120) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def when(stamp: str) -> float:
    """An engine timestamp (RFC 3339, up to nanoseconds) as epoch seconds."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", stamp.strip())
    if m is None:
        raise SystemExit(f"not an engine timestamp: {stamp!r}")
    base = datetime.fromisoformat(m[1] + ("+00:00" if m[3] == "Z" else m[3]))
    return base.timestamp() + float("0." + (m[2] or "0"))


class Lab:
    def __init__(self, tmp: Path, image: str) -> None:
        self.image = image
        self.srv, self.files = tmp / "srv", tmp / "files"
        self.srv.mkdir()
        self.files.mkdir()
        seed = tmp / "seed"
        sh("git", "init", "-q", "-b", "main", str(seed))
        (seed / "README.md").write_text("# bench\n")
        sh("git", "-C", str(seed), "add", ".")
        sh("git", "-C", str(seed), "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-q", "-m", "init")
        sh("git", "clone", "-q", "--bare", str(seed), str(self.srv / "app.git"))
        (self.files / "token").write_text(TOKEN + "\n")
        (self.files / "slow.json").write_text(json.dumps(SLOW))
        shutil.copy(ROOT / "tests" / "gitserver.py", self.files / "gitserver.py")
        for p in [tmp, *self.files.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        suffix = uuid.uuid4().hex[:8]
        self.network, self.host = f"sbx-bench-{suffix}", f"sbx-bench-git-{suffix}"
        sh("docker", "network", "create", "--label", f"sandbox.run-id={RUN_ID}", self.network)
        sh("docker", "run", "-d", "--name", self.host, "--network", self.network, "--label", f"sandbox.run-id={RUN_ID}",
           "--user", "0:0", "-v", f"{self.srv}:/srv/git", "-v", f"{self.files}:/files:ro", "--entrypoint", "python3",
           image, "/files/gitserver.py", "/srv/git", "8080", "/files/token")
        self.n = 0

    def run(self, *, slow: bool) -> str:
        self.n += 1
        uid = random.randint(20000, 60000)
        name = f"sbx-bench-agent-{RUN_ID[-8:]}-{self.n}"
        env = {"SANDBOX_REPO": f"http://{self.host}:8080/app.git", "SANDBOX_TASK": f"bench task {self.n}",
               "SANDBOX_PUSH_BRANCH": f"bench/{self.n}", "SANDBOX_GIT_TOKEN_FILE": "/files/token",
               "SANDBOX_MOCK_MODEL": "1", "PORT": "8080"}
        if slow:
            env.update(SANDBOX_MOCK_SCRIPT_FILE="/files/slow.json", SANDBOX_WIP_INTERVAL="600")
        argv = ["docker", "run", "-d", "--name", name, "--label", f"sandbox.run-id={RUN_ID}", "--network", self.network,
                "--read-only", "--tmpfs", "/tmp", "--memory", "1g", "--user", f"{uid}:{uid}", "-p", "127.0.0.1::8080",
                "-v", f"{self.files}:/files:ro"]
        for k, v in env.items():
            argv += ["-e", f"{k}={v}"]
        sh(*argv, self.image)
        return name

    def close(self) -> None:
        ids = sh("docker", "ps", "-aq", "--filter", f"label=sandbox.run-id={RUN_ID}", check=False).split()
        if ids:
            sh("docker", "rm", "-f", "-v", *ids, check=False)
        sh("docker", "network", "rm", self.network, check=False)


def pushes(name: str) -> list[tuple[float, str]]:
    out = sh("docker", "logs", "--timestamps", name, check=False)
    found = []
    for line in out.splitlines():
        stamp, _, text = line.partition(" ")
        if "sandbox headless: pushed" in text:
            found.append((when(stamp), text))
    return found


def start_to_push(lab: Lab) -> tuple[float, float]:
    name = lab.run(slow=False)
    code = int(sh("docker", "wait", name, timeout=180).strip())
    if code != 0:
        raise SystemExit(f"{name} exited {code}:\n{sh('docker', 'logs', name, check=False)}")
    started = when(sh("docker", "inspect", "-f", "{{.State.StartedAt}}", name))
    got = pushes(name)
    if len(got) < 2:
        raise SystemExit(f"{name}: expected a claim and a final push:\n{sh('docker', 'logs', name, check=False)}")
    sh("docker", "rm", "-f", name, check=False)
    return got[0][0] - started, got[-1][0] - started


def term_to_exit(lab: Lab) -> float:
    name = lab.run(slow=True)
    deadline = time.monotonic() + 120
    while True:
        st = subprocess.run(["docker", "exec", name, "cat", "/tmp/sandbox/state/state.json"], capture_output=True,
                            text=True)
        ready = subprocess.run(["docker", "exec", name, "test", "-f", "/tmp/sandbox/work/progress.txt"],
                               capture_output=True).returncode == 0
        try:
            busy = json.loads(st.stdout).get("state") == "busy"
        except ValueError:
            busy = False
        if busy and ready:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} never got busy:\n{sh('docker', 'logs', name, check=False)}")
        time.sleep(0.2)
    time.sleep(1.0)  # well into the long command
    t0 = time.perf_counter()
    sh("docker", "kill", "--signal", "TERM", name)
    code = int(sh("docker", "wait", name, timeout=30).strip())
    took = time.perf_counter() - t0
    if code != 7:
        raise SystemExit(f"{name} exited {code} after SIGTERM (expected 7):\n{sh('docker', 'logs', name, check=False)}")
    sh("docker", "rm", "-f", name, check=False)
    return took


def fmt(xs: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in xs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--image", default=os.environ.get("SANDBOX_IMAGE", "sandbox-agent:latest"))
    args = ap.parse_args()
    print(f"# bench/portable.py  image {args.image}  run id {RUN_ID}  load {os.getloadavg()[0]:.1f}  "
          f"{time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-portable-") as tmp:
        lab = Lab(Path(tmp), args.image)
        try:
            first, final, term = [], [], []
            for _ in range(args.reps):
                a, b = start_to_push(lab)
                first.append(a)
                final.append(b)
            for _ in range(args.reps):
                term.append(term_to_exit(lab))
        finally:
            lab.close()
            sh("chmod", "-R", "u+rwX", tmp, check=False)
    print(f"container start -> first push (branch claimed): {statistics.median(first):.2f} s  [{fmt(first)}]")
    print(f"container start -> the agent's commit pushed:   {statistics.median(final):.2f} s  [{fmt(final)}]")
    print(f"SIGTERM -> exit (WIP pushed, exit 7):           {statistics.median(term):.2f} s  [{fmt(term)}]")
    print(f"load afterwards {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
