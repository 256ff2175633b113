"""Starting agents: ``spawn`` (cold, warm from the pool, or --headless) and ``pool`` (the warm pool)."""

# (No `from __future__ import annotations` here: typer would evaluate every command's annotation strings
# on each run, ~10 ms.)

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sandbox.cli.common import RepoOpt, _err, _manager, app
from sandbox.errors import UsageError


@app.command()
def spawn(
    task: Annotated[Optional[str], typer.Argument(help="The task for the agent ('-' reads stdin).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model passed to the agent (e.g. sonnet).")] = None,
    agent: Annotated[Optional[str], typer.Option("--agent", "-a", help="claude (default), codex, gemini, aider.")] = None,
    agent_cmd: Annotated[Optional[str], typer.Option("--agent-cmd", help="Run any command instead of a preset.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", "-n", help="Agent name (default <model>-<n>).")] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="Start the branch from this revision (default HEAD).")] = None,
    repo: RepoOpt = None,
    profile: Annotated[Optional[str], typer.Option("--profile", help="default, locked (no network, read-only root) or isolated (the model and --allow hosts only, through proxies; the key stays outside).")] = None,
    allow: Annotated[Optional[list[str]], typer.Option("--allow", help="Isolated profile: also reach this host, *.domain, host:port or preset (pypi, npm, crates, debian, github); repeatable, adds to `allow` in config.")] = None,
    runtime: Annotated[Optional[str], typer.Option("--runtime", help="OCI runtime the engine knows (e.g. runsc); refused when it has none of that name.")] = None,
    image: Annotated[Optional[str], typer.Option("--image", help="Agent image (default sandbox-agent:latest).")] = None,
    mock_model: Annotated[Optional[str], typer.Option("--mock-model", help="auto (default: when no API key is set), on, off.")] = None,
    mock_script: Annotated[Optional[Path], typer.Option("--mock-script", help="JSON script for the mock model.")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once started, before the agent is ready.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the agent as JSON.")] = False,
    retries: Annotated[Optional[int], typer.Option("--retries", help="Restarts after a non-zero exit before `failed` (default 3).")] = None,
    max_agents: Annotated[Optional[int], typer.Option("--max-agents", help="Refuse (exit 5) when this many agents are starting/busy/waiting.")] = None,
    queue: Annotated[bool, typer.Option("--queue", help="With --max-agents: wait for a free slot instead of refusing.")] = False,
    max_time: Annotated[Optional[float], typer.Option("--max-time", help="Stop the agent after S seconds (work kept).")] = None,
    idle_timeout: Annotated[Optional[float], typer.Option("--idle-timeout", help="Stop the agent after S idle seconds (work kept).")] = None,
    headless: Annotated[bool, typer.Option("--headless", help="The image alone, as on Cloud Run: it clones --repo-url and pushes its branch there (no workspace here).")] = False,
    repo_url: Annotated[Optional[str], typer.Option("--repo-url", help="With --headless: the repository to clone and push to (no credentials in it).")] = None,
    push_branch: Annotated[Optional[str], typer.Option("--push-branch", help="With --headless: the branch pushed (default sandbox/NAME).")] = None,
    git_token_file: Annotated[Optional[Path], typer.Option("--git-token-file", help="With --headless: a file holding a token that may push (copied in, never in inspect).")] = None,
    max_cost: Annotated[Optional[float], typer.Option("--max-cost", help="Stop the agent (work kept) when its cost estimate passes USD (Claude Code).")] = None,
    trace: Annotated[bool, typer.Option("--trace", help="Print where the spawn's time went, step by step, on stderr.")] = False,
    port: Annotated[Optional[list[str]], typer.Option("--port", "--publish", "-p", help="Publish this container port on a free port of the host's 127.0.0.1, or HOST:CONTAINER on that one (repeatable; adds to `ports` in config; the agent gets $SANDBOX_PORT).")] = None,
    allow_copy: Annotated[bool, typer.Option("--allow-copy", help="Isolated profile: copy the [setup] copy files (your .env…) into the container anyway.")] = False,
) -> None:
    """Start an agent in its own container on a new workspace and branch (--headless: on a clone of --repo-url).

    Example: sandbox spawn --model sonnet "add login rate limiting"
    Example: sandbox spawn --headless --repo-url https://git.example/acme/app.git --git-token-file token.txt "fix the flaky test"
    """
    from sandbox.trace import Trace

    tracer = Trace() if trace else None
    if task == "-":  # (a long task: one argument holds at most 128 KiB)
        task = sys.stdin.read()
    script = None
    if mock_script is not None:
        try:
            script = json.loads(mock_script.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"--mock-script {mock_script}: {e}") from e
    if headless or repo_url is not None or push_branch is not None or git_token_file is not None:
        headless = headless or repo_url is not None  # (--repo-url: the clone mode, the only one on the swarm)
        if not (headless and repo_url):
            raise UsageError("--repo-url, --push-branch and --git-token-file go with --headless, which needs --repo-url")
        hmgr = _manager(repo, image=image, mock_model=mock_model, retries=retries, max_agents=max_agents,
                        max_time=max_time)
        say = (lambda m: _err(f"… {m}")) if sys.stderr.isatty() and not as_json else None
        sb = hmgr.spawn_headless(task, repo_url=repo_url, name=name, agent=agent, model=model, agent_cmd=agent_cmd,
                                 base=base, branch=push_branch, git_token_file=git_token_file, mock_script=script,
                                 wait_ready=not no_wait, on_step=say)
        _show_spawned(sb, as_json, f"  pushes:   {sb.branch} to {repo_url}", hmgr.settings.price_table())
        return
    from sandbox.config import load_settings, with_spawn_flags
    from sandbox.manager import SandboxManager

    mgr = SandboxManager(with_spawn_flags(
        load_settings(repo, profile=profile, image=image, mock_model=mock_model, retries=retries, max_agents=max_agents,
                      max_time=max_time, idle_timeout=idle_timeout, runtime=runtime, max_cost=max_cost),
        ports=port, allow=allow, allow_copy=allow_copy))
    if tracer:
        tracer.mark("settings")
    say = (lambda m: _err(f"… {m}")) if sys.stderr.isatty() and not as_json else None
    from sandbox.workspace.setup import SetupFailed

    try:
        sb = mgr.spawn(task, repo_path=repo, name=name, agent=agent, model=model, agent_cmd=agent_cmd, base=base,
                       mock_script=script, wait_ready=not no_wait, on_step=say, queue=queue, trace=tracer)
    except SetupFailed as e:  # its last lines (defanged), then the one error line
        for line in e.tail:
            _err(f"  setup | {line}")
        raise
    _show_spawned(sb, as_json, f"  branch:   {sb.branch}", mgr.settings.price_table())  # (no path: the workspace is the agent's)
    if tracer:
        tracer.mark("print")
        for line in tracer.lines():
            _err(line)


@app.command("pool")
def pool_cmd(
    size: Annotated[Optional[int], typer.Option("--size", help="Keep this many started, unclaimed containers for this repository (0: none).")] = None,
    image: Annotated[Optional[str], typer.Option("--image", help="Agent image (default sandbox-agent:latest).")] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", help="default or locked (the isolated profile has no pool).")] = None,
    repo: RepoOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the pool as JSON.")] = False,
    top_up: Annotated[Optional[str], typer.Option("--top-up", hidden=True, help="(run by spawn, detached) top pool KEY up.")] = None,
) -> None:
    """Keep a warm pool: started containers that `spawn` claims (same image, profile and settings), so an agent starts in a blink.

    Example: sandbox pool --size 3
    Example: sandbox pool            (what is pooled on this host; --size 0 empties this repository's pool)
    """
    from sandbox.spawn import warm
    from sandbox.workspace import git as gitops

    if top_up is not None:  # (the background top-up after a claim: the pool's own settings)
        warm.top_up(_manager(repo).settings.data_dir, top_up)
        return
    mgr = _manager(repo, image=image, profile=profile)
    if size is None:
        status = warm.status(mgr)
        if as_json:
            typer.echo(json.dumps(status, indent=2))
            return
        if not status["pools"]:
            _err("no warm pool on this host (`sandbox pool --size K` in a repository makes one)")
        for p in status["pools"]:
            typer.echo(f"{p['key']}  {p['ready']}/{p['size']} ready, {p['starting']} starting, {p['claimed']} claimed  "
                       f"{p['profile']}  {p['image']}  {p['repo']}")
        return
    say = (lambda m: _err(f"… {m}")) if sys.stderr.isatty() and not as_json else None
    found = gitops.find_repo(repo or Path.cwd())
    got = warm.set_size(mgr, found, size, {"image": image, "profile": profile}, on_step=say)
    if as_json:
        typer.echo(json.dumps(got, indent=2))
        return
    if not got["size"]:
        typer.echo(f"pool {got['key']}: empty ({mgr.settings.profile}, {mgr.settings.image}, {found.top})")
        return
    typer.echo(f"pool {got['key']}: {got['ready']}/{got['size']} ready ({got['profile']}, {got['image']}, {got['repo']})")


def _show_spawned(sb: Any, as_json: bool, where: str, prices: Any) -> None:
    """The new agent: its name on stdout (or all of it as JSON), where it works and how to attach on stderr."""
    if as_json:
        typer.echo(json.dumps(sb.to_json(prices), indent=2))
        return
    typer.echo(sb.name)
    ports = "".join(f"\n  port:     {p.container} -> {p.url}" for p in getattr(sb, "ports", ()))
    _err(f"{where}\n  state:    {sb.state}{ports}\n  attach:   {' '.join(sb.attach_command())}   (or: sandbox attach {sb.name})")
