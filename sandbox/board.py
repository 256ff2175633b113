"""What ``sandbox top`` shows, kept current without a cost per agent per refresh (no textual here).

A ``Board`` holds a snapshot of every agent (of one repository, or all) and keeps it current from:

- **the engine's event stream** (``Engine.events``: start, die, stop, destroy, health… of managed
  containers): an event marks the list stale; it is listed again (one engine call) at most once per
  ``list_min`` seconds, and every ``relist_every`` seconds anyway (events replay only recent history;
  after the stream breaks it is opened again and the agents listed again);
- **the state files**, polled locally every ``state_every`` seconds: one ``lstat`` per agent (never
  following or opening anything), and a read through ``sandbox.agentfiles`` only when the file
  changed. Where this host cannot see the state dir (a remote engine), one bounded exec per running
  agent reads it, at most every ``exec_every`` seconds;
- **the engine's stats**, every ``stats_every`` seconds (10), one one-shot request per running agent, side by
  side and bounded (``Engine.stats_many``); CPU % between two consecutive samples;
- **the host's refs** for the diffstat (``git diff --shortstat base..sandbox/NAME``, computed again only
  when the branch moved; ``SandboxManager.list`` brings changed work over first) and the files each agent
  committed, whose overlaps between agents of one repository mark them (``Row.overlaps``).

Two threads do this (the poller, the event watcher) and one for stats; ``rows()`` gives the current
rows, ``version`` grows whenever one changed. ``counts`` says how many engine calls each kind made
(the bench reads it).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sandbox import contract, labels as L, usage as U
from sandbox.errors import SandboxError
from sandbox.manager import STATE_MOUNT, Sandbox, SandboxManager

# `waiting` agents first (they need you), then the working ones, then the rest.
ORDER = {contract.WAITING: 0, contract.BUSY: 1, contract.STARTING: 2, contract.READY: 3, contract.IDLE: 3}


@dataclass(frozen=True)
class Row:
    sb: Sandbox
    stats: U.Stats | None
    diffstat: str
    cost: U.Cost | None
    overlaps: tuple[str, ...] = ()  # the other agents of its repository whose committed files meet its own

    @property
    def name(self) -> str:
        return self.sb.name


def _sort_key(row: Row) -> tuple[int, str, str]:
    return ORDER.get(row.sb.state, 4), row.sb.labels.get(L.CREATED, ""), row.sb.name


def overlaps(name: str, files: dict[str, tuple[str, str, frozenset[str]]]) -> tuple[str, ...]:
    """The agents of ``name``'s repository whose committed files (base..branch, the host's refs) meet
    its own: ``sandbox conflicts`` says which files and whether the merge is clean."""
    if name not in files:
        return ()
    repo, _, mine = files[name]
    return tuple(sorted(other for other, (their_repo, _, theirs) in files.items()
                        if other != name and their_repo == repo and mine & theirs))


class Board:
    def __init__(self, mgr: SandboxManager, repo: Path | None, *, state_every: float = 0.5,
                 list_min: float = 1.0, relist_every: float = 60.0, stats_every: float = 10.0,
                 exec_every: float = 5.0, events: bool = True) -> None:
        self.mgr = mgr
        self.repo = repo
        self.state_every, self.list_min, self.relist_every = state_every, list_min, relist_every
        self.stats_every, self.exec_every = stats_every, exec_every
        self.prices = mgr.settings.price_table()
        self.version = 0
        self.counts = {"list": 0, "stats": 0, "exec": 0, "events": 0, "event_streams": 0}
        self.newly_waiting: list[Sandbox] = []   # agents that just turned `waiting` (top rings / notifies)
        self.error = ""                          # the last engine error, for the status line
        self._lock = threading.Lock()
        self._agents: dict[str, Sandbox] = {}
        self._sig: dict[str, tuple[int, int, int] | None] = {}
        self._exec_at: dict[str, float] = {}
        self._samples: dict[str, U.Sample] = {}
        self._stats: dict[str, U.Stats] = {}
        self._diffstat: dict[str, tuple[str, str]] = {}   # name -> (head, text)
        self._files: dict[str, tuple[str, str, frozenset[str]]] = {}  # name -> (repo, head, files since base)
        self._stale = threading.Event()
        self._stop = threading.Event()
        self._listed_at = float("-inf")
        self._threads: list[threading.Thread] = []
        self._use_events = events

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> Board:
        self.refresh()
        targets = [self._poll_loop, self._stats_loop] + ([self._event_loop] if self._use_events else [])
        for target in targets:
            t = threading.Thread(target=target, name=f"board-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._stale.set()
        for t in self._threads:
            t.join(timeout=3)

    def __enter__(self) -> Board:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def poke(self) -> None:
        """List again soon (after an action of ours: stop, rm…)."""
        self._stale.set()

    # -- what top shows -----------------------------------------------------------------------------
    def rows(self, text_filter: str = "") -> list[Row]:
        with self._lock:
            agents = list(self._agents.values())
            stats = dict(self._stats)
            diffs = {k: v[1] for k, v in self._diffstat.items()}
            files = dict(self._files)
        rows = [Row(sb, stats.get(sb.container_id) if sb.engine_state == "running" else None,
                    diffs.get(sb.name, ""), sb.cost(self.prices), overlaps(sb.name, files)) for sb in agents]
        if text_filter:
            needle = text_filter.lower()
            rows = [r for r in rows if needle in " ".join((r.sb.name, r.sb.state, r.sb.branch,
                                                           r.sb.labels.get(L.TASK, ""))).lower()]
        return sorted(rows, key=_sort_key)

    def get(self, name: str) -> Sandbox | None:
        with self._lock:
            return self._agents.get(name)

    def take_newly_waiting(self) -> list[Sandbox]:
        with self._lock:
            got, self.newly_waiting = self.newly_waiting, []
        return got

    # -- keeping it current -------------------------------------------------------------------------
    def _bump(self) -> None:
        self.version += 1

    def _merge(self, fresh: dict[str, Sandbox]) -> None:
        """Take new snapshots (under the lock): note `waiting` transitions, bump the version on change."""
        with self._lock:
            changed = set(fresh) != set(self._agents)
            for name, sb in fresh.items():
                old = self._agents.get(name)
                if old is None or (old.state, old.agent_state, old.engine_state) != (sb.state, sb.agent_state, sb.engine_state):
                    changed = True
                    if sb.state == contract.WAITING and (old is None or old.state != contract.WAITING):
                        self.newly_waiting.append(sb)
            self._agents = fresh
            if changed:
                self._bump()

    def refresh(self) -> None:
        """List the agents now (one engine call) and bring changed work over (``SandboxManager.list``)."""
        self._listed_at = time.monotonic()
        self.counts["list"] += 1
        try:
            found = self.mgr.list(self.repo)
        except SandboxError as e:
            self.error = str(e)
            return
        self.error = ""
        fresh = {}
        for sb in found:
            self._sig[sb.name] = self._state_sig(sb)
            old = self.get(sb.name)
            if not sb.agent_state and sb.engine_state == "running" and old is not None and old.agent_state:
                sb = replace(sb, agent_state=old.agent_state)  # (a remote engine's state, read by exec)
            fresh[sb.name] = sb
        self._merge(fresh)
        self._diffstats(found)

    @staticmethod
    def _state_sig(sb: Sandbox) -> tuple[int, int, int] | None:
        directory = sb.labels.get(L.STATE_DIR)
        if not directory:
            return None
        try:
            st = os.lstat(os.path.join(directory, contract.STATE_FILE))  # lstat: never follows the agent's link
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _poll_states(self) -> None:
        with self._lock:
            agents = dict(self._agents)
        fresh = dict(agents)
        now = time.monotonic()
        for name, sb in agents.items():
            sig = self._state_sig(sb)
            if sig is not None:
                if sig != self._sig.get(name):
                    self._sig[name] = sig
                    fresh[name] = self.mgr.refreshed(sb)
            elif sb.engine_state == "running" and now - self._exec_at.get(name, float("-inf")) >= self.exec_every:
                self._exec_at[name] = now  # a state dir this host cannot see: one bounded exec, throttled
                fresh[name] = self._exec_state(sb)
        if fresh != agents:
            self._merge(fresh)

    def _exec_state(self, sb: Sandbox) -> Sandbox:
        from sandbox import agentfiles

        self.counts["exec"] += 1
        try:
            res = self.mgr.read_in(sb, agentfiles.exec_argv(f"{STATE_MOUNT}/{contract.STATE_FILE}", agentfiles.STATE_CAP))
        except SandboxError:
            return sb
        if res.exit_code != 0 or len(res.stdout) > agentfiles.STATE_CAP:
            return sb
        state, _ = agentfiles.parse_state(res.stdout)
        return replace(sb, agent_state=state) if state else sb

    def _diffstats(self, found: list[Sandbox]) -> None:
        from sandbox.workspace import conflicts
        from sandbox.workspace import git as gitops
        from sandbox.workspace import work

        heads: dict[str, dict[str, str]] = {}  # repository -> branch -> head: one for-each-ref per repository
        for sb in found:
            try:
                repo = self.mgr.repo_of(sb)
                if sb.repo not in heads:
                    out = gitops.git(repo.top, "for-each-ref", "--format=%(refname) %(objectname)",
                                     f"refs/heads/{gitops.BRANCH_PREFIX}", check=False, timeout=30).stdout
                    heads[sb.repo] = {ref.removeprefix("refs/heads/"): sha for ref, _, sha in
                                      (line.partition(" ") for line in out.splitlines())}
                head = heads[sb.repo].get(sb.branch)
            except (SandboxError, KeyError, OSError):
                continue
            base = sb.labels.get(L.BASE)
            if head is None or not base:
                continue
            if self._diffstat.get(sb.name, ("", ""))[0] == head:
                continue
            text = work.shortstat(repo, base, head)
            changed = frozenset(conflicts.changed_files(repo, base, head))
            with self._lock:
                self._diffstat[sb.name] = (head, text)
                self._files[sb.name] = (sb.repo, head, changed)
                self._bump()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            due = now - self._listed_at >= self.relist_every
            if (self._stale.is_set() or due) and now - self._listed_at >= self.list_min:
                self._stale.clear()
                self.refresh()
            else:
                self._poll_states()
            wait = self.state_every
            if self._stale.is_set():
                wait = max(0.0, min(wait, self.list_min - (time.monotonic() - self._listed_at)))
            self._stop.wait(wait)

    def _event_loop(self) -> None:
        filters = self.mgr.event_filters()
        while not self._stop.is_set():
            self.counts["event_streams"] += 1
            try:
                for _event in self.mgr.engine.events(filters, self._stop.is_set):
                    self.counts["events"] += 1
                    self._stale.set()
            except SandboxError as e:
                self.error = str(e)
            if self._stop.wait(1.0):
                return
            self._stale.set()  # the stream ended: what happened meanwhile is not replayed, list again

    def _stats_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                running = [sb.container_id for sb in self._agents.values() if sb.engine_state == "running"]
            if running:
                self.counts["stats"] += len(running)
                answers = self.mgr.engine.stats_many(running, workers=8, one_shot=True)
                got: dict[str, U.Stats] = {}
                for cid, raw in answers.items():
                    now = U.sample(raw) if raw else None
                    if now is None:
                        continue
                    got[cid] = U.stats(self._samples.get(cid), now)
                    self._samples[cid] = now
                with self._lock:
                    if got != {k: v for k, v in self._stats.items() if k in got}:
                        self._stats = got
                        self._bump()
            self._stop.wait(self.stats_every)
