"""The host's own things: the ``image``, ``config``, ``mcp`` and ``server`` groups, ``trust`` (the
repository's settings file) and ``mock-model``."""

# (No `from __future__ import annotations` here: typer would evaluate every command's annotation strings
# on each run, ~10 ms.)

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from sandbox.cli.common import RepoOpt, _err, _manager, app
from sandbox.errors import UsageError

# The groups (`app.add_typer` in __init__: after every command, in the order of `sandbox --help`)
image_app = typer.Typer(help="Build and inspect the agent image.", no_args_is_help=True)
config_app = typer.Typer(help="Show the effective settings.", no_args_is_help=True)
mcp_app = typer.Typer(invoke_without_command=True)  # (its help: mcp_serve's docstring)
server_app = typer.Typer(help="The per-user command server (README \"The command server\").", no_args_is_help=True)


@image_app.command("build")
def image_build(
    offline: Annotated[bool, typer.Option("--offline/--online", help="Offline: base from Debian packages with debootstrap (default). Online: FROM --base.")] = True,
    base: Annotated[Optional[str], typer.Option("--base", help="Base image for --online (default debian:bookworm-slim).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when up to date.")] = False,
    with_proxy: Annotated[bool, typer.Option("--proxy", help="Also the isolated profile's proxy image (nginx + squid, offline).")] = False,
    repo: RepoOpt = None,
) -> None:
    """Build the agent image (reused when its inputs did not change), and the repository's
    toolchain image when its .sandbox.toml has a [toolchain] (README "Toolchain").

    Example: sandbox image build --offline --proxy
    """
    from sandbox import configfiles, image, proxy
    from sandbox.config import settings_from
    from sandbox.engine import Engine

    files = configfiles.checked(repo)
    settings = settings_from(files.values, {})
    engine = Engine()
    tc = image.toolchain_of(settings, files.top)  # (read first: a bad [toolchain] is refused before any build)
    if tc is not None:
        image.require_base(engine, tc)
    image_id = image.build_agent(engine, settings, offline=offline, base=base, force=force, on_line=_err)
    typer.echo(f"{settings.image} {image_id[:19]}")
    if tc is not None:
        ref, tc_id = image.toolchain_image(engine, settings, tc, force=force, on_line=_err)
        typer.echo(f"{ref} {tc_id[:19]}")
    if with_proxy:
        typer.echo(f"{proxy.IMAGE} {image.build_proxy(engine, proxy.IMAGE, force=force, on_line=_err)[:19]}")


@image_app.command("push-to-nodes")
def image_push_to_nodes() -> None:
    """Put the agent image on every node of the swarm (save/load through each node's Docker context,
    or a push to `image_registry` when it is set).

    Example: sandbox --engine swarm image push-to-nodes
    """
    from sandbox.engine.swarm import push_to_nodes

    mgr = _manager()
    missing = push_to_nodes(mgr.swarm, mgr.settings.image, mgr.settings.image_registry, _err)
    for line in missing:
        _err(f"sandbox: error: {line}")
    if missing:
        raise typer.Exit(1)


@image_app.command("status")
def image_status(repo: RepoOpt = None) -> None:
    """Show whether the agent image exists and is up to date, and which image the repository's
    agents get and why (`repository`: its [toolchain], README "Toolchain").

    Example: sandbox image status --repo .
    """
    from sandbox import configfiles, image
    from sandbox.config import settings_from
    from sandbox.engine import Engine

    files = configfiles.checked(repo)
    settings, engine = settings_from(files.values, {}), Engine()
    out = image.image_status(engine, settings)
    out["repository"] = image.toolchain_status(engine, settings, files.top)
    typer.echo(json.dumps(out, indent=2))


@config_app.command("show")
def config_show(repo: RepoOpt = None) -> None:
    """Print the effective settings as JSON, secrets masked, and whether the repository's .sandbox.toml is trusted.

    Example: sandbox config show
    """
    from sandbox import config

    shown = config.show(repo)
    typer.echo(json.dumps(shown, indent=2))
    f = shown["repo_file"]
    if f and f["ignored"]:
        _err(f"note: {f['path']} is not trusted: ignored {', '.join(f['ignored'])} (review it, then `sandbox trust`)")


@app.command()
def trust(
    repo: RepoOpt = None,
    show: Annotated[bool, typer.Option("--show", help="Only say whether the file is trusted, and its hash.")] = False,
    revoke: Annotated[bool, typer.Option("--revoke", help="Forget the approval: the file is untrusted again.")] = False,
) -> None:
    """Approve the repository's .sandbox.toml as it is now (its SHA-256, kept in your config dir); a change untrusts it.

    Review the file first: its host commands, secrets, paths, images and wider limits apply only once trusted.

    Example: cat .sandbox.toml && sandbox trust
    """
    from sandbox import configfiles

    if show and revoke:
        raise UsageError("--show and --revoke exclude each other")
    if revoke:
        typer.echo("revoked" if configfiles.revoke(repo) else "was not trusted")
        return
    f = configfiles.status(repo) if show else configfiles.trust(repo)
    keys = ", ".join(f.needs_trust) or "none"
    typer.echo(f"{f.path}: {'trusted' if f.trusted else 'not trusted'} (sha256 {f.sha256}); keys that need trust: {keys}")


@mcp_app.callback()
def mcp_serve(ctx: typer.Context, repo: RepoOpt = None) -> None:
    """Serve sandbox's tools over MCP on stdin/stdout, for Claude Code or any MCP client (see `sandbox mcp install`).

    Example: sandbox mcp   # what the .mcp.json that `sandbox mcp install` writes runs
    """
    if ctx.invoked_subcommand is None:
        from sandbox import mcpserver

        mcpserver.serve(repo)


@mcp_app.command("install")
def mcp_install(
    project: Annotated[bool, typer.Option("--project", help="This repository's .mcp.json and .claude/commands/ (default).")] = False,
    user: Annotated[bool, typer.Option("--user", help="Your ~/.claude.json and ~/.claude/commands/: every project.")] = False,
    print_: Annotated[bool, typer.Option("--print", help="Show what would be written, write nothing.")] = False,
    repo: RepoOpt = None,
) -> None:
    """Configure Claude Code to start `sandbox mcp`, and add the /sandbox slash command.

    Example: sandbox mcp install --project && claude   # then: /sandbox add login rate limiting
    """
    from sandbox import mcpserver
    from sandbox.workspace import git as gitops

    if project and user:
        raise UsageError("--project or --user, not both")
    top = gitops.scope(repo, False)
    plan = mcpserver.install_plan("user" if user else "project", top, [sys.executable, "-m", "sandbox", "mcp"])
    for path, text in plan.items():
        if print_:
            typer.echo(f"# {path}\n{text}")
    if not print_:
        mcpserver.install(plan)
        for path in plan:
            typer.echo(f"wrote {path}")


@server_app.command("status")
def server_status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Whether this user's command server runs (for this code and data dir): pid, uptime, idle time, memory.

    Example: sandbox server status
    """
    from sandbox import server

    doc = server.query("status")
    if as_json:
        typer.echo(json.dumps(doc or {"running": None}, indent=2))
    elif doc is None:
        typer.echo("no server running (the next command starts one)")
    else:
        typer.echo(f"pid {doc['pid']}, up {doc['uptime']:.0f} s, idle {doc['idle']:.0f} s (exits at {doc['idle_exit']:g} s), "
                   f"{doc['running']} running, {doc['served']} served, {doc['rss_bytes'] // 2**20} MiB, {doc['socket']}")


@server_app.command("stop")
def server_stop() -> None:
    """Stop this user's command server (after the commands it runs); the next command starts a new one.

    Example: sandbox server stop
    """
    from sandbox import server

    doc = server.query("stop")
    _err(f"stopped the server (pid {doc['stopping']})" if doc else "no server running")


@app.command("mock-model")
def mock_model(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8642,
    script: Annotated[Optional[Path], typer.Option(help="JSON script of replies.")] = None,
) -> None:
    """Run the scripted Anthropic Messages API server (offline demos and CI).

    Example: sandbox mock-model --port 8642   # then ANTHROPIC_BASE_URL=http://127.0.0.1:8642
    """
    from sandbox.inside import mockmodel

    argv = ["--host", host, "--port", str(port)] + (["--script", str(script)] if script else [])
    raise typer.Exit(mockmodel.main(argv))
