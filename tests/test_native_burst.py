"""A guest's block access on the native engine: one engine call, the same transactions.

``_Bus.read_words`` / ``write_words`` hand the engine up to ``BURST`` transactions a
call. Whatever stops a burst early (flags to act on, an error response, a stop) is
handled exactly as after a single read or write, and the rest of the block goes on
(or, on an error, does not). An engine stand-in scripts those outcomes; the real
engine runs the same blocks in ``tests/test_cosim_engines.py``, against cocotb's.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ivhw.cosim.guest_api import BusError
from ivhw.cosim.native import _BUS_ERROR, _FLAGGED, BURST, F_MEMBER, _Bus, run_coroutine
from ivhw.cosim.session import Stop


class _Engine:
    """Runs each burst against ``memory`` (word address -> value), stopping as scripted."""

    def __init__(self, stops: dict[int, int]) -> None:
        self.memory: dict[int, int] = {}
        self.stops = stops  # transaction index (over the whole block) -> status it ends with
        self.calls: list[int] = []
        self.ran = 0

    def burst(self, ops: list[tuple[int, int, int]]) -> tuple[int, int, list[int]]:
        assert len(ops) <= BURST
        self.calls.append(len(ops))
        values = []
        for done, (write, addr, value) in enumerate(ops):
            status = self.stops.pop(self.ran, 0)
            self.ran += 1
            if status & ~_FLAGGED == _BUS_ERROR:
                values.append(2)  # SLVERR
                return done, status, values
            if write:
                self.memory[addr] = value & 0xFFFF_FFFF
                values.append(0)
            else:
                values.append(self.memory.get(addr, addr ^ 0x5A5A))
            if status:
                return done, status, values
        return len(ops), 0, values

    def take_flags(self) -> int:
        return F_MEMBER


def _bus(engine: _Engine) -> tuple[_Bus, list[int]]:
    handled: list[int] = []
    bridge: Any = SimpleNamespace(engine=engine, config=SimpleNamespace(device="flat"),
                                  handle=handled.append)  # fmt: skip
    return _Bus(bridge), handled


def test_a_long_block_is_cut_into_bursts() -> None:
    engine = _Engine({})
    bus, handled = _bus(engine)
    addrs = [0x1000 + 4 * i for i in range(BURST * 2 + 5)]
    assert run_coroutine(bus.read_words(addrs)) == [a ^ 0x5A5A for a in addrs]
    assert engine.calls == [BURST, BURST, 5] and not handled


def test_flags_mid_block_are_handled_and_the_block_goes_on() -> None:
    engine = _Engine({3: _FLAGGED, BURST + 1: _FLAGGED})
    bus, handled = _bus(engine)
    writes = [(0x2000 + 4 * i, i, 0xF) for i in range(BURST + 4)]
    run_coroutine(bus.write_words(writes))
    assert engine.memory == {addr: value for addr, value, _ in writes}
    assert handled == [F_MEMBER, F_MEMBER]  # once each, right after its transaction
    assert engine.ran == len(writes)


def test_an_error_mid_block_raises_and_ends_it() -> None:
    engine = _Engine({2: _BUS_ERROR})
    bus, _ = _bus(engine)
    with pytest.raises(BusError, match=r"read of 0x1008 answered SLVERR"):
        run_coroutine(bus.read_words([0x1000, 0x1004, 0x1008, 0x100C]))
    assert engine.ran == 3  # nothing after the failed read


def test_a_stop_mid_block_stops() -> None:
    engine = _Engine({1: 2})  # BUS_ABORTED: a flag that ends the run
    bus, _ = _bus(engine)
    with pytest.raises(Stop):
        run_coroutine(bus.write_words([(0x1000, 1, 0xF), (0x1004, 2, 0xF), (0x1008, 3, 0xF)]))
    assert engine.ran == 2
