"""ivshmem server, protocol revision 1: a drop-in for QEMU's ``contrib/ivshmem-server``.

Same options, defaults and message order as QEMU's server (``docs/protocol-rev1.md``), but it
never loses a message: every client socket is non-blocking and has its own
outbound queue, drained by one ``selectors`` loop as the client reads. The
queue holds references to what must be sent (a peer's vectors, the shared
memory, a departure), never duplicated fds: the fd is looked up when the
message is actually sent. When a peer leaves, a client that has not been sent
any of its vectors yet is told neither of its arrival nor of its departure; a
client in the middle of them gets the rest and then the departure, the
eventfds staying open until then. A client that stops reading is disconnected
after a timeout without disturbing the others.

Run it in-process (tests, demo)::

    with IvshmemServer(path, vectors=2) as server:
        server.serve_in_background()
        ...

or as the ``ivshmem-server`` command (see ``ivshmem-server -h``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import fcntl
import logging
import os
import re
import resource
import selectors
import signal
import socket
import stat
import struct
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import NoReturn

from .protocol import (
    DEFAULT_SHM_NAME,
    DEFAULT_SHM_SIZE,
    DEFAULT_SOCKET_PATH,
    MAX_PEER_ID,
    MAX_VECTORS,
    PROTOCOL_VERSION,
    SHM_MESSAGE_ID,
    send_message,
)
from .size import format_size, size_type

__all__ = [
    "DEFAULT_PID_FILE",
    "MAX_SHM_SIZE",
    "USAGE_HEAD",
    "USAGE_TAIL",
    "IvshmemServer",
    "ServerError",
    "common_parser",
    "main",
    "parse_uint",
    "pow2ceil",
    "run_cli",
]

log = logging.getLogger(__name__)

#: QEMU's default pid file (used in daemon mode only).
DEFAULT_PID_FILE = "/var/run/ivshmem-server.pid"
#: QEMU's server tries ``ftruncate`` with doubling sizes up to this, for hugetlbfs.
_MAX_HUGEPAGE_SIZE = 1 << 30
#: Kernel refusal to pass more fds while too many are in flight (per user).
_ETOOMANYREFS = errno.ETOOMANYREFS
_RETRY_MIN = 0.005
_RETRY_MAX = 0.1
#: Connections accepted per loop turn, so that a connect storm cannot starve draining.
_ACCEPT_BURST = 64
#: How long to stop accepting when not even a reserve fd is left to refuse with.
_ACCEPT_PAUSE = 0.1
_PEERCRED = struct.Struct("3i")
#: Largest shared memory: rounded up to a power of two it must still fit in an ``off_t``.
MAX_SHM_SIZE = 1 << 62


class ServerError(Exception):
    """A server could not start; the message is one line naming the cause and the fix."""


def pow2ceil(value: int) -> int:
    """Smallest power of two that is ``>= value`` (QEMU's ``pow2ceil``; 1 for 0)."""
    return 1 if value <= 1 else 1 << (value - 1).bit_length()


def parse_uint(text: str) -> int:
    """Parse an unsigned integer like C's ``strtoull(..., 0)``: decimal, 0x hex, 0 octal."""
    t = text.strip()
    if re.fullmatch(r"(?i)0x[0-9a-f]+", t):
        return int(t, 16)
    if re.fullmatch(r"0[0-7]+", t):
        return int(t, 8)
    if re.fullmatch(r"\d+", t):
        return int(t)
    raise ValueError(f"invalid number {text!r}")


# What a queued item tells a client; how it is framed on the wire is the codec's
# business (`_Rev1Codec`), so that revision 2 can reuse queue and loop.
_INIT = 0  # version, the client's own ID, the shared memory
_VECTORS = 1  # all eventfds of `peer`, one message per vector
_GONE = 2  # `peer` left
_CANCELLED = 3  # was `_VECTORS` of a peer that left before any of it was sent: skipped


class _Item:
    """One queued announcement to one client (``target``), with a cursor into its messages."""

    __slots__ = ("kind", "next", "peer", "target")

    def __init__(self, kind: int, peer: _Peer, target: _Peer) -> None:
        self.kind = kind
        self.peer = peer
        self.target = target
        self.next = 0


class _Peer:
    """Server-side state of one connected client."""

    __slots__ = (
        "announcing",
        "closed",
        "eventfds",
        "id",
        "last_progress",
        "pid",
        "queue",
        "retry_at",
        "retry_delay",
        "sock",
        "want_write",
    )

    def __init__(self, peer_id: int, sock: socket.socket, eventfds: list[int], pid: int) -> None:
        self.id = peer_id
        self.sock = sock
        self.eventfds = eventfds
        self.pid = pid
        self.queue: collections.deque[_Item] = collections.deque()
        #: unfinished `_VECTORS` items about us in anyone's queue: they need our eventfds
        self.announcing: set[_Item] = set()
        self.closed = False
        self.want_write = False
        self.retry_at = 0.0
        self.retry_delay = _RETRY_MIN
        self.last_progress = 0.0


class _Rev1Codec:
    """Revision 1 framing: every message is one int64, optionally with one fd.

    A codec turns queued items into wire messages: ``count(item)`` of them, message
    number ``item.next`` sent by ``send(sock, item, shm_fd)`` (one ``sendmsg``).
    """

    @staticmethod
    def count(item: _Item) -> int:
        """Number of wire messages ``item`` takes."""
        if item.kind == _INIT:
            return 3
        if item.kind == _VECTORS:
            return len(item.peer.eventfds)
        return 1  # _GONE

    @staticmethod
    def send(sock: socket.socket, item: _Item, shm_fd: int) -> None:
        """Send message number ``item.next`` of ``item``."""
        if item.kind == _VECTORS:
            send_message(sock, item.peer.id, item.peer.eventfds[item.next])
        elif item.kind != _INIT:
            send_message(sock, item.peer.id)
        elif item.next == 0:
            send_message(sock, PROTOCOL_VERSION)
        elif item.next == 1:
            send_message(sock, item.peer.id)
        else:
            send_message(sock, SHM_MESSAGE_ID, shm_fd)


class IvshmemServer:
    """An ivshmem (revision 1) server on a UNIX socket.

    Parameters
    ----------
    socket_path:
        Where to listen. A stale socket file is replaced; a live server there
        makes ``start()`` fail.
    shm_size:
        Shared memory size in bytes, rounded up to a power of two.
    vectors:
        Interrupt vectors (eventfds) per peer, 0..64.
    shm_name:
        POSIX shared memory object (``/dev/shm/NAME``), created or reused like
        QEMU's ``-M`` and unlinked when the server closes. ``None`` (and no
        ``shm_dir``): an anonymous ``memfd``, nothing to clean up.
    shm_dir:
        Directory (e.g. a hugetlbfs mount) for file-backed memory, QEMU's ``-m``:
        a unique file is created there and unlinked at once.
    socket_mode:
        Permission bits of the socket file.
    allow_uids, allow_gids:
        When either is given, only clients whose ``SO_PEERCRED`` uid or
        (primary) gid is listed are admitted.
    max_peers:
        Refuse connections beyond this many peers (``None``: the 65536 IDs).
    stall_timeout:
        Disconnect a client that leaves sent messages unread while more wait for
        it, with no progress for this many seconds (``None`` or 0: never). A
        client that has read everything is never blamed, even when the kernel's
        per-user limit on fds in flight (someone else's unread fds) holds it up.
    queue_limit:
        Disconnect a client whose outbound queue exceeds this many announcements.
    raise_fd_limit:
        Raise the soft ``RLIMIT_NOFILE`` to the hard limit in ``start()``.

    Attributes
    ----------
    shm_size:
        The effective (power-of-two) size.
    peer_ids:
        IDs of the connected peers, in join order.
    messages_sent:
        Messages sent since start.
    refused:
        Connections refused since start.
    write_waits:
        Times a client socket was full and the server waited for it to become writable.
    fd_retries:
        Times sending an fd hit the in-flight limit (ETOOMANYREFS) and was retried later.

    Raises
    ------
    ValueError
        On out-of-range parameters.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        shm_size: int = DEFAULT_SHM_SIZE,
        vectors: int = 1,
        shm_name: str | None = None,
        shm_dir: str | os.PathLike[str] | None = None,
        socket_mode: int = 0o600,
        allow_uids: Iterable[int] = (),
        allow_gids: Iterable[int] = (),
        max_peers: int | None = None,
        stall_timeout: float | None = 10.0,
        queue_limit: int = 2 * (MAX_PEER_ID + 1),
        raise_fd_limit: bool = True,
    ) -> None:
        if not 0 <= vectors <= MAX_VECTORS:
            raise ValueError(f"vectors must be 0..{MAX_VECTORS}, not {vectors!r}")
        if not 0 < shm_size <= MAX_SHM_SIZE:
            raise ValueError(
                f"shm_size must be 1..{format_size(MAX_SHM_SIZE)} bytes, not {shm_size!r}"
            )
        if shm_name is not None and shm_dir is not None:
            raise ValueError("give shm_name or shm_dir, not both")
        if shm_name is not None and (not shm_name.strip("/") or "/" in shm_name.strip("/")):
            raise ValueError(f"shm_name must be a name without '/', not {shm_name!r}")
        if max_peers is not None and not 1 <= max_peers <= MAX_PEER_ID + 1:
            raise ValueError(f"max_peers must be 1..{MAX_PEER_ID + 1}, not {max_peers!r}")
        if not 0 <= socket_mode <= 0o777:
            raise ValueError(f"socket_mode must be 0..0o777, not {socket_mode:o}")
        self.socket_path = os.fspath(socket_path)
        self.requested_size = shm_size
        self.shm_size = pow2ceil(shm_size)
        self.vectors = vectors
        self.shm_name = shm_name.strip("/") if shm_name is not None else None
        self.shm_dir = os.fspath(shm_dir) if shm_dir is not None else None
        self.socket_mode = socket_mode
        self.allow_uids = frozenset(allow_uids)
        self.allow_gids = frozenset(allow_gids)
        self.max_peers = max_peers
        self.stall_timeout = stall_timeout or None
        self.queue_limit = queue_limit
        self.raise_fd_limit = raise_fd_limit
        self.messages_sent = 0
        self.refused = 0
        self.write_waits = 0
        self.fd_retries = 0
        self._codec: _Rev1Codec = _Rev1Codec()
        self._max_peers_option = "--max-peers"
        self._peers: dict[int, _Peer] = {}
        self._zombies: set[_Peer] = set()  # gone, eventfds still queued to someone
        self._dirty: set[_Peer] = set()  # have messages and may send now
        self._retry: set[_Peer] = set()  # waiting for ETOOMANYREFS to clear
        self._doomed: list[tuple[_Peer, str, int]] = []  # to drop, why, log level
        self._next_id = 0
        self._shm_fd = -1
        self._listener: socket.socket | None = None
        self._socket_ident: tuple[int, int] | None = None
        #: (st_dev, st_ino) of the -M object once locked: only that one is unlinked at exit
        self._shm_ident: tuple[int, int] | None = None
        self._listening = False
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._reserve_fd = -1
        self._quit = False
        self._loop_thread: threading.Thread | None = None
        self._done = threading.Event()
        self._next_stall_check = 0.0
        self._accept_paused_until = 0.0

    # -- public API ------------------------------------------------------------------------

    @property
    def peer_ids(self) -> list[int]:
        """IDs of the connected peers, in join order."""
        return list(self._peers)

    @property
    def shm_fd(self) -> int:
        """The shared-memory fd (-1 before ``start()``)."""
        return self._shm_fd

    def pending(self) -> int:
        """Announcements queued for all clients and not yet fully sent."""
        return sum(len(p.queue) for p in list(self._peers.values()))

    def start(self) -> None:
        """Open the shared memory, bind and listen; raises ``ServerError``."""
        if self._listener is not None:
            return
        if self.raise_fd_limit:
            _raise_nofile_limit()
        try:
            # the socket first: until it is known to be ours, no shared memory is touched
            # (a second server on a live one's socket must not resize or unlink its memory)
            self._bind()
            self._open_shm()
            self._selector = selectors.DefaultSelector()
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            assert self._listener is not None
            self._selector.register(self._listener, selectors.EVENT_READ, None)
            self._selector.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
            # kept so that running out of fds can still accept-and-refuse a connection
            self._reserve_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            self._close()
            raise
        self._done.clear()
        self._listening = True
        log.info("listening on %s: %s", self.socket_path, self._summary())

    def serve_forever(self) -> None:
        """Run the event loop until ``stop()``; closes everything on return."""
        self.start()
        self._loop_thread = threading.current_thread()
        try:
            self._loop()
        finally:
            self._close()
            self._loop_thread = None
            self._done.set()

    def serve_in_background(self) -> threading.Thread:
        """Start the server if needed and run ``serve_forever`` in a daemon thread."""
        if self._loop_thread is not None:
            raise RuntimeError("the server is already serving")
        self.start()
        thread = threading.Thread(target=self.serve_forever, name="ivshmem-server", daemon=True)
        self._loop_thread = thread
        thread.start()
        return thread

    def request_stop(self) -> None:
        """Ask the loop to end and return at once; safe in a signal handler at any time.

        A request made before or during ``start()`` is kept: ``serve_forever`` then
        returns at once (closing everything) instead of serving.
        """
        self._quit = True
        self._wake()

    def stop(self) -> None:
        """End the loop (from any thread) and close all; idempotent."""
        self._quit = True
        loop = self._loop_thread
        if loop is not None:
            self._wake()
            if loop is not threading.current_thread():
                self._done.wait()
            return
        self._close()

    def __enter__(self) -> IvshmemServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- setup -----------------------------------------------------------------------------

    def _summary(self) -> str:
        """What the server serves, for its start-up log line."""
        return f"shm {self._shm_description()}, {self.shm_size} bytes, {self.vectors} vector(s)"

    def _shm_description(self) -> str:
        if self.shm_name is not None:
            return f"/dev/shm/{self.shm_name}"
        if self.shm_dir is not None:
            return f"file in {self.shm_dir}"
        return "memfd"

    def _open_shm(self) -> None:
        fresh = True
        if self.shm_name is not None:
            import _posixshmem  # CPython's binding of shm_open, as multiprocessing uses it

            where = f"/dev/shm/{self.shm_name}"
            try:
                fd = _posixshmem.shm_open(
                    "/" + self.shm_name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o700
                )
            except FileExistsError:
                fresh = False
                try:
                    fd = _posixshmem.shm_open("/" + self.shm_name, os.O_RDWR, 0o700)
                except OSError as e:
                    raise ServerError(f"cannot open shm {where}: {e.strerror}") from None
            except OSError as e:
                raise ServerError(f"cannot open shm {where}: {e.strerror}") from None
            os.set_inheritable(fd, False)
            self._shm_fd = fd
            # The lock lives on the open file, which every peer shares through the fd we
            # send: it is held while this server or any of its peers may use the memory.
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ServerError(
                    f"shm {where} is in use by another server or its peers: "
                    "stop them or use another -M"
                ) from None
            st = os.fstat(fd)
            if not fresh and st.st_size > self.shm_size:
                # someone may still map it (a killed server's peers, a plain mapping):
                # shrinking would take pages from under them
                have, want = format_size(st.st_size), format_size(self.requested_size)
                raise ServerError(
                    f"shm {where} exists with {have}, more than -l {want}: shrinking it "
                    f"could crash whoever maps it; remove it or use -l {have}"
                )
            self._shm_ident = (st.st_dev, st.st_ino)  # ours now: unlinked at exit
        elif self.shm_dir is not None:
            where = self.shm_dir
            try:
                fd, name = tempfile.mkstemp(prefix="ivshmem.", dir=self.shm_dir)
                os.unlink(name)
            except OSError as e:
                raise ServerError(f"cannot create shm file in {where}: {e.strerror}") from None
        else:
            where = "memfd"
            fd = os.memfd_create("ivshmem", os.MFD_CLOEXEC)
        self._shm_fd = fd
        size = self.shm_size
        if os.fstat(fd).st_size == size:
            return  # an existing object of the right size is reused as is, contents and all
        while True:
            try:
                os.ftruncate(fd, size)
                break
            except OSError as e:
                # hugetlbfs only takes multiples of its page size: try the next powers of two
                if size >= _MAX_HUGEPAGE_SIZE:
                    raise ServerError(
                        f"cannot set the size of shm {where} to {self.shm_size}: {e.strerror}"
                    ) from None
                size *= 2
        self.shm_size = size

    def _bind(self) -> None:
        path = self.socket_path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise ServerError(f"{path} exists and is not a socket: remove it or use -S")
            if _socket_is_live(path):
                raise ServerError(f"another server is listening on {path}: stop it or use -S")
            log.info("replacing stale socket %s", path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # the file takes the socket inode's mode at bind: no window with wider permissions
            os.fchmod(sock.fileno(), self.socket_mode)
            sock.bind(path)
            os.chmod(path, self.socket_mode)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise ServerError(f"cannot listen on {path}: {e.strerror or e}") from None
        st = os.stat(path)
        self._socket_ident = (st.st_dev, st.st_ino)
        self._listener = sock

    # -- event loop ------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass  # full (a wake-up is pending anyway) or closed

    def _loop(self) -> None:
        selector = self._selector
        assert selector is not None
        while not self._quit:
            events = selector.select(self._timeout())
            for key, mask in events:
                data = key.data
                if data is None:
                    self._accept()
                elif data is self._wake_r:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                elif not data.closed:
                    if mask & selectors.EVENT_READ:
                        # the protocol is one-way: data or EOF from a client means it is gone
                        self._drop(data, "disconnected", logging.INFO)
                    elif mask & selectors.EVENT_WRITE:
                        data.want_write = False
                        selector.modify(data.sock, selectors.EVENT_READ, data)
                        self._dirty.add(data)
            self._timers()
            self._flush()

    def _timeout(self) -> float | None:
        if self._dirty or self._doomed:
            return 0.0
        deadline: float | None = None
        if self._retry:
            deadline = min(p.retry_at for p in self._retry)
        if self._accept_paused_until:
            check = self._accept_paused_until
            deadline = check if deadline is None else min(deadline, check)
        if self.stall_timeout is not None and any(p.queue for p in self._peers.values()):
            check = self._next_stall_check
            deadline = check if deadline is None else min(deadline, check)
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    def _timers(self) -> None:
        now = time.monotonic()
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            assert self._selector is not None and self._listener is not None
            self._selector.register(self._listener, selectors.EVENT_READ, None)
        if self._retry:
            for peer in [p for p in self._retry if p.retry_at <= now]:
                self._retry.discard(peer)
                self._dirty.add(peer)
        if self.stall_timeout is not None and now >= self._next_stall_check:
            self._next_stall_check = now + min(self.stall_timeout / 4, 1.0)
            limit = now - self.stall_timeout
            for peer in list(self._peers.values()):
                if peer.queue and peer.last_progress < limit:
                    if _unread_bytes(peer.sock) == 0:
                        # it has read everything sent: only the fd in-flight limit (other
                        # readers' fault) holds it up
                        peer.last_progress = now
                        continue
                    self._doomed.append(
                        (
                            peer,
                            f"stopped reading: {len(peer.queue)} announcement(s) pending "
                            f"for {now - peer.last_progress:.1f} s",
                            logging.WARNING,
                        )
                    )

    def _flush(self) -> None:
        while self._dirty or self._doomed:
            while self._doomed:
                peer, reason, level = self._doomed.pop()
                self._drop(peer, reason, level)
            while self._dirty:
                self._send_queue(self._dirty.pop())

    def _send_queue(self, peer: _Peer) -> None:
        """Send ``peer``'s queue until it is empty or the socket pushes back."""
        if peer.closed:
            return
        queue = peer.queue
        sock = peer.sock
        codec = self._codec
        shm_fd = self._shm_fd
        sent = 0
        try:
            while queue:
                item = queue[0]
                if item.kind == _CANCELLED:
                    queue.popleft()
                    continue
                codec.send(sock, item, shm_fd)
                sent += 1
                item.next += 1
                if item.next >= codec.count(item):
                    queue.popleft()
                    if item.kind == _VECTORS:
                        self._release(item)
        except BlockingIOError:
            self.write_waits += 1
            peer.want_write = True
            assert self._selector is not None
            self._selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, peer)
        except OSError as e:
            if e.errno == _ETOOMANYREFS:
                # too many fds in flight for our user: wait for receivers to take some
                self.fd_retries += 1
                if peer.retry_delay == _RETRY_MIN:
                    log.debug("peer %d: too many fds in flight, retrying", peer.id)
                now = time.monotonic()
                peer.retry_at = now + peer.retry_delay
                peer.retry_delay = min(peer.retry_delay * 2, _RETRY_MAX)
                self._retry.add(peer)
            elif e.errno in (errno.EPIPE, errno.ECONNRESET):
                self._doomed.append((peer, "disconnected", logging.INFO))
            else:
                self._doomed.append((peer, f"send failed: {e.strerror or e}", logging.WARNING))
        if sent:
            self.messages_sent += sent
            peer.last_progress = time.monotonic()
            peer.retry_delay = _RETRY_MIN

    def _enqueue(self, peer: _Peer, item: _Item) -> None:
        queue = peer.queue
        if not queue:
            peer.last_progress = time.monotonic()
        queue.append(item)
        if item.kind == _VECTORS:
            item.peer.announcing.add(item)
        if len(queue) > self.queue_limit:
            reason = f"stopped reading: outbound queue over {self.queue_limit}"
            self._doomed.append((peer, reason, logging.WARNING))
        elif not peer.want_write and peer not in self._retry:
            self._dirty.add(peer)

    def _release(self, item: _Item) -> None:
        """``item`` no longer needs its peer's eventfds; close them if it was the last."""
        owner = item.peer
        owner.announcing.discard(item)
        if owner.closed and not owner.announcing:
            self._zombies.discard(owner)
            _close_fds(owner.eventfds)

    # -- peers -----------------------------------------------------------------------------

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        for _ in range(_ACCEPT_BURST):
            try:
                sock, _addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    self._refuse_without_fds(e)
                    continue
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue
                raise
            self._admit(sock)

    def _refuse_without_fds(self, error: OSError) -> None:
        """Accept-and-close with the reserve fd, else the listener stays readable forever."""
        assert self._listener is not None
        if self._reserve_fd >= 0:
            os.close(self._reserve_fd)
            self._reserve_fd = -1
        try:
            sock, _addr = self._listener.accept()
        except OSError:
            sock = None
        if sock is not None:
            self.refused += 1
            log.warning("refused a connection: out of file descriptors (%s)", error.strerror)
            sock.close()
        try:
            self._reserve_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._reserve_fd = -1
        if sock is None or self._reserve_fd < 0:
            # cannot even refuse: stop watching the listener for a moment, not spin on it
            if self._accept_paused_until == 0.0:
                log.warning("out of file descriptors: not accepting for %.1f s", _ACCEPT_PAUSE)
                assert self._selector is not None
                self._selector.unregister(self._listener)
            self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE

    def _refuse(self, sock: socket.socket, pid: int, reason: str) -> None:
        self.refused += 1
        log.warning("refused a connection (pid %d): %s", pid, reason)
        sock.close()

    def _admit(self, sock: socket.socket) -> None:
        try:
            pid, uid, gid = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
        except OSError as e:
            self._refuse(sock, 0, f"cannot read its credentials: {e.strerror}")
            return
        if (self.allow_uids or self.allow_gids) and not (
            uid in self.allow_uids or gid in self.allow_gids
        ):
            self._refuse(sock, pid, f"uid {uid} / gid {gid} not allowed")
            return
        if self.max_peers is not None and len(self._peers) >= self.max_peers:
            self._refuse(sock, pid, f"already {len(self._peers)} peers ({self._max_peers_option})")
            return
        peer_id = self._allocate_id()
        if peer_id is None:
            self._refuse(sock, pid, "no free peer ID")
            return
        eventfds: list[int] = []
        try:
            for _ in range(self.vectors):
                eventfds.append(os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK))
        except OSError as e:
            _close_fds(eventfds)
            self._refuse(sock, pid, f"cannot create its eventfds: {e.strerror}")
            return
        sock.setblocking(False)
        peer = _Peer(peer_id, sock, eventfds, pid)
        assert self._selector is not None
        self._selector.register(sock, selectors.EVENT_READ, peer)
        self._next_id = (peer_id + 1) & MAX_PEER_ID
        # message order as QEMU's server: init, new peer to the others, the others to
        # the new peer, the new peer to itself
        self._enqueue(peer, _Item(_INIT, peer, peer))
        if eventfds:
            for other in self._peers.values():
                self._enqueue(other, _Item(_VECTORS, peer, other))
        for other in self._peers.values():
            if other.eventfds:
                self._enqueue(peer, _Item(_VECTORS, other, peer))
        if eventfds:
            self._enqueue(peer, _Item(_VECTORS, peer, peer))
        self._peers[peer_id] = peer
        log.info("peer %d joined (pid %d, uid %d)", peer_id, pid, uid)
        log.debug(
            "peer %d: %d vector(s), announced to %d peer(s)",
            peer_id,
            len(eventfds),
            len(self._peers) - 1,
        )

    def _peer_left(self, peer: _Peer) -> None:
        """Called when ``peer`` is gone, before anyone is told (revision 2 clears its state)."""

    def _allocate_id(self) -> int | None:
        """An ID for a new peer, or ``None``: QEMU's counter that skips IDs in use."""
        candidate = self._next_id
        for _ in range(MAX_PEER_ID + 1):
            if candidate not in self._peers:
                return candidate
            candidate = (candidate + 1) & MAX_PEER_ID
        return None

    def _drop(self, peer: _Peer, reason: str, level: int) -> None:
        """Disconnect ``peer`` and tell the others; its eventfds live while still queued."""
        if peer.closed:
            return
        peer.closed = True
        log.log(level, "peer %d %s", peer.id, reason)
        if self._selector is not None:
            self._selector.unregister(peer.sock)
        peer.sock.close()
        del self._peers[peer.id]
        self._peer_left(peer)
        self._dirty.discard(peer)
        self._retry.discard(peer)
        queue = peer.queue
        peer.queue = collections.deque()
        for item in queue:
            if item.kind == _VECTORS:
                self._release(item)
        # A client that has not been sent any of our vectors yet never learns that we
        # came or went: join and departure cancel out (QEMU's server would have lost
        # those messages anyway when it came to that). A client in the middle of our
        # vectors gets the rest, then the departure, so our eventfds stay open until then.
        uninformed = set()
        for item in list(peer.announcing):
            if item.next == 0:
                item.kind = _CANCELLED
                peer.announcing.discard(item)
                uninformed.add(item.target)
        for other in self._peers.values():
            if other not in uninformed:
                self._enqueue(other, _Item(_GONE, peer, other))
        if peer.announcing:
            self._zombies.add(peer)
        else:
            _close_fds(peer.eventfds)

    # -- teardown --------------------------------------------------------------------------

    def _close(self) -> None:
        for peer in list(self._peers.values()) + list(self._zombies):
            if not peer.closed:
                peer.closed = True
                peer.sock.close()
            _close_fds(peer.eventfds)
        self._peers.clear()
        self._zombies.clear()
        self._dirty.clear()
        self._retry.clear()
        self._doomed.clear()
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            self._unlink_socket()
        if self._reserve_fd >= 0:
            os.close(self._reserve_fd)
            self._reserve_fd = -1
        if self._shm_fd >= 0:
            os.close(self._shm_fd)
            self._shm_fd = -1
            if self._shm_ident is not None:
                # as QEMU's server does on exit, but only our own object: not one that
                # another server holds (we failed to lock it) or put there since
                self._unlink_if_ours(f"/dev/shm/{self.shm_name}", self._shm_ident)
                self._shm_ident = None
        if self._listener is None and self._socket_ident is not None:
            self._socket_ident = None
            if self._listening:
                log.info("server closed")
            self._listening = False
        self._quit = False  # closed: a later start() serves again

    def _unlink_socket(self) -> None:
        """Remove our socket file, but not one another server has put there since."""
        if self._socket_ident is not None:
            self._unlink_if_ours(self.socket_path, self._socket_ident)

    @staticmethod
    def _unlink_if_ours(path: str, ident: tuple[int, int]) -> None:
        try:
            st = os.lstat(path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == ident:
            try:
                os.unlink(path)
            except OSError:
                pass


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


def _unread_bytes(sock: socket.socket) -> int:
    """Bytes we sent on ``sock`` that its reader has not taken yet (SIOCOUTQ)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except OSError:
        return 1  # unknown: count it as unread


def _raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, e)


def _socket_is_live(path: str) -> bool:
    """Whether a server listens on ``path`` (else the file is a stale leftover)."""
    wanted = {path, os.path.abspath(path)}
    try:
        with open("/proc/net/unix") as table:
            next(table)
            for line in table:
                fields = line.split(None, 7)
                # flags 00010000 is __SO_ACCEPTCON: a listening socket
                if len(fields) == 8 and fields[3] == "00010000" and fields[7].strip() in wanted:
                    return True
    except OSError:
        pass
    # not found under that spelling: connecting tells (refused means nobody listens)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True
    finally:
        probe.close()
    return True


# -- command line --------------------------------------------------------------------------

#: ``-h`` text of the options both servers share, before and after their own.
USAGE_HEAD = f"""\
Usage: {{prog}} [OPTION]...
  -h: show this help
  -v: verbose mode
  -F: foreground mode (default is to daemonize)
  -p <pid-file>: path to the PID file (used in daemon mode only)
     default {DEFAULT_PID_FILE}
  -S <unix-socket-path>: path to the unix socket to listen to
     default {DEFAULT_SOCKET_PATH}
  -M <shm-name>: POSIX shared memory object to use
     default {DEFAULT_SHM_NAME}
  -m <dir-name>: where to create shared memory
  -l <size>: size of shared memory in bytes
     suffixes K, M, G, T, P and E can be used, e.g. 1K means 1024;
     0x for hexadecimal
     default {DEFAULT_SHM_SIZE}
"""
USAGE_TAIL = """\
  --socket-mode <octal>: permissions of the socket file, default 0600
  --allow-uid <uid>, --allow-gid <gid>: admit only these clients (SO_PEERCRED),
     repeatable
  --stall-timeout <seconds>: disconnect a client that stops reading, default 10
     (0: never)
  --log-file <path>: append the log there instead of stderr (a daemon is silent
     otherwise); with -v also in daemon mode
"""
_USAGE = (
    USAGE_HEAD
    + """\
  -n <nvectors>: number of vectors
     default 1
  --max-peers <n>: refuse connections beyond n peers
"""
    + USAGE_TAIL
)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: ...``, status 2) and QEMU's usage text."""

    def __init__(self, *, usage_text: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._usage_text = usage_text

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def format_help(self) -> str:
        return self._usage_text.format(prog=self.prog)


def _shm_arg(kind: str) -> Callable[[str], tuple[str, str]]:
    def convert(text: str) -> tuple[str, str]:
        if not text:
            raise argparse.ArgumentTypeError("must not be empty")
        if kind == "name" and not text.strip("/"):
            raise argparse.ArgumentTypeError(f"a shm name is not only '/': {text!r}")
        if kind == "name" and "/" in text.strip("/"):
            raise argparse.ArgumentTypeError(f"a shm name has no '/' inside: {text!r}")
        return kind, text

    convert.__name__ = "shm name" if kind == "name" else "directory"
    return convert


_SHM_SIZE = size_type(minimum=1, maximum=MAX_SHM_SIZE, what="shm size")


def _vectors_arg(text: str) -> int:
    try:
        n = parse_uint(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot parse n_vectors {text!r}") from None
    if n > MAX_VECTORS:
        raise argparse.ArgumentTypeError(f"too many requested vectors (max is {MAX_VECTORS})")
    return n


def _mode_arg(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"mode must be 0..0777, not {text!r}")
    return mode


def _id_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a numeric id: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _peers_arg(text: str) -> int:
    value = _id_arg(text)
    if not 1 <= value <= MAX_PEER_ID + 1:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_PEER_ID + 1}, not {text!r}")
    return value


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def common_parser(prog: str, usage_text: str) -> _ArgumentParser:
    """The options both servers share (QEMU's and ours); each adds its own on top.

    ``usage_text`` is the ``-h`` text, with ``{prog}`` for the program name.
    """
    parser = _ArgumentParser(prog=prog, usage_text=usage_text, add_help=False, allow_abbrev=False)
    parser.add_argument("-h", action="store_true", dest="help")
    parser.add_argument("-v", action="store_true", dest="verbose")
    parser.add_argument("-F", action="store_true", dest="foreground")
    parser.add_argument("-p", dest="pid_file", default=DEFAULT_PID_FILE, metavar="PIDFILE")
    parser.add_argument("-S", dest="socket_path", default=DEFAULT_SOCKET_PATH, metavar="PATH")
    # -M and -m share one destination: the last one given wins, as with QEMU's getopt loop
    parser.add_argument(
        "-M", dest="shm", type=_shm_arg("name"), default=("name", DEFAULT_SHM_NAME), metavar="NAME"
    )
    parser.add_argument("-m", dest="shm", type=_shm_arg("dir"), metavar="DIR")
    parser.add_argument(
        "-l",
        dest="size",
        type=_SHM_SIZE,
        default=DEFAULT_SHM_SIZE,
        metavar="SIZE",
    )
    parser.add_argument("--socket-mode", type=_mode_arg, default=0o600, metavar="OCTAL")
    parser.add_argument("--allow-uid", type=_id_arg, action="append", default=[], metavar="UID")
    parser.add_argument("--allow-gid", type=_id_arg, action="append", default=[], metavar="GID")
    parser.add_argument("--stall-timeout", type=_seconds_arg, default=10.0, metavar="SECONDS")
    parser.add_argument("--log-file", default=None, metavar="PATH")
    return parser


def _parser(prog: str) -> _ArgumentParser:
    parser = common_parser(prog, _USAGE)
    parser.add_argument("-n", dest="vectors", type=_vectors_arg, default=1, metavar="VECTORS")
    parser.add_argument("--max-peers", type=_peers_arg, default=None, metavar="N")
    return parser


def _daemonize(prog: str, pid_file: int) -> None:
    """Double fork; the original process exits once the daemon has written ``pid_file``.

    ``pid_file`` is an fd opened (and so checked) before the fork. The daemon's
    stdin, stdout and stderr then go to /dev/null: it says nothing on the
    terminal that started it (``--log-file`` is where its log goes).
    """
    ready_r, ready_w = os.pipe()
    if os.fork() > 0:
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as ready:
            status = ready.read()
        if status == b"ok":
            os._exit(0)
        sys.stderr.write(status.decode(errors="replace") or f"{prog}: daemon died\n")
        sys.stderr.flush()
        os._exit(1)
    os.close(ready_r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    try:
        os.write(pid_file, f"{os.getpid()}\n".encode())
        os.close(pid_file)
    except OSError as e:
        os.write(ready_w, f"{prog}: cannot write the pid file: {e.strerror}\n".encode())
        os.close(ready_w)
        raise
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            logging.getLogger().removeHandler(handler)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.write(ready_w, b"ok")
    os.close(ready_w)


def _remove_pid_file(path: str) -> None:
    """Remove the pid file at exit if it still names this process."""
    try:
        with open(path) as f:
            mine = f.read().strip() == str(os.getpid())
        if mine:
            os.unlink(path)
    except OSError:
        pass


def _setup_logging(prog: str, args: argparse.Namespace) -> None:
    """Log to ``--log-file`` if given, else to stderr; a daemon's stderr says only warnings."""
    level = logging.DEBUG if args.verbose else logging.INFO
    if args.log_file is not None:
        try:
            handler: logging.Handler = logging.FileHandler(args.log_file)
        except OSError as e:
            sys.stderr.write(f"{prog}: cannot open log file {args.log_file}: {e.strerror}\n")
            raise SystemExit(1) from None
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {prog}[%(process)d]: %(levelname)s: %(message)s")
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{prog}: %(levelname)s: %(message)s"))
        if not args.foreground:
            # until it detaches, a daemon tells its terminal only what went wrong
            handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


ServerFactory = Callable[[argparse.Namespace, dict[str, object]], IvshmemServer]


def run_cli(
    prog: str, parser: _ArgumentParser, argv: Sequence[str] | None, make_server: ServerFactory
) -> int:
    """Parse, build the server with ``make_server(args, common_kwargs)``, serve; exit status.

    What both servers' commands share: ``-h``, the verbose/daemon rule, logging, the
    shared-memory choice, one-line errors (a ``ValueError`` from ``make_server`` is a
    usage error, status 2; a ``ServerError`` from ``start()`` status 1), the pid file,
    daemon mode, SIGTERM/SIGINT.
    """
    args = parser.parse_args(argv)
    if args.help:
        sys.stdout.write(parser.format_help())
        return 0
    if args.verbose and not args.foreground and args.log_file is None:
        parser.error("cannot use verbose in daemon mode (add -F or --log-file)")
    kind, value = args.shm
    try:
        server = make_server(
            args,
            {
                "shm_size": args.size,
                "shm_name": value if kind == "name" else None,
                "shm_dir": value if kind == "dir" else None,
                "socket_mode": args.socket_mode,
                "allow_uids": args.allow_uid,
                "allow_gids": args.allow_gid,
                "stall_timeout": args.stall_timeout,
            },
        )
    except ValueError as e:
        parser.error(str(e))
    _setup_logging(prog, args)
    pid_fd = -1
    pid_file = os.path.abspath(args.pid_file)
    if not args.foreground:
        # opened before anything starts, so that an unwritable pid file is one line
        try:
            pid_fd = os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as e:
            sys.stderr.write(f"{prog}: cannot write pid file {pid_file}: {e.strerror}\n")
            return 1

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: shutting down", signal.Signals(signum).name)
        server.request_stop()

    # installed before start(): a SIGTERM sent as soon as "listening" is logged is a
    # clean shutdown, not a kill by the default action
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start()
    except ServerError as e:
        sys.stderr.write(f"{prog}: {e}\n")
        if pid_fd >= 0:
            os.close(pid_fd)
            with contextlib.suppress(OSError):
                os.unlink(pid_file)
        return 1
    if not args.foreground:
        try:
            _daemonize(prog, pid_fd)
        except OSError:
            server.stop()
            return 1
    try:
        server.serve_forever()
    finally:
        if not args.foreground:
            _remove_pid_file(pid_file)
    return 0


def _make_server(args: argparse.Namespace, common: dict[str, object]) -> IvshmemServer:
    return IvshmemServer(
        args.socket_path,
        vectors=args.vectors,
        max_peers=args.max_peers,
        **common,  # type: ignore[arg-type]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point, options as QEMU's ``ivshmem-server``; returns the exit status."""
    prog = "ivshmem-server"
    return run_cli(prog, _parser(prog), argv, _make_server)


if __name__ == "__main__":
    sys.exit(main())
