"""Real QEMU 7.2 ``ivshmem-doorbell`` devices in a domain run by OUR server and peers.

Every QEMU is driven through qtest (``ivhw.sw.qtest``): the test is its firmware
and driver. A doorbell rung into QEMU is seen as an MSI-X message landing in
guest RAM; one rung by QEMU is seen by the host peer as a ``Doorbell`` event.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from qemu_domain import Domain
from qemu_model_peer import ModelPeer
from support import require_tool

from ivhw.sw.peer import Doorbell, Peer, PeerJoined, PeerLeft, PeerVector
from ivhw.sw.qtest import QemuIvshmem

pytestmark = pytest.mark.qemu

VECTORS = 4
SHM_SIZE = 1 << 20
TIMEOUT = 5.0


@pytest.fixture
def domain() -> Iterator[Domain]:
    require_tool("qemu-system-x86_64")
    with Domain(vectors=VECTORS, shm_size=SHM_SIZE) as dom:
        yield dom


def learn(peer: Peer, other: int) -> None:
    """Wait until ``peer`` has every vector of peer ``other`` (it can ring it on any)."""
    if peer.peers.get(other) != VECTORS:
        wanted = PeerVector(other, VECTORS - 1)
        peer.wait(lambda e: e == wanted, timeout=TIMEOUT)


def doorbells(peer: Peer, timeout: float) -> list[Doorbell]:
    """The doorbells the host peer got within ``timeout`` (membership events dropped)."""
    return [e for e in peer.poll(timeout) if isinstance(e, Doorbell)]


def expect_doorbell(peer: Peer, vector: int) -> None:
    """The host peer gets a doorbell on ``vector`` (and on no other vector meanwhile)."""
    event = peer.wait(Doorbell, timeout=TIMEOUT)
    assert isinstance(event, Doorbell) and event.vector == vector, event


def expect_msix(vm: QemuIvshmem, vector: int) -> None:
    """QEMU delivers MSI-X ``vector`` and nothing else."""
    assert vm.wait_msix(vector, TIMEOUT), f"QEMU peer did not get MSI-X vector {vector}"
    vm.command("endianness")  # one more main-loop turn for anything spurious
    others = vm.fired_vectors()
    assert not others, f"spurious MSI-X vectors {sorted(others)} besides {vector}"


def test_ids(domain: Domain) -> None:
    host = domain.peer()
    a = domain.qemu()
    b = domain.qemu()
    assert [host.id, a.ivposition, b.ivposition] == domain.server.peer_ids
    assert len({host.id, a.ivposition, b.ivposition}) == 3
    for vm in (a, b):
        assert host.wait(PeerJoined, timeout=TIMEOUT) == PeerJoined(vm.ivposition)
    host.poll(0.05)
    assert set(host.peers) == {a.ivposition, b.ivposition}
    assert all(count == VECTORS for count in host.peers.values())
    assert host.shm_size == a.shm_bar_size == b.shm_bar_size == SHM_SIZE


def test_doorbells_every_direction_every_vector(domain: Domain) -> None:
    host = domain.peer()
    a = domain.qemu()
    b = domain.qemu()
    ids = {"host": host.id, "a": a.ivposition, "b": b.ivposition}
    learn(host, ids["a"])
    learn(host, ids["b"])
    for vector in range(VECTORS):
        # host -> QEMU
        for vm in (a, b):
            host.ring(vm.ivposition, vector)
            expect_msix(vm, vector)
        # QEMU -> host
        for vm in (a, b):
            vm.ring(ids["host"], vector)
            expect_doorbell(host, vector)
        # QEMU -> QEMU, both ways, and QEMU -> itself
        for src, dst in itertools.product((a, b), repeat=2):
            src.ring(dst.ivposition, vector)
            expect_msix(dst, vector)
            if dst is not src:
                assert not src.fired_vectors(), "the ringing side got an interrupt"
        # host -> host through the server's own eventfds
        host.ring(host.id, vector)
        expect_doorbell(host, vector)
    assert doorbells(host, 0.05) == []


def test_doorbell_to_nobody_is_ignored(domain: Domain) -> None:
    host = domain.peer()
    a = domain.qemu()
    a.ring(0xFFFF, 0)  # no such peer
    a.ring(host.id, VECTORS)  # no such vector
    a.ring(host.id, 0xFF)
    assert doorbells(host, 0.1) == []
    a.ring(host.id, 1)  # and the device still works
    expect_doorbell(host, 1)


def test_shared_memory_seen_by_all(domain: Domain) -> None:
    host = domain.peer()
    a = domain.qemu()
    b = domain.qemu()
    assert host.shm is not None
    a.shm_write(0x40, b"written by QEMU a through BAR2")
    assert bytes(host.shm[0x40 : 0x40 + 30]) == b"written by QEMU a through BAR2"
    assert b.shm_read(0x40, 30) == b"written by QEMU a through BAR2"
    host.shm[SHM_SIZE - 32 : SHM_SIZE] = b"written by the host peer's mmap!"
    assert a.shm_read(SHM_SIZE - 32, 32) == b"written by the host peer's mmap!"
    assert b.shm_read(SHM_SIZE - 32, 32) == b"written by the host peer's mmap!"
    b.bar_write(2, 0x1000, 0x0123_4567_89AB_CDEF, 8)
    assert host.shm[0x1000:0x1008] == (0x0123_4567_89AB_CDEF).to_bytes(8, "little")
    assert a.bar_read(2, 0x1000, 8) == 0x0123_4567_89AB_CDEF


def test_killed_qemu_leaves_and_the_rest_continues(domain: Domain) -> None:
    host = domain.peer()
    a = domain.qemu()
    b = domain.qemu()
    a_id, b_id = a.ivposition, b.ivposition
    learn(host, a_id)
    learn(host, b_id)
    b.kill()
    assert host.wait(PeerLeft, timeout=TIMEOUT) == PeerLeft(b_id)
    domain.wait_peer_count(2)
    assert b_id not in host.peers
    with pytest.raises(KeyError):
        host.ring(b_id, 0)
    # QEMU a learned the departure too: ringing the dead peer is ignored
    a.ring(b_id, 0)
    a.ring(host.id, 2)
    expect_doorbell(host, 2)
    host.ring(a_id, 3)
    expect_msix(a, 3)
    a.shm_write(0, b"still shared")
    assert bytes(host.shm[0:12]) == b"still shared"  # type: ignore[index]


def test_late_joiner_learns_existing_peers(domain: Domain) -> None:
    host = domain.peer()
    a = domain.qemu()
    a_id = a.ivposition
    a.shm_write(0x80, b"before the late joiner")
    host.wait(PeerJoined, timeout=TIMEOUT)
    late = domain.qemu()
    late_id = late.ivposition
    assert late_id not in (host.id, a_id)
    assert host.wait(PeerJoined, timeout=TIMEOUT) == PeerJoined(late_id)
    learn(host, late_id)
    # the late joiner can ring every peer that was there before it ...
    late.ring(host.id, 1)
    expect_doorbell(host, 1)
    late.ring(a_id, 0)
    expect_msix(a, 0)
    # ... and they can ring it
    a.ring(late_id, VECTORS - 1)
    expect_msix(late, VECTORS - 1)
    host.ring(late_id, 2)
    expect_msix(late, 2)
    assert late.shm_read(0x80, 22) == b"before the late joiner"


def test_msix_disabled_drops_the_event(domain: Domain) -> None:
    """QEMU 7.2: with MSI-X disabled an event is lost (no message, no PBA bit)."""
    host = domain.peer()
    a = domain.qemu()
    learn(host, a.ivposition)
    a.msix_control(enable=False)
    host.ring(a.ivposition, 0)
    a.command("endianness")
    assert not a.wait_msix(0, 0.1)
    assert not a.msix_pending(0)
    assert a.reg_read("IntrStatus") == 0
    a.msix_control(enable=True)
    assert not a.wait_msix(0, 0.1), "a dropped event is not delivered later"
    host.ring(a.ivposition, 0)
    expect_msix(a, 0)


def test_model_peer_with_qemu_and_host(domain: Domain) -> None:
    """Our PCI model joins the domain as a peer next to real QEMU and a host peer."""
    host = domain.peer()
    model = ModelPeer(str(domain.socket_path), VECTORS)
    try:
        a = domain.qemu()
        a_id, m_id = a.ivposition, model.peer.id
        assert model.id == m_id  # the model's IVPosition is the ID the server gave
        assert sorted(domain.server.peer_ids) == sorted({host.id, m_id, a_id})
        model.wait_peer(a_id)
        learn(host, a_id)
        learn(host, m_id)
        for vector in range(VECTORS):
            model.ring(a_id, vector)  # model -> QEMU
            expect_msix(a, vector)
            a.ring(m_id, vector)  # QEMU -> model
            assert model.wait_message(vector), f"model got no MSI-X {vector} from QEMU"
            model.ring(host.id, vector)  # model -> host
            expect_doorbell(host, vector)
            host.ring(m_id, vector)  # host -> model
            assert model.wait_message(vector), f"model got no MSI-X {vector} from the host"
        assert model.messages == []
        # one shared memory behind QEMU's BAR2, the model's BAR2 and the host's mmap
        model.shm_write(0x3000, 0x1122_3344_5566_7788)
        assert a.bar_read(2, 0x3000, 8) == 0x1122_3344_5566_7788
        a.bar_write(2, 0x3008, 0x99AA_BBCC_DDEE_FF00, 8)
        assert model.shm_read(0x3008) == 0x99AA_BBCC_DDEE_FF00
        assert host.shm[0x3000:0x3010] == (  # type: ignore[index]
            (0x1122_3344_5566_7788).to_bytes(8, "little")
            + (0x99AA_BBCC_DDEE_FF00).to_bytes(8, "little")
        )
        # QEMU dies: the model forgets it, ringing it is ignored, the rest goes on
        a.kill()
        seen: list[object] = []
        for _ in range(100):
            seen += model.pump(0.05)
            if PeerLeft(a_id) in seen:
                break
        assert PeerLeft(a_id) in seen
        assert a_id not in model.model.peers
        bad_peer = model.model.counters.bad_peer
        model.ring(a_id, 0)
        assert model.model.counters.bad_peer == bad_peer + 1
        model.ring(host.id, 1)
        expect_doorbell(host, 1)
    finally:
        model.close()
