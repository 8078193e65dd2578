"""What every ivshmem model shares: its counters, its peer table, its shared memory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..regmap import DOORBELL, MAX_VECTORS

__all__ = ["Counters", "DoorbellCallback", "HasPeers", "PeerTable", "SharedMemory"]

#: ``on_doorbell(peer, vector)``: the device rings ``peer`` on ``vector``
DoorbellCallback = Callable[[int, int], None]


@dataclass
class Counters:
    """Event counters of a model (a test compares them with the HDL's).

    Attributes
    ----------
    rings : int
        Doorbell writes passed to ``on_doorbell``.
    bad_peer : int
        Doorbell writes to a peer not in the peer table (ignored).
    bad_vector : int
        Doorbell writes to a vector the peer does not have (ignored).
    bad_access : int
        Register accesses QEMU rejects (unaligned for their size): read 0, write dropped.
    events : int
        Inbound events (one per readable own eventfd, whatever its counter).
    irq_pulses : int
        ivshmem-flat: pulses of the IRQ output.
    msi_sent : int
        PCI: MSI-X messages emitted through ``on_msi``.
    msi_lost : int
        PCI: messages due while Bus Master Enable was off (QEMU drops them on the bus).
    pending_set : int
        PCI: events that set a PBA bit (vector or function masked).
    events_dropped : int
        PCI doorbell, MSI-X variant: events while MSI-X was disabled (QEMU 7.2 drops them);
        revision 2: events while Interrupt Control was off or delivery impossible.
    msi_masked : int
        Revision 2: events for a masked vector (no pending bits: dropped).
    intx_pulses : int
        Revision 2, INTx: pulses of the INTx line.
    state_changes : int
        Revision 2: State writes that changed the state (each rings every other peer).
    protected_writes : int
        Revision 2: shared-memory writes dropped for the section they hit (the State
        Table, another peer's output section).
    """

    rings: int = 0
    bad_peer: int = 0
    bad_vector: int = 0
    bad_access: int = 0
    events: int = 0
    irq_pulses: int = 0
    msi_sent: int = 0
    msi_lost: int = 0
    pending_set: int = 0
    events_dropped: int = 0
    msi_masked: int = 0
    intx_pulses: int = 0
    state_changes: int = 0
    protected_writes: int = 0


class PeerTable:
    """Own ID, own vector count and the vector counts of the known peers.

    The own ID, once set, is a known peer with the own vector count: like
    QEMU, a device may ring itself.
    """

    def __init__(self, vectors: int) -> None:
        if not isinstance(vectors, int) or not 1 <= vectors <= MAX_VECTORS:
            raise ValueError(f"vectors must be 1..{MAX_VECTORS}, not {vectors!r}")
        self.vectors = vectors
        self.id: int | None = None
        self._peers: dict[int, int] = {}

    @staticmethod
    def _check_id(peer: int) -> None:
        if not isinstance(peer, int) or not 0 <= peer <= 0xFFFF:
            raise ValueError(f"peer ID must be 0..65535, not {peer!r}")

    def set_id(self, peer: int) -> None:
        """Take ``peer`` as the own ID (the server's second message)."""
        self._check_id(peer)
        if self.id is not None:
            self._peers.pop(self.id, None)
        self.id = peer
        self._peers[peer] = self.vectors

    def set_peer(self, peer: int, vectors: int) -> None:
        """Know ``peer`` with ``vectors`` eventfds (0 forgets it)."""
        self._check_id(peer)
        if not 0 <= vectors <= MAX_VECTORS:
            raise ValueError(f"a peer has 0..{MAX_VECTORS} vectors, not {vectors!r}")
        if peer == self.id:
            raise ValueError(f"peer {peer} is the own ID; its vectors are fixed")
        if vectors:
            self._peers[peer] = vectors
        else:
            self._peers.pop(peer, None)

    def remove_peer(self, peer: int) -> None:
        """Forget ``peer`` (it disconnected)."""
        self.set_peer(peer, 0)

    @property
    def peers(self) -> dict[int, int]:
        """A copy of the table: peer ID -> vector count, the own ID included."""
        return dict(self._peers)

    def decode(self, word: int, counters: Counters) -> tuple[int, int] | None:
        """``(peer, vector)`` a doorbell ``word`` rings, or ``None`` (counted) if nothing.

        ``word`` holds the Doorbell register's writable bits (a device that decodes
        fewer vector bits declares a narrower field, so the rest arrive as 0).
        """
        peer, vector = DOORBELL.unpack(word)
        count = self._peers.get(peer)
        if count is None:
            counters.bad_peer += 1
            return None
        if vector >= count:
            counters.bad_vector += 1
            return None
        counters.rings += 1
        return peer, vector


class HasPeers:
    """The peer side of a device model: own vectors, own ID and the known peers (``_table``)."""

    _table: PeerTable

    def _need_server(self) -> None:
        """Raise ``ValueError`` if the device has no server (ivshmem-plain); here it has."""

    @property
    def vectors(self) -> int:
        """Own vector count (the MSI-X table size on PCI)."""
        return self._table.vectors

    @property
    def id(self) -> int | None:
        """Own peer ID, ``None`` until :meth:`set_id`."""
        return self._table.id

    @property
    def peers(self) -> dict[int, int]:
        """Known peers: ID -> vector count (the own ID included once set)."""
        return self._table.peers

    def set_id(self, peer: int) -> None:
        """Take the own peer ID the server assigned (IVPosition)."""
        self._need_server()
        self._table.set_id(peer)

    def set_peer(self, peer: int, vectors: int) -> None:
        """Know ``peer`` with ``vectors`` vectors (0 forgets it)."""
        self._need_server()
        self._table.set_peer(peer, vectors)

    def remove_peer(self, peer: int) -> None:
        """Forget ``peer`` (it disconnected)."""
        self._need_server()
        self._table.remove_peer(peer)


class SharedMemory:
    """The shared-memory window: byte-addressable RAM over a caller's buffer.

    Parameters
    ----------
    shm : buffer or None
        Writable buffer (``mmap``, ``bytearray``, ``memoryview``); ``None``
        allocates private zeroed memory of ``size`` bytes.
    size : int or None
        Window size, a power of two >= 16; default ``len(shm)``.
    default : int
        Size used when neither is given.

    Raises
    ------
    ValueError
        The size is not a power of two or exceeds the buffer.
    """

    def __init__(self, shm: object | None, size: int | None, default: int) -> None:
        if shm is None:
            size = default if size is None else size
            self._check(size)
            self.view = memoryview(bytearray(size))
        else:
            base = memoryview(shm)  # type: ignore[arg-type]
            view = base.cast("B")
            base.release()
            if view.readonly:
                view.release()
                raise ValueError("the shared memory buffer must be writable")
            size = len(view) if size is None else size
            self._check(size)
            if size > len(view):
                length = len(view)
                view.release()
                raise ValueError(f"window of {size} bytes exceeds the {length}-byte buffer")
            self.view = view[:size]
            view.release()
        self.size = size

    @staticmethod
    def _check(size: int) -> None:
        if not isinstance(size, int) or size < 16 or size & (size - 1):
            raise ValueError(f"shared memory size must be a power of two >= 16, not {size!r}")

    def release(self) -> None:
        """Drop the view, so that the buffer (e.g. an ``mmap``) can be closed; no access after."""
        self.view.release()

    def _span(self, offset: int, size: int) -> slice:
        if size <= 0 or offset < 0 or offset + size > self.size:
            raise ValueError(
                f"{size} bytes at {offset:#x} are outside the {self.size}-byte shared memory"
            )
        return slice(offset, offset + size)

    def read(self, offset: int, size: int = 4) -> int:
        """``size`` bytes at ``offset``, little-endian (any alignment)."""
        return int.from_bytes(self.view[self._span(offset, size)], "little")

    def write(self, offset: int, data: int, size: int = 4) -> None:
        """Store ``data`` as ``size`` little-endian bytes at ``offset``."""
        span = self._span(offset, size)
        self.view[span] = data.to_bytes(size, "little")
