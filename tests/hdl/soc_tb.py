"""cocotb test of the two-tile SoC with its firmware, against the domain model.

The toplevel (built by ``tests/test_soc_sim.py``) is two SoC tiles in one on-chip
domain: tile 0 runs the ping client, tile 1 the echo service, both compiled C
firmware. cocotbext-uart's ``UartSink`` reads tile 0's console; every ping line
must carry the right reply bytes (the request inverted) and the firmware's own
verdict. Meanwhile a monitor follows both tiles' transport ports every cycle and
replays them on :class:`ivhw.sw.models.domain.Domain`: each doorbell a tile sends
is routed by the model, each event a tile takes must be one the model routed to
it, and each shared-memory read must return what the model's memory holds.

Environment: ``IVHW_SOC_PINGS`` (pings the firmware sends), ``IVHW_SOC_BAUD``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge, with_timeout
from cocotbext.uart import UartSink

from ivhw.sw.echo import invert
from ivhw.sw.models.domain import Domain

PINGS = int(os.environ.get("IVHW_SOC_PINGS", "4"))
BAUD = int(os.environ.get("IVHW_SOC_BAUD", "12500000"))
SHM_SIZE = int(os.environ.get("IVHW_SOC_SHM_SIZE", str(64 << 10)))
PING = re.compile(r"ping seq=(\d+) peer=(\d+) rtt=(\d+) cycles reply=([0-9a-f]+) (ok|BAD)")


class TB:
    """Clock, reset, the console and the domain monitor of the SoC bench."""

    def __init__(self, dut: Any) -> None:
        self.dut = dut
        self.log = dut._log
        self.console = UartSink(dut.tx0, baud=BAUD, bits=8, stop_bits=1)
        self.model = Domain([(0, 1), (1, 1)], shm_size=SHM_SIZE)
        self.doorbells = [0, 0]
        self.events = [0, 0]
        self.reads = 0
        self.writes = 0
        self.errors: list[str] = []
        Clock(dut.clk, 10, unit="ns").start()

    async def cycle_reset(self) -> None:
        dut = self.dut
        dut.rx0.value = 1
        dut.rst.value = 1
        for _ in range(3):
            await RisingEdge(dut.clk)
        dut.rst.value = 0

    def _port(self, i: int, name: str) -> Any:
        return getattr(self.dut, f"t{i}_{name}")

    async def monitor(self) -> None:
        """Replay every transport transfer of both tiles on the domain model."""
        dut = self.dut
        pending: list[int | None] = [None, None]  # word address of a granted read
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            for i in (0, 1):
                port = self._port
                if pending[i] is not None and int(port(i, "mem_r_valid").value):
                    want = self.model.mem_access(pending[i], False)
                    got = int(port(i, "mem_r_data").value)
                    if got != want:
                        self.errors.append(
                            f"tile {i} read {got:#x} at word {pending[i]:#x}, "
                            f"the model holds {want:#x}"
                        )
                    pending[i] = None
                if int(port(i, "mem_valid").value) and int(port(i, "mem_ready").value):
                    word = int(port(i, "mem_addr").value)
                    if int(port(i, "mem_we").value):
                        self.model.mem_access(
                            word, True, int(port(i, "mem_w_data").value),
                            int(port(i, "mem_sel").value),
                        )  # fmt: skip
                        self.writes += 1
                    else:
                        pending[i] = word
                        self.reads += 1
                if int(port(i, "db_valid").value) and int(port(i, "db_ready").value):
                    word = int(port(i, "db_payload").value)
                    if self.model.ring(i, word) is None:
                        self.errors.append(f"tile {i} rang {word:#x}, which the model drops")
                    self.doorbells[i] += 1
                if int(port(i, "ev_valid").value) and int(port(i, "ev_ready").value):
                    vector = int(port(i, "ev_vector").value)
                    if not self.model.take_event(i, vector):
                        self.errors.append(
                            f"tile {i} took an event on vector {vector} that the model did "
                            f"not route (in flight: {self.model.expected_events(i)})"
                        )
                    self.events[i] += 1

    async def line(self) -> str:
        """The next line tile 0 printed."""
        text = bytearray()
        while True:
            byte = (await self.console.read(1))[0]
            if byte == 0x0A:
                return text.decode("ascii", errors="replace")
            text.append(byte)


@cocotb.test()
async def ping_through_the_domain(dut: Any) -> None:
    """Tile 0 pings tile 1 through the domain; every reply is right; the model agrees."""
    tb = TB(dut)
    await tb.cycle_reset()
    cocotb.start_soon(tb.monitor())
    start = await with_timeout(tb.line(), 2, "ms")
    assert start == "ping: peer 0", start
    found = await with_timeout(tb.line(), 5, "ms")
    assert found.startswith("ping: echo peer 1, clock "), found
    rtts = []
    for seq in range(1, PINGS + 1):
        line = await with_timeout(tb.line(), 5, "ms")
        tb.log.info("tile 0: %s", line)
        match = PING.fullmatch(line)
        assert match, line
        assert int(match[1]) == seq and int(match[2]) == 1, line
        expected = invert(b"ping" + seq.to_bytes(4, "little"))
        assert bytes.fromhex(match[4]) == expected, (line, expected.hex())
        assert match[5] == "ok", line
        rtts.append(int(match[3]))
    summary = await with_timeout(tb.line(), 5, "ms")
    assert summary.startswith(f"ping: {PINGS} sent, {PINGS} answered"), summary
    assert await with_timeout(tb.line(), 1, "ms") == "ping: done"
    assert not tb.errors, "\n".join(tb.errors[:10])
    # one probe and PINGS requests, each a doorbell there and one back
    assert tb.doorbells == [PINGS + 1, PINGS + 1], tb.doorbells
    assert tb.events == [PINGS + 1, PINGS + 1], tb.events
    assert tb.model.counters.bad_peer == 0 and tb.model.counters.bad_vector == 0
    assert int(dut.led.value) == 0b11 * ((PINGS + 1) % 2)  # each LED toggled per doorbell
    tb.log.info(
        "round trips (cycles): %s; min %d max %d; shared memory: %d reads, %d writes",
        rtts, min(rtts), max(rtts), tb.reads, tb.writes,
    )  # fmt: skip
    print(f"IVHW_SOC_RTT_CYCLES {' '.join(map(str, rtts))}")
