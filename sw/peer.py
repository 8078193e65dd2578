"""A peer of an ivshmem domain: the client side of the server protocol, revision 1.

A :class:`Peer` connects to an ``ivshmem-server`` (QEMU's or ``ivhw.sw.server``),
maps the shared memory, keeps the eventfds of every other peer to ring them and
listens on its own eventfds. Everything that happens afterwards (doorbells,
peers joining and leaving) arrives as :data:`Event` objects from :meth:`Peer.poll`,
:meth:`Peer.wait` or :meth:`Peer.wait_async`. :meth:`Peer.fileno` is one epoll fd
that becomes readable whenever there is something to process, so a peer fits in
any ``select``/``asyncio`` loop.

Every server message is validated; a server that breaks the protocol gets a
:class:`ProtocolError` that names what was wrong, never a hang or a leaked fd.
"""

from __future__ import annotations

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
from typing import NoReturn, TypeAlias

from .protocol import MAX_PEER_ID, MAX_VECTORS, PROTOCOL_VERSION, SHM_MESSAGE_ID, recv_message

__all__ = [
    "Doorbell",
    "Event",
    "Peer",
    "PeerJoined",
    "PeerLeft",
    "PeerVector",
    "ProtocolError",
    "ServerGone",
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
    still taken).

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
    ) -> None:
        if vectors is not None and not 0 <= vectors <= MAX_VECTORS:
            raise ValueError(f"vectors must be 0..{MAX_VECTORS} or None, not {vectors!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.socket_path = socket_path
        self.id = -1
        self.vectors = 0
        self.shm_size = 0
        self.shm_fd = -1
        self.peers: dict[int, int] = {}
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
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(timeout)
            self._sock.connect(socket_path)
            self._handshake(time.monotonic() + timeout)
            self._sock.settimeout(timeout)
            self._epoll.register(self._sock.fileno(), select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    # -- handshake ---------------------------------------------------------------------------

    def _recv(self, deadline: float, stage: str) -> tuple[int, list[int]]:
        """One server message before ``deadline``; ServerGone at end of stream."""
        assert self._sock is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"ivshmem handshake timed out {stage}")
        self._sock.settimeout(remaining)
        try:
            message = recv_message(self._sock)
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
        value, fds = self._recv(deadline, "before sending the protocol version")
        if fds:
            _close_all(fds)
            raise ProtocolError("ivshmem server sent an fd with the protocol version message")
        if value != PROTOCOL_VERSION:
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

    def _take_shm(self, fds: list[int]) -> None:
        if len(fds) != 1:
            _close_all(fds)
            raise ProtocolError(
                f"ivshmem server's shared-memory message carried {len(fds)} fds, not 1"
            )
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
        if size & (size - 1):
            raise ProtocolError(
                f"ivshmem server's shared memory is {size} bytes, not a power of two "
                "(QEMU aborts on it); resize it to a power of two"
            )
        try:
            self.shm = mmap.mmap(
                self.shm_fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as exc:
            raise ProtocolError(
                f"cannot map the ivshmem shared memory read-write: {exc.strerror}"
            ) from None
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
            message = recv_message(self._sock)
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
        self._dispatch(*message)

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
