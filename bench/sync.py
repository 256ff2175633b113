"""What the sync's quarantine and checks cost: one fetch of one new commit (a 100 KB file) from a local
``git upload-pack`` into a host repository of 50,000 files over 500 commits, three ways:

- the plain fetch ``fetch_from`` made before (straight into the host's refs, no relay),
- ``fetch_from`` with the size limits off (the relay, the quarantine, the type check, the move),
- ``fetch_from`` with the limits on (plus the quarantine's objects' sizes).

Wall time (median, min) and CPU time (this process and its children). No engine, no container: the
export's own cost is the same for all three.

    .venv/bin/python bench/sync.py [--reps N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.workspace import git as gitops  # noqa: E402

ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "b",
       "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}


def _git(cwd: Path, *args: str, input: bytes | None = None) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], input=input, env=ENV, check=True, capture_output=True)


def make(root: Path) -> tuple[Path, Path]:
    host, agent = root / "host", root / "agent"
    _git(root, "init", "-q", "-b", "main", str(host))
    stream = bytearray()
    for c in range(500):
        stream += b"commit refs/heads/main\ncommitter b <b@x> %d +0000\ndata 2\nc\n" % (1700000000 + c)
        for f in range(100):
            data = os.urandom(200)
            stream += b"M 100644 inline d%d/f%d.txt\ndata %d\n" % (c % 50, f + 100 * (c // 50), len(data)) + data + b"\n"
        stream += b"\n"
    _git(host, "fast-import", "--quiet", input=bytes(stream))
    _git(host, "repack", "-adq")
    _git(root, "clone", "-q", "--no-local", str(host), str(agent))
    (agent / "blob.bin").write_bytes(os.urandom(100_000))
    _git(agent, "add", "blob.bin")
    _git(agent, "commit", "-qm", "blob")
    return host, agent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=20)
    reps = parser.parse_args().reps
    root = Path(tempfile.mkdtemp(prefix="sandbox-bench-sync-"))
    try:
        host, agent = make(root)
        repo = gitops.find_repo(host)
        remote = ["git", "upload-pack", str(agent)]

        def plain() -> None:
            gitops.git(host, "-c", "protocol.ext.allow=always", "-c", "transfer.fsckObjects=true", "fetch", "--quiet",
                       "--no-tags", "--no-write-fetch-head", "--no-auto-gc", "--no-auto-maintenance",
                       "--no-recurse-submodules", "--atomic", "--no-show-forced-updates", gitops.ext_url(remote),
                       "+refs/heads/main:refs/heads/sandbox/a")

        def checked(limits: bool) -> None:
            gitops.fetch_from(repo, remote, {"refs/heads/main": "refs/heads/sandbox/a"}, who="agent a",
                              max_bytes=(1 << 30) if limits else 0, max_blob=(100 << 20) if limits else 0)

        for label, run in (("plain fetch (before)", plain), ("quarantine + relay, limits off", lambda: checked(False)),
                           ("quarantine + relay + size checks", lambda: checked(True))):
            walls, cpus = [], []
            for _ in range(reps):
                gitops.git(host, "update-ref", "-d", "refs/heads/sandbox/a", check=False)
                c0, s0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
                t0 = time.perf_counter()
                run()
                walls.append(time.perf_counter() - t0)
                c1, s1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
                cpus.append(sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in ((c0, c1), (s0, s1))))
            print(f"{label:34s} wall median {statistics.median(walls) * 1000:6.1f} ms (min {min(walls) * 1000:6.1f})"
                  f"   cpu median {statistics.median(cpus) * 1000:6.1f} ms")
        print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
