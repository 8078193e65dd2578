"""Simulation speed of each HDL block: Icarus and Verilator (cocotb) against Amaranth's simulator.

``python -m bench.hdl_simspeed [--quick] [--cycles N] [--blocks axil,wishbone,pci]
[--sims icarus,verilator,amaranth] [--json PATH]``

Blocks: ivshmem-flat behind AXI4-Lite (``axil``) and behind Wishbone
(``wishbone``), both in the tests' ``flat_bench`` toplevel (which carries
both front-ends, so the idle twin is simulated too, in every simulator), and
the PCI endpoint, doorbell/MSI-X variant (``pci``). Builds come from the
tests' helpers (``tests/test_hdl_flat.py``, ``tests/test_hdl_pci.py``): the
same build directories and file locks, so a build the tests made is reused.

Every simulator runs the same workload (:mod:`bench._simspeed_work`): the
same Python driver object, stepped once per clock cycle with the outputs
sampled at the rising edge, changing only the inputs that change. No
bus-functional model (cocotbext-axi, cocotb-bus) is involved, so the figure
is the simulator's plus one thin Python crossing per cycle, not a BFM's. The
counters of what got done (accesses, doorbells, events, interrupts) must
agree between simulators; the table says so in its last column.

The rate is device clock cycles per wall-clock second of the cycle loop
alone, timed inside the simulator process; build time (Verilog conversion and
compilation, or the Amaranth simulator's elaboration) and the simulator's
start-up are reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ivhw.hdl.sim import run_cocotb

__all__ = ["BLOCKS", "SIMULATORS", "Result", "main", "measure"]

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = ("axil", "wishbone", "pci")
SIMULATORS = ("icarus", "verilator", "amaranth")
#: cycles per measurement: full and ``--quick``
CYCLES, QUICK_CYCLES = 100_000, 5_000
_PCI_VARIANT = "doorbell"


@dataclass
class Result:
    """One block on one simulator."""

    block: str
    sim: str
    cycles: int
    seconds: float  #: the cycle loop alone
    build_seconds: float  #: conversion + compilation (cocotb) or elaboration (Amaranth)
    cold: bool  #: whether this run built (False: reused an existing build)
    overhead_seconds: float  #: simulator start-up and shutdown around the loop
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Device clock cycles per wall-clock second."""
        return self.cycles / self.seconds if self.seconds > 0 else 0.0


def _tests() -> tuple[Any, Any]:
    """The tests' build modules (``tests/`` has no package: put it on the path)."""
    tests_dir = str(ROOT / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    import test_hdl_flat
    import test_hdl_pci

    return test_hdl_flat, test_hdl_pci


def _top(block: str) -> Any:
    flat, pci = _tests()
    if block == "pci":
        from ivhw.hdl.pci import IvshmemPci

        return IvshmemPci(**pci.VARIANTS[_PCI_VARIANT])
    return flat.FlatBench(**flat.PARAMS)


def _shm_size(block: str) -> int:
    flat, _pci = _tests()
    return int(flat.PARAMS["shm_size"])


def _ports(top: Any) -> dict[str, tuple[Any, bool]]:
    """Verilog port name -> (Amaranth value, is an input) of a toplevel component."""
    from amaranth.hdl import Value
    from amaranth.lib.wiring import In

    return {
        "__".join(str(p) for p in path): (Value.cast(value), member.flow is In)
        for path, member, value in top.signature.flatten(top)
    }


def _inspected(top: Any) -> None:
    """Mark a toplevel only inspected for its ports (and its parts) as used: no warning."""
    from amaranth.hdl import Elaboratable

    todo = [top]
    while todo:
        obj = todo.pop()
        obj._MustUse__used = True
        todo += [v for v in vars(obj).values() if isinstance(v, Elaboratable)]


def _measure_cocotb(block: str, sim: str, cycles: int) -> Result:
    flat, pci = _tests()
    if sim == "verilator" and shutil.which("verilator") is None:
        os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    module = pci if block == "pci" else flat
    start = time.time()
    t0 = time.perf_counter()
    runner, build_dir = pci._build(sim, _PCI_VARIANT) if block == "pci" else flat._build(sim)
    build_seconds = time.perf_counter() - t0
    cold = (Path(build_dir) / ".built").stat().st_mtime >= start - 1
    top = _top(block)
    inputs = [name for name, (_v, is_in) in _ports(top).items() if is_in]
    _inspected(top)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the runner passes sys.path on as PYTHONPATH
    with tempfile.TemporaryDirectory(prefix=f"ivhw-simspeed-{sim}-{block}-") as tmp:
        out = Path(tmp) / "result.json"
        env = {
            "IVHW_SIMSPEED_BLOCK": block,
            "IVHW_SIMSPEED_CYCLES": str(cycles),
            "IVHW_SIMSPEED_SHM": str(_shm_size(block)),
            "IVHW_SIMSPEED_INPUTS": json.dumps(inputs),
            "IVHW_SIMSPEED_OUT": str(out),
        }
        t0 = time.perf_counter()
        run_cocotb(  # fails unless the workload's test ran and passed
            runner,
            test_module="bench._simspeed_tb",
            test_dir=Path(tmp),
            hdl_toplevel=module.TOPLEVEL,
            hdl_toplevel_lang="verilog",
            build_dir=build_dir,
            extra_env=env,
            waves=False,
            timescale=("1ns", "1ps"),
            log_file=Path(tmp) / "sim.log",
        )
        wall = time.perf_counter() - t0
        if not out.exists():
            log = (Path(tmp) / "sim.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{sim} run of {block} wrote no result; end of its log:\n{log}")
        result = json.loads(out.read_text())
    seconds = float(result["seconds"])
    return Result(
        block, sim, cycles, seconds, build_seconds, cold, wall - seconds, result["counts"]
    )


def _measure_amaranth(block: str, cycles: int) -> Result:
    from amaranth.sim import Simulator

    from bench._simspeed_work import make_workload

    work = make_workload(block, _shm_size(block))
    t0 = time.perf_counter()
    top = _top(block)
    ports = _ports(top)
    sim = Simulator(top)
    sim.add_clock(10e-9)
    build_seconds = time.perf_counter() - t0
    ins = [ports[name][0] for name in work.inputs]
    outs = [ports[name][0] for name in work.outputs]
    timing: dict[str, float] = {}

    async def testbench(ctx: Any) -> None:
        for name, value in work.initial.items():
            ctx.set(ports[name][0], value)
        tick = ctx.tick().sample(*outs)
        start = time.perf_counter()
        for _ in range(cycles):
            _clk, _rst, *values = await tick
            for i, value in work.step(values):
                ctx.set(ins[i], value)
        timing["seconds"] = time.perf_counter() - start

    sim.add_testbench(testbench)
    t0 = time.perf_counter()
    sim.run()
    wall = time.perf_counter() - t0
    seconds = timing["seconds"]
    return Result(block, "amaranth", cycles, seconds, build_seconds, True, wall - seconds,
                  dict(work.counts))  # fmt: skip


def measure(block: str, sim: str, cycles: int) -> Result:
    """Run ``cycles`` cycles of ``block``'s workload on ``sim``."""
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; choose from {', '.join(BLOCKS)}")
    if sim not in SIMULATORS:
        raise ValueError(f"unknown simulator {sim!r}; choose from {', '.join(SIMULATORS)}")
    if sim == "amaranth":
        return _measure_amaranth(block, cycles)
    return _measure_cocotb(block, sim, cycles)


_NAMES = {"icarus": "Icarus", "verilator": "Verilator", "amaranth": "Amaranth"}
_BLOCK_NAMES = {"axil": "flat + AXI4-Lite", "wishbone": "flat + Wishbone", "pci": "PCI (MSI-X)"}


def _ratio(results: dict[str, Result], a: str, b: str) -> str:
    if a in results and b in results and results[b].rate > 0:
        return f"{results[a].rate / results[b].rate:.2f}x"
    return "-"


def _format(rows: Sequence[Result], sims: Sequence[str]) -> str:
    by_block: dict[str, dict[str, Result]] = {}
    for r in rows:
        by_block.setdefault(r.block, {})[r.sim] = r
    head = " | ".join(f"{_NAMES[s]} (cycles/s)" for s in sims)
    lines = [
        f"| block | {head} | Verilator/Icarus | Verilator/Amaranth | same work |",
        "|---|" + "--:|" * len(sims) + "--:|--:|:-:|",
    ]
    for block, results in by_block.items():
        rates = " | ".join(f"{results[s].rate:,.0f}" if s in results else "-" for s in sims)
        same = len({tuple(r.counts.values()) for r in results.values()}) == 1
        lines.append(
            f"| {_BLOCK_NAMES[block]} | {rates} | {_ratio(results, 'verilator', 'icarus')} "
            f"| {_ratio(results, 'verilator', 'amaranth')} | {'yes' if same else 'NO'} |"
        )
    lines += [
        "",
        "| block | simulator | cycles | loop (s) | build (s) | start-up + shutdown (s) "
        "| accesses | doorbells | events | interrupts | bad reads |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        c = r.counts
        build = f"{r.build_seconds:.2f}" + ("" if r.cold or r.sim == "amaranth" else " (reused)")
        lines.append(
            f"| {_BLOCK_NAMES[r.block]} | {_NAMES[r.sim]} | {r.cycles} | {r.seconds:.2f} "
            f"| {build} | {r.overhead_seconds:.2f} | {c.get('accesses', 0)} "
            f"| {c.get('doorbells', 0)} | {c.get('events', 0)} | {c.get('interrupts', 0)} "
            f"| {c.get('bad_reads', 0)} |"
        )
    return "\n".join(lines)


def _choices(allowed: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        values = [v for v in text.split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(allowed)}, not {text!r}"
            )
        return values

    return parse


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of cycles, not {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every block on every simulator and print the tables; 1 if the work differs."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.hdl_simspeed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CYCLES} cycles per run")
    parser.add_argument("--cycles", type=_positive, default=None, help=f"default {CYCLES}")
    parser.add_argument("--blocks", type=_choices(BLOCKS), default=list(BLOCKS),
                        help=f"default {','.join(BLOCKS)}")  # fmt: skip
    parser.add_argument("--sims", type=_choices(SIMULATORS), default=list(SIMULATORS),
                        help=f"default {','.join(SIMULATORS)}")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    cycles = args.cycles or (QUICK_CYCLES if args.quick else CYCLES)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), Linux {platform.release()}, "
        f"Python {platform.python_version()}; {cycles} cycles per run",
        flush=True,
    )
    rows: list[Result] = []
    for block in args.blocks:
        for sim in args.sims:
            try:
                rows.append(measure(block, sim, cycles))
            except FileNotFoundError as error:  # a simulator that is not installed
                print(f"{block} on {sim}: skipped ({error})", file=sys.stderr)
    print(_format(rows, args.sims))
    if args.json is not None:
        args.json.write_text(json.dumps([{**r.__dict__, "rate": r.rate} for r in rows], indent=1))
    same = all(
        len({tuple(r.counts.values()) for r in rows if r.block == b}) <= 1 for b in args.blocks
    )
    bad = any(r.counts.get("bad_reads", 0) for r in rows)
    return 0 if same and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
