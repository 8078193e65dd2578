"""docs/soc.md's memory map is the one ``ivhw.boards.memmap`` generates (never stale)."""

from __future__ import annotations

from pathlib import Path

from ivhw.boards.memmap import update_doc

DOC = Path(__file__).resolve().parent.parent / "docs" / "soc.md"


def test_memory_map_table_is_current() -> None:
    text = DOC.read_text()
    assert update_doc(text) == text, "regenerate with: python -m ivhw.boards.memmap docs/soc.md"
