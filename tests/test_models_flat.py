"""The ivshmem-flat model against SPEC section 3 and QEMU's access rules."""

from __future__ import annotations

import mmap

import pytest

from ivhw.sw.models import IvshmemFlatModel
from ivhw.sw.models.registers import access_of_mask
from ivhw.sw.regmap import DOORBELL, FLAT_REGS, MAX_VECTORS

INTMASK = FLAT_REGS.INTMASK.offset
INTSTATUS = FLAT_REGS.INTSTATUS.offset
IVPOSITION = FLAT_REGS.IVPOSITION.offset
DB = FLAT_REGS.DOORBELL.offset


class Recorder:
    def __init__(self) -> None:
        self.irqs = 0
        self.rings: list[tuple[int, int]] = []

    def irq(self) -> None:
        self.irqs += 1

    def ring(self, peer: int, vector: int) -> None:
        self.rings.append((peer, vector))


def make(vectors: int = 2, **kwargs: object) -> tuple[IvshmemFlatModel, Recorder]:
    rec = Recorder()
    dev = IvshmemFlatModel(
        vectors=vectors, shm_size=4096, on_irq=rec.irq, on_doorbell=rec.ring, **kwargs
    )
    return dev, rec


def test_reset_values_from_regmap() -> None:
    dev, _ = make()
    for reg in FLAT_REGS:
        assert dev.read_register(reg.offset) == reg.reset, reg.name


def test_ivposition_after_id() -> None:
    dev, _ = make()
    dev.set_id(7)
    assert dev.read_register(IVPOSITION) == 7
    assert dev.id == 7
    assert dev.peers == {7: 2}


def test_reserved_registers_read_zero_ignore_writes() -> None:
    dev, rec = make()
    dev.set_id(3)
    for off in (INTMASK, INTSTATUS, IVPOSITION):
        dev.write_register(off, 0xFFFFFFFF)
    assert dev.read_register(INTMASK) == 0
    assert dev.read_register(INTSTATUS) == 0
    assert dev.read_register(IVPOSITION) == 3
    assert rec.rings == []
    assert dev.read_register(DB) == 0


def test_irq_pulses_once_per_event_any_vector() -> None:
    dev, rec = make(vectors=4)
    for v in (0, 3, 3, 1):
        dev.event(v)
    assert rec.irqs == 4
    assert dev.counters.irq_pulses == 4
    assert dev.counters.events == 4
    # reading the registers does not acknowledge anything: the IRQ is a pulse
    assert dev.read_register(INTSTATUS) == 0


def test_event_out_of_range_is_a_caller_error() -> None:
    dev, _ = make(vectors=2)
    with pytest.raises(ValueError, match="vector"):
        dev.event(2)


def test_doorbell_good_peer_and_vector() -> None:
    dev, rec = make()
    dev.set_id(1)
    dev.set_peer(5, 3)
    dev.write_register(DB, DOORBELL.pack(5, 2))
    dev.write_register(DB, DOORBELL.pack(1, 1))  # ringing itself is allowed
    assert rec.rings == [(5, 2), (1, 1)]
    assert dev.counters.rings == 2


def test_doorbell_unknown_peer_and_bad_vector_counted() -> None:
    dev, rec = make()
    dev.set_id(1)
    dev.set_peer(5, 3)
    dev.write_register(DB, DOORBELL.pack(6, 0))
    dev.write_register(DB, DOORBELL.pack(5, 3))
    # flat decodes all 16 vector bits: 0x0102 is vector 258, not 2
    dev.write_register(DB, DOORBELL.pack(5, 0x0102))
    assert rec.rings == []
    assert dev.counters.bad_peer == 1
    assert dev.counters.bad_vector == 2


def test_peer_leaves() -> None:
    dev, rec = make()
    dev.set_peer(5, 1)
    dev.remove_peer(5)
    dev.write_register(DB, DOORBELL.pack(5, 0))
    assert rec.rings == []
    assert dev.counters.bad_peer == 1


def test_sub_word_reads() -> None:
    dev, _ = make()
    dev.set_id(0x1234)
    assert dev.read(IVPOSITION, 1) == 0x34
    assert dev.read(IVPOSITION, 2) == 0x1234
    # the handler is called at the unaligned offset itself: no register there
    assert dev.read(IVPOSITION + 1, 1) == 0
    assert dev.read(IVPOSITION + 2, 2) == 0
    assert dev.counters.bad_access == 0


def test_unaligned_access_is_invalid() -> None:
    dev, rec = make()
    dev.set_id(0x1234)
    dev.set_peer(0, 1)
    assert dev.read(IVPOSITION + 1, 2) == 0
    assert dev.read(IVPOSITION + 2, 4) == 0
    dev.write(IVPOSITION - 2, 0, 4)
    assert dev.counters.bad_access == 3
    assert rec.rings == []


def test_byte_write_reaches_doorbell_only_at_its_offset() -> None:
    dev, rec = make()
    dev.set_id(0)
    dev.write(DB, 1, 1)  # zero-extended: peer 0, vector 1
    dev.write(DB + 2, 0, 2)  # offset 0Eh is no register in QEMU's switch
    dev.write(DB + 1, 0, 1)
    assert rec.rings == [(0, 1)]


def test_eight_byte_access_is_two_dwords() -> None:
    dev, rec = make()
    dev.set_id(9)
    assert dev.read(IVPOSITION, 8) == 9
    dev.write(IVPOSITION, DOORBELL.pack(9, 1) << 32 | 0xFFFF, 8)
    assert rec.rings == [(9, 1)]


@pytest.mark.parametrize(
    ("mask", "expected"),
    [(0b0001, (0, 1)), (0b1000, (3, 1)), (0b1100, (2, 2)), (0b1111, (0, 4)),
     (0b0110, None), (0b0111, None), (0b0101, None), (0, None)],
)  # fmt: skip
def test_byte_enable_masks(mask: int, expected: tuple[int, int] | None) -> None:
    assert access_of_mask(mask) == expected


def test_write_register_byte_enables() -> None:
    dev, rec = make()
    dev.set_id(0)
    dev.set_peer(2, 4)
    dev.write_register(DB, DOORBELL.pack(2, 3), 0b1111)
    dev.write_register(DB, 0x0000_0001, 0b0001)  # byte 0 only: peer 0 vector 1
    dev.write_register(DB, 0x0002_0000, 0b1100)  # halfword at 0Eh: no register
    dev.write_register(DB, 0x0002_0003, 0b0111)  # no such CPU access
    assert rec.rings == [(2, 3), (0, 1)]
    assert dev.counters.bad_access == 1


def test_window_bounds_and_sizes_are_caller_errors() -> None:
    dev, _ = make()
    with pytest.raises(ValueError):
        dev.read(FLAT_REGS.size, 4)
    with pytest.raises(ValueError):
        dev.read(0, 3)
    with pytest.raises(ValueError):
        dev.write(0, 1 << 32, 4)


def test_shared_memory_window_is_the_given_buffer() -> None:
    buf = mmap.mmap(-1, 8192)
    dev = IvshmemFlatModel(shm=buf)
    assert dev.shm.size == 8192
    dev.shm_write(0x10, 0xDEADBEEF)
    assert buf[0x10:0x14] == b"\xef\xbe\xad\xde"
    buf[0x21] = 0x5A
    assert dev.shm_read(0x21, 1) == 0x5A
    assert dev.shm_read(0x1F, 4) == 0x005A0000  # unaligned is fine in RAM
    with pytest.raises(ValueError):
        dev.shm_read(8190, 4)


def test_default_shm_and_validation() -> None:
    assert IvshmemFlatModel().shm.size == 4 << 20
    with pytest.raises(ValueError):
        IvshmemFlatModel(shm_size=3000)
    with pytest.raises(ValueError):
        IvshmemFlatModel(shm=bytearray(1024), shm_size=2048)
    with pytest.raises(ValueError):
        IvshmemFlatModel(vectors=MAX_VECTORS + 1)
    with pytest.raises(ValueError):
        IvshmemFlatModel(vectors=0)
    assert IvshmemFlatModel(vectors=MAX_VECTORS, shm_size=4096).vectors == MAX_VECTORS
