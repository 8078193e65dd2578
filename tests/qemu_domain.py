"""An ivshmem domain for the QEMU tests: our server, real QEMU devices and host peers.

:class:`Domain` owns everything it starts (server thread, QEMU processes under
qtest, booted Linux guests, peers) and tears all of it down on exit, whatever
failed, so no QEMU outlives a test.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ivhw.sw.guest.initramfs import Guest
from ivhw.sw.guest.vm import LinuxVm
from ivhw.sw.peer import Peer
from ivhw.sw.qtest import QemuIvshmem
from ivhw.sw.server import IvshmemServer

__all__ = ["Domain", "wait_consumed"]


def wait_consumed(fd: int, timeout: float = 5.0) -> None:
    """Wait until the reader of eventfd ``fd`` has read its counter (it polls unreadable)."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while poller.poll(0):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nobody read eventfd {fd} within {timeout:g} s")
        time.sleep(0.001)


class Domain:
    """Our ``IvshmemServer`` in a thread plus any number of QEMU devices and host peers.

    The socket lives in a short temporary directory (AF_UNIX paths are limited
    to 107 bytes and pytest's ``tmp_path`` can be long).
    """

    def __init__(self, *, vectors: int = 2, shm_size: int = 1 << 20, timeout: float = 10.0):
        self.vectors = vectors
        self.timeout = timeout
        self.dir = Path(tempfile.mkdtemp(prefix="ivhw-dom-"))
        self.socket_path = self.dir / "ivs.sock"
        self.server = IvshmemServer(os.fspath(self.socket_path), shm_size=shm_size, vectors=vectors)
        self.vms: list[QemuIvshmem] = []
        self.linux_vms: list[LinuxVm] = []
        self.peers: list[Peer] = []

    def __enter__(self) -> Domain:
        try:
            self.server.serve_in_background()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def qemu(self, *, vectors: int | None = None, setup: bool = True) -> QemuIvshmem:
        """Start a QEMU ``ivshmem-doorbell`` that joins the domain (BARs and MSI-X set up)."""
        vm = QemuIvshmem(
            server_socket=self.socket_path,
            vectors=self.vectors if vectors is None else vectors,
            timeout=self.timeout,
            workdir=None,
        )
        self.vms.append(vm)
        vm.start()
        if setup:
            vm.setup()
        return vm

    def linux(self, guest: Guest, guest_args: Sequence[str], **options: object) -> LinuxVm:
        """Boot a Linux guest whose ``ivshmem-echo`` runs with ``guest_args``; joins at once."""
        before = set(self.server.peer_ids)
        vm = LinuxVm(
            self.socket_path,
            guest_args,
            vectors=self.vectors,
            guest=guest,
            **options,  # type: ignore[arg-type]
        )
        self.linux_vms.append(vm)
        vm.start()
        # QEMU joins the server while it starts, long before the guest runs
        deadline = time.monotonic() + self.timeout
        while not set(self.server.peer_ids) - before:
            if not vm.running or time.monotonic() > deadline:
                raise TimeoutError(f"the Linux VM did not join the server:\n{vm.console()}")
            time.sleep(0.005)
        vm.peer_id = max(set(self.server.peer_ids) - before)
        return vm

    def peer(self) -> Peer:
        """Connect a host peer (our peer library) to the domain."""
        peer = Peer(os.fspath(self.socket_path), vectors=self.vectors, timeout=self.timeout)
        self.peers.append(peer)
        return peer

    def wait_peer_count(self, count: int, timeout: float = 5.0) -> None:
        """Wait until the server has ``count`` peers."""
        deadline = time.monotonic() + timeout
        while len(self.server.peer_ids) != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"server has peers {self.server.peer_ids}, wanted {count}")
            time.sleep(0.005)

    def close(self) -> None:
        """Kill every QEMU, close every peer, stop the server, remove the directory."""
        for vm in self.vms:
            vm.close()
        for linux in self.linux_vms:
            linux.close()
        for peer in self.peers:
            with contextlib.suppress(Exception):
                peer.close()
        with contextlib.suppress(Exception):
            self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
