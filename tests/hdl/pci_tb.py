"""cocotb tests of the ivshmem PCI endpoint against the register model, request by request.

Every request goes to the RTL and to ``ivhw.sw.models.pci.IvshmemPciModel``; after
each one the completion, MSI-X messages, doorbells, INTx level and counters
must agree (:meth:`pci_testbench.TB.access`). The register script of
``ivhw.sw.regscript`` (recorded against QEMU 7.2) runs on the RTL as a target.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import cocotb
from pci_testbench import PARAMS, TB, seed

from ivhw.hdl.pci.tlp import ReqKind
from ivhw.sw import regscript
from ivhw.sw.pcicfg import BARS, CFG, CMD, MSIX_CAP
from ivhw.sw.regmap import DOORBELL, MSIX_BAR, MSIX_ENTRY, PCI_REV1_REGS

R, W = ReqKind.MEM_READ, ReqKind.MEM_WRITE
CR, CW = ReqKind.CFG_READ, ReqKind.CFG_WRITE
BAR_AT = regscript.BAR_ADDRESSES
OWN_ID = 3
PEERS = {0: 2, 1: 64, 9: 1}
REG = PCI_REV1_REGS


async def _start(dut: Any, rng_seed: int = 1) -> TB:
    return await TB.started(dut, PEERS, rng_seed)


async def _assign_bars(tb: TB) -> None:
    await tb.assign_bars(BAR_AT)


@cocotb.test()
async def config_reset(dut: Any) -> None:
    """The whole header and capability after reset, and all-ones beyond 100h."""
    tb = await _start(dut)
    for off in range(0, 0x100, 4):
        await tb.access(CR, off)
    for off in (0x100, 0x104, 0xFFC):
        assert await tb.access(CR, off) == 0xFFFF_FFFF
    for off in range(0, 0x100, 4):  # nothing but the writable bits changes
        await tb.access(CW, off, 0xF, 0xFFFF_FFFF)
        await tb.access(CR, off)
    await tb.access(CW, 0x200, 0xF, 0)


@cocotb.test()
async def directed(dut: Any) -> None:
    """BAR sizing and decode, BAR0 registers, doorbells, MSI-X or INTx, shared memory."""
    tb = await _start(dut)
    m = tb.oracle.model
    # decode off: every memory request is unsupported
    await tb.access(R, BAR_AT[0])
    await _assign_bars(tb)
    await tb.access(R, BAR_AT[0])
    await tb.access(CW, CFG.COMMAND, 0x3, CMD.MEMORY)
    for off in range(0, 0x20, 4):
        await tb.access(R, BAR_AT[0] + off)
    await tb.access(R, BAR_AT[0] + 0x100)  # past BAR0
    tb.set_ident(OWN_ID)
    await tb.access(R, BAR_AT[0] + REG.IVPosition.offset)
    # registers with every byte-enable pattern
    for be in range(16):
        await tb.access(W, BAR_AT[0] + REG.IntrMask.offset, be, 0xA1B2_C3D4)
        await tb.access(R, BAR_AT[0] + REG.IntrMask.offset, be)
        await tb.access(R, BAR_AT[0] + REG.IVPosition.offset, be)
    await tb.access(W, BAR_AT[0] + REG.IntrStatus.offset, 0xF, 0x55)
    await tb.access(R, BAR_AT[0] + REG.IntrStatus.offset, 0x2)  # lane 1: no clear
    await tb.access(R, BAR_AT[0] + REG.IntrStatus.offset, 0x1)  # clears
    await tb.access(R, BAR_AT[0] + REG.IntrStatus.offset)
    # doorbells: known and unknown peers, vectors at the boundary, bits above 7 ignored
    db = BAR_AT[0] + REG.Doorbell.offset
    for peer, vector in ((0, 0), (0, 1), (0, 2), (1, 63), (1, 64), (9, 0x100), (9, 1),
                         (OWN_ID, 0), (5, 0), (0xFFFF, 0)):  # fmt: skip
        await tb.access(W, db, 0xF, DOORBELL.pack(peer, vector))
    await tb.access(W, db, 0xC, DOORBELL.pack(1, 0) << 0)  # half-word at lane 2: peer 0, vector 1
    await tb.access(W, db, 0x4, 0x0001_0000)
    await tb.access(R, db)
    # a stalled transport: doorbells queue, then the write waits, none is lost
    tb.doorbell_ready_p = 0.03
    for vector in (0, 1, 0, 1, 0, 1, 0):
        await tb.request(W, db, 0xF, DOORBELL.pack(0, vector))
        tb.oracle.request(W, db, 0xF, DOORBELL.pack(0, vector))
    tb.doorbell_ready_p = 0.7
    await tb.settle(200)
    await tb.check("stalled doorbells")
    # shared memory
    for be in (0xF, 0x1, 0x6, 0x8, 0x0):
        await tb.access(W, BAR_AT[2] + 0x40, be, 0x1122_3344 + be)
        await tb.access(R, BAR_AT[2] + 0x40, be)
    await tb.access(R, BAR_AT[2] + m.shm.size - 4)
    await tb.access(R, BAR_AT[2] + m.shm.size)  # past BAR2: UR
    if m.msix:
        await _msix_directed(tb)
    elif m.interrupts == "intx":
        await _intx_directed(tb)
    else:
        for vector in (0, 1):
            await tb.ring(vector)
    # decode off again
    await tb.access(CW, CFG.COMMAND, 0x3, 0)
    await tb.access(R, BAR_AT[0] + REG.IntrMask.offset)
    await tb.access(W, BAR_AT[2], 0xF, 0xDEAD)


async def _msix_directed(tb: TB) -> None:
    m = tb.oracle.model
    b1 = BAR_AT[1]
    ctrl = MSIX_CAP.control_offset & ~3
    shift = 8 * (MSIX_CAP.control_offset % 4)
    last = m.vectors - 1
    for v in range(m.vectors):
        e = b1 + MSIX_BAR.entry(v)
        await tb.access(W, e + MSIX_ENTRY.MsgAddrLo.offset, 0xF, 0xFEE0_0000 + 16 * v)
        await tb.access(W, e + MSIX_ENTRY.MsgAddrHi.offset, 0xF, v)
        await tb.access(W, e + MSIX_ENTRY.MsgData.offset, 0xF, 0x4000 | v)
        for reg in MSIX_ENTRY:
            await tb.access(R, e + reg.offset)
    await tb.access(R, b1 + MSIX_BAR.entry(m.vectors))  # past the table
    await tb.access(W, b1 + MSIX_BAR.pba, 0xF, 0xFFFF_FFFF)  # read-only
    await tb.access(R, b1 + MSIX_BAR.pba, 0x1)  # not a dword: refused
    await tb.access(W, b1 + MSIX_BAR.entry(0), 0x3, 0x1234)
    # MSI-X disabled: dropped
    await tb.ring(0)
    await tb.access(CW, CFG.COMMAND, 0x3, CMD.MEMORY | CMD.MASTER)
    await tb.access(CW, ctrl, 0xC, MSIX_CAP.ENABLE << shift)
    # masked vectors: pending, then delivered on unmask
    await tb.ring(last)
    await tb.access(R, b1 + MSIX_BAR.pba)
    for v in range(m.vectors):
        await tb.access(W, b1 + MSIX_BAR.entry(v) + MSIX_ENTRY.VectorCtrl.offset, 0xF, 0)
    await tb.access(R, b1 + MSIX_BAR.pba)
    for v in range(m.vectors):
        await tb.ring(v)
    await tb.ring(m.vectors + 3)  # not an own vector
    # function mask
    await tb.access(CW, ctrl, 0xC, (MSIX_CAP.ENABLE | MSIX_CAP.MASKALL) << shift)
    await tb.ring(0)
    await tb.ring(last)
    await tb.access(R, b1 + MSIX_BAR.pba)
    await tb.access(CW, ctrl, 0xC, MSIX_CAP.ENABLE << shift)
    # bus master off: a message due is lost
    await tb.access(CW, CFG.COMMAND, 0x3, CMD.MEMORY)
    await tb.ring(0)
    await tb.access(CW, CFG.COMMAND, 0x3, CMD.MEMORY | CMD.MASTER)
    # a slow upstream: messages wait, none is lost
    tb.msi_ready_p = 0.05
    for v in range(m.vectors):
        await tb.ring(v)
    tb.msi_ready_p = 0.8
    await tb.settle(100)
    await tb.check("slow upstream")


async def _intx_directed(tb: TB) -> None:
    intr_mask = BAR_AT[0] + REG.IntrMask.offset
    intr_status = BAR_AT[0] + REG.IntrStatus.offset
    await tb.access(W, intr_mask, 0xF, 0)
    await tb.ring(0)
    await tb.access(CR, CFG.COMMAND)
    await tb.access(W, intr_mask, 0xF, 1)  # INTx rises
    await tb.access(CR, CFG.COMMAND)
    await tb.access(CW, CFG.COMMAND, 0x3, CMD.MEMORY | CMD.INTX_DISABLE)  # pin off, status on
    await tb.access(CR, CFG.COMMAND)
    await tb.access(CW, CFG.COMMAND, 0x3, CMD.MEMORY)
    await tb.access(R, intr_status)  # read-clear: INTx falls
    await tb.access(W, intr_status, 0xF, 0x100)
    await tb.access(W, intr_mask, 0xF, 0x100)
    await tb.ring(tb.oracle.model.vectors - 1)
    await tb.access(W, intr_status, 0xF, 0)


@cocotb.test()
async def random_sequence(dut: Any) -> None:
    """Seeded random config, BAR0, BAR1, BAR2 requests and events (IVHW_SEED reruns one)."""
    s = seed()
    rng = random.Random(s)
    tb = await _start(dut, rng_seed=s)
    m = tb.oracle.model
    await _assign_bars(tb)
    tb.set_ident(OWN_ID)
    layouts = {bar.index: bar for bar, _ in m.bars}
    bars = list(layouts)
    sizes = {bar.index: size for bar, size in m.bars}
    table = m.memory_map.window("msix_table")[1] if m.msix else None
    writable = [CFG.COMMAND, CFG.CACHE_LINE_SIZE, CFG.INTERRUPT_LINE, MSIX_CAP.offset]
    masks = [0xF] * 8 + [0x1, 0x2, 0x3, 0xC, 0x8, 0x0, 0x5, 0x7, 0x6]
    peers = [*PEERS, OWN_ID, 4, 0x1234]
    ops = int(os.environ.get("IVHW_RANDOM_OPS", "400"))
    # start from a working setup most of the time, so that messages flow
    await tb.access(CW, CFG.COMMAND, 0x3, CMD.MEMORY | CMD.MASTER)
    if m.msix and rng.random() < 0.8:
        for v in range(m.vectors):
            entry = BAR_AT[1] + MSIX_BAR.entry(v)
            await tb.access(W, entry + MSIX_ENTRY.MsgAddrLo.offset, 0xF, 0xFEE0_0000 | v << 4)
            await tb.access(W, entry + MSIX_ENTRY.MsgData.offset, 0xF, v)
            await tb.access(W, entry + MSIX_ENTRY.VectorCtrl.offset, 0xF, rng.getrandbits(1))
        shift = 8 * (MSIX_CAP.control_offset % 4)
        await tb.access(CW, MSIX_CAP.offset, 0xC, MSIX_CAP.ENABLE << shift)
    for _ in range(ops):
        r = rng.random()
        if r < 0.12:
            await tb.access(CR, rng.randrange(0, 0x140, 4))
        elif r < 0.22:
            off = rng.choice(writable)
            value = rng.getrandbits(32)
            if off == CFG.COMMAND:
                value = CMD.MEMORY | rng.choice(
                    (0, CMD.MASTER, CMD.MASTER, CMD.MASTER, CMD.MASTER | CMD.INTX_DISABLE)
                )
                if rng.random() < 0.05:
                    value = rng.getrandbits(16)
            elif off == MSIX_CAP.offset:
                shift = 8 * (MSIX_CAP.control_offset % 4)
                if rng.random() < 0.9:  # mostly enabled and not function-masked
                    value = (MSIX_CAP.ENABLE if rng.random() < 0.8 else 0) << shift
                    value |= (MSIX_CAP.MASKALL if rng.random() < 0.2 else 0) << shift
            await tb.access(CW, off, rng.choice(masks), value)
        elif r < 0.3:
            await tb.ring(rng.randrange(m.vectors + 1))
        elif r < 0.33:
            pick = rng.choice(bars)
            bar = layouts[pick]
            sizing = rng.choice((0xFFFF_FFFF, BAR_AT[pick] & 0xFFFF_FFFF))
            await tb.access(CW, bar.offset, 0xF, sizing)
            await tb.access(CR, bar.offset)
            await tb.access(CW, bar.offset, 0xF, BAR_AT[bar.index] & 0xFFFF_FFFF)
        else:
            index = rng.choice(bars)
            size = sizes[index]
            if index == BARS.regs.index:
                off = rng.choice((0, 4, 8, 0xC, 0xC, 0xC, rng.randrange(0, size, 4)))
            elif index == BARS.msix.index:
                entries = range(table.base, table.end, 4)  # type: ignore[union-attr]
                off = rng.choice((rng.choice(entries), rng.choice(entries),
                                  MSIX_BAR.pba, rng.randrange(0, size, 4)))  # fmt: skip
            else:
                off = rng.randrange(0, min(size, 256), 4)
            kind = rng.choice((R, W))
            data = rng.getrandbits(32)
            if index == BARS.regs.index and off == REG.Doorbell.offset:
                data = DOORBELL.pack(rng.choice(peers), rng.choice((0, 1, 2, 63, 64, 0x101)))
            if index == BARS.msix.index and off % 16 == MSIX_ENTRY.VectorCtrl.offset:
                data = rng.getrandbits(1)
            address = BAR_AT[index] + off
            if rng.random() < 0.03:
                address ^= 1 << rng.randrange(12, 40)
            await tb.access(kind, address, rng.choice(masks), data)
    c = m.counters
    cocotb.log.info(
        "%d operations: %d MSI-X sent, %d lost, %d pending set, %d doorbells, %d bad peer, "
        "%d bad vector, %d bad access, %d events dropped",
        ops, c.msi_sent, c.msi_lost, c.pending_set, len(tb.doorbells), c.bad_peer,
        c.bad_vector, c.bad_access, tb.oracle.events_dropped,
    )  # fmt: skip


class HdlTarget:
    """The RTL as a target of ``ivhw.sw.regscript`` (asynchronous: see :func:`run_script`)."""

    def __init__(self, tb: TB) -> None:
        self.tb = tb

    async def config_read(self, offset: int, size: int) -> int:
        _, data = await self.tb.request(CR, offset & ~3)
        return (data >> (8 * (offset % 4))) & ((1 << (8 * size)) - 1)

    async def config_write(self, offset: int, value: int, size: int) -> None:
        lane = offset % 4
        await self.tb.request(CW, offset & ~3, ((1 << size) - 1) << lane, value << (8 * lane))

    async def _mem(self, write: bool, address: int, value: int, size: int) -> int:
        result = 0
        for k in range(0, size, 4):  # an 8-byte access is two dwords, low first
            part = min(size - k, 4)
            lane = (address + k) % 4
            be = ((1 << part) - 1) << lane
            word = ((value >> (8 * k)) & ((1 << (8 * part)) - 1)) << (8 * lane)
            status, data = await self.tb.request(W if write else R, (address + k) & ~3, be, word)
            if status == 0 and not write:
                result |= ((data >> (8 * lane)) & ((1 << (8 * part)) - 1)) << (8 * k)
        return result

    async def bar_read(self, bar: int, offset: int, size: int) -> int:
        return await self._mem(False, BAR_AT[bar] + offset, 0, size)

    async def bar_write(self, bar: int, offset: int, value: int, size: int) -> None:
        await self._mem(True, BAR_AT[bar] + offset, value, size)

    async def event(self, vector: int) -> None:
        await self.tb.event(vector)
        await self.tb.settle()

    async def messages(self) -> list[tuple[int, int]]:
        await self.tb.settle()
        found, self.tb.msis = self.tb.msis, []
        return found


async def run_script(script: list[regscript.Op], target: HdlTarget) -> list[regscript.Result]:
    """``regscript.run`` for an asynchronous target."""
    K = regscript.Kind
    results: list[regscript.Result] = []
    for op in script:
        if op.kind is K.CONFIG_READ:
            results.append(await target.config_read(op.offset, op.size))
        elif op.kind is K.CONFIG_WRITE:
            await target.config_write(op.offset, op.value, op.size)
            results.append(None)
        elif op.kind is K.BAR_READ:
            results.append(await target.bar_read(op.bar, op.offset, op.size))
        elif op.kind is K.BAR_WRITE:
            await target.bar_write(op.bar, op.offset, op.value, op.size)
            results.append(None)
        elif op.kind is K.EVENT:
            await target.event(op.vector)
            results.append(None)
        else:
            results.append(tuple(sorted(await target.messages())))
    return results


def _model_results(script: list[regscript.Op], vectors: int, doorbell: bool) -> list[Any]:
    from ivhw.sw.models.pci import IvshmemPciModel

    if not doorbell:
        model = IvshmemPciModel(doorbell=False, shm_size=PARAMS.get("shm_size", 4096))
        return regscript.run(script, regscript.ModelTarget(model))
    model = IvshmemPciModel(vectors=vectors, shm_size=PARAMS.get("shm_size", 4096))
    model.set_id(OWN_ID)
    return regscript.run(script, regscript.ModelTarget(model))


@cocotb.test(skip=PARAMS.get("interrupts") == "intx")
async def regscript_differential(dut: Any) -> None:
    """QEMU's register script (doorbell or plain): the RTL's results equal the model's."""
    tb = await _start(dut)
    vectors = PARAMS.get("vectors", 1)
    doorbell = PARAMS.get("doorbell", True)
    if doorbell:
        tb.set_ident(OWN_ID)
        script = regscript.doorbell_script(vectors, OWN_ID)
    else:
        script = regscript.plain_script()
    want = _model_results(script, vectors, doorbell)
    got = await run_script(script, HdlTarget(tb))
    diffs = regscript.compare(script, got, want, names=("hdl", "model"))
    assert not diffs, "\n".join(diffs[:40])
    cocotb.log.info("register script: %d operations, RTL = model", len(script))


def _normal(result: Any) -> Any:
    """A result as JSON gives it back: message tuples for lists."""
    if isinstance(result, list):
        return tuple(tuple(pair) for pair in result)
    return result


@cocotb.test(skip="IVHW_QEMU_RESULTS" not in os.environ)
async def regscript_qemu(dut: Any) -> None:
    """The register script against QEMU 7.2's results recorded by the pytest entry.

    Every operation agrees, except the differences documented for the model
    (``tests/test_qemu_differential.py``, ``docs/differential.md``), which the RTL shares.
    """
    recorded = json.loads(Path(os.environ["IVHW_QEMU_RESULTS"]).read_text())
    tb = await _start(dut)
    tb.set_ident(recorded["peer_id"])
    script = regscript.doorbell_script(recorded["vectors"], recorded["peer_id"])
    qemu = [_normal(r) for r in recorded["results"]]
    got = await run_script(script, HdlTarget(tb))
    documented = set(recorded["documented"])
    lines = regscript.compare(script, got, qemu, ("hdl", "qemu"))
    unexpected = [line for line in lines if line.split(":", 1)[0] not in documented]
    assert not unexpected, "\n".join(unexpected[:40])
    cocotb.log.info(
        "register script vs QEMU 7.2: %d operations, %d documented differences",
        len(script),
        len(lines),
    )
