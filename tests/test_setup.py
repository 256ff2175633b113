"""`[setup]` (issue 28, README "Setup"): `run` in the agent's container before the agent, `copy` of
gitignored files of the main checkout into the workspace, never into a commit or a WIP snapshot.

Real engine, real git, real tmux: shell agents (`--agent-cmd bash`), their files read through `sandbox exec`.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import RUN_ID, TEST_USER, Env, git, leftovers, wait_for

pytestmark = pytest.mark.slow


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def user_config(env: Env, text: str) -> None:
    path = Path(env.env["XDG_CONFIG_HOME"]) / "sandbox" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def spawn(env: Env, repo: Path, prefix: str, *extra: str) -> str:
    return env.ok("spawn", "--name", uniq(prefix), "--agent-cmd", "bash", *extra, cwd=repo).out.strip()


def sh(env: Env, name: str, script: str) -> str:
    res = env.run("exec", name, "--", "sh", "-c", script)
    assert res.code == 0, f"{script}: {res.err}"
    return res.out


def nothing_left(env: Env, repo: Path) -> None:
    assert leftovers(env, repo) == {"containers": [], "workspaces": [], "branches": [], "registered": []}


def test_setup_runs_as_the_agent_in_the_workspace_before_it_and_its_output_is_in_the_logs(env: Env, repo: Path) -> None:
    # the repository's own file: [setup] needs trust (it runs code the repository chose, before any agent decides)
    (repo / ".sandbox.toml").write_text('[setup]\nrun = "echo hello-from-setup; id -u > setup-uid; pwd > setup-pwd; '
                                        'test ! -e agent-started && touch made-by-setup"\n')
    res = env.run("spawn", "--agent-cmd", "bash", "--name", uniq("stp"), cwd=repo)
    assert res.code == 2 and "is not trusted and sets setup" in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1
    nothing_left(env, repo)
    env.ok("trust", cwd=repo)
    name = env.ok("spawn", "--agent-cmd", "bash -c 'touch agent-started; exec bash'", "--name", uniq("stp"),
                  cwd=repo).out.strip()
    try:
        files = sh(env, name, "ls")
        assert "made-by-setup" in files.split() and "agent-started" in files.split()  # (setup first, then the agent)
        uid = int(sh(env, name, "cat setup-uid"))
        assert uid != 0 and uid == int(sh(env, name, "id -u"))  # the agent's uid, never root
        where = sh(env, name, "cat setup-pwd").strip()
        assert where == env.ok("ls", "--json", cwd=repo).json()[0]["workspace"]
        logs = env.ok("logs", name).out
        assert "hello-from-setup" in logs and "sandbox: setup done" in logs
        state = json.loads((env.data / "state" / name / "state.json").read_text())
        assert state["setup"]["exit_code"] == 0 and state["state"] in ("busy", "idle", "ready")
    finally:
        env.run("rm", "--force", name, cwd=repo)


def test_a_failing_setup_fails_the_spawn_with_its_last_lines_and_leaves_nothing(env: Env, repo: Path) -> None:
    user_config(env, '[setup]\nrun = "echo step-one; echo the-last-words >&2; exit 7"\n')
    res = env.run("spawn", "--agent-cmd", "bash", "--name", uniq("stf"), cwd=repo)
    assert res.code == 8, res
    assert "setup failed (exit 7): the-last-words" in res.err
    assert "setup | step-one" in res.err and "setup | the-last-words" in res.err
    assert res.err.strip().splitlines()[-1].startswith("sandbox: error: ")
    nothing_left(env, repo)


def test_setup_runs_again_after_a_restart_only_with_rerun(env: Env, repo: Path) -> None:
    once, every = uniq("sto"), uniq("ste")
    user_config(env, '[setup]\nrun = "echo ran >> setup-runs"\n')
    env.ok("spawn", "--agent-cmd", "bash", "--name", once, cwd=repo)
    user_config(env, '[setup]\nrun = "echo ran >> setup-runs"\nrerun = true\n')
    env.ok("spawn", "--agent-cmd", "bash", "--name", every, cwd=repo)
    try:
        for name in (once, every):
            assert sh(env, name, "cat setup-runs").split() == ["ran"]
            env.ok("restart", name, cwd=repo)
        assert sh(env, once, "cat setup-runs").split() == ["ran"]
        assert sh(env, every, "cat setup-runs").split() == ["ran", "ran"]
    finally:
        env.run("rm", "--force", once, every, cwd=repo)


def test_copied_files_are_in_the_workspace_and_in_no_commit_or_snapshot(env: Env, repo: Path) -> None:
    (repo / ".gitignore").write_text(".env\nconfig/local.yml\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-qm", "ignore")
    (repo / ".env").write_text("SECRET=hunter2-env\n")
    (repo / ".env").chmod(0o600)
    (repo / "config").mkdir()
    (repo / "config" / "local.yml").write_text("password: hunter2-yml\n")
    user_config(env, '[setup]\ncopy = [".env", "config/local.yml"]\n')
    name = spawn(env, repo, "cpy")
    try:
        assert sh(env, name, "cat .env") == "SECRET=hunter2-env\n"
        assert sh(env, name, "cat config/local.yml") == "password: hunter2-yml\n"
        assert sh(env, name, "stat -c %a .env").strip() == "600"  # (its mode kept; the agent's uid owns it)
        # the agent un-ignores them and commits everything, then leaves more uncommitted work
        sh(env, name, ": > .gitignore; git add -A; git commit -qm 'all of it'; echo work > new.txt; "
                      "echo 'SECRET=changed-hunter2' > .env")
        assert ".env" not in sh(env, name, "git show --stat --format= HEAD")
        diff = env.ok("diff", name, cwd=repo).out
        assert "new.txt" in diff and ".gitignore" in diff
        assert "hunter2" not in diff and "+++ b/.env" not in diff and "b/config/local.yml" not in diff
        for ref in (f"sandbox/{name}", f"refs/sandbox/wip/{name}"):
            tree = git(repo, "ls-tree", "-r", "--name-only", ref).split()
            assert "new.txt" in tree or ref.startswith("sandbox/")
            assert ".env" not in tree and "config/local.yml" not in tree, (ref, tree)
        assert "hunter2" not in git(repo, "log", "--all", "-p")
    finally:
        env.run("rm", "--force", name, cwd=repo)


def test_bad_copy_paths_exit_2_before_anything_is_made(env: Env, repo: Path, tmp_path: Path) -> None:
    (repo / ".gitignore").write_text("link-out\nlinked-dir\nsecret-dir/\nmissing.env\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-qm", "ignore")
    outside = tmp_path / "outside-secret"
    outside.write_text("not yours\n")
    (repo / "link-out").symlink_to(outside)
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "f").write_text("x\n")
    (repo / "linked-dir").symlink_to(tmp_path / "outdir")
    (repo / "secret-dir").mkdir()
    (repo / "notignored.txt").write_text("x\n")
    cases = {
        "/etc/passwd": "is absolute",
        "../outside-secret": "leaves the repository",
        ".git/config": "inside .git",
        "link-out": "link-out is a symbolic link",
        "linked-dir/f": "linked-dir is a symbolic link",
        "secret-dir": "not a regular file",
        "README.md": "README.md is tracked by git",
        "notignored.txt": "notignored.txt is not ignored by git",
        "missing.env": "missing.env does not exist",
    }
    for path, says in cases.items():
        user_config(env, f"[setup]\ncopy = [{json.dumps(path)}]\n")
        res = env.run("spawn", "--agent-cmd", "bash", "--name", uniq("bad"), cwd=repo)
        assert res.code == 2 and says in res.err, (path, res)
        assert len(res.err.strip().splitlines()) == 1, res.err
        nothing_left(env, repo)
    assert not (env.data / "state").exists() or not any((env.data / "state").iterdir())


def test_the_isolated_profile_refuses_copy_without_allow_copy(env: Env, repo: Path) -> None:
    (repo / ".gitignore").write_text(".env\n")
    (repo / ".env").write_text("SECRET=1\n")
    user_config(env, '[setup]\ncopy = [".env"]\n')
    res = env.run("spawn", "--profile", "isolated", "--agent-cmd", "bash", "--name", uniq("iso"), cwd=repo)
    assert res.code == 2 and "isolated profile keeps your files out" in res.err and "--allow-copy" in res.err
    nothing_left(env, repo)


def test_a_setup_past_its_timeout_is_killed_and_fails_the_spawn(env: Env, repo: Path) -> None:
    user_config(env, '[setup]\nrun = "echo waiting; sleep 120"\ntimeout = 2\n')
    res = env.run("spawn", "--agent-cmd", "bash", "--name", uniq("stt"), cwd=repo, timeout=60)
    assert res.code == 8 and "setup failed (timed out after 2s): waiting" in res.err, res
    nothing_left(env, repo)


def test_a_warm_pool_spawn_copies_and_runs_setup_too(env: Env, repo: Path) -> None:
    (repo / ".gitignore").write_text(".env\n")
    (repo / ".env").write_text("WARM=1\n")
    user_config(env, '[setup]\nrun = "cat .env > from-setup"\ncopy = [".env"]\n')
    assert env.ok("pool", "--size", "1", "--json", cwd=repo).json()["ready"] == 1
    pooled = subprocess.run(["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=sandbox.run-id={RUN_ID}",
                             "--filter", "label=sandbox.pool"], capture_output=True, text=True).stdout.split()
    try:
        out = env.ok("spawn", "--agent-cmd", "bash", "--name", uniq("wrm"), "--json", cwd=repo).json()
        assert out["container_id"] in pooled  # (a claimed pool container, not a new one)
        assert sh(env, out["name"], "cat from-setup") == "WARM=1\n"
        env.run("rm", "--force", out["name"], cwd=repo)
    finally:
        env.run("pool", "--size", "0", cwd=repo)


def test_copy_and_setup_for_a_non_root_user(unprivileged: Env) -> None:
    """The copied file is the agent's (its own uid, never the user's), as every file of its workspace."""
    env = unprivileged
    repo = env.root / "repo"
    (repo / ".gitignore").write_text(".env\n")
    (repo / ".env").write_text("USER_SECRET=hunter2\n")
    (repo / ".env").chmod(0o600)
    user_config(env, '[setup]\nrun = "cp .env seen-by-setup"\ncopy = [".env"]\n')
    subprocess.run(["chown", "-R", f"{TEST_USER}:{TEST_USER}", str(env.root)], check=True)
    name = env.ok("spawn", "--agent-cmd", "bash", "--name", uniq("usr"), cwd=repo).out.strip()
    try:
        assert sh(env, name, "cat seen-by-setup") == "USER_SECRET=hunter2\n"
        assert sh(env, name, "stat -c %u .env").strip() == sh(env, name, "id -u").strip()
        diff = env.ok("diff", name, cwd=repo).out
        assert "seen-by-setup" in diff and "+++ b/.env" not in diff
    finally:
        env.run("rm", "--force", name, cwd=repo)


def test_claude_code_starts_after_its_setup_in_the_same_pane(env: Env, repo: Path) -> None:
    user_config(env, '[setup]\nrun = "echo prepared > prepared.txt; echo setup-for-claude"\n')
    name = env.ok("spawn", "--name", uniq("stc"), "write the task file", cwd=repo).out.strip()  # (the offline model)
    try:
        assert sh(env, name, "cat prepared.txt") == "prepared\n"
        logs = env.ok("logs", name).out
        assert logs.index("setup-for-claude") < logs.index("Claude Code")
        wait_for(lambda: "Done: wrote SANDBOX_TASK.md" in env.ok("logs", name).out, 90, "the agent's answer")
    finally:
        env.run("rm", "--force", name, cwd=repo)
