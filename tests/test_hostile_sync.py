"""The agent is the adversary: what it sends the host when its work is brought over (issue 20 item 2,
issue 26 item 2). Performed from inside a real container as the agent's uid, then the host commands
that read its work. The host must take nothing it refuses (its refs as they were, its object store
not grown, no temporary refs or object directories left), say so in one line with exit 8, leave no
process behind on either side, and never write a file over ``max_blob_bytes`` into a checkout.

The limits are set low in each test's environment (``SANDBOX_MAX_SYNC_BYTES=5m``…) so that a few
megabytes stand for the gigabytes of the attacks.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import Env, git, make_repo, wait_for

BOUND = 90  # seconds: no host command may take longer


def run(env: Env, *args: str, cwd: Path | None = None, extra: dict[str, str] | None = None) -> tuple[int, str, str]:
    res = env.run(*args, cwd=cwd, extra=extra, timeout=BOUND)
    return res.code, res.out, res.err


def sh(env: Env, name: str, script: str) -> str:
    res = env.run("exec", name, "--", "sh", "-c", script, timeout=BOUND)
    assert res.code == 0, f"{script}: {res.err}"
    return res.out


def store_bytes(repo: Path) -> int:
    """What the host's object store holds on disk (its packs and loose objects)."""
    total = 0
    for root, _dirs, files in os.walk(repo / ".git" / "objects"):
        total += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    return total


def assert_nothing_taken(repo: Path, name: str, before: str, store: int) -> None:
    """The agent's host branch did not move, no temporary ref or object directory is left, the
    store did not grow by what was refused."""
    assert git(repo, "rev-parse", f"sandbox/{name}").strip() == before
    assert git(repo, "for-each-ref", "refs/sandbox/incoming/") == ""
    assert [p.name for p in (repo / ".git" / "objects").iterdir() if p.name.startswith("tmp_")] == []
    assert store_bytes(repo) < store + 512 * 1024, (store, store_bytes(repo))


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def agent(env: Env, repo: Path) -> object:
    name = env.ok("spawn", "--name", f"big-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo).out.strip()
    yield name
    env.run("rm", "--force", name, cwd=repo, extra={"SANDBOX_MAX_SYNC_BYTES": "0", "SANDBOX_MAX_BLOB_BYTES": "0"},
            timeout=BOUND)


@pytest.mark.slow
def test_received_bytes_over_max_sync_bytes_abort_the_fetch(env: Env, repo: Path, agent: str) -> None:
    """7 MB of incompressible data committed: the relay on the transport counts what comes from the
    container and aborts the fetch past 5 MiB; raising the setting takes it."""
    name = agent
    sh(env, name, "head -c 7000000 /dev/urandom > noise.bin && git add noise.bin && git commit -qm noise")
    before, store = git(repo, "rev-parse", f"sandbox/{name}").strip(), store_bytes(repo)
    low = {"SANDBOX_MAX_SYNC_BYTES": "5m", "SANDBOX_MAX_BLOB_BYTES": "0"}
    for args in (["diff", name], ["sync", name], ["merge", name]):
        code, out, err = run(env, *args, cwd=repo, extra=low)
        line = one_line(err)
        assert code == 8 and "sends more than 5 MiB, over max_sync_bytes (5 MiB)" in line, (args, code, err)
        assert "SANDBOX_MAX_SYNC_BYTES" in line and "config.toml" in line
        assert_nothing_taken(repo, name, before, store)
    assert not (repo / "noise.bin").exists()
    code, _, err = run(env, "sync", name, cwd=repo, extra={"SANDBOX_MAX_SYNC_BYTES": "20m"})
    assert code == 0, err
    assert git(repo, "rev-parse", f"sandbox/{name}").strip() != before


@pytest.mark.slow
def test_a_zip_bomb_is_refused_by_its_inflated_size_and_never_written(env: Env, repo: Path, agent: str) -> None:
    """64 MiB of zeros written with ``git hash-object -w --stdin`` (well under 1 MB of objects, no
    file on any disk) and committed: the sync is refused by what the new objects inflate to; the
    host's refs do not move, and merge/apply/restore never write the file."""
    name = agent
    sh(env, name, "b=$(head -c 67108864 /dev/zero | git hash-object -w --stdin) && "
                  "git update-index --add --cacheinfo 100644,$b,bomb.bin && git commit -qm bomb && "
                  "truncate -s 64M bomb.bin")  # (a sparse file in the workspace: no disk, nothing uncommitted)
    main = git(repo, "rev-parse", "main").strip()
    before, store = git(repo, "rev-parse", f"sandbox/{name}").strip(), store_bytes(repo)
    code, _, err = run(env, "diff", "--stat", name, cwd=repo, extra={"SANDBOX_MAX_SYNC_BYTES": "8m",
                                                                      "SANDBOX_MAX_BLOB_BYTES": "0"})
    assert code == 8 and "inflates to 64 MiB, over max_sync_bytes (8 MiB)" in one_line(err), err
    assert_nothing_taken(repo, name, before, store)
    code, _, err = run(env, "merge", name, cwd=repo, extra={"SANDBOX_MAX_BLOB_BYTES": "8m"})
    assert code == 8 and "holds a 64 MiB file (bomb.bin), over max_blob_bytes (8 MiB)" in one_line(err), err
    assert_nothing_taken(repo, name, before, store)
    assert not (repo / "bomb.bin").exists() and git(repo, "rev-parse", "main").strip() == main

    # Taken on purpose (the limits raised for one sync): merge, apply and restore still refuse to
    # write the file into a checkout under the default max_blob_bytes... set low here.
    env.ok("sync", name, cwd=repo, extra={"SANDBOX_MAX_BLOB_BYTES": "0"})
    assert git(repo, "cat-file", "-s", f"sandbox/{name}:bomb.bin").strip() == str(64 << 20)
    low = {"SANDBOX_MAX_BLOB_BYTES": "8m"}
    for args in (["merge", name], ["merge", "--squash", name], ["apply", name]):
        code, _, err = run(env, *args, cwd=repo, extra=low)
        assert code == 8 and "64 MiB file (bomb.bin), over max_blob_bytes (8 MiB)" in one_line(err), (args, err)
        assert not (repo / "bomb.bin").exists() and git(repo, "rev-parse", "main").strip() == main
        assert git(repo, "status", "--porcelain") == ""
    code, out, err = run(env, "rm", "--force", name, cwd=repo, extra={"SANDBOX_MAX_BLOB_BYTES": "0"})
    assert code == 0 and "refs/sandbox/backup/" in out + err, out + err
    code, out, err = run(env, "restore", name, cwd=repo, extra=low)
    assert code == 8 and "over max_blob_bytes" in one_line(err), err
    assert git(repo, "branch", "--list", f"sandbox/{name}-restored") == ""


def test_a_ref_that_is_not_a_commit_is_refused_through_fetch_from(tmp_path: Path) -> None:
    """An upload-pack that advertises a blob (and a tree, and a tag) under the WIP ref, fetched
    through ``fetch_from`` itself (the relay included): refused, every host ref as it was, nothing
    of the quarantine left. (An export that lies needs the host's in-container program to load agent
    code; here a hand-made repository lies instead.)"""
    from sandbox.errors import SyncError
    from sandbox.workspace import git as gitops

    host = make_repo(tmp_path / "host")
    liar = tmp_path / "liar.git"
    git(tmp_path, "init", "-q", "--bare", str(liar))
    empty = git(liar, "hash-object", "-t", "tree", "-w", "/dev/null").strip()
    commit = git(liar, "commit-tree", empty, "-m", "head").strip()
    blob = subprocess.run(["git", "-C", str(liar), "hash-object", "-w", "--stdin"], input="not a commit\n",
                          capture_output=True, text=True, check=True).stdout.strip()
    tag = subprocess.run(["git", "-C", str(liar), "mktag"], input=f"object {commit}\ntype commit\ntag t\n"
                         "tagger T <t@x> 0 +0000\n\nt\n", capture_output=True, text=True, check=True).stdout.strip()
    git(liar, "update-ref", "refs/heads/head", commit)
    repo = gitops.find_repo(host)
    before = git(host, "for-each-ref")
    for kind, sha in (("blob", blob), ("tree", empty), ("tag", tag)):
        git(liar, "update-ref", "refs/wip", sha)
        with pytest.raises(SyncError) as err:
            gitops.fetch_from(repo, ["git", "upload-pack", str(liar)],
                              {"refs/heads/head": "refs/heads/sandbox/x", "refs/wip": "refs/sandbox/wip/x"},
                              who="agent x", timeout=30)
        assert f"agent x's export sent a {kind} for refs/sandbox/wip/x, not a commit" in str(err.value)
        assert err.value.exit_code == 8
        assert git(host, "for-each-ref") == before
        assert [p.name for p in (host / ".git" / "objects").iterdir() if p.name.startswith("tmp_")] == []
    git(liar, "update-ref", "refs/wip", commit)  # honest: taken
    gitops.fetch_from(repo, ["git", "upload-pack", str(liar)],
                      {"refs/heads/head": "refs/heads/sandbox/x", "refs/wip": "refs/sandbox/wip/x"}, who="agent x")
    assert git(host, "rev-parse", "sandbox/x", "refs/sandbox/wip/x").split() == [commit, commit]
    assert git(host, "for-each-ref", "refs/sandbox/incoming/") == ""


STOPPER = """while :; do
  pkill -STOP -f 'sandbox[.]inside import main.* export'
  pkill -STOP -x timeout
  sleep 0.02
done
"""


@pytest.mark.slow
def test_a_hung_export_is_killed_with_its_process_group_on_both_sides(env: Env, repo: Path, agent: str) -> None:
    """The agent stops (SIGSTOP) every export the host starts in its container, and the ``timeout``
    wrapping it: the host's command ends with exit 8 within the timeout (plus its grace), leaves no
    git, relay or ``docker exec`` on the host, and nothing of the export in the container."""
    name = agent
    cid = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", f"sandbox-{name}"], capture_output=True,
                         text=True, check=True).stdout.strip()
    sh(env, name, f"cat > /tmp/stopper.sh <<'EOF'\n{STOPPER}EOF\n"
                  "nohup sh /tmp/stopper.sh >/dev/null 2>&1 &")
    try:
        start = time.monotonic()
        code, _, err = run(env, "diff", name, cwd=repo, extra={"SANDBOX_SYNC_TIMEOUT": "4"})
        took = time.monotonic() - start
        assert code == 8 and took < 4 + 3 + 6, (code, took, err)  # the timeout, the host's grace, start and end

        def host_left() -> list[str]:
            out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
            return [ln for ln in out.splitlines() if (cid in ln or cid[:12] in ln) and "containerd-shim" not in ln]

        assert host_left() == []  # at once: git, the relay and `docker exec` are killed before the command returns

        def inside_left() -> list[str]:
            out = subprocess.run(["docker", "exec", cid, "ps", "-eo", "stat=,args="], capture_output=True,
                                 text=True).stdout
            return [ln for ln in out.splitlines() if ("sandbox.inside" in ln and " export" in ln)
                    or "upload-pack" in ln or "timeout" in ln.split()[1:2]]

        wait_for(lambda: inside_left() == [], 5, "the export's processes in the container to go")
        assert "timed out after 4s (sync_timeout)" in one_line(err), err
    finally:
        subprocess.run(["docker", "exec", cid, "pkill", "-f", "stopper.sh"], capture_output=True)
    assert run(env, "diff", name, cwd=repo)[0] == 0  # (the agent itself is fine, and readable again)


def row(env: Env, repo: Path, name: str) -> dict[str, object]:
    rows = env.ok("ls", "--json", cwd=repo, timeout=BOUND).json()
    return next(r for r in rows if r["name"] == name)


@pytest.mark.slow
def test_many_files_in_the_state_dir_stop_the_agent_and_keep_host_commands_fast(
        env: Env, repo: Path, agent: str) -> None:
    """50,000 files in the agent's state dir: the host reads only the files it knows by name, so ls,
    gc and rm stay fast; the listing's disk watch counts at most 1,000 entries there and stops the
    agent, saying why (its work kept)."""
    name = agent
    sh(env, name, "echo mine > work.txt && cd /run/sandbox-state/agent && mkdir -p junk && cd junk && seq 1 50000 | xargs touch")
    start = time.monotonic()
    found = row(env, repo, name)
    assert time.monotonic() - start < 20  # (the stop included)
    assert found["state"] == "stopped" and "state dir holds more than 1000 entries" in str(found["reason"]), found
    code, out, _ = run(env, "ls", cwd=repo)
    assert code == 0 and "state dir holds more than 1000 entries" in out, out
    for args in (["ls"], ["ls", "--json"], ["gc"]):
        start = time.monotonic()
        code, _, err = run(env, *args, cwd=repo)
        assert code == 0, err
        assert time.monotonic() - start < 10, args
    start = time.monotonic()
    code, out, err = run(env, "rm", "--force", name, cwd=repo)
    assert code == 0 and time.monotonic() - start < 30, err
    assert "refs/sandbox/backup/" in out + err  # (its work.txt: saved)
    assert not (env.data / "state" / name).exists()


@pytest.mark.slow
def test_the_disk_limit_stops_the_agent_and_keeps_its_work(env: Env, repo: Path) -> None:
    """``disk = "5m"``: the agent writes 8 MB into its workspace; the next listing measures it, stops
    the agent (its work kept) and says why."""
    name = env.ok("spawn", "--name", f"disk-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo,
                  extra={"SANDBOX_DISK": "5m"}).out.strip()
    try:
        assert row(env, repo, name)["state"] != "stopped"  # (within its limit: measured, left alone)
        sh(env, name, "head -c 8000000 /dev/urandom > fill.bin && git add fill.bin && git commit -qm fill")
        os.utime(env.data / "disk" / name, (0, 0))  # (as if its last measurement were a minute old)
        found = row(env, repo, name)
        assert found["state"] == "stopped", found
        assert "over its disk limit (5 MiB)" in str(found["reason"]), found
        ws = Path(subprocess.run(["docker", "inspect", "-f", '{{index .Config.Labels "sandbox.worktree"}}',
                                  f"sandbox-{name}"], capture_output=True, text=True, check=True).stdout.strip())
        assert (ws / "fill.bin").stat().st_size == 8000000  # its work is kept
        code, _, err = run(env, "sync", name, cwd=repo, extra={"SANDBOX_MAX_SYNC_BYTES": "20m"})
        assert code == 0, err  # and readable (a reader container)
        assert git(repo, "cat-file", "-s", f"sandbox/{name}:fill.bin").strip() == "8000000"
    finally:
        env.run("rm", "--force", name, cwd=repo, extra={"SANDBOX_MAX_SYNC_BYTES": "0"}, timeout=BOUND)


def test_syncs_side_by_side_never_show_each_other_or_the_user_a_bad_ref(tmp_path: Path) -> None:
    """Two syncs at once into one repository (what `ls`, a plan's driver and `diff` do), and the user's own
    `git log --all` meanwhile: none fails. (The temporary refs of one sync named objects only its own
    quarantine held; another git process in the repository failed on them: "bad object".)"""
    import threading

    from sandbox.workspace import git as gitops

    host = make_repo(tmp_path / "host")
    sources = []
    for n in range(2):
        src = tmp_path / f"src{n}.git"
        git(tmp_path, "clone", "-q", "--bare", str(host), str(src))
        sources.append(src)
    repo = gitops.find_repo(host)
    errors: list[str] = []
    stop = threading.Event()

    def syncs(n: int) -> None:
        work = tmp_path / f"work{n}"
        git(tmp_path, "clone", "-q", str(sources[n]), str(work))
        for i in range(12):
            (work / f"f{n}.txt").write_text(f"{i}\n" * 2000)
            git(work, "add", "-A")
            git(work, "commit", "-qm", f"c{i}")
            git(work, "push", "-q", "origin", "HEAD:refs/heads/head")
            try:
                gitops.fetch_from(repo, ["git", "upload-pack", str(sources[n])],
                                  {"refs/heads/head": f"refs/heads/sandbox/a{n}"}, who=f"agent a{n}", timeout=60)
            except Exception as e:  # noqa: BLE001 - collected: the assertion below names it
                errors.append(f"sync {n}: {e}")

    def user() -> None:
        while not stop.is_set():
            proc = subprocess.run(["git", "-C", str(host), "log", "--all", "--oneline"], capture_output=True, text=True)
            if proc.returncode != 0:
                errors.append(f"git log --all: {proc.stderr.strip()}")

    threads = [threading.Thread(target=syncs, args=(n,)) for n in range(2)]
    watcher = threading.Thread(target=user)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    stop.set()
    watcher.join(timeout=30)
    assert errors == [], errors[:5]
    assert git(host, "for-each-ref", "refs/sandbox/incoming/") == ""
    assert [p.name for p in (host / ".git").iterdir() if p.name.startswith("sandbox-incoming-")] == []
