"""``sandbox gc``: what agents that are gone (or spawns and removals cut short) left behind — containers,
workspaces, agent git dirs, merged ``sandbox/*`` branches, state dirs, spawn locks, isolated agents'
proxies, warm pool slots — planned first (``gc`` returns ``Action``s; nothing changes until each one's
``run``), never losing work: a workspace is read once more (``work.read``) and backed up when at risk.
Only the manager's public methods (and its engine's listing and removal); the work on the host's refs
is ``sandbox.workspace.work``'s."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox import labels as L, pool
from sandbox.errors import SandboxError
from sandbox.manager import Source
from sandbox.spawn.spec import CONTAINER_PREFIX
from sandbox.workspace import git as gitops, work
from sandbox.workspace.git import BRANCH_PREFIX

if TYPE_CHECKING:
    from sandbox.manager import Sandbox, SandboxManager


@dataclass
class Action:
    kind: str      # container | workspace | branch | proxy | pool | keep
    target: str
    detail: str = ""
    run: Callable[[], str | None] | None = field(default=None, repr=False)


def gc(mgr: SandboxManager, repo_path: Path | None = None, all_repos: bool = False) -> list[Action]:
    """Plan the cleanup (nothing changes until each action's ``run`` is called)."""
    every = mgr.list(any_run=True, sync=False)
    mine = mgr.list(sync=False)
    if all_repos:
        repo_list = sorted({mgr.repo_of(s) for s in mine if Path(s.labels.get(L.GITDIR, "")).is_dir()},
                           key=lambda r: str(r.top))
        for slug_dir in _dirs(mgr.settings.data_dir / "workspaces"):
            for ws in _dirs(slug_dir):
                found = _repo_of_workspace(mgr, ws)
                if found is not None and found not in repo_list:
                    repo_list.append(found)
    else:
        repo_list = [gitops.find_repo(repo_path or Path.cwd())]
    tops = {str(r.top) for r in repo_list}
    # what a branch holds is decided on the agents' latest commits (of these repositories only)
    mgr.refresh_branches([s for s in mine if s.repo in tops], force=True)
    actions: list[Action] = []
    for repo in repo_list:
        actions += _gc_repo(mgr, repo, [s for s in mine if s.repo == str(repo.top)], every)
    from sandbox import isolation

    return actions + _gc_state(mgr, actions, every) + _gc_proxies(
        mgr, {s.name for s in every}, isolation.everything(mgr.engine, mgr.settings.run_id)) + _gc_pool(mgr)


def _gc_pool(mgr: SandboxManager) -> list[Action]:
    """Warm pool slots that serve nobody: unclaimed ones whose container is gone or stopped (a healthy
    one is never touched: `sandbox pool --size 0` empties a pool), a claim cut short (no claim
    record a minute on), and a claimed agent's slot whose container is gone (its work read and,
    when at risk, backed up first, as for any workspace without a container)."""
    data = mgr.settings.data_dir
    containers = {c["Id"]: c for c in mgr.engine.list_containers([L.POOL])}
    claimed = pool.claims(data)
    settled = time.time() - 60
    out: list[Action] = []
    for key in sorted(pool.records(data)):
        for found in pool.slots(data, key):
            cid = found.container_id() or ""
            c = containers.get(cid)
            alive = c is not None and c.get("State") in ("running", "created", "restarting")
            claim_file = found.dir / "claim.json"
            if not found.claimed:
                if alive or (not cid and pool.mtime(found.dir) > settled):
                    continue  # (healthy, or being made right now)

                def drop_free(found: pool.Slot = found, cid: str = cid) -> str | None:
                    if not pool.claim(found):
                        return "kept: a spawn claimed it"
                    if cid:
                        mgr.engine.remove(cid)
                    pool.drop_slot(found)
                    return None
                out.append(Action("pool", found.id, "its container is gone or stopped", run=drop_free))
            elif not claim_file.exists():
                if pool.mtime(found.dir / "claimed") > settled:
                    continue  # (a spawn is claiming it)

                def drop_cut(found: pool.Slot = found, cid: str = cid) -> str | None:
                    if cid:
                        mgr.engine.remove(cid)
                    pool.drop_slot(found)
                    return None
                out.append(Action("pool", found.id, "claimed by a spawn that was cut short", run=drop_cut))
            elif c is None:
                labels = claimed.get(found.id) or {}
                if not labels.get(L.NAME) or not labels.get(L.GITDIR):
                    continue
                repo = gitops.Repo(top=Path(labels.get(L.REPO, "")), common_dir=Path(labels[L.GITDIR]))
                src = Source(name=labels[L.NAME], repo=repo, branch=labels.get(L.BRANCH, BRANCH_PREFIX + labels[L.NAME]),
                             workspace=found.workspace, agent_git=found.agent_git,
                             uid=int(labels.get(L.UID) or 0) or mgr.settings.uid_gid()[0], image=mgr.settings.image,
                             objects=None if labels.get(L.OBJECTS) == "reachable" else repo.common_dir / "objects")
                got = work.read(mgr, src)
                if not got.readable:
                    out.append(Action("keep", str(found.dir), f"no container, and its work cannot be read: {got.reason}"))
                    continue
                at_risk = work.risk(got)

                def drop_claimed(found: pool.Slot = found, src: Source = src, got: work.Work = got,
                                 at_risk: work.Risk = at_risk) -> str | None:
                    saved = work.backup(got) if at_risk else None
                    mgr.drop_workspace(src)
                    mgr.remove_tree(found.dir)  # (its state dir: the agent's side is its uid's)
                    return f"saved first as {saved.ref}" if saved else None
                out.append(Action("workspace", str(found.workspace), f"agent {src.name}'s (warm pool) with no container"
                                  + (f", {at_risk.describe()} backed up first" if at_risk else ""), run=drop_claimed))
    return out


def _gc_state(mgr: SandboxManager, actions: list[Action], every: list[Sandbox]) -> list[Action]:
    """State dirs of agents that are gone (no container, no workspace left in any repository, once
    the planned actions ran) and the locks of spawns that died."""
    from sandbox.spawn.spec import CONTAINER_PREFIX

    settings = mgr.settings
    removed = {a.target.removeprefix(CONTAINER_PREFIX) for a in actions if a.kind == "container"}  # (they take theirs)
    dropping = {Path(a.target).name for a in actions if a.kind == "workspace"}
    everywhere = {p.name for d in _dirs(settings.data_dir / "workspaces") for p in _dirs(d)} - dropping
    names = {s.name for s in every} - removed
    out: list[Action] = []
    for state_dir in _dirs(settings.data_dir / "state"):
        name = state_dir.name
        if name in names or name in removed or name in everywhere or mgr.spawning(name):
            continue
        out.append(Action("state", str(state_dir), "the agent is gone",
                          run=lambda d=state_dir: mgr.remove_tree(d)))
    lock_dir = settings.data_dir / "spawning"
    for lock in sorted(lock_dir.glob("*.lock")) if lock_dir.is_dir() else []:
        if not mgr.spawning(lock.name[:-5]):  # the lock of a spawn that died
            out.append(Action("state", str(lock), "the lock of a spawn that was cut short",
                              run=lambda p=lock: p.unlink(missing_ok=True)))
    return out


def _gc_proxies(mgr: SandboxManager, agents: set[str], candidates: list[dict[str, Any]]) -> list[Action]:
    """Proxies and internal networks of isolated agents that are gone (a spawn cut short): they hold
    no work, and the model proxy holds the key, so they go. Younger than a minute: a spawn may be
    making them right now (its agent comes a moment after), so they stay."""
    settled = time.time() - 60
    young = {c["Labels"][L.PROXY_OF] for c in candidates if _created(c) > settled}
    orphans = {c["Labels"][L.PROXY_OF] for c in candidates} - agents - young
    return [Action("proxy", name, "isolated agent's proxies and network; the agent is gone",
                   run=lambda name=name: mgr.drop_isolation(name)) for name in sorted(orphans)]


def _created(obj: dict[str, Any]) -> float:
    """Epoch seconds an engine object was made: containers say a number, networks an ISO time."""
    raw = obj.get("Created")
    if isinstance(raw, (int, float)):
        return float(raw)
    try:  # the engine's RFC 3339 time, in its own zone ("Z" or an offset), nanoseconds (3.11 reads them all)
        when = datetime.fromisoformat(str(raw))
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    except ValueError:
        return time.time()  # unknown: treated as young (kept)


def _dirs(path: Path) -> list[Path]:
    """Real subdirectories (no symlinks), sorted; none when ``path`` is not a real directory."""
    if not path.is_dir() or path.is_symlink():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())


def _repo_of_workspace(mgr: SandboxManager, ws: Path) -> gitops.Repo | None:
    """The host repository an orphaned workspace came from, from the host's own record (never from
    a file the agent could write)."""
    top = mgr.records.repo(ws.parent.name)
    if top is None:
        return None
    try:
        found = gitops.find_repo(top)
    except SandboxError:
        return None
    return found if found.slug == ws.parent.name else None


def _gc_repo(mgr: SandboxManager, repo: gitops.Repo, mine: list[Sandbox], every: list[Sandbox]) -> list[Action]:
    settings = mgr.settings
    actions: list[Action] = []
    live = {s.labels.get(L.WORKSPACE) for s in every}
    gone: set[str] = set()
    # 1. our containers whose workspace is gone (its commits are brought over first); and containers
    #    a spawn created but never started (it was cut short: the agent never ran), with their workspace
    for s in mine:
        if s.engine_state == "created" and not mgr.spawning(s.name):
            gone.add(s.container_id)
            live.discard(s.labels.get(L.WORKSPACE))  # (its workspace: step 2, read and saved as any orphan)

            def drop_unstarted(s: Sandbox = s) -> str | None:
                mgr.drop_container(s)
                mgr.remove_tree(s.labels.get(L.STATE_DIR), s.image_id)
                return None
            actions.append(Action("container", s.container_name, "created by a spawn that was cut short; never started",
                                  run=drop_unstarted))
        elif not s.workspace.exists():
            gone.add(s.container_id)

            def drop_container(s: Sandbox = s) -> str | None:
                src = mgr.source(s)
                mgr.sync(src, snapshot=False)
                mgr.drop_container(s)
                mgr.drop_workspace(src)
                mgr.remove_tree(s.labels.get(L.STATE_DIR), s.image_id)
                return None
            actions.append(Action("container", s.container_name, f"workspace {s.workspace} is gone", run=drop_container))
    # 2. our workspaces with no container: read once more (a reader container), saved when at risk
    slug_dir = settings.data_dir / "workspaces" / repo.slug
    dropping: set[str] = set()
    for ws in _dirs(slug_dir):
        if str(ws) in live:
            continue
        if mgr.spawning(ws.name):
            actions.append(Action("keep", str(ws), "a spawn is making it"))
            continue
        src = Source(name=ws.name, repo=repo, branch=BRANCH_PREFIX + ws.name, workspace=ws,
                     agent_git=settings.data_dir / "agent-git" / repo.slug / ws.name,
                     uid=os.lstat(ws).st_uid or settings.uid_gid()[0], image=settings.image,
                     objects=mgr.records.objects_of(repo, ws.name))
        got = work.read(mgr, src)
        if not got.readable:
            actions.append(Action("keep", str(ws), f"no container, and its work cannot be read: {got.reason}"))
            continue
        at_risk = work.risk(got)

        def drop(src: Source = src, got: work.Work = got, at_risk: work.Risk = at_risk) -> str | None:
            saved = work.backup(got) if at_risk else None
            mgr.drop_workspace(src)
            return f"saved first as {saved.ref}" if saved else None
        dropping.add(ws.name)
        actions.append(Action("workspace", str(ws), "no container" + (
            f", {at_risk.describe()} backed up first" if at_risk else ""), run=drop))
    # 2b. an agent's git dir with neither workspace nor container (a removal cut short): its commits
    #     brought over (a reader container), then removed
    for agent_git in _dirs(settings.data_dir / "agent-git" / repo.slug):
        name = agent_git.name
        if (slug_dir / name).exists() or any(s.name == name for s in every) or mgr.spawning(name):
            continue
        src = Source(name=name, repo=repo, branch=BRANCH_PREFIX + name, workspace=slug_dir / name, agent_git=agent_git,
                     uid=os.lstat(agent_git).st_uid or settings.uid_gid()[0], image=settings.image,
                     objects=mgr.records.objects_of(repo, name))

        def drop_git(src: Source = src) -> str | None:
            synced = mgr.sync(src, snapshot=False)
            if not synced.ok:
                return f"kept: its commits cannot be read ({synced.reason})"
            mgr.drop_workspace(src)
            return None
        actions.append(Action("workspace", str(agent_git), "an agent's repository with no workspace or container",
                              run=drop_git))
    # 3. sandbox/* branches of removed agents that are merged (and their workspace snapshots)
    live_branches = {s.branch for s in every if s.container_id not in gone and s.repo == str(repo.top)}
    checked = set(work.checked_out(repo))
    for ref in gitops.git(repo.top, "for-each-ref", "--format=%(refname)", "refs/heads/" + BRANCH_PREFIX).stdout.split():
        branch = ref[len("refs/heads/"):]
        name = branch[len(BRANCH_PREFIX):]
        if branch in live_branches or branch in checked:
            continue
        unsaved = work.unsaved_commits(repo, ref)
        if unsaved:
            actions.append(Action("keep", branch, f"{len(unsaved)} commit(s) neither merged nor pushed"))
        else:
            def drop_branch(branch: str = branch, name: str = name) -> str | None:
                if work.unsaved_commits(repo, f"refs/heads/{branch}"):  # moved since the plan: keep it
                    return "kept: it holds new commits"
                gitops.branch_delete(repo, branch)
                gitops.ref_delete(repo, work.wip_ref(name))
                return None
            actions.append(Action("branch", branch, "merged", run=drop_branch))
    return actions
