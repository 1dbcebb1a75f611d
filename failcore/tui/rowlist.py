"""A virtual table: renders only the visible rows, so a run of a million events scrolls instantly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

CURSOR_STYLE = Style(reverse=True)
HEADER_STYLE = Style(bold=True, underline=True)


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    width: int  # 0: takes the space the fixed columns leave
    justify: str = "left"
    # Shortened in the middle, not at the end: a run id is told apart by its suffix.
    keep_end: bool = False


def truncate_middle(text: Text, width: int) -> Text:
    if text.cell_len <= width or width < 5:
        return text
    head = (width - 1) // 2
    tail = width - 1 - head
    plain = text.plain
    return Text(plain[:head] + "…" + plain[len(plain) - tail :], style=text.style)


class RowList(ScrollView, can_focus=True):
    """Rows come from `cells(i)`; the first line is a sticky header."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "up", show=False),
        Binding("down,j", "cursor(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown,space", "page(1)", "page down", show=False),
        Binding("home,g", "jump(0)", "top", show=False),
        Binding("end,G", "jump(-1)", "bottom", show=False),
        Binding("enter", "select", "open"),
    ]

    class Selected(Message):
        def __init__(self, row_list: RowList, index: int) -> None:
            super().__init__()
            self.row_list = row_list
            self.index = index

    def __init__(
        self, columns: Sequence[Column], cells: Callable[[int], list[Text]], *, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.columns = list(columns)
        self._cells = cells
        self.row_count = 0
        self.cursor = 0

    def set_row_count(self, count: int, *, keep_cursor: bool = True) -> None:
        self.row_count = count
        if not keep_cursor:
            self.cursor = 0
        self.cursor = max(0, min(self.cursor, count - 1))
        self.virtual_size = Size(self.size.width, count + 1)
        self.refresh()

    def _widths(self) -> list[int]:
        fixed = sum(c.width + 1 for c in self.columns if c.width)
        flexible = [c for c in self.columns if not c.width]
        spare = max(8, self.size.width - fixed - len(flexible))
        return [c.width or spare // max(1, len(flexible)) for c in self.columns]

    def _line(self, cells: list[Text], style: Style | None) -> Strip:
        line = Text(no_wrap=True, overflow="ellipsis")
        for column, width, cell in zip(self.columns, self._widths(), cells, strict=False):
            cell = truncate_middle(cell, width) if column.keep_end else cell.copy()
            cell.truncate(width, overflow="ellipsis", pad=False)
            pad = width - cell.cell_len
            if column.justify == "right":
                line.append(" " * pad)
                line.append_text(cell)
            else:
                line.append_text(cell)
                line.append(" " * pad)
            line.append(" ")
        segments = list(line.render(self.app.console))
        strip = Strip(segments).adjust_cell_length(self.size.width)
        return strip.apply_style(style) if style else strip

    def render_line(self, y: int) -> Strip:
        if y == 0:
            header = [Text(c.title) for c in self.columns]
            return self._line(header, HEADER_STYLE)
        index = self.scroll_offset.y + y - 1
        if index >= self.row_count:
            return Strip([Segment(" " * self.size.width)])
        return self._line(
            self._cells(index), CURSOR_STYLE if index == self.cursor and self.has_focus else None
        )

    def move_to(self, index: int) -> None:
        if not self.row_count:
            return
        self.cursor = max(0, min(index, self.row_count - 1))
        visible = max(1, self.size.height - 1)
        top = self.scroll_offset.y
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + visible:
            self.scroll_to(y=self.cursor - visible + 1, animate=False, immediate=True)
        self.refresh()

    def action_cursor(self, delta: int) -> None:
        self.move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self.move_to(self.cursor + direction * max(1, self.size.height - 2))

    def action_jump(self, where: int) -> None:
        self.move_to(self.row_count - 1 if where < 0 else where)

    def action_select(self) -> None:
        if self.row_count:
            self.post_message(self.Selected(self, self.cursor))

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, self.row_count + 1)
