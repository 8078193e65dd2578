"""Smoke tests of ``bench.cosim_simspeed`` and ``bench.cosim_rtt``: every row runs and reports.

No timing assertions (the machine is shared; targets are for the benchmark's own
report): only that each row ran the accesses it was asked for, in the cycles they
take, and printed a positive rate.
"""

from __future__ import annotations

import re

import pytest
from support import require_tool

from bench import cosim_rtt, cosim_simspeed

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


@pytest.mark.verilator
def test_round_trip_rows_and_the_echo_split(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench.cosim_rtt`` on the native flat device: every table it prints has its rows."""
    require_tool("g++")
    require_tool("qemu-system-x86_64")
    # the status says whether the targets were met: not checked here
    args = ["--requests", "20", "--idle", "0.5", "--sims", "verilator", "--engines", "native"]
    cosim_rtt.main([*args, "--devices", "flat"])
    out = capsys.readouterr().out
    for mode in ("back-to-back", "spaced"):
        # cycles per echo: a median over the requests, 104 for most (100 once, in a CI run)
        row = re.search(rf"^\| verilator native flat \| {mode} \| (\d+) \(\d+\) \|.*\| "
                        r"(\d+) = (\d+) cycles x [\d.]+ us \|", out, re.M)  # fmt: skip
        assert row and 0 < int(row[2]) <= int(row[1]) and 80 <= int(row[3]) <= 120, out
        split = re.search(rf"^\| verilator native flat \| {mode} \| ([-\d.| ]+) \|$", out, re.M)
        assert split, out
        legs = [float(x) for x in split[1].split("|")]
        assert len(legs) == 6 and all(x > 0 for x in legs[:3]), legs  # 4 legs, sum, the call
        assert legs[4] == pytest.approx(sum(legs[:4]), abs=1.5), legs
    wake = re.search(
        r"^\| verilator native flat \| (\d+) \(\d+\) (ok|MISSED) \| ([\d.]+) % ", out, re.M
    )
    assert wake and int(wake[1]) > 0, out
