"""Smoke test of ``bench.hdl_simspeed``: its quick mode for one block on Icarus and Verilator.

No timing assertions: only that each simulator reports a positive rate and
that both did the same work. Builds are the HDL tests' own (same directories,
same file locks), so this runs alongside them under pytest-xdist.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import require_tool

from bench import hdl_simspeed

__all__: list[str] = []


@pytest.mark.icarus
@pytest.mark.verilator
def test_quick_reports_a_rate_per_simulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("iverilog")
    require_tool("verilator")
    out = tmp_path / "results.json"
    argv = ["--quick", "--blocks", "wishbone", "--sims", "icarus,verilator", "--json", str(out)]
    assert hdl_simspeed.main(argv) == 0
    results = {r["sim"]: r for r in json.loads(out.read_text())}
    assert sorted(results) == ["icarus", "verilator"]
    for result in results.values():
        assert result["block"] == "wishbone"
        assert result["cycles"] == hdl_simspeed.QUICK_CYCLES
        assert result["rate"] > 0
        assert result["counts"]["accesses"] > 0
        assert result["counts"]["bad_reads"] == 0
    assert results["icarus"]["counts"] == results["verilator"]["counts"]
    table = capsys.readouterr().out
    assert "| flat + Wishbone |" in table
