"""The ivshmem PCI revision 1 model against SPEC section 2 and QEMU 7.2's behaviour."""

from __future__ import annotations

import mmap

import pytest

from ivhw.sw.models import IvshmemPciModel
from ivhw.sw.pcicfg import BARS, CFG, CMD, MSIX_CAP, QEMU_DOORBELL_HEADER, STATUS
from ivhw.sw.regmap import DOORBELL, MSIX_BAR, MSIX_ENTRY, PCI_REV1_REGS

REG = PCI_REV1_REGS
CTRL = MSIX_CAP.control_offset
SHM = 1 << 20

QEMU_DOORBELL_2 = list(QEMU_DOORBELL_HEADER)


class Bus:
    """Records what the device puts on the bus."""

    def __init__(self) -> None:
        self.msi: list[tuple[int, int]] = []
        self.rings: list[tuple[int, int]] = []
        self.intx: list[bool] = []


def make(vectors: int = 2, **kwargs: object) -> tuple[IvshmemPciModel, Bus]:
    bus = Bus()
    kwargs.setdefault("shm_size", SHM)
    dev = IvshmemPciModel(
        vectors=vectors,
        on_msi=lambda a, d: bus.msi.append((a, d)),
        on_doorbell=lambda p, v: bus.rings.append((p, v)),
        on_intx=bus.intx.append,
        **kwargs,  # type: ignore[arg-type]
    )
    return dev, bus


def program_vector(
    dev: IvshmemPciModel, vector: int, address: int, data: int, masked: bool
) -> None:
    base = MSIX_BAR.entry(vector)
    dev.bar_write(BARS.msix.index, base + MSIX_ENTRY.MsgAddrLo.offset, address & 0xFFFFFFFF)
    dev.bar_write(BARS.msix.index, base + MSIX_ENTRY.MsgAddrHi.offset, address >> 32)
    dev.bar_write(BARS.msix.index, base + MSIX_ENTRY.MsgData.offset, data)
    dev.bar_write(BARS.msix.index, base + MSIX_ENTRY.VectorCtrl.offset, int(masked))


def msix_ready(dev: IvshmemPciModel, *, master: bool = True, maskall: bool = False) -> None:
    dev.config_write(CFG.COMMAND, CMD.MEMORY | (CMD.MASTER if master else 0), 2)
    dev.config_write(CTRL, MSIX_CAP.ENABLE | (MSIX_CAP.MASKALL if maskall else 0), 2)


# -- config header -------------------------------------------------------------------------


def test_config_header_matches_qemu_7_2() -> None:
    dev, _ = make(vectors=2)
    assert [dev.config_read(4 * i) for i in range(len(QEMU_DOORBELL_2))] == QEMU_DOORBELL_2


@pytest.mark.parametrize("vectors", [1, 5, 64])
def test_msix_table_size_field(vectors: int) -> None:
    dev, _ = make(vectors=vectors)
    assert dev.config_read(CTRL, 2) == vectors - 1


def test_plain_header() -> None:
    dev = IvshmemPciModel(doorbell=False, shm_size=SHM)
    assert dev.config_read(CFG.STATUS, 2) == 0
    assert dev.config_read(CFG.CAPABILITY_LIST, 1) == 0
    assert dev.config_read(CFG.INTERRUPT_PIN, 1) == 0
    assert dev.config_read(CFG.BAR1) == 0
    assert dev.config_read(MSIX_CAP.offset) == 0
    dev.config_write(CFG.BAR1, 0xFFFFFFFF)
    assert dev.config_read(CFG.BAR1) == 0


def test_intx_variant_header() -> None:
    dev, _ = make(interrupts="intx")
    assert dev.config_read(CFG.INTERRUPT_PIN, 1) == 1
    assert dev.config_read(CFG.STATUS, 2) == 0
    assert dev.config_read(CFG.CAPABILITY_LIST, 1) == 0
    dev.config_write(CFG.BAR1, 0xFFFFFFFF)
    assert dev.config_read(CFG.BAR1) == 0
    with pytest.raises(ValueError, match="BAR1"):
        dev.bar_read(1, 0)


def test_sub_dword_config_reads_are_byte_lanes() -> None:
    dev, _ = make()
    assert dev.config_read(CFG.VENDOR_ID, 2) == 0x1AF4
    assert dev.config_read(CFG.DEVICE_ID, 2) == 0x1110
    assert dev.config_read(CFG.DEVICE_ID + 1, 1) == 0x11
    assert dev.config_read(CFG.REVISION_ID, 1) == 1
    assert dev.config_read(CFG.CLASS_BASE, 1) == 0x05
    assert dev.config_read(CFG.SUBSYSTEM_ID, 2) == 0x1100
    with pytest.raises(ValueError):
        dev.config_read(1, 2)
    with pytest.raises(ValueError):
        dev.config_read(0, 3)


def test_read_only_header_ignores_writes() -> None:
    dev, _ = make()
    before = [dev.config_read(4 * i) for i in range(64)]
    for off in (0x00, 0x08, 0x28, 0x2C, 0x30, 0x34, 0x44, 0x48, 0x4C, 0x80, 0xFC):
        dev.config_write(off, 0xFFFFFFFF)
    for i, value in enumerate(before):
        if 4 * i not in (0x0C, 0x3C):
            assert dev.config_read(4 * i) == value, hex(4 * i)


def test_command_write_mask() -> None:
    dev, _ = make()
    dev.config_write(CFG.COMMAND, 0xFFFF, 2)
    assert dev.config_read(CFG.COMMAND, 2) == 0x0507
    dev.config_write(CFG.COMMAND, 0, 2)
    assert dev.config_read(CFG.COMMAND, 2) == 0


def test_status_is_read_only_and_w1c_bits_stay_clear() -> None:
    dev, _ = make()
    dev.config_write(CFG.STATUS, 0xFFFF, 2)
    assert dev.config_read(CFG.STATUS, 2) == STATUS.CAP_LIST


def test_cache_line_and_interrupt_line_rw() -> None:
    dev, _ = make()
    dev.config_write(CFG.CACHE_LINE_SIZE, 0x10, 1)
    dev.config_write(CFG.INTERRUPT_LINE, 0x0B, 1)
    assert dev.config_read(0x0C) == 0x10
    assert dev.config_read(0x3C) == 0x0B
    dev.config_write(0x3C, 0xFFFFFFFF)
    assert dev.config_read(0x3C) == 0xFF  # pin, min_gnt, max_lat read-only


def test_byte_enable_config_write() -> None:
    dev, _ = make()
    # only byte 1 of the command dword: INTX_DISABLE, not MEMORY
    dev.write_config_register(1, 0xFFFF_FFFF, 0b0010)
    assert dev.config_read(CFG.COMMAND, 2) == CMD.INTX_DISABLE | CMD.SERR
    dev.write_config_register(1, 0x0000_0002, 0b0001)
    assert dev.read_config_register(1) & 0xFFFF == CMD.INTX_DISABLE | CMD.SERR | CMD.MEMORY


def test_extended_config_reads_all_ones() -> None:
    dev, _ = make()
    assert dev.config_read(0x100) == 0xFFFFFFFF
    assert dev.config_read(0xFFE, 2) == 0xFFFF
    dev.config_write(0x100, 0)
    assert dev.config_read(0x100) == 0xFFFFFFFF


def test_reset_restores_config() -> None:
    dev, _ = make()
    dev.config_write(CFG.COMMAND, 0x7, 2)
    dev.config_write(CFG.BAR0, 0xFEB00000)
    dev.config_write(CTRL, 0xC000, 2)
    dev.reset()
    assert [dev.config_read(4 * i) for i in range(len(QEMU_DOORBELL_2))] == QEMU_DOORBELL_2


# -- BARs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "sized"),
    [(CFG.BAR0, 0xFFFFFF00), (CFG.BAR1, 0xFFFFF000), (CFG.BAR4, 0), (CFG.BAR5, 0)],
)
def test_bar_sizing_32(offset: int, sized: int) -> None:
    dev, _ = make()
    dev.config_write(offset, 0xFFFFFFFF)
    assert dev.config_read(offset) == sized


@pytest.mark.parametrize(
    ("size", "lo", "hi"),
    [(16, 0xFFFFFFFC, 0xFFFFFFFF), (SHM, 0xFFF0000C, 0xFFFFFFFF), (1 << 32, 0xC, 0xFFFFFFFF),
     (1 << 33, 0xC, 0xFFFFFFFE)],
)  # fmt: skip
def test_bar2_sizing_64(size: int, lo: int, hi: int) -> None:
    dev = IvshmemPciModel(shm=_sparse(size))
    assert dev.config_read(CFG.BAR2) == 0xC
    dev.config_write(CFG.BAR2, 0xFFFFFFFF)
    dev.config_write(CFG.BAR3, 0xFFFFFFFF)
    assert dev.config_read(CFG.BAR2) == lo
    assert dev.config_read(CFG.BAR3) == hi


def _sparse(size: int) -> mmap.mmap:
    """Anonymous memory of ``size`` bytes that is never touched, so never committed."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
    return mmap.mmap(-1, size, flags=flags)


def test_memory_decode_gated_by_command() -> None:
    dev, _ = make()
    dev.config_write(CFG.BAR0, 0xFEB00000)
    dev.config_write(CFG.BAR2, 0x0000000C)
    dev.config_write(CFG.BAR3, 0x00000008)  # BAR2 at 8_0000_0000
    dev.set_id(3)
    assert dev.mem_read(0xFEB00000 + REG.IVPosition.offset) is None
    assert not dev.mem_write(0x8_0000_0000, 1)
    dev.config_write(CFG.COMMAND, CMD.MEMORY, 2)
    assert dev.bar_address(0) == 0xFEB00000
    assert dev.bar_address(2) == 0x8_0000_0000
    assert dev.mem_read(0xFEB00000 + REG.IVPosition.offset) == 3
    assert dev.mem_write(0x8_0000_0010, 0xAB, 1)
    assert dev.shm_read(0x10, 1) == 0xAB
    assert dev.mem_read(0x8_0000_0000 + SHM) is None  # past the end
    assert dev.mem_read(0x8_0000_0000 + SHM - 2, 4) is None  # straddles the end


def test_unassigned_or_sizing_bars_do_not_decode() -> None:
    dev, _ = make()
    dev.config_write(CFG.COMMAND, CMD.MEMORY, 2)
    assert dev.bar_address(0) is None  # base 0
    dev.config_write(CFG.BAR0, 0xFFFFFFFF)
    assert dev.bar_address(0) is None  # FFFFFF00 + FF reaches the top
    dev.config_write(CFG.BAR1, 0xFEC00000)
    assert dev.bar_address(1) == 0xFEC00000
    assert dev.mem_read(0xFEC00000 + MSIX_BAR.entry(0) + MSIX_ENTRY.VectorCtrl.offset) == 1


def test_bar0_size_is_256() -> None:
    dev, _ = make()
    dev.config_write(CFG.BAR0, 0xFEB00000)
    dev.config_write(CFG.COMMAND, CMD.MEMORY, 2)
    assert dev.mem_read(0xFEB000FC) == 0
    assert dev.mem_read(0xFEB00100) is None


# -- BAR0 registers ------------------------------------------------------------------------


def test_register_reset_values() -> None:
    dev, _ = make()
    for reg in REG:
        assert dev.read_register(reg.offset) == reg.reset, reg.name


def test_intrmask_all_bits_rw() -> None:
    dev, _ = make()
    dev.write_register(REG.IntrMask.offset, 0xDEADBEEF)
    assert dev.read_register(REG.IntrMask.offset) == 0xDEADBEEF


def test_intrstatus_read_clears() -> None:
    dev, _ = make()
    dev.write_register(REG.IntrStatus.offset, 0x12345678)
    assert dev.read_register(REG.IntrStatus.offset) == 0x12345678
    assert dev.read_register(REG.IntrStatus.offset) == 0


def test_ivposition_before_and_after_id() -> None:
    dev, _ = make()
    assert dev.read_register(REG.IVPosition.offset) == 0xFFFFFFFF
    dev.set_id(42)
    assert dev.read_register(REG.IVPosition.offset) == 42
    dev.write_register(REG.IVPosition.offset, 7)
    assert dev.read_register(REG.IVPosition.offset) == 42
    dev.reset()
    assert dev.read_register(REG.IVPosition.offset) == 42


def test_doorbell_reads_zero_and_reserved_offsets() -> None:
    dev, bus = make()
    dev.set_id(1)
    assert dev.read_register(REG.Doorbell.offset) == 0
    for off in range(0x10, REG.size, 4):
        dev.write_register(off, 0xFFFFFFFF)
        assert dev.read_register(off) == 0
    assert bus.rings == []


def test_doorbell_decode() -> None:
    dev, bus = make(vectors=4)
    dev.set_id(1)
    dev.set_peer(2, 2)
    db = REG.Doorbell.offset
    dev.write_register(db, DOORBELL.pack(2, 1))
    dev.write_register(db, DOORBELL.pack(1, 3))  # itself, own vectors
    dev.write_register(db, DOORBELL.pack(2, 0x0101))  # QEMU decodes bits 7:0: vector 1
    dev.write_register(db, DOORBELL.pack(2, 2))  # peer 2 has 2 vectors
    dev.write_register(db, DOORBELL.pack(9, 0))  # unknown peer
    dev.write_register(db, DOORBELL.pack(2, 0x0102))  # bits 7:0 = 2: out of range
    assert bus.rings == [(2, 1), (1, 3), (2, 1)]
    assert (dev.counters.rings, dev.counters.bad_peer, dev.counters.bad_vector) == (3, 1, 2)
    dev.remove_peer(2)
    dev.write_register(db, DOORBELL.pack(2, 0))
    assert dev.counters.bad_peer == 2


def test_sub_word_register_reads() -> None:
    dev, _ = make()
    dev.write_register(REG.IntrMask.offset, 0xA1B2C3D4)
    assert dev.bar_read(0, REG.IntrMask.offset, 1) == 0xD4
    assert dev.bar_read(0, REG.IntrMask.offset, 2) == 0xC3D4
    assert dev.bar_read(0, REG.IntrMask.offset + 1, 1) == 0  # handler sees offset 1
    assert dev.bar_read(0, REG.IntrMask.offset + 2, 2) == 0
    dev.write_register(REG.IntrStatus.offset, 0x1234)
    assert dev.bar_read(0, REG.IntrStatus.offset, 1) == 0x34
    assert dev.read_register(REG.IntrStatus.offset) == 0  # the byte read cleared it all


def test_sub_word_register_writes_zero_extend_at_dword() -> None:
    dev, bus = make()
    dev.write_register(REG.IntrMask.offset, 0xFFFFFFFF)
    dev.bar_write(0, REG.IntrMask.offset + 1, 0x5A, 1)  # offset & FCh, value zero-extended
    assert dev.read_register(REG.IntrMask.offset) == 0x5A
    dev.bar_write(0, REG.IntrMask.offset + 2, 0x1234, 2)
    assert dev.read_register(REG.IntrMask.offset) == 0x1234
    dev.set_id(0)
    dev.bar_write(0, REG.Doorbell.offset + 3, 0x01, 1)  # peer 0 vector 1
    assert bus.rings == [(0, 1)]
    # the same through byte enables: lane 1 of IntrMask carries the byte
    dev.write_register(REG.IntrMask.offset, 0x0000_7700, 0b0010)
    assert dev.read_register(REG.IntrMask.offset) == 0x77


def test_unaligned_and_qword_register_accesses() -> None:
    dev, _ = make()
    dev.write_register(REG.IntrMask.offset, 0x11)
    assert dev.bar_read(0, 2, 4) == 0
    dev.bar_write(0, 1, 0xFFFF, 2)
    assert dev.read_register(REG.IntrMask.offset) == 0x11
    dev.write_register(REG.IntrMask.offset, 0xFFFF, 0b0110)
    assert dev.counters.bad_access == 3
    dev.write_register(REG.IntrStatus.offset, 0x22)
    assert dev.bar_read(0, 0, 8) == 0x22_0000_0011
    assert dev.read_register(REG.IntrStatus.offset) == 0
    dev.bar_write(0, 0, 0x33_0000_0044, 8)
    assert dev.read_register(REG.IntrMask.offset) == 0x44
    assert dev.read_register(REG.IntrStatus.offset) == 0x33


def test_plain_registers() -> None:
    dev = IvshmemPciModel(doorbell=False, shm_size=SHM)
    assert dev.read_register(REG.IVPosition.offset) == 0
    dev.write_register(REG.Doorbell.offset, DOORBELL.pack(0, 0))
    assert dev.counters.bad_peer == 1
    dev.write_register(REG.IntrMask.offset, 5)
    assert dev.read_register(REG.IntrMask.offset) == 5
    assert not dev.intx
    with pytest.raises(ValueError, match="plain"):
        dev.event(0)
    with pytest.raises(ValueError, match="plain"):
        dev.set_id(0)
    with pytest.raises(ValueError, match="plain"):
        IvshmemPciModel(doorbell=False, interrupts="intx")


# -- MSI-X ---------------------------------------------------------------------------------


def test_msix_table_reset_and_rw() -> None:
    dev, _ = make(vectors=3)
    for v in range(3):
        base = MSIX_BAR.entry(v)
        for reg in MSIX_ENTRY:
            assert dev.bar_read(1, base + reg.offset) == reg.reset
    program_vector(dev, 2, 0x1_FEE0_0000, 0x4041, masked=False)
    base = MSIX_BAR.entry(2)
    assert dev.bar_read(1, base + MSIX_ENTRY.MsgAddrLo.offset) == 0xFEE00000
    assert dev.bar_read(1, base + MSIX_ENTRY.MsgAddrHi.offset) == 1
    assert dev.bar_read(1, base + MSIX_ENTRY.MsgData.offset) == 0x4041
    assert dev.bar_read(1, base + MSIX_ENTRY.VectorCtrl.offset) == 0
    assert dev.bar_read(1, base, 8) == 0x1_FEE0_0000
    dev.bar_write(1, base + MSIX_ENTRY.VectorCtrl.offset, 0xFFFFFFFF)
    assert dev.bar_read(1, base + MSIX_ENTRY.VectorCtrl.offset) == 1  # 31:1 reserved
    dev.reset()
    assert dev.bar_read(1, base + MSIX_ENTRY.MsgData.offset) == 0
    assert dev.bar_read(1, base + MSIX_ENTRY.VectorCtrl.offset) == 1


def test_msix_bar_holes_pba_read_only_and_sizes() -> None:
    dev, _ = make(vectors=2)
    past = MSIX_BAR.entry(2)
    dev.bar_write(1, past, 0xFFFFFFFF)
    assert dev.bar_read(1, past) == 0
    dev.bar_write(1, MSIX_BAR.pba, 0xFFFFFFFF)
    assert dev.bar_read(1, MSIX_BAR.pba) == 0
    assert dev.bar_read(1, MSIX_BAR.size - 4) == 0
    program_vector(dev, 0, 0xFEE00000, 0x1234, masked=False)
    assert dev.bar_read(1, MSIX_ENTRY.MsgData.offset, 2) == 0  # .valid min 4
    dev.bar_write(1, MSIX_ENTRY.MsgData.offset, 0xFF, 1)
    assert dev.bar_read(1, MSIX_ENTRY.MsgData.offset) == 0x1234
    assert dev.counters.bad_access == 2


def test_msix_control_writable_bits() -> None:
    dev, _ = make(vectors=2)
    dev.config_write(CTRL, 0xFFFF, 2)
    assert dev.config_read(CTRL, 2) == 0xC001
    assert dev.config_read(MSIX_CAP.offset) == 0xC0010011
    dev.config_write(CTRL, 0, 2)
    assert dev.config_read(CTRL, 2) == 1


def test_msi_delivered_when_enabled_unmasked_master() -> None:
    dev, bus = make()
    dev.set_id(0)
    program_vector(dev, 1, 0xFEE01000, 0x31, masked=False)
    msix_ready(dev)
    dev.event(1)
    assert bus.msi == [(0xFEE01000, 0x31)]
    assert dev.counters.msi_sent == 1
    assert dev.pending == 0


def test_msix_disabled_drops_event() -> None:
    dev, bus = make()
    program_vector(dev, 0, 0xFEE00000, 0x30, masked=False)
    dev.config_write(CFG.COMMAND, CMD.MEMORY | CMD.MASTER, 2)
    dev.event(0)
    assert bus.msi == []
    assert dev.pending == 0
    assert dev.read_register(REG.IntrStatus.offset) == 0
    assert dev.counters.events_dropped == 1
    # enabling later does not resurrect it
    dev.config_write(CTRL, MSIX_CAP.ENABLE, 2)
    assert bus.msi == []


def test_vector_mask_sets_pba_and_unmask_delivers() -> None:
    dev, bus = make(vectors=2)
    program_vector(dev, 1, 0xFEE00000, 0x55, masked=True)
    msix_ready(dev)
    dev.event(1)
    dev.event(1)  # still one pending bit
    assert bus.msi == []
    assert dev.pending == 0b10
    assert dev.bar_read(1, MSIX_BAR.pba) == 0b10
    assert dev.bar_read(1, MSIX_BAR.pba, 8) == 0b10
    dev.bar_write(1, MSIX_BAR.entry(1) + MSIX_ENTRY.VectorCtrl.offset, 0)
    assert bus.msi == [(0xFEE00000, 0x55)]
    assert dev.pending == 0
    assert dev.counters.pending_set == 2


def test_function_mask_sets_pba_and_clearing_it_delivers() -> None:
    dev, bus = make(vectors=2)
    program_vector(dev, 0, 0xFEE00000, 0x60, masked=False)
    program_vector(dev, 1, 0xFEE00000, 0x61, masked=True)
    msix_ready(dev, maskall=True)
    dev.event(0)
    dev.event(1)
    assert dev.pending == 0b11
    dev.config_write(CTRL, MSIX_CAP.ENABLE, 2)  # function mask off
    assert bus.msi == [(0xFEE00000, 0x60)]
    assert dev.pending == 0b10  # vector 1 is still masked itself
    dev.bar_write(1, MSIX_BAR.entry(1) + MSIX_ENTRY.VectorCtrl.offset, 0)
    assert bus.msi == [(0xFEE00000, 0x60), (0xFEE00000, 0x61)]


def test_pending_survives_disable_and_fires_on_reenable() -> None:
    dev, bus = make()
    program_vector(dev, 0, 0xFEE00000, 0x70, masked=False)
    msix_ready(dev, maskall=True)
    dev.event(0)
    dev.config_write(CTRL, 0, 2)  # disable: nothing happens
    assert bus.msi == [] and dev.pending == 1
    dev.config_write(CTRL, MSIX_CAP.ENABLE, 2)
    assert bus.msi == [(0xFEE00000, 0x70)]


def test_msix_control_only_via_its_byte() -> None:
    dev, bus = make()
    program_vector(dev, 0, 0xFEE00000, 0x71, masked=False)
    msix_ready(dev, maskall=True)
    dev.event(0)
    # a byte write to 42h (table size, read-only) changes nothing
    dev.config_write(CTRL, 0, 1)
    assert dev.pending == 1
    dev.write_config_register(MSIX_CAP.offset // 4, MSIX_CAP.ENABLE << 16, 0b1000)
    assert bus.msi == [(0xFEE00000, 0x71)]


def test_bus_master_off_loses_the_message() -> None:
    dev, bus = make()
    program_vector(dev, 0, 0xFEE00000, 0x80, masked=False)
    msix_ready(dev, master=False)
    dev.event(0)
    assert bus.msi == []
    assert dev.pending == 0
    assert dev.counters.msi_lost == 1
    # masked with master off: pending, then the unmask-time message is lost too
    dev.bar_write(1, MSIX_BAR.entry(0) + MSIX_ENTRY.VectorCtrl.offset, 1)
    dev.event(0)
    assert dev.pending == 1
    dev.bar_write(1, MSIX_BAR.entry(0) + MSIX_ENTRY.VectorCtrl.offset, 0)
    assert dev.pending == 0
    assert bus.msi == []
    assert dev.counters.msi_lost == 2


def test_msix_variant_never_drives_intx() -> None:
    dev, bus = make()
    dev.write_register(REG.IntrMask.offset, 0xFFFFFFFF)
    dev.write_register(REG.IntrStatus.offset, 1)
    msix_ready(dev)
    dev.event(0)
    assert not dev.intx
    assert bus.intx == []


def test_event_vector_range() -> None:
    dev, _ = make(vectors=2)
    with pytest.raises(ValueError):
        dev.event(2)


# -- INTx variant --------------------------------------------------------------------------


def test_intx_event_sets_status_and_level_follows_mask() -> None:
    dev, bus = make(interrupts="intx")
    dev.set_id(0)
    dev.event(1)
    assert not dev.intx  # masked
    assert dev.config_read(CFG.STATUS, 2) & STATUS.INTERRUPT == 0
    dev.write_register(REG.IntrMask.offset, 1)
    assert dev.intx
    assert dev.config_read(CFG.STATUS, 2) & STATUS.INTERRUPT
    assert dev.read_register(REG.IntrStatus.offset) == 1  # read clears and deasserts
    assert not dev.intx
    assert bus.intx == [True, False]
    assert bus.msi == []


def test_intx_status_is_set_to_one_not_ored() -> None:
    dev, _ = make(interrupts="intx")
    dev.write_register(REG.IntrStatus.offset, 0x6)
    dev.event(0)
    assert dev.read_register(REG.IntrStatus.offset) == 1


def test_intx_disable_gates_the_pin_not_the_status() -> None:
    dev, bus = make(interrupts="intx")
    dev.write_register(REG.IntrMask.offset, 0xFFFFFFFF)
    dev.config_write(CFG.COMMAND, CMD.INTX_DISABLE, 2)
    dev.event(0)
    assert not dev.intx
    assert dev.config_read(CFG.STATUS, 2) & STATUS.INTERRUPT
    dev.config_write(CFG.COMMAND, 0, 2)
    assert dev.intx
    dev.write_register(REG.IntrStatus.offset, 0)  # software write also updates the line
    assert not dev.intx
    assert bus.intx == [True, False]


def test_intx_reset_deasserts() -> None:
    dev, bus = make(interrupts="intx")
    dev.write_register(REG.IntrMask.offset, 1)
    dev.event(0)
    dev.reset()
    assert not dev.intx
    assert bus.intx == [True, False]
    assert dev.read_register(REG.IntrMask.offset) == 0


# -- shared memory -------------------------------------------------------------------------


def test_bar2_is_the_given_buffer() -> None:
    buf = bytearray(4096)
    dev = IvshmemPciModel(shm=buf)
    assert dev.shm.size == 4096
    dev.bar_write(BARS.shm.index, 0x100, 0x0102030405060708, 8)
    assert buf[0x100:0x108] == bytes(range(8, 0, -1))
    buf[0x203] = 0x99
    assert dev.bar_read(BARS.shm.index, 0x203, 1) == 0x99
    assert dev.bar_read(BARS.shm.index, 0x201, 4) == 0x990000  # unaligned is fine
    dev.config_write(CFG.BAR2, 0xFFFFFFFF)
    assert dev.config_read(CFG.BAR2) == 0xFFFFF00C


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        IvshmemPciModel(vectors=0)
    with pytest.raises(ValueError):
        IvshmemPciModel(vectors=65)
    with pytest.raises(ValueError):
        IvshmemPciModel(interrupts="msi")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        IvshmemPciModel(shm=bytearray(3000))
    with pytest.raises(ValueError):
        IvshmemPciModel(shm=bytes(4096))
