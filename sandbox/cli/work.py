"""An agent's work on the host: ``diff``, ``conflicts``, ``merge``, ``sync``, ``apply``, ``push``, ``pr``,
``restore``, ``gc`` (each over ``sandbox.workspace``)."""

# (No `from __future__ import annotations` here: typer would evaluate every command's annotation strings
# on each run, ~10 ms.)

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from sandbox.cli.common import AllowConfigOpt, NameArg, RepoOpt, _agent, _complete_names, _err, _manager, app
from sandbox.errors import UsageError
from sandbox.terminal import defang, for_stream


@app.command()
def diff(
    name: NameArg,
    stat: Annotated[bool, typer.Option("--stat", help="Only a summary per file.")] = False,
    uncommitted: Annotated[bool, typer.Option("--uncommitted", help="Only what the agent has not committed.")] = False,
) -> None:
    """Show what the agent changed since its base: the committed part (what merge takes) and the uncommitted part, each under a label line naming its commits.

    Example: sandbox diff sonnet-1 --stat
    """
    from sandbox.workspace import work

    review = work.diff(*_agent(name), stat=stat, uncommitted=uncommitted)
    typer.echo(for_stream(review.render()), nl=False)
    _err("to take exactly this: " + "; ".join(review.commands()))


@app.command()
def conflicts(
    names: Annotated[Optional[list[str]], typer.Argument(help="Only these agents' rows (every agent of the repository is still compared).", autocompletion=_complete_names)] = None,
    repo: RepoOpt = None,
    into: Annotated[Optional[str], typer.Option("--into", help="The target branch (default: the main checkout's branch).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Before merge time: the files each agent changed (committed and uncommitted) that another agent or the target (its commits since the agent's base, the main checkout's own changes) changed too, and whether each agent's branch merges cleanly into the target now (git merge-tree; nothing moves).

    Example: sandbox conflicts --json
    """
    from sandbox.terminal import table
    from sandbox.workspace import conflicts as conflicts_

    found = conflicts_.check(_manager(repo), repo, names or None, into)
    if as_json:
        typer.echo(json.dumps(found.to_json(), indent=2))
        return
    if not found.agents:
        typer.echo("no agents")
        return
    width = shutil.get_terminal_size((120, 20)).columns if sys.stdout.isatty() else None
    for line in table([[defang(c) for c in r] for r in conflicts_.describe(found)], width):  # (paths: shown, never obeyed)
        typer.echo(line)


@app.command()
def rebase(
    name: NameArg,
    onto: Annotated[Optional[str], typer.Option("--onto", help="The branch or commit to rebase onto (default: the main checkout's branch).")] = None,
) -> None:
    """Rebase the agent's branch onto the current base, inside its container (between turns, a clean workspace); on a conflict, undo it there and send the agent the conflicted files as a prompt (exit 5).

    Example: sandbox rebase sonnet-1
    """
    from sandbox.errors import Conflict
    from sandbox.workspace import rebase as rebase_

    done = rebase_.rebase(_manager(), name, onto)
    if done.conflicted:
        raise Conflict(f"{name}: rebasing onto {done.onto} conflicts in {', '.join(done.conflicted[:10])}"
                       + (f" (and {len(done.conflicted) - 10} more)" if len(done.conflicted) > 10 else "")
                       + f"; its work is as it was, and it was asked to rebase and resolve them",
                       hint=f"`sandbox wait {name}`, then `sandbox diff {name}`")
    if not done.moved:
        typer.echo(f"{name}: already on {done.onto} ({done.onto_head[:12]})")
        return
    typer.echo(f"{name}: rebased onto {done.onto} ({done.onto_head[:12]}): {done.before[:12]} -> {done.after[:12]}")


@app.command()
def merge(
    name: NameArg,
    squash: Annotated[bool, typer.Option("--squash", help="One commit on the target.")] = False,
    rebase: Annotated[bool, typer.Option("--rebase", help="Replay the agent's commits on the target (linear history).")] = False,
    into: Annotated[Optional[str], typer.Option("--into", help="Target branch (default: the main checkout's branch).")] = None,
    include_uncommitted: Annotated[bool, typer.Option("--include-uncommitted", help="First commit the agent's uncommitted changes on its branch.")] = False,
    at: Annotated[Optional[str], typer.Option("--at", help="Only if the agent is still at this commit (the one `sandbox diff` printed); else refuse, exit 5.")] = None,
    allow_config: AllowConfigOpt = False,
) -> None:
    """Merge the agent's branch into the main checkout's branch; all or nothing.

    Example: sandbox merge sonnet-1 --at 3f2a...  (the commit `sandbox diff sonnet-1` printed)
    """
    from sandbox.workspace import work

    if squash and rebase:
        raise UsageError("--squash and --rebase exclude each other")
    mode = "squash" if squash else "rebase" if rebase else "merge"
    res = work.merge(*_agent(name), mode=mode, into=into, include_uncommitted=include_uncommitted, at=at,
                     allow_config=allow_config)
    _config_warning(name, list(res.config_files))
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
    name: Annotated[Optional[str], typer.Argument(help="The agent (or --all).", autocompletion=_complete_names)] = None,
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


def _config_warning(name: str, files: list[str]) -> None:
    if files:
        _err(f"WARNING: {name}'s changes brought {', '.join(files[:5])} (settings the host obeys): "
             "review them; the repository's .sandbox.toml is untrusted until `sandbox trust`")


@app.command()
def apply(
    name: NameArg,
    at: Annotated[Optional[str], typer.Option("--at", help="Only if the agent's workspace is still at this commit (the one `sandbox diff` printed); else refuse, exit 5.")] = None,
    allow_config: AllowConfigOpt = False,
) -> None:
    """Put the agent's changes (committed and uncommitted) into the main checkout's files, uncommitted.

    Example: sandbox apply sonnet-1
    """
    from sandbox.workspace import work

    files = work.apply(*_agent(name), at=at, allow_config=allow_config)
    _config_warning(name, [f for f in files if f == ".sandbox.toml" or f.startswith(".devcontainer/")])
    typer.echo("\n".join(files) if files else "nothing to apply")


@app.command()
def push(
    name: NameArg,
    remote: Annotated[str, typer.Option("--remote", help="The remote.")] = "origin",
) -> None:
    """Push the agent's branch to a remote.

    Example: sandbox push sonnet-1 --remote origin
    """
    from sandbox.workspace import work

    typer.echo(work.push(*_agent(name), remote))


@app.command()
def pr(
    name: NameArg,
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
    name: NameArg,
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
    """Find (and with --apply remove) orphaned containers, workspaces, records and merged branches.

    Example: sandbox gc --apply
    """
    from sandbox import gc as gc_

    actions = gc_.gc(_manager(repo), repo, all_repos=all_repos)
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
