"""Software-only demo: a server and two peers exchange messages through shared memory.

``python -m ivhw.sw.demo`` starts ``ivshmem-server``, an echo peer in its own
process and a host peer; the host sends requests through the echo protocol
(docs/echo-protocol.md), the echo peer answers, each side rings the other, and
everything started is shut down again. The co-simulation demo replaces the
software echo peer with simulated hardware.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, TextIO

from ivhw.sw import echo
from ivhw.sw.peer import Peer, PeerJoined

__all__ = ["main"]

_MESSAGES = (b"hello, hardware", b"ivshmem doorbell + shared memory", bytes(range(56)))


def _say(who: str, text: str) -> None:
    print(f"[{who:>6}] {text}", flush=True)


def _relay(who: str, stream: TextIO) -> None:
    for line in stream:
        _say(who, line.rstrip().removeprefix("ivshmem-server: "))


def _wait_for_socket(path: str, process: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server did not create {path} within {timeout:g} s")
        time.sleep(0.02)


class _Stop(Exception):
    pass


def _stop(_signum: int, _frame: object) -> None:
    raise _Stop


def _echo_role(socket_path: str, seconds: float) -> int:
    signal.signal(signal.SIGTERM, _stop)
    with Peer(socket_path, vectors=2) as peer:
        _say(
            "echo",
            f"joined as peer {peer.id} with {peer.vectors} vectors, "
            f"{peer.shm_size // 1024} KiB shared memory; serving echo requests",
        )
        responder = echo.EchoResponder(peer)
        try:
            responder.run(until=time.monotonic() + seconds)
        except _Stop:
            pass
        _say("echo", f"served {responder.served} requests, leaving")
    return 0


def _host_role(socket_path: str, echo_process: subprocess.Popen[Any]) -> int:
    with Peer(socket_path, vectors=2) as peer:
        _say("host", f"joined as peer {peer.id}; peers already there: {peer.peers or 'none'}")
        while not peer.peers:
            if echo_process.poll() is not None:
                raise RuntimeError("the echo peer exited before it joined")
            peer.wait(PeerJoined, timeout=5.0)
        target = min(peer.peers)
        for payload in _MESSAGES:
            _say("host", f"-> peer {target}: {payload!r}")
            reply = echo.request(peer, target, payload)
            ok = "ok" if reply.payload == echo.invert(payload) else "WRONG"
            _say(
                "host",
                f"<- peer {reply.source}: {reply.payload.hex()[:32]}... "
                f"(every byte XOR 0xFF: {ok}) in {reply.rtt * 1e6:.0f} us",
            )
            if ok != "ok":
                return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo; ``--echo SOCKET`` runs only the echo peer (used by the demo itself)."""
    parser = argparse.ArgumentParser(prog="python -m ivhw.sw.demo", description=__doc__)
    parser.add_argument("--echo", metavar="SOCKET", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo:
        return _echo_role(args.echo, args.seconds)

    with tempfile.TemporaryDirectory(prefix="ivhw-demo-") as tmp:
        sock = os.path.join(tmp, "ivshmem.sock")
        server_cmd = [
            sys.executable,
            "-m",
            "ivhw.sw.server",
            "-F",
            "-S",
            sock,
            "-M",
            f"ivhw-demo-{os.getpid()}",
            "-l",
            "1M",
            "-n",
            "2",
        ]
        _say("demo", "starting: ivshmem-server " + " ".join(server_cmd[3:]))
        server = subprocess.Popen(server_cmd, stderr=subprocess.PIPE, text=True)
        log = threading.Thread(target=_relay, args=("server", server.stderr), daemon=True)
        log.start()
        echo_process = None
        try:
            _wait_for_socket(sock, server, 10.0)
            echo_process = subprocess.Popen(
                [sys.executable, "-m", "ivhw.sw.demo", "--echo", sock, "--seconds", "30"]
            )
            status = _host_role(sock, echo_process)
        finally:
            for process in (echo_process, server):  # the echo peer leaves, then the server stops
                if process is not None:
                    if process.poll() is None:
                        process.send_signal(signal.SIGTERM)
                    process.wait(timeout=10)
            log.join(timeout=5)
        _say(
            "demo",
            f"server exited with status {server.returncode}; "
            f"socket file removed: {not os.path.exists(sock)}",
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
