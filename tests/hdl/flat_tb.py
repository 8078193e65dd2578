"""cocotb tests of ivshmem-flat: the RTL against the model (``ivhw.sw.models.flat``).

The toplevel (built by ``tests/test_hdl_flat.py``) holds two devices: ``axi__*``
behind the AXI4-Lite front-end and ``wb__*`` behind the Wishbone one. Every test
runs through each bus master: cocotbext-axi's ``AxiLiteMaster``, cocotb-bus's
``AXI4LiteMaster``, cocotbext-wishbone's ``WishboneMaster`` (classic: no ``stall``
signal, so it waits for ACK/ERR; one access per ``send_cycle``), and the Wishbone
classic master in ``wishbone_master.py`` (kept: it drives on the falling edge and
idles a cycle between accesses, while cocotbext-wishbone drives right after the
rising edge; both express every SEL pattern, including 0 and non-contiguous ones).
``wishbone_block_cycles`` runs cocotbext-wishbone alone with several accesses in one
CYC, STB held between them, which no other master here does. After every access
(every block there) the read data, the response, the counters, the doorbells and
the shared memory are compared with the model.

Environment: ``IVHW_FLAT_PARAMS`` (JSON of the device parameters, set by the
pytest entry), ``IVHW_SEED`` (rerun one seed of the random tests).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge, with_timeout
from cocotb_bus.drivers.amba import AXI4LiteMaster, AXIProtocolError
from cocotbext.axi import AxiLiteBus, AxiLiteMaster, AxiResp
from cocotbext.wishbone.driver import WBOp
from cocotbext.wishbone.driver import WishboneMaster as ExtWishboneMaster
from wishbone_master import WishboneMaster

from ivhw.hdl.testing import DeviceTransport, cocotb_reset, cocotb_step
from ivhw.sw.memmap import Kind, flat_memory_map
from ivhw.sw.models.flat import IvshmemFlatModel
from ivhw.sw.regmap import DOORBELL, FLAT_REGS

PARAMS: dict[str, int] = json.loads(os.environ.get("IVHW_FLAT_PARAMS", "{}"))
VECTORS = PARAMS.get("vectors", 4)
SHM_SIZE = PARAMS.get("shm_size", 4096)
#: the bus's windows and holes, as the device's ``bus.memory_map``
MAP = flat_memory_map(SHM_SIZE)
REGS, SHM = MAP["regs"], MAP["shm"]
_DOORBELL_READY = 0.7
FIFO_DEPTH = PARAMS.get("doorbell_depth", 2)
OWN_ID = 5
#: peers the transport knows besides the own ID: ID -> vector count
OTHER_PEERS = {0: 1, 2: 3, 7: 64, 0xFFFF: 2}
UNKNOWN_PEERS = (1, 3, 6, 0x1234)

MASTERS = ("axil_ext", "axil_bus", "wishbone", "wishbone_ext")
#: cocotbext-wishbone calls the data lines datwr/datrd
WB_EXT_SIGNALS = {name: name for name in ("cyc", "stb", "we", "adr", "sel", "ack", "err")}
WB_EXT_SIGNALS.update(datwr="dat_w", datrd="dat_r")
OKAY = "OKAY"


def _seed() -> int:
    seed = int(os.environ.get("IVHW_SEED", "0")) or random.randrange(1, 1 << 32)
    cocotb.log.info("seed %d (rerun with IVHW_SEED=%d)", seed, seed)
    return seed


def _lanes(mask: int) -> int:
    return sum(0xFF << (8 * i) for i in range(4) if mask >> i & 1)


class Transport:
    """The transport side of one device (``ivhw.hdl.testing.DeviceTransport``) and its IRQ."""

    def __init__(self, dut: Any, prefix: str, rng: random.Random, peers: dict[int, int]) -> None:
        self._dut, self._p = dut, prefix
        self.driver = DeviceTransport(
            rng, SHM_SIZE, prefix=prefix, doorbell_ready=_DOORBELL_READY, mem_ready=0.6,
            peer_latency=(0, 0, 1, 2), read_latency=(1, 2, 4),
        )  # fmt: skip
        self.driver.peers.peers = peers
        self.peers = peers
        self.events = self.driver.events.queue
        self.mem = self.driver.mem.memory
        self.irq_edges = 0
        self.irq_high = 0
        self._irq_prev = 0
        for name in self.driver.inputs():
            getattr(dut, name).value = 0

    @property
    def doorbells(self) -> list[tuple[int, int]]:
        """``(peer, vector)`` of every doorbell taken from the device."""
        return self.driver.rung()

    @property
    def stall_doorbells(self) -> bool:
        return self.driver.doorbells.ready == 0

    @stall_doorbells.setter
    def stall_doorbells(self, stalled: bool) -> None:
        self.driver.doorbells.ready = 0 if stalled else _DOORBELL_READY

    def stall_for(self, cycles: int) -> None:
        """Hold the doorbell sink's ready low for ``cycles`` cycles, then let it go.

        Random sequences use this bounded stall: a doorbell write waiting on a
        full queue must end, or the bus access would wait forever.
        """
        self.driver.doorbells.stall_for(cycles)

    def set_ident(self, peer: int | None) -> None:
        self.driver.ident.id = peer

    async def run(self) -> None:
        irq = self._p + "irq"
        step = cocotb_step(self._dut, [*self.driver.outputs, irq])
        while True:
            values = await step(self.driver.inputs())
            self.driver.edge(values)
            self.irq_edges += values[irq] and not self._irq_prev
            self.irq_high += values[irq]
            self._irq_prev = values[irq]

    def counter(self, name: str) -> int:
        return int(getattr(self._dut, self._p + name).value)


class Master:
    """One bus master behind a common ``access``: (byte address, write?, data, byte mask)."""

    def __init__(self, kind: str, dut: Any) -> None:
        self.kind = kind
        if kind == "axil_ext":
            bus = AxiLiteBus.from_prefix(dut, "axi__axil_")
            self._axil = AxiLiteMaster(bus, dut.clk, dut.rst)
            self._axil.write_if.log.setLevel("WARNING")
            self._axil.read_if.log.setLevel("WARNING")
        elif kind == "axil_bus":
            self._axib = AXI4LiteMaster(dut, "axi__axil_", dut.clk)
        elif kind == "wishbone_ext":
            # cocotbext-wishbone's constructor drives the idle levels with Immediate writes.
            # Made at simulation time 0 under Icarus 11, those inputs never reach the device
            # (its ports read Z for the rest of the run; the first access never ends), so
            # the master is made at the first access and the idle levels driven here.
            self._dut = dut
            self._wbx: ExtWishboneMaster | None = None
            for name in ("cyc", "stb", "we", "adr", "dat_w", "sel"):
                getattr(dut, f"wb__wb__{name}").value = 0
        else:
            self._wb = WishboneMaster(dut, "wb__wb__", dut.clk)

    def wishbone_ext(self) -> ExtWishboneMaster:
        """cocotbext-wishbone's master, made on first use (see the constructor)."""
        if self._wbx is None:
            dut = self._dut
            self._wbx = ExtWishboneMaster(
                dut,
                "wb__wb",
                dut.clk,
                timeout=1000,
                signals_dict=WB_EXT_SIGNALS,
                bus_separator="__",
            )
            self._wbx.log.setLevel("WARNING")
        return self._wbx

    @property
    def prefix(self) -> str:
        return "wb__" if self.is_wishbone else "axi__"

    @property
    def is_wishbone(self) -> bool:
        return self.kind.startswith("wishbone")

    @property
    def read_has_mask(self) -> bool:
        """Only Wishbone carries byte enables on reads; AXI4-Lite reads whole words."""
        return self.is_wishbone

    def can(self, addr: int, mask: int, write: bool) -> bool:
        """Whether this master can express the access."""
        run = mask >> ((mask & -mask).bit_length() - 1) if mask else 0
        contiguous = mask != 0 and run & (run + 1) == 0
        if addr % 4:
            return False  # neither front-end puts an unaligned address on the device's bus
        return contiguous if self.kind == "axil_ext" else True

    async def access(self, addr: int, write: bool, data: int, mask: int) -> tuple[int, str]:
        if self.kind == "axil_ext":
            low = (mask & -mask).bit_length() - 1
            length = bin(mask).count("1")
            if write:
                payload = (data >> (8 * low)).to_bytes(4, "little")[:length]
                resp = (await self._axil.write(addr + low, payload)).resp
                return 0, AxiResp(resp).name
            result = await self._axil.read(addr + low, length)
            return int.from_bytes(result.data, "little") << (8 * low), AxiResp(result.resp).name
        if self.kind == "axil_bus":
            try:
                if write:
                    await self._axib.write(addr, data, byte_enable=mask)
                    return 0, OKAY
                return int(await self._axib.read(addr)), OKAY
            except AXIProtocolError as error:
                return 0, error.xresp.name
        if self.kind == "wishbone_ext":
            (res,) = await self.wishbone_ext().send_cycle(
                [WBOp(addr >> 2, data if write else None, sel=mask, acktimeout=1000)]
            )
            # res.ack: 1 = ACK, 2 = ERR (3 = RTY, which this slave has no line for)
            data = 0 if write or res.ack != 1 else int(res.datrd)
            return data, {1: OKAY, 2: "ERR"}.get(res.ack, f"reply {res.ack}")
        if write:
            result = await self._wb.write(addr >> 2, data, mask)
        else:
            result = await self._wb.read(addr >> 2, mask)
        return result.data, OKAY if result.ack else "ERR"


@dataclass
class Op:
    addr: int
    write: bool
    data: int
    mask: int


class TB:
    """Clock, reset, the device's transport, a bus master and the model."""

    def __init__(self, dut: Any, master: str, seed: int | None = None) -> None:
        self.dut = dut
        self.rng = random.Random(seed)
        self.model = IvshmemFlatModel(vectors=VECTORS, shm_size=SHM_SIZE,
                                 on_doorbell=lambda p, v: self.rings.append((p, v)))  # fmt: skip
        self.rings: list[tuple[int, int]] = []
        self.master = Master(master, dut)
        self.transport = Transport(dut, self.master.prefix, self.rng, {})
        self.other = Transport(dut, "axi__" if self.master.is_wishbone else "wb__", self.rng, {})
        Clock(dut.clk, 10, unit="ns").start()
        self.accesses = 0

    async def cycle_reset(self) -> None:
        await cocotb_reset(self.dut)
        cocotb.start_soon(self.transport.run())

    def join_domain(self) -> None:
        """Own ID and peers, in the model and in the transport's lookup table."""
        self.model.set_id(OWN_ID)
        self.transport.set_ident(OWN_ID)
        for peer, vectors in OTHER_PEERS.items():
            self.model.set_peer(peer, vectors)
        self.transport.peers.clear()
        self.transport.peers.update(self.model.peers)

    def _expect(self, op: Op) -> tuple[int, int, str]:
        """Apply ``op`` to the model: (expected data, lanes to compare, response)."""
        model, before = self.model, self.model.counters.bad_access
        addr, word = op.addr, op.addr & ~3
        error = "ERR" if self.master.is_wishbone else None
        window = MAP.find(addr) if addr < MAP.size else None
        if window is None or window.kind is Kind.HOLE:
            return 0, 0, error or MAP.miss
        if window is SHM:
            offset = addr - SHM.base
            if addr % 4:
                return 0, 0, error or SHM.refused
            if op.write:
                for lane in range(4):
                    if op.mask >> lane & 1:
                        model.shm_write(offset + lane, op.data >> (8 * lane) & 0xFF, 1)
                return 0, 0, OKAY
            return model.shm_read(offset, 4), _lanes(op.mask), OKAY
        data, lanes = 0, 0
        if addr % 4:
            # AXI4-Lite carries no size: an unaligned address is an unaligned dword access.
            if op.write:
                model.write(addr, op.data, 4)
            else:
                model.read(addr, 4)
        elif op.write:
            model.write_register(word, op.data, op.mask)
        elif not self.master.read_has_mask:
            data, lanes = model.read_register(word), _lanes(op.mask)
        else:
            data, lanes = model.read_register(word, op.mask), _lanes(op.mask)
        bad = model.counters.bad_access != before
        return data, lanes, (error or REGS.refused) if bad else OKAY

    async def access(self, op: Op) -> int:
        """Do ``op`` on the RTL and the model and compare everything."""
        expected, lanes, resp = self._expect(op)
        got, got_resp = await self.master.access(op.addr, op.write, op.data, op.mask)
        self.accesses += 1
        where = f"access {self.accesses} {op}"
        assert got_resp == resp, f"{where}: response {got_resp}, model says {resp}"
        assert got & lanes == expected & lanes, (
            f"{where}: read {got:#010x}, model {expected:#010x} (lanes {lanes:#x})"
        )
        self.compare(where)
        if op.write and op.addr in SHM and got_resp == OKAY:
            offset = (op.addr - SHM.base) & ~3
            # Posted write: the memory may take it a few cycles after the bus ack.
            for _ in range(8):
                if self.transport.mem[offset : offset + 4] == bytes(
                    self.model.shm.view[offset : offset + 4]
                ):
                    break
                await RisingEdge(self.dut.clk)
            assert self.transport.mem[offset : offset + 4] == bytes(
                self.model.shm.view[offset : offset + 4]
            ), f"{where}: shared memory differs"
        return got

    def compare(self, where: str) -> None:
        c, t = self.model.counters, self.transport
        assert t.counter("bad_access") == c.bad_access, f"{where}: bad_access"
        assert t.counter("doorbell_bad_peer") == c.bad_peer, f"{where}: bad_peer"
        assert t.counter("doorbell_bad_vector") == c.bad_vector, f"{where}: bad_vector"
        n = len(t.doorbells)
        assert t.doorbells == self.rings[:n], f"{where}: doorbells {t.doorbells} vs {self.rings}"
        assert len(self.rings) - n <= FIFO_DEPTH + 1, f"{where}: doorbells missing"

    async def drain(self) -> None:
        """Let the transport take every queued doorbell, then compare the lists."""
        self.transport.stall_doorbells = False
        for _ in range(200):
            if len(self.transport.doorbells) == len(self.rings):
                break
            await RisingEdge(self.dut.clk)
        assert self.transport.doorbells == self.rings

    # -- generators -------------------------------------------------------------------------

    def doorbell_word(self) -> int:
        peers = list(self.transport.peers) + list(UNKNOWN_PEERS)
        peer = self.rng.choice(peers)
        count = self.transport.peers.get(peer, 1)
        vector = self.rng.choice(
            (0, count - 1, count, count + 1, 63, 64, 0x100, 0xFFFF, self.rng.randrange(70))
        )
        return DOORBELL.pack(peer, vector)

    def random_op(self) -> Op:
        rng = self.rng
        while True:
            kind = rng.random()
            write = rng.random() < 0.6
            mask = rng.choice((0b1111,) * 6 + tuple(range(16)))
            if kind < 0.45:
                addr = rng.choice([reg.offset for reg in FLAT_REGS])
                if rng.random() < 0.1:
                    addr += rng.randrange(1, 4)  # unaligned (cocotb-bus only)
                    addr = min(addr, 11)
            elif kind < 0.75:
                addr = SHM.address(rng.randrange(SHM.size // 4) * 4)
                if rng.random() < 0.05:
                    addr += rng.randrange(1, 4)
            else:
                hole = next(w for w in MAP if w.kind is Kind.HOLE)
                addr = rng.choice((hole.base, rng.randrange(hole.base, hole.end) & ~3,
                                   hole.end - 4))  # fmt: skip
            data = rng.getrandbits(32)
            if write and addr == FLAT_REGS.DOORBELL.offset:
                data = self.doorbell_word()
            if self.master.can(addr, mask, write):
                return Op(addr, write, data, mask)


def _regs(name: str) -> int:
    return REGS.register(name)


@cocotb.test()
@cocotb.parametrize(master=MASTERS)
async def directed(dut: Any, master: str) -> None:
    """Reset values, IVPOSITION, reserved words, sub-word, unaligned, unmapped, shm."""
    tb = TB(dut, master)
    await tb.cycle_reset()
    full = 0b1111
    # Before the server spoke: IVPOSITION reads its reset value.
    for reg in FLAT_REGS:
        assert await tb.access(Op(reg.offset, False, 0, full)) == (
            reg.reset if reg.name == "IVPOSITION" else 0
        )
    tb.join_domain()
    assert await tb.access(Op(_regs("IVPOSITION"), False, 0, full)) == OWN_ID
    # Reserved and write-only words read 0, ignore writes.
    for name in ("INTMASK", "INTSTATUS", "IVPOSITION"):
        await tb.access(Op(_regs(name), True, 0xFFFF_FFFF, full))
        await tb.access(Op(_regs(name), False, 0, full))
    assert await tb.access(Op(_regs("DOORBELL"), False, 0, full)) == 0
    # Doorbells: valid, unknown peer, vector out of range, ring self, sub-word (peer 0).
    db = _regs("DOORBELL")
    for peer, vector in ((2, 2), (3, 0), (2, 3), (7, 63), (7, 64), (OWN_ID, VECTORS - 1),
                         (OWN_ID, VECTORS), (0xFFFF, 1)):  # fmt: skip
        await tb.access(Op(db, True, DOORBELL.pack(peer, vector), full))
    for mask in (0b0001, 0b0011, 0b0010, 0b1100, 0b0110, 0b0111, 0b1110):
        if tb.master.can(db, mask, True):
            await tb.access(Op(db, True, DOORBELL.pack(2, 0), mask))
    # Sub-word reads of IVPOSITION (lane rules differ per bus; the model decides).
    ivpos = _regs("IVPOSITION")
    for mask in (0b0001, 0b0010, 0b0100, 0b1000, 0b0011, 0b1100, 0b0101, 0b0110):
        if tb.master.can(ivpos, mask, False):
            await tb.access(Op(ivpos, False, 0, mask))
    # Unaligned dword accesses (only cocotb-bus puts an unaligned address on the bus).
    for addr in (1, 2, 3, 9, 11):
        if tb.master.can(addr, full, True):
            await tb.access(Op(addr, True, 0, full))
            await tb.access(Op(addr, False, 0, full))
    # Unmapped: the hole between the windows.
    hole = next(w for w in MAP if w.kind is Kind.HOLE)
    for addr in (hole.base, 0x100, hole.end - 4):
        await tb.access(Op(addr, False, 0, full))
        await tb.access(Op(addr, True, 0x1234, full))
    # Shared memory: words, byte lanes, read back.
    for i, mask in enumerate((0b1111, 0b0001, 0b0010, 0b0100, 0b1000, 0b0011, 0b1100, 0b0101)):
        addr = SHM.address(4 * i)
        if tb.master.can(addr, mask, True):
            await tb.access(Op(addr, True, 0xA5A5_0000 + i * 0x1111, mask))
            await tb.access(Op(addr, False, 0, 0b1111))
    await tb.access(Op(SHM.end - 4, True, 0xDEAD_BEEF, full))
    assert await tb.access(Op(SHM.end - 4, False, 0, full)) == 0xDEAD_BEEF
    await tb.drain()
    assert tb.model.counters.bad_peer and tb.model.counters.bad_vector


@cocotb.test()
@cocotb.parametrize(master=MASTERS)
async def random_sequence(dut: Any, master: str) -> None:
    """Seeded random register/shm/unmapped accesses, compared with the model after each."""
    seed = _seed()
    tb = TB(dut, master, seed)
    await tb.cycle_reset()
    tb.join_domain()
    for _ in range(int(os.environ.get("IVHW_RANDOM_OPS", "250"))):
        if tb.rng.random() < 0.05:
            tb.transport.stall_for(tb.rng.randint(5, 60))
        await tb.access(tb.random_op())
    await tb.drain()


@cocotb.test()
@cocotb.parametrize(master=MASTERS)
async def doorbells_stalled(dut: Any, master: str) -> None:
    """Back-to-back doorbells into a stalled transport: the bus waits, nothing is lost."""
    tb = TB(dut, master)
    await tb.cycle_reset()
    tb.join_domain()
    tb.transport.stall_doorbells = True
    count = FIFO_DEPTH + 4
    words = [DOORBELL.pack(7, i) for i in range(count)]

    async def ring_all() -> None:
        for word in words:
            await tb.master.access(FLAT_REGS.DOORBELL.offset, True, word, 0b1111)

    writer = cocotb.start_soon(ring_all())
    for _ in range(100):
        await RisingEdge(dut.clk)
    assert not writer.done(), "the bus should be held while the doorbell FIFO is full"
    assert tb.transport.doorbells == []
    tb.transport.stall_doorbells = False
    await with_timeout(writer, 10, "us")
    for word in words:
        tb.model.write_register(FLAT_REGS.DOORBELL.offset, word)
    await tb.drain()
    assert tb.transport.doorbells == [(7, i) for i in range(count)]


@cocotb.test()
@cocotb.parametrize(master=MASTERS)
async def events_during_accesses(dut: Any, master: str) -> None:
    """Inbound events racing register and shm accesses: one IRQ pulse per own-vector event."""
    seed = _seed()
    tb = TB(dut, master, seed)
    await tb.cycle_reset()
    tb.join_domain()
    t = tb.transport
    own = [tb.rng.randrange(VECTORS) for _ in range(60)]
    foreign = [VECTORS, 0xFFFF]
    t.events.extend(own[:30] + foreign + own[30:])
    for vector in own:
        tb.model.event(vector)
    # Bursts of back-to-back events while the bus is busy.
    for _ in range(120):
        await tb.access(tb.random_op())
        if tb.rng.random() < 0.1:
            burst = [tb.rng.randrange(VECTORS) for _ in range(5)]
            t.events.extend(burst)
            for vector in burst:
                tb.model.event(vector)
    for _ in range(1000):
        if not t.events:
            break
        await RisingEdge(dut.clk)
    for _ in range(2 * 16 + 4):  # let the IRQ backlog empty
        await RisingEdge(dut.clk)
    assert not t.events
    assert t.irq_edges == tb.model.counters.irq_pulses, (t.irq_edges, tb.model.counters)
    assert t.irq_high == t.irq_edges, "every pulse is one cycle wide"
    assert t.counter("events_dropped") == len(foreign)
    await tb.drain()


@cocotb.test()
async def wishbone_block_cycles(dut: Any) -> None:
    """cocotbext-wishbone block cycles: several accesses in one CYC, STB held between them.

    Only an external master does this (the project's own master ends the cycle after
    each access); the device must take the next request in the cycle after an ACK/ERR.
    """
    seed = _seed()
    tb = TB(dut, "wishbone_ext", seed)
    await tb.cycle_reset()
    tb.join_domain()
    for block in range(60):
        ops = [tb.random_op() for _ in range(tb.rng.randint(2, 6))]
        if tb.rng.random() < 0.1:
            tb.transport.stall_for(tb.rng.randint(5, 60))
        expected = [tb._expect(op) for op in ops]
        wbops = [
            WBOp(op.addr >> 2, op.data if op.write else None, sel=op.mask, acktimeout=1000)
            for op in ops
        ]
        results = await tb.master.wishbone_ext().send_cycle(wbops)
        assert len(results) == len(ops), f"block {block}: {len(results)} results for {ops}"
        for op, res, (data, lanes, resp) in zip(ops, results, expected, strict=True):
            where = f"block {block} {op}"
            got_resp = {1: OKAY, 2: "ERR"}.get(res.ack, f"reply {res.ack}")
            assert got_resp == resp, f"{where}: response {got_resp}, model says {resp}"
            got = 0 if op.write or res.ack != 1 else int(res.datrd)
            assert got & lanes == data & lanes, f"{where}: read {got:#x}, model {data:#x}"
        tb.compare(f"block {block}")
    await tb.drain()
    for _ in range(8):  # posted shared-memory writes
        await RisingEdge(dut.clk)
    assert tb.transport.mem == bytes(tb.model.shm.view[:SHM_SIZE]), "shared memory differs"
