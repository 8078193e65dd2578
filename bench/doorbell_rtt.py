"""Doorbell round trip between two processes: the peer library vs a raw eventfd ping-pong.

``python -m bench.doorbell_rtt [--quick] [--samples N] [--rounds R]``

Library: two :class:`ivhw.sw.peer.Peer` processes on one ``ivhw.sw.server``;
ping rings pong's vector 0 and waits for the pong doorbell, pong echoes every
doorbell back. Raw: the same ping-pong on two bare eventfds inherited through
fork, with blocking ``read``/``write``. Raw epoll: the same, but each side
waits in ``epoll_wait`` before it reads, as any peer watching more than one fd
(its vectors and the server socket) must: the floor for the library. All are
measured in the same run, in alternating rounds so that drift in the machine's
load hits them alike.
Target: library median <= 1.15 x raw median.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import select
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

__all__ = ["main"]

TARGET_RATIO = 1.15
_ONE = (1).to_bytes(8, "little")
_STOP = (2).to_bytes(8, "little")


def _raw_pong(ping_fd: int, pong_fd: int, use_epoll: bool) -> None:
    """Echo every ring on ``ping_fd`` to ``pong_fd``; a count of 2 means stop."""
    epoll = select.epoll()
    epoll.register(ping_fd, select.EPOLLIN)
    while True:
        if use_epoll:
            epoll.poll()
        if os.read(ping_fd, 8) != _ONE:
            return
        os.write(pong_fd, _ONE)


def _serve(socket_path: str) -> None:
    from ivhw.sw.server import IvshmemServer

    IvshmemServer(socket_path, shm_size=4096, vectors=1).serve_forever()


def _library_pong(socket_path: str, ping_id: int) -> None:
    from ivhw.sw.peer import Doorbell, Peer

    with Peer(socket_path, vectors=1) as peer:
        while True:
            if isinstance(peer.wait(), Doorbell):
                peer.ring(ping_id, 0)


def _sample(round_trip: Callable[[], None], count: int) -> list[float]:
    clock = time.perf_counter_ns
    times = []
    for _ in range(count):
        start = clock()
        round_trip()
        times.append((clock() - start) / 1000)
    return times


def _percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def _row(name: str, values: list[float]) -> tuple[str, float, float, float]:
    ordered = sorted(values)
    return (
        name,
        statistics.median(ordered),
        _percentile(ordered, 0.90),
        _percentile(ordered, 0.99),
    )


def _wait_for(path: str, process: multiprocessing.process.BaseProcess, what: str) -> None:
    deadline = time.monotonic() + 20
    while not os.path.exists(path):
        if not process.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    """Measure both round trips and print median/p90/p99 and the library/raw ratio."""
    parser = argparse.ArgumentParser(prog="python -m bench.doorbell_rtt", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples, for a smoke run")
    parser.add_argument("--samples", type=int, default=None, help="round trips per round")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds")
    args = parser.parse_args(argv)
    samples = args.samples or (500 if args.quick else 5000)
    rounds = args.rounds or (2 if args.quick else 6)
    warmup = min(200, samples)

    from ivhw.sw.peer import Doorbell, Peer, PeerJoined

    # fork before any thread or server exists: the raw pongs inherit their eventfds
    fork = multiprocessing.get_context("fork")
    raw_ping, raw_pong = os.eventfd(0), os.eventfd(0)
    raw_child = fork.Process(target=_raw_pong, args=(raw_ping, raw_pong, False), daemon=True)
    raw_child.start()
    ep_ping, ep_pong = os.eventfd(0), os.eventfd(0)
    ep_child = fork.Process(target=_raw_pong, args=(ep_ping, ep_pong, True), daemon=True)
    ep_child.start()
    ep_epoll = select.epoll()
    ep_epoll.register(ep_pong, select.EPOLLIN)
    spawn = multiprocessing.get_context("spawn")
    tmp = tempfile.TemporaryDirectory(prefix="ivhw-bench-")
    socket_path = os.path.join(tmp.name, "ivshmem.sock")
    server = spawn.Process(target=_serve, args=(socket_path,), daemon=True)
    pong: multiprocessing.process.BaseProcess | None = None
    try:
        server.start()
        _wait_for(socket_path, server, "ivshmem server")
        with Peer(socket_path, vectors=1) as ping:
            pong = spawn.Process(target=_library_pong, args=(socket_path, ping.id), daemon=True)
            pong.start()
            pong_id = ping.wait(PeerJoined, timeout=20).peer

            def raw_round_trip() -> None:
                os.write(raw_ping, _ONE)
                os.read(raw_pong, 8)

            def epoll_round_trip() -> None:
                os.write(ep_ping, _ONE)
                ep_epoll.poll()
                os.read(ep_pong, 8)

            def library_round_trip() -> None:
                ping.ring(pong_id, 0)
                ping.wait(Doorbell)

            raw: list[float] = []
            epoll: list[float] = []
            library: list[float] = []
            for _ in range(rounds):
                for trip, into in (
                    (raw_round_trip, raw),
                    (epoll_round_trip, epoll),
                    (library_round_trip, library),
                ):
                    _sample(trip, warmup)
                    into += _sample(trip, samples)
    finally:
        os.write(raw_ping, _STOP)
        os.write(ep_ping, _STOP)
        raw_child.join(5)
        ep_child.join(5)
        ep_epoll.close()
        for process in (pong, server):
            if process is not None:
                process.terminate()
                process.join(5)
        for fd in (raw_ping, raw_pong, ep_ping, ep_pong):
            os.close(fd)
        tmp.cleanup()

    rows = [_row("raw eventfd", raw), _row("raw epoll", epoll), _row("peer library", library)]
    ratio = rows[2][1] / rows[0][1]
    print(f"doorbell round trip, {rounds} x {samples} samples each (microseconds)")
    print(f"| {'':<12} | {'median':>8} | {'p90':>8} | {'p99':>8} |")
    print(f"|{'-' * 14}|{'-' * 9}:|{'-' * 9}:|{'-' * 9}:|")
    for name, median, p90, p99 in rows:
        print(f"| {name:<12} | {median:8.1f} | {p90:8.1f} | {p99:8.1f} |")
    p90_ratio = rows[2][2] / rows[0][2]
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(
        f"library/raw: median {ratio:.3f}x, p90 {p90_ratio:.3f}x "
        f"(target <= {TARGET_RATIO}x median: {verdict}); "
        f"library/raw epoll: median {rows[2][1] / rows[1][1]:.3f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
