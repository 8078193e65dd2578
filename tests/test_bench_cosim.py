"""Smoke test of ``bench.cosim_simspeed``: every engine row runs and reports its cycles.

No timing assertions (the machine is shared; targets are for the benchmark's own
report): only that each row ran the accesses it was asked for, in the cycles they
take, and printed a positive rate.
"""

from __future__ import annotations

import re

import pytest
from support import require_tool

from bench import cosim_simspeed

__all__: list[str] = []

ROWS = (
    "bare Verilator loop (C++)",
    "native engine, accesses in C++",
    "native engine, Python guest",
    "cocotb engine, Python guest",
)


@pytest.mark.verilator
def test_every_engine_row_runs(capsys: pytest.CaptureFixture[str]) -> None:
    require_tool("g++")
    cosim_simspeed.main(["--accesses", "4000", "--no-soc"])  # status: targets, not checked
    table = capsys.readouterr().out
    for name in ROWS:
        row = re.search(rf"^\| {re.escape(name)} \| (\d+) \| (\d+) \| ([\d,]+) \|", table, re.M)
        assert row, table
        accesses, cycles, rate = int(row[1]), int(row[2]), int(row[3].replace(",", ""))
        assert accesses > 0 and rate > 0, row[0]
        # 5.5 cycles per access: a read takes 5, a write 6, half of each
        assert cycles == accesses * 11 // 2, row[0]
