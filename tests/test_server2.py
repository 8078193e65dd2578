"""ivshmem2-server: the revision 2 protocol, message by message, and where it beats the RFC's."""

from __future__ import annotations

import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from conftest import StartServer, shm_name
from support import wait_for

from ivhw.sw.protocol import MSG2_EVENT_FD, MSG2_INIT, MSG2_PEER_GONE
from ivhw.sw.sections import Layout
from ivhw.sw.server2 import Ivshmem2Server, peer_protocol
from ivhw.sw.server_probe import RawClient2, ServerProcess, fd_count

INIT, EVENT_FD, GONE = MSG2_INIT, MSG2_EVENT_FD, MSG2_PEER_GONE
Start2 = Callable[..., Ivshmem2Server]


@pytest.fixture
def start2(start_server: StartServer) -> Start2:
    return partial(start_server, Ivshmem2Server)  # type: ignore[return-value]


@pytest.fixture
def raw() -> Iterator[Callable[[Ivshmem2Server], RawClient2]]:
    made: list[RawClient2] = []

    def connect(server: Ivshmem2Server) -> RawClient2:
        client = RawClient2(server.socket_path)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def init(peer: int, max_peers: int = 3, vectors: int = 2, protocol: int = 0, out: int = 0):
    return (INIT, (2, 2, peer, max_peers, vectors, protocol, out), 1)


def fds_of(peer: int, vectors: int = 2):
    return [(EVENT_FD, (peer, v), 1) for v in range(vectors)]


@pytest.mark.parametrize("vectors", [1, 2, 64])
def test_join_and_leave_order(start2: Start2, raw, vectors: int) -> None:
    server = start2(max_peers=3, vectors=vectors, output_section_size=4096)
    n = vectors
    a = raw(server)
    assert a.recv_n2(1 + n) == [init(0, 3, n, 0, 4096), *fds_of(0, n)]
    b = raw(server)
    assert b.recv_n2(1 + 2 * n) == [init(1, 3, n, 0, 4096), *fds_of(0, n), *fds_of(1, n)]
    assert a.recv_n2(n) == fds_of(1, n)
    c = raw(server)
    # existing peers in join order, then its own
    assert c.recv_n2(1 + 3 * n) == [
        init(2, 3, n, 0, 4096),
        *fds_of(0, n),
        *fds_of(1, n),
        *fds_of(2, n),
    ]
    assert a.recv_n2(n) == fds_of(2, n) and b.recv_n2(n) == fds_of(2, n)
    b.close()
    assert a.recv_n2(1) == [(GONE, (1,), 0)]
    assert c.recv_n2(1) == [(GONE, (1,), 0)]
    assert server.peer_ids == [0, 2]


def test_messages_have_the_rfc_sizes(start2: Start2) -> None:
    server = start2(vectors=1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as a:
        a.connect(server.socket_path)
        a.settimeout(5)
        data, anc, _flags, _ = a.recvmsg(40, socket.CMSG_SPACE(4))
        assert struct.unpack("<II", data[:8]) == (INIT, 40) and len(data) == 40 and anc
        os.close(struct.unpack("i", anc[0][2][:4])[0])
        data, anc, _flags, _ = a.recvmsg(64, socket.CMSG_SPACE(4))
        assert struct.unpack("<IIII", data) == (EVENT_FD, 16, 0, 0)
        os.close(struct.unpack("i", anc[0][2][:4])[0])
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as b:
            b.connect(server.socket_path)
            for _ in range(3):  # INIT, peer 0's fd, own fd
                _d, anc, _f, _ = b.recvmsg(64, socket.CMSG_SPACE(4))
                os.close(struct.unpack("i", anc[0][2][:4])[0])
            data, anc, _f, _ = a.recvmsg(64, socket.CMSG_SPACE(4))
            os.close(struct.unpack("i", anc[0][2][:4])[0])
        data, anc, _flags, _ = a.recvmsg(64, socket.CMSG_SPACE(4))
        assert struct.unpack("<III", data) == (GONE, 12, 1) and not anc


def test_lowest_free_id_is_reused_at_once(start2: Start2, raw) -> None:
    server = start2(max_peers=4, vectors=1)
    clients = [raw(server) for _ in range(3)]
    assert [c.init()[0][2] for c in clients] == [0, 1, 2]
    clients[1].close()
    clients[0].close()
    wait_for(lambda: server.peer_ids == [2])
    assert raw(server).init()[0][2] == 0
    assert raw(server).init()[0][2] == 1
    assert raw(server).init()[0][2] == 3


def test_peer_beyond_max_peers_is_closed_without_a_message_and_the_server_goes_on(
    start2: Start2, raw
) -> None:
    server = start2(max_peers=2, vectors=1)
    a, b = raw(server), raw(server)
    a.init(), b.init()
    for _ in range(3):
        extra = raw(server)
        assert extra.recv2() is None  # accepted, then closed: no message at all
    assert server.refused == 3
    b.close()
    assert a.recv_n2(3)[-1] == (GONE, (1,), 0)
    assert raw(server).init()[0][2] == 1  # still serving


def test_client_gone_before_its_init_does_not_stop_the_server(start2: Start2, raw) -> None:
    # the RFC's server shuts itself down when sending INIT fails
    server = start2(max_peers=32, vectors=4)
    a = raw(server)
    a.init()
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(server.socket_path)
        s.close()
    late = raw(server)
    fields, _ = late.init()
    wait_for(lambda: server.peer_ids == [0, fields[2]])
    # peers that were still there when it joined are announced and then gone
    seen = []
    while (message := late.recv_n2(1)[0]) != (EVENT_FD, (fields[2], 3), 1):
        seen.append(message)
    assert seen[:4] == fds_of(0, 4)


def test_large_handshake_read_late_loses_nothing(start2: Start2, raw) -> None:
    # 4 peers x 64 vectors: the fifth peer's handshake is 321 messages with 320 fds
    server = start2(max_peers=5, vectors=64)
    early = []
    for i in range(4):
        early.append(raw(server))
        early[-1].recv_n2(1 + 64 * (i + 1))
    late = raw(server)
    wait_for(lambda: server.write_waits > 0 or server.pending() == 0)
    time.sleep(0.2)  # the joiner reads late
    assert server.write_waits > 0  # the socket buffer was full: the RFC server drops here
    got = late.recv_n2(321)
    assert got[0][:2] == init(4, 5, 64)[:2]
    assert got[1:] == [f for p in range(5) for f in fds_of(p, 64)]
    for i, c in enumerate(early):
        assert c.recv_n2(64 * (4 - i)) == [f for p in range(i + 1, 5) for f in fds_of(p, 64)]


def test_state_table_entry_zero_before_peer_gone(start2: Start2, raw) -> None:
    server = start2(max_peers=3, vectors=1)
    a, b = raw(server), raw(server)
    _fields, shm = a.init()
    a.recv_n2(2)
    b.init()
    b.recv_n2(2)
    table = mmap.mmap(shm, 4096, mmap.MAP_SHARED, mmap.PROT_READ)
    view = mmap.mmap(b.fds[0], 4096)  # b writes its own entry, as its device would
    struct.pack_into("<I", view, 4, 0xC0FFEE)
    assert struct.unpack_from("<I", table, 4)[0] == 0xC0FFEE
    b.close()
    message = a.recv2()
    assert message is not None and message[0] == GONE
    assert struct.unpack_from("<I", table, 4)[0] == 0
    view.close()
    table.close()
    assert server.peer_ids == [0]


def test_stale_state_table_is_cleared_at_start(tmp_path: Path, raw) -> None:
    name = shm_name()
    size = 64 * 1024
    try:
        fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_RDWR, 0o600)
        os.ftruncate(fd, size)
        os.pwrite(fd, b"\xff" * 4096 + b"kept", 0)
        os.close(fd)
        with Ivshmem2Server(tmp_path / "s.sock", shm_size=size, shm_name=name) as server:
            server.serve_in_background()
            _fields, shm = raw(server).init()
            assert os.pread(shm, 4100, 0) == bytes(4096) + b"kept"
    finally:
        Path("/dev/shm", name).unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("protocol", "told"),
    [(0x8003, [0xC003, 0x8003]), (0xC003, [0xC003, 0x8003]), (0x4001, [0x4001] * 2)],
)
def test_virtio_rule(start2: Start2, raw, protocol: int, told: list[int]) -> None:
    server = start2(protocol=protocol)
    assert [raw(server).init()[0][5] for _ in range(2)] == told
    assert [peer_protocol(protocol, i) for i in range(2)] == told


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"protocol": 0x8000, "max_peers": 3}, "virtio protocols"),
        ({"max_peers": 1025}, "2..1024"),
        ({"max_peers": 1}, "2..1024"),
        ({"vectors": 0}, "1..64"),
        ({"vectors": 65}, "1..64"),
        ({"protocol": 0x10000}, "protocol"),
        ({"shm_size": 8192, "output_section_size": 4096}, "needs at least 12288"),
        ({"shm_size": 4096 * 3, "max_peers": 4, "output_section_size": 1}, "needs at least"),
    ],
)
def test_bad_parameters_are_refused_in_one_line(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        Ivshmem2Server(tmp_path / "x.sock", **kwargs)
    assert "\n" not in str(info.value)


def test_layout_and_sizes_of_4_gib_and_more(start2: Start2, raw) -> None:
    size = 16 << 30
    server = start2(shm_size=size, max_peers=3, output_section_size=1 << 32)
    assert server.layout == Layout(size, 3, 1 << 32)
    assert server.layout.rw.size == size - 4096 - 3 * (1 << 32)
    fields, shm = raw(server).init()
    assert fields[6] == 1 << 32
    assert os.fstat(shm).st_size == size


def test_output_section_size_is_page_rounded(start2: Start2, raw) -> None:
    server = start2(shm_size=1 << 20, output_section_size=100)
    assert raw(server).init()[0][6] == 4096
    assert server.layout.output(1).offset == (1 << 20) - 4096


def test_thousand_join_leave_cycles_reuse_ids_and_leak_nothing(start2: Start2, raw) -> None:
    server = start2(max_peers=2, vectors=2)
    stay = raw(server)
    stay.recv_n2(3)
    baseline = fd_count()
    for _ in range(1000):
        with RawClient2(server.socket_path) as c:
            assert c.recv_n2(5)[0][1][2] == 1
        assert stay.recv_n2(3) == [*fds_of(1), (GONE, (1,), 0)]
        for fd in stay.fds[3:]:
            os.close(fd)
        del stay.fds[3:]
    wait_for(lambda: server.peer_ids == [0] and not server._zombies)
    wait_for(lambda: fd_count() == baseline)  # the server closes a leaver's eventfds last


# -- the command ------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ivhw.sw.server2", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_help_lists_the_rfc_options() -> None:
    out = run_cli("-h")
    assert out.returncode == 0
    for option in ("-F", "-p <pid-file>", "-S", "-M", "-m", "-l", "-o", "-n", "-V", "-P"):
        assert option in out.stdout
    assert "default 2" in out.stdout and "0x0000" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "1"], "max peers must be 2..1024"),
        (["-n", "2000"], "max peers must be 2..1024"),
        (["-n", "x"], "cannot parse max peers"),
        (["-V", "0"], "vectors must be 1..64"),
        (["-P", "0x10000"], "protocol must be 0..65535"),
        (["-P", "0x8000", "-n", "3"], "virtio protocols"),
        (["-l", "8K", "-o", "4K"], "needs at least 12288"),
        (["-o", "lots"], "invalid output section size"),
        (["-v"], "daemon mode"),
    ],
)
def test_bad_options_one_line_error(args: list[str], message: str) -> None:
    out = run_cli(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    with ServerProcess(
        sock,
        ["-M", shm_name(), "-l", "64K", "-o", "4K", "-n", "4", "-V", "3", "-P", "0x4000"],
        tmp_path / "log",
        module="ivhw.sw.server2",
    ) as proc:
        with RawClient2(sock) as c:
            assert c.init()[0] == (2, 2, 0, 4, 3, 0x4000, 4096)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.proc.wait(10) == 0
    assert not sock.exists()
    assert "listening on" in proc.log() and "Traceback" not in proc.log()
