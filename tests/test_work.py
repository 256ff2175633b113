"""Getting work out (diff, merge, apply, push, restore) and cleaning up without losing it (rm, gc).

Real engine, real git: shell agents (`--agent-cmd bash`) commit through `sandbox exec`; one test
lets the real Claude Code (scripted model) make the commit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import Env, git, wait_for

pytestmark = pytest.mark.slow


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def spawn(env: Env, repo: Path, prefix: str) -> tuple[str, Path]:
    name = env.ok("spawn", "--name", uniq(prefix), "--agent-cmd", "bash", cwd=repo).out.strip()
    row = [r for r in env.ok("ls", "--json", cwd=repo).json() if r["name"] == name][0]
    return name, Path(row["workspace"])


def sh(env: Env, name: str, script: str) -> str:
    res = env.run("exec", name, "--", "sh", "-c", script)
    assert res.code == 0, f"{script}: {res.err}"
    return res.out


def commit(env: Env, name: str, path: str, content: str, msg: str) -> None:
    sh(env, name, f"printf '%s' '{content}' > {path} && git add {path} && git commit -qm '{msg}'")


def exists(container: str) -> bool:
    return subprocess.run(["docker", "inspect", container], capture_output=True).returncode == 0


def head(repo: Path, rev: str = "HEAD") -> str:
    return git(repo, "rev-parse", rev).strip()


def state(repo: Path, env: Env) -> dict[str, object]:
    """Everything gc could change, for before/after comparisons."""
    ids = subprocess.run(["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=sandbox.repo={repo}"],
                         capture_output=True, text=True).stdout.split()
    wts = sorted(str(p) for d in ("workspaces", "agent-git") for p in (env.data / d).glob("*/*"))
    # A dry run may bring agents' work over (fetch into sandbox/* and refs/sandbox/wip/*) but never
    # removes a ref: the refs it may move are compared by name only.
    refs = git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
    copies = ("refs/heads/sandbox/", "refs/sandbox/wip/")
    refs = [r.split()[0] if r.startswith(copies[0]) else r for r in refs if not r.startswith(copies[1])]
    return {"containers": sorted(ids), "refs": refs, "workspaces": wts,
            "registered": git(repo, "worktree", "list", "--porcelain"),
            "admin": sorted(p.name for p in (repo / ".git" / "worktrees").glob("*"))}


def test_diff_then_merge_plain_squash_rebase(env: Env, repo: Path) -> None:
    a, wa = spawn(env, repo, "plain")
    commit(env, a, "a.txt", "one", "add a")
    sh(env, a, "echo untracked > u.txt")
    full = env.ok("diff", a).out
    assert "+++ b/a.txt" in full and "+++ b/u.txt" in full
    only_unc = env.ok("diff", a, "--uncommitted").out
    assert "u.txt" in only_unc and "a.txt" not in only_unc
    assert "a.txt" in env.ok("diff", a, "--stat").out

    # Dirty main checkout: refused, nothing changed.
    before = head(repo)
    (repo / "README.md").write_text("local edit\n")
    res = env.run("merge", a, cwd=repo)
    assert res.code == 5 and "uncommitted changes" in res.err
    assert head(repo) == before and (repo / "README.md").read_text() == "local edit\n"
    git(repo, "checkout", "--", "README.md")

    res = env.ok("merge", a, cwd=repo)
    assert "still has uncommitted changes" in res.err
    assert (repo / "a.txt").read_text() == "one" and not (repo / "u.txt").exists()
    assert git(repo, "log", "-1", "--format=%s").strip() == "add a"  # fast-forward

    # Squash: two agent commits become one commit on main; rm then knows it is merged.
    b, _ = spawn(env, repo, "squash")
    commit(env, b, "b.txt", "b1", "b first")
    commit(env, b, "b.txt", "b2", "b second")
    before = head(repo)
    env.ok("merge", b, "--squash", cwd=repo)
    assert git(repo, "rev-list", "--count", f"{before}..HEAD").strip() == "1"
    assert git(repo, "rev-list", "--parents", "-1", "HEAD").split()[1:] == [before]
    assert (repo / "b.txt").read_text() == "b2"
    env.ok("rm", b)  # squash-merged counts as merged: no --force needed
    assert not exists(f"sandbox-{b}")

    # Rebase: main moved on; the agent's commit is replayed linearly; its own branch is untouched.
    c, _ = spawn(env, repo, "rebase")
    commit(env, c, "c.txt", "c", "add c")
    (repo / "main.txt").write_text("main moved\n")
    git(repo, "add", "main.txt")
    git(repo, "commit", "-qm", "main moves")
    env.ok("sync", c)
    agent_tip = head(repo, f"sandbox/{c}")
    before = head(repo)
    env.ok("merge", c, "--rebase", cwd=repo)
    assert git(repo, "log", "-1", "--format=%s").strip() == "add c"
    assert git(repo, "rev-list", "--parents", "-1", "HEAD").split()[1:] == [before]
    assert git(repo, "rev-list", "--merges", f"{before}..HEAD").strip() == ""
    assert head(repo, f"sandbox/{c}") == agent_tip
    env.ok("rm", c)  # rebased counts as merged

    # --include-uncommitted merges the workspace as it is (the untracked file too); the agent's own
    # repository is not touched, and the agent keeps working.
    agent_branch = head(repo, f"sandbox/{a}")
    res = env.ok("merge", a, "--include-uncommitted", cwd=repo)
    assert "merged" in res.err and "uncommitted changes as commit" in res.err
    assert (repo / "u.txt").read_text() == "untracked\n"
    assert head(repo, f"sandbox/{a}") == agent_branch
    assert sh(env, a, "git status --porcelain").strip() == "?? u.txt"
    commit(env, a, "after.txt", "x", "agent keeps working")

    # Conflicts: nothing half-done in any mode.
    d, _ = spawn(env, repo, "conflict")
    commit(env, d, "README.md", "agent version", "agent edits readme")
    (repo / "README.md").write_text("main version\n")
    git(repo, "commit", "-qam", "main edits readme")
    before = head(repo)
    for flags in ([], ["--squash"], ["--rebase"]):
        res = env.run("merge", d, *flags, cwd=repo)
        assert res.code == 5 and "conflicts (README.md)" in res.err, (flags, res.err)
        assert head(repo) == before
        assert git(repo, "status", "--porcelain").strip() == ""
        assert not (repo / ".git" / "MERGE_HEAD").exists()
        assert (repo / "README.md").read_text() == "main version\n"
    assert "sandbox-merge-" not in git(repo, "worktree", "list")
    for n in (a, d):
        env.ok("rm", "--force", n)


def test_merge_into_another_branch(env: Env, repo: Path) -> None:
    git(repo, "branch", "release")
    a, _ = spawn(env, repo, "into")
    commit(env, a, "r.txt", "r", "for release")
    main_before = head(repo)
    env.ok("merge", a, "--into", "release", cwd=repo)
    assert head(repo) == main_before and not (repo / "r.txt").exists()
    assert git(repo, "show", "release:r.txt") == "r"
    env.ok("rm", a)  # merged into a local branch


def test_apply_leaves_changes_uncommitted(env: Env, repo: Path) -> None:
    a, _ = spawn(env, repo, "apply")
    commit(env, a, "x.txt", "committed", "add x")
    sh(env, a, "printf 'changed\\n' > README.md; printf 'new' > n.txt")
    before = head(repo)
    out = env.ok("apply", a, cwd=repo).out.split()
    assert sorted(out) == ["README.md", "n.txt", "x.txt"]
    assert head(repo) == before
    assert (repo / "x.txt").read_text() == "committed"
    assert (repo / "README.md").read_text() == "changed\n"
    assert (repo / "n.txt").read_text() == "new"
    assert sorted(git(repo, "status", "--porcelain").splitlines()) == ["A  n.txt", "A  x.txt", "M  README.md"]
    res = env.run("apply", a, cwd=repo)  # main is dirty now: refused
    assert res.code == 5
    env.ok("rm", "--force", a)


def test_push_to_a_bare_remote(env: Env, repo: Path, tmp_path: Path) -> None:
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    git(repo, "remote", "add", "origin", str(bare))
    a, _ = spawn(env, repo, "push")
    commit(env, a, "p.txt", "p", "to push")
    assert env.run("rm", a).code == 5  # unmerged, unpushed
    assert env.ok("push", a, cwd=repo).out.strip() == f"origin/sandbox/{a}"
    assert git(bare, "rev-parse", f"sandbox/{a}").strip() == head(repo, f"sandbox/{a}")
    if shutil.which("gh") is None:
        res = env.run("pr", a, cwd=repo)
        assert res.code == 1 and "the GitHub CLI `gh` is not installed" in res.err
    env.ok("rm", a)  # pushed: safe
    assert not exists(f"sandbox-{a}")


def test_rm_refuses_then_force_backs_up_and_restore_is_byte_exact(env: Env, repo: Path, tmp_path: Path) -> None:
    a, wt = spawn(env, repo, "keep")
    sh(env, a, "printf 'edited\\n' > README.md")
    res = env.run("rm", a)
    assert res.code == 5 and "uncommitted changes" in res.err
    assert exists(f"sandbox-{a}") and wt.is_dir()

    sh(env, a, "git checkout -- README.md")
    commit(env, a, "p.txt", "p", "unpushed work")
    res = env.run("rm", a)
    assert res.code == 5 and "neither merged nor pushed" in res.err
    assert exists(f"sandbox-{a}") and (wt / "p.txt").exists()

    sh(env, a, "printf 'edited\\n' > README.md && printf '\\000\\001binary\\377' > new.bin && chmod +x new.bin && mkdir -p d/e "
               "&& printf 'deep' > d/e/f.txt")
    expected = {p: (wt / p).read_bytes() for p in ("README.md", "new.bin", "p.txt", "d/e/f.txt")}
    res = env.ok("rm", "--force", a)
    assert "refs/sandbox/backup/" in res.err and "sandbox restore" in res.err
    assert not exists(f"sandbox-{a}") and not wt.exists()

    out = env.ok("restore", a, "--path", str(tmp_path / "back"), cwd=repo)
    back = Path(out.out.strip())
    assert back == tmp_path / "back"
    for p, data in expected.items():
        assert (back / p).read_bytes() == data, p
    assert os.access(back / "new.bin", os.X_OK)
    assert sorted(git(back, "status", "--porcelain").splitlines()) == [" M README.md", "?? d/", "?? new.bin"]
    assert git(back, "rev-parse", "--abbrev-ref", "HEAD").strip() == f"sandbox/{a}-restored"
    assert git(back, "log", "-1", "--format=%s").strip() == "unpushed work"

    # The printed git commands work too.
    ref = git(repo, "for-each-ref", "--format=%(refname)", f"refs/sandbox/backup/{a}/").split()[0]
    manual = tmp_path / "manual"
    git(repo, "worktree", "add", "-q", "-b", "manual", str(manual), f"{ref}^1")
    git(manual, "read-tree", "-u", "--reset", ref)
    git(manual, "reset", "-q")
    for p, data in expected.items():
        assert (manual / p).read_bytes() == data, p


def test_an_edit_in_the_second_its_index_was_written_is_in_the_snapshot(env: Env, repo: Path) -> None:
    """Racy git: the checkout writes README.md and the index, and an edit of the same size lands in that same
    second. The export's snapshot (what `diff`, `rm --force`'s backup and `gc` read) must still see it."""
    a, wt = spawn(env, repo, "racy")
    sh(env, a, "for i in 1 2 3 4 5 6 7 8 9 10; do s=$(date +%s); printf 'edited\\n' > README.md; git checkout -- README.md "
               "&& printf 'edited\\n' > README.md; [ \"$(date +%s)\" = \"$s\" ] && break; done; sleep 1.2")
    assert (wt / "README.md").read_bytes() == b"edited\n" and len(b"edited\n") == len(b"# demo\n")
    out = env.ok("diff", a, "--uncommitted", cwd=repo).out
    assert "+edited" in out and "-# demo" in out, out
    env.ok("rm", "--force", a, cwd=repo)


def test_gc_after_a_crash_touches_only_ours(env: Env, repo: Path, tmp_path: Path) -> None:
    # g1: squash-merged by hand, then its container removed by hand -> orphan workspace + merged branch.
    g1, w1 = spawn(env, repo, "sq")
    commit(env, g1, "g1.txt", "g1", "g1 work")
    env.ok("sync", g1)
    git(repo, "merge", "--squash", f"sandbox/{g1}")
    git(repo, "commit", "-qm", "squash of g1")
    subprocess.run(["docker", "rm", "-f", f"sandbox-{g1}"], check=True, capture_output=True)
    # g2: its workspace deleted by hand -> orphan container; its unmerged commit is fetched, the branch kept.
    g2, w2 = spawn(env, repo, "gone")
    commit(env, g2, "g2.txt", "g2", "g2 work")
    subprocess.run(["rm", "-rf", str(w2)], check=True)
    # g3: container removed by hand with uncommitted work -> backed up, then removed.
    g3, w3 = spawn(env, repo, "dirty")
    sh(env, g3, "printf 'unsaved' > wip.txt")
    subprocess.run(["docker", "rm", "-f", f"sandbox-{g3}"], check=True, capture_output=True)
    # g4: alive and well -> untouched.
    g4, w4 = spawn(env, repo, "alive")
    # Foreign things.
    foreign_c = f"foreign-{uuid.uuid4().hex[:6]}"
    try:
        subprocess.run(["docker", "run", "-d", "--name", foreign_c, "--label", f"sandbox.name={g1}",
                        "--label", f"sandbox.repo={repo}", "--label", f"sandbox.worktree={tmp_path}/nowhere",
                        "--entrypoint", "sleep", env.env["SANDBOX_IMAGE"], "60"], check=True, capture_output=True)
        git(repo, "worktree", "add", "-q", "-b", "foreign-wt", str(tmp_path / "foreign-wt"))
        git(repo, "worktree", "add", "-q", "--detach", str(tmp_path / "foreign-gone"))
        subprocess.run(["rm", "-rf", str(tmp_path / "foreign-gone")], check=True)
        git(repo, "branch", "feature-merged")  # merged, but not ours
        (env.data / "workspaces" / "other-repo" / "x").mkdir(parents=True)  # another repository's slot

        before = state(repo, env)
        res = env.ok("gc", cwd=repo)
        assert state(repo, env) == before, "the dry run changed something"
        lines = sorted(res.out.splitlines())
        expected = sorted([
            f"would rm  container    sandbox-{g2}  (workspace {w2} is gone)",
            f"would rm  workspace    {w1}  (no container)",
            f"would rm  workspace    {w3}  (no container, uncommitted changes backed up first)",
            f"would rm  branch       sandbox/{g1}  (merged)",
            f"would rm  branch       sandbox/{g3}  (merged)",
            f"keep      sandbox/{g2}  (1 commit(s) neither merged nor pushed)",
            f"would rm  state        {env.data / 'state' / g1}  (the agent is gone)",
            f"would rm  state        {env.data / 'state' / g3}  (the agent is gone)",
        ])
        assert lines == expected, res.out

        assert sorted(env.ok("gc", "--all-repos", cwd=tmp_path).out.splitlines()) == expected
        assert state(repo, env) == before
        res = env.ok("gc", "--apply", cwd=repo)
        assert not exists(f"sandbox-{g2}") and exists(f"sandbox-{g4}") and exists(foreign_c)
        assert not w1.exists() and not w3.exists() and w4.is_dir()
        assert (tmp_path / "foreign-wt").is_dir() and (env.data / "workspaces" / "other-repo" / "x").is_dir()
        assert sorted(p.name for p in (env.data / "agent-git").glob("*/*")) == [g4]
        branches = git(repo, "branch", "--format=%(refname:short)").split()
        assert f"sandbox/{g1}" not in branches and f"sandbox/{g3}" not in branches
        assert {f"sandbox/{g2}", f"sandbox/{g4}", "feature-merged", "foreign-wt"} <= set(branches)
        assert str(tmp_path / "foreign-gone") in git(repo, "worktree", "list", "--porcelain")
        (ref,) = git(repo, "for-each-ref", "--format=%(refname)", f"refs/sandbox/backup/{g3}/").split()
        assert git(repo, "show", f"{ref}:wip.txt") == "unsaved"
        assert "saved first as refs/sandbox/backup/" in res.out

        # A second run finds nothing more to do.
        again = env.ok("gc", cwd=repo).out.splitlines()
        assert again == [f"keep      sandbox/{g2}  (1 commit(s) neither merged nor pushed)"]
    finally:
        subprocess.run(["docker", "rm", "-f", foreign_c], capture_output=True)
    env.ok("rm", g4)


def test_planted_symlink_is_never_followed(env: Env, repo: Path, tmp_path: Path) -> None:
    secret = tmp_path / "outside-secret"
    secret.write_text("TOP-SECRET-CONTENT\n")
    secret.chmod(0o644)
    a, wt = spawn(env, repo, "link")
    sh(env, a, f"ln -s {secret} committed-link && git add committed-link && git commit -qm link")
    sh(env, a, f"ln -s {secret} loose-link")
    for args in (["diff", a], ["diff", a, "--uncommitted"]):
        out = env.ok(*args).out
        assert "TOP-SECRET-CONTENT" not in out and str(secret) in out
    env.ok("apply", a, cwd=repo)
    assert (repo / "committed-link").is_symlink() and (repo / "loose-link").is_symlink()
    assert secret.read_text() == "TOP-SECRET-CONTENT\n"
    git(repo, "reset", "-q", "--hard")
    git(repo, "clean", "-qfd")

    res = env.ok("rm", "--force", a)
    (ref,) = git(repo, "for-each-ref", "--format=%(refname)", f"refs/sandbox/backup/{a}/").split()
    assert git(repo, "cat-file", "-p", f"{ref}:loose-link") == str(secret)
    assert "TOP-SECRET" not in git(repo, "log", "-p", "--all")
    back = Path(env.ok("restore", a, cwd=repo).out.strip())
    assert os.readlink(back / "loose-link") == str(secret) and os.readlink(back / "committed-link") == str(secret)
    assert secret.read_text() == "TOP-SECRET-CONTENT\n"
    assert res.code == 0


@pytest.mark.claude
def test_claude_commit_then_diff_merge_rm(env: Env, repo: Path) -> None:
    name = env.ok("spawn", "--name", uniq("cl"), "--model", "sonnet", "write the task file", cwd=repo).out.strip()
    branch = f"sandbox/{name}"
    wait_for(lambda: env.ok("sync", name) and "SANDBOX_TASK.md" in git(repo, "ls-tree", "--name-only", branch),
             90, "Claude Code's commit")
    assert "+++ b/SANDBOX_TASK.md" in env.ok("diff", name).out
    env.ok("merge", name, "--squash", cwd=repo)
    assert (repo / "SANDBOX_TASK.md").read_text() == "# Task\n\nwrite the task file\n"
    env.ok("rm", name)  # squash-merged: no --force needed
    assert not exists(f"sandbox-{name}")


def test_workspace_signature_sees_every_change_and_follows_no_link(tmp_path: Path) -> None:
    """The snapshot a `diff` shows is taken again whenever anything in the workspace changed: an edit of
    the same size, a chmod, a rename, a new or removed file, a `touch -d` that sets the time back. Links
    are not followed; a tree too large, or changed too recently, has no signature (always a snapshot)."""
    import time

    from sandbox.workspace import sync

    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "a.py").write_text("a = 1\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws / "link").symlink_to(outside)
    old = time.time() - 60
    for path in (ws / "src" / "a.py", ws / "src", ws):
        os.utime(path, (old, old), follow_symlinks=False)

    def settled() -> str:
        time.sleep(sync.SETTLED_NS / 1e9 + 0.05)
        return sync.tree_signature(ws)

    first = settled()
    assert first and settled() == first  # (nothing changed: the same)
    (outside / "big").write_bytes(b"x" * 10000)  # (behind a link: not the workspace's)
    assert settled() == first
    changes = [
        lambda: (ws / "src" / "a.py").write_text("a = 2\n"),                 # the same size
        lambda: os.chmod(ws / "src" / "a.py", 0o600),
        lambda: os.utime(ws / "src" / "a.py", (old, old)),                   # the time set back
        lambda: (ws / "src" / "a.py").rename(ws / "src" / "b.py"),
        lambda: (ws / "new.txt").write_text(""),
        lambda: (ws / "new.txt").unlink(),
    ]
    seen = {first}
    for change in changes:
        change()
        now = settled()
        assert now and now not in seen, change
        seen.add(now)
    (ws / "fresh").write_text("just now")
    assert sync.tree_signature(ws) == ""  # (changed under SETTLED_NS ago)
    assert sync.tree_signature(tmp_path / "missing") == ""


@pytest.mark.slow
def test_diff_of_an_unchanged_agent_reuses_its_snapshot_and_a_change_is_never_missed(env: Env, repo: Path) -> None:
    import time

    from sandbox.workspace import sync

    name = env.ok("spawn", "--name", f"snap-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo).out.strip()
    try:
        env.ok("exec", name, "--", "sh", "-c", "echo one > notes.txt", cwd=repo)
        time.sleep(sync.SETTLED_NS / 1e9 + 0.2)
        first = env.ok("diff", name, cwd=repo).out
        assert "+one" in first
        wip = git(repo, "rev-parse", f"refs/sandbox/wip/{name}").strip()
        mark = env.data / "sync" / f"{name}.snapshot"
        assert mark.is_file()  # (the workspace as the snapshot saw it)
        taken = mark.stat().st_mtime_ns
        assert env.ok("diff", name, cwd=repo).out == first  # unchanged: the same review, from the snapshot
        assert mark.stat().st_mtime_ns == taken  # (no export ran: it would have written the mark again)
        assert git(repo, "rev-parse", f"refs/sandbox/wip/{name}").strip() == wip
        env.ok("exec", name, "--", "sh", "-c", "echo two > notes.txt", cwd=repo)  # (same size)
        got = env.ok("diff", name, cwd=repo).out  # (changed just now: no signature, a fresh snapshot)
        assert "+two" in got and "+one" not in got
        time.sleep(sync.SETTLED_NS / 1e9 + 0.2)
        env.ok("exec", name, "--", "sh", "-c", "echo six > notes.txt && touch -d '2000-01-01' notes.txt", cwd=repo)
        time.sleep(sync.SETTLED_NS / 1e9 + 0.2)
        assert "+six" in env.ok("diff", name, cwd=repo).out  # (a change with its time set back: seen)
    finally:
        env.run("rm", "-f", name, cwd=repo)
