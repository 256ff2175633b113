"""Many agents at once: ``ls``, ``top``, ``tile``; and one agent's numbers: ``stats``."""

# (No `from __future__ import annotations` here: typer would evaluate every command's annotation strings
# on each run, ~10 ms.)

import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from sandbox.cli.common import NameArg, RepoOpt, _become, _err, _manager, _reader, app
from sandbox.errors import SandboxError, UsageError
from sandbox.terminal import defang, for_stream


def _age(created: datetime | None) -> str:
    if created is None:
        return "?"
    secs = int((datetime.now(timezone.utc) - created).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


@app.command("ls")
def ls(
    repo: RepoOpt = None,
    all_repos: Annotated[bool, typer.Option("--all", "-a", help="Agents of every repository.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    exec_state: Annotated[bool, typer.Option("--exec-state", help="Remote engine: read unreadable state files with one exec per agent.")] = False,
    wide: Annotated[bool, typer.Option("--wide", "-w", help="Also CPU, MEM (engine stats, ~2 s), TOKENS, COST and PORTS.")] = False,
) -> None:
    """List agents (of the current repository; --all for every one), from container labels.

    Example: sandbox ls --all --json
    """
    from sandbox.usage import short, size

    top, mgr = _reader(repo)
    found = mgr.list(repo=None if all_repos else top, exec_state=exec_state)  # = gitops.scope(repo, all_repos)
    if wide:
        found = mgr.with_stats(found)
    prices = mgr.settings.price_table()
    if as_json:
        typer.echo(json.dumps([s.to_json(prices) for s in found], indent=2))
        return
    extra = ["CPU", "MEM", "TOKENS", "COST", "PORTS"] if wide else []
    rows = [["NAME", "AGENT/MODEL", "STATE", "TRY", "ACTIVE", *extra, "BRANCH", "REPO", "AGE", "TASK / REASON"]]
    for s in found:
        am = s.labels.get("sandbox.agent", "?") + ("/" + s.labels["sandbox.model"] if s.labels.get("sandbox.model") else "")
        state = s.state + (f"({s.exit_code})" if s.state in ("exited", "failed") and s.exit_code is not None else "")
        active = _age(datetime.fromtimestamp(s.activity, timezone.utc)) if s.activity else "-"
        note = s.reason if s.state in ("starting", "stopped", "failed", "exited", "waiting") and s.reason else s.task
        if s.pressure and s.pressure.describe():
            note = f"[{s.pressure.describe()}] {note}"
        if s.labels.get("sandbox.plan"):  # a plan's agent: which plan and task (sandbox/plan.py)
            note = f"[{s.labels['sandbox.plan']}:{s.labels.get('sandbox.plan-task', '?')}] {note}"
        if s.stale:
            note = f"[stale: {s.stale}] {note}"
        cells = []
        if wide:
            st, tok, spent = s.stats, s.tokens, s.cost(prices)
            cells = [f"{st.cpu_percent:.1f}%" if st and st.cpu_percent is not None else "-",
                     size(st.memory) if st else "-",
                     f"{short(tok['input'] + tok['cache_read'] + tok['cache_write'])}/{short(tok['output'])}" if tok else "-",
                     spent.describe() if spent else "-",
                     ",".join(f"{p.container}->{p.host_port}" for p in s.ports) or "-"]
        repo_col = Path(s.repo).name if s.repo else s.labels.get("sandbox.remote", "").rstrip("/").rsplit("/", 1)[-1]
        rows.append([s.name, am, state, str(s.attempt or "-"), active, *cells, s.branch, repo_col, _age(s.created), note])
        if s.labels.get("sandbox.backend") == "swarm":
            rows[-1].insert(7 + len(extra), s.node or "-")
    if any(len(r) > len(rows[0]) for r in rows):  # agents on the swarm: the node running each
        rows[0].insert(7 + len(extra), "NODE")
        for r in rows[1:]:
            if len(r) < len(rows[0]):
                r.insert(7 + len(extra), "-")
    from sandbox.terminal import table

    width = shutil.get_terminal_size((120, 20)).columns if sys.stdout.isatty() else None
    # names, tasks, reasons: shown, never obeyed (a pipe too: `--json` is for programs); measured as shown
    for line in table([[defang(c) for c in r] for r in rows], width):
        typer.echo(line)


@app.command()
def top(
    repo: RepoOpt = None,
    all_repos: Annotated[bool, typer.Option("--all", "-a", help="Agents of every repository.")] = False,
    bell: Annotated[bool, typer.Option("--bell", help="Ring the terminal bell when an agent starts waiting.")] = False,
) -> None:
    """Every agent at once: a live table (waiting ones first) and the selected agent's pane; keys: enter
    attach, s send, d diff, m merge, x stop, r rm (asks), / filter, q quit.

    Example: sandbox top --all --bell
    """
    from sandbox import top as top_
    from sandbox.workspace import git as gitops

    if not sys.stdout.isatty() or not sys.stdin.isatty():
        raise UsageError("sandbox top needs a terminal", hint="for scripts: sandbox ls --wide --json")
    mgr = _manager(repo)
    scope = None if all_repos else gitops.scope(repo, False)
    top_.run(mgr, scope, bell=bell)


@app.command()
def tile(
    repo: RepoOpt = None,
    all_repos: Annotated[bool, typer.Option("--all", "-a", help="Agents of every repository.")] = False,
    session: Annotated[str, typer.Option("--session", help="The host tmux session to build or reuse.")] = "sandbox",
    socket: Annotated[Optional[str], typer.Option("--socket", help="The host tmux server's socket name (tmux -L).")] = None,
    no_attach: Annotated[bool, typer.Option("--no-attach", help="Only build the session; print its name.")] = False,
) -> None:
    """One host tmux session, one pane attached to each running agent (tiled, 12 a window); run again to add
    new agents; C-b d leaves. Inside tmux it switches to the session.

    Example: sandbox tile --all
    """
    from sandbox import tile as tile_

    top, mgr = _reader(repo)
    tiled = tile_.tile(mgr.list(None if all_repos else top, sync=False), socket_name=socket, session_name=session)
    _err(f"{tiled.session}: {len(tiled.added) + len(tiled.kept)} agents in {tiled.windows} window(s)"
         + (f", added {' '.join(tiled.added)}" if tiled.added else ""))
    if no_attach:
        typer.echo(tiled.session)
        return
    argv = tile_.attach_argv(tiled.session, socket_name=socket, inside_tmux=bool(os.environ.get("TMUX")))
    if shutil.which("tmux") is None:
        raise SandboxError("tmux is needed on this host for `sandbox tile`", hint="apt-get install tmux")
    _become(argv)


@app.command("stats")
def stats_(
    name: NameArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One agent's resources and cost: CPU and memory now (and memory's peak), tokens in/out per
    model, the cost estimate, turns and prompts.

    Example: sandbox stats sonnet-1
    """
    from sandbox import usage

    mgr = _manager()
    sb = mgr.with_stats([mgr.with_exec_state(mgr.get(name))])[0]
    prices = mgr.settings.price_table()
    data = sb.to_json(prices)
    keys = ["name", "state", "cpu_percent", "cpu_seconds", "memory_bytes", "memory_peak_bytes", "memory_limit", "pids",
            "tokens", "tokens_by_model", "cost_usd", "cost_unpriced_models", "max_cost", "turns", "prompts"]
    if as_json:
        typer.echo(json.dumps({k: data.get(k) for k in keys}, indent=2))
        return
    st = sb.stats
    lines = [("state", sb.state)]
    if st is not None:
        cpu = f"{st.cpu_percent:.1f}% of a core" if st.cpu_percent is not None else "-"
        lines += [("cpu", f"{cpu} now; {st.cpu_seconds:.1f} s in all since the container started"),
                  ("memory", f"{usage.size(st.memory)} now" + (f", peak {usage.size(st.memory_peak)}" if st.memory_peak else "")
                   + (f", limit {usage.size(st.memory_limit)}" if st.memory_limit else "")),
                  ("processes", str(st.pids))]
    else:
        lines.append(("cpu, memory", f"- (the container is {sb.engine_state})"))
    tok = sb.tokens
    if tok:
        lines.append(("tokens", f"{tok['input']} in, {tok['output']} out, {tok['cache_read']} cache read, "
                                f"{tok['cache_write']} cache write ({tok['calls']} model calls)"))
        for model, counts in sorted(sb.usage.items()):
            lines.append(("  " + for_stream(model), f"{counts['input']} in, {counts['output']} out"))
        spent = sb.cost(prices)
        assert spent is not None
        note = f" (no price for {', '.join(map(for_stream, spent.unpriced))}: see `prices` in the README)" if spent.unpriced else ""
        budget = f" of a budget of ${data['max_cost']:g}" if data.get("max_cost") else ""
        lines.append(("cost", f"{spent.describe()} estimated{budget}{note}"))
    else:
        lines.append(("tokens", "- (the agent reports none: only Claude Code's are counted)"))
    lines += [("turns", str(data["turns"])), ("prompts", str(data["prompts"]))]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        typer.echo(f"{k.ljust(width)}  {v}")
