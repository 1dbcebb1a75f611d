"""`failcore view`: runs → events of a run → one event, over a lazily built index of the tape."""

from __future__ import annotations

import threading
import time
from array import array
from pathlib import Path
from typing import Any, ClassVar, Final

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, Static
from textual.worker import get_current_worker

from failcore.paths import ensure_private_dir, failcore_home, write_private_file
from failcore.runs import RunSummary
from failcore.textsafe import printable, safe_text
from failcore.tui.filters import EventFilter, filter_positions
from failcore.tui.index import EventRow, IndexChunk, TapeIndex, TapeIndexer
from failcore.tui.lines import chain_status
from failcore.tui.render import event_cells, event_json, render_event, run_cells
from failcore.tui.rowlist import Column, RowList

RUN_COLUMNS: Final = (
    Column("started", 19),
    Column("run", 0, keep_end=True),
    Column("reqs", 6, "right"),
    Column("blk", 5, "right"),
    Column("warn", 5, "right"),
    Column("fail", 5, "right"),
    Column("tokens", 6, "right"),
    Column("$", 7, "right"),
)
# Shown once a run of the tape made guarded tool calls (failcore.run / guard): calls/blocked, effects.
RUNTIME_RUN_COLUMNS: Final = (Column("tools", 6, "right"), Column("effects", 7, "right"))
EVENT_COLUMNS: Final = (
    Column("time", 8),
    Column("decision", 8),
    Column("meth", 4),
    Column("host", 12),
    Column("path", 0),
    Column("st", 3, "right"),
    Column("ms", 5, "right"),
    Column("tok", 5, "right"),
    Column("$", 7, "right"),
    Column("dlp", 3, "right"),
)
HELP: Final = """\
failcore view — keys

everywhere     ?  this help      q  quit      f  follow the tape (live) on/off
lists          ↑/↓ j/k  move     PgUp/PgDn  page     g/G  top/bottom
               enter  open       escape  back
events         b / w / x   next BLOCK / WARN / FAIL (B / W / X: previous)
               d  cycle decision filter      s  cycle status filter (2xx…5xx, error)
               t  cycle kind filter (network, tool, fs, exec, connect)
               h  host filter    /  text search (whole recorded line)    c  clear filters
               y  copy the event as JSON (clipboard + file)
one event      y  copy as JSON   n / p  next / previous event   escape  back

Recorded content is shown literally: control characters appear escaped (\\x1b).
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss_help", "close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: 80; height: auto; border: round $accent; background: $panel; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static(Text(HELP), id="help")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


class PromptScreen(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = """
    PromptScreen { align: center bottom; }
    PromptScreen > Input { width: 100%; }
    """

    def __init__(self, placeholder: str, value: str) -> None:
        super().__init__()
        self._placeholder = placeholder
        self._value = value

    def compose(self) -> ComposeResult:
        yield Input(value=self._value, placeholder=self._placeholder)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class RunsScreen(Screen[None]):
    def __init__(self) -> None:
        super().__init__()
        self._runs: list[RunSummary] = []

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield RowList(RUN_COLUMNS, self._cells, id="runs")
        yield Footer()

    def _cells(self, i: int) -> list[Text]:
        return run_cells(self._runs[i])

    def on_mount(self) -> None:
        self.query_one(RowList).focus()
        self.index_updated()

    def index_updated(self) -> None:
        app = self.viewer
        self._runs = app.index.ordered_runs()
        row_list = self.query_one(RowList)
        if len(row_list.columns) == len(RUN_COLUMNS) and any(r.tool_calls or r.effects for r in self._runs):
            row_list.columns.extend(RUNTIME_RUN_COLUMNS)
        row_list.set_row_count(len(self._runs))
        self.query_one("#status", Static).update(app.status_line(f"{len(self._runs)} run(s)"))

    @property
    def viewer(self) -> ViewerApp:
        assert isinstance(self.app, ViewerApp)
        return self.app

    def on_row_list_selected(self, message: RowList.Selected) -> None:
        self.app.push_screen(EventsScreen(self._runs[message.index].run))


class EventsScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("b", "jump('BLOCK', 1)", "next block"),
        Binding("w", "jump('WARN', 1)", "next warn"),
        Binding("x", "jump('FAIL', 1)", "next fail"),
        Binding("B", "jump('BLOCK', -1)", show=False),
        Binding("W", "jump('WARN', -1)", show=False),
        Binding("X", "jump('FAIL', -1)", show=False),
        Binding("d", "cycle('decision')", "decision"),
        Binding("s", "cycle('status')", "status"),
        Binding("t", "cycle('kind')", "kind"),
        Binding("h", "prompt_host", "host"),
        Binding("slash", "prompt_text", "search"),
        Binding("c", "clear_filters", "clear", show=False),
        Binding("y", "copy", "copy", show=False),
    ]

    def __init__(self, run: str) -> None:
        super().__init__()
        self.run = run
        self.filter = EventFilter()
        self.positions: array[int] = array("q")
        self._considered = 0

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield RowList(EVENT_COLUMNS, self._cells, id="events")
        yield Footer()

    @property
    def viewer(self) -> ViewerApp:
        assert isinstance(self.app, ViewerApp)
        return self.app

    def _cells(self, i: int) -> list[Text]:
        return event_cells(self.viewer.index.row(self.positions[i]))

    def on_mount(self) -> None:
        self.query_one(RowList).focus()
        self.index_updated()

    def _run_rows(self) -> array[int]:
        return self.viewer.index.run_rows.get(self.run, array("q"))

    def index_updated(self) -> None:
        rows = self._run_rows()
        if not self.filter.active:
            self.positions = rows
            self._considered = len(rows)
            self._show()
        elif self._considered < len(rows):
            self._filter_more(self.filter, self._considered, len(rows))
            self._considered = len(rows)
        self._status()

    def _show(self) -> None:
        self.query_one(RowList).set_row_count(len(self.positions))
        self._status()

    def _status(self) -> None:
        text = self.viewer.status_line(
            f"run {printable(self.run)}: {len(self.positions)}/{len(self._run_rows())} events"
            f"  filter: {self.filter.describe()}"
        )
        self.query_one("#status", Static).update(text)

    def set_filter(self, event_filter: EventFilter) -> None:
        self.filter = event_filter
        rows = self._run_rows()
        self._considered = len(rows)
        if not event_filter.active:
            self.positions = rows
            self.query_one(RowList).set_row_count(len(rows), keep_cursor=False)
            self._status()
            return
        self.positions = array("q")
        self.query_one(RowList).set_row_count(0, keep_cursor=False)
        self._filter_more(event_filter, 0, len(rows))
        self._status()

    @work(thread=True, group="filter")
    def _filter_more(self, event_filter: EventFilter, start: int, end: int) -> None:
        index = self.viewer.index
        rows = self._run_rows()[start:end]
        worker = get_current_worker()
        matched = array("q")
        for position in filter_positions(rows, event_filter, index.row, index.raw_line):
            if worker.is_cancelled:
                return
            matched.append(position)
        self.app.call_from_thread(self._add_matches, event_filter, matched)

    def _add_matches(self, event_filter: EventFilter, matched: array[int]) -> None:
        if event_filter != self.filter:
            return  # a result for a filter that has since been replaced
        self.positions.extend(matched)
        self._show()

    def action_cycle(self, field: str) -> None:
        self.set_filter(self.filter.cycled(field))

    def action_prompt_host(self) -> None:
        def apply(value: str | None) -> None:
            if value is not None:
                self.set_filter(_replace(self.filter, host=value or None))

        self.app.push_screen(PromptScreen("host contains…", self.filter.host or ""), apply)

    def action_prompt_text(self) -> None:
        def apply(value: str | None) -> None:
            if value is not None:
                self.set_filter(_replace(self.filter, text=value or None))

        self.app.push_screen(PromptScreen("search the recorded lines…", self.filter.text or ""), apply)

    def action_clear_filters(self) -> None:
        self.set_filter(EventFilter())

    def action_jump(self, what: str, direction: int) -> None:
        row_list = self.query_one(RowList)
        index = self.viewer.index
        i = row_list.cursor + direction
        while 0 <= i < len(self.positions):
            if _is(index.row(self.positions[i]), what):
                row_list.move_to(i)
                return
            i += direction
        self.notify(f"no {'next' if direction > 0 else 'previous'} {what}", severity="warning", markup=False)

    def action_copy(self) -> None:
        row_list = self.query_one(RowList)
        if self.positions:
            self.viewer.copy_event(self.viewer.index.row(self.positions[row_list.cursor]))

    def on_row_list_selected(self, message: RowList.Selected) -> None:
        self.app.push_screen(EventScreen(self.positions, message.index))


def _replace(event_filter: EventFilter, **changes: Any) -> EventFilter:
    from dataclasses import replace

    return replace(event_filter, **changes)


def _is(row: EventRow, what: str) -> bool:
    if what == "BLOCK":
        return row.decision == "BLOCK" or row.outcome == "BLOCKED"
    if what == "WARN":
        return row.decision == "WARN"
    return row.is_failure


class EventScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("y", "copy", "copy JSON"),
        Binding("n", "step(1)", "next"),
        Binding("p", "step(-1)", "previous"),
    ]

    def __init__(self, positions: array[int], cursor: int) -> None:
        super().__init__()
        self.positions = positions
        self.cursor = cursor

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        with VerticalScroll(id="detail"):
            yield Static(id="event")
        yield Footer()

    @property
    def viewer(self) -> ViewerApp:
        assert isinstance(self.app, ViewerApp)
        return self.app

    @property
    def row(self) -> EventRow:
        return self.viewer.index.row(self.positions[self.cursor])

    def on_mount(self) -> None:
        self.query_one("#detail").focus()
        self._load()

    def _load(self) -> None:
        index = self.viewer.index
        row = self.row
        raw = index.raw_line(row)
        chain = chain_status(raw, index.previous_hash(row.position))
        event = index.load_event(row)
        self.query_one("#event", Static).update(render_event(event, chain, row))
        self.query_one("#detail", VerticalScroll).scroll_home(animate=False)
        title = f"event {self.cursor + 1}/{len(self.positions)}  seq {row.seq}  {row.method} {row.host}"
        self.query_one("#status", Static).update(self.viewer.status_line(printable(title)))

    def index_updated(self) -> None:
        self.query_one("#status", Static).refresh()

    def action_step(self, delta: int) -> None:
        target = self.cursor + delta
        if 0 <= target < len(self.positions):
            self.cursor = target
            self._load()

    def action_copy(self) -> None:
        self.viewer.copy_event(self.row)


class ViewerApp(App[None]):
    TITLE = "failcore view"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "help"),
        Binding("f", "toggle_follow", "follow"),
    ]
    CSS = """
    #status { height: 1; background: $boost; }
    RowList { height: 1fr; }
    #detail { height: 1fr; }
    """

    def __init__(
        self,
        tape_dir: Path,
        *,
        cache_dir: Path | None = None,
        follow: bool = False,
        poll: float = 0.3,
        export_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.tape_dir = Path(tape_dir)
        self.index = TapeIndex(self.tape_dir)
        self.indexer = TapeIndexer(self.tape_dir, cache_dir)
        self.following = follow
        self.poll = poll
        self.export_dir = export_dir or failcore_home() / "exports"
        self.progress: tuple[int, int] | None = (0, 0)
        self.index_seconds: float | None = None
        self._follow_changed = threading.Event()
        self._started = time.perf_counter()

    def on_mount(self) -> None:
        self.push_screen(RunsScreen())
        self._index_loop()

    def status_line(self, what: str) -> Text:
        line = safe_text(what)
        if self.progress is not None:
            done, total = self.progress
            percent = 100 * done // total if total else 0
            line.append(f"  indexing {percent}%…", style="yellow")
        if self.index.bad_lines:
            line.append(f"  {self.index.bad_lines} unreadable line(s)", style="red")
        if self.following:
            line.append("  following", style="bold green")
        return line

    @work(thread=True, group="index", exit_on_error=False)
    def _index_loop(self) -> None:
        worker = get_current_worker()
        first = True
        while not worker.is_cancelled:
            if first or self.following:
                for chunk in self.indexer.scan(self._report_progress):
                    if worker.is_cancelled:
                        return
                    self.call_from_thread(self._apply, [chunk])
                if first:
                    self.call_from_thread(self._indexed)
                first = False
            # Bounded waits: a toggle of `f` wakes the loop at once, an exit within half a second.
            self._follow_changed.wait(self.poll if self.following else 0.5)
            self._follow_changed.clear()

    def _report_progress(self, done: int, total: int) -> None:
        if self.index_seconds is None:  # only the first pass is "indexing"; later ones are following
            self.progress = (done, total)

    def _apply(self, chunks: list[IndexChunk]) -> None:
        for chunk in chunks:
            self.index.add_chunk(chunk)
        self.index.bad_lines = self.indexer.bad_lines
        self._notify_screens()

    def _indexed(self) -> None:
        self.progress = None
        self.index_seconds = time.perf_counter() - self._started
        self._notify_screens()

    def _notify_screens(self) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, RunsScreen | EventsScreen | EventScreen) and screen.is_mounted:
                screen.index_updated()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_follow(self) -> None:
        self.following = not self.following
        self._follow_changed.set()
        self.notify("following the tape" if self.following else "stopped following")
        self._notify_screens()

    def copy_event(self, row: EventRow) -> None:
        event = self.index.load_event(row)
        if event is None:
            self.notify("this line is not valid JSON", severity="error", markup=False)
            return
        text = event_json(event)
        self.copy_to_clipboard(text)
        path = self.export_event(text, row)
        self.notify(f"event seq {row.seq} copied; saved to {printable(path)}", markup=False)

    def export_event(self, text: str, row: EventRow) -> Path:
        ensure_private_dir(self.export_dir)
        safe_run = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in row.run)[:80] or "run"
        path = self.export_dir / f"{safe_run}-seq{row.seq}.json"
        write_private_file(path, text.encode())
        return path

    def on_unmount(self) -> None:
        self.workers.cancel_group(self, "index")
        self._follow_changed.set()


def run_viewer(tape_dir: Path, *, follow: bool = False, cache: bool = True) -> int:
    from failcore.tui.cache import prepare_cache_dir

    ViewerApp(tape_dir, cache_dir=prepare_cache_dir(tape_dir) if cache else None, follow=follow).run()
    return 0
