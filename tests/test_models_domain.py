"""The domain model on its own: table, routing and drops, merge of sources, device models."""

from __future__ import annotations

import re

import pytest

from ivhw.sw.models.domain import Domain
from ivhw.sw.regmap import DOORBELL, FLAT_REGS

__all__: list[str] = []

PORTS = [(3, 2), (10, 1), (0xFFFF, 64)]


def test_table_and_queries() -> None:
    domain = Domain(PORTS, shm_size=64)
    assert [domain.query(peer) for peer in (3, 10, 0xFFFF, 0, 4)] == [2, 1, 64, 0, 0]
    assert domain.peers(1) == {3: 2, 10: 1, 0xFFFF: 64}
    assert domain.index_of(10) == 1 and domain.index_of(11) is None
    with pytest.raises(ValueError, match=re.escape("port must be 0..2, not 3")):
        domain.peers(3)


def test_routing_and_drops_counted() -> None:
    domain = Domain(PORTS)
    assert domain.ring(0, DOORBELL.pack(10, 0)) == 1
    assert domain.ring(0, DOORBELL.pack(3, 1)) == 0  # itself
    assert domain.ring(1, DOORBELL.pack(10, 1)) is None  # port 10 has one vector
    assert domain.ring(1, DOORBELL.pack(4, 0)) is None  # nobody is 4
    c = domain.counters
    assert (c.rings, c.bad_vector, c.bad_peer) == (2, 1, 1)
    assert domain.in_flight(1) == 1 and domain.in_flight(0) == 1
    assert not domain.take_event(1, 1)  # never rung
    assert domain.take_event(1, 0) and domain.in_flight(1) == 0
    assert not domain.take_event(1, 0)  # taken once only


def test_sources_merge_in_any_order_but_keep_their_own() -> None:
    domain = Domain(PORTS)
    target = 2
    for vector in (1, 2):
        domain.ring(0, DOORBELL.pack(0xFFFF, vector))
    for vector in (1, 3):
        domain.ring(1, DOORBELL.pack(0xFFFF, vector))
    # 1 (either source), then 3 is only possible if the first 1 was port 1's.
    assert domain.take_event(target, 1)
    assert domain.take_event(target, 3)
    assert not domain.take_event(target, 3)
    assert domain.take_event(target, 1) and domain.take_event(target, 2)
    assert domain.in_flight(target) == 0
    # One source's order holds: 2 before 1 is not a merge of [1, 2].
    domain.ring(0, DOORBELL.pack(0xFFFF, 1))
    domain.ring(0, DOORBELL.pack(0xFFFF, 2))
    assert not domain.take_event(target, 2)
    assert domain.expected_events(target) == [[1, 2], [], []]


def test_memory_byte_lanes() -> None:
    domain = Domain(PORTS, shm_size=64)
    domain.mem_access(1, True, 0x11223344)
    domain.mem_access(1, True, 0xAA00BB00, sel=0b1010)
    assert domain.mem_access(1, False) == 0xAA22BB44
    assert domain.shm.read(4, 4) == 0xAA22BB44


def test_flat_models_ring_each_other_and_share_memory() -> None:
    domain = Domain([(1, 2), (2, 1)], shm_size=256)
    pulses = {0: 0, 1: 0}
    a = domain.flat(0, on_irq=lambda: pulses.__setitem__(0, pulses[0] + 1))
    b = domain.flat(1, on_irq=lambda: pulses.__setitem__(1, pulses[1] + 1))
    assert a.read_register(FLAT_REGS.IVPOSITION.offset) == 1
    assert b.peers == {1: 2, 2: 1}
    a.shm_write(16, 0xCAFE)
    assert b.shm_read(16) == 0xCAFE
    a.write_register(FLAT_REGS.DOORBELL.offset, DOORBELL.pack(2, 0))
    b.write_register(FLAT_REGS.DOORBELL.offset, DOORBELL.pack(1, 1))
    b.write_register(FLAT_REGS.DOORBELL.offset, DOORBELL.pack(1, 2))  # refused by b itself
    assert pulses == {0: 1, 1: 1}
    assert b.counters.bad_vector == 1 and domain.counters.rings == 2
    with pytest.raises(ValueError, match="already has a device model"):
        domain.flat(0)
