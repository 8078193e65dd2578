"""ivshmem-flat RTL on Icarus and Verilator through cocotb, against the model.

The cocotb tests live in ``tests/hdl/flat_tb.py``. One toplevel carries the
device twice (behind AXI4-Lite and behind Wishbone), so each simulator builds
once per parameter set: into ``build/hdl/flat/<sim>-<params>-<hash>``, under an
exclusive file lock, skipped when a build of the same Verilog already exists
(pytest-xdist workers and later sessions share it). ``WAVES=1`` records
waveforms (in the test's tmp directory); ``IVHW_SEED=N`` reruns one seed of the
random tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import Out
from support import require_tool

from ivhw.hdl.bus.axil import AXI4LiteFrontEnd
from ivhw.hdl.bus.wishbone import WishboneFrontEnd
from ivhw.hdl.flat import IvshmemFlat
from ivhw.hdl.sim import build_once, cocotb_tests, for_simulator, run_cocotb

__all__: list[str] = []

ROOT = Path(__file__).resolve().parent.parent
TB_DIR = Path(__file__).resolve().parent / "hdl"
TOPLEVEL = "flat_bench"
#: small shared memory so that the unmapped hole and both windows are quick to reach;
#: a 2-deep doorbell FIFO so that stalls come early.
PARAMS = {"vectors": 4, "shm_size": 4096, "doorbell_depth": 2, "irq_backlog": 15}
SIMULATORS = [
    pytest.param("icarus", marks=pytest.mark.icarus),
    pytest.param("verilator", marks=pytest.mark.verilator),
]
if str(TB_DIR) not in sys.path:
    sys.path.insert(0, str(TB_DIR))  # the runner passes sys.path on as PYTHONPATH
#: every cocotb test of the testbench, read from the module itself
TESTS = cocotb_tests("flat_tb")


class FlatBench(wiring.Component):
    """Test toplevel: ``axi`` = the device behind AXI4-Lite, ``wb`` = behind Wishbone."""

    def __init__(self, **params: int) -> None:
        self._axi = AXI4LiteFrontEnd(IvshmemFlat(**params))
        self._wb = WishboneFrontEnd(IvshmemFlat(**params))
        super().__init__({"axi": Out(self._axi.signature), "wb": Out(self._wb.signature)})

    def elaborate(self, platform: object) -> wiring.Module:  # type: ignore[name-defined]
        from amaranth.hdl import Module

        m = Module()
        m.submodules.axi = self._axi
        m.submodules.wb = self._wb
        wiring.connect(m, wiring.flipped(self.axi), self._axi)
        wiring.connect(m, wiring.flipped(self.wb), self._wb)
        return m


def _waves() -> bool:
    return os.environ.get("WAVES") == "1"


def _build(simulator: str) -> tuple[object, Path]:
    """The runner and build directory of ``simulator``, building at most once."""
    text = verilog.convert(FlatBench(**PARAMS), name=TOPLEVEL)
    key = hashlib.sha256(f"{for_simulator(text, simulator)}{_waves()}".encode()).hexdigest()[:12]
    tag = "-".join(f"{k}{v}" for k, v in PARAMS.items())
    build_dir = ROOT / "build" / "hdl" / "flat" / f"{simulator}-{tag}-{key}"
    runner = build_once(
        text, simulator=simulator, toplevel=TOPLEVEL, build_dir=build_dir, waves=_waves()
    )
    return runner, build_dir


@pytest.mark.parametrize(
    "params, error, message",
    [
        ({"vectors": 0}, ValueError, "vectors must be 1..64, not 0"),
        ({"vectors": 65}, ValueError, "vectors must be 1..64, not 65"),
        ({"vectors": "4"}, TypeError, "vectors must be an integer, not '4'"),
        ({"vectors": True}, TypeError, "vectors must be an integer, not True"),
        ({"shm_size": 8}, ValueError, "shm_size must be >= 16, not 8"),
        ({"shm_size": 3 << 10}, ValueError, "shm_size must be a power of two, not 3072"),
        ({"doorbell_depth": 0}, ValueError, "doorbell_depth must be >= 1, not 0"),
        ({"irq_backlog": 1.5}, TypeError, "irq_backlog must be an integer, not 1.5"),
    ],
)
def test_parameters_validated(params: dict[str, object], error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        IvshmemFlat(**params)  # type: ignore[arg-type]


def test_front_ends_need_a_bus() -> None:
    with pytest.raises(TypeError, match="must have a bus"):
        AXI4LiteFrontEnd(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must have a bus"):
        WishboneFrontEnd(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("test", TESTS)
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_flat(simulator: str, test: str, tmp_path: Path) -> None:
    require_tool("iverilog" if simulator == "icarus" else "verilator")
    runner, build_dir = _build(simulator)
    env = {"IVHW_FLAT_PARAMS": json.dumps(PARAMS)}
    run_cocotb(  # fails unless the test ran and passed
        runner,
        test_module="flat_tb",
        tests=[test],
        test_dir=tmp_path,
        hdl_toplevel=TOPLEVEL,
        build_dir=build_dir,
        extra_env=env,
        waves=_waves(),
    )
