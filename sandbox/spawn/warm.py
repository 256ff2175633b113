"""The warm pool's lifecycle on the engine: started, unclaimed containers a spawn claims (``take_slot``,
``spawn_warm``), the pool's size and its fill (``key``, ``set_size``, ``fill``, ``top_up_later``) and what
``sandbox pool`` shows (``status``). The bookkeeping on the host (slots, claims, records, the fill
lock) is ``sandbox.pool`` (stdlib only); every container goes through ``runner.run``."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox import agents, contract, crash, labels as L, pool
from sandbox.contract import S
from sandbox.errors import Conflict, NotFound, UsageError
from sandbox.snapshot import read_state
from sandbox.spawn import runner, spec as spec_, trees
from sandbox.workspace import git as gitops
from sandbox.workspace.git import BRANCH_PREFIX

if TYPE_CHECKING:
    from sandbox.manager import SandboxManager
    from sandbox.snapshot import Sandbox


def take_slot(mgr: SandboxManager, key: str) -> pool.Slot | None:
    """Claim the oldest started, unclaimed slot of pool ``key`` (None: the pool is empty)."""
    for found in pool.slots(mgr.settings.data_dir, key):
        if found.claimed or read_state(str(found.state_dir)).get(S.STATE) != contract.POOLED:
            continue
        if pool.claim(found):
            return found
    return None


def spawn_warm(mgr: SandboxManager, found: pool.Slot, req: spec_.Request, job: runner.Spawn,
               branches: dict[str, str]) -> Sandbox | None:
    """Spawn into a claimed pool slot: its container takes the agent's name (the engine's names are
    unique: a taken one is ``NameTaken``), the host makes the workspace in the slot's mounted
    directories, writes the launch document on its state mount and the claim (the agent's labels)
    beside the slot, and signals the waiting init. None: the slot's container is gone (dropped)."""
    repo = job.repo
    ws = spec_.Workspace(path=found.workspace, agent_git=found.agent_git, objects=mgr.objects_for(repo),
                         state_dir=found.state_dir)
    container = spec_.build(req, ws)
    cid = found.container_id()
    try:
        if cid is None:
            raise NotFound("no container recorded")
        mgr.engine.rename(cid, container.name)
    except Conflict:
        pool.unclaim(found)
        raise runner.NameTaken(req.name) from None
    except NotFound:
        pool.drop_slot(found)
        return None
    job.trace.mark("claim")
    with ExitStack() as undo:
        undo.callback(mgr.remove_tree, found.dir, req.image_id)  # (the slot: given to the agent by now)
        undo.callback(mgr.engine.remove, cid)
        job.step(f"workspace on branch {req.branch} (warm pool)")
        trees.make_workspace(mgr, repo, ws, req.branch, req.base, req.uid, req.gid, undo, name=req.name,
                             image=req.image_id, fresh=False, branches=branches, trace=job.trace, copies=job.copies)
        crash.point("spawn:workspace")
        runner.run(mgr, container, undo, job.slot, claimed=cid, trace=job.trace,
                   before_start=lambda: pool.record_claim(found, {**container.labels, L.POOL: found.key,
                                                                  L.POOL_SLOT: found.id}))
        crash.point("spawn:start")
        sandbox = runner.until_ready(mgr, job)
        undo.pop_all()
        return sandbox
    raise AssertionError("unreachable")


def top_up_later(key: str, repo: gitops.Repo) -> None:
    """Top the pool up in the background: one short-lived ``sandbox pool --top-up KEY`` (no daemon),
    detached; it does nothing when another is at it or the pool is full."""
    import subprocess
    import sys

    subprocess.Popen([sys.executable, "-m", "sandbox", "pool", "--top-up", key], cwd=repo.top,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def top_up(data_dir: Path, k: str) -> None:
    """The background top-up after a claim (``top_up_later``): pool ``k`` filled under its own settings
    (the repository and flags its record keeps); nothing when another filler is at it."""
    from sandbox.config import load_settings
    from sandbox.manager import SandboxManager

    record = pool.read_record(data_dir, k)
    if record and record.get("repo"):
        top = Path(record["repo"])
        fill(SandboxManager(load_settings(top, **(record.get("flags") or {}))), k, gitops.find_repo(top), wait=False)


def key(mgr: SandboxManager, repo: gitops.Repo) -> tuple[str, Callable[[pool.Slot], spec_.ContainerSpec]]:
    """(the key of this repository's pool under these settings, a slot -> its container's spec)."""
    s = mgr.settings
    image_id, uid, gid = runner.image_and_user(mgr)
    if s.profile == "isolated":
        raise UsageError("the isolated profile has no warm pool: its network and proxies are each agent's own",
                         hint="pool the default or the locked profile")
    # (what a slot's container fixes at create time only: the agent, base and task come with the claim)
    req0 = runner.request(mgr, "pool", agents.build(s.agent, s.model, None, None), s.model, None, repo,
                          BRANCH_PREFIX + "pool", "0" * 40, image_id, None, uid, gid)

    def for_slot(found: pool.Slot) -> tuple[spec_.ContainerSpec, spec_.Workspace]:
        ws = spec_.Workspace(path=found.workspace, agent_git=found.agent_git,
                             objects=mgr.objects_for(repo), state_dir=found.state_dir)
        return spec_.build(replace(req0, name=found.id, branch=BRANCH_PREFIX + found.id), ws), ws

    probe = pool.Slot("", "probe", s.data_dir / "pool" / "probe")
    spec0, ws0 = for_slot(probe)
    k = pool.key_of(spec_.pool_parts(spec0, ws0))
    return k, lambda found: spec_.pooled(for_slot(found)[0], k, found.id)


def set_size(mgr: SandboxManager, repo: gitops.Repo, size: int, flags: dict[str, Any],
             on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Keep ``size`` started, unclaimed containers for this repository and these settings (0: none);
    fills (or drains) now and waits until they are ready."""
    if size < 0:
        raise UsageError("--size must be 0 or more")
    k, _ = key(mgr, repo)
    record = {"size": size, "repo": str(repo.top), "flags": flags, "image": mgr.settings.image,
              "profile": mgr.settings.profile}
    pool.write_record(mgr.settings.data_dir, k, record)
    for other, was in pool.records(mgr.settings.data_dir).items():  # the same pool made before the image
        if other != k and all(was.get(f) == record[f] for f in ("repo", "image", "profile")):  # or settings changed
            pool.write_record(mgr.settings.data_dir, other, {**was, "size": 0})
            fill(mgr, other, repo, wait=True, on_step=on_step)
    fill(mgr, k, repo, wait=True, on_step=on_step)
    return status(mgr, k)


def fill(mgr: SandboxManager, k: str, repo: gitops.Repo, *, wait: bool,
         on_step: Callable[[str], None] | None = None) -> None:
    """Bring pool ``k`` to its size: drop slots whose container is gone or stopped, remove the
    unclaimed ones above the size, start new ones. One process at a time (the fill lock; another
    filler at work: ``wait=False`` returns at once)."""
    data = mgr.settings.data_dir
    engine = mgr.engine
    step = on_step or (lambda _m: None)
    with pool.FillLock(data, k, wait=wait) as mine:
        if not mine:
            return
        record = pool.read_record(data, k) or {"size": 0}
        now_key, make = key(mgr, repo) if record.get("size") else (k, None)
        if now_key != k:  # the settings changed since the pool was made: it serves nobody now
            record = {**record, "size": 0}
        running = {c["Id"]: c for c in engine.list_containers([f"{L.POOL}={k}"])}
        free = []
        for found in pool.slots(data, k):
            if found.claimed:
                continue
            cid = found.container_id()
            c = running.get(cid or "")
            if c is None or c.get("State") not in ("running", "created"):
                if pool.claim(found):
                    if cid:
                        engine.remove(cid)
                    pool.drop_slot(found)
                continue
            free.append(found)
        for extra in free[int(record.get("size") or 0):]:
            if pool.claim(extra):
                step(f"removing {extra.id}")
                engine.remove(extra.container_id() or spec_.POOL_CONTAINER_PREFIX + extra.id)
                pool.drop_slot(extra)
        started = []
        while make is not None and len(free) + len(started) < int(record.get("size") or 0):
            uid, gid = mgr.settings.uid_gid()
            found = pool.new_slot(data, k, uid, gid)
            step(f"starting {found.id} ({len(free) + len(started) + 1}/{record['size']})")
            with ExitStack() as undo:
                undo.callback(pool.drop_slot, found)
                undo.callback(lambda found=found: engine.remove(found.container_id()
                                                                or spec_.POOL_CONTAINER_PREFIX + found.id))
                runner.run(mgr, make(found), undo, handover=False,
                           on_created=lambda cid, found=found: (found.dir / "container").write_text(cid))
                undo.pop_all()
            started.append(found)
        if not int(record.get("size") or 0) and not pool.slots(data, k):
            shutil.rmtree(pool.pool_dir(data, k), ignore_errors=True)  # (emptied: no pool left to show)
        deadline = time.monotonic() + mgr.settings.ready_timeout
        while wait and started and time.monotonic() < deadline:
            started = [f for f in started if read_state(str(f.state_dir)).get(S.STATE) != contract.POOLED]
            time.sleep(0.05)


def status(mgr: SandboxManager, k: str | None = None) -> dict[str, Any]:
    """Every pool on this host (or pool ``k``): its record and its slots' counts — ``ready``
    (started, waiting for a claim), ``starting``, ``claimed``."""
    data = mgr.settings.data_dir
    out = []
    for each, record in pool.records(data).items():
        if k is not None and each != k:
            continue
        counts = {"ready": 0, "starting": 0, "claimed": 0}
        found_slots = pool.slots(data, each)
        if not record.get("size") and not found_slots and k is None:
            continue  # (an emptied pool: nothing to show)
        for found in found_slots:
            if found.claimed:
                counts["claimed"] += 1
            elif read_state(str(found.state_dir)).get(S.STATE) == contract.POOLED:
                counts["ready"] += 1
            else:
                counts["starting"] += 1
        out.append({"key": each, **{f: record.get(f) for f in ("size", "repo", "image", "profile")}, **counts})
    if k is not None:
        return out[0] if out else {"key": k, "size": 0, "repo": None, "image": None, "profile": None,
                                   "ready": 0, "starting": 0, "claimed": 0}
    return {"pools": out, "ready": sum(p["ready"] for p in out)}
