"""``ivshmem-client`` end to end: piped commands against the real ``ivhw.sw.server``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import StartServer
from test_client import read_until

from ivhw.sw.peer import Doorbell, Peer, PeerJoined, PeerLeft
from ivhw.sw.server import IvshmemServer
from ivhw.sw.server2 import Ivshmem2Server

CLIENT = [sys.executable, "-m", "ivhw.sw.client"]


@pytest.fixture
def server(start_server: StartServer) -> IvshmemServer:
    return start_server(shm_size=1 << 20, vectors=2)


def test_piped_commands_ring_a_real_peer(server: IvshmemServer) -> None:
    with Peer(server.socket_path, vectors=2) as peer:
        result = subprocess.run(
            [*CLIENT, "-S", server.socket_path],
            input=f"dump\nint {peer.id} 1\nint {peer.id} all\nint all\n",
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        lines = result.stdout.splitlines()
        assert lines[0].endswith("(2 vectors, 1048576 bytes of shared memory)")
        client_id = int(lines[1].removeprefix("our_id = "))
        assert f"peer_id = {peer.id}" in lines
        # own vectors and the other peer's
        assert sum(line.startswith("  vector 1 is enabled (fd=") for line in lines) == 2
        assert peer.wait(PeerJoined, timeout=5) == PeerJoined(client_id)
        rings = {0: 0, 1: 0}
        while sum(rings.values()) < 5:
            event = peer.wait(Doorbell, timeout=5)
            rings[event.vector] += event.count
        assert rings == {0: 2, 1: 3}
        assert peer.wait(PeerLeft, timeout=5) == PeerLeft(client_id)


def test_client_sees_a_real_peer_come_ring_and_go(server: IvshmemServer) -> None:
    proc = subprocess.Popen(
        [*CLIENT, "-S", server.socket_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        seen = read_until(proc, "connected")
        client_id = int(seen.split(" as peer ")[1].split()[0])
        with Peer(server.socket_path, vectors=2) as peer:
            read_until(proc, f"new peer id = {peer.id}")
            peer.ring(client_id, 1)
            read_until(proc, f"receive notification from peer_id={client_id} vector=1")
        read_until(proc, f"delete peer id = {peer.id}")
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_piped_commands_against_a_revision_2_server(start_server: StartServer) -> None:
    server = start_server(Ivshmem2Server, shm_size=1 << 20, max_peers=4, vectors=2)
    with Peer(server.socket_path) as peer:
        result = subprocess.run(
            [*CLIENT, "-S", server.socket_path],
            input=f"state 0x2a\ndump\nint {peer.id} 1\nstate 7x\n",
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == "error: state must be a number, not '7x'\n"
        lines = result.stdout.splitlines()
        assert lines[0].endswith(
            "(2 vectors, 1048576 bytes of shared memory; revision 2: 4 max peers, "
            "protocol 0x0000, output sections of 0 bytes)"
        )
        client_id = int(lines[1].removeprefix("our_id = "))
        assert lines[2] == "  state = 0x2a"
        assert f"peer_id = {peer.id}" in lines
        assert peer.wait(PeerJoined, timeout=5) == PeerJoined(client_id)
        # the state change rings vector 0, the doorbell vector 1; then it leaves
        rings = {0: 0, 1: 0}
        while sum(rings.values()) < 2:
            event = peer.wait(Doorbell, timeout=5)
            rings[event.vector] += event.count
        assert rings == {0: 1, 1: 1}
        assert peer.wait(PeerLeft, timeout=5) == PeerLeft(client_id)
        assert peer.state_of(client_id) == 0
