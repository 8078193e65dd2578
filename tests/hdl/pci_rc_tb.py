"""cocotb tests: the ivshmem PCI endpoint RTL enumerated and driven by cocotbext-pcie.

:class:`HdlFunction` is a cocotbext-pcie ``Function`` whose config and memory
TLPs go into the RTL's transaction interface (one request per dword, UR
completions from the RTL) and whose MSI-X messages from the RTL go upstream as
memory writes, so that the root complex's ``msi_vectors[k].event`` fires.
"""

from __future__ import annotations

import struct
from typing import Any

import cocotb
from cocotb.triggers import Lock, with_timeout
from cocotbext.pcie.core import Device, RootComplex
from cocotbext.pcie.core.function import Function
from cocotbext.pcie.core.pci import PciCapId
from cocotbext.pcie.core.tlp import Tlp, TlpType
from pci_testbench import PARAMS, TB

from ivhw.hdl.pci.tlp import CplStatus, ReqKind
from ivhw.sw.pcicfg import (
    BARS,
    CFG,
    CMD,
    DEVICE_ID,
    MSIX_CAP,
    REV2_IDS,
    REV2_REGS_BAR,
    VENDOR_CAP,
    VENDOR_ID,
    InterruptPin,
)
from ivhw.sw.regmap import DOORBELL, MSIX_BAR, MSIX_ENTRY, PCI_REV1_REGS, PCI_REV2_REGS

REG = PCI_REV1_REGS
OWN_ID = 4
OWN_ID2 = 1  # revision 2: below the variants' max peers
_MEM_READS = (TlpType.MEM_READ, TlpType.MEM_READ_64)
_MEM_WRITES = (TlpType.MEM_WRITE, TlpType.MEM_WRITE_64)


class HdlFunction(Function):
    """A PCIe function whose registers are the RTL's."""

    def __init__(self, tb: TB) -> None:
        super().__init__()
        self.tb = tb
        self._lock = Lock()
        self.bus_master_enable = True  # the RTL gates its own messages
        for kind in _MEM_READS:
            self.register_rx_tlp_handler(kind, self._mem_read)
        for kind in _MEM_WRITES:
            self.register_rx_tlp_handler(kind, self._mem_write)
        tb.on_msi = lambda addr, data: cocotb.start_soon(self.mem_write_dword(addr, data))

    async def _request(self, kind: ReqKind, addr: int, be: int = 0xF, data: int = 0) -> Any:
        async with self._lock:
            return await self.tb.request(kind, addr, be, data)

    def match_tlp(self, tlp: Tlp) -> bool:
        if tlp.fmt_type in _MEM_READS + _MEM_WRITES:
            return True  # the RTL decodes its BARs and answers UR for a miss
        return super().match_tlp(tlp)

    async def read_config_register(self, reg: int) -> int:
        _, data = await self._request(ReqKind.CFG_READ, 4 * reg)
        return data

    async def write_config_register(self, reg: int, data: int, mask: int) -> None:
        await self._request(ReqKind.CFG_WRITE, 4 * reg, mask, data)

    @staticmethod
    def _be(tlp: Tlp, k: int) -> int:
        if k == 0:
            return tlp.first_be
        return tlp.last_be if k == tlp.length - 1 else 0xF

    async def _mem_read(self, tlp: Tlp) -> None:
        data = bytearray()
        for k in range(tlp.length):
            status, word = await self._request(
                ReqKind.MEM_READ, (tlp.address & ~3) + 4 * k, self._be(tlp, k)
            )
            if status == CplStatus.UR.value:
                await self.send(Tlp.create_ur_completion_for_tlp(tlp, self.pcie_id))
                return
            data += struct.pack("<L", word)
        cpl = Tlp.create_completion_data_for_tlp(tlp, self.pcie_id)
        cpl.set_data(data)
        cpl.byte_count = tlp.get_be_byte_count()
        cpl.lower_address = (tlp.address + tlp.get_first_be_offset()) & 0x7F
        await self.send(cpl)

    async def _mem_write(self, tlp: Tlp) -> None:
        data = tlp.get_data()
        for k in range(tlp.length):
            (word,) = struct.unpack_from("<L", data, 4 * k)
            await self._request(
                ReqKind.MEM_WRITE, (tlp.address & ~3) + 4 * k, self._be(tlp, k), word
            )


async def _enumerate(dut: Any) -> tuple[TB, HdlFunction, RootComplex, Any]:
    tb = TB(dut)
    await tb.cycle_reset()
    tb.msi_ready_p = 1.0
    fn = HdlFunction(tb)
    rc = RootComplex()
    rc.make_port().connect(Device(fn))
    await with_timeout(rc.enumerate(), 2, "ms")
    dev = rc.find_device(fn.pcie_id)
    model = tb.oracle.model
    if tb.oracle.rev2:
        ids = REV2_IDS[model.layout_name]
        assert (dev.vendor_id, dev.device_id) == (ids.vendor, ids.device)
        assert dev.bar_size[BARS.regs.index] == REV2_REGS_BAR.size
    else:
        assert dev.vendor_id == VENDOR_ID and dev.device_id == DEVICE_ID
        assert dev.bar_size[BARS.regs.index] == BARS.regs.size
    assert dev.bar_size[BARS.shm.index] == model.shm.size
    assert dev.bar_size[BARS.msix.index] == (BARS.msix.size if model.msix else 0)
    await dev.enable_device()
    await dev.set_master()
    return tb, fn, rc, dev


async def _event_fires(dev: Any, tb: TB, vector: int, fired: bool = True) -> None:
    ev = dev.msi_vectors[vector].event
    ev.clear()
    await tb.event(vector)
    await tb.settle(60)
    assert ev.is_set() == fired, f"vector {vector}: MSI-X {'missing' if fired else 'unexpected'}"


async def _shm_and_doorbell(tb: TB, dev: Any) -> None:
    shm = dev.bar_window[BARS.shm.index]
    await shm.write(0x10, b"ivshmem-pci!")
    assert await shm.read(0x10, 12) == b"ivshmem-pci!"
    assert bytes(tb.shm[0x10:0x1C]) == b"ivshmem-pci!"
    regs = dev.bar_window[BARS.regs.index]
    if tb.oracle.model.doorbell:
        assert await regs.read_dword(REG.IVPosition.offset) == 0xFFFF_FFFF
        tb.set_ident(OWN_ID)
        tb.set_peer(1, 2)
        assert await regs.read_dword(REG.IVPosition.offset) == OWN_ID
        await regs.write_dword(REG.Doorbell.offset, DOORBELL.pack(1, 1))
        await regs.write_dword(REG.Doorbell.offset, DOORBELL.pack(1, 2))  # no such vector
        await regs.write_dword(REG.Doorbell.offset, DOORBELL.pack(OWN_ID, 0))
        await tb.settle(40)
        assert tb.doorbells == [(1, 1), (OWN_ID, 0)]
    else:
        assert await regs.read_dword(REG.IVPosition.offset) == 0


@cocotb.test()
async def enumerate_and_msix(dut: Any) -> None:
    """Enumeration, MSI-X through alloc_irq_vectors, masks, PBA, function mask, bus master."""
    tb, fn, _rc, dev = await _enumerate(dut)
    vectors = PARAMS["vectors"]
    await _shm_and_doorbell(tb, dev)
    await dev.alloc_irq_vectors(1, vectors)
    assert len(dev.msi_vectors) == vectors
    for v in range(vectors):
        await _event_fires(dev, tb, v)
    # a masked vector: pending in the PBA, delivered on unmask
    msix = dev.bar_window[BARS.msix.index]
    ctrl = MSIX_BAR.entry(1) + MSIX_ENTRY.VectorCtrl.offset
    await msix.write_dword(ctrl, 1)
    # A memory write is posted: read it back so that it has landed (PCIe ordering) before
    # the event, which the endpoint takes ahead of a request arriving in the same cycle.
    assert await msix.read_dword(ctrl) == 1
    await _event_fires(dev, tb, 1, fired=False)
    assert await msix.read_dword(MSIX_BAR.pba) == 0b10
    ev = dev.msi_vectors[1].event
    ev.clear()
    await msix.write_dword(ctrl, 0)
    await tb.settle(60)
    assert ev.is_set() and await msix.read_dword(MSIX_BAR.pba) == 0
    # the function mask
    control = await dev.config_read_word(MSIX_CAP.control_offset)
    await dev.config_write_word(MSIX_CAP.control_offset, control | MSIX_CAP.MASKALL)
    await _event_fires(dev, tb, 0, fired=False)
    assert await msix.read_dword(MSIX_BAR.pba) == 0b1
    ev = dev.msi_vectors[0].event
    ev.clear()
    await dev.config_write_word(MSIX_CAP.control_offset, control)
    await tb.settle(60)
    assert ev.is_set()
    # bus mastering off: the message is lost (QEMU), nothing pending
    command = await dev.config_read_word(CFG.COMMAND)
    await dev.config_write_word(CFG.COMMAND, command & ~CMD.MASTER)
    await _event_fires(dev, tb, 0, fired=False)
    assert await msix.read_dword(MSIX_BAR.pba) == 0
    await dev.config_write_word(CFG.COMMAND, command)
    await _event_fires(dev, tb, 0)
    # memory decode off: the RTL answers unsupported request
    base = await dev.config_read_dword(BARS.regs.offset) & ~0xF
    await dev.config_write_word(CFG.COMMAND, command & ~CMD.MEMORY)
    status, _ = await fn._request(ReqKind.MEM_READ, base)
    assert status == CplStatus.UR.value
    await dev.config_write_word(CFG.COMMAND, command)
    status, _ = await fn._request(ReqKind.MEM_READ, base)
    assert status == CplStatus.SC.value


@cocotb.test()
async def enumerate_intx(dut: Any) -> None:
    """Legacy INTx: pin INTA, no MSI-X; the level follows IntrStatus & IntrMask."""
    tb, _fn, _rc, dev = await _enumerate(dut)
    assert await dev.config_read_byte(CFG.INTERRUPT_PIN) == InterruptPin.INTA
    assert dev.get_capability_offset(PciCapId(MSIX_CAP.id)) is None
    await _shm_and_doorbell(tb, dev)
    regs = dev.bar_window[BARS.regs.index]
    await tb.event(0)
    await tb.settle()
    assert int(dut.intx.value) == 0  # masked
    await regs.write_dword(REG.IntrMask.offset, 1)
    await tb.settle(4)
    assert int(dut.intx.value) == 1
    command = await dev.config_read_word(CFG.COMMAND)
    await dev.config_write_word(CFG.COMMAND, command | CMD.INTX_DISABLE)
    assert int(dut.intx.value) == 0
    assert await dev.config_read_word(CFG.STATUS) & 0x8  # the state stays visible
    await dev.config_write_word(CFG.COMMAND, command)
    assert int(dut.intx.value) == 1
    assert await regs.read_dword(REG.IntrStatus.offset) == 1  # read-clear
    await tb.settle(4)
    assert int(dut.intx.value) == 0


@cocotb.test()
async def enumerate_plain(dut: Any) -> None:
    """ivshmem-plain: BAR0 and BAR2 only, no interrupts."""
    tb, _fn, _rc, dev = await _enumerate(dut)
    assert await dev.config_read_byte(CFG.INTERRUPT_PIN) == InterruptPin.NONE
    assert dev.get_capability_offset(PciCapId(MSIX_CAP.id)) is None
    await _shm_and_doorbell(tb, dev)


@cocotb.test()
async def enumerate_rev2_msix(dut: Any) -> None:
    """Revision 2 enumerated by the root complex: vendor capability, MSI-X through
    alloc_irq_vectors, doorbells, the state broadcast, one-shot, events as MSI-X."""
    tb, _fn, _rc, dev = await _enumerate(dut)
    m = tb.oracle.model
    reg = PCI_REV2_REGS[m.layout_name]
    # walk the capability list as a driver does (the root complex records only the
    # capabilities it knows)
    vendor, ptr = None, await dev.config_read_byte(CFG.CAPABILITY_LIST)
    while ptr and vendor is None:
        if await dev.config_read_byte(ptr) == VENDOR_CAP.id:
            vendor = ptr
        ptr = await dev.config_read_byte(ptr + 1)
    assert vendor == m.vendor_cap
    assert (
        dev.get_capability_offset(PciCapId(MSIX_CAP.id)) == m._msix_ctrl_offset - MSIX_CAP.CONTROL
    )
    assert await dev.config_read_dword(vendor + VENDOR_CAP.STATE_TABLE_SIZE) == 4096
    assert (
        await dev.config_read_dword(vendor + VENDOR_CAP.OUTPUT_SIZE)
        == m.sections.output_section_size
    )
    tb.set_ident(OWN_ID2)
    tb.set_peer(0, 2)
    regs = dev.bar_window[BARS.regs.index]
    shm = dev.bar_window[BARS.shm.index]
    assert await regs.read_dword(reg.ID.offset) == OWN_ID2
    assert await regs.read_dword(reg.MaxPeers.offset) == m.max_peers
    await dev.alloc_irq_vectors(1, m.vectors)
    assert len(dev.msi_vectors) == m.vectors
    await _event_fires(dev, tb, 0, fired=False)  # Interrupt Control still off
    await regs.write_dword(reg.IntCtrl.offset, 1)
    assert await regs.read_dword(reg.IntCtrl.offset) == 1  # the posted write has landed
    for v in range(m.vectors):
        await _event_fires(dev, tb, v)
    # the state: into the own State Table entry, and vector 0 of peer 0
    await regs.write_dword(reg.State.offset, 0x5EED)
    await tb.settle(40)
    assert await shm.read_dword(4 * OWN_ID2) == 0x5EED and tb.doorbells == [(0, 0)]
    await regs.write_dword(reg.Doorbell.offset, DOORBELL.pack(0, 1))
    await tb.settle(40)
    assert tb.doorbells == [(0, 0), (0, 1)]
    # the State Table and peer 0's output section are read-only through BAR2
    await shm.write_dword(0, 0xBAD)
    out0, own = m.sections.output(0).offset, m.sections.output(OWN_ID2).offset
    await shm.write_dword(out0, 0xBAD)
    await shm.write_dword(own, 0x600D)
    assert await shm.read_dword(0) == 0 and await shm.read_dword(out0) == 0
    assert await shm.read_dword(own) == 0x600D
    # one-shot: the first event clears Interrupt Control, the second is not delivered
    await dev.config_write_byte(vendor + VENDOR_CAP.PRIV_CTRL, VENDOR_CAP.ONESHOT)
    await _event_fires(dev, tb, 0)
    await _event_fires(dev, tb, 0, fired=False)
    assert await regs.read_dword(reg.IntCtrl.offset) == 0
    msix = dev.bar_window[BARS.msix.index]
    assert await msix.read_dword(MSIX_BAR.pba) == 0
