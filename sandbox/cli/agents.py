"""One agent: reach it (``attach``, ``code``, ``port``, ``send``, ``wait``, ``logs``, ``exec``), prove and
watch its profile (``doctor``, ``netlog``), its lifecycle (``stop``, ``start``, ``restart``, ``rm``)."""

# (No `from __future__ import annotations` here: typer would evaluate every command's annotation strings
# on each run, ~10 ms.)

import json
import shutil
import sys
from datetime import datetime, timezone
from typing import Annotated, Any, Optional

import typer

from sandbox.cli.common import NameArg, RepoOpt, _become, _complete_names, _err, _manager, _reader, app
from sandbox.errors import SandboxError, UsageError
from sandbox.terminal import for_stream


@app.command()
def attach(name: NameArg) -> None:
    """Attach to the agent's tmux session (detach with C-b d; the agent keeps running).

    Example: sandbox attach sonnet-1
    """
    sb = _manager().get(name)
    argv = sb.attach_command()
    if shutil.which("docker") is None:
        raise SandboxError("the docker CLI is needed to attach", hint=" ".join(argv))
    _become(argv)


@app.command()
def code(
    name: NameArg,
    editor: Annotated[str, typer.Option("--editor", help="code (VS Code) or cursor.")] = "code",
    print_only: Annotated[bool, typer.Option("--print", help="Print the command instead of running it.")] = False,
) -> None:
    """Open the agent's workspace in VS Code (or Cursor) attached to its running container (the Dev Containers extension), never the host's copy of it.

    Example: sandbox code sonnet-1 --print
    """
    import shlex

    from sandbox import editors
    from sandbox.errors import AgentError

    sb = _reader()[1].get(name)
    if sb.engine_state != "running":
        raise AgentError(f"{name} is not running (the editor attaches to its container)", hint=f"sandbox start {name}")
    if sb.context:
        raise UsageError(f"{name} runs on swarm node {sb.node or sb.context}: the editor attaches to containers of its own engine only")
    try:
        how = editors.opener(editor, sb.container_name, str(sb.workspace))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if print_only:
        typer.echo(shlex.join(how.argv))
        return
    if not how.found:
        typer.echo(how.uri)
        raise SandboxError(f"`{how.argv[0]}` is not on PATH: open the URI above in it (needs the Dev Containers extension)",
                           hint=f"{how.argv[0]} --folder-uri URI")
    _become(list(how.argv))


@app.command()
def port(
    name: NameArg,
    container_port: Annotated[Optional[int], typer.Argument(metavar="[PORT]", help="Only this container port: its host address alone.")] = None,
) -> None:
    """The agent's published ports, one line each: `3000 -> http://127.0.0.1:49153` (with PORT: `127.0.0.1:49153`, like docker port).

    Example: curl "http://$(sandbox port sonnet-1 3000)/"
    """
    from sandbox.errors import NotFound

    sb = _reader()[1].get(name)
    if container_port is None:
        for p in sb.ports:
            typer.echo(f"{p.container} -> {p.url}")
        return
    found = [p for p in sb.ports if p.container == container_port]
    if not found:
        raise NotFound(f"{name} publishes no port {container_port}" + (" (it is not running)" if sb.engine_state != "running" else ""),
                       hint=f"publish it at spawn: sandbox spawn --port {container_port}")
    typer.echo(f"{found[0].host_ip}:{found[0].host_port}")


@app.command()
def send(
    name: NameArg,
    text: Annotated[str, typer.Argument(help="Text typed literally into the agent's pane ('-' reads stdin).")],
    no_enter: Annotated[bool, typer.Option("--no-enter", help="Do not press Enter after the text.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the agent's turn is over; print its answer.")] = False,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="With --wait: give up after S seconds (exit 9).")] = None,
) -> None:
    """Type text into the agent's pane, then press Enter (--wait: and print the answer).

    Example: sandbox send sonnet-1 "also add a test" --wait --timeout 600
    """
    mgr = _manager()
    if text == "-":
        text = sys.stdin.read()
    if wait:
        from sandbox import waiting

        typer.echo(for_stream(waiting.send_wait(mgr, name, text, timeout=timeout)))
        return
    mgr.send(name, text, enter=not no_enter)


@app.command("wait")
def wait_(
    name: Annotated[Optional[str], typer.Argument(help="The agent (or --any).", autocompletion=_complete_names)] = None,
    until: Annotated[str, typer.Option("--until", help="idle, waiting, exited (or failed/stopped), any (not working).")] = "idle",
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Give up after S seconds (exit 9).")] = None,
    any_: Annotated[bool, typer.Option("--any", help="The first agent of this repository (--all: of any) to reach the state; prints NAME STATE.")] = False,
    all_repos: Annotated[bool, typer.Option("--all", "-a", help="With --any: agents of every repository.")] = False,
    repo: RepoOpt = None,
    notify: Annotated[bool, typer.Option("--notify", help="Also run the `notify` command and POST to `notify_url` (settings) for the agent found.")] = False,
) -> None:
    """Wait for an agent's state: exit 0 when reached, 9 on timeout, 8 if it ended instead.

    Example: sandbox wait --any --until waiting && echo "an agent needs you"
    """
    from sandbox import waiting

    if (name is None) == (not any_):
        raise UsageError("name an agent, or pass --any")
    top, mgr = _reader(repo)
    if any_:
        sb = waiting.wait_any(mgr, None if all_repos else top, until=until, timeout=timeout)
        typer.echo(f"{sb.name} {sb.state}")
    else:
        sb = waiting.wait(mgr, name, until=until, timeout=timeout)  # type: ignore[arg-type]
        typer.echo(sb.state)
    command, url = mgr.settings.notify, mgr.settings.notify_url
    if notify and (command or url):
        from sandbox import notify as notify_

        for problem in (notify_.run(command, sb) if command else None, notify_.send(mgr.settings, sb)):
            if problem:
                _err(f"sandbox: {problem}")
    elif notify:
        _err("note: no `notify` command or `notify_url` in the settings (README \"Mission control\")")


@app.command()
def logs(
    name: NameArg,
    lines: Annotated[Optional[int], typer.Option("-n", "--lines", help="Last N lines (default: all scrollback).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
) -> None:
    """Print the agent's pane text, scrollback included.

    Example: sandbox logs sonnet-1 -n 200
    """
    mgr = _manager()
    if follow:
        try:
            for line in map(for_stream, mgr.follow(name)):
                typer.echo(line)
        except KeyboardInterrupt:
            pass
        return
    typer.echo(for_stream(mgr.logs(name, lines)), nl=False)


@app.command(name="exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(
    name: NameArg,
    argv: Annotated[list[str], typer.Argument(help="The command and its arguments (after --).")],
) -> None:
    """Run a command inside the agent's container, argv preserved.

    Example: sandbox exec sonnet-1 -- git log --oneline
    """
    mgr = _manager()
    sb = mgr.get(name)
    if shutil.which("docker") and sys.stdin.isatty():
        _become(sb.exec_command(argv))
    res = mgr.exec(name, argv)
    sys.stdout.buffer.write(res.stdout)
    sys.stderr.buffer.write(res.stderr)
    raise typer.Exit(res.exit_code)


@app.command()
def doctor(
    name: NameArg,
    as_profile: Annotated[Optional[str], typer.Option("--as", help="Judge against this profile (default, locked, isolated) instead of the agent's own.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Prove the agent's profile from outside its live container (the engine, the host's kernel; only the
    isolated profile's egress probes run inside): one line per property; exit 1 if any fails or cannot
    be verified from here.

    Example: sandbox doctor sonnet-1
    """
    from sandbox.doctor import gather, judge

    mgr = _manager()
    sb = mgr.require_running(name)
    profile = as_profile or sb.labels.get("sandbox.profile", "default")
    checks = judge(gather(mgr, sb, profile), profile, str(sb.workspace))
    if as_json:
        typer.echo(json.dumps([{"check": c.name, "ok": c.ok, "seen": c.seen, "verifiable": c.verifiable}
                               for c in checks], indent=2))
    else:
        for c in checks:
            typer.echo(f"{'ok  ' if c.ok else 'FAIL'}  {c.name}  ({for_stream(c.seen)})")
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


@app.command()
def netlog(
    name: NameArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:
    """Every connection an isolated agent tried, from its proxies: time, host:port, path (model), allowed/denied, bytes.

    Example: sandbox netlog sonnet-1
    """
    mgr = _manager()
    sb = mgr.get(name)
    if sb.labels.get("sandbox.profile") != "isolated":
        raise UsageError(f"{name} is not isolated: only the isolated profile's traffic goes through proxies",
                         hint="spawn with --profile isolated")
    records = mgr.netlog(sb)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in records], indent=2))
        return
    rows = [["TIME", "PROXY", "METHOD", "HOST:PORT", "PATH", "DECISION", "STATUS", "CODE", "SENT", "RECEIVED"]]
    for r in records:
        when = datetime.fromtimestamp(r.time, timezone.utc).strftime("%H:%M:%S")
        where = r.host + (f":{r.port}" if r.port else "")
        rows.append([when, r.proxy, r.method, where, r.path, r.decision, r.status, str(r.code), str(r.bytes_in),
                     str(r.bytes_out)])
    from sandbox.terminal import table

    for line in table([[for_stream(c) for c in row] for row in rows]):
        typer.echo(line)


@app.command()
def stop(name: NameArg) -> None:
    """Stop the agent's container (workspace and branch stay).

    Example: sandbox stop sonnet-1
    """
    typer.echo(_manager().stop(name).state)


@app.command()
def start(name: NameArg) -> None:
    """Start a stopped agent again and wait until it is ready.

    Example: sandbox start sonnet-1
    """
    typer.echo(_manager().start(name).state)


@app.command()
def restart(name: NameArg) -> None:
    """Stop, then start the agent.

    Example: sandbox restart sonnet-1
    """
    typer.echo(_manager().restart(name).state)


@app.command()
def rm(
    names: Annotated[list[str], typer.Argument(help="Agent names.", autocompletion=_complete_names)],
    force: Annotated[bool, typer.Option("--force", "-f", help="Remove even with unsaved work (backed up first under refs/sandbox/backup/).")] = False,
    delete_branch: Annotated[bool, typer.Option("--delete-branch", help="Also delete the agent's branch.")] = False,
) -> None:
    """Remove agents: container, workspace and the agent's repository. Refuses when work would be lost unless --force (then backs it up).

    Example: sandbox rm sonnet-1
    """
    mgr = _manager()

    def saved(b: Any) -> None:
        _err(f"saved {b.name}'s work as {b.ref}; to get it back:\n  " + "\n  ".join(b.commands()))

    for name in names:
        sb = mgr.remove(name, force=force, delete_branch=delete_branch, on_backup=saved,
                        on_kept=lambda why, n=name: _err(f"note: {n}: {why}"))
        kept = "" if delete_branch else f" (branch {sb.branch} kept)"
        typer.echo(f"removed {name}{kept}")
