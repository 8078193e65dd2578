"""Register tables and memory maps in docs/, generated from the one register definition.

A docs file holds generated sections between markers::

    <!-- generated: pci-bar0 -->
    ...
    <!-- end generated -->

Each section name is a key of :data:`SECTIONS`; its text comes from
:mod:`ivhw.sw.regmap` and :mod:`ivhw.sw.memmap`, never by hand.
``python -m ivhw.sw.regdocs`` rewrites the sections of every file under
``docs/``; ``--check`` only reports the stale ones (exit status 1), which the
test suite runs so that committed docs cannot drift from the map.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from .memmap import flat_memory_map, pci_memory_map
from .regmap import FLAT_REGS, MSIX_ENTRY, PCI_REV1_REGS

__all__ = ["SECTIONS", "main", "render", "stale", "update"]

#: section name -> the Markdown it holds
SECTIONS: dict[str, Callable[[], str]] = {
    "flat-registers": FLAT_REGS.table,
    "flat-memory-map": lambda: (
        "Byte addresses on the bus, for a shared memory of S bytes (shown: S = 4 KiB; "
        "the shared memory starts at S for any S):\n\n" + flat_memory_map(4096).table()
    ),
    "pci-bar0": PCI_REV1_REGS.table,
    "pci-msix-entry": MSIX_ENTRY.table,
    "pci-memory-map": lambda: (
        "Offsets from each BAR's base (shown: 2 vectors, 1 MiB shared memory):\n\n"
        + pci_memory_map(msix=True, vectors=2, shm_size=1 << 20).table()
    ),
}

_SECTION = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL
)


def render(name: str) -> str:
    """The text of section ``name``."""
    try:
        return SECTIONS[name]().rstrip("\n") + "\n"
    except KeyError:
        raise KeyError(f"no generated section {name!r}; known: {sorted(SECTIONS)}") from None


def update(text: str) -> str:
    """``text`` with every generated section rewritten."""
    return _SECTION.sub(lambda m: m[1] + render(m["name"]) + m[4], text)


def stale(docs: Path) -> list[str]:
    """``file: section`` of every generated section under ``docs`` that differs from the map."""
    out = []
    for path in sorted(docs.glob("**/*.md")):
        text = path.read_text()
        for m in _SECTION.finditer(text):
            if m["body"] != render(m["name"]):
                out.append(f"{path.name}: {m['name']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivhw.sw.regdocs", description=__doc__)
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="the docs folder")
    parser.add_argument(
        "--check", action="store_true", help="report stale sections, change nothing"
    )
    args = parser.parse_args(argv)
    if not args.docs.is_dir():
        print(f"error: {args.docs} is not a folder", file=sys.stderr)
        return 2
    if args.check:
        old = stale(args.docs)
        for where in old:
            print(f"stale: {where}")
        return 1 if old else 0
    for path in sorted(args.docs.glob("**/*.md")):
        text = path.read_text()
        new = update(text)
        if new != text:
            path.write_text(new)
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
