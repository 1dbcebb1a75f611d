"""What the viewer tests share: the text a Textual app shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from failcore.tui.app import ViewerApp


def screen_text(app: ViewerApp) -> str:
    """What the terminal shows, as plain text (from the same render the snapshot tests use)."""
    lines = []
    for y in range(app.size.height):
        lines.append("".join(s.text for s in app.screen._compositor.render_update(full=True).strips[y]))
    return "\n".join(lines)
