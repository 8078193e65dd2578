"""A peer of an ivshmem domain: the client side of the server protocol, revisions 1 and 2.

A :class:`Peer` connects to an ``ivshmem-server`` (QEMU's or ``ivhw.sw.server``) or
an ``ivshmem2-server`` (the RFC's or ``ivhw.sw.server2``), tells the two apart from
the first 8 bytes, maps the shared memory, keeps the eventfds of every other peer
to ring them and listens on its own eventfds. With revision 2 it also maps the
State Table, the R/W section and the output sections separately, the read-only
ones read-only, and plays the device's part for its state: :attr:`Peer.state`
writes its State Table entry and rings vector 0 of every other peer on a change.
Everything that happens afterwards (doorbells, peers joining and leaving) arrives
as :data:`Event` objects from :meth:`Peer.poll`, :meth:`Peer.wait` or
:meth:`Peer.wait_async`. :meth:`Peer.fileno` is one epoll fd
that becomes readable whenever there is something to process, so a peer fits in
any ``select``/``asyncio`` loop.

Every server message is validated; a server that breaks the protocol gets a
:class:`ProtocolError` that names what was wrong, never a hang or a leaked fd.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import mmap
import os
import select
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, NoReturn, TypeAlias

from .protocol import (
    EVENT_FD2,
    INIT2,
    MAX_FRAME,
    MAX_PEER_ID,
    MAX_VECTORS,
    MSG,
    MSG2_EVENT_FD,
    MSG2_HEADER,
    MSG2_INIT,
    MSG2_PEER_GONE,
    PEER_GONE2,
    PROTOCOL_VERSION,
    PROTOCOL_VERSION2,
    SHM_MESSAGE_ID,
    recv_frame,
    recv_message,
    recv_prefix,
    sniff_revision,
)
from .sections import MAX_PEERS_REGISTER, MIN_PEERS, STATE_ENTRY_SIZE, Layout

__all__ = [
    "Doorbell",
    "Event",
    "Handshake",
    "Peer",
    "PeerJoined",
    "PeerLeft",
    "PeerVector",
    "ProtocolError",
    "ServerGone",
    "peek_handshake",
    "peek_shm_size",
]


class ProtocolError(Exception):
    """The server sent a malformed or unexpected message."""


class ServerGone(ProtocolError):
    """The server closed the connection."""


@dataclass(frozen=True, slots=True)
class Doorbell:
    """Own vector ``vector`` was rung; ``count`` > 1 when several rings coalesced."""

    vector: int
    count: int


@dataclass(frozen=True, slots=True)
class PeerJoined:
    """The first vector of a new peer arrived."""

    peer: int


@dataclass(frozen=True, slots=True)
class PeerVector:
    """One more eventfd of another peer arrived: it can now be rung on ``vector``."""

    peer: int
    vector: int


@dataclass(frozen=True, slots=True)
class PeerLeft:
    """A peer disconnected; its eventfds are closed."""

    peer: int


Event: TypeAlias = Doorbell | PeerJoined | PeerVector | PeerLeft
Predicate: TypeAlias = Callable[[Event], bool] | type | tuple[type, ...] | None

_ONE = (1).to_bytes(8, "little")
_EVENTFD_LINK = "anon_inode:[eventfd]"
# How many rounds poll() spends collecting what is already pending, so that a peer
# ringing without pause cannot keep it from returning.
_DRAIN_ROUNDS = 64


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _describe_fd(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "an unknown kind of fd"


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == _EVENTFD_LINK
    except OSError:
        # without /proc, at least refuse what is certainly not an eventfd
        mode = os.fstat(fd).st_mode
        return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISSOCK(mode))


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _matcher(predicate: Predicate) -> Callable[[Event], bool] | None:
    """``None`` matches everything; a type or tuple of types matches by isinstance."""
    if predicate is None:
        return None
    if isinstance(predicate, type | tuple):
        return _type_matchers.get(predicate) or partial(_is_instance, kinds=predicate)
    return predicate


def _is_instance(event: Event, kinds: type | tuple[type, ...]) -> bool:
    return isinstance(event, kinds)


_type_matchers: dict[object, Callable[[Event], bool]] = {
    kind: partial(_is_instance, kinds=kind) for kind in (Doorbell, PeerJoined, PeerVector, PeerLeft)
}


class Peer:
    """One peer of an ivshmem domain, connected to its server.

    The constructor connects and completes the handshake: protocol version, own
    ID, shared memory, the eventfds of the peers already there, then its own.
    Revision 1 has no "setup complete" message, so with ``vectors=N`` the
    handshake ends when N own vectors arrived (more are closed, as QEMU does);
    with ``vectors=None`` it ends once the first own vector arrived and nothing
    more is pending at once, or within ``settle`` (own vectors arriving later are
    still taken). Revision 2's INIT says how many vectors there are, so the
    handshake ends when they all arrived (``vectors=N`` fewer: the rest closed).

    Peers known at the end of the handshake are in :attr:`peers`; only later
    changes produce events.

    Parameters
    ----------
    socket_path : str
        The server's UNIX socket.
    vectors : int or None
        How many own vectors to wait for (0..64), or ``None`` to take what comes.
    timeout : float
        Seconds for the connection and the handshake, and the longest a
        truncated server message is waited for later.
    settle : float
        With ``vectors=None``: how long the server may pause inside its burst of
        own vectors before the handshake ends (0: only what is already there).
    revision : int or None
        1 or 2 to insist on a protocol revision, ``None`` to take what the server
        speaks (told apart from its first 8 bytes).
    sock : socket.socket, optional
        A socket already connected to the server whose handshake nobody has
        read yet (see :func:`peek_shm_size`); the peer owns it from then on.

    Attributes
    ----------
    id : int
        Own peer ID, 0..65535.
    vectors : int
        Number of own vectors (eventfds listened on).
    shm : mmap.mmap
        The shared memory, mapped shared and read-write.
    memory : memoryview
        A view of :attr:`shm`.
    shm_size : int
        Size of the shared memory in bytes (a power of two).
    shm_fd : int
        The shared-memory fd the server sent (owned by the peer).
    peers : dict[int, int]
        Every other peer's ID and how many of its vectors are known.
    revision : int
        The protocol revision the server speaks, 1 or 2.
    max_peers, protocol, output_section_size : int
        Revision 2: what INIT said (the protocol as told to this peer).
    layout : Layout or None
        Revision 2: where the sections lie.
    state_table : memoryview or None
        Revision 2: the State Table, mapped read-only (a write raises ``TypeError``).
    rw : memoryview or None
        Revision 2: the R/W section, read-write.
    output : memoryview or None
        Revision 2: this peer's output section, read-write.
    outputs : memoryview or None
        Revision 2: all output sections, mapped read-only; :meth:`output_of` slices it.

    Raises
    ------
    ProtocolError
        The server broke the protocol (the message names what and how).
    ServerGone
        The server closed the connection during the handshake.
    TimeoutError
        The handshake did not complete within ``timeout``.
    OSError
        The socket could not be connected (missing, refused).
    """

    def __init__(
        self,
        socket_path: str,
        *,
        vectors: int | None = None,
        timeout: float = 5.0,
        settle: float = 0.0,
        revision: int | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        if vectors is not None and not 0 <= vectors <= MAX_VECTORS:
            raise ValueError(f"vectors must be 0..{MAX_VECTORS} or None, not {vectors!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if revision not in (None, 1, 2):
            raise ValueError(f"revision must be 1, 2 or None, not {revision!r}")
        self.socket_path = socket_path
        self.id = -1
        self.vectors = 0
        self.shm_size = 0
        self.shm_fd = -1
        self.peers: dict[int, int] = {}
        self.revision = 0
        self.max_peers = 0
        self.protocol = 0
        self.output_section_size = 0
        self.layout: Layout | None = None
        self.state_table: memoryview | None = None
        self.rw: memoryview | None = None
        self.output: memoryview | None = None
        self.outputs: memoryview | None = None
        self._maps: list[mmap.mmap] = []  # revision 2's section mappings
        self._state = 0
        self._server_vectors = 0  # revision 2: what INIT announced
        self._requested_revision = revision
        self._wanted = vectors
        self._timeout = timeout
        self._settle = settle
        self._closed = False
        self._server_gone = False
        self._own_fds: list[int] = []
        self._own_received = 0
        # own fd -> Doorbell(vector, 1): frozen, so the common single ring reuses one object
        self._bell_of_fd: dict[int, Doorbell] = {}
        self._peer_fds: dict[int, list[int]] = {}
        self._pending: collections.deque[Event] = collections.deque()
        self._sock: socket.socket | None = None
        self._epoll: select.epoll | None = None
        self.shm: mmap.mmap | None = None
        self.memory: memoryview | None = None
        try:
            self._epoll = select.epoll()
            if sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(timeout)
                self._sock.connect(socket_path)
            else:
                self._sock = sock
                self._sock.settimeout(timeout)
            self._handshake(time.monotonic() + timeout)
            self._sock.settimeout(timeout)
            self._epoll.register(self._sock.fileno(), select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    # -- handshake ---------------------------------------------------------------------------

    def _recv(
        self, deadline: float, stage: str, receive: Callable[[socket.socket], Any] | None = None
    ) -> Any:
        """One server message before ``deadline`` (``receive``: the revision's reader).

        ``ServerGone`` at end of stream, ``TimeoutError`` at the deadline.
        """
        assert self._sock is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"ivshmem handshake timed out {stage}")
        self._sock.settimeout(remaining)
        if receive is None:
            receive = recv_message if self.revision == 1 else recv_frame
        try:
            message = receive(self._sock)
        except TimeoutError:
            raise TimeoutError(
                f"ivshmem handshake timed out after {self._timeout:g} s {stage}; "
                "is the server stalled, or does it send fewer vectors than asked?"
            ) from None
        except ConnectionError as exc:
            raise ServerGone(f"{exc} {stage}; the server broke off, restart it") from None
        if message is None:
            raise ServerGone(
                f"ivshmem server closed the connection {stage}; check the server's log "
                "(it may refuse more peers) and reconnect"
            )
        return message

    def _handshake(self, deadline: float) -> None:
        first, first_fds = self._recv(deadline, "before sending the protocol version", recv_prefix)
        try:
            # told a revision, trust it: its own checks then say what is wrong precisely
            revision = self._requested_revision or sniff_revision(first)
        except ValueError:
            _close_all(first_fds)
            kind, length = MSG2_HEADER.unpack(first)
            raise ProtocolError(
                f"ivshmem server speaks protocol version {MSG.unpack(first)[0]}, not "
                f"{PROTOCOL_VERSION} (revision 1), and sends no revision 2 INIT either (type "
                f"{kind}, len {length}); use an ivshmem-server or an ivshmem2-server"
            ) from None
        self.revision = revision
        if revision == 2:
            self._handshake2(deadline, first, first_fds)
        else:
            self._handshake1(deadline, first, first_fds)

    def _handshake1(self, deadline: float, first: bytes, first_fds: list[int]) -> None:
        value, fds = self._recv(
            deadline,
            "inside the first message",
            partial(recv_message, first=first, first_fds=first_fds),
        )
        if fds:
            _close_all(fds)
            if value == PROTOCOL_VERSION:
                raise ProtocolError("ivshmem server sent an fd with the protocol version message")
        if value != PROTOCOL_VERSION:
            kind, length = MSG2_HEADER.unpack(first)
            if kind == MSG2_INIT and length == MSG2_HEADER.size + INIT2.size:
                raise ProtocolError(
                    "ivshmem server speaks protocol revision 2 (its first message is an "
                    "INIT), not 1; connect to an ivshmem-server or ask for revision 2"
                )
            raise ProtocolError(
                f"ivshmem server speaks protocol version {value}, this client only "
                f"{PROTOCOL_VERSION}; use a revision 1 server"
            )

        value, fds = self._recv(deadline, "after the version, before the peer ID")
        if fds:
            _close_all(fds)
            raise ProtocolError("ivshmem server sent an fd with the own peer ID message")
        if not 0 <= value <= MAX_PEER_ID:
            raise ProtocolError(
                f"ivshmem server assigned peer ID {value}, outside 0..{MAX_PEER_ID}"
            )
        self.id = value

        value, fds = self._recv(deadline, "after the peer ID, before the shared memory")
        if value != SHM_MESSAGE_ID:
            _close_all(fds)
            raise ProtocolError(
                f"ivshmem server sent {value} where the shared-memory message "
                f"({SHM_MESSAGE_ID} with an fd) belongs"
            )
        self._take_shm(fds)

        if self._wanted == 0:
            return
        while True:
            limit = self._wanted
            stage = (
                f"after {self.vectors} of {limit} own vectors"
                if limit is not None
                else "before sending any own vector"
            )
            value, fds = self._recv(deadline, stage)
            self._dispatch(value, fds, during_handshake=True)
            if limit is not None:
                if self.vectors >= limit:
                    return
            elif self.vectors and not self._readable_within(self._settle):
                return

    def _handshake2(self, deadline: float, first: bytes, first_fds: list[int]) -> None:
        assert self._sock is not None
        if first == MSG.pack(PROTOCOL_VERSION):
            _close_all(first_fds)
            raise ProtocolError(
                "ivshmem server speaks protocol revision 1 (its first message is version 0), "
                "not 2; this is a revision 1 server: connect to an ivshmem2-server"
            )
        kind, body, fds = self._recv(
            deadline, "inside INIT", partial(recv_frame, first=first, first_fds=first_fds)
        )
        if kind != MSG2_INIT:
            _close_all(fds)
            raise ProtocolError(
                f"ivshmem server sent a message of type {kind} where INIT (type "
                f"{MSG2_INIT}) belongs; connect to an ivshmem2-server"
            )
        if len(body) < INIT2.size:
            _close_all(fds)
            raise ProtocolError(
                f"ivshmem server's INIT is {len(body) + 8} bytes, shorter than {INIT2.size + 8}"
            )
        version, compatible, peer_id, max_peers, vectors, protocol, out = INIT2.unpack_from(body)
        problem = None
        if compatible != PROTOCOL_VERSION2:
            problem = (
                f"speaks protocol version {version} compatible with {compatible}, this "
                f"client only {PROTOCOL_VERSION2}"
            )
        elif not MIN_PEERS <= max_peers <= MAX_PEERS_REGISTER:
            problem = f"announced {max_peers} max peers, outside {MIN_PEERS}..{MAX_PEERS_REGISTER}"
        elif not peer_id < max_peers:
            problem = f"assigned peer ID {peer_id}, not below its {max_peers} max peers"
        elif not 1 <= vectors <= MAX_VECTORS:
            problem = f"announced {vectors} vectors, outside 1..{MAX_VECTORS}"
        if problem is not None:
            _close_all(fds)
            raise ProtocolError(f"ivshmem server {problem}")
        self.id = peer_id
        self.max_peers = max_peers
        self.protocol = protocol
        self.output_section_size = out
        self._server_vectors = vectors
        self._take_shm(fds, "INIT")
        try:
            self.layout = Layout(self.shm_size, max_peers, out)
        except ValueError as exc:
            raise ProtocolError(f"ivshmem server's layout does not fit: {exc}") from None
        self._map_sections()
        while self._own_received < vectors:
            stage = f"after {self._own_received} of {vectors} own vectors"
            kind, body, fds = self._recv(deadline, stage)
            self._dispatch2(kind, body, fds, during_handshake=True)

    def _map_sections(self) -> None:
        """Map each revision 2 section with its own protection."""
        layout = self.layout
        assert layout is not None

        def view(offset: int, size: int, writable: bool) -> memoryview:
            if size == 0:
                return memoryview(b"")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            try:
                mapping = mmap.mmap(self.shm_fd, size, mmap.MAP_SHARED, prot, offset=offset)
            except OSError as exc:
                raise ProtocolError(
                    f"cannot map {size} bytes of the shared memory at {offset}: {exc.strerror}"
                ) from None
            self._maps.append(mapping)
            return memoryview(mapping)

        table = layout.state_table
        self.state_table = view(table.offset, table.size, False)
        self.rw = view(layout.rw.offset, layout.rw.size, True)
        outputs = layout.outputs
        self.outputs = view(outputs.offset, outputs.size, False)
        own = layout.output(self.id)
        self.output = view(own.offset, own.size, True)

    def _take_shm(self, fds: list[int], message: str = "shared-memory message") -> None:
        if len(fds) != 1:
            _close_all(fds)
            raise ProtocolError(f"ivshmem server's {message} carried {len(fds)} fds, not 1")
        self.shm_fd = fds[0]
        info = os.fstat(self.shm_fd)
        if not stat.S_ISREG(info.st_mode):
            raise ProtocolError(
                f"ivshmem server's shared-memory fd is {_describe_fd(self.shm_fd)}, "
                "not a memory file"
            )
        size = info.st_size
        if size == 0:
            raise ProtocolError("ivshmem server's shared memory has size 0; give it a size (-l)")
        if size & (size - 1) and self.revision == 1:
            raise ProtocolError(
                f"ivshmem server's shared memory is {size} bytes, not a power of two "
                "(QEMU aborts on it); resize it to a power of two"
            )
        # revision 2 has no use for a writable view of everything: its sections are
        # mapped one by one; this read-only view of the whole is for dumps
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if self.revision == 1 else 0)
        try:
            self.shm = mmap.mmap(self.shm_fd, size, mmap.MAP_SHARED, prot)
        except OSError as exc:
            raise ProtocolError(f"cannot map the ivshmem shared memory: {exc.strerror}") from None
        self.shm_size = size
        self.memory = memoryview(self.shm)

    def _readable_within(self, seconds: float) -> bool:
        assert self._sock is not None
        ready, _, _ = select.select([self._sock], [], [], seconds)
        return bool(ready)

    # -- message processing ------------------------------------------------------------------

    def _dispatch(self, value: int, fds: list[int], *, during_handshake: bool = False) -> None:
        """Apply one server message after the shared memory, queueing its events."""
        if len(fds) > 1:
            _close_all(fds)
            raise ProtocolError(f"ivshmem server sent {len(fds)} fds in one message for {value}")
        if value == SHM_MESSAGE_ID:
            _close_all(fds)
            raise ProtocolError("ivshmem server sent a second shared-memory message")
        if not 0 <= value <= MAX_PEER_ID:
            _close_all(fds)
            raise ProtocolError(f"ivshmem server sent peer ID {value}, outside 0..{MAX_PEER_ID}")
        if not fds:
            self._peer_left(value, during_handshake)
            return
        fd = fds[0]
        if not _is_eventfd(fd):
            kind = _describe_fd(fd)
            os.close(fd)
            raise ProtocolError(
                f"ivshmem server sent {kind} as vector of peer {value}, not an eventfd"
            )
        if value == self.id:
            self._own_vector(fd)
        else:
            self._peer_vector(value, fd, during_handshake)

    def _dispatch2(
        self, kind: int, body: bytes, fds: list[int], *, during_handshake: bool = False
    ) -> None:
        """Apply one revision 2 message after INIT, queueing its events."""
        if kind == MSG2_EVENT_FD:
            if len(body) < EVENT_FD2.size or len(fds) != 1:
                _close_all(fds)
                raise ProtocolError(
                    f"ivshmem server sent an EVENT_FD of {len(body) + 8} bytes with "
                    f"{len(fds)} fds, not at least {EVENT_FD2.size + 8} bytes with 1 fd"
                )
            peer, vector = EVENT_FD2.unpack_from(body)
            fd = fds[0]
            known = self._own_received if peer == self.id else len(self._peer_fds.get(peer, ()))
            problem = None
            if peer >= self.max_peers:
                problem = f"for peer {peer}, not below its {self.max_peers} max peers"
            elif vector != known:
                problem = f"for vector {vector} of peer {peer} where vector {known} was due"
            elif vector >= self._server_vectors:
                problem = f"for vector {vector}, beyond its {self._server_vectors} vectors"
            elif not _is_eventfd(fd):
                problem = f"carrying {_describe_fd(fd)}, not an eventfd"
            if problem is not None:
                os.close(fd)
                raise ProtocolError(f"ivshmem server sent an EVENT_FD {problem}")
            if peer == self.id:
                self._own_vector(fd)
            else:
                self._peer_vector(peer, fd, during_handshake)
            return
        _close_all(fds)
        if kind == MSG2_INIT:
            raise ProtocolError("ivshmem server sent a second INIT")
        if fds:
            raise ProtocolError(f"ivshmem server sent {len(fds)} fds with a message of type {kind}")
        if kind == MSG2_PEER_GONE:
            if len(body) < PEER_GONE2.size:
                raise ProtocolError(
                    f"ivshmem server sent a PEER_GONE of {len(body) + 8} bytes, not "
                    f"{PEER_GONE2.size + 8}"
                )
            (peer,) = PEER_GONE2.unpack_from(body)
            if peer >= self.max_peers:
                raise ProtocolError(
                    f"ivshmem server sent PEER_GONE for peer {peer}, not below its "
                    f"{self.max_peers} max peers"
                )
            self._peer_left(peer, during_handshake)
            return
        raise ProtocolError(f"ivshmem server sent a message of unknown type {kind}")

    def _own_vector(self, fd: int) -> None:
        self._own_received += 1
        if self._own_received > MAX_VECTORS:
            os.close(fd)
            raise ProtocolError(f"ivshmem server sent more than {MAX_VECTORS} own vectors")
        if self._wanted is not None and self.vectors >= self._wanted:
            os.close(fd)  # configured for fewer vectors than the server has: as QEMU does
            return
        assert self._epoll is not None
        self._epoll.register(fd, select.EPOLLIN)
        self._bell_of_fd[fd] = Doorbell(self.vectors, 1)
        self._own_fds.append(fd)
        self.vectors += 1

    def _peer_vector(self, peer: int, fd: int, during_handshake: bool) -> None:
        fds = self._peer_fds.setdefault(peer, [])
        if len(fds) >= MAX_VECTORS:
            os.close(fd)
            raise ProtocolError(f"ivshmem server sent more than {MAX_VECTORS} vectors of {peer}")
        fds.append(fd)
        self.peers[peer] = len(fds)
        if not during_handshake:
            if len(fds) == 1:
                self._pending.append(PeerJoined(peer))
            self._pending.append(PeerVector(peer, len(fds) - 1))

    def _peer_left(self, peer: int, during_handshake: bool) -> None:
        if peer == self.id:
            raise ProtocolError(
                f"ivshmem server announced that this peer ({peer}) left, or sent an own "
                "vector without its fd"
            )
        _close_all(self._peer_fds.pop(peer, []))
        # a peer with no vectors (server with -n 0) may leave without having joined
        self.peers.pop(peer, None)
        if not during_handshake:
            self._pending.append(PeerLeft(peer))

    def _server_message(self) -> None:
        assert self._sock is not None and self._epoll is not None
        try:
            message = recv_message(self._sock) if self.revision == 1 else recv_frame(self._sock)
        except TimeoutError:
            raise ProtocolError(
                f"ivshmem server sent a partial message and stalled for {self._timeout:g} s"
            ) from None
        except ConnectionError as exc:
            self._lose_server()
            raise ServerGone(f"{exc}; the server broke off, reconnect") from None
        if message is None:
            self._lose_server()
            raise ServerGone("ivshmem server closed the connection; reconnect to continue")
        if self.revision == 1:
            self._dispatch(*message)  # type: ignore[arg-type]
        else:
            self._dispatch2(*message)  # type: ignore[arg-type]

    def _lose_server(self) -> None:
        # own eventfds stay valid without the server: other peers may still ring
        assert self._sock is not None and self._epoll is not None
        self._server_gone = True
        self._epoll.unregister(self._sock.fileno())

    def _handle(self, ready: list[tuple[int, int]]) -> None:
        """Turn ready fds into queued events."""
        bell_of_fd = self._bell_of_fd
        for fd, _mask in ready:
            bell = bell_of_fd.get(fd)
            if bell is not None:
                try:
                    data = os.read(fd, 8)
                except BlockingIOError:  # the server may hand out non-blocking eventfds
                    continue
                if data != _ONE:
                    bell = Doorbell(bell.vector, int.from_bytes(data, "little"))
                self._pending.append(bell)
            else:
                self._server_message()

    def _check_open(self) -> select.epoll:
        if self._closed or self._epoll is None:
            raise ValueError("I/O operation on a closed ivshmem peer")
        return self._epoll

    # -- public API --------------------------------------------------------------------------

    def fileno(self) -> int:
        """An epoll fd, readable whenever a server message or an own doorbell is pending."""
        return self._check_open().fileno()

    def server_fileno(self) -> int:
        """The server socket: readable when a server message is pending (peers joining or
        leaving, the server closing). For callers that watch the own eventfds themselves
        and call :meth:`poll` only for server messages."""
        self._check_open()
        assert self._sock is not None
        return self._sock.fileno()

    def eventfds(self, peer: int) -> tuple[int, ...]:
        """The eventfds of ``peer`` (own ones for ``self.id``), by vector."""
        if peer == self.id:
            return tuple(self._own_fds)
        return tuple(self._peer_fds[peer])

    @property
    def server_gone(self) -> bool:
        """True once the server closed the connection (own doorbells still arrive)."""
        return self._server_gone

    def ring(self, peer: int, vector: int) -> None:
        """Ring ``peer`` on ``vector``: write 1 to its eventfd (``self.id`` rings yourself)."""
        # the doorbell round trip is this library's hot path: check cheaply, explain lazily
        fds = self._own_fds if peer == self.id else self._peer_fds.get(peer)
        if fds is None or not 0 <= vector < len(fds) or self._closed:
            self._ring_error(peer, vector)
        os.write(fds[vector], _ONE)

    def _ring_error(self, peer: int, vector: int) -> NoReturn:
        self._check_open()
        fds = self._own_fds if peer == self.id else self._peer_fds.get(peer)
        if fds is None:
            known = ", ".join(map(str, sorted(self._peer_fds))) or "none"
            raise KeyError(f"no peer {peer} (known peers: {known})")
        raise ValueError(
            f"peer {peer} has no vector {vector}: it has {len(fds)} (0..{len(fds) - 1})"
        )

    # -- revision 2 ----------------------------------------------------------------------------

    def _check_rev2(self) -> Layout:
        self._check_open()
        if self.layout is None:
            raise ValueError("sections and states exist in protocol revision 2 only")
        return self.layout

    @property
    def state(self) -> int:
        """This peer's state (revision 2): the last value set, 0 at first."""
        self._check_rev2()
        return self._state

    @state.setter
    def state(self, value: int) -> None:
        """Set the state as a device's State register does: the State Table entry, and on a
        change vector 0 of every other known peer."""
        layout = self._check_rev2()
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"a state is a u32, not {value!r}")
        os.pwrite(
            self.shm_fd, value.to_bytes(STATE_ENTRY_SIZE, "little"), layout.state_offset(self.id)
        )
        if value != self._state:
            self._state = value
            for fds in self._peer_fds.values():
                if fds:
                    os.write(fds[0], _ONE)

    def state_of(self, peer: int) -> int:
        """``peer``'s entry in the State Table (revision 2)."""
        layout = self._check_rev2()
        assert self.state_table is not None
        offset = layout.state_offset(peer)
        return int.from_bytes(self.state_table[offset : offset + STATE_ENTRY_SIZE], "little")

    def output_of(self, peer: int) -> memoryview:
        """``peer``'s output section (revision 2), read-only; use :attr:`output` for your own."""
        layout = self._check_rev2()
        assert self.outputs is not None
        section = layout.output(peer)
        start = section.offset - layout.outputs.offset
        return self.outputs[start : start + section.size]

    def poll(self, timeout: float | None = 0) -> list[Event]:
        """Process everything pending and return its events; wait up to ``timeout`` for one."""
        epoll = self._check_open()
        if not self._pending:
            self._handle(epoll.poll(-1 if timeout is None else timeout))
        for _ in range(_DRAIN_ROUNDS):
            ready = epoll.poll(0)
            if not ready:
                break
            self._handle(ready)
        events = list(self._pending)
        self._pending.clear()
        return events

    def _take(self, match: Callable[[Event], bool] | None) -> Event | None:
        pending = self._pending
        if match is None:
            return pending.popleft() if pending else None
        for index, event in enumerate(pending):
            if match(event):
                del pending[index]
                return event
        return None

    def wait(self, predicate: Predicate = None, timeout: float | None = None) -> Event:
        """The first event matching ``predicate`` (a callable or event type); others stay queued.

        Raises ``TimeoutError`` when none arrives within ``timeout`` seconds.
        """
        epoll = self._epoll
        if epoll is None or self._closed:
            self._check_open()
        match = None if predicate is None else _matcher(predicate)
        pending = self._pending
        if pending:
            event = self._take(match)
            if event is not None:
                return event
        deadline = None if timeout is None else time.monotonic() + timeout
        bell_of_fd = self._bell_of_fd
        while True:
            if deadline is None:
                ready = epoll.poll()
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching ivshmem event within {timeout:g} s")
                ready = epoll.poll(remaining)
            # hot path: one own doorbell, returned without a trip through the queue (what
            # is queued here matched nothing, so order among matching events is kept)
            if len(ready) == 1:
                fd = ready[0][0]
                bell = bell_of_fd.get(fd)
                if bell is not None:
                    try:
                        data = os.read(fd, 8)
                    except BlockingIOError:  # the server may hand out non-blocking eventfds
                        continue
                    if data != _ONE:
                        bell = Doorbell(bell.vector, int.from_bytes(data, "little"))
                    if match is None or predicate is Doorbell or match(bell):
                        return bell
                    pending.append(bell)
                    continue
            self._handle(ready)
            if pending:
                event = self._take(match)
                if event is not None:
                    return event

    async def wait_async(self, predicate: Predicate = None, timeout: float | None = None) -> Event:
        """Like :meth:`wait`, for asyncio: waits with ``loop.add_reader`` on :meth:`fileno`."""
        match = _matcher(predicate)
        loop = asyncio.get_running_loop()
        fd = self.fileno()
        async with asyncio.timeout(timeout):
            while True:
                event = self._take(match)
                if event is not None:
                    return event
                ready = self._check_open().poll(0)
                if ready:
                    self._handle(ready)
                    continue
                woken = loop.create_future()
                loop.add_reader(fd, _wake, woken)
                try:
                    await woken
                finally:
                    loop.remove_reader(fd)

    def close(self) -> None:
        """Close the connection, unmap the shared memory and close every fd held."""
        self._closed = True
        for name in ("state_table", "rw", "output", "outputs"):
            section = getattr(self, name, None)
            if section is not None:
                with contextlib.suppress(BufferError):
                    section.release()
                setattr(self, name, None)
        for mapping in self._maps:
            with contextlib.suppress(BufferError):
                mapping.close()
        self._maps.clear()
        if self.memory is not None:
            with contextlib.suppress(BufferError):
                self.memory.release()
            self.memory = None
        if self.shm is not None:
            # still exported (a view of it outlives the peer): unmapped when that view dies
            with contextlib.suppress(BufferError):
                self.shm.close()
            self.shm = None
        fds = list(self._own_fds)
        for peer_fds in self._peer_fds.values():
            fds.extend(peer_fds)
        if self.shm_fd >= 0:
            fds.append(self.shm_fd)
            self.shm_fd = -1
        _close_all(fds)
        self._own_fds.clear()
        self._bell_of_fd.clear()
        self._peer_fds.clear()
        self.peers.clear()
        self._pending.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def __enter__(self) -> Peer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"id={self.id} vectors={self.vectors}"
        return f"<Peer {self.socket_path!r} {state} peers={self.peers}>"


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a server's handshake tells a new peer before it joins (:func:`peek_handshake`).

    ``max_peers``, ``vectors``, ``protocol`` and ``output_section_size`` are INIT's
    (revision 2); 0 for revision 1, whose handshake does not say them.
    """

    revision: int
    shm_size: int
    max_peers: int = 0
    vectors: int = 0
    protocol: int = 0
    output_section_size: int = 0


def peek_shm_size(sock: socket.socket, timeout: float = 10.0) -> int:
    """The shared-memory size a revision 1 server is giving the new client on ``sock``.

    :func:`peek_handshake` insisting on revision 1.
    """
    return peek_handshake(sock, timeout, revision=1).shm_size


def peek_handshake(
    sock: socket.socket, timeout: float = 10.0, *, revision: int | None = None
) -> Handshake:
    """What the server is telling the new client on ``sock``, without consuming it.

    The start of the handshake (revision 1: version, ID, shared memory; revision 2:
    INIT with the shared memory) is read with ``MSG_PEEK``: it stays in the socket
    for the :class:`Peer` that takes ``sock`` over later (``Peer(path, sock=sock)``),
    so whoever peeks and joins makes one connection, one join. What was peeked is
    checked by a :class:`Peer` of its own over a socket pair (``revision`` as for
    :class:`Peer`), so the checks and the messages are those of every peer; for
    revision 2 that probe is handed its own vectors as fresh eventfds, since INIT
    alone does not end a handshake. Raises ``ProtocolError``, ``ServerGone`` or
    ``TimeoutError``.
    """
    deadline = time.monotonic() + timeout
    want = 3 * MSG.size
    space = socket.CMSG_SPACE(4 * 4)
    version = MSG.pack(PROTOCOL_VERSION)
    data, fds = b"", []
    rev2 = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break  # what came so far is judged below
        if not select.select([sock], [], [], remaining)[0]:
            continue
        _close_all(fds)
        data, ancillary, _flags, _addr = sock.recvmsg(
            want, space, socket.MSG_PEEK | socket.MSG_CMSG_CLOEXEC
        )
        # copies of the fds: the originals stay queued in ``sock``
        fds = [
            fd
            for level, kind, payload in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
            for fd in array.array("i", payload[: len(payload) - len(payload) % 4])
        ]
        if not rev2 and len(data) >= MSG2_HEADER.size and revision != 1:
            kind, length = MSG2_HEADER.unpack_from(data)
            if kind == MSG2_INIT and MSG2_HEADER.size + INIT2.size <= length <= MAX_FRAME:
                rev2, want = True, length  # INIT, whole
                if len(data) < want:
                    continue
        if len(data) >= want or not data:
            break  # all of it, or the end of the stream
        if not rev2 and not version.startswith(data[: len(version)]):
            break  # neither revision: the probe says what it is
        time.sleep(0.01)  # the rest of the handshake is on its way
    timed_out = remaining <= 0
    replay, taker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with replay:
            if rev2:
                _replay_init2(replay, data, fds)
            else:
                whole = len(data) - len(data) % MSG.size
                for offset in range(0, whole, MSG.size):
                    last = offset + MSG.size >= whole
                    # the fds came with the last complete message (the kernel's peek ends
                    # there)
                    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    replay.sendmsg(
                        [data[offset : offset + MSG.size]], rights if last and fds else []
                    )
                if whole < len(data):
                    replay.sendall(data[whole:])
        try:
            with Peer("(peeked)", sock=taker, vectors=0, revision=revision, timeout=1.0) as probe:
                return Handshake(
                    probe.revision, probe.shm_size, probe.max_peers, probe._server_vectors,
                    probe.protocol, probe.output_section_size,
                )  # fmt: skip
        except ServerGone:
            if timed_out:  # the server did not end the stream: it stalls
                raise TimeoutError(
                    f"no ivshmem handshake within {timeout:g} s: is this an ivshmem server?"
                ) from None
            raise
    finally:
        _close_all(fds)


def _replay_init2(replay: socket.socket, data: bytes, fds: list[int]) -> None:
    """A peeked revision 2 INIT for the probe, then the own vectors it announces."""
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    replay.sendmsg([data], rights)
    if len(data) < MSG2_HEADER.size + INIT2.size:
        return  # cut short: the probe says so
    _version, _compatible, own, _max, vectors, _protocol, _out = INIT2.unpack_from(
        data, MSG2_HEADER.size
    )
    for vector in range(min(vectors, MAX_VECTORS)):
        fd = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            message = MSG2_HEADER.pack(MSG2_EVENT_FD, MSG2_HEADER.size + EVENT_FD2.size)
            message += EVENT_FD2.pack(own, vector)
            replay.sendmsg(
                [message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            )
        finally:
            os.close(fd)
