"""The tool both agents use: it writes a file, so its tool event carries an fs effect too."""

from __future__ import annotations

from pathlib import Path

# What the stand-in is told to answer with as the model's tool-call arguments (x-standin-tool-args).
TOOL_ARGS = {"title": "meeting", "text": "moved to Friday"}
PROMPT = "Remember that the meeting moved to Friday"


def save_note(title: str, text: str) -> str:
    """Save a note as notes/<title>.txt in the working directory."""
    path = Path("notes") / f"{title}.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return f"saved {len(text)} bytes to {path}"
