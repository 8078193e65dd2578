"""Protocol revision 2 against revision 1, side by side in one run: join scaling, doorbell and
state round trips.

``python -m bench.rev2 [--quick] [--peers 16,64,256,1024] [--vectors 1,8] [--samples N]``

**Join scaling.** For each N x V, N raw clients (``ivhw.sw.server_probe.CountingSwarm``)
join a fresh server subprocess one after another, close every fd at once and check
every message (revision 1: version, ID, shm; revision 2: INIT; then every peer's V
vectors in join order). ``ivshmem-server`` (revision 1, ``--max-peers N``) and
``ivshmem2-server`` (revision 2, ``-n N``) run the same sweep; revision 2 goes up to
1024 peers, all its one-page State Table holds. The ratio column is revision 2's time
over revision 1's for the same N x V.

**Round trips** (microseconds, median / p90 / p99), two peer-library processes on
each server, alternating rounds so that machine load hits them alike: a doorbell
ping-pong on revision 1 and on revision 2, and on revision 2 a state ping-pong (ping
sets its state, which rings pong's vector 0; pong answers by setting its own).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.doorbell_rtt import _row, _sample, _wait_for
from bench.server_join import _int_list
from ivhw.sw.server_probe import CountingSwarm, ServerProcess, fd_count

__all__ = ["JoinRow", "main", "measure_join"]


@dataclass
class JoinRow:
    """One join measurement."""

    revision: int
    peers: int
    vectors: int
    seconds: float
    delivered: int
    expected: int
    complete: bool
    server_fds: int


#: The join is measured, not the stall policy: on a loaded machine the swarm (one
#: process reading for all its clients) can leave a client unread for seconds, which
#: the servers' default 10 s stall timeout would punish by disconnecting it.
_NO_STALL = ["--stall-timeout", "0"]


@contextlib.contextmanager
def _server(revision: int, path: Path, peers: int, vectors: int, log: Path) -> Iterator[int]:
    name = f"ivhw-bench-{uuid.uuid4().hex}"
    if revision == 1:
        module = "ivhw.sw.server"
        args = ["-M", name, "-l", "64K", "-n", str(vectors), "--max-peers", str(peers)]
        args += _NO_STALL
    else:
        module = "ivhw.sw.server2"
        args = ["-M", name, "-l", "64K", "-n", str(peers), "-V", str(vectors), *_NO_STALL]
    try:
        with ServerProcess(path, args, log, module=module) as server:
            yield server.pid
    finally:
        Path("/dev/shm", name).unlink(missing_ok=True)


def measure_join(revision: int, peers: int, vectors: int) -> JoinRow:
    """Join ``peers`` raw clients to a fresh server of protocol ``revision``."""
    with tempfile.TemporaryDirectory(prefix="ivhw-bench-") as tmp:
        path = Path(tmp) / "server.sock"
        with _server(revision, path, peers, vectors, Path(tmp) / "server.log") as pid:
            swarm = CountingSwarm(path, peers, vectors, revision=revision)
            try:
                result = swarm.run(timeout=600)
                fds = fd_count(pid)
            finally:
                swarm.close()
    return JoinRow(
        revision,
        peers,
        vectors,
        result.seconds,
        result.messages,
        swarm.expected(),
        result.complete,
        fds,
    )


def _join_table(rows: Sequence[JoinRow]) -> str:
    lines = [
        "| revision | peers | vectors | join total (s) | per join (ms) | rev 2 / rev 1 "
        "| messages delivered / expected | complete | server fds |",
        "|--:|--:|--:|--:|--:|--:|--:|:-:|--:|",
    ]
    rev1 = {(r.peers, r.vectors): r.seconds for r in rows if r.revision == 1}
    for r in rows:
        base = rev1.get((r.peers, r.vectors))
        ratio = f"{r.seconds / base:.2f}" if r.revision == 2 and base else ""
        lines.append(
            f"| {r.revision} | {r.peers} | {r.vectors} | {r.seconds:.3f} "
            f"| {1000 * r.seconds / r.peers:.2f} | {ratio} | {r.delivered} / {r.expected} "
            f"| {'yes' if r.complete else 'NO'} | {r.server_fds} |"
        )
    return "\n".join(lines)


# -- round trips --------------------------------------------------------------------------------


def _serve(revision: int, socket_path: str) -> None:
    if revision == 1:
        from ivhw.sw.server import IvshmemServer

        IvshmemServer(socket_path, shm_size=1 << 16, vectors=1).serve_forever()
    else:
        from ivhw.sw.server2 import Ivshmem2Server

        Ivshmem2Server(socket_path, shm_size=1 << 16, vectors=1).serve_forever()


def _pong(socket_path: str, ping_id: int, by_state: bool) -> None:
    from ivhw.sw.peer import Doorbell, Peer

    with Peer(socket_path, vectors=1) as peer:
        while True:
            if isinstance(peer.wait(), Doorbell):
                if by_state:
                    peer.state = peer.state_of(ping_id)  # answer: take ping's new state
                else:
                    peer.ring(ping_id, 0)


def _joined(path: str, timeout: float = 30.0) -> Any:
    """A peer of the server at ``path``, retried while the server binds but does not listen."""
    from ivhw.sw.peer import Peer

    deadline = time.monotonic() + timeout
    while True:
        try:
            return Peer(path, vectors=1)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextlib.contextmanager
def _pair(revision: int, by_state: bool, tmp: str) -> Iterator[Callable[[], None]]:
    """A ping peer and a pong process on a fresh server; yields one round trip."""
    from ivhw.sw.peer import Doorbell, PeerJoined

    spawn = multiprocessing.get_context("spawn")
    path = os.path.join(tmp, f"rev{revision}-{'state' if by_state else 'bell'}.sock")
    server = spawn.Process(target=_serve, args=(revision, path), daemon=True)
    pong: multiprocessing.process.BaseProcess | None = None
    try:
        server.start()
        _wait_for(path, server, "ivshmem server")
        with _joined(path) as ping:
            pong = spawn.Process(target=_pong, args=(path, ping.id, by_state), daemon=True)
            pong.start()
            pong_id = ping.wait(PeerJoined, timeout=30).peer
            counter = [0]

            def bell() -> None:
                ping.ring(pong_id, 0)
                ping.wait(Doorbell)

            def state() -> None:
                counter[0] = (counter[0] + 1) & 0xFFFFFFFF
                ping.state = counter[0]
                ping.wait(Doorbell)

            yield state if by_state else bell
    finally:
        for process in (pong, server):
            if process is not None:
                process.terminate()
                process.join(5)


def _round_trips(samples: int, rounds: int) -> list[tuple[str, float, float, float]]:
    names = {
        (1, False): "rev 1 doorbell",
        (2, False): "rev 2 doorbell",
        (2, True): "rev 2 state",
    }
    results: dict[str, list[float]] = {name: [] for name in names.values()}
    warmup = min(200, samples)
    with tempfile.TemporaryDirectory(prefix="ivhw-bench-") as tmp, contextlib.ExitStack() as stack:
        trips = {
            name: stack.enter_context(_pair(rev, by_state, tmp))
            for (rev, by_state), name in names.items()
        }
        for _ in range(rounds):
            for name, trip in trips.items():
                _sample(trip, warmup)
                results[name] += _sample(trip, samples)
    return [_row(name, values) for name, values in results.items()]


def main(argv: Sequence[str] | None = None) -> int:
    """Run both parts and print the tables; returns 1 if a server lost a message."""
    parser = argparse.ArgumentParser(prog="python -m bench.rev2", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="peers 16,64, fewer samples")
    parser.add_argument("--peers", type=_int_list, default=None, help="default 16,64,256,1024")
    parser.add_argument("--vectors", type=_int_list, default=None, help="default 1,8")
    parser.add_argument("--samples", type=int, default=None, help="round trips per round")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds")
    parser.add_argument(
        "--parts", default="join,rtt", help="which parts: join, rtt or both (default join,rtt)"
    )
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts or parts - {"join", "rtt"}:
        parser.error(f"--parts takes join, rtt or join,rtt, not {args.parts!r}")
    peers = args.peers or ([16, 64] if args.quick else [16, 64, 256, 1024])
    vectors = args.vectors or [1, 8]
    samples = args.samples or (300 if args.quick else 3000)
    rounds = args.rounds or (2 if args.quick else 4)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        flush=True,
    )
    rows = []
    for n in peers if "join" in parts else []:
        for v in vectors:
            if n * n * v > 2_000_000:  # 1024 x 8 is 8.4 M messages: minutes, not seconds
                continue
            for revision in (1, 2):
                rows.append(measure_join(revision, n, v))
                print(f"  joined {n} x {v} on revision {revision}", file=sys.stderr, flush=True)
    if rows:
        print(_join_table(rows))
        print()
    if "rtt" not in parts:
        return 0 if all(r.complete for r in rows) else 1
    print(f"round trips, {rounds} x {samples} samples each (microseconds)")
    print("| | median | p90 | p99 |")
    print("|---|--:|--:|--:|")
    trips = _round_trips(samples, rounds)
    for name, median, p90, p99 in trips:
        print(f"| {name} | {median:.1f} | {p90:.1f} | {p99:.1f} |")
    print(f"rev 2 / rev 1 doorbell median: {trips[1][1] / trips[0][1]:.3f}x")
    return 0 if all(r.complete for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
