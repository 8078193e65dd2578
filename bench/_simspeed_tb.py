"""cocotb side of ``bench.hdl_simspeed``: the thin per-cycle driver, no bus-functional models.

One test, :func:`simspeed`: reset, then ``IVHW_SIMSPEED_CYCLES`` clock cycles
of :class:`bench._simspeed_work.Workload` for ``IVHW_SIMSPEED_BLOCK``. Per
cycle: ``await RisingEdge``, read the workload's outputs (the values at the
edge), write the inputs it changes. Only the cycles loop is timed (wall
clock, in the simulator process); the result goes as JSON to
``IVHW_SIMSPEED_OUT``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from bench._simspeed_work import make_workload

__all__ = ["simspeed"]


@cocotb.test()
async def simspeed(dut: Any) -> None:
    """Run the workload for the requested number of cycles and record the rate."""
    block = os.environ["IVHW_SIMSPEED_BLOCK"]
    cycles = int(os.environ["IVHW_SIMSPEED_CYCLES"])
    work = make_workload(block, int(os.environ.get("IVHW_SIMSPEED_SHM", "4096")))
    # every input port of the toplevel at 0 (Icarus leaves undriven inputs at X)
    for name in json.loads(os.environ["IVHW_SIMSPEED_INPUTS"]):
        getattr(dut, name).value = 0
    for name, value in work.initial.items():
        getattr(dut, name).value = value
    ins = [getattr(dut, name) for name in work.inputs]
    outs = [getattr(dut, name) for name in work.outputs]
    clk = dut.clk
    dut.rst.value = 1
    Clock(clk, 10, unit="ns").start()
    edge = RisingEdge(clk)
    for _ in range(3):
        await edge
    dut.rst.value = 0
    await edge

    start = time.perf_counter()
    for _ in range(cycles):
        await edge
        for i, value in work.step([int(h.value) for h in outs]):
            ins[i].value = value
    seconds = time.perf_counter() - start

    Path(os.environ["IVHW_SIMSPEED_OUT"]).write_text(
        json.dumps({"seconds": seconds, "counts": work.counts})
    )
