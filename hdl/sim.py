"""Building the gateware for cocotb simulation: one place for the simulator quirks.

Used by the HDL tests, the benchmarks and the co-simulation bridge, so every
build of a device gets the same Verilog fix-ups and simulator arguments.
"""

from __future__ import annotations

import fcntl
import re
from pathlib import Path
from typing import Any

__all__ = ["TIMESCALE", "VERILATOR_ARGS", "build_once", "for_simulator"]

#: Verilator trips on Amaranth's Verilog in lint only (TOOLCHAIN.md).
VERILATOR_ARGS = ("-Wno-fatal", "-Wno-lint")
TIMESCALE = ("1ns", "1ps")

# Yosys makes every ``always @*`` block read a dummy ``reg ... = 0`` so that simulators
# run it once at time 0; Icarus 11 applies that initializer without an event, so a
# combinational output whose inputs never change (a state register sitting at its
# reset value) stays X. For Icarus only, toggle the dummy after 1 ns.
_TRIGGER = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\S+)\s+= 0;$", re.MULTILINE)


def for_simulator(text: str, simulator: str) -> str:
    """Amaranth's Verilog ``text`` made to behave on ``simulator`` (the Icarus kick)."""
    if simulator == "icarus":
        return _TRIGGER.sub(r"\1reg \2 = 0;\n\1initial #1 \2 = 1;", text)
    return text


def build_once(
    text: str, *, simulator: str, toplevel: str, build_dir: Path, waves: bool = False
) -> Any:
    """Build ``text`` for ``simulator`` in ``build_dir`` unless done; return the runner.

    Parallel callers (pytest-xdist workers) serialize on a lock file in
    ``build_dir``; the first builds, the others reuse its result.
    """
    from cocotb_tools.runner import get_runner

    build_dir.mkdir(parents=True, exist_ok=True)
    runner = get_runner(simulator)
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = build_dir / ".built"
        if not stamp.exists():
            source = build_dir / f"{toplevel}.v"
            source.write_text(for_simulator(text, simulator))
            runner.build(
                sources=[source],
                hdl_toplevel=toplevel,
                build_dir=build_dir,
                build_args=list(VERILATOR_ARGS) if simulator == "verilator" else [],
                timescale=TIMESCALE,
                waves=waves,
                log_file=build_dir / "build.log",
            )
            stamp.touch()
    return runner
