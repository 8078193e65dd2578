"""The qtest harness never hangs and always says why: servers that misbehave, QEMU that dies."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import require_tool

from ivhw.sw.protocol import PROTOCOL_VERSION, SHM_MESSAGE_ID, send_message
from ivhw.sw.qtest import QemuIvshmem, QtestError, QtestTimeout

pytestmark = pytest.mark.qemu


@pytest.fixture
def listener() -> Iterator[tuple[Path, socket.socket]]:
    """A UNIX socket nobody serves yet, in a short directory."""
    require_tool("qemu-system-x86_64")
    with tempfile.TemporaryDirectory(prefix="ivhw-hn-") as d:
        path = Path(d) / "s.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(os.fspath(path))
        sock.listen(1)
        try:
            yield path, sock
        finally:
            sock.close()


def serve_once(sock: socket.socket, shm_size: int) -> threading.Thread:
    """Accept one client and send a handshake with ``shm_size`` bytes of memory, then idle."""
    done = threading.Event()

    def run() -> None:
        conn, _ = sock.accept()
        fd = os.memfd_create("hn")
        try:
            os.ftruncate(fd, shm_size)
            send_message(conn, PROTOCOL_VERSION)
            send_message(conn, 0)
            send_message(conn, SHM_MESSAGE_ID, fd)
            done.wait(10)
        finally:
            os.close(fd)
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.done = done  # type: ignore[attr-defined]
    return thread


def test_silent_server_times_out(listener: tuple[Path, socket.socket]) -> None:
    """QEMU waits in device realize for a server that never talks: a timeout, not a hang."""
    path, _sock = listener
    vm = QemuIvshmem(server_socket=path, timeout=1.0)
    with pytest.raises(QtestTimeout, match="no qtest reply"):
        vm.start()
    assert not vm.running, "the harness kills QEMU after a failed start"


def test_qemu_abort_is_reported_with_stderr(listener: tuple[Path, socket.socket]) -> None:
    """QEMU 7.2 refuses shared memory that is not a power of two; its words reach the error."""
    path, sock = listener
    server = serve_once(sock, 3 << 20)
    vm = QemuIvshmem(server_socket=path, timeout=5.0)
    try:
        with pytest.raises(QtestError) as info:
            vm.start()
        assert "QEMU stderr" in str(info.value)
        assert "is_power_of_2" in str(info.value)  # QEMU's assertion message
        assert not vm.running
    finally:
        server.done.set()  # type: ignore[attr-defined]
        server.join(5)


def test_close_kills_and_reaps(listener: tuple[Path, socket.socket]) -> None:
    path, sock = listener
    server = serve_once(sock, 1 << 20)
    # the device waits for its own vectors only with vectors > 0: use a plain handshake
    vm = QemuIvshmem(server_socket=path, vectors=1, timeout=5.0)
    try:
        vm.start()
        pid = vm.pid
        assert pid is not None and vm.running
        assert vm.command("endianness") == ["little"]
        workdir = vm.workdir
        vm.close()
        assert not vm.running
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped
        assert not workdir.exists()
        with pytest.raises(QtestError, match="not running"):
            vm.command("endianness")
    finally:
        vm.close()
        server.done.set()  # type: ignore[attr-defined]
        server.join(5)
