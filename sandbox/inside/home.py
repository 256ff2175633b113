"""The container's HOME and tmux configuration, made by the init before any pane runs: Claude Code's
settings (its hooks, the onboarding done), the supervisor's tmux.conf and its wake hooks, and the offline
mock model when the launch document asks for it (standard library only)."""

from __future__ import annotations

import json
import os
import sys
import time

from sandbox import contract as C
from sandbox import inside as I
from sandbox.inside import HOOK_STATES, SUP_DIR, TMUX_CONF, WAKE_SIGNAL, _read, _replace, _write, agent_argv, tmux

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MOCK_KEY = "sk-ant-sandbox-mock-model-offline-0000"


def _setup_home(launch: C.Launch, api_key: str | None) -> None:
    home = os.environ.get("HOME", "/home/agent")
    os.makedirs(home, exist_ok=True)
    workdir = launch.workdir
    ident = launch.git_identity
    gitconfig = "[user]\n\tname = {}\n\temail = {}\n".format(
        ident.get("name") or f"sandbox agent {launch.name}", ident.get("email") or "agent@sandbox.invalid"
    )
    _write(os.path.join(home, ".gitconfig"), gitconfig)
    if not launch.claude:
        return
    # Claude Code's own files (settings, first-run answers, conversations) live on the state mount
    # (CLAUDE_CONFIG_DIR, see ``claude_dir``): they survive a restart of the container even where
    # $HOME is a tmpfs (locked, isolated), so a restarted agent resumes its conversation.
    config_dir = claude_dir()
    os.makedirs(config_dir, exist_ok=True)
    for claude_json in (os.path.join(config_dir, ".claude.json"), os.path.join(home, ".claude.json")):
        cfg = _json_object(claude_json)
        cfg.update({"hasCompletedOnboarding": True, "bypassPermissionsModeAccepted": True, "autoUpdates": False})
        if api_key:
            cfg["customApiKeyResponses"] = {"approved": [api_key[-20:]], "rejected": []}
        projects = cfg.setdefault("projects", {})
        projects.setdefault(workdir, {})["hasTrustDialogAccepted"] = True
        projects[workdir]["hasCompletedProjectOnboarding"] = True
        _replace(claude_json, json.dumps(cfg))
    hook_cmd = f"{sys.executable} -m sandbox.inside hook"
    hooks = {ev: [{"hooks": [{"type": "command", "command": f"{hook_cmd} {ev}"}]}] for ev in HOOK_STATES}
    # Merged into what Claude Code wrote: on its first start it moves `bypassPermissionsModeAccepted`
    # out of .claude.json into settings.json as `skipDangerousModePermissionPrompt` (a migration it
    # runs once); rewriting settings.json without that key brought the "Bypass Permissions mode"
    # dialog back on every restart.
    settings_path = os.path.join(config_dir, "settings.json")
    settings = _json_object(settings_path)
    settings.update({"hooks": hooks, "skipDangerousModePermissionPrompt": True})
    _replace(settings_path, json.dumps(settings))


def write_tmux_conf(pid: int) -> None:
    """The tmux server's config, the supervisor's own (the agent cannot reach the server: its socket is
    under ``SUP_DIR``): no clipboard writes (OSC 52) and no passthrough from a pane to the terminal of
    whoever attaches, set before any pane runs."""
    _replace(TMUX_CONF,
        "set -g remain-on-exit on\nset -g scroll-on-clear on\nset -g history-limit 50000\nset -g default-terminal tmux-256color\n"
        "set -g set-clipboard off\nset -g allow-passthrough off\n"
        "set -g status-right ' sandbox:#{session_name} '\n"
        + tmux_wake_conf(pid)
    )


def tmux_wake_conf(pid: int) -> str:
    """The tmux hooks that wake the supervisor: the pane died, keys were sent or pasted into it
    (`sandbox send`), a client attached (never parked then), and the activity alert (armed only
    while parked: ``PARK``; it disarms itself, as it fires once per arming)."""
    wake = f'run-shell -b "kill -{WAKE_SIGNAL.name[3:]} {pid}"'
    hooks = {"pane-died": wake, "after-send-keys": wake, "after-paste-buffer": wake,
             "client-attached": f"set -w monitor-activity off ; {wake}",
             "alert-activity": f"set -w monitor-activity off ; {wake}"}
    return "set -g activity-action any\nset -g visual-activity off\n" + "".join(
        f"set-hook -g {event} '{cmd}'\n" for event, cmd in hooks.items())


def claude_dir() -> str:
    """Claude Code's config dir in the container (``CLAUDE_CONFIG_DIR``): the agent's side of the state mount."""
    return os.path.join(I.AGENT_DIR, "claude")


def _json_object(path: str) -> dict[str, Any]:
    try:
        value = json.loads(_read(path))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _start_mock(launch: C.Launch, env: dict[str, str]) -> None:
    ready = "/tmp/sandbox-mock.port"
    if os.path.exists(ready):
        os.unlink(ready)
    argv = [sys.executable, "-m", "sandbox.inside.mockmodel", "--host", "127.0.0.1", "--port", "0",
            "--ready-file", ready, "--log", "/tmp/sandbox-mock.log"]
    script = launch.mock_script
    if script:
        _write("/tmp/sandbox-mock-script.json", json.dumps(script))
        argv += ["--script", "/tmp/sandbox-mock-script.json"]
    argv = agent_argv(argv)  # (the agent's, as a model server on the internet would be: never root)
    null = os.open(os.devnull, os.O_RDWR)
    os.posix_spawnp(argv[0], argv, os.environ, setsid=True, file_actions=[
        (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)])
    os.close(null)
    deadline = time.monotonic() + 15
    while not os.path.exists(ready):
        if time.monotonic() > deadline:
            raise RuntimeError("mock model did not start")
        time.sleep(0.02)
    env["ANTHROPIC_BASE_URL"] = f"http://127.0.0.1:{_read(ready).strip()}"
    env["ANTHROPIC_API_KEY"] = MOCK_KEY
    env.pop("ANTHROPIC_AUTH_TOKEN", None)
