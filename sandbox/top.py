"""``sandbox top``: every agent at once, what it costs, and one key to get in (textual).

The table comes from a ``sandbox.board.Board`` (the engine's event stream, the state files, the
engine's stats; never one exec per agent per refresh); the preview is the selected agent's pane
(``capture-pane``, one exec, at most every ``PREVIEW_EVERY`` seconds and only for that agent). The
keys call the same library functions as the commands: ``SandboxManager.send/stop/remove``,
``work.diff``/``work.merge``; attaching suspends the app and runs ``Sandbox.attach_command()``.

**Agent text is shown, never obeyed**: every cell, the preview, a diff and every message is a
``rich.text.Text`` built from plain strings (never markup: an agent naming its task ``[link=…]`` or
``[bold]`` gets those characters shown), with control characters made visible (``terminal.defang``).
Imported only by ``sandbox top`` (textual costs ~150 ms to import).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Static

from sandbox import contract, usage as U
from sandbox.board import Board, Row
from sandbox.errors import SandboxError
from sandbox.manager import Sandbox, SandboxManager
from sandbox.terminal import defang

if TYPE_CHECKING:
    from sandbox.workspace import work as work_

PREVIEW_EVERY = 2.0     # seconds between two captures of the selected pane while it changes (busy, new activity)
PREVIEW_IDLE = 10.0     # … and while nothing says it changed
PREVIEW_LINES = 40
STATE_STYLE = {contract.WAITING: "bold black on yellow", contract.BUSY: "bold green", contract.IDLE: "cyan",
               contract.STARTING: "magenta", contract.READY: "cyan", contract.FAILED: "bold red",
               contract.EXITED: "dim", contract.STOPPED: "dim"}
COLUMNS = ("NAME", "STATE", "TRY", "ACTIVE", "BRANCH", "DIFF", "CPU", "MEM", "TOKENS", "COST", "TASK / REASON")


def plain(text: str, style: str = "") -> Text:
    """Agent text as a ``Text``: never markup, control characters shown as ``\\xNN``."""
    return Text(defang(text), style=style, no_wrap=True, overflow="ellipsis")


def _age(ts: float | None) -> str:
    """Coarse on purpose (``now``, ``<1m``, ``3m``, ``2h``): a cell that does not change is not drawn again
    (textual redraws the whole table for any changed cell)."""
    if not ts:
        return "-"
    secs = int(time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return "now" if secs < 10 else "<1m"


def diff_cell(row: Row) -> Text:
    """The diffstat, and the agents it edits the same files as (``sandbox conflicts`` tells the rest)."""
    cell = plain(row.diffstat or "-")
    if row.overlaps:
        cell.append(" ! " + defang(",".join(row.overlaps)), style="bold yellow")
    return cell


def cells(row: Row) -> list[Text]:
    sb, st, tok = row.sb, row.stats, row.sb.tokens
    note = sb.reason if sb.state in ("starting", "stopped", "failed", "exited", "waiting") and sb.reason \
        else sb.labels.get("sandbox.task", "")
    if sb.labels.get("sandbox.plan"):  # a plan's agent: which plan and task (sandbox/plan.py)
        note = f"[{sb.labels['sandbox.plan']}:{sb.labels.get('sandbox.plan-task', '?')}] {note}"
    tokens = f"{U.short(tok['input'] + tok['cache_read'] + tok['cache_write'])}/{U.short(tok['output'])}" if tok else "-"
    return [plain(sb.name, "bold"), plain(sb.state, STATE_STYLE.get(sb.state, "")), plain(str(sb.attempt or "-")),
            plain(_age(sb.activity)), plain(sb.branch), diff_cell(row),
            plain(f"{st.cpu_percent:.0f}%" if st and st.cpu_percent is not None else "-"),
            plain(U.size(st.memory) if st else "-"), plain(tokens),
            plain(row.cost.describe() if row.cost else "-"), plain(note)]


def attach_in_terminal(app: App[Any], sb: Sandbox) -> None:
    """Leave the screen to the agent's tmux (``docker exec -it … tmux attach``) until C-b d."""
    with app.suspend():
        subprocess.run(sb.attach_command(), check=False)


class Ask(ModalScreen[str | None]):
    """One line of input (send, filter); escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, prompt: str, value: str = "") -> None:
        super().__init__()
        self.prompt, self.value = prompt, value

    def compose(self) -> ComposeResult:
        with Vertical(id="ask"):
            yield Static(plain(self.prompt))
            yield Input(value=self.value, id="answer")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class Confirm(ModalScreen[bool]):
    """A yes/no question (rm, merge): y confirms, anything else cancels."""

    BINDINGS = [Binding("y", "yes", "yes"), Binding("n,escape", "no", "no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="ask"):
            yield Static(plain(self.question + "  [y/n]"))

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)


class Pager(ModalScreen[None]):
    """Read-only text (a diff): q or escape closes."""

    BINDINGS = [Binding("q,escape", "close", "close")]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text, self.text = title, text

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="pager"):
            yield Static(plain(self.title_text, "bold"))
            yield Static(Text(defang(self.text)))

    def action_close(self) -> None:
        self.dismiss(None)


class TopApp(App[None]):
    """The table, the preview of the selected agent, and the keys."""

    TITLE = "sandbox top"
    CSS = """
    #table { height: 1fr; }
    #preview { height: 1fr; border-top: solid $accent; }
    #status { height: 1; background: $boost; }
    #ask { width: 80%; height: auto; border: round $accent; padding: 0 1; background: $surface; }
    Ask, Confirm, Pager { align: center middle; }
    #pager { width: 95%; height: 90%; border: round $accent; background: $surface; }
    """
    BINDINGS = [
        Binding("enter", "attach", "attach", show=True, priority=False),
        Binding("s", "send", "send"),
        Binding("d", "diff", "diff"),
        Binding("m", "merge", "merge"),
        Binding("x", "stop", "stop"),
        Binding("r", "rm", "rm"),
        Binding("slash", "filter", "filter"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, board: Board, mgr: SandboxManager, *, bell: bool = False, notify_command: str | None = None,
                 attach: Callable[[App[Any], Sandbox], None] = attach_in_terminal, refresh_every: float = 0.5,
                 quit_after: float | None = None) -> None:
        super().__init__()
        self.board, self.mgr = board, mgr
        self.ring, self.notify_command, self.attach_fn = bell, notify_command, attach
        self.refresh_every, self.quit_after = refresh_every, quit_after
        self.text_filter = ""
        self.reviewed: dict[str, str] = {}  # name -> the head its last `d` showed (what `m` then merges)
        self._shown: tuple[int, str, int] = (-1, "", -1)
        self._names: list[str] = []
        self._preview_at = 0.0
        self._preview_for = ""
        self._preview_activity: float | None = None
        self._cells: dict[str, list[Text]] = {}
        self._status = ""
        self._preview_text = ""
        self._capturing = False
        self.bells = 0

    def compose(self) -> ComposeResult:
        table: DataTable[Text] = DataTable(id="table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static(Text(""), id="preview")
        yield Static(Text(""), id="status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#table", DataTable)
        for col in COLUMNS:
            table.add_column(Text(col, style="bold"), key=col)
        self.refresh_table()
        self.set_interval(self.refresh_every, self.tick)
        if self.quit_after is not None:
            self.set_timer(self.quit_after, self.exit)

    # -- refreshing ---------------------------------------------------------------------------------
    def tick(self) -> None:
        self.refresh_table()
        for sb in self.board.take_newly_waiting():
            if self.ring:
                self.bells += 1
                self.bell()
            if self.notify_command:
                from sandbox import notify

                problem = notify.run(self.notify_command, sb)
                if problem:
                    self.notify(problem, severity="warning", markup=False)
            if getattr(self.mgr.settings, "notify_url", None):  # (the webhook, off the UI's thread)
                from sandbox import notify

                notify.send_later(self.mgr.settings, sb, lambda problem: self.call_from_thread(
                    self.notify, problem, severity="warning", markup=False))
        self.refresh_preview()

    def refresh_table(self) -> None:
        # ages move on: look again every 15 s even when nothing changed (only changed cells are drawn:
        # textual draws the whole table again for one changed cell, ~50 ms for 20 agents)
        key = (self.board.version, self.text_filter, int(time.monotonic() // 15))
        if key == self._shown:
            return
        self._shown = key
        rows = self.board.rows(self.text_filter)
        table = self.query_one("#table", DataTable)
        fresh = {row.name: cells(row) for row in rows}
        names = [r.name for r in rows]
        if names != self._names:  # other agents, or another order: build the table again
            selected = self.selected_name()
            table.clear()
            for name in names:
                table.add_row(*fresh[name], key=name)
            self._names = names
            if selected in names:
                table.move_cursor(row=names.index(selected), animate=False)
        else:  # the same rows: only the cells that changed
            for name in names:
                for column, old, new in zip(COLUMNS, self._cells.get(name, []), fresh[name]):
                    if (old.plain, old.style) != (new.plain, new.style):
                        table.update_cell(name, column, new)
        self._cells = fresh
        waiting = sum(1 for r in rows if r.sb.state == contract.WAITING)
        total = sum((r.cost.usd for r in rows if r.cost), 0.0)
        status = f" {len(rows)} agents" + (f", {waiting} waiting" if waiting else "") + f", ${total:.2f} estimated" \
            + "   enter attach (C-b d comes back)"
        if self.text_filter:
            status += f"  filter: {self.text_filter}"
        if self.board.error:
            status += f"  engine: {self.board.error}"
        if status != self._status:  # (an update relays the screen out: only when it says something new)
            self._status = status
            self.query_one("#status", Static).update(plain(status))

    def selected_name(self) -> str | None:
        table = self.query_one("#table", DataTable)
        if not self._names or table.cursor_row is None or not 0 <= table.cursor_row < len(self._names):
            return None
        return self._names[table.cursor_row]

    def selected(self) -> Sandbox | None:
        name = self.selected_name()
        return self.board.get(name) if name else None

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._preview_at = 0.0  # another agent: capture it now
        self.refresh_preview()

    def refresh_preview(self) -> None:
        sb = self.selected()
        if sb is None:
            if self._preview_for:
                self._preview_for = self._preview_text = ""
                self.query_one("#preview", Static).update(Text(""))
            return
        now = time.monotonic()
        if self._capturing:
            return
        if sb.name == self._preview_for:  # the same agent: again only when its pane may have changed
            changing = sb.state == contract.BUSY or sb.activity != self._preview_activity
            if now - self._preview_at < (PREVIEW_EVERY if changing else PREVIEW_IDLE):
                return
        self._preview_at, self._preview_for, self._preview_activity = now, sb.name, sb.activity
        if sb.engine_state != "running":
            self._preview_text = ""
            self.query_one("#preview", Static).update(plain(f"{sb.name} is {sb.state}: no pane to show", "dim"))
            return
        self._capturing = True
        self.capture(sb)

    @work(thread=True, exclusive=True, group="preview")
    def capture(self, sb: Sandbox) -> None:
        try:
            text = self.mgr.tmux(sb).capture(PREVIEW_LINES)
        except SandboxError as e:
            text = f"(cannot read the pane: {e})"
        self.call_from_thread(self._show_preview, sb.name, text)

    def _show_preview(self, name: str, text: str) -> None:
        self._capturing = False
        if name == self.selected_name():
            shown = defang("\n".join(text.rstrip("\n").splitlines()[-PREVIEW_LINES:]))
            if shown != self._preview_text:  # the same pane text: nothing to draw
                self._preview_text = shown
                self.query_one("#preview", Static).update(Text(shown, no_wrap=True, overflow="crop"))

    # -- actions (the library calls the commands make) ----------------------------------------------
    def _need(self) -> Sandbox | None:
        sb = self.selected()
        if sb is None:
            self.notify("no agent selected", severity="warning", markup=False)
        return sb

    def action_attach(self) -> None:
        sb = self._need()
        if sb is not None:
            if sb.engine_state != "running":
                self.notify(f"{sb.name} is not running ({sb.state})", severity="warning", markup=False)
                return
            self.attach_fn(self, sb)
            self.board.poke()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_attach()

    def action_send(self) -> None:
        sb = self._need()
        if sb is None:
            return

        def done(text: str | None) -> None:
            if text:
                self.run_action_in_thread(f"sent to {sb.name}", lambda: self.mgr.send(sb.name, text))

        self.push_screen(Ask(f"send to {sb.name} (Enter sends, Esc cancels):"), done)

    def action_filter(self) -> None:
        def done(text: str | None) -> None:
            if text is not None:
                self.text_filter = text.strip()
                self.refresh_table()

        self.push_screen(Ask("filter (name, state, branch, task; empty: all):", self.text_filter), done)

    def action_stop(self) -> None:
        sb = self._need()
        if sb is not None:
            self.run_action_in_thread(f"stopped {sb.name}", lambda: self.mgr.stop(sb.name))

    def action_rm(self) -> None:
        sb = self._need()
        if sb is None:
            return

        def done(yes: bool | None) -> None:
            if yes:
                self.run_action_in_thread(f"removed {sb.name} (branch {sb.branch} kept)", lambda: self.mgr.remove(sb.name))

        self.push_screen(Confirm(f"remove {sb.name}? (refused if work would be lost; `sandbox rm --force` backs it up)"), done)

    def action_merge(self) -> None:
        sb = self._need()
        if sb is None:
            return

        def merge() -> str:
            from sandbox.workspace import work as work_

            res = work_.merge(self.mgr, self.mgr.get(sb.name), at=at)
            return f"{res.target}: already up to date" if res.before == res.after else \
                f"{res.target}: {res.before[:12]}..{res.after[:12]} ({res.mode})"

        def done(yes: bool | None) -> None:
            if yes:
                self.run_action_in_thread("", merge)

        at = self.reviewed.get(sb.name)  # the head `d` showed: the merge takes that or nothing
        what = f"at {at[:12]}, as `d` showed it" if at else "as it is now: not reviewed, `d` first pins it"
        self.push_screen(Confirm(f"merge {sb.branch} ({what}) into the main checkout's branch?"), done)

    def action_diff(self) -> None:
        sb = self._need()
        if sb is None:
            return

        def show(review: work_.Review) -> None:
            self.reviewed[sb.name] = review.head
            self.push_screen(Pager(f"sandbox diff {sb.name}  (q closes; m merges {review.head[:12]})", review.render()))

        self.diff_in_thread(sb, show)

    @work(thread=True, group="diff")
    def diff_in_thread(self, sb: Sandbox, show: Callable[[work_.Review], None]) -> None:
        from sandbox.workspace import work as work_

        try:
            review = work_.diff(self.mgr, self.mgr.get(sb.name))
        except SandboxError as e:
            self.call_from_thread(self.notify, str(e), severity="error", markup=False)
            return
        self.call_from_thread(show, review)

    @work(thread=True, group="actions")
    def run_action_in_thread(self, said: str, call: Callable[[], Any]) -> None:
        try:
            got = call()
        except SandboxError as e:
            self.call_from_thread(self.notify, str(e), severity="error", markup=False)
        else:
            message = said or (got if isinstance(got, str) else "done")
            self.call_from_thread(self.notify, message, markup=False)
        self.board.poke()


def run(mgr: SandboxManager, repo: Any, *, bell: bool = False, headless: bool = False,
        seconds: float | None = None) -> Board:
    """Run ``sandbox top`` until q (``seconds``: quit after that long — the bench). The board it used."""
    board = Board(mgr, repo)
    with board:
        TopApp(board, mgr, bell=bell, notify_command=getattr(mgr.settings, "notify", None),
               quit_after=seconds).run(headless=headless)
    return board

