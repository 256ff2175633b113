"""Benchmarks of `sandbox` side by side with raw docker doing the same work, in the same run.

    .venv/bin/python bench/run.py [--quick] [--json FILE] [--max-agents N]

Not part of the test suite. Prints a table of medians (each beside its raw baseline and the ratio)
and writes JSON to bench/results/latest.json (git-ignored). Everything it creates carries the label
``sandbox.run-id=bench-…`` (the CLI stamps it from ``SANDBOX_RUN_ID``), lives in a temporary
directory (a throwaway repository, its worktrees, the data dir through ``XDG_DATA_HOME``) and is
removed at the end, even on failure or Ctrl-C.

Engine API calls of ``sandbox ls`` are counted by pointing the CLI's ``DOCKER_HOST`` at a small
counting proxy in front of the engine's socket.

The table's first rows are issue 15's targets, each printed even when this run could not measure it.
Two steps use commands the project is adding, and are noted (not fatal) while they are missing: the warm
pool (``sandbox pool --size N``, ``sandbox pool --json`` -> ``{"ready": <int>, ...}``: ``pool_ready_count``)
and the spawn profile (``sandbox spawn --trace``: ``trace: <step> <ms> ms`` lines on stderr, ``parse_trace``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("SANDBOX_IMAGE", "sandbox-agent:latest")
ENGINE_SOCK = "/var/run/docker.sock"
CPU_WINDOW = 30.0  # idle CPU is measured over the image's HEALTHCHECK interval: one check per container in it
# `docker ps --format '{{json .}}'` marshals every field, Size included, which makes the docker CLI ask the
# engine to compute each container's disk usage (seconds per container on fuse-overlayfs: 8-30 s for 5
# containers here). The baseline prints the same fields `ls` needs, as JSON, without the size walk.
PS_JSON = ('{"ID":{{json .ID}},"Names":{{json .Names}},"Image":{{json .Image}},"State":{{json .State}},'
           '"Status":{{json .Status}},"CreatedAt":{{json .CreatedAt}},"Labels":{{json .Labels}}}')
# The fields of the `sandbox ls` table (name, agent/model, state, branch, repository, age, task), as a table.
PS_TABLE = ('table {{.Label "sandbox.name"}}\t{{.Label "sandbox.agent"}}/{{.Label "sandbox.model"}}\t{{.State}}'
            '\t{{.Status}}\t{{.Label "sandbox.branch"}}\t{{.Label "sandbox.repo"}}\t{{.RunningFor}}'
            '\t{{.Label "sandbox.task"}}')


# The raw Claude Code baseline (``Bench.raw_claude``): what the in-container init does for it (``_start_mock``,
# ``_setup_home``), by hand in `sh`. Claude Code skips its first-run dialogs (onboarding, the custom API key,
# trusting the folder, bypass-permissions mode) on these answers, in its config dir and in $HOME.
RAW_CLAUDE_WORKDIR = "/home/agent/work"
RAW_CLAUDE_KEY = "sk-ant-sandbox-mock-model-offline-0000"
_RAW_CLAUDE_JSON = json.dumps({
    "hasCompletedOnboarding": True, "bypassPermissionsModeAccepted": True, "autoUpdates": False,
    "customApiKeyResponses": {"approved": [RAW_CLAUDE_KEY[-20:]], "rejected": []},
    "projects": {RAW_CLAUDE_WORKDIR: {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True}}})
RAW_CLAUDE_START = f"""set -e
W={RAW_CLAUDE_WORKDIR}; C=/tmp/claude-config
mkdir -p "$W" "$C"
setsid python3 -m sandbox.inside.mockmodel --host 127.0.0.1 --port 0 --ready-file /tmp/mock.port \\
  --log /tmp/mock.log </dev/null >/dev/null 2>&1 &
i=0; while [ ! -s /tmp/mock.port ]; do i=$((i + 1)); [ $i -lt 1500 ] || {{ echo 'no mock model' >&2; exit 3; }}; sleep 0.01; done
printf '%s' {shlex.quote(_RAW_CLAUDE_JSON)} > "$C/.claude.json"
printf '%s' {shlex.quote(_RAW_CLAUDE_JSON)} > "$HOME/.claude.json"
printf '%s' '{{"skipDangerousModePermissionPrompt": true}}' > "$C/settings.json"
unset ANTHROPIC_AUTH_TOKEN
export CLAUDE_CONFIG_DIR="$C" ANTHROPIC_BASE_URL="http://127.0.0.1:$(cat /tmp/mock.port)" ANTHROPIC_API_KEY={RAW_CLAUDE_KEY}
tmux new-session -d -s raw -x 140 -y 45 -c "$W" claude --dangerously-skip-permissions
"""
# Claude Code's prompt in a pane: the input line `❯ ` between two rules, and the footer below them
# ("⏵⏵ bypass permissions on (shift+tab to cycle)"). The footer alone is not enough (its dialogs use `❯` as
# their cursor but have no footer); both together are the prompt. Claude Code versions change this text.
CLAUDE_PROMPT = ("^❯", "bypass permissions on")
RAW_CLAUDE_WAIT_S = 60
RAW_CLAUDE_WAIT = f"""end=$(($(date +%s) + {RAW_CLAUDE_WAIT_S}))
while :; do
  p=$(tmux capture-pane -p -t raw 2>/dev/null) || p=
  if printf '%s\\n' "$p" | grep -q {shlex.quote(CLAUDE_PROMPT[0])} && printf '%s\\n' "$p" | grep -qF {shlex.quote(CLAUDE_PROMPT[1])}; then exit 0; fi
  [ "$(date +%s)" -lt $end ] || {{ echo 'no prompt' >&2; exit 4; }}
  sleep 0.02
done
"""


def sandbox_bin() -> list[str]:
    """The installed `sandbox` command (``sandbox.client:main``), run on this checkout's code (``PYTHONPATH``,
    see ``Bench.env``); ``python -m sandbox`` when the script is an older one (`pip install -e .` updates it)."""
    script = Path(sys.executable).parent / "sandbox"
    if script.exists() and "sandbox.client" in script.read_text(errors="replace"):
        return [str(script)]
    return [sys.executable, "-m", "sandbox"]


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


class Bench:
    def __init__(self, quick: bool, max_agents: int) -> None:
        self.quick = quick
        self.reps = 3 if quick else 5
        self.max_agents = max_agents
        self.run_id = f"bench-{uuid.uuid4().hex[:8]}"
        self.tag = self.run_id[-4:]  # in every agent's name: container names are the engine's, shared with others
        self.tmp = Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
        self.repo = self.tmp / "repo"
        self.sb = sandbox_bin()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("SANDBOX_") and k not in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN",
                                                                 "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_BASE_URL")}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), self.env.get("PYTHONPATH")]))
        # as a user runs it: Python keeps the compiled modules (a session that sets PYTHONDONTWRITEBYTECODE
        # would have every run compile the modules edited since the last `compileall`: ~30 ms a command)
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env.update({"XDG_DATA_HOME": str(self.tmp / "data"), "XDG_CONFIG_HOME": str(self.tmp / "config"),
                         "SANDBOX_RUN_ID": self.run_id, "SANDBOX_IMAGE": IMAGE, "SANDBOX_READY_TIMEOUT": "120"})
        self.agents: list[str] = []
        self.raw_n = 0
        self.counter = 0
        self.git_lock = threading.Lock()
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []
        self.uid = int(self.env.get("SANDBOX_AGENT_UID") or (os.getuid() or 61000))
        self.only: list[str] | None = None  # --only: these steps
        self.pool_used = False  # `sandbox pool --size N` was asked for: cleanup empties it first
        self.pool_started = False  # ... and it answered

    # -- helpers -------------------------------------------------------------------------------
    def run(self, argv: list[str], *, env: dict[str, str] | None = None, check: bool = True,
            cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
        t = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd or self.repo, env=env or self.env, capture_output=True, text=True,
                              timeout=300)
        dt = time.perf_counter() - t
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:6])} exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
        return dt, proc

    def cli(self, *args: str, **kw: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
        return self.run([*self.sb, *args], **kw)

    def git(self, *args: str) -> str:
        return self.run(["git", "-C", str(self.repo), *args])[1].stdout

    def record(self, key: str, value: Any) -> None:
        self.results[key] = value
        print(f"  {key}: {value if not isinstance(value, float) else round(value, 4)}", flush=True)

    # -- set-up / tear-down ----------------------------------------------------------------------
    def setup(self) -> None:
        self.repo.mkdir(parents=True)
        ident = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
        self.run(["git", "init", "-q", "-b", "main", str(self.repo)])
        (self.repo / "README.md").write_text("# bench\n")
        self.run(["git", "-C", str(self.repo), *ident, "add", "README.md"])
        self.run(["git", "-C", str(self.repo), *ident, "commit", "-q", "-m", "initial"])
        if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
            raise SystemExit(f"{IMAGE} is not built: run `.venv/bin/sandbox image build` first")

    def cleanup(self) -> None:
        self.pool_off()  # first: a pool left running would start containers behind the removal
        self.cli("server", "stop", check=False)  # the command server of this run's data dir
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=sandbox.run-id={self.run_id}"],
                             capture_output=True, text=True).stdout.split()
        for i in range(0, len(ids), 50):
            subprocess.run(["docker", "rm", "-f", "-v", *ids[i:i + 50]], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        print(f"cleaned up: {len(ids)} containers labelled sandbox.run-id={self.run_id}, {self.tmp}", flush=True)

    # -- raw docker doing the same work --------------------------------------------------------------
    def raw_spawn(self) -> tuple[float, str]:
        """git worktree add + docker run -d (same image, mounts, uid) + docker exec tmux new-session -d."""
        self.raw_n += 1
        name = f"raw-{self.run_id}-{self.raw_n}"
        wt = self.tmp / "raw" / name
        state = self.tmp / "raw-state" / name
        state.mkdir(parents=True)
        common = self.repo / ".git"
        t = time.perf_counter()
        with self.git_lock:  # concurrent `git worktree add` races in git itself (sandbox takes a flock too)
            self.run(["git", "-C", str(self.repo), "worktree", "add", "-q", "-b", f"raw/{name}", str(wt), "HEAD"])
        gitdir = common / "worktrees" / name
        ref_dir, log_dir = common / "refs" / "heads", common / "logs" / "refs" / "heads"
        mounts = [(wt, "rw"), (wt / ".git", "ro"), (common, "ro"), (common / "objects", "rw"), (ref_dir, "rw"),
                  (log_dir, "rw"), (gitdir, "rw")]
        argv = ["docker", "run", "-d", "--name", name, "--label", f"sandbox.run-id={self.run_id}",
                "--user", f"{self.uid}:{self.uid}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
                "--pids-limit", "1024", "--init", "-w", str(wt), "--entrypoint", "sleep"]
        for path, mode in mounts:
            argv += ["-v", f"{path}:{path}:{mode}"]
        argv += ["-v", f"{state}:/run/sandbox-state:rw", IMAGE, "infinity"]
        self.run(argv)
        self.run(["docker", "exec", "-w", str(wt), name, "tmux", "new-session", "-d", "-s", "raw", "-x", "200",
                  "-y", "50", "bash"])
        return time.perf_counter() - t, name

    def raw_rm(self, names: list[str]) -> None:
        if names:
            self.run(["docker", "rm", "-f", "-v", *names], check=False)

    def next_name(self) -> str:
        self.counter += 1
        return f"b{self.counter}-{self.tag}"

    def spawn(self, name: str | None = None) -> float:
        name = name or self.next_name()
        dt, _ = self.cli("spawn", "--agent-cmd", "bash", "--name", name)
        self.agents.append(name)
        return dt

    # -- the measurements ------------------------------------------------------------------------
    def startup(self) -> None:
        print("startup: --version, --help vs python -c pass (through a warm server)", flush=True)
        self.warm_server()
        py, ver, hlp = [], [], []
        for _ in range(self.reps + 2):
            py.append(self.run([sys.executable, "-c", "pass"])[0])
            ver.append(self.cli("--version")[0])
            hlp.append(self.cli("--help")[0])
        self.record("python_c_pass_s", median(py))
        self.record("version_s", median(ver))
        self.record("help_s", median(hlp))

    def warm_server(self, timeout: float = 60.0) -> None:
        """Start the command server and wait until it has imported everything (bounded)."""
        self.cli("--version")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if json.loads(self.cli("server", "status", "--json")[1].stdout or "{}").get("warm"):
                return
            time.sleep(0.2)
        self.notes.append(f"the command server was not warm after {timeout:g} s")

    def server(self) -> None:
        """The command server: the first command of a session (`ls`, the server's start included) vs
        today's cold command (the same `ls` in its own process: `SANDBOX_SERVER=0`), interleaved; then the
        idle server's memory."""
        print("the first command of a session (server start included) vs a command in its own process", flush=True)
        first, cold = [], []
        alone = {**self.env, "SANDBOX_SERVER": "0"}
        for _ in range(self.reps):
            self.cli("server", "stop")
            first.append(self.cli("ls")[0])
            cold.append(self.cli("ls", env=alone)[0])
        self.record("first_command_s", median(first))
        self.record("cold_command_s", median(cold))
        self.warm_server()
        warm = [self.cli("ls")[0] for _ in range(self.reps)]
        self.record("warm_command_s", median(warm))
        doc = json.loads(self.cli("server", "status", "--json")[1].stdout or "{}")
        self.record("server_rss_mib", doc["rss_bytes"] / 2**20 if doc.get("rss_bytes") else None)

    def raw_claude(self) -> tuple[float, dict[str, float]]:
        """Claude Code on the scripted model by hand: `docker run -d` of the same image (sleeping, same uid,
        no mounts), one `docker exec sh -c` that does what the init does (the scripted model on 127.0.0.1,
        Claude Code's first-run answers, its env) and starts `claude` in tmux, then a second `docker exec`
        that polls `tmux capture-pane` until Claude Code's prompt shows (see ``CLAUDE_PROMPT``)."""
        self.raw_n += 1
        name = f"raw-{self.run_id}-c{self.raw_n}"
        t0 = time.perf_counter()
        self.run(["docker", "run", "-d", "--name", name, "--label", f"sandbox.run-id={self.run_id}",
                  "--user", f"{self.uid}:{self.uid}", "--cap-drop", "ALL", "--security-opt",
                  "no-new-privileges:true", "--pids-limit", "1024", "--init", "--entrypoint", "sleep", IMAGE,
                  "infinity"])
        t1 = time.perf_counter()
        self.run(["docker", "exec", name, "sh", "-c", RAW_CLAUDE_START])
        t2 = time.perf_counter()
        _, proc = self.run(["docker", "exec", name, "sh", "-c", RAW_CLAUDE_WAIT], check=False)
        t3 = time.perf_counter()
        if proc.returncode != 0:
            pane = self.run(["docker", "exec", name, "tmux", "capture-pane", "-p", "-t", "raw"],
                            check=False)[1].stdout
            self.raw_rm([name])
            raise RuntimeError(f"raw Claude Code: no prompt within {RAW_CLAUDE_WAIT_S} s: "
                               f"{proc.stderr.strip()[-200:]} pane: {' | '.join(l.strip() for l in pane.splitlines() if l.strip())[-400:]}")
        self.raw_rm([name])
        return t3 - t0, {"run": t1 - t0, "start": t2 - t1, "prompt": t3 - t2}

    def claude_spawn(self) -> None:
        print(f"spawn until ready: real Claude Code against the scripted model, x{self.reps} "
              "(interleaved with docker run + claude in tmux by hand)", flush=True)
        sb, raw, phases = [], [], []
        for i in range(self.reps):
            name = f"claude{i + 1}-{self.tag}"
            dt, _ = self.cli("spawn", "--name", name, "--mock-model", "on")
            sb.append(dt)
            self.cli("rm", "--force", name, check=False)
            try:
                dt, ph = self.raw_claude()
            except RuntimeError as e:
                self.notes.append(f"raw Claude Code baseline: {e}")
                continue
            raw.append(dt)
            phases.append(ph)
        self.record("claude_spawn_s", median(sb))
        self.record("claude_spawn_raw_s", median(raw))
        if phases:
            self.record("claude_spawn_raw_phases_s",
                        {k: round(median([p[k] for p in phases]) or 0, 3) for k in phases[0]})

    def single_spawns(self) -> None:
        print(f"spawn until ready, shell agent, x{self.reps} (interleaved with the raw sequence)", flush=True)
        sb, raw, raw_names = [], [], []
        for i in range(self.reps):
            sb.append(self.spawn())
            dt, name = self.raw_spawn()
            raw.append(dt)
            raw_names.append(name)
        self.record("spawn_s", median(sb))
        self.record("spawn_raw_s", median(raw))
        self.raw_names = raw_names

    def isolated_spawns(self) -> None:
        """The isolated profile (its network and two proxies first) beside the default one, interleaved."""
        if subprocess.run(["docker", "image", "inspect", "sandbox-proxy:bookworm"], capture_output=True).returncode:
            self.notes.append("isolated spawn skipped: no sandbox-proxy:bookworm (`sandbox image build --proxy`)")
            return
        print(f"spawn until ready, shell agent, isolated vs default profile, x{self.reps}", flush=True)
        iso, default = [], []
        for i in range(self.reps):
            for profile, out in (("isolated", iso), ("default", default)):
                name = f"p{profile[0]}{i + 1}-{self.tag}"
                dt, _ = self.cli("spawn", "--agent-cmd", "bash", "--name", name, "--profile", profile)
                out.append(dt)
                self.cli("rm", "--force", name, check=False)
        self.record("spawn_isolated_s", median(iso))
        self.record("spawn_default_s", median(default))

    # -- the warm pool (`sandbox pool`) and the spawn profile (`spawn --trace`) ------------------------
    def pool_ready(self) -> int:
        """How many started, unclaimed containers the pool holds now (``sandbox pool --json``, see
        ``pool_ready_count``)."""
        _, proc = self.cli("pool", "--json", check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"`sandbox pool --json` exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
        return pool_ready_count(json.loads(proc.stdout))

    def wait_pool(self, n: int, timeout: float = 120.0) -> float:
        """Wait until the pool holds ``n`` ready slots; the seconds it took."""
        t0 = time.perf_counter()
        while (ready := self.pool_ready()) < n:
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"the pool holds {ready} ready of {n} after {timeout:.0f} s")
            time.sleep(0.2)
        return time.perf_counter() - t0

    def pool_off(self) -> None:
        """Empty the pool (`sandbox pool --size 0`) once it was asked for; never raises. Tried again at
        cleanup only when the pool had started and emptying it failed."""
        if not self.pool_used:
            return
        try:
            _, proc = self.cli("pool", "--size", "0", check=False)
            failure = f"exited {proc.returncode}: {proc.stderr.strip()[-200:]}" if proc.returncode else None
        except (OSError, subprocess.SubprocessError) as e:
            failure = str(e)
        if failure and self.pool_started:
            self.notes.append(f"`sandbox pool --size 0` {failure}")
        else:
            self.pool_used = False

    def warm_spawns(self) -> None:
        """Spawn from a warm pool (`sandbox pool --size N`, full before each spawn: the refill is outside
        the timing), interleaved with the raw sequence (run after the refill, so no refill competes)."""
        n = self.reps
        print(f"spawn until ready, shell agent, warm pool of {n}, x{n} (interleaved with the raw sequence)",
              flush=True)
        sb: list[float] = []
        raw: list[float] = []
        refill: list[float] = []
        steps: dict[str, list[float]] = {}
        claimed = 0
        names: list[str] = []
        raw_names: list[str] = []
        try:
            self.pool_used = True
            self.cli("pool", "--size", str(n))
            self.pool_started = True
            self.record("pool_fill_s", self.wait_pool(n))
            for i in range(n):
                name = f"w{i + 1}-{self.tag}"
                dt, proc = self.cli("spawn", "--trace", "--agent-cmd", "bash", "--name", name)
                names.append(name)
                sb.append(dt)
                for step, ms in parse_trace(proc.stderr).items():
                    steps.setdefault(step, []).append(ms)
                claimed += self.pool_ready() < n  # (a refill takes a container start: it is not back yet)
                refill.append(self.wait_pool(n))
                dt, raw_name = self.raw_spawn()
                raw.append(dt)
                raw_names.append(raw_name)
        except (RuntimeError, ValueError, TypeError, subprocess.SubprocessError) as e:
            self.notes.append(f"warm pool: not measured: {e}" if not sb else f"warm pool: stopped after {len(sb)}: {e}")
        finally:
            self.pool_off()
            for name in names:
                self.cli("rm", "--force", name, check=False)
            self.raw_rm(raw_names)
        if sb and claimed < len(sb):
            self.notes.append(f"warm pool: {len(sb) - claimed} of {len(sb)} spawns left the pool full right after: "
                              "were they claimed from it?")
        if sb:
            self.record("warm_spawn_s", median(sb))
            self.record("warm_spawn_raw_s", median(raw))
            self.record("warm_refill_s", median(refill))
        if steps:
            self.record("profile_warm_ms", {step: round(median(v) or 0.0, 1) for step, v in steps.items()})

    def profile(self) -> None:
        """`spawn --trace` x reps: the median of each step it reports on stderr (``parse_trace``)."""
        print(f"spawn profile: spawn --trace, x{self.reps}", flush=True)
        steps: dict[str, list[float]] = {}
        walls: list[float] = []
        for i in range(self.reps):
            name = f"t{i + 1}-{self.tag}"
            dt, proc = self.cli("spawn", "--trace", "--agent-cmd", "bash", "--name", name, check=False)
            self.cli("rm", "--force", name, check=False)
            if proc.returncode != 0:
                self.notes.append(f"spawn profile: not measured: `spawn --trace` exited {proc.returncode}: "
                                  f"{proc.stderr.strip()[-200:]}")
                return
            got = parse_trace(proc.stderr)
            if not got:
                self.notes.append("spawn profile: not measured: `spawn --trace` printed no `trace: STEP MS ms` line")
                return
            walls.append(dt)
            for step, ms in got.items():
                steps.setdefault(step, []).append(ms)
        prof = {step: round(median(v) or 0.0, 1) for step, v in steps.items()}
        self.record("profile_ms", prof)
        self.record("profile_wall_ms", round((median(walls) or 0) * 1000, 1))
        self.record("profile_n", len(walls))

    def fill(self, n: int, timings: list[float] | None = None, budget: float | None = None) -> None:
        deadline = time.perf_counter() + budget if budget else None
        while len(self.agents) < n:
            if deadline and time.perf_counter() > deadline:
                self.notes.append(f"scale step stopped at {len(self.agents)} agents: the {budget:.0f} s budget ran out")
                return
            dt = self.spawn()
            if timings is not None:
                timings.append(dt)

    def fill_parallel(self, n: int) -> None:
        while len(self.agents) < n:
            k = min(10, n - len(self.agents))
            names = [self.next_name() for _ in range(k)]
            with ThreadPoolExecutor(k) as pool:
                list(pool.map(self.spawn, names))

    def ls(self, n: int) -> None:
        assert len(self.agents) == n, (len(self.agents), n)
        print(f"ls --json and the ls table with {n} agents vs docker ps (the same fields)", flush=True)
        sb, raw, table, raw_table = [], [], [], []
        filt = ["--filter", "label=sandbox.managed=1", "--filter", f"label=sandbox.run-id={self.run_id}"]
        for _ in range(self.reps):
            dt, proc = self.cli("ls", "--json")
            sb.append(dt)
            got = len(json.loads(proc.stdout))
            assert got == n, f"ls listed {got}, expected {n}"
            raw.append(self.run(["docker", "ps", "-a", *filt, "--format", PS_JSON])[0])
            dt, proc = self.cli("ls")
            table.append(dt)
            assert len(proc.stdout.splitlines()) == n + 1, proc.stdout[-300:]
            raw_table.append(self.run(["docker", "ps", "-a", *filt, "--format", PS_TABLE])[0])
        self.record(f"ls_{n}_s", median(sb))
        self.record(f"ls_{n}_raw_s", median(raw))
        self.record(f"ls_table_{n}_s", median(table))
        self.record(f"ls_table_{n}_raw_s", median(raw_table))
        self.record(f"ls_{n}_api_calls", self.count_api_calls("ls", "--json"))

    def count_api_calls(self, *args: str) -> int | None:
        """Engine HTTP requests made by one CLI run, counted by a proxy in front of the socket."""
        if not os.path.exists(ENGINE_SOCK) or os.environ.get("DOCKER_HOST"):
            return None
        proxy = CountingProxy(str(self.tmp / "count.sock"), ENGINE_SOCK)
        try:
            self.cli(*args, env={**self.env, "DOCKER_HOST": f"unix://{proxy.path}"})
            time.sleep(0.05)
            return proxy.count
        finally:
            proxy.close()

    def send_logs(self) -> None:
        print("send then logs vs docker exec tmux send-keys + capture-pane", flush=True)
        name, raw_name = self.agents[0], self.raw_names[0]
        sb, raw = [], []
        for i in range(self.reps):
            t = time.perf_counter()
            self.cli("send", name, f"echo sb-{i}")
            _, proc = self.cli("logs", name)
            sb.append(time.perf_counter() - t)
            t = time.perf_counter()
            self.run(["docker", "exec", raw_name, "tmux", "send-keys", "-t", "raw", "-l", f"echo raw-{i}", ";",
                      "send-keys", "-t", "raw", "Enter"])
            self.run(["docker", "exec", raw_name, "tmux", "capture-pane", "-p", "-J", "-S", "-", "-t", "raw"])
            raw.append(time.perf_counter() - t)
        self.record("send_logs_s", median(sb))
        self.record("send_logs_raw_s", median(raw))

    def diff_work(self) -> None:
        print("diff (committed + uncommitted work) vs git diff in a worktree on the host", flush=True)
        name = self.agents[0]
        self.cli("exec", name, "--", "sh", "-c", "echo one > bench-a.txt && git add bench-a.txt && "
                 "git commit -qm bench && echo two > bench-b.txt && echo three >> README.md")
        raw_wt = self.tmp / "raw" / self.raw_names[0]
        sb, sync, raw = [], [], []
        for _ in range(self.reps):
            dt, proc = self.cli("diff", name)
            assert "bench-b.txt" in proc.stdout, proc.stdout[-300:]
            sb.append(dt)
            sync.append(self.cli("sync", name, check=False)[0])
            t = time.perf_counter()  # what the host did before the trust boundary: git in the agent's worktree
            self.run(["git", "-C", str(raw_wt), "status", "--porcelain"])
            self.run(["git", "-C", str(raw_wt), "diff", "HEAD"])
            raw.append(time.perf_counter() - t)
        self.record("diff_s", median(sb))
        self.record("sync_s", median(sync))
        self.record("diff_raw_s", median(raw))

    def memory(self) -> None:
        print("memory per idle agent: container total less the agent's own processes", flush=True)
        time.sleep(1.0)  # let start-up transients settle
        sb = [self.overhead(f"sandbox-{n}", n) for n in self.agents[: self.reps]]
        raw = [self.overhead(n, "raw") for n in self.raw_names]
        self.record("mem_overhead_mib", median([x["overhead"] for x in sb]))
        self.record("mem_overhead_raw_mib", median([x["overhead"] for x in raw]))
        sb_names, raw_names = [f"sandbox-{n}" for n in self.agents[: self.reps]], list(self.raw_names)
        print(f"idle CPU: {len(sb_names)} agents and {len(raw_names)} raw containers over one {CPU_WINDOW:.0f} s "
              "window (one healthcheck interval)", flush=True)
        cpu = self.cpus(sb_names + raw_names, CPU_WINDOW)
        self.record("idle_cpu_pct", median(cpu[: len(sb_names)]))
        self.record("idle_cpu_raw_pct", median(cpu[len(sb_names):]))
        self.record("mem_breakdown", sb[0])
        self.record("mem_breakdown_raw", raw[0])

    def cpus(self, containers: list[str], window: float) -> list[float]:
        """CPU used by idle containers over one shared ``window`` of seconds, each in % of one core (the
        kernel's cgroup counters: no `docker stats`, nothing run in the containers meanwhile)."""
        readers = [self.cpu_reader(c) for c in containers]
        u0, t0 = [r() for r in readers], time.perf_counter()
        time.sleep(window)
        u1, dt = [r() for r in readers], time.perf_counter() - t0
        return [round(100 * (b - a) / dt, 3) for a, b in zip(u0, u1)]

    def cpu_reader(self, container: str) -> Callable[[], float]:
        """A function reading a container's CPU time so far, in seconds (cgroup v1 or v2)."""
        cid = self.run(["docker", "inspect", "-f", "{{.Id}}", container])[1].stdout.strip()
        paths = [Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"),
                 Path(f"/sys/fs/cgroup/docker/{cid}/cpu.stat"),
                 Path(f"/sys/fs/cgroup/cpu,cpuacct/docker/{cid}/cpuacct.usage"),
                 Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")]

        def usage() -> float:
            for p in paths:
                if p.exists():
                    text = p.read_text()
                    if p.name == "cpu.stat":
                        return int(text.split("usage_usec", 1)[1].split()[0]) / 1e6
                    return int(text) / 1e9
            return float("nan")

        return usage

    def overhead(self, container: str, session: str) -> dict[str, Any]:
        stats = self.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", container])[1].stdout
        total = parse_mib(stats.split("/")[0])
        pane = self.run(["docker", "exec", container, "tmux", "display-message", "-p", "-t", f"={session}:",
                         "#{pane_pid}"])[1].stdout.strip()
        ps = self.run(["docker", "exec", container, "ps", "-eo", "pid=,ppid=,rss=,args="])[1].stdout
        procs = []
        for line in ps.splitlines():
            pid, ppid, rss, args = line.split(None, 3)
            procs.append((int(pid), int(ppid), int(rss) / 1024, args))
        agent = {int(pane)}
        for _ in range(5):
            agent |= {p for p, pp, _, _ in procs if pp in agent}
        # the agent itself: the `bash` processes of the pane (not a wrapper or `sh -c` sandbox puts around it)
        agent = {p for p, _, _, a in procs if p in agent and a.split()[0].rsplit("/", 1)[-1] == "bash"}
        agent_mib = sum(r for p, _, r, a in procs if p in agent)
        others = {f"{p} {a[:40]}": round(r, 1) for p, _, r, a in procs if p not in agent and not a.startswith("ps ")}
        return {"total": round(total, 1), "agent": round(agent_mib, 1), "overhead": round(total - agent_mib, 1),
                "processes_rss_mib": others}

    def kill_until_ready(self) -> None:
        """Kill the agent process of `reps` different agents once each (a first restart: the backoff
        grows with consecutive failures of one agent) and time until its state says it runs again."""
        print("agent killed until ready again", flush=True)
        victims = self.agents[-self.reps:]
        times = []
        for name in victims:
            state_file = self.tmp / "data" / "sandbox" / "state" / name / "state.json"
            pane = self.run(["docker", "exec", f"sandbox-{name}", "tmux", "display-message", "-p", "-t",
                             f"={name}:", "#{pane_pid}"], check=False)[1].stdout.strip()
            if not pane:
                continue
            t0, wall = time.perf_counter(), time.time()
            self.run(["docker", "exec", f"sandbox-{name}", "kill", "-KILL", pane], check=False)
            deadline = t0 + 10
            ok = False
            while time.perf_counter() < deadline:
                try:
                    st = json.loads(state_file.read_text())
                except (OSError, ValueError):
                    st = {}
                # running again: a hook-less agent is `busy` while its screen changes, then `idle`
                if st.get("state") in ("ready", "idle", "busy") and int(st.get("attempt", 0)) >= 2 \
                        and float(st.get("ts", 0)) > wall:
                    ok = True
                    break
                time.sleep(0.01)
            if not ok:
                self.notes.append(f"agent killed until ready: {name} saw no restart within 10 s")
                continue
            times.append(time.perf_counter() - t0)
        self.record("kill_ready_s", median(times) if times else None)
        for name in victims:  # replace them so counts stay right
            self.cli("rm", "--force", name, check=False)
            self.agents.remove(name)

    def parallel(self) -> None:
        rounds = self.reps
        print(f"10 spawns in parallel, x{rounds}", flush=True)
        sb, raw = [], []
        for _ in range(rounds):
            names = [self.next_name() for _ in range(10)]
            t = time.perf_counter()
            with ThreadPoolExecutor(10) as pool:
                list(pool.map(self.spawn, names))
            sb.append(time.perf_counter() - t)
            t = time.perf_counter()
            with ThreadPoolExecutor(10) as pool:
                names = [n for _, n in pool.map(lambda _i: self.raw_spawn(), range(10))]
            raw.append(time.perf_counter() - t)
            self.raw_rm(names)
            if len(self.agents) == 50:
                self.ls(50)
        self.record("spawn10_parallel_s", median(sb))
        self.record("spawn10_parallel_raw_s", median(raw))

    # -- the run ----------------------------------------------------------------------------------
    def main(self) -> None:
        self.setup()
        if self.only is not None:
            return self.main_only(self.only)
        self.startup()
        self.server()
        self.claude_spawn()
        self.single_spawns()              # reps agents
        self.isolated_spawns()            # (removed again)
        self.warm_spawns()                # (removed again, the pool emptied)
        self.profile()                    # (removed again)
        self.fill(5)
        self.ls(5)
        self.send_logs()
        self.diff_work()
        self.memory()
        self.raw_rm(self.raw_names)
        self.kill_until_ready()
        self.fill(10)
        self.ls(10)
        self.parallel()                    # + 10 x reps agents; ls at 50 when it passes 50
        if "ls_50_s" not in self.results and len(self.agents) < 50:
            self.fill_parallel(50)
            self.ls(50)
        if self.quick or self.max_agents <= 50:
            return
        per_agent = (self.results.get("mem_breakdown") or {}).get("total", 20.0)
        need = (self.max_agents - len(self.agents)) * per_agent * 2 / 1024 + 2
        avail = mem_available_gib()
        if avail < need:
            self.notes.append(f"100 agents skipped: {avail:.1f} GiB available, {need:.1f} GiB wanted")
            return
        seq: list[float] = []
        try:
            self.fill(self.max_agents, seq, budget=300)
        finally:  # keep what was measured even when stopped half-way
            self.record("spawn_at_100_n", len(seq))
            self.record("spawn_at_100_p50_s", median(seq))
            self.record("spawn_at_100_p95_s", pct(seq, 95))
            self.record("load_average", os.getloadavg())
        self.results["ls_top"] = len(self.agents)
        self.ls(len(self.agents))


    ONLY = ("startup", "server", "single", "warm", "ls", "send_logs")

    def main_only(self, steps: list[str]) -> None:
        """A few steps (`--only`): `ls` at `--max-agents` agents, `send_logs` on a spawned one."""
        self.warm_server()
        for step in steps:
            if step == "startup":
                self.startup()
            elif step == "server":
                self.server()
            elif step == "single":
                self.single_spawns()
            elif step == "warm":
                self.warm_spawns()
            elif step == "ls":
                self.fill(self.max_agents)
                self.ls(self.max_agents)
            elif step == "send_logs":
                if not self.agents:
                    self.spawn()
                if not getattr(self, "raw_names", None):
                    self.raw_names = [self.raw_spawn()[1]]
                self.send_logs()
                self.raw_rm(self.raw_names)


class CountingProxy:
    """A unix-socket proxy in front of the engine that counts HTTP requests."""

    REQUEST = re.compile(rb"(?:^|\r\n)(GET|POST|PUT|DELETE|HEAD) /\S* HTTP/1\.[01]\r\n")

    def __init__(self, path: str, target: str) -> None:
        self.path, self.target, self.count = path, target, 0
        self.lock = threading.Lock()
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.srv.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(65536):
                if count:
                    with self.lock:
                        self.count += len(self.REQUEST.findall(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.srv.close()
        os.unlink(self.path)


TRACE_LINE = re.compile(r"^trace: (\S+) ([\d.]+) ms")


def parse_trace(stderr: str) -> dict[str, float]:
    """``trace: <step> <ms> ms`` lines of `spawn --trace` (stderr) as {step: ms}, in their order; a step
    named twice is summed; any other line is ignored (``total`` is kept as a step)."""
    steps: dict[str, float] = {}
    for line in stderr.splitlines():
        m = TRACE_LINE.match(line.strip())
        if m:
            steps[m.group(1)] = steps.get(m.group(1), 0.0) + float(m.group(2))
    return steps


def pool_ready_count(doc: Any) -> int:
    """The started, unclaimed slots in what `sandbox pool --json` prints: an object with ``"ready": <int>``.
    (Adapt here if the pool reports otherwise: a list of slots with a ``state`` is also read.)"""
    if isinstance(doc, dict) and isinstance(doc.get("ready"), int):
        return doc["ready"]
    slots = doc.get("slots") if isinstance(doc, dict) else doc
    if isinstance(slots, list):
        return sum(1 for x in slots if isinstance(x, dict) and x.get("state") == "ready")
    raise ValueError(f"`sandbox pool --json`: no ready count in {json.dumps(doc)[:200]}")


def parse_mib(text: str) -> float:
    m = re.match(r"\s*([\d.]+)\s*([KMG]i?B|B)", text)
    if not m:
        return float("nan")
    n, unit = float(m.group(1)), m.group(2)
    return n * {"B": 1 / 2**20, "KiB": 1 / 1024, "KB": 1 / 1024, "MiB": 1, "MB": 1, "GiB": 1024, "GB": 1024}[unit]


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def machine() -> dict[str, Any]:
    docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"],
                            capture_output=True, text=True).stdout.strip()
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return {"nproc": os.cpu_count(), "memory_gib": round(mem, 1), "docker": docker,
            "python": platform.python_version(), "kernel": platform.release()}


def table(r: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(metric, sandbox, raw baseline, ratio, target, verdict) rows: first issue 15's targets, every one
    of them even when not measured in this run (then `—`), then the other figures (no target)."""

    def ms(x: Any) -> str:
        return "—" if x is None else f"{x * 1000:.0f} ms"

    def ratio(a: Any, b: Any) -> float | None:
        return a / b if a is not None and b else None

    rows = []

    def row(metric: str, v: Any, base: Any, target: str, ok: bool | str | None,
            fmt: Callable[[Any], str] = ms) -> None:
        rt = ratio(v, base)
        verdict = ok if isinstance(ok, str) else "—" if ok is None else ("ok" if ok else "MISS")
        rows.append((metric, fmt(v), fmt(base) if base is not None else "—",
                     f"{rt:.2f}×" if rt is not None else "—", target, verdict))

    def le(v: Any, lim: float) -> bool | None:
        return None if v is None else v <= lim

    mib = lambda x: "—" if x is None else f"{x:.1f} MiB"  # noqa: E731
    pct_core = lambda x: "—" if x is None else f"{x:.3f} %"  # noqa: E731

    # -- issue 15's targets, in its order --
    rt = ratio(r.get("spawn_s"), r.get("spawn_raw_s"))
    cold = None if rt is None else ("ok + stretch" if rt <= 0.8 else "ok" if rt <= 1.0 else "MISS")
    row("spawn until ready, shell agent, cold", r.get("spawn_s"), r.get("spawn_raw_s"), "≤ 1.0× (stretch 0.8×)",
        cold)
    v, b = r.get("warm_spawn_s"), r.get("warm_spawn_raw_s")
    rt = ratio(v, b)
    row("spawn until ready, shell agent, warm pool", v, b, "≤ 150 ms and ≤ 0.3×",
        None if v is None or rt is None else v <= 0.150 and rt <= 0.3)
    rt = ratio(r.get("spawn10_parallel_s"), r.get("spawn10_parallel_raw_s"))
    row("10 spawns in parallel (wall)", r.get("spawn10_parallel_s"), r.get("spawn10_parallel_raw_s"), "≤ 1.0×",
        le(rt, 1.0))
    rt = ratio(r.get("claude_spawn_s"), r.get("claude_spawn_raw_s"))
    row("spawn until ready, Claude Code + scripted model", r.get("claude_spawn_s"), r.get("claude_spawn_raw_s"),
        "≤ 1.1×", le(rt, 1.1))
    rt = ratio(r.get("send_logs_s"), r.get("send_logs_raw_s"))
    row("`send` then `logs`", r.get("send_logs_s"), r.get("send_logs_raw_s"), "≤ 1.2×", le(rt, 1.2))
    counts = sorted(int(k.split("_")[1]) for k in r if re.fullmatch(r"ls_\d+_s", k))
    top = counts[-1] if counts else None
    for key, label in (("ls", "`sandbox ls --json`"), ("ls_table", "`sandbox ls` (table)")):
        if top is None:
            row(f"{label}, 100 agents", None, None, "≤ 2.5× `docker ps`", None)
            continue
        v, b = r.get(f"{key}_{top}_s"), r.get(f"{key}_{top}_raw_s")
        calls = r.get(f"ls_{top}_api_calls") if key == "ls" else None
        extra = f" ({calls} engine call{'s' * (calls != 1)})" if calls is not None else ""
        row(f"{label}, {top} agents{extra}", v, b, "≤ 2.5× `docker ps`", le(ratio(v, b), 2.5))
    row("idle CPU per agent, hook-less agent (% of one core)", r.get("idle_cpu_pct"), r.get("idle_cpu_raw_pct"),
        "≤ 0.1 % of a core", le(r.get("idle_cpu_pct"), 0.1), pct_core)
    row("memory per idle agent, less the agent process", r.get("mem_overhead_mib"), r.get("mem_overhead_raw_mib"),
        "≤ 5 MiB", le(r.get("mem_overhead_mib"), 5), mib)
    row("agent killed until ready again", r.get("kill_ready_s"), None, "≤ 0.5 s", le(r.get("kill_ready_s"), 0.5))
    p95 = r.get("spawn_at_100_p95_s")
    row(f"spawn p95 while going to {r.get('ls_top', 100)} idle agents (vs a single spawn)", p95, r.get("spawn_s")
        if p95 is not None else None, "≤ 1.3× single spawn", le(ratio(p95, r.get("spawn_s")), 1.3))

    # -- issue 21's targets (the command server), in its order --
    for key, label in (("ls", "`sandbox ls --json`"), ("ls_table", "`sandbox ls` (table)")):
        v, b = (r.get(f"{key}_{top}_s"), r.get(f"{key}_{top}_raw_s")) if top is not None else (None, None)
        row(f"{label}, {top or 100} agents, through the server", v, b, "≤ 1.0× `docker ps` (stretch 0.5×)",
            None if ratio(v, b) is None else "ok + stretch" if ratio(v, b) <= 0.5 else le(ratio(v, b), 1.0))
    rt = ratio(r.get("send_logs_s"), r.get("send_logs_raw_s"))
    row("`send` then `logs`, through the server", r.get("send_logs_s"), r.get("send_logs_raw_s"), "≤ 1.0×",
        le(rt, 1.0))
    row("spawn until ready, warm pool, through the server", r.get("warm_spawn_s"), None, "≤ 100 ms",
        le(r.get("warm_spawn_s"), 0.100))
    rt = ratio(r.get("spawn_s"), r.get("spawn_raw_s"))
    row("spawn until ready, cold, through the server", r.get("spawn_s"), r.get("spawn_raw_s"), "≤ 1.0×", le(rt, 1.0))
    v, py = r.get("version_s"), r.get("python_c_pass_s")
    row("`sandbox --version`, through the server", v, py, "≤ 30 ms", None if v is None else
        "ok" if v <= 0.030 else f"MISS (`python -c pass` alone: {ms(py)})" if py and py > 0.020 else "MISS")
    row("first command of a session (`ls`, server start included) vs `ls` in its own process",
        r.get("first_command_s"), r.get("cold_command_s"), "≤ 1.5×",
        le(ratio(r.get("first_command_s"), r.get("cold_command_s")), 1.5))
    row("`ls` through a warm server vs `ls` in its own process", r.get("warm_command_s"), r.get("cold_command_s"),
        "—", None)
    row("idle command server, memory (RSS)", r.get("server_rss_mib"), None, "reported", None, mib)

    # -- the other figures --
    for n in counts[:-1]:
        calls = r.get(f"ls_{n}_api_calls")
        extra = f" ({calls} engine call{'s' * (calls != 1)})" if calls is not None else ""
        for key, label in ((f"ls_{n}", f"`sandbox ls --json`, {n} agents{extra}"),
                           (f"ls_table_{n}", f"`sandbox ls` (table), {n} agents")):
            if r.get(f"{key}_s") is not None:
                row(label, r.get(f"{key}_s"), r.get(f"{key}_raw_s"), "—", None)
    if p95 is not None:
        row(f"spawn p50 while going to {r.get('ls_top', 100)} agents", r.get("spawn_at_100_p50_s"), r.get("spawn_s"),
            "—", None)
    row("`sandbox diff` (brings the work over first)", r.get("diff_s"), r.get("diff_raw_s"), "—", None)
    row("`sandbox sync` (one fetch from the container)", r.get("sync_s"), None, "—", None)
    for k, label in (("version_s", "`sandbox --version`"), ("help_s", "`sandbox --help`")):
        rt = ratio(r.get(k), r.get("python_c_pass_s"))
        row(f"{label} (vs `python -c pass`)", r.get(k), r.get("python_c_pass_s"), "≤ 4×", le(rt, 4))
    row("spawn until ready, shell agent, `--profile isolated` (vs default, same run)", r.get("spawn_isolated_s"),
        r.get("spawn_default_s"), "—", None)
    return rows


def profile_table(r: dict[str, Any]) -> str | None:
    """The spawn profile (`spawn --trace`, medians per step; cold, and warm from the pool row) as a small
    table, or None."""
    prof = r.get("profile_ms")
    if not prof:
        return None
    warm = r.get("profile_warm_ms") or {}
    total = prof.get("total") or sum(v for k, v in prof.items() if k != "total")
    lines = [f"spawn profile (`spawn --trace`, medians of {r.get('profile_n', '?')}; wall time of the command "
             f"{r.get('profile_wall_ms', '—')} ms; warm: the warm-pool row's spawns):", "",
             "| step | cold | share of total | warm |", "|---|---|---|---|"]
    order = [k for k in [*prof, *(k for k in warm if k not in prof)] if k != "total"] + ["total"]
    for step in order:
        v = prof.get(step)
        share = f"{100 * v / total:.0f} %" if v is not None and total and step != "total" else ""
        cold = "—" if v is None else f"{v:.1f} ms"
        lines.append(f"| {step} | {cold} | {share} | {f'{warm[step]:.1f} ms' if step in warm else '—'} |")
    return "\n".join(lines)


def render(rows: list[tuple[str, ...]]) -> str:
    head = ("metric", "sandbox (median)", "raw baseline", "ratio", "target", "")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, at most 50 agents (~3 min)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json", help="JSON output")
    ap.add_argument("--max-agents", type=int, default=100, help="agents for the scale step (default 100)")
    ap.add_argument("--only", help=f"only these steps, comma-separated ({', '.join(Bench.ONLY)}); the JSON is "
                    "written to bench/results/only.json unless --json")
    ap.add_argument("--reps", type=int, help="repetitions of each measurement (default 5, --quick 3)")
    args = ap.parse_args()
    bench = Bench(args.quick, args.max_agents)
    if args.reps:
        bench.reps = args.reps
    if args.only:
        bench.only = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = set(bench.only) - set(Bench.ONLY)
        if unknown:
            ap.error(f"--only: unknown step(s) {', '.join(sorted(unknown))}")
        if "--json" not in sys.argv:
            args.json = ROOT / "bench" / "results" / "only.json"
    started = time.perf_counter()

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    error = None
    try:
        bench.main()
    except BaseException as e:  # report what was measured, then clean up
        error = f"{type(e).__name__}: {e}"
        print(f"bench stopped: {error}", file=sys.stderr)
    finally:
        bench.cleanup()
    out = {"machine": machine(), "quick": args.quick, "run_id": bench.run_id,
           "seconds": round(time.perf_counter() - started, 1), "results": bench.results, "notes": bench.notes,
           "error": error}
    rows = table(bench.results)
    out["table"] = [dict(zip(("metric", "sandbox", "raw", "ratio", "target", "verdict"), r)) for r in rows]
    m = out["machine"]
    print(f"\nmachine: {m['nproc']} cores, {m['memory_gib']} GiB, docker {m['docker']}, python {m['python']}; "
          f"{out['seconds']} s{' (quick)' if args.quick else ''}\n")
    print(render(rows))
    prof = profile_table(bench.results)
    if prof:
        out["profile"] = bench.results.get("profile_ms")
        print("\n" + prof + "\n")
    for note in bench.notes:
        print(f"note: {note}")
    for key in ("mem_breakdown", "mem_breakdown_raw"):
        if key in bench.results:
            print(f"{key}: {json.dumps(bench.results[key])}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"\nJSON: {args.json}")
    return 1 if error else 0


if __name__ == "__main__":
    raise SystemExit(main())
