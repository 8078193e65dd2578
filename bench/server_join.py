"""Join scaling of the ivshmem server: N peers x V vectors join, every message verified.

``python -m bench.server_join [--quick] [--peers 16,64,256] [--vectors 1,8] [--no-baseline]``

For each N x V, N raw clients (``ivhw.sw.server_probe.CountingSwarm``) connect
one after another to a fresh server subprocess, close every fd they receive at
once and check each message against the join order of
``docs/protocol-rev1.md``. The table shows the total time
until every client has everything, the time per join, messages delivered
against expected, and the server's open fds while all peers are connected.

The baseline, measured in the same run, is a minimal server that behaves like
QEMU's ``contrib/ivshmem-server``: non-blocking client sockets, one
``sendmsg`` per message, failures ignored. It shows what a join costs without
queueing, and how many messages it loses once a join needs more than a socket
buffer's worth of messages (about 300).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import selectors
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ivhw.sw.protocol import PROTOCOL_VERSION, SHM_MESSAGE_ID, send_message
from ivhw.sw.server_probe import CountingSwarm, ServerProcess, fd_count

__all__ = ["Row", "main", "measure"]


@dataclass
class Row:
    """One measurement."""

    server: str
    peers: int
    vectors: int
    seconds: float
    delivered: int
    expected: int
    complete: bool
    server_fds: int


def _qemu_style_server(path: str, vectors: int, shm_size: int) -> None:
    """QEMU's server loop in miniature: sendmsg failures are ignored (messages are lost)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    shm_fd = os.memfd_create("ivshmem-baseline")
    os.ftruncate(shm_fd, shm_size)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(socket.SOMAXCONN)
    peers: dict[int, tuple[socket.socket, list[int]]] = {}
    next_id = 0

    # QEMU's loop uses select(), which cannot watch fds above 1023 (FD_SETSIZE): 256 peers
    # with 8 vectors need more, so the baseline polls with epoll instead
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)

    def send(sock: socket.socket, value: int, fd: int | None = None) -> None:
        with contextlib.suppress(OSError):
            send_message(sock, value, fd)

    while True:
        for key, _mask in selector.select():
            ready = key.fileobj
            if ready is listener:
                sock, _addr = listener.accept()
                sock.setblocking(False)
                while next_id in peers:
                    next_id += 1
                peer_id, next_id = next_id, next_id + 1
                fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(vectors)]
                send(sock, PROTOCOL_VERSION)
                send(sock, peer_id)
                send(sock, SHM_MESSAGE_ID, shm_fd)
                for other, _fds in peers.values():
                    for fd in fds:
                        send(other, peer_id, fd)
                for other_id, (_sock, other_fds) in peers.items():
                    for fd in other_fds:
                        send(sock, other_id, fd)
                for fd in fds:
                    send(sock, peer_id, fd)
                peers[peer_id] = (sock, fds)
                selector.register(sock, selectors.EVENT_READ)
            else:
                gone = next(i for i, (s, _f) in peers.items() if s is ready)
                sock, fds = peers.pop(gone)
                selector.unregister(sock)
                sock.close()
                for other, _fds in peers.values():
                    send(other, gone)
                for fd in fds:
                    os.close(fd)


@contextlib.contextmanager
def _server(kind: str, path: Path, vectors: int, workdir: Path) -> Iterator[int]:
    """Run one server, yield its pid."""
    if kind == "ivhw":
        name = f"ivhw-bench-{uuid.uuid4().hex}"
        try:
            args = ["-M", name, "-l", "64K", "-n", str(vectors)]
            with ServerProcess(path, args, workdir / "server.log") as server:
                yield server.pid
        finally:
            Path("/dev/shm", name).unlink(missing_ok=True)
        return
    process = multiprocessing.get_context("fork").Process(
        target=_qemu_style_server, args=(str(path), vectors, 64 << 10), daemon=True
    )
    process.start()
    try:
        while not path.exists():
            time.sleep(0.01)
        time.sleep(0.05)  # bind comes before listen
        assert process.pid is not None
        yield process.pid
    finally:
        process.terminate()
        process.join(10)


def measure(kind: str, peers: int, vectors: int) -> Row:
    """Join ``peers`` clients to a fresh ``kind`` server ("ivhw" or "qemu-style")."""
    with tempfile.TemporaryDirectory(prefix="ivhw-bench-") as tmp:
        workdir = Path(tmp)
        path = workdir / "server.sock"
        with _server(kind, path, vectors, workdir) as pid:
            swarm = CountingSwarm(path, peers, vectors)
            try:
                # a lossy server never completes: stop once nothing arrives any more
                result = swarm.run(timeout=300, idle=None if kind == "ivhw" else 2.0)
                fds = fd_count(pid)
            finally:
                swarm.close()
    return Row(
        kind,
        peers,
        vectors,
        result.seconds,
        result.messages,
        peers * (3 + peers * vectors),
        result.complete,
        fds,
    )


def _format(rows: Sequence[Row]) -> str:
    lines = [
        "| server | peers | vectors | join total (s) | per join (ms) "
        "| messages delivered / expected | complete | server fds |",
        "|---|--:|--:|--:|--:|--:|:-:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.server} | {r.peers} | {r.vectors} | {r.seconds:.3f} "
            f"| {1000 * r.seconds / r.peers:.2f} | {r.delivered} / {r.expected} "
            f"| {'yes' if r.complete else 'NO'} | {r.server_fds} |"
        )
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 16,64,256, not {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers, not {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep and print the table; returns 1 if our server lost anything."""
    parser = argparse.ArgumentParser(prog="python -m bench.server_join", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="peers 16,64 only")
    parser.add_argument("--peers", type=_int_list, default=None, help="default 16,64,256")
    parser.add_argument("--vectors", type=_int_list, default=[1, 8], help="default 1,8")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the QEMU-style baseline server"
    )
    args = parser.parse_args(argv)
    peers = args.peers or ([16, 64] if args.quick else [16, 64, 256])
    kinds = ["ivhw"] if args.no_baseline else ["ivhw", "qemu-style"]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        flush=True,
    )
    rows = []
    for n in peers:
        for v in args.vectors:
            for kind in kinds:
                rows.append(measure(kind, n, v))
    print(_format(rows))
    return 0 if all(r.complete for r in rows if r.server == "ivhw") else 1


if __name__ == "__main__":
    sys.exit(main())
