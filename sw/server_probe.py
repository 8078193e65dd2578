"""Raw protocol clients that check an ivshmem server message by message (tests, benchmarks).

Unlike the peer library these clients keep nothing: they record what arrived, in
which order, and (``CountingSwarm``) close every received fd at once, so that
hundreds of them fit in one process far below its fd limit.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .protocol import (
    EVENT_FD2,
    INIT2,
    MSG2_EVENT_FD,
    MSG2_HEADER,
    MSG2_INIT,
    MSG2_PEER_GONE,
    PEER_GONE2,
    PROTOCOL_VERSION,
    SHM_MESSAGE_ID,
    recv_frame,
    recv_message,
)

__all__ = [
    "CountingSwarm",
    "Frame",
    "RawClient",
    "RawClient2",
    "ServerProcess",
    "SwarmResult",
    "fd_count",
]


def fd_count(pid: int | None = None) -> int:
    """Open file descriptors of process ``pid`` (default: this one), from ``/proc``."""
    return len(os.listdir(f"/proc/{pid if pid is not None else 'self'}/fd"))


class RawClient:
    """A blocking protocol-level client: every message as ``(value, fds)``, fds kept open.

    Parameters
    ----------
    path:
        The server's socket.
    timeout:
        Seconds a receive may wait before ``TimeoutError``.

    Attributes
    ----------
    sock:
        The connected socket.
    fds:
        Every fd received so far (closed by ``close()``).
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.fds: list[int] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(os.fspath(path))
                break
            except (ConnectionRefusedError, FileNotFoundError):
                # bound but not yet listening, or not yet bound: a server is starting
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise
                time.sleep(0.01)

    def recv(self) -> tuple[int, list[int]] | None:
        """Next message, or ``None`` at end of stream."""
        message = recv_message(self.sock)
        if message is not None:
            self.fds.extend(message[1])
        return message

    def recv_n(self, count: int) -> list[tuple[int, int]]:
        """The next ``count`` messages as ``(value, number of fds)``; EOF is an error."""
        out = []
        for _ in range(count):
            message = self.recv()
            if message is None:
                raise ConnectionError(f"server closed after {len(out)} of {count} messages")
            out.append((message[0], len(message[1])))
        return out

    def handshake(self) -> tuple[int, int]:
        """Read version, ID and shared memory; returns ``(id, shm_fd)``."""
        version = self.recv()
        own = self.recv()
        shm = self.recv()
        if version is None or own is None or shm is None:
            raise ConnectionError("server closed during the handshake")
        if version != (PROTOCOL_VERSION, []) or own[1] or shm[0] != SHM_MESSAGE_ID:
            raise AssertionError(f"bad handshake: {version}, {own}, {shm}")
        if len(shm[1]) != 1:
            raise AssertionError(f"shm message carries {len(shm[1])} fds")
        return own[0], shm[1][0]

    def at_eof(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` for the server to close (remaining messages are read)."""
        self.sock.settimeout(timeout)
        try:
            while self.recv() is not None:
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass  # closed while our data was unread: a reset, but closed all the same
        return True

    def close(self) -> None:
        """Close the socket and every received fd."""
        self.sock.close()
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


#: Messages one client reads per turn of the swarm's loop.
_DRAIN_TURN = 256

#: A decoded revision 2 message: ``(type, fields, number of fds)``; fields are INIT's
#: seven, EVENT_FD's ``(id, vector)`` or PEER_GONE's ``(id,)``.
Frame = tuple[int, tuple[int, ...], int]

_BODIES = {MSG2_INIT: INIT2, MSG2_EVENT_FD: EVENT_FD2, MSG2_PEER_GONE: PEER_GONE2}


class RawClient2(RawClient):
    """:class:`RawClient` for protocol revision 2: messages as decoded :data:`Frame` tuples."""

    def recv2(self) -> tuple[int, tuple[int, ...], list[int]] | None:
        """Next message as ``(type, fields, fds)``, or ``None`` at end of stream."""
        message = self.recv_sized2()
        return None if message is None else message[1:]

    def recv_sized2(self) -> tuple[int, int, tuple[int, ...], list[int]] | None:
        """Next message as ``(len, type, fields, fds)``, ``len`` as the header gave it."""
        message = recv_frame(self.sock)
        if message is None:
            return None
        kind, body, fds = message
        self.fds.extend(fds)
        layout = _BODIES.get(kind)
        if layout is None or len(body) < layout.size:
            raise AssertionError(f"malformed message: type {kind}, {len(body)} body bytes")
        return MSG2_HEADER.size + len(body), kind, layout.unpack_from(body), fds

    def recv_n2(self, count: int) -> list[Frame]:
        """The next ``count`` messages as :data:`Frame`; EOF is an error."""
        out: list[Frame] = []
        for _ in range(count):
            message = self.recv2()
            if message is None:
                raise ConnectionError(f"server closed after {len(out)} of {count} messages")
            out.append((message[0], message[1], len(message[2])))
        return out

    def init(self) -> tuple[tuple[int, ...], int]:
        """Read INIT; returns its fields and the shm fd."""
        message = self.recv2()
        if message is None:
            raise ConnectionError("server closed before INIT")
        kind, fields, fds = message
        if kind != MSG2_INIT or len(fds) != 1:
            raise AssertionError(f"bad INIT: type {kind}, {len(fds)} fds")
        return fields, fds[0]

    def at_eof(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` for the server to close (remaining messages are read)."""
        self.sock.settimeout(timeout)
        try:
            while self.recv2() is not None:
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True


@dataclass
class _Counted:
    """What one swarm client has seen."""

    sock: socket.socket
    state: int = 0  # messages of the handshake seen, 3 = done
    id: int = -1
    runs: list[int] = field(default_factory=list)  # peer IDs announced, in order
    run_len: int = 0  # fds of the current (last) run
    messages: int = 0
    error: str = ""


@dataclass
class SwarmResult:
    """Outcome of a ``CountingSwarm`` run."""

    peers: int
    vectors: int
    seconds: float
    messages: int
    complete: bool
    errors: list[str]


def _flatten2(
    frame: tuple[int, bytes, list[int]], client: _Counted, vectors: int
) -> tuple[int, list[int]]:
    """A revision 2 message as the revision 1 ``(value, fds)`` the swarm counts.

    INIT becomes ``-1`` (and sets the client's ID), EVENT_FD the announced peer's
    ID (-2 if the vector is out of order), anything else -3.
    """
    kind, body, fds = frame
    layout = _BODIES.get(kind)
    if layout is None or len(body) < layout.size:
        return -3, fds
    fields = layout.unpack_from(body)
    if kind == MSG2_INIT:
        client.id = fields[2]
        return -1, fds
    if kind == MSG2_EVENT_FD:
        peer, vector = fields
        in_run = client.runs and client.runs[-1] == peer and client.run_len < vectors
        due = client.run_len if in_run else 0
        return (peer if vector == due else -2), fds
    return -3, fds


class CountingSwarm:
    """N raw clients that join one after another and verify every message they get.

    Each client closes each received fd at once and checks its stream: revision 1
    (``revision=1``) version, own ID, shm; revision 2 one INIT with the shm; then
    for every peer in join order (its own ID included) exactly ``vectors``
    messages with one fd each (revision 2: EVENT_FD, vectors in order).
    """

    def __init__(
        self, path: str | os.PathLike[str], peers: int, vectors: int, revision: int = 1
    ) -> None:
        self.path = os.fspath(path)
        self.peers = peers
        self.vectors = vectors
        self.revision = revision
        self._clients: list[_Counted] = []

    def run(self, timeout: float = 120.0, idle: float | None = None) -> SwarmResult:
        """Connect all clients, read until each has seen everything or ``timeout``.

        With ``idle``, also give up once nothing has arrived for that many seconds
        (for servers that lose messages).
        """
        selector = selectors.DefaultSelector()
        start = time.monotonic()
        deadline = start + timeout
        clients = self._clients
        last_arrival = start
        try:
            pending = 0
            connected = 0
            while (now := time.monotonic()) < deadline:
                if idle is not None and connected == self.peers and now - last_arrival > idle:
                    break
                if connected < self.peers:
                    # connect in small batches so that joins interleave with reading
                    for _ in range(min(8, self.peers - connected)):
                        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        sock.connect(self.path)
                        sock.setblocking(False)
                        client = _Counted(sock)
                        clients.append(client)
                        selector.register(sock, selectors.EVENT_READ, client)
                        connected += 1
                        pending += 1
                elif pending == 0:
                    break
                for key, _mask in selector.select(0.1 if connected == self.peers else 0):
                    client = key.data
                    last_arrival = time.monotonic()
                    if self._drain(client):
                        pending -= 1
                        selector.unregister(client.sock)
            seconds = (last_arrival if pending else time.monotonic()) - start
        finally:
            selector.close()
        errors = [f"client {c.id}: {c.error}" for c in clients if c.error]
        complete = not errors and pending == 0 and len(clients) == self.peers
        join_order = [c.id for c in clients]
        if complete and self.vectors:
            for c in clients:
                if c.runs != join_order:
                    errors.append(f"client {c.id}: peers announced in order {c.runs[:8]}...")
            complete = not errors
        if not complete and not errors:
            errors.append(f"{pending} client(s) incomplete after {seconds:.1f} s")
        return SwarmResult(
            self.peers,
            self.vectors,
            seconds,
            sum(c.messages for c in clients),
            complete,
            errors,
        )

    def _drain(self, client: _Counted) -> bool:
        """Read what is there; True once the client has everything or the stream ended.

        After a wrong message the client keeps counting (to measure what a lossy
        server delivers) but can no longer complete.
        """
        want = self.peers
        vectors = self.vectors
        rev2 = self.revision == 2
        # a bounded turn per client: a server that refills one socket as fast as it is read
        # must not starve the other clients (and get them disconnected as stalled)
        for _ in range(_DRAIN_TURN):
            try:
                if rev2:
                    frame = recv_frame(client.sock)
                    message = None if frame is None else _flatten2(frame, client, vectors)
                else:
                    message = recv_message(client.sock)
            except BlockingIOError:
                return False
            except OSError as e:
                client.error = f"receive failed: {e}"
                return True
            if message is None:
                client.error = f"server closed after {client.messages} messages"
                return True
            value, fds = message
            for fd in fds:
                os.close(fd)
            client.messages += 1
            if rev2 and client.state == 0:
                ok = value == -1 and len(fds) == 1  # INIT, its ID already taken
                client.state = 2
            elif client.state == 0:
                ok = value == PROTOCOL_VERSION and not fds
            elif client.state == 1:
                ok = not fds
                client.id = value
            elif client.state == 2:
                ok = value == SHM_MESSAGE_ID and len(fds) == 1
            else:
                ok = len(fds) == 1
                if ok:
                    if client.run_len and client.runs[-1] == value and client.run_len < vectors:
                        client.run_len += 1
                    elif not client.runs or client.run_len == vectors:
                        client.runs.append(value)
                        client.run_len = 1
                    else:
                        ok = False
            if not ok and not client.error:
                client.error = (
                    f"unexpected message {client.messages}: {value} with {len(fds)} fd(s)"
                )
            if client.error:
                continue
            if client.state < 3:
                client.state += 1
            if client.state == 3 and (
                vectors == 0 or (len(client.runs) == want and client.run_len == vectors)
            ):
                return True
        return False

    def expected(self) -> int:
        """Messages every client together must receive."""
        handshake = 3 if self.revision == 1 else 1
        return self.peers * (handshake + self.peers * self.vectors)

    def close(self) -> None:
        """Disconnect every client."""
        for client in self._clients:
            client.sock.close()
        self._clients.clear()


class ServerProcess:
    """``python -m ivhw.sw.server -F ...`` as a subprocess, ready once it listens.

    Parameters
    ----------
    socket_path:
        Passed as ``-S``.
    args:
        Further command-line options.
    log_path:
        Where its stderr goes (read it with ``log()``).
    preexec_fn:
        Run in the child before exec (e.g. to lower ``RLIMIT_NOFILE``).
    timeout:
        Seconds to wait for it to listen.
    prefix:
        A command that runs the server (e.g. ``setpriv ...``).
    module:
        The server module to run (``ivhw.sw.server2`` for revision 2).
    command:
        Run this program instead of ``module`` (e.g. another implementation's
        binary); it counts as ready once its socket exists, since it need not
        log the way ours do.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        args: Sequence[str],
        log_path: str | os.PathLike[str],
        preexec_fn: object = None,
        timeout: float = 10.0,
        prefix: Sequence[str] = (),
        module: str = "ivhw.sw.server",
        command: Sequence[str] | None = None,
    ) -> None:
        self.socket_path = os.fspath(socket_path)
        program = [sys.executable, "-m", module] if command is None else list(command)
        self.log_path = Path(log_path)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    *prefix,
                    *program,
                    "-F",
                    "-S",
                    self.socket_path,
                    *args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=preexec_fn,  # type: ignore[arg-type]
            )
        deadline = time.monotonic() + timeout
        while not (
            os.path.exists(self.socket_path)
            if command is not None
            else "listening on" in self.log()
        ):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start: {self.log()}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        """The server's process ID."""
        return self.proc.pid

    def log(self) -> str:
        """Everything the server has logged so far."""
        return self.log_path.read_text(errors="replace")

    def fd_count(self) -> int:
        """The server's open file descriptors."""
        return fd_count(self.proc.pid)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, return the exit status (SIGKILL if it does not exit)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
