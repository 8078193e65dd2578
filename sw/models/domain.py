"""Model of the on-chip ivshmem domain (``ivhw.hdl.domain``): the server and the wires.

An on-chip domain is what an ivshmem server and its eventfds are to VMs, for
devices on one chip: a fixed set of ports, each with a peer ID and a vector
count; the shared memory; and doorbell routing. The model is the oracle of the
HDL:

* every port sees the same peer table (its own entry included, since a device may
  ring itself): :meth:`Domain.query`;
* a doorbell word from a port is decoded against that table
  (:meth:`PeerTable.decode`, as a device model does) and either dropped and counted
  (``counters.bad_peer`` / ``counters.bad_vector``) or queued for the target port;
* events reach a target port in an order that keeps the order of each source but
  may interleave sources in any way (the hardware's round-robin decides, and the
  model does not fix it): :meth:`Domain.take_event` accepts an event if some
  interleaving explains it, tracking every interleaving still possible;
* memory accesses apply in the order the domain grants them, one at a time
  (:meth:`Domain.mem_access`), on a :class:`SharedMemory`.

Device models join with :meth:`Domain.flat`: an :class:`IvshmemFlatModel` over the
domain's memory, with the port's ID and the table, whose doorbells the domain
routes to the target's model at once (``event(vector)``: one IRQ pulse).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..protocol import MAX_PEER_ID
from ..regmap import DOORBELL, MAX_VECTORS
from .common import Counters, PeerTable, SharedMemory
from .flat import IvshmemFlatModel

__all__ = ["DEFAULT_SHM_SIZE", "Domain", "check_ports"]

#: Shared memory of a domain when not said: small enough for on-chip block RAM.
DEFAULT_SHM_SIZE = 4096


def check_ports(ports: object) -> tuple[tuple[int, int], ...]:
    """``ports`` as a tuple of ``(peer ID, vector count)`` pairs; raises on bad ones.

    At least one port; IDs 0..65535 and distinct; 1..64 vectors each.
    ``TypeError`` for a wrong type, ``ValueError`` for a wrong value.
    """
    if isinstance(ports, (str, bytes)) or not isinstance(ports, Iterable):
        raise TypeError(f"ports must be a sequence of (id, vectors) pairs, not {ports!r}")
    result = []
    for entry in ports:
        if not isinstance(entry, Sequence) or isinstance(entry, str) or len(entry) != 2:
            raise TypeError(f"a port is an (id, vectors) pair, not {entry!r}")
        peer, vectors = entry
        for name, value, high in (("id", peer, MAX_PEER_ID), ("vectors", vectors, MAX_VECTORS)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"port {name} must be an integer, not {value!r}")
            low = 0 if name == "id" else 1
            if not low <= value <= high:
                raise ValueError(f"port {name} must be {low}..{high}, not {value!r}")
        result.append((peer, vectors))
    if not result:
        raise ValueError("a domain needs at least one port")
    ids = [peer for peer, _ in result]
    for peer in ids:
        if ids.count(peer) > 1:
            raise ValueError(f"port id {peer} appears twice")
    return tuple(result)


class _Inbox:
    """Events on their way to one port: a FIFO per source, merged in some unknown order.

    ``_states`` holds every merge still consistent with what was taken: a tuple of
    how many events of each source have been taken. It stays small because only
    events in flight (rung, not yet taken) can be in doubt.
    """

    def __init__(self, sources: int) -> None:
        self._queues: list[list[int]] = [[] for _ in range(sources)]
        self._base = [0] * sources
        self._states: set[tuple[int, ...]] = {(0,) * sources}
        self.taken = 0

    def put(self, source: int, vector: int) -> None:
        self._queues[source].append(vector)

    @property
    def in_flight(self) -> int:
        return sum(len(q) for q in self._queues) - self.taken + sum(self._base)

    def take(self, vector: int) -> bool:
        """Whether ``vector`` can be the next event; if so, the merges that allow it remain."""
        states = set()
        for state in self._states:
            for k, done in enumerate(state):
                queue = self._queues[k]
                if done - self._base[k] < len(queue) and queue[done - self._base[k]] == vector:
                    states.add((*state[:k], done + 1, *state[k + 1 :]))
        if not states:
            return False
        self._states = states
        self.taken += 1
        # Events every merge has taken are certain; forget them.
        for k in range(len(self._queues)):
            low = min(state[k] for state in states)
            del self._queues[k][: low - self._base[k]]
            self._base[k] = low
        return True

    def expected(self) -> list[list[int]]:
        """Per source, the events in flight in one of the merges still possible."""
        state = min(self._states)
        rows = zip(self._queues, state, self._base, strict=True)
        return [queue[done - base :] for queue, done, base in rows]


class Domain:
    """An on-chip ivshmem domain: fixed peer table, doorbell routing, one shared memory.

    Parameters
    ----------
    ports : sequence of (int, int)
        Peer ID and vector count of each port, in port order.
    shm : buffer or None
        The shared memory; ``None`` allocates zeroed private memory.
    shm_size : int or None
        Its size (power of two >= 16); default ``len(shm)``, or 4 KiB.

    Attributes
    ----------
    ports : tuple of (int, int)
        The table.
    counters : Counters
        ``rings`` (doorbells routed), ``bad_peer``, ``bad_vector`` (dropped).
    shm : SharedMemory
        The shared memory.
    devices : dict of int to IvshmemFlatModel
        Device models made by :meth:`flat`, by port index.

    Raises
    ------
    TypeError, ValueError
        Bad ports or memory size.
    """

    def __init__(
        self,
        ports: Sequence[tuple[int, int]],
        *,
        shm: object | None = None,
        shm_size: int | None = None,
    ) -> None:
        self.ports = check_ports(ports)
        self.shm = SharedMemory(shm, shm_size, DEFAULT_SHM_SIZE)
        self.counters = Counters()
        self.devices: dict[int, IvshmemFlatModel] = {}
        self._index = {peer: i for i, (peer, _) in enumerate(self.ports)}
        self._tables = []
        for peer, vectors in self.ports:
            table = PeerTable(vectors)
            table.set_id(peer)
            for other, count in self.ports:
                if other != peer:
                    table.set_peer(other, count)
            self._tables.append(table)
        self._inboxes = [_Inbox(len(self.ports)) for _ in self.ports]

    def _check_port(self, port: int) -> None:
        if not isinstance(port, int) or not 0 <= port < len(self.ports):
            raise ValueError(f"port must be 0..{len(self.ports) - 1}, not {port!r}")

    def index_of(self, peer: int) -> int | None:
        """The port whose ID is ``peer``, or ``None``."""
        return self._index.get(peer)

    def peers(self, port: int) -> dict[int, int]:
        """What ``port`` knows: peer ID -> vector count (every port, itself included)."""
        self._check_port(port)
        return self._tables[port].peers

    def query(self, peer: int) -> int:
        """The known-peer answer for ``peer``: its vector count, 0 if no port has that ID."""
        index = self._index.get(peer)
        return 0 if index is None else self.ports[index][1]

    # -- doorbells --------------------------------------------------------------------------

    def ring(self, source: int, word: int) -> int | None:
        """Port ``source`` sent doorbell ``word``: the target port index, or ``None`` (counted)."""
        self._check_port(source)
        hit = self._tables[source].decode(word, self.counters)
        if hit is None:
            return None
        peer, vector = hit
        target = self._index[peer]
        self._inboxes[target].put(source, vector)
        device = self.devices.get(target)
        if device is not None:
            assert self._inboxes[target].take(vector)
            device.event(vector)
        return target

    def take_event(self, target: int, vector: int) -> bool:
        """``target`` took an event on ``vector``: whether the routed doorbells explain it."""
        self._check_port(target)
        return self._inboxes[target].take(vector)

    def in_flight(self, target: int) -> int:
        """Doorbells routed to ``target`` whose event it has not taken yet."""
        self._check_port(target)
        return self._inboxes[target].in_flight

    def expected_events(self, target: int) -> list[list[int]]:
        """Per source port, the vectors in flight to ``target`` (for error messages)."""
        self._check_port(target)
        return self._inboxes[target].expected()

    # -- shared memory ----------------------------------------------------------------------

    def mem_access(self, word: int, write: bool, data: int = 0, sel: int = 0xF) -> int:
        """One granted memory request at word address ``word``: the read data (0 for a write)."""
        offset = 4 * word
        if not write:
            return self.shm.read(offset, 4)
        for lane in range(4):
            if sel >> lane & 1:
                self.shm.write(offset + lane, data >> (8 * lane) & 0xFF, 1)
        return 0

    # -- device models ----------------------------------------------------------------------

    def flat(self, port: int, **kwargs: Any) -> IvshmemFlatModel:
        """An :class:`IvshmemFlatModel` model on ``port``: the domain's memory, ID and table.

        ``kwargs`` go to the model (``on_irq``, ``on_doorbell``). Its doorbells
        are routed by :meth:`ring`; an event for a port with a model is handed to
        that model at once.
        """
        self._check_port(port)
        if port in self.devices:
            raise ValueError(f"port {port} already has a device model")
        peer, vectors = self.ports[port]
        user = kwargs.pop("on_doorbell", None)

        def on_doorbell(target: int, vector: int) -> None:
            self.ring(port, DOORBELL.pack(target, vector))
            if user is not None:
                user(target, vector)

        device = IvshmemFlatModel(
            vectors=vectors, shm=self.shm.view, on_doorbell=on_doorbell, **kwargs
        )
        device.set_id(peer)
        for other, count in self.ports:
            if other != peer:
                device.set_peer(other, count)
        self.devices[port] = device
        return device
