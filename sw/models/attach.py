"""A model device as a working peer of an ivshmem domain.

:class:`Attached` binds a model (:class:`IvshmemPciModel` doorbell or
:class:`IvshmemFlatModel`) to a connected :class:`ivhw.sw.peer.Peer`:

* the model's shared-memory window is the peer's ``mmap``;
* its own ID is the peer's ID, its known peers are the peer's (re-read after
  every :meth:`Attached.pump`, so joins and departures reach the model before
  any inbound event of the same pump is delivered);
* a doorbell the model accepts rings the real eventfd (``Peer.ring``);
* every inbound ``Doorbell(vector, count)`` is **one** ``model.event(vector)``,
  whatever ``count``: QEMU reads (and clears) the eventfd counter and signals
  once, so coalesced rings are one interrupt; ``count - 1`` is added to
  :attr:`Attached.coalesced`.

Nothing runs in the background: call :meth:`Attached.pump` (or wait on
:meth:`Attached.fileno` with selectors/asyncio, then pump).
"""

from __future__ import annotations

import types
from typing import Any, Generic, TypeVar

from ..peer import Doorbell, Event, Peer
from .flat import IvshmemFlatModel
from .pci import IvshmemPciModel

__all__ = ["Attached", "attach_flat", "attach_pci"]

M = TypeVar("M", IvshmemPciModel, IvshmemFlatModel)


class Attached(Generic[M]):
    """A model bound to a peer connection; the pair behaves as one peer of the domain.

    Build one with :func:`attach_pci` or :func:`attach_flat`, which create the
    model over the peer's shared memory with the peer's vector count.

    Parameters
    ----------
    model : IvshmemPciModel or IvshmemFlatModel
        The device; its ``shm`` must be the peer's memory and its vector count the peer's.
    peer : Peer
        A connected peer (handshake done).

    Attributes
    ----------
    model, peer
        The two ends.
    coalesced : int
        Rings merged into an earlier one of the same eventfd (``count - 1`` summed).
    ring_errors : int
        Doorbells the model accepted but the peer could not deliver (the target
        left between the last pump and the write).

    Raises
    ------
    ValueError
        The model is ivshmem-plain, or its vector count differs from the peer's.
    """

    def __init__(self, model: M, peer: Peer) -> None:
        if isinstance(model, IvshmemPciModel) and not model.doorbell:
            raise ValueError("ivshmem-plain has no server connection; attach a doorbell model")
        if model.vectors != peer.vectors:
            raise ValueError(f"model has {model.vectors} vectors but the peer {peer.vectors}")
        self.model = model
        self.peer = peer
        self.coalesced = 0
        self.ring_errors = 0
        self._user_doorbell = model.on_doorbell
        model.on_doorbell = self._ring
        model.set_id(peer.id)
        self._sync_peers()

    def _ring(self, peer: int, vector: int) -> None:
        try:
            self.peer.ring(peer, vector)
        except (KeyError, ValueError, OSError):
            self.ring_errors += 1
        if self._user_doorbell is not None:
            self._user_doorbell(peer, vector)

    def _sync_peers(self) -> None:
        wanted = {pid: n for pid, n in self.peer.peers.items() if pid != self.peer.id}
        for pid in self.model.peers:
            if pid != self.peer.id and pid not in wanted:
                self.model.remove_peer(pid)
        for pid, vectors in wanted.items():
            self.model.set_peer(pid, vectors)

    def fileno(self) -> int:
        """The peer's epoll fd: readable when :meth:`pump` has something to do."""
        return self.peer.fileno()

    def pump(self, timeout: float | None = 0) -> list[Event]:
        """Take the peer's pending events (waiting up to ``timeout``) into the model.

        Returns the events as ``Peer.poll`` gave them.
        """
        events = self.peer.poll(timeout)
        self._sync_peers()
        for event in events:
            if isinstance(event, Doorbell):
                self.coalesced += event.count - 1
                self.model.event(event.vector)
        return events

    def close(self) -> None:
        """Unbind, release the model's view of the shared memory and close the peer."""
        self.model.on_doorbell = self._user_doorbell
        self.model.shm.release()
        self.peer.close()

    def __enter__(self) -> Attached[M]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()


def attach_pci(peer: Peer, **kwargs: Any) -> Attached[IvshmemPciModel]:
    """An :class:`IvshmemPciModel` doorbell device over ``peer``'s memory and vectors.

    ``kwargs`` go to :class:`IvshmemPciModel` (``interrupts``, ``on_msi``, ``on_intx``,
    ``on_doorbell``); ``shm`` and ``vectors`` come from the peer.
    """
    return Attached(
        IvshmemPciModel(doorbell=True, vectors=peer.vectors, shm=peer.shm, **kwargs), peer
    )


def attach_flat(peer: Peer, **kwargs: Any) -> Attached[IvshmemFlatModel]:
    """An :class:`IvshmemFlatModel` over ``peer``'s memory and vectors.

    ``kwargs`` go to :class:`IvshmemFlatModel` (``on_irq``, ``on_doorbell``). QEMU's
    ivshmem-flat refuses memory whose size differs from its ``shmem-size``;
    here the window simply is the server's memory.
    """
    return Attached(IvshmemFlatModel(vectors=peer.vectors, shm=peer.shm, **kwargs), peer)
