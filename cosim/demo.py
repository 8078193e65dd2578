"""Co-simulation demo: simulated hardware answers a booted Linux VM and a host process.

``python -m ivhw.cosim.demo`` starts an ``ivshmem-server``, the simulated
ivshmem-flat device running the ``echo`` guest under Verilator (``ivshmem-cosim``),
a host peer, and a QEMU 7.2 VM with an unmodified ``ivshmem-doorbell`` that boots
Debian's Linux kernel (``--vm linux``, the default). In the guest, ``ivshmem-echo``
maps BAR0 and BAR2 through vfio-pci, writes its requests into shared memory,
rings the device from the guest CPU and takes the reply doorbells as MSI-X; it
prints every reply it verified on the serial console. It also answers echo
requests itself, so a second simulated device running the ``ping`` guest, and the
host peer, measure round trips into the running operating system.

``--vm qtest`` instead drives the ``ivshmem-doorbell`` from outside through qtest
(the CPU never runs). ``--revision 2`` is the revision 2 demo instead: an
``ivshmem2-server``, the simulated revision 2 PCI endpoint running the ``echo2``
guest, and two host peers of the peer library that exchange requests with it over
the output sections (docs/echo2-protocol.md); every State Table change a host sees
is shown, and one host leaves before the end (PEER_GONE). ``--device soc`` replaces
the simulated device and its Python echo guest with the SoC tile
(:mod:`ivhw.boards.soc`), whose RISC-V CPU runs the echo service in C; its console
lines appear as ``[soc]``. Everything started is shut down
again; ``--waves FILE`` records the echo device's waveform.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from ..sw import echo, echo2
from ..sw.peer import Peer, PeerJoined, PeerLeft
from ..sw.regmap import REV2_LAYOUTS
from .process import CosimProcess

__all__ = ["QemuReply", "main", "qemu_echo_request"]

_VECTORS = 2
_SHM_SIZE = 1 << 20
_MESSAGES = (b"hello from the VM", b"ivshmem doorbell + MSI-X", bytes(range(56)))
_HOST_MESSAGES = (b"hello from the host", b"eventfd + mmap", b"\xa5" * 40)


class QemuReply:
    """An echo reply seen by a QEMU peer: source, payload, round trip in seconds."""

    def __init__(self, source: int, payload: bytes, rtt: float) -> None:
        self.source = source
        self.payload = payload
        self.rtt = rtt


def qemu_echo_request(vm: Any, target: int, payload: bytes, timeout: float = 20.0) -> QemuReply:
    """One echo request from QEMU ``vm`` (a ``QemuIvshmem``) through BAR2 and its Doorbell.

    The reply's doorbell arrives as MSI-X vector 0. Raises ``TimeoutError`` without one.
    """
    own = vm.ivposition
    box, reply = echo.outbox(own), echo.inbox(own)
    vm.shm_write(reply + 4, bytes(4))
    vm.shm_write(box, struct.pack("<I", target))
    vm.shm_write(box + 8, payload)
    vm.msix_clear(0)
    start = time.perf_counter()
    vm.shm_write(box + 4, struct.pack("<I", len(payload)))  # the length goes last
    vm.ring(target, 0)
    if not vm.wait_msix(0, timeout):
        raise TimeoutError(f"QEMU peer {own} got no reply doorbell (MSI-X 0) within {timeout:g} s")
    rtt = time.perf_counter() - start
    source, length = struct.unpack("<II", vm.shm_read(reply, 8))
    return QemuReply(source, vm.shm_read(reply + 8, length), rtt)


def _print(line: str) -> None:
    # a closed stdout (`| head`) must not abort the shutdown of what the demo started
    try:  # one write per line, so the relay threads' lines never interleave
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass


def _say(who: str, text: str) -> None:
    _print(f"[{who:>6}] {text}")


class _Interrupted(Exception):
    pass


def _interrupt(_signum: int, _frame: object) -> None:
    raise _Interrupted


def _relay(who: str, stream: TextIO) -> None:
    for line in stream:
        _say(who, line.rstrip().removeprefix("ivshmem-server: "))


def _relay_cosim(stream: Any, verbose: bool) -> None:
    for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        if verbose or line.startswith(("[", "ivshmem-cosim")):
            _print(line)


def _wait_for(condition: Any, what: str, timeout: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if alive is not None and not alive():
            raise RuntimeError(f"gave up waiting for {what}: a process exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.02)


def _check(reply_payload: bytes, payload: bytes) -> str:
    return "ok" if reply_payload == echo.invert(payload) else "WRONG"


def _host_request(host: Peer, target: int, payload: bytes) -> int:
    """One echo request of the host peer, shown; 1 if the reply was wrong."""
    _say("host", f"-> peer {target}: {payload[:24]!r}")
    reply = echo.request(host, target, payload, timeout=20)
    ok = _check(reply.payload, payload)
    _say(
        "host",
        f"<- peer {reply.source}: {reply.payload[:12].hex()}... "
        f"(every byte XOR 0xFF: {ok}) in {reply.rtt * 1e3:.2f} ms",
    )
    return int(ok != "ok")


#: How many requests the simulated ``ping`` guest sends into the Linux VM.
_PINGS = 5


def _relay_ping(stream: Any, verbose: bool) -> None:
    for raw in stream:
        line = raw.decode(errors="replace").rstrip().replace("[   sim]", "[  ping]", 1)
        if verbose or line.startswith(("[", "ivshmem-cosim")):
            _print(line)


def _start_linux(sock: Path, target: int) -> Any:
    """Boot the Linux VM: it sends ``_MESSAGES`` to ``target`` and then serves requests."""
    from ..sw.guest.initramfs import build
    from ..sw.guest.vm import LinuxVm

    try:
        guest = build()
    except FileNotFoundError as error:
        raise RuntimeError(f"{error}; or run the demo with --vm qtest") from None
    _say("demo", f"booting Linux {guest.version} in QEMU 7.2 (TCG) with ivshmem-doorbell")

    def show(line: str) -> None:
        if line.startswith(("ivhw-guest:", "ivshmem-echo:")) or "Power down" in line:
            _say("linux", line.removeprefix("ivshmem-echo: "))

    args = [a for m in _MESSAGES for a in ("--payload", m.hex())]
    # it serves the simulated ping and one request of the host, then powers off
    args += ["--target", str(target), "--timeout", "20", "--serve-count", str(_PINGS + 1)]
    return LinuxVm(sock, args, vectors=_VECTORS, guest=guest, on_line=show).start()


def _linux_round(
    sock: Path, tmp: Path, args: argparse.Namespace, vm: Any, host: Peer, target: int
) -> int:
    """The Linux VM's part of the demo once it booted; returns the number of failures."""
    vm_id = vm.wait_serving(120)
    while vm_id not in host.peers:
        host.wait(PeerJoined, timeout=10)
    _say("demo", f"starting a second simulated device: the ping guest, into the VM (peer {vm_id})")
    pinger = CosimProcess(
        sock, tmp, name="ping", sim=args.sim, device="flat", vectors=_VECTORS,
        shm_size=_SHM_SIZE, guest="ping", stdout=subprocess.PIPE,
        guest_args={"target": vm_id, "count": _PINGS, "timeout": 20},
    ).start()  # fmt: skip
    assert pinger.process is not None
    threading.Thread(
        target=_relay_ping, args=(pinger.process.stdout, args.verbose), daemon=True
    ).start()
    failures = 0
    try:
        if pinger.wait(180):
            failures += 1
    finally:
        pinger.stop()
    failures += _host_request(host, vm_id, b"host to the Linux guest")
    status = vm.wait(60)
    replies = vm.replies()
    verified = sum(r.ok and r.source == target for r in replies)
    if status or verified != len(_MESSAGES):
        failures += 1
    _say("demo", f"the Linux guest verified {verified} of {len(_MESSAGES)} replies "
         f"and powered off (ivshmem-echo status {status})")  # fmt: skip
    return failures


def _stop(device: CosimProcess | None, server: subprocess.Popen[str]) -> bool:
    """Stop the simulated device (shown), then the server; whether the device failed."""
    code = 0
    if device is not None:
        code = device.stop()
        _say("demo", f"simulated device stopped (status {code})")
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=10)
    if server.poll() is None:
        server.kill()
        server.wait()
    return code != 0


def _run(tmp: Path, args: argparse.Namespace) -> int:
    from ..sw.qtest import QemuIvshmem, find_qemu

    sock = tmp / "ivshmem.sock"
    server_cmd = [
        sys.executable, "-m", "ivhw.sw.server", "-F", "-S", str(sock),
        "-M", f"ivhw-cosim-demo-{os.getpid()}", "-l", "1M", "-n", str(_VECTORS),
    ]  # fmt: skip
    _say("demo", "starting: ivshmem-server " + " ".join(server_cmd[3:]))
    server = subprocess.Popen(server_cmd, stderr=subprocess.PIPE, text=True)
    threading.Thread(target=_relay, args=("server", server.stderr), daemon=True).start()
    device: CosimProcess | None = None
    vm: QemuIvshmem | None = None
    linux: Any = None
    host: Peer | None = None
    status = 1
    try:
        _wait_for(sock.exists, "the server socket", 10, lambda: server.poll() is None)
        kind, guest = {
            "flat": ("ivshmem-flat", "echo guest"),
            "pci": ("ivshmem PCI endpoint", "echo guest"),
            "soc": ("SoC tile (sentinel-cpu + ivshmem-flat)", "C echo firmware"),
        }[args.device]
        _say("demo", f"starting the simulated {kind} ({args.sim}, {guest})")
        device = CosimProcess(
            sock, tmp, sim=args.sim, device=args.device, vectors=_VECTORS, shm_size=_SHM_SIZE,
            guest="echo",
            waves=args.waves, stdout=subprocess.PIPE,
        ).start()  # fmt: skip
        assert device.process is not None and device.process.stdout is not None
        relay = threading.Thread(
            target=_relay_cosim, args=(device.process.stdout, args.verbose), daemon=True
        )
        relay.start()
        host = Peer(str(sock), vectors=_VECTORS, timeout=10)
        _say("host", f"joined as peer {host.id}")
        joined, started = host, device

        def device_joined() -> bool:
            joined.poll(0.05)
            return bool(joined.peers)

        # the first run builds the device (minutes on a loaded machine); a build that
        # fails ends the process, which ends the wait at once
        _wait_for(
            device_joined, "the simulated device joining", 600, lambda: started.poll() is None
        )
        target = min(host.peers)
        _say("host", f"the simulated device is peer {target}")
        qemu = find_qemu()
        if qemu is None:
            _say("demo", "qemu-system-x86_64 not found: skipping the QEMU peer")
        elif args.vm == "linux":
            linux = _start_linux(sock, target)
        else:
            vm = QemuIvshmem(server_socket=sock, vectors=_VECTORS, timeout=20, workdir=None)
            vm.start()
            vm.setup()
            _say("qemu", f"QEMU 7.2 ivshmem-doorbell joined as peer {vm.ivposition} (qtest)")
            host.wait(PeerJoined, timeout=10)
        failures = 0
        rounds = max(len(_MESSAGES), len(_HOST_MESSAGES))
        for n in range(rounds):
            if vm is not None and n < len(_MESSAGES):
                payload = _MESSAGES[n]
                _say("qemu", f"-> peer {target}: {payload[:24]!r}")
                qreply = qemu_echo_request(vm, target, payload)
                ok = _check(qreply.payload, payload)
                failures += ok != "ok"
                _say(
                    "qemu",
                    f"<- peer {qreply.source} (MSI-X 0): {qreply.payload[:12].hex()}... "
                    f"(every byte XOR 0xFF: {ok}) in {qreply.rtt * 1e3:.2f} ms",
                )
            if n < len(_HOST_MESSAGES):
                failures += _host_request(host, target, _HOST_MESSAGES[n])
        if linux is not None:
            failures += _linux_round(sock, tmp, args, linux, host, target)
        status = 1 if failures else 0
    finally:
        if vm is not None:
            vm.close()
            _say("demo", "QEMU stopped")
        if linux is not None:
            linux.close()
            _say("demo", "QEMU (Linux) stopped")
        if host is not None:
            host.close()
        if _stop(device, server):
            status = 1
        _say(
            "demo",
            f"server exited with status {server.returncode}; "
            f"socket file removed: {not sock.exists()}",
        )
    if args.waves is not None and Path(args.waves).exists():
        _say("demo", f"waveform: {args.waves}")
    return status


#: The revision 2 demo's domain: 64 KiB, one page per output section, four peers.
_REV2_SERVER = ("-l", "64K", "-o", "4K", "-n", "4", "-V", str(_VECTORS))
_REV2_MESSAGES = {
    "A": (b"hello from host A", b"output sections", bytes(range(56))),
    "B": (b"hello from host B", b"State register READY", b"\x5a" * 33),
}


class _StateWatch:
    """A host peer's view of the State Table: each change it sees is one transcript line."""

    def __init__(self, name: str, peer: Peer) -> None:
        self.name = name
        self.peer = peer
        self._seen = self._table()

    def _table(self) -> dict[int, int]:
        return {p: self.peer.state_of(p) for p in range(self.peer.max_peers)}

    def look(self, events: list[object]) -> None:
        for event in events:
            if isinstance(event, PeerJoined | PeerLeft):
                what = "joined" if isinstance(event, PeerJoined) else "left (PEER_GONE)"
                _say(self.name, f"peer {event.peer} {what}")
        table = self._table()
        for peer, value in table.items():
            if value != self._seen[peer]:
                ready = " (READY)" if value == echo2.READY else ""
                _say(self.name, f"State Table: peer {peer} {self._seen[peer]} -> {value}{ready}")
        self._seen = table

    def poll(self, timeout: float = 0.0) -> None:
        self.look(self.peer.poll(timeout))  # type: ignore[arg-type]

    def ready(self) -> list[int]:
        """The other peers this host has seen READY (and knows)."""
        return [p for p in self.peer.peers if self._seen.get(p) == echo2.READY]


def _request2(watch: _StateWatch, target: int, payload: bytes) -> int:
    """One revision 2 echo request of a host, shown; 1 if the reply was wrong."""
    host = watch.peer
    _say(watch.name, f"-> peer {target}: {payload[:24]!r} (slot {target} of own output section)")
    reply = echo2.request2(host, target, payload, timeout=20)
    ok = _check(reply.payload, payload)
    _say(
        watch.name,
        f"<- peer {reply.source} (slot {host.id} of its output section): "
        f"{reply.payload[:12].hex()}... (every byte XOR 0xFF: {ok}) in {reply.rtt * 1e3:.2f} ms",
    )
    watch.look([])  # request2 consumed the doorbells: the state changes they announced
    return int(ok != "ok")


def _run2(tmp: Path, args: argparse.Namespace) -> int:
    """The revision 2 demo; returns the number of failures (0: all well, all shut down)."""
    sock = tmp / "ivshmem2.sock"
    shm_name = f"ivhw-cosim-demo2-{os.getpid()}"
    server_cmd = [
        sys.executable, "-m", "ivhw.sw.server2", "-F", "-S", str(sock), "-M", shm_name,
        *_REV2_SERVER,
    ]  # fmt: skip
    _say("demo", "starting: ivshmem2-server " + " ".join(server_cmd[3:]))
    server = subprocess.Popen(server_cmd, stderr=subprocess.PIPE, text=True)
    threading.Thread(target=_relay, args=("server", server.stderr), daemon=True).start()
    device: CosimProcess | None = None
    hosts: dict[str, _StateWatch] = {}
    failures = 1
    try:
        _wait_for(sock.exists, "the server socket", 10, lambda: server.poll() is None)
        for name in ("A", "B"):
            peer = Peer(str(sock), revision=2, timeout=10)
            hosts[name] = _StateWatch(f"host {name}", peer)
            _say(f"host {name}", f"joined as peer {peer.id} (max {peer.max_peers} peers, "
                 f"output sections of {peer.output_section_size // 1024} KiB)")  # fmt: skip
        a, b = hosts["A"], hosts["B"]
        _say("demo", f"starting the simulated revision 2 PCI endpoint ({args.sim}, "
             f"{args.layout} layout, {args.interrupts}, echo2 guest)")  # fmt: skip
        device = CosimProcess(
            sock, tmp, sim=args.sim, device="pci", revision=2, layout=args.layout,
            interrupts=args.interrupts, vectors=None, waves=args.waves, stdout=subprocess.PIPE,
        ).start()  # fmt: skip
        assert device.process is not None and device.process.stdout is not None
        threading.Thread(
            target=_relay_cosim, args=(device.process.stdout, args.verbose), daemon=True
        ).start()
        started = device

        def device_ready() -> bool:
            for watch in hosts.values():
                watch.poll(0.02)
            return bool(set(a.ready()) & set(b.ready()))

        # the first run builds the device (minutes on a loaded machine)
        _wait_for(device_ready, "the simulated device's READY", 600,
                  lambda: started.poll() is None)  # fmt: skip
        (target,) = set(a.ready()) & set(b.ready())
        _say("demo", f"the simulated device is peer {target}, READY in the State Table")
        failures = 0
        for n in range(3):
            for watch in (a, b):
                failures += _request2(watch, target, _REV2_MESSAGES[watch.name[-1]][n])
                for other in hosts.values():
                    other.poll(0)
        _say("demo", "host B leaves; the server zeroes its State Table entry, then PEER_GONE")
        b_id = b.peer.id
        b.peer.close()
        del hosts["B"]

        def gone() -> bool:
            a.poll(0.05)
            return b_id not in a.peer.peers

        _wait_for(gone, "host B's PEER_GONE", 10)
        failures += _request2(a, target, b"after B left")
    finally:
        for watch in hosts.values():
            watch.peer.close()
        failures += _stop(device, server)
        shm_left = os.path.exists(f"/dev/shm/{shm_name}")
        _say(
            "demo",
            f"server exited with status {server.returncode}; socket file removed: "
            f"{not sock.exists()}; shared memory removed: {not shm_left}",
        )
        failures += bool(server.returncode) + sock.exists() + shm_left
    return failures


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns 0 when every reply was right and everything shut down."""
    parser = argparse.ArgumentParser(prog="python -m ivhw.cosim.demo", description=__doc__)
    parser.add_argument("--sim", choices=("verilator", "icarus"), default="verilator")
    parser.add_argument(
        "--device", choices=("flat", "pci", "soc"), default="flat",
        help="the simulated device: ivshmem-flat (AXI4-Lite), the PCI endpoint, or the SoC "
        "tile whose RISC-V CPU runs the echo firmware in C",
    )  # fmt: skip
    parser.add_argument(
        "--vm", choices=("linux", "qtest"), default="linux",
        help="the QEMU peer: a booted Linux guest (default) or a device driven through qtest",
    )  # fmt: skip
    parser.add_argument(
        "--revision", type=int, choices=(1, 2), default=1,
        help="2: the revision 2 demo (an ivshmem2-server, the revision 2 PCI endpoint "
        "running echo2, two host peers)",
    )  # fmt: skip
    parser.add_argument(
        "--layout", choices=REV2_LAYOUTS,
        help="--revision 2: the endpoint's register layout (default final)",
    )  # fmt: skip
    parser.add_argument("--interrupts", choices=("msix", "intx"),
                        help="--revision 2: the endpoint's interrupts (default msix)")  # fmt: skip
    parser.add_argument("--waves", metavar="FILE", help="write the device's waveform to FILE")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the simulator's log")
    args = parser.parse_args(argv)
    if args.revision == 2:
        if args.device != "flat" or args.vm != "linux":
            parser.error("--revision 2 runs its own domain: leave out --device and --vm")
        args.layout, args.interrupts = args.layout or "final", args.interrupts or "msix"
    elif args.layout or args.interrupts:
        parser.error("--layout and --interrupts are options of --revision 2")
    if args.waves is not None:
        args.waves = os.path.abspath(args.waves)
    tmp = Path(tempfile.mkdtemp(prefix="ivhw-cdemo-"))
    signal.signal(signal.SIGTERM, _interrupt)  # shut everything down, as on ^C
    try:
        if args.revision == 2:
            return 1 if _run2(tmp, args) else 0
        return _run(tmp, args)
    except (TimeoutError, RuntimeError) as error:
        _say("demo", f"error: {error}")
        return 1
    except (KeyboardInterrupt, _Interrupted):
        _say("demo", "interrupted; everything started was stopped")
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
