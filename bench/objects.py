"""What the ``objects`` setting costs at spawn: the agent's repository made both ways on a large repository.

    .venv/bin/python bench/objects.py [--repo PATH] [--files 20000] [--runs 3]

Without ``--repo`` it generates one in a temporary directory (``--files`` files of ~15 KB, half random
bytes, half text: ~140 MB of objects, ~300 MB checked out) and removes it afterwards. Each run makes the
agent's git dir and workspace exactly as ``spawn`` does (``sandbox.workspace.git.workspace_create``: the
refs, the objects, the checkout), ``shared`` and ``reachable`` interleaved, and prints the medians, the
objects each mode wrote and what of that was the pack alone (``pack_reachable``). Nothing else is touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.workspace import git as gitops  # noqa: E402


def generate(top: Path, files: int) -> Path:
    repo = top / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    for i in range(files):
        d = repo / f"d{i % 200:03d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}.txt").write_bytes(os.urandom(7000) + (b"line %d of some text\n" % i) * 400)
    ident = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for argv in (["add", "-A"], [*ident, "commit", "-qm", "big"], ["repack", "-adq"]):
        subprocess.run(["git", "-C", str(repo), *argv], check=True)
    return repo


def du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    opts = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sandbox-bench-objects-"))
    try:
        repo = gitops.find_repo(opts.repo or generate(tmp, opts.files))
        base = gitops.resolve_commit(repo, "HEAD")
        times: dict[str, list[float]] = {"shared": [], "reachable": [], "pack alone": []}
        size: dict[str, int] = {}
        for i in range(opts.runs):
            for mode in ("shared", "reachable"):
                d = tmp / f"{mode}-{i}"
                t = time.monotonic()
                gitops.workspace_create(repo, d / "ws", d / "git", "sandbox/bench", base, shared=mode == "shared")
                times[mode].append(time.monotonic() - t)
                size[mode] = du(d / "git" / "objects")
                shutil.rmtree(d)
            pack = tmp / f"pack-{i}"
            pack.mkdir()
            t = time.monotonic()
            gitops.pack_reachable(repo, [base], pack)
            times["pack alone"].append(time.monotonic() - t)
            shutil.rmtree(pack)
        print(f"repository: {repo.top} ({du(repo.common_dir / 'objects') / 1e6:.0f} MB of objects); "
              f"medians of {opts.runs}; load average {os.getloadavg()[0]:.1f}")
        for mode, got in times.items():
            extra = f", agent's objects {size[mode] / 1e6:.1f} MB" if mode in size else ""
            print(f"  {mode:10s} {statistics.median(got):6.2f} s (min {min(got):.2f}){extra}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
