"""The register tables in docs/ are the generated ones: a stale table fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ivhw.sw import regdocs

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_committed_docs_are_current() -> None:
    assert regdocs.stale(DOCS) == [], "run `python -m ivhw.sw.regdocs` and commit docs/"


def test_every_section_is_published() -> None:
    text = "".join(path.read_text() for path in DOCS.glob("**/*.md"))
    missing = [name for name in regdocs.SECTIONS if f"<!-- generated: {name} -->" not in text]
    assert missing == []


def test_a_changed_table_is_stale(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    fresh = regdocs.update("x\n<!-- generated: pci-bar0 -->\n<!-- end generated -->\ny\n")
    assert "| 0Ch | Doorbell |" in fresh and fresh.endswith("<!-- end generated -->\ny\n")
    page.write_text(fresh)
    assert regdocs.stale(tmp_path) == []
    page.write_text(fresh.replace("IntrMask", "IntrMsk"))
    assert regdocs.stale(tmp_path) == ["page.md: pci-bar0"]
    cli = [sys.executable, "-m", "ivhw.sw.regdocs", "--docs", str(tmp_path)]
    check = subprocess.run([*cli, "--check"], capture_output=True, text=True)
    assert (check.returncode, check.stdout) == (1, "stale: page.md: pci-bar0\n")
    assert subprocess.run(cli, capture_output=True).returncode == 0
    assert page.read_text() == fresh


def test_unknown_section_is_an_error() -> None:
    with pytest.raises(KeyError, match="no generated section 'nope'"):
        regdocs.update("<!-- generated: nope -->\n<!-- end generated -->\n")


def test_missing_docs_folder_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ivhw.sw.regdocs", "--docs", str(tmp_path / "no")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "is not a folder" in result.stderr
