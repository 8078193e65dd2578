"""cocotb tests of the revision 2 PCI endpoint against its register model, request by request.

Every request goes to the RTL and to ``ivhw.sw.models.pci2.IvshmemPci2``; after each
one the completion, MSI-X messages, doorbells (the state broadcast included), INTx
pulses, counters and the whole shared memory must agree (:meth:`pci_testbench.TB.access`).
Zephyr's and Linux uio_ivshmem's bring-up (``ivhw.sw.drivers2``) run on the RTL with
the same per-access comparison.
"""

from __future__ import annotations

import os
import random
from typing import Any

import cocotb
from pci_testbench import TB, seed

from ivhw.hdl.pci.tlp import ReqKind
from ivhw.sw import drivers2, regscript
from ivhw.sw.drivers2 import Op
from ivhw.sw.pcicfg import BARS, CFG, CMD, MSIX_CAP, VENDOR_CAP
from ivhw.sw.regmap import DOORBELL, MSIX_BAR, MSIX_ENTRY, PCI_REV2_REGS

R, W = ReqKind.MEM_READ, ReqKind.MEM_WRITE
CR, CW = ReqKind.CFG_READ, ReqKind.CFG_WRITE
BAR_AT = dict(regscript.BAR_ADDRESSES)
OWN_ID = 1
PEERS = {0: 2, 3: 1}


def regs(tb: TB) -> Any:
    return PCI_REV2_REGS[tb.oracle.model.layout_name]


def shm_base(tb: TB) -> int:
    m = tb.oracle.model
    return BAR_AT[BARS.shm.index] if m.bar2 else m.shm_address


async def _start(dut: Any, rng_seed: int = 1) -> TB:
    return await TB.started(dut, PEERS, rng_seed)


async def _assign_bars(tb: TB) -> None:
    await tb.assign_bars(BAR_AT)


async def _msix_on(tb: TB, masked: int = 0) -> None:
    m = tb.oracle.model
    for v in range(m.vectors):
        e = BAR_AT[1] + MSIX_BAR.entry(v)
        await tb.access(W, e + MSIX_ENTRY.MsgAddrLo.offset, 0xF, 0xFEE0_0000 + 16 * v)
        await tb.access(W, e + MSIX_ENTRY.MsgData.offset, 0xF, 0x4000 | v)
        await tb.access(W, e + MSIX_ENTRY.VectorCtrl.offset, 0xF, masked >> v & 1)
    ctrl = m._msix_ctrl_offset
    await tb.access(CW, ctrl & ~3, 0xC, MSIX_CAP.ENABLE << 8 * (ctrl % 4))


async def _oneshot(tb: TB, on: bool) -> None:
    priv = tb.oracle.model.vendor_cap + VENDOR_CAP.PRIV_CTRL
    await tb.access(CW, priv & ~3, 1 << (priv % 4), int(on) << 8 * (priv % 4))


@cocotb.test()
async def config_reset(dut: Any) -> None:
    """The header and both capabilities after reset; only the writable bits change."""
    tb = await _start(dut)
    for off in range(0, 0x100, 4):
        await tb.access(CR, off)
    for off in (0x100, 0xFFC):
        assert await tb.access(CR, off) == 0xFFFF_FFFF
    for off in range(0, 0x100, 4):
        await tb.access(CW, off, 0xF, 0xFFFF_FFFF)
        await tb.access(CR, off)


@cocotb.test()
async def directed(dut: Any) -> None:
    """Registers, doorbells, the state broadcast, delivery gating, one-shot, write protection."""
    tb = await _start(dut)
    m = tb.oracle.model
    reg = regs(tb)
    await _assign_bars(tb)
    await tb.access(CW, CFG.COMMAND, 0x3, CMD.MEMORY | CMD.MASTER)
    b0 = BAR_AT[0]
    await tb.access(R, b0 + reg.ID.offset)  # no ID yet: 0
    tb.set_ident(OWN_ID)
    for off in range(0, 0x20, 4):
        await tb.access(R, b0 + off)
    await tb.access(R, b0 + 0xFFC)
    await tb.access(W, b0 + 0xFFC, 0xF, 0xFFFF_FFFF)
    # aligned dwords only: every other byte-enable pattern is refused, with no effect
    for be in range(16):
        await tb.access(W, b0 + reg.IntCtrl.offset, be, 0xFFFF_FFFF)
        await tb.access(R, b0 + reg.IntCtrl.offset, be)
        await tb.access(W, b0 + reg.State.offset, be, 0x100 + be)
        await tb.access(R, b0 + reg.State.offset, be)
    # doorbells: known and unknown peers, the vector field's width (rfc: bits 7:0)
    db = b0 + reg.Doorbell.offset
    for peer, vector in ((0, 0), (0, 1), (0, 2), (0, 0x101), (3, 0), (3, 1), (2, 0),
                         (OWN_ID, 0), (0xFFFF, 0)):  # fmt: skip
        await tb.access(W, db, 0xF, DOORBELL.pack(peer, vector))
    await tb.access(R, db)
    # state: into the own State Table entry; a change rings vector 0 of peers 0 and 3
    st = b0 + reg.State.offset
    for value in (5, 5, 0xFFFF_FFFF, 0, 0):
        await tb.access(W, st, 0xF, value)
        await tb.access(R, st)
    tb.doorbell_ready_p = 0.05  # a slow transport: the broadcast waits, nothing is lost
    await tb.access(W, st, 0xF, 7)
    tb.doorbell_ready_p = 0.7
    # shared memory: the State Table and the other output sections are read-only
    base, layout = shm_base(tb), m.sections
    for off in (0, 4, layout.rw.offset, layout.rw.end - 4, layout.output(OWN_ID).offset,
                layout.output(OWN_ID).end - 4, layout.output(0).offset,
                layout.output(3).end - 4):  # fmt: skip
        for be in (0xF, 0x3):
            await tb.access(W, base + off, be, 0xA5A5_0000 | off & 0xFFFF)
            await tb.access(R, base + off)
    await tb.access(R, base + m.shm.size)  # past the window: UR
    # delivery
    if m.msix:
        await tb.ring(0)  # Interrupt Control off: dropped
        await tb.access(W, b0 + reg.IntCtrl.offset, 0xF, 1)
        await tb.ring(0)  # MSI-X off: dropped
        await _msix_on(tb, masked=0b10)
        await tb.access(R, BAR_AT[1] + MSIX_BAR.pba)  # reads 0
        for v in range(m.vectors + 1):
            await tb.ring(v)  # vector 1 masked: dropped, no pending bit
        await tb.access(W, BAR_AT[1] + MSIX_BAR.entry(1) + MSIX_ENTRY.VectorCtrl.offset, 0xF, 0)
        await tb.ring(1)
        await _oneshot(tb, True)
        await tb.ring(0)  # delivered, then Interrupt Control is off
        await tb.access(R, b0 + reg.IntCtrl.offset)
        await tb.ring(0)
        await tb.access(W, b0 + reg.IntCtrl.offset, 0xF, 1)
        await tb.access(CW, CFG.COMMAND, 0x3, CMD.MEMORY)  # bus master off: lost
        await tb.ring(0)
        await tb.access(R, b0 + reg.IntCtrl.offset)
    else:
        await tb.access(W, b0 + reg.IntCtrl.offset, 0xF, 1)
        await tb.ring(0)
        await tb.access(CW, CFG.COMMAND, 0x3, CMD.MEMORY | CMD.INTX_DISABLE)
        await tb.ring(0)
        await tb.access(CW, CFG.COMMAND, 0x3, CMD.MEMORY)
        await _oneshot(tb, True)
        await tb.ring(0)
        await tb.ring(0)
        await tb.access(R, b0 + reg.IntCtrl.offset)


@cocotb.test()
async def random_sequence(dut: Any) -> None:
    """Seeded random config, BAR0, BAR1, shared-memory requests and events (IVHW_SEED)."""
    s = seed()
    rng = random.Random(s)
    tb = await _start(dut, rng_seed=s)
    m = tb.oracle.model
    reg = regs(tb)
    await _assign_bars(tb)
    tb.set_ident(OWN_ID)
    await tb.access(CW, CFG.COMMAND, 0x3, CMD.MEMORY | CMD.MASTER)
    if m.msix:
        await _msix_on(tb, masked=rng.getrandbits(m.vectors))
    sizes = {bar.index: size for bar, size in m.bars}
    base = shm_base(tb)
    priv = m.vendor_cap + VENDOR_CAP.PRIV_CTRL
    masks = [0xF] * 10 + [0x1, 0x3, 0xC, 0x0]
    ops = int(os.environ.get("IVHW_RANDOM_OPS", "300"))
    for _ in range(ops):
        r = rng.random()
        if r < 0.08:
            await tb.access(CR, rng.randrange(0, 0x80, 4))
        elif r < 0.14:
            choice = rng.randrange(3)
            if choice == 0:
                await tb.access(CW, priv & ~3, 0xF, rng.getrandbits(32))
            elif choice == 1:
                value = CMD.MEMORY | rng.choice((CMD.MASTER, CMD.MASTER, 0, CMD.INTX_DISABLE))
                await tb.access(CW, CFG.COMMAND, 0x3, value)
            elif m.msix:
                ctrl = m._msix_ctrl_offset
                value = rng.choice((MSIX_CAP.ENABLE, MSIX_CAP.ENABLE, MSIX_CAP.MASKALL, 0))
                await tb.access(CW, ctrl & ~3, 0xC, value << 8 * (ctrl % 4))
        elif r < 0.26:
            await tb.ring(rng.randrange(m.vectors + 1))
        elif r < 0.6:
            off = rng.choice([x.offset for x in reg] + [rng.randrange(0, 0x1000, 4)])
            kind = rng.choice((R, W))
            data = rng.getrandbits(32)
            if off == reg.Doorbell.offset:
                data = DOORBELL.pack(rng.choice((*PEERS, OWN_ID, 2)), rng.randrange(4))
            elif off == reg.State.offset:
                data = rng.choice((0, 1, 2, data))
            elif off == reg.IntCtrl.offset and rng.random() < 0.7:
                data = 1
            await tb.access(kind, BAR_AT[0] + off, rng.choice(masks), data)
        elif r < 0.7 and m.msix:
            off = rng.randrange(0, MSIX_BAR.entry(m.vectors), 4)
            await tb.access(rng.choice((R, W)), BAR_AT[1] + off, 0xF, rng.getrandbits(32))
        else:
            section = rng.choice(
                [
                    m.sections.state_table,
                    m.sections.rw,
                    *(m.sections.output(p) for p in range(m.max_peers)),
                ]
            )
            if section.size == 0:
                continue
            off = section.offset + rng.randrange(0, min(section.size, 64), 4)
            kind = rng.choice((R, W))
            await tb.access(kind, base + off, rng.choice(masks), rng.getrandbits(32))
    assert sizes  # every BAR was exercised through its size above


async def _driver_access(tb: TB, op: Op) -> int:
    """One driver access as a dword request on the RTL (and the model), narrow ones by lanes."""
    lane = op.addr % 4
    be = ((1 << op.size) - 1) << lane
    if op.kind == "cfg_read":
        return (await tb.access(CR, op.addr - lane, be) >> 8 * lane) & ((1 << 8 * op.size) - 1)
    if op.kind == "cfg_write":
        await tb.access(CW, op.addr - lane, be, op.data << 8 * lane)
        return 0
    if op.kind == "mem_read":
        return await tb.access(R, op.addr)
    await tb.access(W, op.addr, 0xF, op.data)
    return 0


@cocotb.test()
async def zephyr_init(dut: Any) -> None:
    """Zephyr's v2 bring-up on the RTL: its checks pass, one-shot is cleared, vectors taken."""
    tb = await _start(dut)
    m = tb.oracle.model
    await _assign_bars(tb)
    tb.set_ident(OWN_ID)
    await _oneshot(tb, True)  # left set by a previous driver
    probe = await drivers2.run_async(
        drivers2.zephyr_ivshmem_v2(msi_vectors=m.vectors), lambda op: _driver_access(tb, op)
    )
    assert (probe.id, probe.max_peers, probe.protocol) == (OWN_ID, m.max_peers, m.protocol)
    assert probe.state_table == (shm_base(tb), m.sections.state_table.size)
    assert probe.output == (shm_base(tb) + m.sections.output(OWN_ID).offset,
                            m.sections.output_section_size)  # fmt: skip
    assert not probe.oneshot and not m.oneshot
    assert probe.vectors == (m.vectors if m.msix else 0)
    assert probe.intx_pin == (0 if m.msix else 1)
    # run time: enable, state, doorbell, an event
    reg = PCI_REV2_REGS["final"]
    await tb.access(W, BAR_AT[0] + reg.IntCtrl.offset, 0xF, 1)
    await tb.access(W, BAR_AT[0] + reg.State.offset, 0xF, 1)
    await tb.access(W, BAR_AT[0] + reg.Doorbell.offset, 0xF, drivers2.doorbell_word(0, 1))
    await tb.ring(0)
    await tb.ring(0)  # no one-shot: both delivered
    assert len(tb.msis) == (2 if m.msix else 0)


@cocotb.test()
async def linux_init(dut: Any) -> None:
    """Linux uio_ivshmem's probe on the RTL: one-shot set, all vectors, bus master last."""
    tb = await _start(dut)
    m = tb.oracle.model
    await _assign_bars(tb)
    tb.set_ident(OWN_ID)
    probe = await drivers2.run_async(
        drivers2.linux_uio_ivshmem(), lambda op: _driver_access(tb, op)
    )
    assert probe.oneshot and m.oneshot
    assert probe.vectors == (m.vectors if m.msix else 0)
    assert m.command & (CMD.MEMORY | CMD.MASTER) == CMD.MEMORY | CMD.MASTER
    reg = PCI_REV2_REGS["final"]
    await tb.access(W, BAR_AT[0] + reg.IntCtrl.offset, 0xF, 1)
    await tb.ring(0)
    await tb.ring(0)  # one-shot: only the first is delivered
    await tb.access(R, BAR_AT[0] + reg.IntCtrl.offset)
    assert len(tb.msis) == (1 if m.msix else 0) and tb.intx_pulses == (0 if m.msix else 1)
    await tb.access(W, BAR_AT[0] + reg.State.offset, 0xF, 0)  # release
    await tb.access(W, BAR_AT[0] + reg.IntCtrl.offset, 0xF, 0)  # remove
