"""Test bench of the ivshmem PCI endpoint: drivers of its ports and the model beside it.

:class:`TB` owns the clock, drives the transaction interface
(:mod:`ivhw.hdl.pci.tlp`), plays the transport (peer lookups, doorbell sink,
events, shared memory) and collects MSI-X messages; :class:`Oracle` applies the
same requests to the register model (``ivhw.sw.models.pci.IvshmemPciModel``, or for
``revision`` 2 ``ivhw.sw.models.pci2.IvshmemPci2``) and says what the endpoint
must answer. Every port is sampled at the rising edge (the
values the flip-flops see) and driven right after it.

Environment: ``IVHW_PCI_PARAMS`` (JSON of the endpoint parameters), ``IVHW_SEED``.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge, with_timeout

from ivhw.hdl.pci.tlp import Completion, CplStatus, MsiMessage, ReqKind, Request, pack, unpack
from ivhw.hdl.testing import (
    DeviceTransport,
    StreamSink,
    StreamSource,
    cocotb_reset,
    cocotb_step,
)
from ivhw.sw.models.pci import IvshmemPciModel
from ivhw.sw.models.pci2 import IvshmemPci2
from ivhw.sw.pcicfg import BARS

__all__ = ["PARAMS", "TB", "Oracle", "pack", "seed", "unpack"]

PARAMS: dict[str, Any] = json.loads(os.environ.get("IVHW_PCI_PARAMS", "{}"))
SC, UR = CplStatus.SC.value, CplStatus.UR.value


def seed() -> int:
    """The random seed: ``IVHW_SEED`` or a fresh one, logged so that it can be rerun."""
    value = int(os.environ.get("IVHW_SEED", "0")) or random.randrange(1, 1 << 32)
    cocotb.log.info("seed %d (rerun with IVHW_SEED=%d)", value, value)
    return value


_REV2_KEYS = (
    "layout", "interrupts", "vectors", "max_peers", "output_section_size",
    "state_table_size", "protocol", "shm_size", "bar2", "shm_address",
)  # fmt: skip


def model_params(params: dict[str, Any]) -> dict[str, Any]:
    """The register model's parameters for the endpoint's."""
    keep = (
        _REV2_KEYS
        if params.get("revision") == 2
        else ("doorbell", "vectors", "shm_size", "interrupts")
    )
    return {k: v for k, v in params.items() if k in keep}


class Oracle:
    """The register model seen through the transaction interface: what must each request do."""

    def __init__(self, params: dict[str, Any]) -> None:
        model = IvshmemPci2 if params.get("revision") == 2 else IvshmemPciModel
        self.model = model(**model_params(params))
        self.rev2 = params.get("revision") == 2
        self.msis: list[tuple[int, int]] = []
        self.doorbells: list[tuple[int, int]] = []
        self.intx_changes = 0
        self.events_dropped = 0
        self.model.on_msi = lambda a, d: self.msis.append((a, d))
        self.model.on_doorbell = lambda p, v: self.doorbells.append((p, v))

    def request(self, kind: ReqKind, addr: int, be: int, data: int) -> tuple[int, int | None]:
        """``(status, read data or None)`` the endpoint must complete with."""
        m = self.model
        if kind is ReqKind.CFG_READ:
            return SC, m.config_read(addr & 0xFFC, 4)
        if kind is ReqKind.CFG_WRITE:
            m.config_write_mask(addr & 0xFFC, data, be)
            return SC, None
        hit = m.decode(addr & ~3)
        if hit is None:
            return UR, None
        index, off = hit
        write = kind is ReqKind.MEM_WRITE
        if index == BARS.shm.index:  # BAR2, or revision 2's fixed window
            if write and self.rev2 and not m._writable(off, 4):
                m.counters.protected_writes += 1
                return SC, None
            if write:
                for i in range(4):
                    if be >> i & 1:
                        m.shm_write(off + i, (data >> (8 * i)) & 0xFF, 1)
                return SC, None
            return SC, m.shm_read(off, 4)
        if write:
            m.bar_write_mask(index, off, data, be)
            return SC, None
        return SC, m.bar_read_mask(index, off, be)

    def event(self, vector: int) -> None:
        if not self.model.doorbell or not 0 <= vector < self.model.vectors:
            self.events_dropped += 1
            return
        c = self.model.counters
        before = c.events_dropped + c.msi_masked
        self.model.event(vector)
        # the endpoint counts a masked vector's event (revision 2) as dropped too
        self.events_dropped += c.events_dropped + c.msi_masked - before


class TB:
    """Clock, reset, transaction driver and transport of one endpoint; the oracle beside it.

    The ports are played by the shared drivers of :mod:`ivhw.hdl.testing`: a
    stream source of requests, stream sinks of completions, MSI-X messages and
    doorbells, and the endpoint's transport (:class:`DeviceTransport`).
    """

    def __init__(self, dut: Any, params: dict[str, Any] | None = None, rng_seed: int = 1) -> None:
        self.dut = dut
        self.params = PARAMS if params is None else params
        self.rng = random.Random(rng_seed)
        self.oracle = Oracle(self.params)
        self.transport = DeviceTransport(
            self.rng, self.oracle.model.shm.size, doorbell_ready=0.7, mem_ready=0.8,
            peer_latency=(0, 0, 1, 2),
        )  # fmt: skip
        self.shm = self.transport.mem.memory
        self.events = self.transport.events.queue
        self._req = StreamSource("req__")
        self._cpl = StreamSink("cpl__", self.rng, 0.8)
        self._msi = StreamSink("msi__", self.rng, 0.8)
        self._drivers = (self.transport, self._req, self._cpl, self._msi)
        self.msis: list[tuple[int, int]] = []
        self.on_msi: Any = None
        self.intx_pulses = 0
        for driver in self._drivers:
            for name in driver.inputs():
                getattr(dut, name).value = 0
        dut.rst.value = 1
        Clock(dut.clk, 10, unit="ns").start()
        self._task: Any = None

    @property
    def doorbells(self) -> list[tuple[int, int]]:
        """``(peer, vector)`` of every doorbell taken from the endpoint."""
        return self.transport.rung()

    @property
    def doorbell_ready_p(self) -> float:
        return self.transport.doorbells.ready

    @doorbell_ready_p.setter
    def doorbell_ready_p(self, p: float) -> None:
        self.transport.doorbells.ready = p

    @property
    def msi_ready_p(self) -> float:
        return self._msi.ready

    @msi_ready_p.setter
    def msi_ready_p(self, p: float) -> None:
        self._msi.ready = p

    async def cycle_reset(self) -> None:
        await cocotb_reset(self.dut)
        if self._task is None:
            self._task = cocotb.start_soon(self._ports())

    @classmethod
    async def started(cls, dut: Any, peers: dict[int, int], rng_seed: int = 1) -> TB:
        """A bench out of reset whose transport knows ``peers`` (ID -> vectors)."""
        tb = cls(dut, rng_seed=rng_seed)
        await tb.cycle_reset()
        if tb.oracle.model.doorbell:
            for peer, vectors in peers.items():
                tb.set_peer(peer, vectors)
        return tb

    async def assign_bars(self, addresses: dict[int, int]) -> None:
        """Size every BAR (all-ones, read back) and place it at ``addresses[index]``."""
        for bar, _size in self.oracle.model.bars:
            words = 2 if bar.is64 else 1
            for k in range(words):
                await self.access(ReqKind.CFG_WRITE, bar.offset + 4 * k, 0xF, 0xFFFF_FFFF)
                await self.access(ReqKind.CFG_READ, bar.offset + 4 * k)
            for k in range(words):
                word = (addresses[bar.index] >> (32 * k)) & 0xFFFF_FFFF
                await self.access(ReqKind.CFG_WRITE, bar.offset + 4 * k, 0xF, word)

    # -- transport side ---------------------------------------------------------------------

    def set_ident(self, peer: int | None) -> None:
        """The server assigned ``peer`` (``None``: not yet); the model learns it too."""
        self.transport.ident.id = peer
        if peer is not None and self.oracle.model.doorbell:
            self.oracle.model.set_id(peer)
        self.transport.peers.peers = self.oracle.model.peers

    def set_peer(self, peer: int, vectors: int) -> None:
        self.oracle.model.set_peer(peer, vectors)
        self.transport.peers.peers = self.oracle.model.peers

    async def _ports(self) -> None:
        outputs = [name for driver in self._drivers for name in driver.outputs] + ["intx"]
        step = cocotb_step(self.dut, outputs)
        while True:
            values: dict[str, int] = {}
            for driver in self._drivers:
                values.update(driver.inputs())
            sampled = await step(values)
            if self.oracle.rev2 and sampled["intx"]:
                self.intx_pulses += 1  # revision 2's INTx is a one-cycle pulse
            seen = len(self._msi.items)
            for driver in self._drivers:
                driver.edge(sampled)
            for word in self._msi.items[seen:]:
                msg = unpack(MsiMessage, word)
                self.msis.append((msg["addr"], msg["data"]))
                if self.on_msi is not None:
                    self.on_msi(msg["addr"], msg["data"])

    # -- requests ---------------------------------------------------------------------------

    async def request(
        self, kind: ReqKind, addr: int, be: int = 0xF, data: int = 0
    ) -> tuple[int, int]:
        """One request through the endpoint: ``(status, data)`` of its completion."""
        done = len(self._cpl.items)
        self._req.queue.append(pack(Request, kind=kind.value, addr=addr, be=be, data=data))

        async def wait() -> None:
            while len(self._cpl.items) <= done:
                await RisingEdge(self.dut.clk)

        await with_timeout(wait(), 20, "us")
        cpl = unpack(Completion, self._cpl.items[done])
        return cpl["status"], cpl["data"]

    async def settle(self, cycles: int = 12) -> None:
        """Let the endpoint deliver pending messages and the sinks drain."""
        dut = self.dut
        for _ in range(cycles):
            await RisingEdge(dut.clk)
        for _ in range(5000):  # a slow sink: wait until nothing is offered any more
            if not (int(dut.msi__valid.value) or int(dut.doorbell__valid.value)):
                break
            await RisingEdge(dut.clk)
        for _ in range(4):
            await RisingEdge(dut.clk)

    async def event(self, vector: int) -> None:
        """One inbound event on ``vector``, taken by the endpoint."""
        self.events.append(vector)

        async def wait() -> None:
            while self.events:
                await RisingEdge(self.dut.clk)

        await with_timeout(wait(), 20, "us")

    # -- the differential step ----------------------------------------------------------------

    async def access(self, kind: ReqKind, addr: int, be: int = 0xF, data: int = 0) -> int:
        """A request on the endpoint and on the model; everything observable must agree."""
        status, value = await self.request(kind, addr, be, data)
        want_status, want = self.oracle.request(kind, addr, be, data)
        what = f"{kind.name} {addr:#x} be={be:#x} data={data:#x}"
        assert status == want_status, f"{what}: status {status}, model {want_status}"
        if want is not None:
            assert value == want, f"{what}: read {value:#010x}, model {want:#010x}"
        await self.check(what)
        return value

    async def ring(self, vector: int) -> None:
        """An inbound event on the endpoint and on the model, then the comparison."""
        await self.event(vector)
        self.oracle.event(vector)
        await self.check(f"event {vector}")

    async def check(self, what: str) -> None:
        await self.settle()
        o, dut = self.oracle, self.dut
        assert self.msis == o.msis, f"after {what}: MSI-X {self.msis} model {o.msis}"
        assert self.doorbells == o.doorbells, (
            f"after {what}: doorbells {self.doorbells} model {o.doorbells}"
        )
        if o.rev2:
            pulses = (self.intx_pulses, o.model.counters.intx_pulses)
            assert pulses[0] == pulses[1], f"after {what}: INTx pulses {pulses}"
            protected = (int(dut.protected_writes.value), o.model.counters.protected_writes)
            assert protected[0] == protected[1], f"after {what}: protected writes {protected}"
            assert self.shm == bytes(o.model.shm.view), f"after {what}: shared memory differs"
        else:
            assert int(dut.intx.value) == int(o.model.intx), f"after {what}: INTx differs"
        c = o.model.counters
        got = (int(dut.doorbell_bad_peer.value), int(dut.doorbell_bad_vector.value),
               int(dut.bad_access.value), int(dut.events_dropped.value))  # fmt: skip
        want = (c.bad_peer, c.bad_vector, c.bad_access, o.events_dropped)
        assert got == want, f"after {what}: counters {got} model {want}"
