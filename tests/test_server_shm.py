"""A server never damages shared memory that someone else uses.

A second server started on a live server's socket, or on the same ``-M``
object as a live server, must fail before it opens, resizes or unlinks that
object; an existing object is never shrunk (a peer mapping it would die of
SIGBUS on the lost pages). QEMU's server has both flaws.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
from pathlib import Path

from ivhw.sw.server_probe import RawClient, ServerProcess

__all__: list[str] = []

SERVER = [sys.executable, "-m", "ivhw.sw.server", "-F"]
PATTERN = b"live data " * 100


def _second_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVER, *args], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
    )


def _map_and_fill(fd: int) -> mmap.mmap:
    size = os.fstat(fd).st_size
    memory = mmap.mmap(fd, size)
    memory[size - len(PATTERN) :] = PATTERN  # the last page: lost first if shrunk
    return memory


def _assert_intact(shm: str, fd: int, memory: mmap.mmap, ident: tuple[int, int]) -> None:
    size = 4 << 20
    assert os.fstat(fd).st_size == size
    st = os.stat(f"/dev/shm/{shm}")
    assert (st.st_dev, st.st_ino) == ident, "the live object was unlinked or replaced"
    assert st.st_size == size
    assert memory[size - len(PATTERN) :] == PATTERN


def test_second_server_on_the_live_socket_leaves_its_memory_alone(tmp_path: Path, shm: str) -> None:
    path = tmp_path / "live.sock"
    with (
        ServerProcess(path, ["-M", shm, "-l", "4M"], tmp_path / "log") as first,
        RawClient(path) as peer,
    ):
        _id, fd = peer.handshake()
        memory = _map_and_fill(fd)
        st = os.stat(f"/dev/shm/{shm}")
        ident = (st.st_dev, st.st_ino)
        for args in (["-M", shm], []):  # the same -M, and the default -M ivshmem
            result = _second_server("-S", str(path), "-l", "1M", *args)
            assert result.returncode == 1
            assert result.stderr.strip().splitlines() == [
                f"ivshmem-server: another server is listening on {path}: stop it or use -S"
            ]
            _assert_intact(shm, fd, memory, ident)
        # a new peer of the live server still gets the whole 4 MiB
        with RawClient(path) as late:
            _id, late_fd = late.handshake()
            assert os.fstat(late_fd).st_size == 4 << 20
        memory.close()
        assert "Traceback" not in first.log()


def test_second_server_on_the_same_shm_object_is_refused(tmp_path: Path, shm: str) -> None:
    path = tmp_path / "live.sock"
    other = tmp_path / "other.sock"
    with (
        ServerProcess(path, ["-M", shm, "-l", "4M"], tmp_path / "log"),
        RawClient(path) as peer,
    ):
        _id, fd = peer.handshake()
        memory = _map_and_fill(fd)
        st = os.stat(f"/dev/shm/{shm}")
        ident = (st.st_dev, st.st_ino)
        for size in ("1M", "4M", "8M"):
            result = _second_server("-S", str(other), "-M", shm, "-l", size)
            assert result.returncode == 1, result.stderr
            assert result.stderr.strip().splitlines() == [
                f"ivshmem-server: shm /dev/shm/{shm} is in use by another server or its "
                "peers: stop them or use another -M"
            ]
            assert not other.exists()
            _assert_intact(shm, fd, memory, ident)
        memory.close()


def test_existing_larger_object_is_not_shrunk(tmp_path: Path, shm: str) -> None:
    # left behind by a server that was killed: someone may still map it
    fd = os.open(f"/dev/shm/{shm}", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, 4 << 20)
        memory = _map_and_fill(fd)
        st = os.fstat(fd)
        result = _second_server("-S", str(tmp_path / "s.sock"), "-M", shm, "-l", "1M")
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"ivshmem-server: shm /dev/shm/{shm} exists with 4M, more than -l 1M: shrinking "
            "it could crash whoever maps it; remove it or use -l 4M"
        ]
        _assert_intact(shm, fd, memory, (st.st_dev, st.st_ino))
        assert not (tmp_path / "s.sock").exists()
        memory.close()
        # the same size (or larger) is fine: reused, contents kept
        with (
            ServerProcess(tmp_path / "s.sock", ["-M", shm, "-l", "4M"], tmp_path / "log"),
            RawClient(tmp_path / "s.sock") as peer,
        ):
            _id, peer_fd = peer.handshake()
            view = mmap.mmap(peer_fd, 4 << 20)
            assert view[-len(PATTERN) :] == PATTERN
            view.close()
    finally:
        os.close(fd)


def test_unlink_on_exit_spares_an_object_recreated_since(tmp_path: Path, shm: str) -> None:
    path = tmp_path / "s.sock"
    server = ServerProcess(path, ["-M", shm, "-l", "4K"], tmp_path / "log")
    try:
        os.unlink(f"/dev/shm/{shm}")
        fd = os.open(f"/dev/shm/{shm}", os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
    finally:
        assert server.stop() == 0
    assert Path("/dev/shm", shm).exists(), "the server unlinked somebody else's object"
