"""The viewer's event view shows a message's trailers (HTTP/2, gRPC), recorded since schema v2, after
its body; a trailer's recorded name and value are hostile text like any header's (escaped)."""

from __future__ import annotations

from pathlib import Path

from failcore.tui.index import build_index
from failcore.tui.lines import chain_status
from failcore.tui.render import render_event
from tests.runtime_tapes import T0, network, write_events

HOSTILE = "\x1b]0;pwned\x07\x1b[31mred"


def test_the_event_view_shows_trailers_escaped(tmp_path: Path) -> None:
    message = {
        "http_version": "HTTP/2.0",
        "headers": [["content-type", "application/grpc"]],
        "body": None,
        "trailers": [["x-checksum", "[redacted 0123456789ab]"], [f"x-{HOSTILE}", HOSTILE]],
    }
    tape = tmp_path / "tape"
    write_events(tape, tmp_path / "keys", [network("r1", T0, request=message)])
    index = build_index(tape)
    [row] = [index.row(p) for p in index.run_rows["r1"]]
    text = render_event(index.load_event(row), chain_status(index.raw_line(row), b""), row).plain
    assert "trailers:\nx-checksum: [redacted 0123456789ab]\n" in text
    assert "\x1b" not in text and "\x07" not in text
    assert "red" in text  # the hostile trailer is shown, inert
