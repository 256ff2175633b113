"""The domain: a manager (collection) of agent sandboxes (snapshots: ``sandbox.snapshot.Sandbox``).

``SandboxManager.spawn`` makes a workspace on a new branch, a container with it mounted, and a
tmux session inside running the agent (``sandbox.spawn.runner``; a spawn that fails half-way removes
what it made). Everything ``list`` shows comes from one label-filtered engine call (its backend's,
``sandbox.backend``) plus local state files; ``remove`` never loses work (``sandbox.workspace.work``'s
guard); ``sync`` brings an agent's commits over.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox import agentfiles, cgroups, contract, crash, disk, labels as L, pool, timelimit, usage as U
from sandbox.backend import Backend, choose, every_container_of_ours
from sandbox.workspace import git as gitops
from sandbox.contract import CommandResult, S
from sandbox.engine import Engine
from sandbox.errors import AgentError, Conflict, NotFound, UsageError
from sandbox.snapshot import Port, Sandbox, published, read_state as _read_state  # (re-exported: Sandbox, Port)
from sandbox.workspace import sync as sync_
from sandbox.workspace.git import WIP_PREFIX
from sandbox.workspace.sync import Source, Synced  # (re-exported)
from sandbox.tmux import Tmux

if TYPE_CHECKING:
    from sandbox.config import Settings

__all__ = ["Port", "Sandbox", "SandboxManager", "Source", "Synced", "published"]

STATE_MOUNT = contract.STATE_MOUNT
LIST_SYNC_TIMEOUT = 10.0   # s: what `ls` waits at most for one agent's branch (then it is shown stale)
SYNC_WORKERS = 16          # agents read side by side by one `ls`

# What a throwaway container as the agent's uid runs to empty a tree of the agent's (``remove_tree``): its
# modes first (a directory the agent left unwritable; what it cannot remove itself, the host must list),
# then every entry, no link followed.
_EMPTY_TREE = 'chmod -R u+rwX,go+rX -- "$1" 2>/dev/null; find "$1" -xdev -mindepth 1 -delete 2>/dev/null; true'


def _foreign_owner(path: Path) -> tuple[int, int] | None:
    """The uid:gid (not this user's, never root) owning ``path`` (a real directory) or, when that is
    this user's, one of its entries: whose files are left there that this user cannot delete."""
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return None
        if st.st_uid == os.getuid():
            for entry in os.scandir(path):
                est = entry.stat(follow_symlinks=False)
                if est.st_uid != os.getuid():
                    st = est
                    break
    except OSError:
        return None
    return (st.st_uid, st.st_gid) if st.st_uid not in (0, os.getuid()) else None


class SandboxManager:
    """Create, find and remove agent sandboxes. Holds one engine connection."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or Engine()
        self.backend: Backend = choose(settings, self.engine)  # (the one place that knows which backend)
        self.records = sync_.Records(settings.data_dir)  # (the host's records of each agent's work)

    @property
    def swarm(self) -> Any:
        """The Swarm calls of this engine (``Backend.swarm``): an agent labelled as a Swarm service."""
        return self.backend.swarm

    def containers(self, filters: list[str]) -> list[dict[str, Any]]:
        """The engine side of discovery (``Backend.containers``)."""
        return self.backend.containers(filters)

    def engine_for(self, sb: Sandbox) -> Engine:
        """The engine that runs ``sb``'s container: this one, or its swarm node's."""
        return self.backend.engine_for(sb)

    # -- finding -----------------------------------------------------------------------------
    def _filters(self, *extra: str, any_run: bool = False) -> list[str]:
        filters = L.managed_filter(*extra)
        if self.settings.run_id and not any_run:
            filters.append(f"{L.RUN_ID}={self.settings.run_id}")
        return filters

    def _snapshot(self, c: dict[str, Any]) -> Sandbox:
        lab = dict(c.get("Labels") or {})
        container_name = (c.get("Names") or ["/?"])[0].lstrip("/")
        return Sandbox(
            name=L.name_of(lab, container_name),
            container_id=c["Id"],
            container_name=container_name,
            labels=lab,
            engine_state=c.get("State", ""),
            status=c.get("Status", ""),
            agent_state=_read_state(lab.get(L.STATE_DIR)),
            image_id=str(c.get("ImageID") or ""),
            pressure=cgroups.pressure(str(c["Id"])) if c.get("State") == "running" else None,
            container_created=float(c.get("Created") or 0),
            node=str(c.get("Node") or ""),
            context=str(c.get("Context") or ""),
            ports=published(c.get("Ports")),
            host_reason=disk.stopped_reason(self.settings.data_dir, L.name_of(lab, container_name), str(c["Id"]))
            if c.get("State") in ("exited", "dead") else "",
        )

    def list(self, repo: Path | None = None, *, exec_state: bool = False, sync: bool = True,
             any_run: bool = False) -> list[Sandbox]:
        """Every managed agent (of one repository when ``repo`` is given): one engine call.

        ``exec_state``: for a running agent whose state file this host cannot read (a remote
        engine), read it with one exec into that container. ``any_run``: also agents of other run
        ids (see ``Settings.run_id``). ``sync``: first bring over the commits
        of agents whose git changed (``refresh_branches``), so ``git log sandbox/NAME`` is current.
        """
        extra = [f"{L.REPO}={repo}"] if repo and not self.backend.clones else []  # (agents that clone: no repo here)
        found = [self._snapshot(c) for c in self.containers(self._filters(*extra, any_run=any_run))]
        if sync:  # bounded per agent, side by side: an agent whose export hangs is listed, marked stale
            stale = self.refresh_branches(found, timeout=min(self.settings.sync_timeout, LIST_SYNC_TIMEOUT))
            found = [replace(sb, stale=stale[sb.name]) if sb.name in stale else sb for sb in found]
            if disk.watch(self, found) + timelimit.watch(self, found):  # (stopped for their disk or time: as they are now)
                found = [self._snapshot(c) for c in self.containers(self._filters(*extra, any_run=any_run))]
        # (a headless agent without a state dir on this host, e.g. from Compose: its state by one exec)
        def needs_exec(sb: Sandbox) -> bool:
            return bool(exec_state or (sb.headless and not sb.labels.get(L.STATE_DIR))
                        or (sb.labels.get(L.STATE_DIR) and not os.path.isdir(sb.labels[L.STATE_DIR])))  # (remote)

        if sum(map(needs_exec, found)) > 1:  # one exec each, side by side
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=8) as pool:
                found = list(pool.map(lambda sb: self.with_exec_state(sb) if needs_exec(sb) else sb, found))
        else:
            found = [self.with_exec_state(sb) if needs_exec(sb) else sb for sb in found]
        return sorted(found, key=lambda s: (s.labels.get(L.CREATED, ""), s.name))

    def names(self, prefix: str = "") -> list[str]:
        """The names of the agents (every repository, this run id) that start with ``prefix``, sorted:
        labels only, one engine call (shell completion; ``list`` syncs and reads state files)."""
        found = {L.name_of(dict(c.get("Labels") or {}), (c.get("Names") or ["/?"])[0].lstrip("/"))
                 for c in self.containers(self._filters())}
        return sorted(n for n in found if isinstance(n, str) and n.startswith(prefix))

    def event_filters(self) -> list[str]:
        """The label filters of this manager's agents (managed, this run id): for ``Engine.events``;
        with warm pool agents about, every container of ours (a claimed one has no agent's labels)."""
        if pool.claims(self.settings.data_dir):
            return every_container_of_ours(self._filters())
        return self._filters()

    def refreshed(self, sb: Sandbox) -> Sandbox:
        """``sb`` with its state file read again (local, no engine call; the container's state as it
        was). A file this host cannot read (remote engine) leaves the state as it was."""
        state = _read_state(sb.labels.get(L.STATE_DIR))
        return replace(sb, agent_state=state) if state else sb

    def with_exec_state(self, sb: Sandbox) -> Sandbox:
        if sb.agent_state or sb.engine_state != "running":
            return sb
        try:
            res = self.engine_for(sb).exec_retried(sb.container_id, agentfiles.exec_argv(f"{STATE_MOUNT}/state.json",
                                                                                  agentfiles.STATE_CAP),
                                                   user=sb.agent_user)  # (sees only what the agent sees)
        except (Conflict, NotFound):  # it stopped between the list and the exec: no state to read
            return sb
        state = None
        if res.exit_code == 0 and len(res.stdout) <= agentfiles.STATE_CAP:
            state, _ = agentfiles.parse_state(res.stdout)
        return replace(sb, agent_state=state or {})

    def with_stats(self, found: list[Sandbox], *, workers: int = 8) -> list[Sandbox]:
        """The snapshots with their containers' CPU and memory (running ones): one stats request per
        agent, side by side and bounded (``Engine.stats_many``: at most ``workers`` at once, each
        ~2 s: the engine's two samples for the CPU figure)."""
        running = [sb.container_id for sb in found if sb.engine_state == "running"]
        answers = self.engine.stats_many(running, workers=workers, one_shot=False)
        return [replace(sb, stats=U.from_answer(answers.get(sb.container_id))) if sb.container_id in answers else sb
                for sb in found]

    def get(self, name: str) -> Sandbox:
        found = self.containers(self._filters(f"{L.NAME}={name}"))
        if found:
            sb = self._snapshot(found[0])
            return self.with_exec_state(sb) if self.backend.clones else sb
        # A headless agent without a name label (a Compose replica): PROJECT-SERVICE-NUMBER, or its
        # container's name (Compose v1: PROJECT_SERVICE_NUMBER).
        for c in self.engine.list_containers(self._filters(f"{L.MODE}={L.HEADLESS}")):
            sb = self._snapshot(c)
            if name in (sb.name, sb.container_name) and not sb.labels.get(L.NAME):
                return self.with_exec_state(sb) if not sb.labels.get(L.STATE_DIR) else sb
        raise NotFound(f"no agent named {name!r}", hint="see `sandbox ls --all`")

    # -- spawning (sandbox.spawn.runner: the pre-checks, the spec, the one runner) ------------------
    def spawn(self, task: str | None, **how: Any) -> Sandbox:
        """An agent with its own workspace on a new branch (``sandbox.spawn.runner.spawn``: its
        keywords); ``labels``: more ``sandbox.*`` labels on the agent (a plan's), never the spawn's own."""
        from sandbox.spawn import runner

        return runner.spawn(self, task, **how)

    def spawn_headless(self, task: str | None, **how: Any) -> Sandbox:
        """Run the image's headless mode on this backend (``sandbox spawn --headless``): the agent clones
        ``repo_url`` in its container and pushes its work there; nothing of it on this host but its
        state dir. The same container a Cloud Run-like host runs (``spec.build_headless``)."""
        from sandbox.spawn import runner

        return runner.spawn_headless(self, task, **how)

    def working_count(self) -> int:
        """Agents holding a capacity slot: starting, busy or waiting (one engine call)."""
        from sandbox.capacity import WORKING

        return sum(1 for sb in self.list(sync=False) if sb.state in WORKING)

    def spawning(self, name: str) -> bool:
        """Is a spawn of ``name`` running on this host (its lock held)? ``gc`` leaves what it makes alone."""
        from sandbox.spawn.runner import SpawnLock

        return SpawnLock.held(self.settings.data_dir, name)

    def remove_tree(self, path: Path | str | None, image: str | None = None) -> None:
        """Delete an agent's tree (workspace, git dir, state dir, pool slot), never following a link.
        What this host user cannot delete (a non-root user: the agent's uid owns it) is emptied by a
        throwaway container as that uid (``_EMPTY_TREE``; no capability); gone already is fine."""
        if path is None:
            return
        top = Path(path)
        shutil.rmtree(top, ignore_errors=True)
        if os.getuid() == 0 or (owner := _foreign_owner(top)) is None:
            return
        labels = {L.READER: top.name, **({L.RUN_ID: self.settings.run_id} if self.settings.run_id else {})}
        Engine.run_tool(image or self.settings.image, "{}:{}".format(*owner), [(str(top), "/tree")],
                        ["sh", "-c", _EMPTY_TREE, "sh", "/tree"], labels)
        shutil.rmtree(top, ignore_errors=True)

    def objects_for(self, repo: gitops.Repo) -> Path | None:
        """The host's object store a new agent borrows (read-only), or None: it gets a pack of what its
        base reaches (the ``objects`` setting; always so in the isolated profile)."""
        shared = self.settings.objects == "shared" and self.settings.profile != "isolated"
        return repo.common_dir / "objects" if shared else None

    def proxies(self, name: str) -> list[dict[str, Any]]:
        """An isolated agent's proxy containers (none for other profiles), by label."""
        from sandbox import isolation

        return isolation.proxies(self.engine, name)

    def drop_isolation(self, name: str) -> None:
        """Remove an isolated agent's proxies and network (``sandbox.isolation.drop``)."""
        from sandbox import isolation

        isolation.drop(self.engine, name)

    def netlog(self, sb: Sandbox) -> list[Any]:
        """What an isolated agent's proxies saw (``sandbox.isolation.netlog``)."""
        from sandbox import isolation

        return isolation.netlog(self.engine, sb.name)

    def wait_ready(self, sandbox: Sandbox, timeout: float | None = None, since: float = 0.0) -> Sandbox:
        """Poll the local state file (no engine call) until the agent accepts input.

        States written before ``since`` (a previous run of the container) are ignored.
        """
        timeout = timeout if timeout is not None else self.settings.ready_timeout
        state_dir = sandbox.labels.get(L.STATE_DIR)
        deadline = time.monotonic() + timeout
        delay = 0.002
        checks = 0
        while True:
            # (no state dir here: a Compose replica's state file, read in its container)
            state = _read_state(state_dir) if state_dir else self.get(sandbox.name).agent_state
            st = state.get(S.STATE) if float(state.get(S.TS) or 0) >= since else None
            if st in contract.ACCEPTS_INPUT or (st == contract.EXITED and state.get(S.EXIT_CODE) == 0):
                return self.get(sandbox.name)  # (a quick agent may have started and finished already)
            if st in contract.TERMINAL:
                raise AgentError(f"agent {sandbox.name} did not start: {state.get(S.REASON) or st}")
            checks += 1
            if checks % 20 == 0:  # now and then, make sure the container is still there
                current = self.get(sandbox.name)
                if current.engine_state not in ("running", "created"):
                    tail = self.engine.logs(current.container_id, tail=20).strip().splitlines()
                    raise AgentError(f"agent {sandbox.name} stopped while starting: "
                                     f"{tail[-1] if tail else current.status}")
            if time.monotonic() > deadline:
                raise AgentError(f"agent {sandbox.name} not ready after {timeout:.0f}s",
                                 hint=f"see `sandbox logs {sandbox.name}`")
            time.sleep(delay)
            delay = min(delay * 1.25, 0.025)  # a local file read: polling often costs nothing, late costs latency

    # -- talking to an agent -------------------------------------------------------------------
    def require_running(self, name: str) -> Sandbox:
        """The agent, which must be running (one engine call)."""
        sb = self.get(name)
        if sb.engine_state != "running":
            raise AgentError(f"agent {name} is not running ({sb.state})", hint=f"`sandbox start {name}`")
        return sb

    def tmux(self, sb: Sandbox) -> Tmux:
        return Tmux(_DockerExecutor(self.engine_for(sb), sb.container_id), sb.session)

    def send(self, name: str, text: str, *, enter: bool = True, sb: Sandbox | None = None) -> Sandbox:
        """Type ``text`` into the agent's pane (after it is ready); ``sb``: a fresh snapshot already at hand."""
        sb = sb or self.require_running(name)
        if sb.state == "starting":
            sb = self.wait_ready(sb)
        self.tmux(sb).send(text, enter=enter)
        return sb

    def logs(self, name: str, lines: int | None = None) -> str:
        sb = self.require_running(name)
        return self.tmux(sb).capture(lines)

    def follow(self, name: str, interval: float = 0.5) -> Iterator[str]:
        """Yield new pane lines as they appear (until the agent stops)."""
        sb = self.require_running(name)
        tm = self.tmux(sb)
        seen: list[str] = []
        while True:
            lines = tm.capture(2000).splitlines()
            common = 0
            if seen:
                # find where the previous tail continues
                for k in range(min(len(seen), len(lines)), 0, -1):
                    if lines[:k] == seen[-k:]:
                        common = k
                        break
            for line in lines[common:]:
                yield line
            seen = lines
            time.sleep(interval)
            if not self.get(name).engine_state == "running":
                return

    def exec(self, name: str, argv: list[str]) -> CommandResult:
        """``argv`` in the agent's container as the agent (never its root supervisor)."""
        sb = self.require_running(name)
        return self.engine_for(sb).exec(sb.container_id, argv, user=sb.agent_user)

    # -- lifecycle -----------------------------------------------------------------------------
    def stop(self, name: str, timeout: int = 10) -> Sandbox:
        sb = self.get(name)
        if sb.labels.get(L.BACKEND) == L.SWARM:
            self.swarm.scale(sb.labels[L.SWARM_SERVICE], 0)
            return sb
        if sb.engine_state == "running":
            self.engine.stop(sb.container_id, timeout=timeout)
        for c in self.proxies(name) if sb.labels.get(L.PROFILE) == "isolated" else []:
            if c.get("State") == "running":  # its way out is not needed while it is stopped (start brings it back)
                self.engine.stop(str(c["Id"]), timeout=2)
        return self.get(name)

    def start(self, name: str, wait_ready: bool = True) -> Sandbox:
        sb = self.get(name)
        since = time.time()
        if sb.labels.get(L.BACKEND) == L.SWARM:
            self.swarm.scale(sb.labels[L.SWARM_SERVICE], 1)
            return self.wait_ready(self.get(name), since=since) if wait_ready else self.get(name)
        if sb.engine_state != "running":
            for c in self.proxies(name) if sb.labels.get(L.PROFILE) == "isolated" else []:
                if c.get("State") != "running":  # an isolated agent's way out first
                    self.engine.start(str(c["Id"]))
            self._mark_user_start(sb)
            self.engine.start(sb.container_id)
            sb = self.get(name)
        else:
            since = 0.0
        return self.wait_ready(sb, since=since) if wait_ready else sb

    def _mark_user_start(self, sb: Sandbox) -> None:
        """Started by the user, not by the engine's restart policy: the init counts failures afresh (a
        ``failed`` agent gets its attempts again). A file copied into the stopped container, owned as
        its launch files are (the agent's uid:gid, as its state dir on the host)."""
        uid, gid = 0, 0  # (every container `sandbox` starts, headless too, has a root init: the file is its)
        from sandbox.spawn.runner import tar

        files = {os.path.basename(contract.START_FILE): (b"{}\n", 0o600)}
        self.engine.put_archive(sb.container_id, contract.LAUNCH_DIR, tar(files, uid, gid, "."))

    def restart(self, name: str) -> Sandbox:
        self.stop(name)
        return self.start(name)

    def remove(self, name: str, *, force: bool = False, delete_branch: bool = False,
               on_backup: Callable[[Any], None] | None = None,
               on_kept: Callable[[str], None] | None = None) -> Sandbox:
        """Remove the container, the workspace and the agent's git dir; the branch stays unless asked.

        First brings the agent's work over (``sync``) and refuses when the workspace has uncommitted
        changes or commits neither merged nor pushed (or cannot be read), unless ``force``. Once the
        container is gone, the final state is read once more and, when at risk, saved under a
        backup ref (see ``sandbox.workspace.work``), passed to ``on_backup``. When that final state cannot be
        read, the workspace and the agent's git dir are kept (what was read last is backed up) and
        ``on_kept`` gets why: nothing that could not be saved is ever deleted.
        """
        from sandbox.workspace import work

        sb = self.get(name)
        if sb.labels.get(L.BACKEND) == L.SWARM:  # its work is in the branch it pushes (SIGTERM: a WIP push first)
            self.swarm.remove(sb.labels[L.SWARM_SERVICE], sb.name)
            return sb
        if sb.headless:
            return self._remove_headless(sb, force=force)
        work.check_removable(self, sb, force=force)
        crash.point("rm:checked")
        self.drop_container(sb)
        crash.point("rm:container")
        gone = replace(sb, engine_state="removed")
        saved, unreadable = work.save_if_at_risk(self, gone)  # the agent is gone: this snapshot is final
        crash.point("rm:backup")
        if saved is not None and on_backup is not None:
            on_backup(saved)
        if unreadable:
            if on_kept is not None:
                on_kept(f"its final state cannot be read ({unreadable}): workspace kept at {sb.workspace}"
                        f" and {sb.agent_git}")
        else:
            self.drop_workspace(self.source(gone))
        crash.point("rm:workspace")
        if delete_branch:
            gitops.branch_delete(self.repo_of(sb), sb.branch)
        self.remove_tree(sb.labels.get(L.STATE_DIR), sb.image_id)
        disk.forget(self.settings.data_dir, sb.name)
        if not unreadable and (found := pool.slot_of(self.settings.data_dir, sb.labels)) is not None:
            pool.drop_slot(found)  # (a warm pool's slot: its claim goes with it)
        return sb

    def _remove_headless(self, sb: Sandbox, *, force: bool) -> Sandbox:
        """A headless agent's work is in the branch it pushes: stop it first (SIGTERM: it pushes what
        is uncommitted as a WIP commit), then remove the container (and its state dir, if here). A
        final push that failed (exit 4) keeps the container for its log, unless ``force``."""
        if sb.engine_state == "running":
            self.engine.stop(sb.container_id, timeout=15)
            sb = self.get(sb.name)
        m = re.match(r"Exited \((-?\d+)\)", sb.status)
        if m and int(m.group(1)) == 4 and not force:
            raise Conflict(f"agent {sb.name} could not push its work (exit 4): container kept for its log",
                           hint=f"`docker logs {sb.container_name}`; `sandbox rm --force {sb.name}` removes it")
        self.engine.remove(sb.container_id, force=True)
        if sb.labels.get(L.STATE_DIR):
            self.remove_tree(sb.labels[L.STATE_DIR], sb.image_id)
        return sb

    # -- the agent's work, brought over --------------------------------------------------------
    @staticmethod
    def repo_of(sb: Sandbox) -> gitops.Repo:
        return gitops.Repo(top=Path(sb.repo), common_dir=Path(sb.labels[L.GITDIR]))

    def source(self, sb: Sandbox) -> Source:
        if sb.headless:
            raise UsageError(f"agent {sb.name} is headless: its work is in branch {sb.branch or '?'} of "
                             f"{sb.labels.get(L.REMOTE) or 'its remote'}, not on this host",
                             hint="fetch that branch from the remote")
        uid = int(sb.labels.get(L.UID) or 0) or self.settings.uid_gid()[0]
        repo = self.repo_of(sb)
        objects = None if sb.labels.get(L.OBJECTS) == "reachable" else repo.common_dir / "objects"
        return Source(name=sb.name, repo=repo, branch=sb.branch, workspace=sb.workspace,
                      agent_git=sb.agent_git, uid=uid, image=sb.image_id or self.settings.image,
                      container=sb.container_id if sb.engine_state == "running" else None, objects=objects)

    def sync(self, src: Source, *, snapshot: bool = True, timeout: float | None = None) -> Synced:
        """Bring the agent's work over (``sandbox.workspace.sync.sync``): its HEAD into ``sandbox/NAME``,
        with ``snapshot`` its whole workspace into ``refs/sandbox/wip/NAME``; never raises for an
        unreadable agent (the result says why)."""
        return sync_.sync(self.settings, self.records, src, snapshot=snapshot, timeout=timeout)

    def refresh_branches(self, found: list[Sandbox], *, force: bool = False,
                         timeout: float = 30.0) -> dict[str, str]:
        """Bring over the commits of every listed agent whose git dir changed since the last
        fetch (a few ``lstat`` calls each, no exec when nothing changed; ``force``: every one);
        side by side (up to ``SYNC_WORKERS`` at once), each bounded by ``timeout``. Returns why each
        agent that could not be read failed (name -> reason); it is tried again next time."""
        todo = [self.source(sb) for sb in found
                if sb.agent_git is not None and sync_.real_dir(sb.agent_git)  # (not: a remote engine, or gone)
                and (force or sync_.signature(sb.agent_git) != self.records.last_fetch(sb.name))]
        if not todo:
            return {}
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(SYNC_WORKERS, len(todo))) as pool:
            results = list(pool.map(lambda src: self.sync(src, snapshot=False, timeout=timeout), todo))
        return {src.name: r.reason or "cannot be read" for src, r in zip(todo, results) if not r.ok}

    def read_in(self, sb: Sandbox, argv: list[str]) -> CommandResult:
        """Run a command that only reads inside the agent's container, as the agent (retried on transient
        errors)."""
        return self.engine_for(sb).exec_retried(sb.container_id, argv, user=sb.agent_user)

    def drop_container(self, sb: Sandbox) -> None:
        """Remove the agent's container and its proxies and network, if any (gone already is fine); its
        work must be saved by the caller."""
        self.engine.remove(sb.container_id, force=True)
        if sb.labels.get(L.PROFILE) == "isolated":
            self.drop_isolation(sb.name)

    def drop_workspace(self, src: Source) -> None:
        """Delete what the agent had on the host (its work must be saved by the caller). The agent's
        git dir goes first and the workspace last: cut short, what is left is an orphan workspace,
        which ``gc`` reads (a reader container) and backs up before removing it."""
        if src.agent_git is not None:
            self.remove_tree(src.agent_git, src.image)
        crash.point("rm:agent-git")
        self.remove_tree(src.workspace, src.image)
        gitops.ref_delete(src.repo, WIP_PREFIX + src.name)
        self.records.forget(src.name)


@dataclass(frozen=True)
class _DockerExecutor:
    engine: Engine
    container: str

    def run(self, argv: list[str]) -> CommandResult:
        return self.engine.exec(self.container, argv)
