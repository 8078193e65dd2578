"""A model attached to a real peer connection is a working peer of a real domain."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from conftest import StartServer

from ivhw.sw.models import IvshmemPciModel
from ivhw.sw.models.attach import Attached, attach_flat, attach_pci
from ivhw.sw.pcicfg import BARS, CFG, CMD, MSIX_CAP
from ivhw.sw.peer import Doorbell, Peer, PeerLeft
from ivhw.sw.regmap import DOORBELL, FLAT_REGS, MSIX_BAR, MSIX_ENTRY, PCI_REV1_REGS
from ivhw.sw.server import IvshmemServer

VECTORS = 2
SHM_SIZE = 1 << 16


@pytest.fixture
def server(start_server: StartServer) -> IvshmemServer:
    return start_server(shm_size=SHM_SIZE, vectors=VECTORS)


def pump_until(att: Attached, done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the attached model did not get there")
        att.pump(0.05)


def knows(host: Peer, peer: int, timeout: float = 5.0) -> None:
    """Let ``host`` take the server's announcements until it can ring all of ``peer``."""
    deadline = time.monotonic() + timeout
    while host.peers.get(peer) != VECTORS:
        if time.monotonic() > deadline:
            raise TimeoutError(f"peer {peer} never fully announced")
        host.poll(0.05)


def enable_msix(dev: IvshmemPciModel, vector: int, data: int) -> None:
    base = MSIX_BAR.entry(vector)
    dev.bar_write(BARS.msix.index, base + MSIX_ENTRY.MsgAddrLo.offset, 0xFEE00000)
    dev.bar_write(BARS.msix.index, base + MSIX_ENTRY.MsgData.offset, data)
    dev.bar_write(BARS.msix.index, base + MSIX_ENTRY.VectorCtrl.offset, 0)
    dev.config_write(CFG.COMMAND, CMD.MEMORY | CMD.MASTER, 2)
    dev.config_write(MSIX_CAP.control_offset, MSIX_CAP.ENABLE, 2)


def test_pci_model_as_a_peer(server: IvshmemServer) -> None:
    host = Peer(server.socket_path, vectors=VECTORS)
    msis: list[tuple[int, int]] = []
    device = Peer(server.socket_path, vectors=VECTORS)
    with host, attach_pci(device, on_msi=lambda a, d: msis.append((a, d))) as att:
        knows(host, device.id)
        dev = att.model
        assert dev.read_register(PCI_REV1_REGS.IVPosition.offset) == att.peer.id
        assert dev.peers == {att.peer.id: VECTORS, host.id: VECTORS}

        # inbound: the host rings the device's vector 1
        enable_msix(dev, 1, 0x41)
        host.ring(att.peer.id, 1)
        pump_until(att, lambda: bool(msis))
        assert msis == [(0xFEE00000, 0x41)]

        # outbound: the device's doorbell rings the host's real eventfd
        dev.write_register(PCI_REV1_REGS.Doorbell.offset, DOORBELL.pack(host.id, 1))
        assert host.wait(Doorbell, timeout=5) == Doorbell(1, 1)

        # shared memory is the same memory
        dev.bar_write(BARS.shm.index, 0x100, 0xCAFEF00D)
        assert host.shm[0x100:0x104] == (0xCAFEF00D).to_bytes(4, "little")
        host.shm[0x200] = 0x77
        assert dev.shm_read(0x200, 1) == 0x77


def test_coalesced_rings_are_one_event(server: IvshmemServer) -> None:
    host = Peer(server.socket_path, vectors=VECTORS)
    with host, attach_pci(Peer(server.socket_path, vectors=VECTORS)) as att:
        knows(host, att.peer.id)
        enable_msix(att.model, 0, 0x40)
        for _ in range(3):
            host.ring(att.peer.id, 0)
        pump_until(att, lambda: att.model.counters.events > 0)
        att.pump(0.05)
        assert att.model.counters.events == 1
        assert att.model.counters.msi_sent == 1
        assert att.coalesced == 2


def test_peer_leaving_and_joining_reach_the_model(server: IvshmemServer) -> None:
    with attach_pci(Peer(server.socket_path, vectors=VECTORS)) as att:
        late = Peer(server.socket_path, vectors=VECTORS)
        pump_until(att, lambda: late.id in att.model.peers)
        assert att.model.peers[late.id] == VECTORS
        late_id = late.id
        late.close()
        pump_until(att, lambda: late_id not in att.model.peers)
        att.model.write_register(PCI_REV1_REGS.Doorbell.offset, DOORBELL.pack(late_id, 0))
        assert att.model.counters.bad_peer == 1
        assert att.ring_errors == 0


def test_pci_intx_model_as_a_peer(server: IvshmemServer) -> None:
    host = Peer(server.socket_path, vectors=VECTORS)
    levels: list[bool] = []
    device = Peer(server.socket_path, vectors=VECTORS)
    with host, attach_pci(device, interrupts="intx", on_intx=levels.append) as att:
        knows(host, device.id)
        att.model.write_register(PCI_REV1_REGS.IntrMask.offset, 1)
        host.ring(att.peer.id, 0)
        pump_until(att, lambda: att.model.intx)
        assert att.model.read_register(PCI_REV1_REGS.IntrStatus.offset) == 1
        assert levels == [True, False]


def test_flat_model_as_a_peer(server: IvshmemServer) -> None:
    host = Peer(server.socket_path, vectors=VECTORS)
    irqs: list[None] = []
    device = Peer(server.socket_path, vectors=VECTORS)
    with host, attach_flat(device, on_irq=lambda: irqs.append(None)) as att:
        knows(host, device.id)
        dev = att.model
        assert dev.read_register(FLAT_REGS.IVPOSITION.offset) == att.peer.id
        host.ring(att.peer.id, 1)
        pump_until(att, lambda: bool(irqs))
        host.ring(att.peer.id, 0)
        pump_until(att, lambda: len(irqs) == 2)
        assert dev.counters.irq_pulses == 2
        dev.write_register(FLAT_REGS.DOORBELL.offset, DOORBELL.pack(host.id, 0))
        assert host.wait(Doorbell, timeout=5) == Doorbell(0, 1)
        dev.write_register(FLAT_REGS.DOORBELL.offset, DOORBELL.pack(host.id, VECTORS))
        assert dev.counters.bad_vector == 1


def test_self_ring_through_the_real_eventfd(server: IvshmemServer) -> None:
    irqs: list[None] = []
    device = Peer(server.socket_path, vectors=VECTORS)
    with attach_flat(device, on_irq=lambda: irqs.append(None)) as att:
        att.model.write_register(FLAT_REGS.DOORBELL.offset, DOORBELL.pack(att.peer.id, 1))
        pump_until(att, lambda: bool(irqs))


def test_attach_refuses_mismatches(server: IvshmemServer) -> None:
    with Peer(server.socket_path, vectors=VECTORS) as peer:
        with pytest.raises(ValueError, match="plain"):
            Attached(IvshmemPciModel(doorbell=False, shm=peer.shm), peer)
        with pytest.raises(ValueError, match="vectors"):
            Attached(IvshmemPciModel(vectors=1, shm=peer.shm), peer)


def test_host_sees_model_leave(server: IvshmemServer) -> None:
    host = Peer(server.socket_path, vectors=VECTORS)
    with host:
        att = attach_flat(Peer(server.socket_path, vectors=VECTORS))
        gone = att.peer.id
        att.close()
        assert host.wait(PeerLeft, timeout=5) == PeerLeft(gone)
