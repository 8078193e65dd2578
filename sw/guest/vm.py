"""Boot the Linux guest in QEMU 7.2 as a peer of an ivshmem server.

:class:`LinuxVm` starts ``qemu-system-x86_64`` (q35, TCG) with Debian's kernel,
the initramfs of :mod:`ivhw.sw.guest.initramfs`, an emulated Intel IOMMU (VFIO
needs one: ``-device intel-iommu,intremap=on`` and ``intel_iommu=on``) and an
unmodified ``ivshmem-doorbell`` on the server's socket. The guest's ``init``
runs ``ivshmem-echo`` with ``guest_args`` and powers off when it exits. The
serial console is QEMU's stdout: a thread collects its lines, which
:meth:`LinuxVm.wait_line` waits for and :meth:`LinuxVm.replies` parses. QEMU is
killed by PID and reaped on :meth:`LinuxVm.close`, whatever happened.

Example::

    with LinuxVm("/tmp/ivs.sock", ["--target", "0", "--count", "3"]) as vm:
        print(vm.ivposition)
        assert vm.wait() == 0 and all(r.ok for r in vm.replies())
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..qtest import doorbell_device_args, find_qemu
from .initramfs import Guest, build

__all__ = ["KERNEL_ARGS", "GuestReply", "LinuxVm", "VmError"]

#: Kernel command line before ``--`` (what follows goes to the guest program): the serial
#: console, the IOMMU VFIO needs, ``no_timer_check`` (the IO-APIC timer check counts
#: timer ticks during a busy loop; an emulated CPU on a loaded host fails it and the
#: kernel panics with "timer doesn't work through Interrupt-remapped IO-APIC", so KVM
#: guests skip it too), and two trims of emulated boot time in a throwaway VM (no
#: read-only kernel text and its W+X scan, no CPU vulnerability mitigations): about a
#: second of the 4-6 s under TCG.
KERNEL_ARGS = (
    "console=ttyS0 quiet panic=-1 intel_iommu=on no_timer_check rodata=off mitigations=off"
)

_REPLY = re.compile(
    r"ivshmem-echo: reply (\d+) <- peer (\d+) \(MSI-X 0\): (\d+) bytes ([0-9a-f]*) "
    r"(ok|WRONG) rtt_us ([0-9.]+)"
)
_STATUS = re.compile(r"ivhw-guest: ivshmem-echo exited with status (\d+)")


class VmError(RuntimeError):
    """QEMU failed or the guest did not do what was awaited; the message has the console."""


@dataclass(frozen=True)
class GuestReply:
    """A reply the guest program verified (or not): its request index, source, payload, rtt."""

    index: int
    source: int
    payload: bytes
    ok: bool
    #: round trip in seconds, measured with the guest's CLOCK_MONOTONIC
    rtt: float


class LinuxVm:
    """One Linux guest in QEMU 7.2 with an ``ivshmem-doorbell`` on ``server_socket``.

    Parameters
    ----------
    server_socket:
        The ivshmem server's UNIX socket.
    guest_args:
        Arguments of ``ivshmem-echo`` in the guest (``--target ID``, ``--serve``, ...).
    vectors:
        MSI-X vectors of the device (the server's ``-n``).
    guest:
        Kernel and initramfs; built (or reused) by :func:`ivhw.sw.guest.initramfs.build`.
    timeout:
        Default seconds for :meth:`wait_line` and :meth:`wait`.
    slot:
        PCI slot of the ``ivshmem-doorbell`` on q35's root bus (default: QEMU's choice).
    on_line:
        Called with every console line as it arrives (from the reader thread).
    extra_args:
        Appended to QEMU's command line (more devices, say).
    """

    def __init__(
        self,
        server_socket: str | os.PathLike[str],
        guest_args: Sequence[str] = ("--serve",),
        *,
        vectors: int = 2,
        guest: Guest | None = None,
        timeout: float = 60.0,
        memory: str = "192M",
        qemu: str | None = None,
        slot: int | None = None,
        on_line: Callable[[str], None] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.server_socket = Path(server_socket)
        self.guest_args = [str(a) for a in guest_args]
        self.vectors = vectors
        self.guest = guest
        self.timeout = timeout
        self.memory = memory
        self.qemu = qemu or find_qemu() or "qemu-system-x86_64"
        self.slot = slot
        self.on_line = on_line
        self.extra_args = list(extra_args)
        self.pid: int | None = None
        #: the peer ID the server gave the VM, when whoever started it looked it up
        #: (the guest itself prints it only once it has booted: :attr:`ivposition`)
        self.peer_id: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        self._dir: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def command_line(self) -> list[str]:
        """QEMU's command line."""
        if self.guest is None:
            self.guest = build()
        append = f"{KERNEL_ARGS} -- {' '.join(self.guest_args)}"
        return [
            self.qemu,
            "-machine", "q35",
            "-accel", "tcg",
            "-m", self.memory,
            "-display", "none",
            "-nodefaults",
            "-no-reboot",
            "-serial", "stdio",
            # VFIO in the guest needs an IOMMU; interrupt remapping makes its MSI-X safe
            "-device", "intel-iommu,intremap=on",
            "-kernel", os.fspath(self.guest.kernel),
            "-initrd", os.fspath(self.guest.initramfs),
            "-append", append,
            *doorbell_device_args(self.server_socket, self.vectors, self.slot),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> LinuxVm:
        """Start QEMU (the guest boots and runs on its own)."""
        if self._proc is not None:
            raise VmError("the VM is already running")
        command = self.command_line()
        self._dir = Path(tempfile.mkdtemp(prefix="ivhw-vm-"))
        with open(self._dir / "qemu.stderr", "wb") as err:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,  # a ^C to the tests does not reach QEMU first
            )
        self.pid = self._proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
            if self.on_line is not None:
                self.on_line(line)
        with self._changed:
            self._changed.notify_all()

    def close(self) -> None:
        """Kill QEMU by PID (if it still runs), reap it, and remove the scratch directory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if self._reader is not None:
                self._reader.join(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
            self._last_stderr = self._stderr()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> LinuxVm:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- what the guest says ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether QEMU is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def lines(self) -> list[str]:
        """Console lines so far."""
        with self._changed:
            return list(self._lines)

    def console(self) -> str:
        """The console so far, and QEMU's stderr if it wrote any."""
        text = "\n".join(self.lines)
        err = self._stderr().strip()
        return text + (f"\nQEMU stderr:\n{err}" if err else "")

    def _stderr(self) -> str:
        if self._dir is None:
            return getattr(self, "_last_stderr", "")
        try:
            return (self._dir / "qemu.stderr").read_text(errors="replace")
        except OSError:
            return ""

    def wait_line(self, pattern: str, timeout: float | None = None) -> re.Match[str]:
        """Wait for a console line matching ``pattern`` (a regex, searched); its match.

        Raises :class:`VmError` when QEMU exits first or ``timeout`` passes.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        seen = 0
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self._lines)
                finished = self._proc is None or (
                    self._proc.poll() is not None
                    and (self._reader is None or not self._reader.is_alive())
                )
                remaining = deadline - time.monotonic()
                if finished or remaining <= 0:
                    why = "QEMU exited" if finished else "timed out"
                    raise VmError(f"{why} before the guest printed /{pattern}/:\n{self.console()}")
                self._changed.wait(min(remaining, 0.1))

    @property
    def kernel_version(self) -> str:
        """The guest kernel's version line (``/proc/version``)."""
        return self.wait_line(r"ivhw-guest: (Linux version .*)").group(1)

    @property
    def ivposition(self) -> int:
        """The peer ID the guest read from IVPosition."""
        return int(self.wait_line(r"ivshmem-echo: IVPosition (\d+)").group(1))

    def wait_serving(self, timeout: float | None = None) -> int:
        """Wait until the guest program serves echo requests; its peer ID."""
        return int(
            self.wait_line(r"ivshmem-echo: serving echo requests as peer (\d+)", timeout).group(1)
        )

    def replies(self) -> list[GuestReply]:
        """Every reply the guest program reported so far."""
        found = []
        for line in self.lines:
            match = _REPLY.search(line)
            if match:
                index, source, _, data, ok, rtt = match.groups()
                found.append(
                    GuestReply(
                        int(index), int(source), bytes.fromhex(data), ok == "ok", float(rtt) * 1e-6
                    )
                )
        return found

    def interrupts(self) -> dict[int, int]:
        """MSI-X interrupts per vector the guest kernel took for the device (at the end)."""
        line = self.wait_line(r"ivshmem-echo: MSI-X interrupts taken by the guest kernel:", 0)
        return {int(v): int(n) for v, n in re.findall(r"vector (\d+): (\d+)", line.string)}

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the guest program to finish and QEMU to exit; the program's exit status.

        Raises :class:`VmError` when QEMU does not exit in time or the program's
        status line never came (QEMU or the kernel died).
        """
        assert self._proc is not None, "the VM was not started"
        limit = self.timeout if timeout is None else timeout
        try:
            self._proc.wait(limit)
        except subprocess.TimeoutExpired:
            raise VmError(f"QEMU did not exit within {limit:g} s:\n{self.console()}") from None
        if self._reader is not None:
            self._reader.join(timeout=5)
        for line in self.lines:
            match = _STATUS.search(line)
            if match:
                return int(match.group(1))
        raise VmError(
            f"QEMU exited with status {self._proc.returncode} before the guest program "
            f"finished:\n{self.console()}"
        )
