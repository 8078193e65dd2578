"""A scriptable ivshmem server for tests: correct and deliberately broken message sequences.

Each accepted connection runs ``script(conn, index)`` in the server thread; the
connection then stays open (the client sees no EOF) until the script closes it
or :meth:`FakeServer.stop`. Every fd the fake server creates is closed by
``stop()``, so fd-leak checks can compare ``/proc/self/fd`` before and after.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

from ivhw.sw.protocol import (
    EVENT_FD2,
    INIT2,
    MSG,
    MSG2_EVENT_FD,
    MSG2_HEADER,
    MSG2_INIT,
    MSG2_PEER_GONE,
    PEER_GONE2,
    send_message,
)

__all__ = ["FakeConn", "FakeServer", "check_error_after_handshake", "open_fds"]


def open_fds() -> set[int]:
    """The fds this process has open now."""
    return {int(name) for name in os.listdir("/proc/self/fd")} - {-1}


class FakeConn:
    """One accepted connection: send helpers and the server-side fds it created.

    Attributes
    ----------
    sock : socket.socket
        The accepted connection.
    own : list[int]
        Server-side copies of the eventfds handed to the client as its own vectors
        (write to ring the client).
    peers : dict[int, list[int]]
        Server-side copies of the eventfds of fake peers sent to the client
        (read to see the client ring them).
    """

    def __init__(self, sock: socket.socket, fds: list[int]) -> None:
        self.sock = sock
        self._fds = fds
        self.own: list[int] = []
        self.peers: dict[int, list[int]] = {}
        self.own_id = 0

    def send(self, value: int, fd: int | None = None) -> None:
        """Send one message, with ``fd`` attached when given."""
        send_message(self.sock, value, fd)

    def raw(self, data: bytes, fds: list[int] | None = None) -> None:
        """Send raw bytes, with any number of fds attached."""
        import array

        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        self.sock.sendmsg([data], anc)

    def memfd(self, size: int) -> int:
        """A shared-memory fd of ``size`` bytes, closed at stop()."""
        fd = os.memfd_create("fake-ivshmem", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        self._fds.append(fd)
        return fd

    def eventfd(self) -> int:
        """A fresh eventfd (non-blocking, like QEMU's server), closed at stop()."""
        fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._fds.append(fd)
        return fd

    def preamble(self, peer_id: int = 0, shm_size: int = 4096) -> None:
        """Version, own ID and the shared memory, all correct."""
        self.send(0)
        self.send(peer_id)
        self.send(-1, self.memfd(shm_size))

    def add_peer(self, peer_id: int, vectors: int = 1) -> None:
        """Announce another peer with ``vectors`` fresh eventfds."""
        for _ in range(vectors):
            fd = self.eventfd()
            self.peers.setdefault(peer_id, []).append(fd)
            self.send(peer_id, fd)

    def remove_peer(self, peer_id: int) -> None:
        """Announce that a peer left."""
        self.send(peer_id)

    def own_vectors(self, peer_id: int, vectors: int = 1) -> None:
        """Send the client its own ``vectors`` eventfds."""
        for _ in range(vectors):
            fd = self.eventfd()
            self.own.append(fd)
            self.send(peer_id, fd)

    def handshake(
        self,
        peer_id: int = 0,
        *,
        vectors: int = 1,
        peers: dict[int, int] | None = None,
        shm_size: int = 4096,
    ) -> None:
        """A complete, correct handshake: preamble, existing peers, own vectors."""
        self.preamble(peer_id, shm_size)
        for other, count in (peers or {}).items():
            self.add_peer(other, count)
        self.own_vectors(peer_id, vectors)

    # -- protocol revision 2 -----------------------------------------------------------------

    def frame(self, kind: int, body: bytes, fds: list[int] | None = None) -> None:
        """One revision 2 message: the header (with the right ``len``) and ``body``."""
        self.raw(MSG2_HEADER.pack(kind, MSG2_HEADER.size + len(body)) + body, fds)

    def init2(
        self,
        peer_id: int = 0,
        *,
        max_peers: int = 4,
        vectors: int = 1,
        protocol: int = 0,
        output_section_size: int = 4096,
        shm_size: int = 1 << 16,
        version: int = 2,
    ) -> None:
        """A correct INIT with a fresh shared memory."""
        body = INIT2.pack(
            version, version, peer_id, max_peers, vectors, protocol, output_section_size
        )
        self.frame(MSG2_INIT, body, [self.memfd(shm_size)])

    def event_fd2(self, peer_id: int, vector: int) -> None:
        """Announce vector ``vector`` of ``peer_id`` with a fresh eventfd."""
        fd = self.eventfd()
        self.frame(MSG2_EVENT_FD, EVENT_FD2.pack(peer_id, vector), [fd])
        (self.own if peer_id == self.own_id else self.peers.setdefault(peer_id, [])).append(fd)

    def gone2(self, peer_id: int) -> None:
        """PEER_GONE for ``peer_id``."""
        self.frame(MSG2_PEER_GONE, PEER_GONE2.pack(peer_id))

    def handshake2(
        self, peer_id: int = 0, *, vectors: int = 1, peers: tuple[int, ...] = (), **init: int
    ) -> None:
        """A complete, correct revision 2 handshake: INIT, existing peers, own vectors."""
        self.own_id = peer_id
        self.init2(peer_id, vectors=vectors, **init)
        for other in (*peers, peer_id):
            for vector in range(vectors):
                self.event_fd2(other, vector)

    def ring_client(self, vector: int = 0, times: int = 1) -> None:
        """Ring the client's own vector as another peer would."""
        os.write(self.own[vector], times.to_bytes(8, "little"))

    def rung(self, peer_id: int, vector: int = 0) -> int:
        """How often the client rang fake peer ``peer_id`` on ``vector`` (0: not yet)."""
        try:
            return int.from_bytes(os.read(self.peers[peer_id][vector], 8), "little")
        except BlockingIOError:
            return 0


Script = Callable[[FakeConn, int], None]


class FakeServer:
    """Listens on ``path``; runs ``script(conn, index)`` for every connection, in order.

    Parameters
    ----------
    path : str
        Where to listen (a UNIX socket path, use ``tmp_path``).
    script : callable
        ``script(conn, index)``; exceptions are kept in :attr:`errors`.
    """

    def __init__(self, path: str, script: Script) -> None:
        self.path = path
        self.script = script
        self.conns: list[FakeConn] = []
        self.errors: list[BaseException] = []
        self._fds: list[int] = []
        self._connected = threading.Condition()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(8)
        self._listener.settimeout(0.05)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-ivshmem", daemon=True)

    def start(self) -> FakeServer:
        """Start accepting in a thread."""
        self._thread.start()
        return self

    def _run(self) -> None:
        index = 0
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn = FakeConn(sock, self._fds)
            try:
                self.script(conn, index)
            except BaseException as exc:  # reported to the test via errors
                self.errors.append(exc)
            with self._connected:
                self.conns.append(conn)
                self._connected.notify_all()
            index += 1

    def conn(self, index: int = 0, timeout: float = 5.0) -> FakeConn:
        """Connection ``index`` once its script has run."""
        with self._connected:
            if not self._connected.wait_for(lambda: len(self.conns) > index, timeout):
                raise TimeoutError(f"fake server: no connection {index} within {timeout} s")
            return self.conns[index]

    def stop(self) -> None:
        """Stop accepting, close every connection and every fd created."""
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()
        for conn in self.conns:
            conn.sock.close()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_error_after_handshake(
    path: str,
    handshake: Callable[[FakeConn], None],
    action: Callable[[FakeConn], object],
    error: type[Exception],
    message: str,
) -> None:
    """A protocol error after ``handshake``: raised by poll, nothing lost, the peer still
    works, no fd leaked."""
    import time

    import pytest

    from ivhw.sw.peer import Peer

    before = open_fds()
    with (
        FakeServer(path, lambda conn, index: handshake(conn)) as server,
        Peer(path, timeout=0.3) as peer,
    ):
        conn = server.conn()
        conn.ring_client(0)
        time.sleep(0.02)
        action(conn)
        with pytest.raises(error, match=message):
            for _ in range(5):
                peer.poll(1)
        # what arrived before the error is not lost, and the peer keeps working
        assert [type(e).__name__ for e in peer.poll()] == ["Doorbell"]
        conn.ring_client(0)
        assert peer.wait(timeout=2).vector == 0
    assert not server.errors
    assert open_fds() == before


#: Keep ``MSG`` importable from here for raw-byte tests.
PACK = MSG.pack
