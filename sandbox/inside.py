"""Runs inside the agent container (standard library only).

``python3 -m sandbox.inside init``    the container's main process (under tini): set up HOME,
                                      start the mock model if asked, start the tmux session
                                      running the agent, keep the state file, wait.
``python3 -m sandbox.inside hook EV`` Claude Code hook: turn an event into a state.
``python3 -m sandbox.inside health``  HEALTHCHECK: exit 0 while the session and agent live.

Inputs, copied in by the host before start: ``/var/lib/sandbox/launch.json`` (argv, task,
workdir, session, …) and ``/var/lib/sandbox/secrets.json`` (API keys, mode 0400). Output: the
state file ``/run/sandbox-state/state.json``, on a mount the host reads without an exec.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LAUNCH = Path("/var/lib/sandbox/launch.json")
SECRETS = Path("/var/lib/sandbox/secrets.json")
STATE_DIR = Path(os.environ.get("SANDBOX_STATE_DIR", "/run/sandbox-state"))
STATE = STATE_DIR / "state.json"
TMUX_CONF = "/tmp/sandbox-tmux.conf"
MOCK_KEY = "sk-ant-sandbox-mock-model-offline-0000"

# Claude Code hook event -> agent state.
HOOK_STATES = {
    "SessionStart": "idle",
    "UserPromptSubmit": "busy",
    "PreToolUse": "busy",
    "PostToolUse": "busy",
    "Notification": "waiting",
    "Stop": "idle",
    "SubagentStop": "busy",
}


def read_state() -> dict[str, Any]:
    try:
        return dict(json.loads(STATE.read_text()))
    except (OSError, ValueError):
        return {}


def write_state(state: str, **fields: Any) -> None:
    """Atomically replace the state file, keeping fields not given."""
    data = read_state()
    data.update(fields)
    data["state"] = state
    data["ts"] = time.time()
    tmp = STATE.with_name(f".state.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, STATE)


def tmux(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=check)


def _setup_home(launch: dict[str, Any], api_key: str | None) -> None:
    home = Path(os.environ.get("HOME", "/home/agent"))
    home.mkdir(parents=True, exist_ok=True)
    workdir = launch["workdir"]
    ident = launch.get("git_identity") or {}
    gitconfig = "[user]\n\tname = {}\n\temail = {}\n".format(
        ident.get("name") or f"sandbox agent {launch['name']}", ident.get("email") or "agent@sandbox.invalid"
    )
    (home / ".gitconfig").write_text(gitconfig)
    Path(TMUX_CONF).write_text(
        "set -g remain-on-exit on\nset -g history-limit 50000\nset -g default-terminal tmux-256color\n"
        "set -g status-right ' sandbox:#{session_name} '\n"
    )
    if not launch.get("claude"):
        return
    claude_json = home / ".claude.json"
    cfg: dict[str, Any] = {}
    if claude_json.exists():
        try:
            cfg = json.loads(claude_json.read_text())
        except ValueError:
            cfg = {}
    cfg.update({"hasCompletedOnboarding": True, "bypassPermissionsModeAccepted": True, "autoUpdates": False})
    if api_key:
        cfg["customApiKeyResponses"] = {"approved": [api_key[-20:]], "rejected": []}
    projects = cfg.setdefault("projects", {})
    projects.setdefault(workdir, {})["hasTrustDialogAccepted"] = True
    projects[workdir]["hasCompletedProjectOnboarding"] = True
    claude_json.write_text(json.dumps(cfg))
    hook_cmd = f"{sys.executable} -m sandbox.inside hook"
    hooks = {ev: [{"hooks": [{"type": "command", "command": f"{hook_cmd} {ev}"}]}] for ev in HOOK_STATES}
    settings_dir = home / ".claude"
    settings_dir.mkdir(exist_ok=True)
    (settings_dir / "settings.json").write_text(json.dumps({"hooks": hooks}))


def _start_mock(launch: dict[str, Any], env: dict[str, str]) -> None:
    ready = Path("/tmp/sandbox-mock.port")
    ready.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "sandbox.mockmodel", "--host", "127.0.0.1", "--port", "0",
            "--ready-file", str(ready), "--log", "/tmp/sandbox-mock.log"]
    script = launch.get("mock_script")
    if script:
        Path("/tmp/sandbox-mock-script.json").write_text(json.dumps(script))
        argv += ["--script", "/tmp/sandbox-mock-script.json"]
    subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    deadline = time.monotonic() + 15
    while not ready.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("mock model did not start")
        time.sleep(0.02)
    env["ANTHROPIC_BASE_URL"] = f"http://127.0.0.1:{ready.read_text().strip()}"
    env["ANTHROPIC_API_KEY"] = MOCK_KEY
    env.pop("ANTHROPIC_AUTH_TOKEN", None)


def _pane_status(session: str) -> tuple[bool, int | None]:
    """(session alive, exit status if the agent's process has exited)."""
    res = tmux("list-panes", "-t", f"={session}:", "-F", "#{pane_dead} #{pane_dead_status}", check=False)
    if res.returncode != 0:
        return False, None
    first = (res.stdout.split("\n") or [""])[0].split()
    if first and first[0] == "1":
        return True, int(first[1]) if len(first) > 1 and first[1].lstrip("-").isdigit() else -1
    return True, None


def init() -> int:
    launch = json.loads(LAUNCH.read_text())
    secrets: dict[str, str] = {}
    if SECRETS.exists():
        secrets = json.loads(SECRETS.read_text())
    session = launch["session"]
    env = dict(os.environ)
    env.update(secrets)
    previous = read_state()
    attempt = int(previous.get("attempt", 0)) + 1
    write_state("starting", attempt=attempt, exit_code=None, reason=None, prompts=0, event=None)

    def on_term(signum: int, frame: Any) -> None:
        write_state("stopped", reason="stopped")
        tmux("kill-server", check=False)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    argv = list(launch["argv"])
    if launch.get("mock_model"):
        _start_mock(launch, env)
    _setup_home(launch, env.get("ANTHROPIC_API_KEY"))
    os.environ.clear()
    os.environ.update(env)
    from shutil import which

    if which(argv[0]) is None:
        write_state("failed", reason=f"{argv[0]}: command not found in the image", exit_code=127)
        return 127
    tmux("-f", TMUX_CONF, "new-session", "-d", "-s", session, "-x", "200", "-y", "50", "-c", launch["workdir"],
         "--", *argv)
    if launch.get("delivery") == "type" and launch.get("task"):
        task = launch["task"]  # a trailing ";" would be a tmux separator: escape it (see sandbox.tmux.literal)
        tmux("set-buffer", "-b", "sandbox-task", "--", task[:-1] + "\\;" if task.endswith(";") else task)
        tmux("paste-buffer", "-p", "-d", "-r", "-b", "sandbox-task", "-t", f"={session}:")
        tmux("send-keys", "-t", f"={session}:", "Enter")
    if not launch.get("claude"):
        write_state("ready")  # Claude Code reports readiness itself, through its hooks.
    while True:
        alive, code = _pane_status(session)
        if not alive:
            write_state("exited", reason="session ended")
            return 0
        if code is not None:
            if read_state().get("state") != "exited":
                write_state("exited", exit_code=code, reason=f"agent exited with {code}")
        time.sleep(0.5)


def hook(event: str) -> int:
    try:
        sys.stdin.read()
    except OSError:
        pass
    state = HOOK_STATES.get(event)
    if state is None:
        return 0
    prompts = int(read_state().get("prompts", 0))
    if event == "UserPromptSubmit":
        prompts += 1
    elif event == "SessionStart" and prompts == 0:
        # A task given as the prompt argument is submitted right after start: busy, not idle.
        launch = json.loads(LAUNCH.read_text())
        if launch.get("task") and launch.get("delivery") == "arg":
            state = "busy"
    write_state(state, event=event, prompts=prompts)
    return 0


def health() -> int:
    session = json.loads(LAUNCH.read_text())["session"]
    alive, code = _pane_status(session)
    return 0 if alive and code is None else 1


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python3 -m sandbox.inside init|hook EVENT|health", file=sys.stderr)
        return 2
    if argv[0] == "init":
        return init()
    if argv[0] == "hook":
        return hook(argv[1] if len(argv) > 1 else "")
    if argv[0] == "health":
        return health()
    print(f"unknown command {argv[0]!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
