"""Echo round trips measured inside a booted Linux guest, to three kinds of peer, in one run.

``python -m bench.linux_rtt [--quick] [--requests N] [--size BYTES] [--sim verilator|icarus]``

One domain: our server, the simulated ivshmem-flat device running the ``echo``
guest (``ivshmem-cosim``), a host process running ``ivhw.sw.echo.EchoResponder``,
and two QEMU 7.2 VMs booting Debian's kernel (``ivhw.sw.guest``). VM A runs
``ivshmem-echo --serve``; VM B runs ``ivshmem-echo`` with three ``--target``\\s:
the simulated device, the host echo peer and VM A, ``--requests`` each, one
after the other. Every round trip is measured by the guest program with the
guest's ``CLOCK_MONOTONIC`` (from just before the length word is published to
the reply's MSI-X as seen by ``poll`` on the VFIO eventfd) and printed on the
serial console; every reply is verified by the guest.

Baseline, in the same run: the host echo peer (a requester in a VM, the
responder a plain process). Ratios are against its median. For context, the
host peer's own round trip to the simulated device (``ivhw.sw.echo.request``) is
measured too.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["main"]

_VECTORS = 2
_SHM_SIZE = 1 << 20


def _summary(rtts: list[float]) -> tuple[float, float, float, float]:
    us = sorted(r * 1e6 for r in rtts)
    return us[0], statistics.median(us), us[min(len(us) - 1, int(0.9 * len(us)))], us[-1]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every request was answered and verified."""
    parser = argparse.ArgumentParser(prog="python -m bench.linux_rtt", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 requests per target")
    parser.add_argument("--requests", type=int, default=200, help="requests per target")
    parser.add_argument("--size", type=int, default=16, help="payload bytes (1..56)")
    parser.add_argument("--sim", choices=("verilator", "icarus"), default="verilator")
    args = parser.parse_args(argv)
    count = 20 if args.quick else args.requests

    from ivhw.cosim.process import CosimProcess
    from ivhw.sw import echo
    from ivhw.sw.guest.initramfs import build
    from ivhw.sw.guest.vm import LinuxVm
    from ivhw.sw.peer import Peer, PeerJoined
    from ivhw.sw.server import IvshmemServer

    guest = build()
    tmp = Path(tempfile.mkdtemp(prefix="ivhw-blx-"))
    sock = tmp / "ivs.sock"
    server = IvshmemServer(str(sock), shm_size=_SHM_SIZE, vectors=_VECTORS)
    server.serve_in_background()
    stop = threading.Event()
    vms: list[LinuxVm] = []
    device = None
    try:
        device = CosimProcess(
            sock, tmp, sim=args.sim, device="flat", vectors=_VECTORS, shm_size=_SHM_SIZE
        ).start()
        host = Peer(str(sock), vectors=_VECTORS, timeout=10)
        while not host.peers:
            host.wait(PeerJoined, timeout=120)
        device_id = min(host.peers)
        # the host's own round trips to the device, before it turns responder
        host_to_device = [
            echo.request(host, device_id, bytes(args.size), timeout=20).rtt for _ in range(count)
        ]
        responder = echo.EchoResponder(host)

        def serve() -> None:
            while not stop.is_set():
                responder.run(until=time.monotonic() + 0.1)

        threading.Thread(target=serve, daemon=True).start()
        before = set(server.peer_ids)
        vm_a = LinuxVm(sock, ["--serve"], vectors=_VECTORS, guest=guest, timeout=120).start()
        vms.append(vm_a)
        deadline = time.monotonic() + 30
        while not set(server.peer_ids) - before and time.monotonic() < deadline:
            time.sleep(0.01)
        a_id = max(set(server.peer_ids) - before)
        vm_a.wait_serving()
        targets = {"simulated device": device_id, "host echo peer": host.id, "Linux VM A": a_id}
        b_args = [a for t in targets.values() for a in ("--target", str(t))]
        b_args += ["--count", str(count), "--size", str(args.size), "--timeout", "20"]
        vm_b = LinuxVm(sock, b_args, vectors=_VECTORS, guest=guest, timeout=300).start()
        vms.append(vm_b)
        status = vm_b.wait()
        replies = vm_b.replies()
        bad = status != 0 or not all(r.ok for r in replies)
        print(f"kernel: {vm_b.kernel_version}")
        print(
            f"echo round trips seen by ivshmem-echo in Linux VM B (guest CLOCK_MONOTONIC), "
            f"{count} requests of {args.size} bytes per target, device on {args.sim}:"
        )
        print(f"{'target':<22}{'min us':>9}{'median':>9}{'p90':>9}{'max':>9}{'x host':>9}")
        base = None
        rows = []
        for name, peer in targets.items():
            rtts = [r.rtt for r in replies if r.source == peer]
            if len(rtts) != count:
                print(f"{name}: {len(rtts)} of {count} replies")
                bad = True
                continue
            rows.append((name, _summary(rtts)))
            if peer == host.id:
                base = rows[-1][1][1]
        for name, (lo, med, p90, hi) in rows:
            ratio = f"{med / base:.2f}" if base else "-"
            print(f"{name:<22}{lo:>9.0f}{med:>9.0f}{p90:>9.0f}{hi:>9.0f}{ratio:>9}")
        lo, med, p90, hi = _summary(host_to_device)
        print(f"{'(host -> device)':<22}{lo:>9.0f}{med:>9.0f}{p90:>9.0f}{hi:>9.0f}{'':>9}")
        return 1 if bad else 0
    finally:
        stop.set()
        for vm in vms:
            vm.close()
        if device is not None:
            device.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
