"""The agent is the adversary, round two: nothing the host starts in its container runs the agent's code.

An agent can write its HOME (a Python user site: ``usercustomize.py``, ``.pth`` files; ``~/.gitconfig``),
its working directory, and it can signal its own processes. ``sandbox doctor`` proves the profile from
outside (the engine, the host's ``/proc``), the export runs the isolated interpreter with git by absolute
path and no global config, and ``ls`` never waits on an agent whose export hangs. Each command here is
bounded in time (subprocess timeouts), so a host command that blocks fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import RUN_ID, Env

pytestmark = pytest.mark.slow
BOUND = 60  # seconds: any one command
SITE = "$HOME/.local/lib/python3.11/site-packages"
MARKER = "/run/sandbox-state/agent/planted-ran"   # the agent's side of the state dir: the test reads it on the host

# What a hostile agent plants in its user site (and what the host's old `python3 -m sandbox.inside …`
# ran first): fake the doctor's facts as a locked container's, make every export hang. Either leaves
# a marker line on the host side of the state dir.
USERCUSTOMIZE = f"""
import json, os, sys, time
with open({MARKER!r}, "a") as f:
    f.write("usercustomize " + " ".join(sys.argv) + "\\n")
try:
    import sandbox.inside.facts as facts
    def fake(argv):
        print(json.dumps({{"uid": 1000, "gid": 1000, "cap_eff": 0, "no_new_privs": True, "seccomp": 2,
                          "read_only_root": True, "writable_mounts": [], "interfaces": ["lo"],
                          "docker_socket": False, "workspace_writable": True, "etc_writable": False}}))
        return 0
    facts.facts = fake
except Exception:
    pass
try:
    import sandbox.inside.export as export
    export.export = lambda argv: time.sleep(3600)
except Exception:
    pass
"""
PTH = f'import os; open({MARKER!r}, "a").write("pth\\n")\n'


def sh(env: Env, name: str, script: str) -> str:
    res = env.run("exec", name, "--", "sh", "-c", script, timeout=BOUND)
    assert res.code == 0, f"{script}: {res.err}"
    return res.out


def plant_user_site(env: Env, name: str) -> None:
    """The user site, a global git filter on every file, and a file for the export to snapshot."""
    sh(env, name, f"mkdir -p {SITE} && printf %s {shlex.quote(USERCUSTOMIZE)} > {SITE}/usercustomize.py && "
                  f"printf %s {shlex.quote(PTH)} > {SITE}/zz-planted.pth && "
                  f"git config --global filter.evil.clean 'echo gitconfig >> {MARKER}; cat' && "
                  "printf '* filter=evil\\n' > .gitattributes && echo planted-work > planted.txt")
    # the attack is real: any ordinary python3 of the agent's runs the planted code first
    sh(env, name, "python3 -c pass")
    assert "usercustomize" in (env.data / "state" / name / "agent" / "planted-ran").read_text()
    (env.data / "state" / name / "agent" / "planted-ran").unlink()


def checks(env: Env, name: str, *flags: str) -> tuple[int, dict[str, dict]]:
    res = env.run("doctor", name, "--json", *flags, timeout=BOUND)
    return res.code, {c["check"]: c for c in json.loads(res.out)}


def test_planted_user_site_fakes_no_doctor_and_runs_in_no_export(env: Env, repo: Path) -> None:
    default = env.ok("spawn", "--name", f"hd-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo,
                     timeout=120).out.strip()
    locked = env.ok("spawn", "--name", f"hl-{uuid.uuid4().hex[:6]}", "--profile", "locked", "--agent-cmd", "bash",
                    cwd=repo, timeout=120).out.strip()
    try:
        for name in (default, locked):
            plant_user_site(env, name)
        # doctor --as locked on a default agent: still the two failing properties, whatever it planted
        code, found = checks(env, default, "--as", "locked")
        assert code == 1, found
        assert [n for n, c in found.items() if not c["ok"]] == ["read-only root filesystem", "no network (only lo)"]
        assert "kernel" in found["no capabilities"]["seen"]  # proved from the host's /proc, not from inside
        code, found = checks(env, default)
        assert code == 0, found
        code, found = checks(env, locked)  # a locked agent still passes, planted files and all
        assert code == 0 and "read-only root filesystem" in found, found
        # the export works with the planted files present: its snapshot holds the planted file, in time
        started = time.monotonic()
        res = env.run("diff", default, cwd=repo, timeout=BOUND)
        assert res.code == 0 and "planted-work" in res.out, res.err
        assert time.monotonic() - started < 30
        rows = {r["name"]: r for r in env.ok("ls", "--json", cwd=repo, timeout=BOUND).json()}
        assert rows[default]["stale"] is None and rows[locked]["stale"] is None
        # and the planted code never ran in anything the host started
        for name in (default, locked):
            assert not (env.data / "state" / name / "agent" / "planted-ran").exists(), \
                (env.data / "state" / name / "agent" / "planted-ran").read_text()
    finally:
        env.run("rm", "--force", default, locked, cwd=repo, timeout=BOUND)


def test_ls_never_waits_on_a_hung_export_and_diff_fails_in_time(env: Env, repo: Path) -> None:
    """The export runs as the agent's uid (it reads the agent's files): the agent can stop it (SIGSTOP
    from a loop of its own). ``ls`` lists it within its bound, marked stale with the reason; ``diff``
    gives one error, exit 8, within ``sync_timeout``."""
    hung = env.ok("spawn", "--name", f"hh-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo,
                  timeout=120).out.strip()
    fine = env.ok("spawn", "--name", f"hf-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo,
                  timeout=120).out.strip()
    try:
        env.ok("ls", cwd=repo, timeout=BOUND)  # both read once: nothing new to fetch
        stopper = "while :; do pkill -STOP -f sandbox[.]inside.*export; sleep 0.05; done"
        sh(env, hung, f"nohup sh -c {shlex.quote(stopper)} >/dev/null 2>&1 & "
                      "git -c user.name=a -c user.email=a@b commit -q --allow-empty -m moved")
        sh(env, fine, "git -c user.name=a -c user.email=a@b commit -q --allow-empty -m moved")
        started = time.monotonic()
        res = env.run("ls", "--json", cwd=repo, timeout=BOUND)
        took = time.monotonic() - started
        assert res.code == 0, res.err
        rows = {r["name"]: r for r in res.json()}
        assert took < 25, took  # one bound (10 s) for all, side by side
        assert rows[hung]["stale"] and "timed out" in rows[hung]["stale"], rows[hung]
        assert rows[fine]["stale"] is None, rows[fine]
        table = env.run("ls", cwd=repo, timeout=BOUND)
        line = next(ln for ln in table.out.splitlines() if ln.startswith(hung))
        assert table.code == 0 and "[stale: " in line, table.out
        started = time.monotonic()
        res = env.run("diff", hung, cwd=repo, timeout=BOUND, extra={"SANDBOX_SYNC_TIMEOUT": "5"})
        assert res.code == 8 and "timed out" in res.err and len(res.err.strip().splitlines()) <= 2, res.err
        assert time.monotonic() - started < 20
    finally:
        env.run("exec", hung, "--", "sh", "-c", "pkill -f 'while :; do pkill'; pkill -CONT -f 'sandbox[.]inside'",
                timeout=BOUND)
        env.run("rm", "--force", hung, fine, cwd=repo, timeout=BOUND, extra={"SANDBOX_SYNC_TIMEOUT": "10"})


def test_send_wait_timeout_holds_on_a_forged_starting_state(env: Env, repo: Path) -> None:
    """The agent keeps its state file saying ``starting``: ``send --wait --timeout 5`` gives up after
    about 5 s (exit 9), not after the ready timeout (120 s in the tests, 90 s by default)."""
    name = env.ok("spawn", "--name", f"hs-{uuid.uuid4().hex[:6]}", "--agent-cmd", "bash", cwd=repo,
                  timeout=120).out.strip()
    try:
        # its init stopped, so that nothing writes the state file again; then the forgery. (The agent
        # itself can do neither any more — its supervisor is root's: tests/test_hostile_uids.py — so root
        # in the container stands in: a state stuck at `starting`, however it came about.)
        subprocess.run(["docker", "exec", "-u", "0", f"sandbox-{name}", "sh", "-c",
                        "pkill -STOP -f 'sandbox[.]inside init' && cd /run/sandbox-state && "
                        "printf '{\"state\": \"starting\", \"ts\": %s}' \"$(date +%s)\" > .f && mv -f .f state.json"],
                       check=True, capture_output=True, timeout=BOUND)
        assert env.ok("ls", "--json", cwd=repo, timeout=BOUND).json()[0]["state"] == "starting"
        started = time.monotonic()
        res = env.run("send", name, "echo hi", "--wait", "--timeout", "5", cwd=repo, timeout=40)
        took = time.monotonic() - started
        assert res.code == 9 and "still starting after 5s" in res.err, (res.code, res.err)
        assert took < 20, took
    finally:
        subprocess.run(["docker", "exec", "-u", "0", f"sandbox-{name}", "pkill", "-CONT", "-f", "sandbox[.]inside init"],
                       capture_output=True, timeout=BOUND)
        env.run("rm", "--force", name, cwd=repo, timeout=BOUND)


def _caught(pid: int) -> int:
    """The signals a host process catches (its SigCgt mask), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def test_headless_sigterm_at_any_point_exits_7(agent_image: str) -> None:
    """A headless run stopped early — while its init is still importing (today's code caught SIGTERM only
    from headless.main on: 143 for ~0.5 s on a busy host), or while it reaches a remote that never
    answers — exits 7 (README "Run anywhere": "any point -> 7"). The kills are timed from the moment the
    interpreter's own start-up is done (it catches SIGINT: host /proc, SigCgt). What is left: a SIGTERM
    before the interpreter runs its first line (README)."""
    term, intr = 1 << 14, 1 << 1  # SIGTERM (15), SIGINT (2)
    label = ["--label", f"sandbox.run-id={RUN_ID}"]
    server = subprocess.run(["docker", "run", "-d", *label, "--entrypoint", "python3", agent_image, "-c",
                             "import socket\ns = socket.socket(); s.bind(('0.0.0.0', 8080)); s.listen(); c = []\n"
                             "while True: c.append(s.accept())"],
                            capture_output=True, text=True, check=True, timeout=BOUND).stdout.strip()
    made = [server]
    try:
        ip = subprocess.run(["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", server],
                            capture_output=True, text=True, check=True, timeout=BOUND).stdout.strip()
        codes = []
        codes = []
        for after in (0.1, 0.25, 1.5):
            c = subprocess.run(["docker", "create", *label, "-e", f"SANDBOX_REPO=http://{ip}:8080/x.git",
                                "-e", "SANDBOX_TASK=x", "-e", "SANDBOX_MOCK_MODEL=1", "--read-only", "--tmpfs", "/tmp",
                                agent_image], capture_output=True, text=True, check=True, timeout=BOUND).stdout.strip()
            made.append(c)
            subprocess.run(["docker", "start", c], capture_output=True, check=True, timeout=BOUND)
            tini = int(subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", c], capture_output=True,
                                      text=True, check=True, timeout=BOUND).stdout)
            deadline, init = time.monotonic() + 20, 0
            while time.monotonic() < deadline:  # the init (tini's child) past the interpreter's start-up
                kids = Path(f"/proc/{tini}/task/{tini}/children").read_text().split()
                if kids and _caught(int(kids[0])) & intr:
                    init = int(kids[0])
                    break
                time.sleep(0.002)
            time.sleep(after)
            mask = _caught(init)
            subprocess.run(["docker", "kill", "-s", "TERM", c], capture_output=True, timeout=BOUND)
            code = subprocess.run(["docker", "wait", c], capture_output=True, text=True, timeout=BOUND).stdout.strip()
            codes.append((after, bool(init), bool(mask & term), code))
        assert all(seen for _, seen, _, _ in codes) and {code for *_, code in codes} == {"7"}, codes
    finally:
        subprocess.run(["docker", "rm", "-f", *made], capture_output=True, timeout=BOUND)
