"""benchmarks/run.py regenerates BENCHMARKS.md's numbered sections and keeps the hand-added ones after
its marker (they were dropped by every regeneration)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.run import KEEP_MARKER, kept_sections

REPO = Path(__file__).resolve().parent.parent


def test_the_hand_added_sections_after_the_marker_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(f"# old generated\n\n## 1. old numbers\n\n{KEEP_MARKER}\n\n## Startup\n\nby hand\n")
    kept = kept_sections(out)
    assert kept == f"\n{KEEP_MARKER}\n\n## Startup\n\nby hand\n"
    assert "old numbers" not in kept


def test_no_file_or_no_marker_keeps_nothing(tmp_path: Path) -> None:
    assert kept_sections(tmp_path / "missing.md") == ""
    plain = tmp_path / "plain.md"
    plain.write_text("# generated only\n")
    assert kept_sections(plain) == ""


def test_the_repositorys_benchmarks_file_has_the_marker_before_its_hand_added_sections() -> None:
    text = (REPO / "BENCHMARKS.md").read_text()
    assert text.count(KEEP_MARKER) == 1
    assert text.index("## 8.") < text.index(KEEP_MARKER) < text.index("## Startup")
