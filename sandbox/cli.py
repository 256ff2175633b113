"""The command line: parse, call one library function, render. Errors leave through ``main()``.

The one entry point (``sandbox = sandbox.cli:main``). It imports only typer and the standard library
up front; each command imports what it needs. The commands that find and talk to agents (``ls``,
``logs``, ``send``, ``attach``, ``exec``, ``wait``) take their settings from ``lightsettings.read``
(no pydantic unless a value needs it) and reach the engine through ``engine.py``'s plain-HTTP lane
(no docker-py); the others build the full ``Settings`` (``config.load_settings``).
"""

# (No `from __future__ import annotations` here: typer would evaluate every command's annotation strings
# on each run, ~10 ms.)

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from typer._coercion import RuntimeParam, build_runtime_param
from typer._param_types import coerce_cli_path
from typer.core import TyperCommand, TyperGroup, _TyperParameter

from sandbox import __version__
from sandbox.errors import SandboxError, UsageError
from sandbox.terminal import defang, for_stream

_DIGITS = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")


@dataclass(frozen=True)
class _PlainValue(RuntimeParam):
    """A parameter's value converted without pydantic when it is plain — a string for ``str`` (and
    ``list[str]``), digits for ``int``, digits with an optional decimal part for ``float``, a path for
    ``Path`` (typer's own path checks, given a ``Path``) — else by typer's own coercion, which imports
    pydantic (typer 0.29 converts every non-bool parameter through a pydantic ``TypeAdapter``: ~30-100
    ms, more than ``sandbox ls`` does). The same values and the same errors as typer's, either way."""

    def _coerce_value(self, value: Any, param: _TyperParameter, ctx: Any) -> Any:
        kind = self.annotation
        if kind is str and isinstance(value, str):
            return value
        if kind == list[str] and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        if kind is int and isinstance(value, str) and _DIGITS.fullmatch(value):
            return int(value)
        if kind is float and isinstance(value, str) and _DECIMAL.fullmatch(value):
            return float(value)
        if kind is Path and isinstance(value, str) and not self.parameter_info.path_type:
            return coerce_cli_path(Path(value), self.parameter_info, path_type=Path, param=param, ctx=ctx)
        return build_runtime_param(param.type_descriptor)._coerce_value(value, param=param, ctx=ctx)


def _plain(params: list[Any]) -> None:
    """Give typer's parameters ``_PlainValue`` (typer builds its coercion lazily, in ``_runtime_param``:
    this sets it first). A typer without that attribute fails here, at once, in every test."""
    for param in params:
        if isinstance(param, _TyperParameter) and param.type_descriptor.file_annotation is None:
            desc = param.type_descriptor
            param._runtime_param = _PlainValue(parameter_info=desc.parameter_info, annotation=desc.annotation)


class _PlainParams:
    """Mixed into typer's command and group classes: their parameters (and --help) get ``_PlainValue``."""

    params: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        _plain([option])
        return option


class _Command(_PlainParams, TyperCommand):
    pass


class _Group(_PlainParams, TyperGroup):
    pass


class _Typer(typer.Typer):
    """``typer.Typer`` whose groups and commands convert plain values without pydantic (``_PlainValue``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=_Group, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _Typer(
    name="sandbox",
    help="Every AI coding agent in its own Docker container: a git worktree mounted, tmux inside, "
    "found again through container labels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
image_app = _Typer(help="Build and inspect the agent image.", no_args_is_help=True)
config_app = _Typer(help="Show the effective settings.", no_args_is_help=True)
app.add_typer(image_app, name="image")
app.add_typer(config_app, name="config")

RepoOpt = Annotated[Optional[Path], typer.Option("--repo", help="The repository (default: the one around the current directory).")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sandbox {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    engine: Annotated[Optional[str], typer.Option("--engine", help="Where agents run: local (this engine) or swarm (the Docker Swarm this engine manages); default: the engine setting.")] = None,
) -> None:
    """Run `sandbox COMMAND --help` for each command's options and an example."""
    if engine is not None:
        if engine not in ("local", "swarm"):
            raise UsageError(f"--engine {engine!r}: local or swarm")
        os.environ["SANDBOX_ENGINE"] = engine  # (the flag, seen by both settings readers)


if TYPE_CHECKING:
    from sandbox.config import Settings
    from sandbox.lightsettings import ManagerSettings
    from sandbox.manager import SandboxManager


def _manager(repo: Path | None = None, **flags: Any) -> "SandboxManager[Settings]":
    """A manager with the full ``Settings`` (pydantic's, or their ``lightsettings.Snapshot`` when these
    very inputs were validated before): for spawning and everything else."""
    from sandbox import lightsettings
    from sandbox.manager import SandboxManager

    return SandboxManager(lightsettings.full(repo, **flags)[1])


def _reader(repo: Path | None = None) -> "tuple[Path | None, SandboxManager[ManagerSettings]]":
    """(the repository's main checkout or None, a manager that finds and talks to agents), its
    settings read by ``lightsettings.read`` (the same sources; the full ``Settings`` when it must)."""
    from sandbox import lightsettings
    from sandbox.manager import SandboxManager

    top, settings = lightsettings.read(repo)
    return top, SandboxManager(settings)


def _agent(name: str):  # type: ignore[no-untyped-def]
    """The manager and a fresh snapshot of the agent ``name``."""
    mgr = _manager()
    return mgr, mgr.get(name)


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


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
) -> None:
    """Start an agent in its own container on a new worktree and branch (--headless: on a clone of --repo-url).

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
    mgr = _manager(repo, profile=profile, image=image, mock_model=mock_model, retries=retries,
                   max_agents=max_agents, max_time=max_time, idle_timeout=idle_timeout, runtime=runtime,
                   max_cost=max_cost)
    if tracer:
        tracer.mark("settings")
    if allow:
        from sandbox.config import settings_from

        if mgr.settings.profile != "isolated":
            raise UsageError("--allow is for the isolated profile (the others do not filter the network)",
                             hint="add --profile isolated")
        mgr.settings = settings_from({}, {**mgr.settings.model_dump(), "allow": [*mgr.settings.allow, *allow]})
    say = (lambda m: _err(f"… {m}")) if sys.stderr.isatty() and not as_json else None
    sb = mgr.spawn(task, repo_path=repo, name=name, agent=agent, model=model, agent_cmd=agent_cmd, base=base,
                   mock_script=script, wait_ready=not no_wait, on_step=say, queue=queue, trace=tracer)
    _show_spawned(sb, as_json, f"  branch:   {sb.branch}\n  worktree: {sb.worktree}", mgr.settings.price_table())
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
    from sandbox import pool as pool_
    from sandbox.workspace import git as gitops

    if top_up is not None:  # (the background top-up after a claim: the pool's own settings)
        record = pool_.read_record(_reader(repo)[1].settings.data_dir, top_up)  # (the light settings: its dir)
        if record and record.get("repo"):
            mgr = _manager(Path(record["repo"]), **(record.get("flags") or {}))
            mgr.pool_fill(top_up, gitops.find_repo(Path(record["repo"])), wait=False)
        return
    mgr = _manager(repo, image=image, profile=profile)
    if size is None:
        status = mgr.pool_status()
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
    got = mgr.pool_set(found, size, {"image": image, "profile": profile}, on_step=say)
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
    _err(f"{where}\n  state:    {sb.state}\n  attach:   {' '.join(sb.attach_command())}   (or: sandbox attach {sb.name})")


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
    wide: Annotated[bool, typer.Option("--wide", "-w", help="Also CPU, MEM (engine stats, ~2 s), TOKENS and COST.")] = False,
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
    extra = ["CPU", "MEM", "TOKENS", "COST"] if wide else []
    rows = [["NAME", "AGENT/MODEL", "STATE", "TRY", "ACTIVE", *extra, "BRANCH", "REPO", "AGE", "TASK / REASON"]]
    for s in found:
        am = s.labels.get("sandbox.agent", "?") + ("/" + s.labels["sandbox.model"] if s.labels.get("sandbox.model") else "")
        state = s.state + (f"({s.exit_code})" if s.state in ("exited", "failed") and s.exit_code is not None else "")
        active = _age(datetime.fromtimestamp(s.activity, timezone.utc)) if s.activity else "-"
        note = s.reason if s.state in ("starting", "stopped", "failed", "exited", "waiting") and s.reason else s.task
        if s.pressure and s.pressure.describe():
            note = f"[{s.pressure.describe()}] {note}"
        cells = []
        if wide:
            st, tok, spent = s.stats, s.tokens, s.cost(prices)
            cells = [f"{st.cpu_percent:.1f}%" if st and st.cpu_percent is not None else "-",
                     size(st.memory) if st else "-",
                     f"{short(tok['input'] + tok['cache_read'] + tok['cache_write'])}/{short(tok['output'])}" if tok else "-",
                     spent.describe() if spent else "-"]
        repo_col = Path(s.repo).name if s.repo else s.labels.get("sandbox.remote", "").rstrip("/").rsplit("/", 1)[-1]
        rows.append([s.name, am, state, str(s.attempt or "-"), active, *cells, s.branch, repo_col, _age(s.created), note])
        if s.labels.get("sandbox.backend") == "swarm":
            rows[-1].insert(7 + len(extra), s.node or "-")
    if any(len(r) > len(rows[0]) for r in rows):  # agents on the swarm: the node running each
        rows[0].insert(7 + len(extra), "NODE")
        for r in rows[1:]:
            if len(r) < len(rows[0]):
                r.insert(7 + len(extra), "-")
    width = shutil.get_terminal_size((120, 20)).columns
    n = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    for r in rows:
        line = "  ".join(c.ljust(w) for c, w in zip(r[:n], widths)) + "  " + r[n]
        line = defang(line)  # names, tasks, reasons: shown, never obeyed (a pipe too: `--json` is for programs)
        typer.echo(line[:width] if sys.stdout.isatty() else line)


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
    sys.stdout.flush()
    os.execvp("tmux", argv)


@app.command("stats")
def stats_(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One agent's resources and cost: CPU and memory now (and memory's peak), tokens in/out per
    model, the cost estimate, turns and prompts.

    Example: sandbox stats sonnet-1
    """
    from sandbox import usage

    mgr = _reader()[1]
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


@app.command()
def attach(name: str) -> None:
    """Attach to the agent's tmux session (detach with C-b d; the agent keeps running).

    Example: sandbox attach sonnet-1
    """
    sb = _reader()[1].get(name)
    argv = sb.attach_command()
    if shutil.which("docker") is None:
        raise SandboxError("the docker CLI is needed to attach", hint=" ".join(argv))
    sys.stdout.flush()
    os.execvp("docker", argv)


@app.command()
def send(
    name: str,
    text: Annotated[str, typer.Argument(help="Text typed literally into the agent's pane ('-' reads stdin).")],
    no_enter: Annotated[bool, typer.Option("--no-enter", help="Do not press Enter after the text.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the agent's turn is over; print its answer.")] = False,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="With --wait: give up after S seconds (exit 9).")] = None,
) -> None:
    """Type text into the agent's pane, then press Enter (--wait: and print the answer).

    Example: sandbox send sonnet-1 "also add a test" --wait --timeout 600
    """
    mgr = _reader()[1]
    if text == "-":
        text = sys.stdin.read()
    if wait:
        from sandbox import waiting

        typer.echo(for_stream(waiting.send_wait(mgr, name, text, timeout=timeout)))
        return
    mgr.send(name, text, enter=not no_enter)


@app.command("wait")
def wait_(
    name: Annotated[Optional[str], typer.Argument(help="The agent (or --any).")] = None,
    until: Annotated[str, typer.Option("--until", help="idle, waiting, exited (or failed/stopped), any (not working).")] = "idle",
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Give up after S seconds (exit 9).")] = None,
    any_: Annotated[bool, typer.Option("--any", help="The first agent of this repository (--all: of any) to reach the state; prints NAME STATE.")] = False,
    all_repos: Annotated[bool, typer.Option("--all", "-a", help="With --any: agents of every repository.")] = False,
    repo: RepoOpt = None,
    notify: Annotated[bool, typer.Option("--notify", help="Also run the `notify` command of the settings for the agent found.")] = False,
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
    command = mgr.settings.notify
    if notify and command:
        from sandbox import notify as notify_

        problem = notify_.run(command, sb)
        if problem:
            _err(f"sandbox: {problem}")
    elif notify:
        _err("note: no `notify` command in the settings (README \"Mission control\")")


@app.command()
def logs(
    name: str,
    lines: Annotated[Optional[int], typer.Option("-n", "--lines", help="Last N lines (default: all scrollback).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
) -> None:
    """Print the agent's pane text, scrollback included.

    Example: sandbox logs sonnet-1 -n 200
    """
    mgr = _reader()[1]
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
    name: str,
    argv: Annotated[list[str], typer.Argument(help="The command and its arguments (after --).")],
) -> None:
    """Run a command inside the agent's container, argv preserved.

    Example: sandbox exec sonnet-1 -- git log --oneline
    """
    mgr = _reader()[1]
    sb = mgr.get(name)
    if shutil.which("docker") and sys.stdin.isatty():
        where = ["--context", sb.context] if sb.context else []
        os.execvp("docker", ["docker", *where, "exec", "-it", "-w", str(sb.worktree), sb.container_name, *argv])
    res = mgr.exec(name, argv)
    sys.stdout.buffer.write(res.stdout)
    sys.stderr.buffer.write(res.stderr)
    raise typer.Exit(res.exit_code)


@app.command()
def doctor(
    name: str,
    as_profile: Annotated[Optional[str], typer.Option("--as", help="Judge against this profile (default, locked, isolated) instead of the agent's own.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Prove the agent's profile from inside its live container: one line per property; exit 1 if any fails.

    Example: sandbox doctor sonnet-1
    """
    from sandbox import contract
    from sandbox.doctor import judge, probe_plan
    from sandbox.errors import AgentError

    mgr = _reader()[1]
    sb = mgr.require_running(name)
    profile = as_profile or sb.labels.get("sandbox.profile", "default")
    probe = ["--probe", json.dumps(probe_plan(mgr, sb))] if profile == "isolated" else []
    res = mgr.read_in(sb, [*contract.FACTS, str(sb.worktree), *probe])
    try:
        facts = json.loads(res.text)
    except ValueError:
        facts = None
    if res.exit_code != 0 or not isinstance(facts, dict):
        raise AgentError(f"cannot read {name}'s container facts (exit {res.exit_code})",
                         hint="is its image older than this sandbox? `sandbox image build`")
    checks = judge(facts, profile, str(sb.worktree))
    if as_json:
        typer.echo(json.dumps([{"check": c.name, "ok": c.ok, "seen": c.seen} for c in checks], indent=2))
    else:
        for c in checks:
            typer.echo(f"{'ok  ' if c.ok else 'FAIL'}  {c.name}  ({for_stream(c.seen)})")
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


@app.command()
def netlog(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:
    """Every connection an isolated agent tried, from its proxies: time, host:port, allowed/denied, bytes.

    Example: sandbox netlog sonnet-1
    """
    mgr = _reader()[1]
    sb = mgr.get(name)
    if sb.labels.get("sandbox.profile") != "isolated":
        raise UsageError(f"{name} is not isolated: only the isolated profile's traffic goes through proxies",
                         hint="spawn with --profile isolated")
    records = mgr.netlog(sb)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in records], indent=2))
        return
    rows = [["TIME", "PROXY", "METHOD", "HOST:PORT", "DECISION", "STATUS", "CODE", "SENT", "RECEIVED"]]
    for r in records:
        when = datetime.fromtimestamp(r.time, timezone.utc).strftime("%H:%M:%S")
        where = r.host + (f":{r.port}" if r.port else "")
        rows.append([when, r.proxy, r.method, where, r.decision, r.status, str(r.code), str(r.bytes_in), str(r.bytes_out)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo(for_stream("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()))


@app.command()
def stop(name: str) -> None:
    """Stop the agent's container (worktree and branch stay).

    Example: sandbox stop sonnet-1
    """
    typer.echo(_manager().stop(name).state)


@app.command()
def start(name: str) -> None:
    """Start a stopped agent again and wait until it is ready.

    Example: sandbox start sonnet-1
    """
    typer.echo(_manager().start(name).state)


@app.command()
def restart(name: str) -> None:
    """Stop, then start the agent.

    Example: sandbox restart sonnet-1
    """
    typer.echo(_manager().restart(name).state)


@app.command()
def rm(
    names: Annotated[list[str], typer.Argument(help="Agent names.")],
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


@app.command()
def diff(
    name: str,
    stat: Annotated[bool, typer.Option("--stat", help="Only a summary per file.")] = False,
    uncommitted: Annotated[bool, typer.Option("--uncommitted", help="Only what the agent has not committed.")] = False,
) -> None:
    """Show what the agent changed since its base, committed and not (untracked files included).

    Example: sandbox diff sonnet-1 --stat
    """
    from sandbox.workspace import work

    typer.echo(for_stream(work.diff(*_agent(name), stat=stat, uncommitted=uncommitted)), nl=False)


@app.command()
def merge(
    name: str,
    squash: Annotated[bool, typer.Option("--squash", help="One commit on the target.")] = False,
    rebase: Annotated[bool, typer.Option("--rebase", help="Replay the agent's commits on the target (linear history).")] = False,
    into: Annotated[Optional[str], typer.Option("--into", help="Target branch (default: the main checkout's branch).")] = None,
    include_uncommitted: Annotated[bool, typer.Option("--include-uncommitted", help="First commit the agent's uncommitted changes on its branch.")] = False,
) -> None:
    """Merge the agent's branch into the main checkout's branch; all or nothing.

    Example: sandbox merge sonnet-1 --squash
    """
    from sandbox.workspace import work

    if squash and rebase:
        raise UsageError("--squash and --rebase exclude each other")
    mode = "squash" if squash else "rebase" if rebase else "merge"
    res = work.merge(*_agent(name), mode=mode, into=into, include_uncommitted=include_uncommitted)
    if res.committed_uncommitted:
        _err(f"merged {name}'s uncommitted changes as commit {res.committed_uncommitted[:12]}"
             " (still uncommitted in its workspace)")
    if res.before == res.after:
        typer.echo(f"{res.target}: already up to date")
    else:
        typer.echo(f"{res.target}: {res.before[:12]}..{res.after[:12]} ({res.mode})")
    if res.left_uncommitted:
        _err(f"note: {name} still has uncommitted changes (not merged; see --include-uncommitted)")


@app.command()
def sync(
    name: Annotated[Optional[str], typer.Argument(help="The agent (or --all).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every agent of this repository (or of --repo).")] = False,
    repo: RepoOpt = None,
) -> None:
    """Bring an agent's commits and uncommitted work over now: branch sandbox/NAME and refs/sandbox/wip/NAME.

    Example: sandbox sync sonnet-1 && git log sandbox/sonnet-1
    """
    from sandbox.workspace import git as gitops
    from sandbox.workspace import work

    if (name is None) == (not all_):
        raise UsageError("name an agent, or pass --all")
    mgr = _manager(repo)
    agents = [mgr.get(name)] if name else mgr.list(gitops.scope(repo, False), sync=False)
    failed = 0
    for sb in agents:
        w = work.of(mgr, sb, strict=False)
        if not w.readable:
            failed += 1
            _err(f"{sb.name}: cannot read its work: {w.reason}")
            continue
        note = " + uncommitted changes" if w.dirty else ""
        typer.echo(f"{sb.name}: {w.branch} at {(w.head or '?')[:12]}{note}")
    if failed:
        raise typer.Exit(8)


@app.command()
def apply(name: str) -> None:
    """Put the agent's changes (committed and uncommitted) into the main checkout's files, uncommitted.

    Example: sandbox apply sonnet-1
    """
    from sandbox.workspace import work

    files = work.apply(*_agent(name))
    typer.echo("\n".join(files) if files else "nothing to apply")


@app.command()
def push(
    name: str,
    remote: Annotated[str, typer.Option("--remote", help="The remote.")] = "origin",
) -> None:
    """Push the agent's branch to a remote.

    Example: sandbox push sonnet-1 --remote origin
    """
    from sandbox.workspace import work

    typer.echo(work.push(*_agent(name), remote))


@app.command()
def pr(
    name: str,
    remote: Annotated[str, typer.Option("--remote", help="The remote.")] = "origin",
    base: Annotated[Optional[str], typer.Option("--base", help="The PR's base branch (default: gh's).")] = None,
) -> None:
    """Push the agent's branch and open a pull request with the GitHub CLI (gh), titled from the task.

    Example: sandbox pr sonnet-1
    """
    from sandbox.workspace import work

    typer.echo(work.pr(*_agent(name), remote, base))


@app.command()
def restore(
    name: str,
    ref: Annotated[Optional[str], typer.Option("--ref", help="The backup ref (default: the newest of NAME).")] = None,
    path: Annotated[Optional[Path], typer.Option("--path", help="Where to put the worktree.")] = None,
    repo: RepoOpt = None,
) -> None:
    """Bring back a backup made by rm --force or gc: a new worktree on branch sandbox/NAME-restored.

    Example: sandbox restore sonnet-1
    """
    from sandbox.workspace import work
    from sandbox.config import load_settings

    res = work.restore(load_settings(repo), repo, name, ref, path)
    typer.echo(str(res.path))
    _err(f"  branch: {res.branch}\n  from:   {res.ref}")


@app.command()
def gc(
    apply_: Annotated[bool, typer.Option("--apply", help="Do it (default: only show what would be done).")] = False,
    all_repos: Annotated[bool, typer.Option("--all-repos", help="Every repository with sandbox leftovers.")] = False,
    repo: RepoOpt = None,
) -> None:
    """Find (and with --apply remove) orphaned containers, worktrees, records and merged branches.

    Example: sandbox gc --apply
    """
    from sandbox.workspace import work

    actions = work.gc(_manager(repo), repo, all_repos=all_repos)
    for a in actions:
        if a.kind == "keep":
            typer.echo(f"keep      {a.target}  ({a.detail})")
            continue
        note = a.run() if apply_ and a.run else None
        if apply_ and a.run:
            from sandbox import crash

            crash.point("gc:action")
        verb = "removed" if apply_ else "would rm"
        typer.echo(f"{verb}  {a.kind:<12} {a.target}  ({a.detail}{'; ' + note if note else ''})")
    if not apply_ and any(a.kind != "keep" for a in actions):
        _err("dry run: nothing changed; pass --apply to do it")


@image_app.command("build")
def image_build(
    offline: Annotated[bool, typer.Option("--offline/--online", help="Offline: base from Debian packages with debootstrap (default). Online: FROM --base.")] = True,
    base: Annotated[Optional[str], typer.Option("--base", help="Base image for --online (default debian:bookworm-slim).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when up to date.")] = False,
    with_proxy: Annotated[bool, typer.Option("--proxy", help="Also the isolated profile's proxy image (nginx + squid, offline).")] = False,
) -> None:
    """Build the agent image (reused when its inputs did not change).

    Example: sandbox image build --offline --proxy
    """
    from sandbox import image, proxy
    from sandbox.config import load_settings
    from sandbox.engine import Engine

    settings = load_settings()
    engine = Engine()
    image_id = image.build_agent(engine, settings, offline=offline, base=base, force=force, on_line=_err)
    typer.echo(f"{settings.image} {image_id[:19]}")
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
def image_status() -> None:
    """Show whether the agent image exists and is up to date.

    Example: sandbox image status
    """
    from sandbox import image
    from sandbox.config import load_settings
    from sandbox.engine import Engine

    typer.echo(json.dumps(image.image_status(Engine(), load_settings()), indent=2))


@config_app.command("show")
def config_show(repo: RepoOpt = None) -> None:
    """Print the effective settings as JSON, secrets masked.

    Example: sandbox config show
    """
    from sandbox.config import load_settings

    typer.echo(json.dumps(load_settings(repo).masked(), indent=2))


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


def main() -> None:
    """Entry point: the one place errors reach the user (one line, documented exit code)."""
    debug = bool(os.environ.get("SANDBOX_DEBUG"))
    try:
        rc = app(prog_name="sandbox", standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except SandboxError as e:
        if debug:
            raise
        _err(f"sandbox: error: {e}")
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        _err("sandbox: aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        _err("sandbox: interrupted")
        sys.exit(130)
    except typer.TyperException as e:  # the parser's usage errors (unknown option, bad value, missing argument)
        if debug:
            raise
        help_text = _help_instead(e)
        if help_text is not None:  # `sandbox` or `sandbox image` alone: the help, as --help shows it
            _err(help_text.rstrip("\n"))
            sys.exit(UsageError.exit_code)
        _err(f"sandbox: error: {usage_message(e)}")
        sys.exit(UsageError.exit_code)
    except Exception as e:  # the unexpected
        if debug:
            raise
        _err(f"sandbox: internal error: {type(e).__name__}: {e} (set SANDBOX_DEBUG=1 for the traceback)")
        sys.exit(70)


def usage_message(e: typer.TyperException) -> str:
    """A parser error as one line: ``No such option: --bogus (see sandbox ls --help)``."""
    text = " ".join(e.format_message().split())
    path = getattr(getattr(e, "ctx", None), "command_path", None) or "sandbox"
    return f"{text} (see {path} --help)"


def _help_instead(e: typer.TyperException) -> str | None:
    """The help text when the 'error' is a group called with no arguments (``no_args_is_help``)."""
    ctx = getattr(e, "ctx", None)
    get_help = getattr(ctx, "get_help", None)
    if get_help is None:
        return None
    text = get_help()
    return text if isinstance(text, str) and e.format_message() == text else None
