"""A real Linux guest in QEMU 7.2 as a peer: Debian's kernel, busybox, ``ivshmem-echo`` on VFIO.

Each VM boots Debian's kernel with the project's initramfs (built once per
session, cached in ``build/linux-guest``) and an unmodified ``ivshmem-doorbell``;
inside, ``ivshmem-echo`` maps BAR0 and BAR2 through vfio-pci, rings from the
guest CPU and takes the replies as MSI-X. Its console (serial) lines are what
the tests check: every reply is verified by the guest itself and again here.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from qemu_domain import Domain
from support import missing, require_tool, serve_in_thread
from test_cosim import SHM_SIZE, VECTORS, Target, check_echo, domain, start_device

from ivhw.cosim.build import build as build_device
from ivhw.cosim.process import CosimProcess
from ivhw.sw import echo
from ivhw.sw.guest.initramfs import Guest, build, kernel_versions
from ivhw.sw.guest.vm import LinuxVm, VmError
from ivhw.sw.peer import Peer, PeerJoined, PeerLeft

__all__ = ["domain"]  # fixtures used here

pytestmark = pytest.mark.qemu

#: Both simulators, each on its default engine (a VM boot costs more than the engine
#: differences the cosim tests cover), flat and PCI.
TARGETS = [
    pytest.param((sim, engine, device), marks=getattr(pytest.mark, sim), id=f"{sim}-{device}")
    for device in ("flat", "pci")
    for sim, engine in (("icarus", "cocotb"), ("verilator", "native"))
]
FLAT_TARGETS = TARGETS[:2]


@pytest.fixture(scope="session")
def guest() -> Guest:
    """Debian's kernel and the initramfs, built once (and shared by the xdist workers)."""
    require_tool("qemu-system-x86_64")
    require_tool("gcc")
    if not kernel_versions():
        missing("a kernel in /boot with its modules (Debian's linux-image-amd64)")
    if not Path("/bin/busybox").exists():
        missing("/bin/busybox (Debian's busybox-static)")
    return build()


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """A simulated device kind on a simulator, built (once) before the test."""
    name, engine, device = request.param
    require_tool("iverilog" if name == "icarus" else "g++")
    build_device(device, name, vectors=VECTORS, shm_size=SHM_SIZE, engine=engine)
    yield Target(name, engine, device)


def hexes(*payloads: bytes) -> list[str]:
    return [arg for p in payloads for arg in ("--payload", p.hex())]


def wait_known(host: Peer, peer_id: int | None) -> int:
    """Let ``host`` take the server's news until it knows ``peer_id``; returns it."""
    assert peer_id is not None
    if peer_id not in host.peers:
        host.wait(lambda event: event == PeerJoined(peer_id), timeout=10)
    return peer_id


def check_replies(vm: LinuxVm, target: int, payloads: list[bytes]) -> None:
    """The guest reported a verified reply from ``target`` for every payload, in order."""
    replies = [r for r in vm.replies() if r.source == target]
    assert [r.payload for r in replies] == [echo.invert(p) for p in payloads], vm.console()
    assert all(r.ok and r.rtt > 0 for r in replies), vm.console()


def test_linux_vm_and_simulated_device(
    domain: Domain, tmp_path: Path, target: Target, guest: Guest
) -> None:
    """The VM sends requests to the simulated flat / PCI device and answers the host's."""
    device = start_device(domain, tmp_path, target)
    host = domain.peer()
    dev_id = min(domain.server.peer_ids)
    payloads = [b"from a Linux guest", bytes(range(56)), b"!"]
    args = [*hexes(*payloads), "--target", str(dev_id), "--timeout", "20", "--serve-count", "2"]
    vm = domain.linux(guest, args)
    vm_id = wait_known(host, vm.peer_id)
    assert vm.wait_serving() == vm_id
    assert re.match(r"Linux version 6\.", vm.kernel_version)
    for payload in (b"host to the VM", b"\x00" * 56):
        check_echo(host, vm_id, payload)
        check_echo(host, dev_id, payload[::-1], device)  # the device serves the host too
    assert vm.wait() == 0, vm.console()
    check_replies(vm, dev_id, payloads)
    assert "ivshmem-echo: served 14 bytes from peer" in vm.console()
    assert device.stop() == 0, device.output()
    # in: three requests of the VM (and any ring it repeated) and two of the host; rings
    # that reach the device's eventfd before it reads it are one event, counted apart.
    # out: one reply doorbell per request, whatever was rung again
    rerings = vm.console().count(f"ringing peer {dev_id} again")
    stats = device.status()["stats"]
    assert stats["events"] + stats["coalesced"] == 3 + rerings + 2, stats
    assert stats["doorbells"] == 3 + 2, stats


@pytest.mark.parametrize("target", FLAT_TARGETS, indirect=True)
def test_simulated_ping_into_linux(
    domain: Domain, tmp_path: Path, target: Target, guest: Guest
) -> None:
    """The simulated hardware's ``ping`` guest measures round trips into the running VM."""
    vm = domain.linux(guest, ["--serve-count", "5"])
    vm.wait_serving()
    pinger = CosimProcess(
        domain.socket_path, tmp_path, name="ping", **target.options(),
        vectors=VECTORS, shm_size=SHM_SIZE, guest="ping",
        guest_args={"target": vm.peer_id, "count": 5, "size": 24},
    ).start()  # fmt: skip
    try:
        assert pinger.wait(120) == 0, pinger.output()
    finally:
        pinger.stop()
    assert re.search(r"ping: 5/5 replies, rtt us min \d+ median \d+", pinger.output())
    assert vm.wait() == 0, vm.console()
    assert vm.console().count("ivshmem-echo: served 24 bytes from peer") == 5


def test_linux_vm_and_host_peer(domain: Domain, guest: Guest) -> None:
    """Requests both ways between the VM and a host process with the peer library.

    An ``ivshmem-plain`` (same IDs, no interrupts) sits in an earlier slot: the guest
    program passes it by and takes the ``ivshmem-doorbell``.
    """
    plain = [
        "-object", "memory-backend-ram,id=plainmem,size=1M,share=on",
        "-device", "ivshmem-plain,memdev=plainmem,addr=0x2.0",
    ]  # fmt: skip
    host = domain.peer()
    stop = threading.Event()
    thread = serve_in_thread(echo.EchoResponder(host), stop)
    payloads = [b"\x01", b"guest to host", bytes(range(200, 256))]
    try:
        args = [
            *hexes(*payloads),
            "--target",
            str(host.id),
            "--timeout",
            "20",
            "--serve-count",
            "1",
        ]
        vm = domain.linux(guest, args, slot=3, extra_args=plain)
        vm.wait_line(r"peer \d+: 3 of 3 replies verified")
    finally:
        stop.set()
        thread.join(5)
    # the host's own requests need its doorbells, which the responder thread no longer takes
    check_echo(host, vm.peer_id, b"and back")
    assert vm.wait() == 0, vm.console()
    check_replies(vm, host.id, payloads)
    assert vm.ivposition == vm.peer_id
    # three replies and the host's request: four MSI-X messages on vector 0
    assert vm.interrupts() == {0: 4, 1: 0}, vm.console()
    assert "device 0000:00:03.0 (1af4:1110) on vfio-pci" in vm.console()


def test_two_linux_vms(domain: Domain, guest: Guest) -> None:
    """Two booted guests through one server: one serves, the other sends.

    The sender takes BAR0 through read/write on the VFIO device (``--bar0-rw``), the
    path for a BAR0 that vfio-pci cannot map; the server maps it.
    """
    server = domain.linux(guest, ["--serve-count", "4"])
    client = domain.linux(
        guest,
        # the other VM may finish booting much later on a loaded machine: wait for it
        ["--target", str(server.peer_id), "--count", "4", "--size", "33", "--timeout", "60",
         "--bar0-rw"],
    )  # fmt: skip
    assert client.wait() == 0, client.console()
    assert server.wait() == 0, server.console()
    replies = client.replies()
    assert len(replies) == 4 and all(r.ok and r.source == server.peer_id for r in replies)
    # each reply came as its own MSI-X message, through the guest kernel
    assert client.interrupts() == {0: 4, 1: 0}, client.console()
    assert "BAR0 256 bytes (through read/write on the VFIO device)" in client.console()
    assert "BAR0 256 bytes, BAR2 1048576 bytes" in server.console()
    assert server.console().count(f"served 33 bytes from peer {client.peer_id}") == 4


@pytest.mark.parametrize("target", FLAT_TARGETS, indirect=True)
def test_linux_vm_powers_off_mid_run(
    domain: Domain, tmp_path: Path, target: Target, guest: Guest
) -> None:
    """A VM that powers off while the simulated ``ping`` still sends: the rest carries on."""
    host = domain.peer()
    vm = domain.linux(guest, ["--serve-count", "3"])
    vm.wait_serving()
    pinger = CosimProcess(
        domain.socket_path, tmp_path, name="ping", **target.options(),
        vectors=VECTORS, shm_size=SHM_SIZE, guest="ping",
        guest_args={"target": vm.peer_id, "count": 5, "size": 8, "timeout": 2},
    ).start()  # fmt: skip
    try:
        assert pinger.wait(120) != 0, pinger.output()  # two requests got no reply
    finally:
        pinger.stop()
    output = pinger.output()
    assert "ping: 3/5 replies" in output, output
    assert "2 of 5 echo requests got no reply" in output, output
    assert vm.wait() == 0, vm.console()
    assert "reboot: Power down" in vm.console()
    assert host.wait(lambda e: e == PeerLeft(vm.peer_id), timeout=10)
    assert vm.peer_id not in domain.server.peer_ids


@pytest.mark.parametrize("target", FLAT_TARGETS, indirect=True)
def test_server_dies_while_linux_waits(
    domain: Domain, tmp_path: Path, target: Target, guest: Guest
) -> None:
    """The server dies while the guest waits: its echo peer leaves, the guest says so, exits."""
    device = start_device(domain, tmp_path, target)
    dev_id = min(domain.server.peer_ids)
    vm = domain.linux(guest, ["--target", str(dev_id), "--count", "1000", "--timeout", "3"])
    vm.wait_line(r"reply 1 <- peer")
    domain.server.stop()
    assert device.wait(30) == 3, device.output()  # the bridge leaves with the server
    assert vm.wait() == 1, vm.console()  # and the guest, waiting for a reply, notices
    console = vm.console()
    assert re.search(rf"error: no reply from peer {dev_id} within 3 s", console), console
    assert "reboot: Power down" in console
    assert all(r.ok for r in vm.replies())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "usage: ivshmem-echo"),
        (["--target", "1", "--size", "57"], "error: --size must be 1..56"),
        (["--target", "512"], "error: --target must be 0..511"),
        (["--target", "one"], "error: --target must be a non-negative number, not 'one'"),
        (["--target", "1", "--payload", "abc"], "error: --payload must be 1..56 bytes of hex"),
        (["--serve", "extra"], "usage: ivshmem-echo"),
    ],
)
def test_guest_program_bad_arguments(guest: Guest, args: list[str], message: str) -> None:
    """Argument errors end the program before it touches any device (so it runs here too)."""
    program = guest.initramfs.parent / "ivshmem-echo"
    result = subprocess.run([program, *args], capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert message in result.stderr.splitlines()[0]
    assert result.stdout == ""


def test_qemu_failing_is_one_clear_error(domain: Domain, guest: Guest, tmp_path: Path) -> None:
    """A kernel QEMU cannot load: the waiter gets QEMU's own message, nothing hangs."""
    broken = Guest(guest.version, tmp_path / "no-such-kernel", guest.initramfs)
    vm = LinuxVm(domain.socket_path, ["--serve"], guest=broken, timeout=30)
    with vm, pytest.raises(VmError, match=r"(?s)QEMU exited before.*no-such-kernel"):
        vm.wait_line("IVPosition")
    assert not vm.running


def test_initramfs_cli(guest: Guest, capsys: pytest.CaptureFixture[str]) -> None:
    from ivhw.sw.guest.initramfs import main

    assert main([]) == 0
    assert capsys.readouterr().out.split() == [
        "kernel",
        str(guest.kernel),
        "initramfs",
        str(guest.initramfs),
    ]
    assert main(["--list"]) == 0
    assert guest.version in capsys.readouterr().out.split()
    assert main(["--kernel-version", "0.0-none"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "ivhw.sw.guest.initramfs: error: no kernel /boot/vmlinuz-0.0-none "
        "(install Debian's linux-image-amd64: make setup)\n"
    )


@pytest.mark.verilator
def test_bench_linux_rtt_smoke(guest: Guest, capsys: pytest.CaptureFixture[str]) -> None:
    """``bench.linux_rtt`` runs: a row per target, every reply verified (no timing asserted)."""
    from bench import linux_rtt

    assert linux_rtt.main(["--requests", "3"]) == 0
    out = capsys.readouterr().out
    for row in ("simulated device", "host echo peer", "Linux VM A", "(host -> device)"):
        assert re.search(rf"^{re.escape(row)}\s+\d+\s+\d+\s+\d+\s+\d+", out, re.M), out


def test_boot_a_given_kernel_image(domain: Domain, guest: Guest) -> None:
    """docs/linux-guest.md's recipe for your own kernel: any image with the initramfs.

    Here the image is Debian's compressed ``vmlinuz`` itself (a ``bzImage``, booted
    through its decompressor) instead of the ``vmlinux`` the build unpacked.
    """
    image = Guest("bzImage", Path("/boot") / f"vmlinuz-{guest.version}", guest.initramfs)
    host = domain.peer()
    vm = domain.linux(image, ["--serve-count", "1"])
    vm_id = wait_known(host, vm.peer_id)
    vm.wait_serving()
    check_echo(host, vm_id, b"to a bzImage-booted guest")
    assert vm.wait() == 0, vm.console()
