"""What of the host's object store an agent can read (issue 20 item 5).

The host's repository holds more than its branches: the user's stash, every agent's workspace snapshot
(``refs/sandbox/wip/*``) and backups. An agent given the whole store (``objects = "shared"``, read-only
through alternates) reads them all; in the ``reachable`` mode (the isolated profile, or the setting) its
repository holds only what its base and the host's branches reach. The probe runs inside the agent's
container as the agent's uid and searches everything it can read on its mounts, loose and packed, for the
secret bytes: raw, zlib-inflated (loose objects), and through ``git cat-file`` over a repository that
borrows every object store and pack it found.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.workspace import git as gitops
from tests.conftest import Env, git, make_repo

pytestmark = pytest.mark.slow
BOUND = 60

# Run in the container as the agent: everything readable on its mounts, searched for the secrets.
PROBE = r'''
import json, os, shutil, subprocess, sys, tempfile, zlib
secrets = [s.encode() for s in json.loads(sys.argv[1])]
shas, mounts = json.loads(sys.argv[2]), json.loads(sys.argv[3])
found, stores, packs = [], [], []
def look(data, where):
    for s in secrets:
        if s in data:
            found.append(where)
for top in mounts:
    for d, dirs, files in os.walk(top):
        if os.path.basename(d) == "objects":
            stores.append(d)
        for f in files:
            p = os.path.join(d, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            try:
                with open(p, "rb") as fh:
                    data = fh.read(64 << 20)
            except OSError:
                continue
            look(data, "raw " + p)
            try:
                look(zlib.decompressobj().decompress(data), "zlib " + p)
            except zlib.error:
                pass
            if f.endswith(".pack"):
                packs.append(p)
tmp = tempfile.mkdtemp()
subprocess.run(["git", "init", "-q", "--bare", tmp + "/r"], check=True)
with open(tmp + "/r/objects/info/alternates", "w") as fh:
    fh.write("".join(s + "\n" for s in stores))
for i, p in enumerate(packs):
    dst = f"{tmp}/r/objects/pack/p{i}.pack"
    shutil.copyfile(p, dst)
    subprocess.run(["git", "--git-dir", tmp + "/r", "index-pack", dst], capture_output=True)
out = subprocess.run(["git", "--git-dir", tmp + "/r", "cat-file", "--batch-all-objects", "--batch"],
                     capture_output=True).stdout
look(out, "git cat-file --batch-all-objects")
readable = [sha for sha in shas
            if subprocess.run(["git", "cat-file", "-p", sha], capture_output=True).returncode == 0
            or subprocess.run(["git", "--git-dir", tmp + "/r", "cat-file", "-p", sha], capture_output=True).returncode == 0]
print(json.dumps({"found": found, "readable": readable, "stores": stores, "packs": len(packs)}))
'''


def inspect(name: str) -> dict:
    out = subprocess.run(["docker", "inspect", f"sandbox-{name}"], capture_output=True, text=True, check=True,
                         timeout=BOUND).stdout
    return json.loads(out)[0]


def probe(name: str, secrets: list[str], shas: list[str]) -> dict:
    """The probe, as the agent's uid, in its workspace, over every bind mount its container has."""
    info = inspect(name)
    mounts = [m["Destination"] for m in info["Mounts"] if m.get("Type") == "bind"]
    labels = info["Config"]["Labels"]  # (the container's own user is its root supervisor: the agent is sandbox.uid)
    agent = f"{labels['sandbox.uid']}:{labels.get('sandbox.gid') or labels['sandbox.uid']}"
    proc = subprocess.run(["docker", "exec", "-u", agent, "-w", info["Config"]["WorkingDir"],
                           f"sandbox-{name}", "python3", "-c", PROBE, json.dumps(secrets), json.dumps(shas),
                           json.dumps(mounts)], capture_output=True, text=True, timeout=BOUND)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def planted(env: Env, repo: Path) -> Iterator[tuple[list[str], list[str]]]:
    """The host holds a stash with a secret ``.env`` and another agent's uncommitted file, synced to
    ``refs/sandbox/wip/OTHER``: (the secret strings, the ids of the objects that hold them)."""
    stash_secret = "STASHED-" + uuid.uuid4().hex
    (repo / ".env").write_text(f"API_TOKEN={stash_secret}\n")
    git(repo, "add", ".env")
    git(repo, "stash", "-q")
    assert not (repo / ".env").exists()
    other = env.ok("spawn", "--name", f"other-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo,
                   timeout=120).out.strip()
    other_secret = "DRAFT-" + uuid.uuid4().hex
    env.ok("exec", other, "--", "sh", "-c", f"echo {other_secret} > draft.txt", timeout=BOUND)
    env.ok("sync", other, cwd=repo, timeout=BOUND)
    wip = git(repo, "rev-parse", f"refs/sandbox/wip/{other}").strip()
    shas = [git(repo, "rev-parse", "stash").strip(), git(repo, "rev-parse", "stash:.env").strip(),
            wip, git(repo, "rev-parse", f"{wip}:draft.txt").strip()]
    try:
        yield [stash_secret, other_secret], shas
    finally:
        env.run("rm", "--force", other, cwd=repo, timeout=BOUND)


def spawn(env: Env, repo: Path, *args: str, extra: dict[str, str] | None = None) -> str:
    return env.ok("spawn", "--name", f"reader-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", *args, cwd=repo,
                  extra=extra, timeout=120).out.strip()


def still_works(env: Env, repo: Path, name: str) -> None:
    """Its repository is whole (status, log, a commit), the host reads the work running and stopped."""
    env.ok("exec", name, "--", "sh", "-c", "git status --short && git log --oneline origin/main "
           "&& echo work > w.txt && git add w.txt && git commit -qm w && git fsck --connectivity-only", timeout=BOUND)
    env.ok("sync", name, cwd=repo, timeout=BOUND)
    assert git(repo, "show", f"sandbox/{name}:w.txt") == "work\n"
    env.ok("stop", name, timeout=BOUND)
    assert "+work" in env.ok("diff", name, cwd=repo, timeout=BOUND).out  # a reader container: no host store


def test_the_shared_store_shows_the_stash_and_other_agents_work(env: Env, repo: Path, planted) -> None:
    """The default (shared): the attack works — the probe finds what it must not in the other modes."""
    secrets, shas = planted
    name = spawn(env, repo)
    got = probe(name, secrets, shas)
    assert set(got["readable"]) == set(shas), got
    assert any(f.startswith("git cat-file") for f in got["found"]), got
    env.ok("rm", "--force", name, cwd=repo, timeout=BOUND)


@pytest.mark.parametrize("how", ["isolated", "setting"])
def test_a_reachable_store_holds_only_what_the_branches_reach(
        env: Env, repo: Path, planted, how: str, request: pytest.FixtureRequest) -> None:
    secrets, shas = planted
    if how == "isolated":
        request.getfixturevalue("proxy_image")
        name = spawn(env, repo, "--profile", "isolated")
    else:
        name = spawn(env, repo, extra={"SANDBOX_OBJECTS": "reachable"})
    got = probe(name, secrets, shas)
    assert got == {"found": [], "readable": [], "stores": got["stores"], "packs": 1}, got
    info = inspect(name)
    assert info["Config"]["Labels"]["sandbox.objects"] == "reachable"
    common = str(gitops.find_repo(repo).common_dir)
    assert not [m for m in info["Mounts"] if m["Source"].startswith(common)], info["Mounts"]
    still_works(env, repo, name)
    env.ok("rm", "--force", name, cwd=repo, timeout=BOUND)


def test_the_warm_pool_follows_the_mode(env: Env, repo: Path, planted) -> None:
    secrets, shas = planted
    extra = {"SANDBOX_OBJECTS": "reachable"}
    try:
        env.ok("pool", "--size", "1", cwd=repo, extra=extra, timeout=120)
        name = spawn(env, repo, extra=extra)
        got = probe(name, secrets, shas)
        assert got["found"] == [] and got["readable"] == [], got
        info = inspect(name)
        assert info["Config"]["Labels"].get("sandbox.pool"), info["Config"]["Labels"]  # (a claimed slot)
        common = str(gitops.find_repo(repo).common_dir)
        assert not [m for m in info["Mounts"] if m["Source"].startswith(common)], info["Mounts"]
        env.ok("rm", "--force", name, cwd=repo, timeout=BOUND)
    finally:
        env.run("pool", "--size", "0", cwd=repo, extra=extra, timeout=120)


def test_a_reader_of_a_reachable_agent_mounts_no_host_store(tmp_path: Path) -> None:
    """The export's reader container (the agent's container gone or stopped) follows the mode: the host's
    store is mounted and passed as ``--objects`` only for a shared agent, the mode read from the host's own
    record (an orphan's workspace has no labels; a file the agent can write never decides)."""
    from sandbox.config import load_settings
    from sandbox.manager import SandboxManager
    from sandbox.workspace import sync as sync_
    from sandbox.workspace.sync import Source

    settings = load_settings(data_dir=tmp_path / "data")
    mgr = SandboxManager(settings, engine=object())  # type: ignore[arg-type]
    repo = gitops.find_repo(make_repo(tmp_path / "repo"))
    store = str(repo.common_dir / "objects")
    mgr.records.record_objects("a", "reachable")
    mgr.records.record_objects("b", "shared")
    assert mgr.records.objects_of(repo, "a") is None
    assert mgr.records.objects_of(repo, "b") == repo.common_dir / "objects"
    assert mgr.records.objects_of(repo, "legacy") == repo.common_dir / "objects"  # made before the record: shared
    for name, shared in (("a", False), ("b", True)):
        src = Source(name=name, repo=repo, branch=f"sandbox/{name}", workspace=tmp_path / "ws", agent_git=None,
                     uid=1000, image="img", objects=mgr.records.objects_of(repo, name))
        argv = sync_.export_argv(settings, src, snapshot=False)
        assert (store in " ".join(argv)) is shared, argv


# -- issue 26 item 4: the printed workspace is a trap for the user's shell prompt -----------------------------
def test_no_directory_sandbox_shows_or_keeps_runs_the_agents_git_config_for_the_user(unprivileged: Env) -> None:
    """The agent plants ``src/.git`` with ``core.fsmonitor``; the user ``cd``s into every directory ``spawn``
    printed or ``sandbox`` keeps for the agent and runs ``git status`` (what a git-aware prompt does)."""
    import re

    from tests.conftest import TEST_USER

    env = unprivileged
    repo = env.root / "repo"
    markers = env.root / "markers"
    markers.mkdir()
    subprocess.run(["chown", f"{TEST_USER}:{TEST_USER}", str(markers)], check=True)
    marker = markers / "fsmonitor-ran"
    spawned = env.ok("spawn", "--agent-cmd", "bash", "--name", "trap", cwd=repo)
    name = spawned.out.strip().splitlines()[0]
    plant = (f"git init -q src && git -C src config core.fsmonitor 'sh -c \"id > {marker}\"' "
             "&& git -C src config core.hooksPath hooks")
    env.ok("exec", name, "--", "sh", "-c", plant, timeout=BOUND)
    printed = {Path(p) for p in re.findall(r"(/\S+)", spawned.out + spawned.err)}
    kept = {p for d in ("workspaces", "agent-git", "state", "restored") for p in (env.data / d).glob(f"**/{name}")}
    try:
        for top in sorted(printed | kept):
            for d in (top, top / "src"):
                subprocess.run(["runuser", "-u", TEST_USER, "--", "sh", "-c", f"cd {d} && git status"],
                               capture_output=True, timeout=BOUND)
        assert not marker.exists(), marker.read_text()
    finally:
        env.run("rm", "--force", name, cwd=repo, timeout=BOUND)
