"""Test drivers for the ports of the devices, cycle by cycle, the same on every simulator.

Each driver plays one side of one port: a stream source or sink, the known-peer
responder, the shared memory behind the ``mem`` port, the own ID.
:class:`DeviceTransport` puts them together as the transport side of one
device (``doorbell``, ``event``, ``ident``, ``peers``, ``mem`` of
:mod:`ivhw.hdl.transport`). A driver knows nothing about the simulator; a
harness calls, once per clock cycle,

1. ``inputs()`` and drives those values (signal names as the Verilog ports
   are named: ``doorbell__ready``, with the driver's prefix),
2. reads every name in ``outputs`` once the logic has settled (before the edge),
3. ``edge(values)`` with what it read, then lets the clock edge pass.

:func:`amaranth_step` and :func:`cocotb_step` are those harnesses for
Amaranth's simulator (in-process unit tests) and for cocotb (Icarus,
Verilator); :func:`run` loops a step over any number of drivers. A transfer
on a stream happens at the edge where ``valid`` and ``ready`` are both high,
so a driver decides it from the values of step 2, combinational paths
included.
"""

from __future__ import annotations

import collections
import enum
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from amaranth.hdl import Value
from amaranth.lib import data

from ..sw.regmap import DOORBELL

__all__ = [
    "DeviceTransport",
    "Driver",
    "IdentDriver",
    "MemoryPort",
    "PeerResponder",
    "Step",
    "StreamSink",
    "StreamSource",
    "amaranth_signal",
    "amaranth_step",
    "cocotb_reset",
    "cocotb_step",
    "run",
]

#: ``step(inputs)`` drives ``inputs``, returns the ``outputs`` values as they are just
#: before the next clock edge, and lets that edge pass.
Step = Callable[[dict[str, int]], Awaitable[dict[str, int]]]


class Driver(Protocol):
    """What a harness needs from a driver."""

    #: names to read before every edge
    outputs: list[str]

    def inputs(self) -> dict[str, int]: ...

    def edge(self, values: Mapping[str, int]) -> None: ...


def _chance(rng: random.Random, p: float) -> bool:
    return p >= 1 or (p > 0 and rng.random() < p)


class StreamSink:
    """The sink of an :mod:`amaranth.lib.stream` the device drives (``valid``, ``payload``).

    Parameters
    ----------
    prefix : str
        Port name with the trailing ``__`` (``"doorbell__"``).
    rng : random.Random
    ready : float
        Probability that ``ready`` is high in a cycle (1: always).

    Attributes
    ----------
    items : list of int
        Every payload taken, in order.
    """

    def __init__(self, prefix: str, rng: random.Random, ready: float = 1.0) -> None:
        self._p, self._rng = prefix, rng
        self.ready = ready
        self.items: list[int] = []
        self._stall = 0
        self._ready_now = False
        self.outputs = [prefix + "valid", prefix + "payload"]

    def stall_for(self, cycles: int) -> None:
        """Hold ``ready`` low for ``cycles`` cycles, then go on as before."""
        self._stall = cycles

    def inputs(self) -> dict[str, int]:
        if self._stall:
            self._stall -= 1
            self._ready_now = False
        else:
            self._ready_now = _chance(self._rng, self.ready)
        return {self._p + "ready": int(self._ready_now)}

    def edge(self, values: Mapping[str, int]) -> None:
        if self._ready_now and values[self._p + "valid"]:
            self.items.append(values[self._p + "payload"])


class StreamSource:
    """The source of a stream the device takes (``ready``): payloads from :attr:`queue`."""

    def __init__(self, prefix: str) -> None:
        self._p = prefix
        self.queue: collections.deque[int] = collections.deque()
        self.taken = 0
        self._valid_now = False
        self.outputs = [prefix + "ready"]

    def inputs(self) -> dict[str, int]:
        self._valid_now = bool(self.queue)
        payload = self.queue[0] if self.queue else 0
        return {self._p + "valid": int(self._valid_now), self._p + "payload": payload}

    def edge(self, values: Mapping[str, int]) -> None:
        if self._valid_now and values[self._p + "ready"]:
            self.queue.popleft()
            self.taken += 1


class PeerResponder:
    """Answers the device's known-peer queries from :attr:`peers` (``peers`` port).

    Parameters
    ----------
    prefix : str
        ``"peers__"`` (with a front-end's or domain's prefix before it).
    rng : random.Random
    peers : dict
        Peer ID -> vector count; 0 or absent: not known.
    latency : tuple of int
        Cycles between seeing ``req`` and answering, drawn per query (0: in the
        cycle after ``req`` was first seen).
    """

    def __init__(
        self,
        prefix: str,
        rng: random.Random,
        peers: dict[int, int] | None = None,
        latency: tuple[int, ...] = (0,),
    ) -> None:
        self._p, self._rng = prefix, rng
        self.peers = {} if peers is None else peers
        self.latency = latency
        self.answered = 0
        self._pending: int | None = None  # peer asked about
        self._wait = 0
        self._ack_now = False
        self.outputs = [prefix + "req", prefix + "peer"]

    def inputs(self) -> dict[str, int]:
        self._ack_now = False
        vectors = 0
        if self._pending is not None:
            if self._wait:
                self._wait -= 1
            else:
                self._ack_now = True
                vectors = self.peers.get(self._pending, 0)
        return {self._p + "ack": int(self._ack_now), self._p + "vectors": vectors}

    def edge(self, values: Mapping[str, int]) -> None:
        if self._ack_now:
            self._pending = None
            self.answered += 1
        elif self._pending is None and values[self._p + "req"]:
            self._pending = values[self._p + "peer"]
            self._wait = self._rng.choice(self.latency)


class MemoryPort:
    """The shared memory behind the device's ``mem`` port, with random grant and read latency.

    Parameters
    ----------
    prefix : str
        ``"mem__"``.
    rng : random.Random
    memory : bytearray
        The shared memory (word ``a`` is bytes ``4a .. 4a+3``, little-endian).
    ready : float
        Probability that a request is taken in a cycle.
    latency : tuple of int
        Cycles from a read's grant to its data, at least 1, drawn per read.
    """

    def __init__(
        self,
        prefix: str,
        rng: random.Random,
        memory: bytearray,
        ready: float = 1.0,
        latency: tuple[int, ...] = (1,),
    ) -> None:
        if min(latency) < 1:
            raise ValueError(f"read latency must be at least 1 cycle, not {latency!r}")
        self._p, self._rng = prefix, rng
        self.memory = memory
        self.ready = ready
        self.latency = latency
        self.reads = self.writes = 0
        self._due: collections.deque[list[int]] = collections.deque()  # [cycles left, data]
        self._ready_now = False
        self.outputs = [prefix + n for n in ("valid", "addr", "we", "w_data", "sel")]

    def inputs(self) -> dict[str, int]:
        values = {self._p + "r_valid": 0, self._p + "r_data": 0}
        if self._due and self._due[0][0] == 0:
            values[self._p + "r_valid"] = 1
            values[self._p + "r_data"] = self._due[0][1]
        self._ready_now = _chance(self._rng, self.ready)
        values[self._p + "ready"] = int(self._ready_now)
        return values

    def edge(self, values: Mapping[str, int]) -> None:
        if self._due and self._due[0][0] == 0:
            self._due.popleft()
        for item in self._due:
            item[0] -= 1
        if not (self._ready_now and values[self._p + "valid"]):
            return
        at = 4 * values[self._p + "addr"]
        if values[self._p + "we"]:
            data, sel = values[self._p + "w_data"], values[self._p + "sel"]
            for lane in range(4):
                if sel >> lane & 1:
                    self.memory[at + lane] = data >> (8 * lane) & 0xFF
            self.writes += 1
        else:
            word = int.from_bytes(self.memory[at : at + 4], "little")
            self._due.append([self._rng.choice(self.latency) - 1, word])
            self.reads += 1


class IdentDriver:
    """The own peer ID (``ident`` port): :attr:`id`, ``None`` until the server assigned one."""

    def __init__(self, prefix: str, peer: int | None = None) -> None:
        self._p = prefix
        self.id = peer
        self.outputs: list[str] = []

    def inputs(self) -> dict[str, int]:
        return {
            self._p + "id": 0 if self.id is None else self.id,
            self._p + "valid": int(self.id is not None),
        }

    def edge(self, values: Mapping[str, int]) -> None:
        pass


class DeviceTransport:
    """The transport side of one ivshmem device: every port of :mod:`ivhw.hdl.transport`.

    Parameters
    ----------
    rng : random.Random
    shm_size : int
        Bytes of shared memory behind ``mem``.
    prefix : str
        Prefix of the device's port names (``""``; ``"axil__"`` has none: the
        front-ends keep the transport ports' names).
    doorbell_ready, mem_ready : float
        Probabilities that the doorbell sink / the memory takes a transfer in a cycle.
    peer_latency, read_latency : tuple of int
        See :class:`PeerResponder` and :class:`MemoryPort`.

    Attributes
    ----------
    doorbells, events, peers, mem, ident
        The drivers (:class:`StreamSink`, :class:`StreamSource`,
        :class:`PeerResponder`, :class:`MemoryPort`, :class:`IdentDriver`).
    """

    def __init__(
        self,
        rng: random.Random,
        shm_size: int,
        *,
        prefix: str = "",
        doorbell_ready: float = 1.0,
        mem_ready: float = 1.0,
        peer_latency: tuple[int, ...] = (0,),
        read_latency: tuple[int, ...] = (1,),
    ) -> None:
        self.doorbells = StreamSink(prefix + "doorbell__", rng, doorbell_ready)
        self.events = StreamSource(prefix + "event__")
        self.peers = PeerResponder(prefix + "peers__", rng, latency=peer_latency)
        self.mem = MemoryPort(prefix + "mem__", rng, bytearray(shm_size), mem_ready, read_latency)
        self.ident = IdentDriver(prefix + "ident__")
        self._drivers: tuple[Driver, ...] = (
            self.doorbells, self.events, self.peers, self.mem, self.ident,
        )  # fmt: skip
        self.outputs = [name for d in self._drivers for name in d.outputs]

    def rung(self) -> list[tuple[int, int]]:
        """``(peer, vector)`` of every doorbell the device sent, in order."""
        return [DOORBELL.unpack(word) for word in self.doorbells.items]

    def inputs(self) -> dict[str, int]:
        values: dict[str, int] = {}
        for driver in self._drivers:
            values.update(driver.inputs())
        return values

    def edge(self, values: Mapping[str, int]) -> None:
        for driver in self._drivers:
            driver.edge(values)


async def run(step: Step, drivers: Iterable[Driver], until: Callable[[], bool], limit: int) -> int:
    """Step every driver, cycle by cycle, until ``until()``; the number of cycles.

    ``AssertionError`` after ``limit`` cycles. Outputs a driver does not name are
    sampled for nobody; read extra ones by adding a driver that lists them.
    """
    drivers = tuple(drivers)
    cycles = 0
    while not until():
        values: dict[str, int] = {}
        for driver in drivers:
            values.update(driver.inputs())
        sampled = await step(values)
        for driver in drivers:
            driver.edge(sampled)
        cycles += 1
        assert cycles < limit, f"not done after {limit} cycles"
    return cycles


def amaranth_signal(dut: Any, name: str) -> Any:
    """The signal of ``dut`` that Verilog names ``name`` (``doorbell__valid``)."""
    obj = dut
    for part in name.split("__"):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    # a stream's payload is a data.View: drive and sample its bits as an integer
    return Value.cast(obj) if isinstance(obj, data.View) else obj


def _int(value: Any) -> int:
    # an enum-shaped signal (a bus response) reads as its member
    return int(value.value) if isinstance(value, enum.Enum) else int(value)


def amaranth_step(ctx: Any, dut: Any, outputs: Iterable[str]) -> Step:
    """A :data:`Step` for an Amaranth testbench (``ctx`` of ``add_testbench``)."""
    handles = {name: amaranth_signal(dut, name) for name in outputs}
    inputs: dict[str, Any] = {}

    async def step(values: dict[str, int]) -> dict[str, int]:
        for key, value in values.items():
            if key not in inputs:
                inputs[key] = amaranth_signal(dut, key)
            ctx.set(inputs[key], value)
        sampled = {key: _int(ctx.get(sig)) for key, sig in handles.items()}
        sampled.update(values)
        await ctx.tick()
        return sampled

    return step


async def cocotb_reset(dut: Any, cycles: int = 3) -> None:
    """Hold ``dut.rst`` high for ``cycles`` clock cycles, then one cycle out of reset."""
    from cocotb.triggers import RisingEdge

    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


def cocotb_step(dut: Any, outputs: Iterable[str]) -> Step:
    """A :data:`Step` for cocotb: drive at the falling edge, sample the settled values."""
    from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

    handles = {name: getattr(dut, name) for name in outputs}
    inputs: dict[str, Any] = {}

    def _int(value: Any) -> int:
        # X or Z (an empty FIFO's data) is -1, which no check accepts
        return int(value) if value.is_resolvable else -1

    async def step(values: dict[str, int]) -> dict[str, int]:
        await FallingEdge(dut.clk)
        for key, value in values.items():
            if key not in inputs:
                inputs[key] = getattr(dut, key)
            inputs[key].value = value
        await ReadOnly()
        sampled = {key: _int(handle.value) for key, handle in handles.items()}
        sampled.update(values)
        await RisingEdge(dut.clk)
        return sampled

    return step
