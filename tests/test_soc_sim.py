"""The two-tile SoC with its real firmware, on Icarus and Verilator (``tests/hdl/soc_tb.py``).

The bench is :class:`ivhw.boards.soc.Soc` as on the boards (tile 0 ping, tile 1 echo,
one on-chip domain in block RAM) with the UART at 8 clocks per bit so the console is
cheap to simulate, and each tile's transport ports brought out for the monitor that
replays them on the domain model. Builds go to ``build/hdl/soc/<sim>-<hash>``.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from support import require_tool

from ivhw.boards.firmware import FirmwareConfig, build
from ivhw.boards.soc import Soc
from ivhw.hdl.sim import build_once, for_simulator, run_cocotb

ROOT = Path(__file__).resolve().parent.parent
TB_DIR = Path(__file__).resolve().parent / "hdl"
TOPLEVEL = "soc_bench"
CLOCK_HZ = 100_000_000
BAUD = CLOCK_HZ // 8
PINGS = 4
SHM_SIZE = 64 << 10
CONFIG = FirmwareConfig(
    ram_size=4096, shm_size=SHM_SIZE, echo_scan=2, ping_count=PINGS, ping_gap=200,
    ping_timeout=50_000,
)  # fmt: skip
SIMULATORS = [
    pytest.param("icarus", marks=pytest.mark.icarus),
    pytest.param("verilator", marks=pytest.mark.verilator),
]


class SocBench(wiring.Component):
    """The SoC with tile 0's console and every tile's transport ports on the toplevel."""

    _TAPS = {
        "db_valid": ("doorbell", "valid", 1), "db_ready": ("doorbell", "ready", 1),
        "db_payload": ("doorbell", "payload", 32), "ev_valid": ("event", "valid", 1),
        "ev_ready": ("event", "ready", 1), "ev_vector": ("event", "payload", 16),
        "mem_valid": ("mem", "valid", 1), "mem_ready": ("mem", "ready", 1),
        "mem_addr": ("mem", "addr", 14), "mem_we": ("mem", "we", 1),
        "mem_w_data": ("mem", "w_data", 32), "mem_sel": ("mem", "sel", 4),
        "mem_r_valid": ("mem", "r_valid", 1), "mem_r_data": ("mem", "r_data", 32),
    }  # fmt: skip

    def __init__(self, images: list[bytes]) -> None:
        self.soc = Soc(images, ram="bram", ram_size=CONFIG.ram_size, shm_size=SHM_SIZE,
                       clock_hz=CLOCK_HZ, baud=BAUD)  # fmt: skip
        members = {"tx0": Out(1), "rx0": In(1, init=1), "led": Out(2)}
        for i in range(len(images)):
            for name, (_, _, width) in self._TAPS.items():
                members[f"t{i}_{name}"] = Out(width)
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.soc = soc = self.soc
        m.d.comb += [
            self.tx0.eq(soc.uart_tx[0]),
            soc.uart_rx.eq(0b10 | self.rx0),
            self.led.eq(soc.led),
        ]
        for i, tile in enumerate(soc.tiles):
            for name, (port, member, _) in self._TAPS.items():
                m.d.comb += getattr(self, f"t{i}_{name}").eq(getattr(getattr(tile, port), member))
        return m


def _images() -> list[bytes]:
    root = ROOT / "build" / "firmware"
    return [build(name, CONFIG, root).image for name in ("ping", "echo")]


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_soc_runs_its_firmware(simulator: str, tmp_path: Path) -> None:
    require_tool("riscv64-unknown-elf-gcc")
    require_tool("iverilog" if simulator == "icarus" else "verilator")
    images = _images()
    text = verilog.convert(SocBench(images), name=TOPLEVEL)
    key = hashlib.sha256(for_simulator(text, simulator).encode()).hexdigest()[:12]
    build_dir = ROOT / "build" / "hdl" / "soc" / f"{simulator}-{key}"
    runner = build_once(text, simulator=simulator, toplevel=TOPLEVEL, build_dir=build_dir)
    if str(TB_DIR) not in sys.path:
        sys.path.insert(0, str(TB_DIR))  # the runner passes sys.path on as PYTHONPATH
    log = tmp_path / "sim.log"
    env = {"IVHW_SOC_PINGS": str(PINGS), "IVHW_SOC_BAUD": str(BAUD),
           "IVHW_SOC_SHM_SIZE": str(SHM_SIZE)}  # fmt: skip
    run_cocotb(  # fails unless every test of the testbench ran and passed
        runner,
        test_module="soc_tb",
        test_dir=tmp_path,
        hdl_toplevel=TOPLEVEL,
        hdl_toplevel_lang="verilog",
        build_dir=build_dir,
        extra_env=env,
        timescale=("1ns", "1ps"),
        log_file=log,
    )
    rtts = re.search(r"IVHW_SOC_RTT_CYCLES ([\d ]+)", log.read_text())
    assert rtts and len(rtts[1].split()) == PINGS
