"""Plans (``sandbox/plan.py``): ``run`` and the ``plan`` group (ls, status, rm)."""

# (No `from __future__ import annotations` here: typer would evaluate every command's annotation strings
# on each run, ~10 ms.)

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sandbox.cli.common import RepoOpt, _err, _manager, app
from sandbox.errors import UsageError
from sandbox.terminal import defang


@app.command("run")
def run_plan(
    plan_file: Annotated[Optional[Path], typer.Argument(help="The plan (TOML): [[task]] tables with name, text or file, after, priority, retries, …")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Drive the plan here until every task is done or failed (exit 1 if one failed).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan's status as JSON.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Carry on a plan started before (same file): nothing that ran runs again.")] = False,
    repo: RepoOpt = None,
    drive_name: Annotated[Optional[str], typer.Option("--drive", hidden=True, help="(run detached by `run`) drive plan NAME.")] = None,
) -> None:
    """Run a plan: many tasks with dependencies (after), priority and retries, each an agent; max_agents at a time.

    Example: sandbox run plan.toml --wait
    Example: sandbox run plan.toml --resume      (after the CLI, the machine or the engine restarted)
    """
    from sandbox import plan as plan_

    if drive_name is not None:  # (the detached driver of a plan started without --wait)
        mgr = _manager()
        plan_.drive(mgr, plan_.Store(mgr.settings.data_dir, drive_name),
                    on_change=lambda e: _err(json.dumps(e)))
        return
    if plan_file is None:
        raise UsageError("which plan? sandbox run PLAN.toml")
    mgr = _manager(repo)
    store = plan_.prepare(mgr, plan_file, repo, resume=resume)
    if not wait:
        pid = plan_.detach(store)
        if as_json:
            typer.echo(json.dumps({"plan": store.name, "driver_pid": pid}))
            return
        typer.echo(store.name)
        _err(f"  driven in the background (process {pid}); see `sandbox plan status {store.name}`")
        return
    say = None if as_json else (lambda e: _err(defang(f"{e['task']}: {e['from'] or '-'} -> {e['to']}  {e['why']}")))
    plan_.drive(mgr, store, on_change=say or (lambda _e: None))
    got = plan_.status(mgr, store.name)
    _show_plan(got, as_json)
    if got["counts"]["failed"]:
        raise plan_.PlanFailed(f"plan {store.name}: {got['counts']['failed']} of {len(got['tasks'])} tasks failed")


plan_app = typer.Typer(help="Plans started by `sandbox run`: list, status, remove.", no_args_is_help=True)  # (added in __init__)


def _show_plan(got: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(got, indent=2))
        return
    rows = [["TASK", "STATE", "TRY", "AGENT", "BRANCH", "DIFF", "COST", "TIME", "WHY"]]
    for r in got["tasks"]:
        rows.append([r["task"], r["state"], str(r["attempt"] or "-"), r["agent"] or "-", r["branch"] or "-",
                     r["diffstat"] or "-", f"${r['cost_usd']:.2f}" if r["cost_usd"] is not None else "-",
                     f"{r['duration']:.0f}s" if r["duration"] is not None else "-", r["why"]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        typer.echo(defang("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]))


@plan_app.command("ls")
def plan_ls(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the plans on this host: tasks done, failed and at work, and whether a driver runs it.

    Example: sandbox plan ls
    """
    from sandbox import plan as plan_

    mgr = _manager()
    found = [plan_.status(mgr, n) for n in plan_.Store.names(mgr.settings.data_dir)]
    if as_json:
        typer.echo(json.dumps([{k: v for k, v in p.items() if k != "tasks"} for p in found], indent=2))
        return
    for p in found:
        c = p["counts"]
        typer.echo(f"{p['plan']}  {c['done']}/{len(p['tasks'])} done, {c['failed']} failed, "
                   f"{c['running'] + c['starting']} at work  "
                   f"{'driver ' + str(p['driver_pid']) if p['driver_pid'] else 'no driver'}  {p['repo']}")


@plan_app.command("status")
def plan_status(
    name: Annotated[str, typer.Argument(help="The plan's name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A plan's tasks: state, attempt, agent, branch, diffstat, cost, duration and why (engine, refs and log).

    Example: sandbox plan status nightly --json
    """
    from sandbox import plan as plan_

    _show_plan(plan_.status(_manager(), name), as_json)


@plan_app.command("rm")
def plan_rm(
    name: Annotated[str, typer.Argument(help="The plan's name.")],
    force: Annotated[bool, typer.Option("--force", "-f", help="Remove agents even with unsaved work (backed up first).")] = False,
    delete_branch: Annotated[bool, typer.Option("--delete-branch", help="Also delete the agents' branches.")] = False,
) -> None:
    """Stop a plan's driver and remove its agents (the usual guard: refuses when work would be lost, unless --force), then the plan.

    Example: sandbox plan rm nightly --force
    """
    from sandbox import plan as plan_
    from sandbox.errors import Conflict

    kept = plan_.remove(_manager(), name, force=force, delete_branch=delete_branch,
                        on_removed=lambda n: typer.echo(f"removed {n}"))
    if kept:
        for why in kept:
            _err(f"kept {why}")
        raise Conflict(f"plan {name}: {len(kept)} agents kept (their work would be lost); the plan stays",
                       hint="merge their work, or pass --force (backed up first)")
    typer.echo(f"removed plan {name}")
