"""Drive a real QEMU ivshmem device through QEMU's qtest protocol.

QEMU runs with ``-accel tcg -S``: the CPU never starts, so no firmware runs and
this harness plays firmware and guest driver itself. It talks qtest's text
protocol over a UNIX socket it listens on (QEMU connects to it), accesses PCI
config space through the 0xCF8/0xCFC ports, sizes and assigns the BARs, programs
MSI-X so that a delivered interrupt lands as a distinctive word in guest RAM,
and reads and writes the device's registers and shared memory.

Two device flavours, as in QEMU 7.2:

* ``ivshmem-doorbell``: joins an ivshmem server (``server_socket``), MSI-X with
  ``vectors`` vectors, BAR0 registers, BAR1 MSI-X table and PBA, BAR2 the
  server's shared memory.
* ``ivshmem-plain``: no server, no interrupts; BAR2 is a file mapped with
  ``share=on`` (``shm_path``) so the host can look at it.

Every reply has a timeout, a QEMU that dies is noticed at once, and its stderr
is part of every error. QEMU does not exit when the qtest socket closes, so
:meth:`QemuIvshmem.close` kills it by PID and reaps it.

Example::

    with QemuIvshmem(server_socket="/tmp/ivs.sock", vectors=2) as vm:
        vm.setup()                      # BARs + bus master + MSI-X
        vm.ring(peer=3, vector=1)
        assert vm.wait_msix(0, timeout=5)
"""

from __future__ import annotations

import base64
import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .pcicfg import CFG, CMD, MSIX_CAP, BarType
from .regmap import DOORBELL, MSIX_BAR, MSIX_ENTRY, PCI_REV1_REGS

__all__ = [
    "CONFIG_ADDRESS_PORT",
    "CONFIG_DATA_PORT",
    "MSIX_DATA_BASE",
    "MSIX_RAM_BASE",
    "PCI",
    "Bar",
    "QemuIvshmem",
    "QtestError",
    "QtestTimeout",
    "doorbell_device_args",
    "find_qemu",
]

#: Legacy PCI configuration mechanism #1 ports.
CONFIG_ADDRESS_PORT = 0xCF8
CONFIG_DATA_PORT = 0xCFC
#: Guest RAM where MSI-X vector ``v`` writes its message (``MSIX_RAM_BASE + 16 * v``);
#: plain RAM, not the APIC window at FEExxxxxh, so the write is just a store.
MSIX_RAM_BASE = 0x0010_0000
#: Message data of vector ``v`` is ``MSIX_DATA_BASE | v``: distinctive, never 0.
MSIX_DATA_BASE = 0x1F5E_0000

# Where the harness places BARs, as firmware would: 32-bit BARs in the PCI hole
# below 4 GiB (above q35's MMCONFIG window at B0000000h), 64-bit BARs above 4 GiB
# so that the high dword is exercised too.
_MMIO32_BASE = 0xE000_0000
_MMIO32_LIMIT = 0xFEC0_0000
_MMIO64_BASE = 0x80_0000_0000


class PCI:
    """Standard PCI configuration-space offsets and bits used here (from ``ivhw.sw.pcicfg``)."""

    VENDOR_ID = CFG.VENDOR_ID
    DEVICE_ID = CFG.DEVICE_ID
    COMMAND = CFG.COMMAND
    STATUS = CFG.STATUS
    REVISION = CFG.REVISION_ID
    CLASS_PROG = CFG.CLASS_PROG
    HEADER_TYPE = CFG.HEADER_TYPE
    BAR0 = CFG.BAR0
    SUBSYSTEM_VENDOR_ID = CFG.SUBSYSTEM_VENDOR_ID
    SUBSYSTEM_ID = CFG.SUBSYSTEM_ID
    ROM_ADDRESS = CFG.ROM_ADDRESS
    CAPABILITY_LIST = CFG.CAPABILITY_LIST
    INTERRUPT_LINE = CFG.INTERRUPT_LINE
    INTERRUPT_PIN = CFG.INTERRUPT_PIN
    HEADER_SIZE = CFG.HEADER_END

    COMMAND_IO = CMD.IO
    COMMAND_MEMORY = CMD.MEMORY
    COMMAND_MASTER = CMD.MASTER
    COMMAND_INTX_DISABLE = CMD.INTX_DISABLE

    BAR_IO = 0x1
    BAR_TYPE_MASK = 0x6
    BAR_TYPE_64 = BarType.MEM64
    BAR_PREFETCH = BarType.PREFETCH

    CAP_ID_MSIX = MSIX_CAP.id
    # MSI-X capability: +2 Message Control, +4 Table offset/BIR, +8 PBA offset/BIR
    MSIX_FLAGS = MSIX_CAP.CONTROL
    MSIX_TABLE = MSIX_CAP.TABLE
    MSIX_PBA = MSIX_CAP.PBA
    MSIX_FLAGS_QSIZE = MSIX_CAP.TABLE_SIZE
    MSIX_FLAGS_MASKALL = MSIX_CAP.MASKALL
    MSIX_FLAGS_ENABLE = MSIX_CAP.ENABLE
    MSIX_BIR_MASK = MSIX_CAP.BIR_MASK
    # MSI-X table entry: address low, address high, data, vector control
    MSIX_ENTRY_SIZE = MSIX_ENTRY.size
    MSIX_ENTRY_LOWER_ADDR = MSIX_ENTRY.MsgAddrLo.offset
    MSIX_ENTRY_UPPER_ADDR = MSIX_ENTRY.MsgAddrHi.offset
    MSIX_ENTRY_DATA = MSIX_ENTRY.MsgData.offset
    MSIX_ENTRY_VECTOR_CTRL = MSIX_ENTRY.VectorCtrl.offset
    MSIX_ENTRY_CTRL_MASKBIT = MSIX_BAR.mask.mask


class QtestError(RuntimeError):
    """QEMU failed, refused a command or died; the message includes its stderr."""


class QtestTimeout(QtestError):
    """QEMU did not answer in time."""


@dataclass
class Bar:
    """One memory BAR as found by sizing: ``index``, ``size``, flags and the assigned address."""

    index: int
    size: int
    is_64: bool
    prefetchable: bool
    address: int | None = None


def find_qemu() -> str | None:
    """Path of ``qemu-system-x86_64`` on ``PATH``, or ``None``."""
    return shutil.which("qemu-system-x86_64")


def doorbell_device_args(
    server_socket: str | os.PathLike[str], vectors: int, slot: int | None = None
) -> list[str]:
    """QEMU arguments of an unmodified ``ivshmem-doorbell`` on the server at ``server_socket``."""
    addr = "" if slot is None else f",addr={slot:#x}.0"
    return [
        "-chardev", f"socket,path={os.fspath(server_socket)},id=ivs",
        "-device", f"ivshmem-doorbell,chardev=ivs,vectors={vectors}{addr}",
    ]  # fmt: skip


class QemuIvshmem:
    """A QEMU 7.2 ``ivshmem-doorbell`` or ``ivshmem-plain`` device under qtest control.

    Parameters
    ----------
    server_socket:
        UNIX socket of an ivshmem server: selects ``ivshmem-doorbell``.
    vectors:
        MSI-X vectors of the doorbell device (``vectors=`` property).
    shm_path:
        File backing ``ivshmem-plain``'s shared memory (created and sized here
        if missing); selects ``ivshmem-plain``. A temporary file when neither
        this nor ``server_socket`` is given.
    shm_size:
        Size of the plain device's memory backend, a power of two.
    timeout:
        Seconds to wait for any single qtest reply (also for startup).
    workdir:
        Directory for the qtest socket and QEMU's stderr; a fresh temporary one
        (removed on close) when ``None``. Keep it short: UNIX socket paths are
        limited to 107 bytes.
    qemu:
        The QEMU binary.
    slot:
        PCI slot of the device on q35's root bus (function 0).
    extra_args:
        Appended to QEMU's command line.

    Attributes
    ----------
    bars:
        Memory BARs by index after :meth:`assign_bars`.
    pid:
        QEMU's process ID once started.

    Raises
    ------
    QtestError
        QEMU could not be started, died, or refused a command.
    QtestTimeout
        A reply did not arrive within ``timeout`` seconds.
    """

    def __init__(
        self,
        *,
        server_socket: str | os.PathLike[str] | None = None,
        vectors: int = 1,
        shm_path: str | os.PathLike[str] | None = None,
        shm_size: int = 1 << 20,
        timeout: float = 10.0,
        workdir: str | os.PathLike[str] | None = None,
        qemu: str | None = None,
        slot: int = 1,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if server_socket is not None and shm_path is not None:
            raise ValueError("give server_socket (ivshmem-doorbell) or shm_path (plain), not both")
        if not 1 <= vectors <= 1024:
            raise ValueError(f"vectors must be 1..1024, not {vectors!r}")
        if shm_size <= 0 or shm_size & (shm_size - 1):
            raise ValueError(f"shm_size must be a power of two, not {shm_size!r}")
        if not 0 < slot < 32:
            raise ValueError(f"slot must be 1..31, not {slot!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.server_socket = None if server_socket is None else Path(server_socket)
        self.doorbell = server_socket is not None
        self.vectors = vectors if self.doorbell else 0
        self.shm_size = shm_size
        self.timeout = timeout
        self.slot = slot
        self.qemu = qemu or find_qemu() or "qemu-system-x86_64"
        self.extra_args = tuple(extra_args)
        self.bars: dict[int, Bar] = {}
        self.pid: int | None = None
        self._own_workdir = workdir is None
        self._workdir = Path(tempfile.mkdtemp(prefix="ivhw-qt-")) if workdir is None else None
        if workdir is not None:
            self._workdir = Path(workdir)
        self.shm_path: Path | None = None
        if not self.doorbell:
            self.shm_path = Path(shm_path) if shm_path is not None else self.workdir / "plain.shm"
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._stderr_path = self.workdir / "qemu.stderr"
        self._msix_ready: set[int] = set()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """Directory holding the qtest socket and QEMU's stderr."""
        assert self._workdir is not None
        return self._workdir

    @property
    def device(self) -> str:
        """QEMU's device name: ``ivshmem-doorbell`` or ``ivshmem-plain``."""
        return "ivshmem-doorbell" if self.doorbell else "ivshmem-plain"

    def command_line(self, qtest_socket: str | os.PathLike[str]) -> list[str]:
        """QEMU's command line for a qtest socket at ``qtest_socket``."""
        args = [
            self.qemu,
            "-machine", "q35",
            "-accel", "tcg",
            "-S",
            "-qtest", f"unix:{qtest_socket}",
            # without it qtest logs every command to stderr, drowning QEMU's own messages
            "-qtest-log", "/dev/null",
            "-display", "none",
            "-nodefaults",
            "-m", "128M",
        ]  # fmt: skip
        addr = f"addr={self.slot:#x}.0"
        if self.doorbell:
            assert self.server_socket is not None
            args += doorbell_device_args(self.server_socket, self.vectors, self.slot)
        else:
            args += [
                "-object",
                f"memory-backend-file,id=ivmem,mem-path={self.shm_path},"
                f"size={self.shm_size},share=on",
                "-device", f"ivshmem-plain,memdev=ivmem,{addr}",
            ]  # fmt: skip
        return args + list(self.extra_args)

    def start(self) -> QemuIvshmem:
        """Start QEMU and wait until it answers (its device finished the server handshake)."""
        if self._proc is not None:
            raise QtestError("QEMU is already running")
        if self.shm_path is not None and not self.shm_path.exists():
            with open(self.shm_path, "wb") as f:
                f.truncate(self.shm_size)
        qsock_path = self.workdir / "qtest.sock"
        if len(os.fsencode(qsock_path)) > 107:
            raise QtestError(f"qtest socket path too long for AF_UNIX: {qsock_path}")
        with contextlib.suppress(FileNotFoundError):
            qsock_path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(os.fspath(qsock_path))
            listener.listen(1)
            with open(self._stderr_path, "wb") as err:
                self._proc = subprocess.Popen(
                    self.command_line(qsock_path),
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    start_new_session=True,  # a ^C to the tests does not reach QEMU first
                )
            self.pid = self._proc.pid
            self._sock = self._accept(listener)
        except BaseException:
            listener.close()
            self.close()
            raise
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            qsock_path.unlink()
        try:
            # The first reply comes only once the main loop runs, i.e. after device
            # realize, which for ivshmem-doorbell includes the server handshake.
            self.command("endianness")
        except QtestError as error:
            self.close()
            kind = type(error)
            raise kind(f"{self.device} did not come up: {error}") from None
        except BaseException:
            self.close()
            raise
        return self

    def _accept(self, listener: socket.socket) -> socket.socket:
        deadline = time.monotonic() + self.timeout
        while True:
            self._check_alive("while starting")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QtestTimeout(self._with_stderr("QEMU did not connect to the qtest socket"))
            ready, _, _ = select.select([listener], [], [], min(remaining, 0.05))
            if ready:
                conn, _ = listener.accept()
                conn.setblocking(False)
                return conn

    def close(self) -> None:
        """Kill QEMU by PID, reap it, close the socket and remove a temporary workdir."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def kill(self) -> None:
        """Kill QEMU abruptly (a peer crash) and reap it; the object is closed afterwards."""
        self.close()

    @property
    def running(self) -> bool:
        """Whether the QEMU process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def stderr(self) -> str:
        """What QEMU wrote to stderr (and stdout) so far."""
        try:
            return self._stderr_path.read_bytes().decode(errors="replace")
        except (OSError, AssertionError):
            return ""

    def __enter__(self) -> QemuIvshmem:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # last resort: never leave a QEMU behind
        with contextlib.suppress(Exception):
            self.close()

    # -- qtest protocol --------------------------------------------------------------------

    def _with_stderr(self, message: str) -> str:
        err = self.stderr().strip()
        if len(err) > _STDERR_TAIL:
            err = "...\n" + err[-_STDERR_TAIL:]
        status = ""
        if self._proc is not None and self._proc.poll() is not None:
            status = f" (QEMU exited with status {self._proc.returncode})"
        return f"{message}{status}" + (f"\nQEMU stderr:\n{err}" if err else "")

    def _lost(self, line: str, error: OSError | None) -> QtestError:
        # QEMU dropping the socket means it is exiting: give it a moment so that
        # its exit status and last words make it into the error.
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=2)
        reason = "closed the qtest socket" if error is None else f"lost the qtest socket ({error})"
        return QtestError(self._with_stderr(f"QEMU {reason} on {line!r}"))

    def _check_alive(self, doing: str) -> None:
        if self._proc is None:
            raise QtestError("QEMU is not running")
        if self._proc.poll() is not None:
            raise QtestError(self._with_stderr(f"QEMU died {doing}"))

    def command(self, line: str, timeout: float | None = None) -> list[str]:
        """Send one qtest command; return the words after ``OK`` of its reply."""
        if self._sock is None:
            raise QtestError("QEMU is not running")
        data = line.encode() + b"\n"
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while data:
            self._check_alive(f"on {line!r}")
            try:
                sent = self._sock.send(data)
                data = data[sent:]
                continue
            except BlockingIOError:
                pass
            except OSError as error:
                raise self._lost(line, error) from None
            if time.monotonic() > deadline:
                raise QtestTimeout(self._with_stderr(f"QEMU did not accept {line!r}"))
            select.select([], [self._sock], [], 0.05)
        while True:
            reply = self._next_line(line, deadline, limit)
            if reply.startswith("IRQ "):  # asynchronous, only with irq_intercept
                continue
            words = reply.split()
            if words and words[0] == "OK":
                return words[1:]
            raise QtestError(self._with_stderr(f"qtest {line!r} failed: {reply!r}"))

    def _next_line(self, line: str, deadline: float, limit: float) -> str:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            self._check_alive(f"waiting for the reply to {line!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QtestTimeout(
                    self._with_stderr(f"no qtest reply to {line!r} within {limit:g} s")
                )
            ready, _, _ = select.select([self._sock], [], [], min(remaining, 0.05))
            if not ready:
                continue
            try:
                chunk = self._sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as error:
                raise self._lost(line, error) from None
            if not chunk:
                raise self._lost(line, None)
            self._buffer += chunk
        text, _, self._buffer = self._buffer.partition(b"\n")
        return text.decode(errors="replace").strip()

    # -- ports and memory ------------------------------------------------------------------

    def _in(self, width: str, port: int) -> int:
        return int(self.command(f"in{width} {port:#x}")[0], 16)

    def _out(self, width: str, port: int, value: int) -> None:
        self.command(f"out{width} {port:#x} {value:#x}")

    def inb(self, port: int) -> int:
        """Read a byte from an I/O port."""
        return self._in("b", port)

    def inw(self, port: int) -> int:
        """Read a 16-bit word from an I/O port."""
        return self._in("w", port)

    def inl(self, port: int) -> int:
        """Read a 32-bit word from an I/O port."""
        return self._in("l", port)

    def outb(self, port: int, value: int) -> None:
        """Write a byte to an I/O port."""
        self._out("b", port, value & 0xFF)

    def outw(self, port: int, value: int) -> None:
        """Write a 16-bit word to an I/O port."""
        self._out("w", port, value & 0xFFFF)

    def outl(self, port: int, value: int) -> None:
        """Write a 32-bit word to an I/O port."""
        self._out("l", port, value & 0xFFFF_FFFF)

    def _readn(self, width: str, addr: int) -> int:
        return int(self.command(f"read{width} {addr:#x}")[0], 16)

    def _writen(self, width: str, addr: int, value: int) -> None:
        self.command(f"write{width} {addr:#x} {value:#x}")

    def readb(self, addr: int) -> int:
        """Read a byte of guest physical memory (RAM or MMIO)."""
        return self._readn("b", addr)

    def readw(self, addr: int) -> int:
        """Read a 16-bit word of guest physical memory."""
        return self._readn("w", addr)

    def readl(self, addr: int) -> int:
        """Read a 32-bit word of guest physical memory."""
        return self._readn("l", addr)

    def readq(self, addr: int) -> int:
        """Read a 64-bit word of guest physical memory."""
        return self._readn("q", addr)

    def writeb(self, addr: int, value: int) -> None:
        """Write a byte of guest physical memory."""
        self._writen("b", addr, value & 0xFF)

    def writew(self, addr: int, value: int) -> None:
        """Write a 16-bit word of guest physical memory."""
        self._writen("w", addr, value & 0xFFFF)

    def writel(self, addr: int, value: int) -> None:
        """Write a 32-bit word of guest physical memory."""
        self._writen("l", addr, value & 0xFFFF_FFFF)

    def writeq(self, addr: int, value: int) -> None:
        """Write a 64-bit word of guest physical memory."""
        self._writen("q", addr, value & 0xFFFF_FFFF_FFFF_FFFF)

    def read(self, addr: int, size: int) -> bytes:
        """Read ``size`` bytes of guest physical memory."""
        if size <= 0:
            return b""
        return base64.b64decode(self.command(f"b64read {addr:#x} {size:#x}")[0])

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` to guest physical memory."""
        if data:
            encoded = base64.b64encode(data).decode()
            self.command(f"b64write {addr:#x} {len(data):#x} {encoded}")

    def mem_read(self, addr: int, size: int) -> int:
        """Read an integer of ``size`` (1, 2, 4, 8) bytes at ``addr``."""
        return self._readn(_WIDTH[size], addr)

    def mem_write(self, addr: int, value: int, size: int) -> None:
        """Write an integer of ``size`` (1, 2, 4, 8) bytes at ``addr``."""
        self._writen(_WIDTH[size], addr, value & ((1 << (8 * size)) - 1))

    # -- PCI configuration space -----------------------------------------------------------

    def _config_address(self, offset: int) -> int:
        if not 0 <= offset < 0x100:
            raise ValueError(f"config offset must be 0..FFh (mechanism #1), not {offset:#x}")
        return 0x8000_0000 | (self.slot << 11) | (offset & 0xFC)

    def config_read(self, offset: int, size: int = 4) -> int:
        """Read ``size`` (1, 2, 4) bytes of the device's config space at ``offset``."""
        _check_access(offset, size, (1, 2, 4))
        self.outl(CONFIG_ADDRESS_PORT, self._config_address(offset))
        return self._in(_PORT_WIDTH[size], CONFIG_DATA_PORT + (offset & 3))

    def config_write(self, offset: int, value: int, size: int = 4) -> None:
        """Write ``size`` (1, 2, 4) bytes of the device's config space at ``offset``."""
        _check_access(offset, size, (1, 2, 4))
        self.outl(CONFIG_ADDRESS_PORT, self._config_address(offset))
        mask = (1 << (8 * size)) - 1
        self._out(_PORT_WIDTH[size], CONFIG_DATA_PORT + (offset & 3), value & mask)

    def config_dump(self, size: int = PCI.HEADER_SIZE) -> list[int]:
        """The first ``size`` bytes of config space as dwords."""
        return [self.config_read(off) for off in range(0, size, 4)]

    def find_capability(self, cap_id: int) -> int | None:
        """Config offset of the first capability with ``cap_id``, or ``None``."""
        if not self.config_read(PCI.STATUS, 2) & 0x10:
            return None
        pointer = self.config_read(PCI.CAPABILITY_LIST, 1) & 0xFC
        for _ in range(48):  # a loop in the list must not hang us
            if pointer == 0:
                return None
            if self.config_read(pointer, 1) == cap_id:
                return pointer
            pointer = self.config_read(pointer + 1, 1) & 0xFC
        return None

    # -- BARs, as firmware does it ---------------------------------------------------------

    def size_bars(self) -> dict[int, Bar]:
        """Size every memory BAR (write all-ones, read back, restore) with decode off."""
        command = self.config_read(PCI.COMMAND, 2)
        self.config_write(PCI.COMMAND, command & ~(PCI.COMMAND_MEMORY | PCI.COMMAND_IO), 2)
        bars: dict[int, Bar] = {}
        index = 0
        while index < 6:
            reg = PCI.BAR0 + 4 * index
            original = self.config_read(reg)
            self.config_write(reg, 0xFFFF_FFFF)
            low = self.config_read(reg)
            self.config_write(reg, original)
            if low == 0 or original & PCI.BAR_IO:
                index += 1
                continue
            is_64 = original & PCI.BAR_TYPE_MASK == PCI.BAR_TYPE_64
            mask = low & ~0xF
            if is_64:
                original_high = self.config_read(reg + 4)
                self.config_write(reg + 4, 0xFFFF_FFFF)
                high = self.config_read(reg + 4)
                self.config_write(reg + 4, original_high)
                mask |= high << 32
                size = ((~mask) & 0xFFFF_FFFF_FFFF_FFFF) + 1
            else:
                size = ((~mask) & 0xFFFF_FFFF) + 1
            bars[index] = Bar(index, size, is_64, bool(original & PCI.BAR_PREFETCH))
            index += 2 if is_64 else 1
        self.config_write(PCI.COMMAND, command, 2)
        return bars

    def assign_bars(self) -> dict[int, Bar]:
        """Size and place every memory BAR, then enable memory decode and bus mastering."""
        bars = self.size_bars()
        next32, next64 = _MMIO32_BASE, _MMIO64_BASE
        for bar in sorted(bars.values(), key=lambda b: -b.size):
            if bar.is_64:
                bar.address = _align(next64, bar.size)
                next64 = bar.address + bar.size
            else:
                bar.address = _align(next32, bar.size)
                next32 = bar.address + bar.size
                if next32 > _MMIO32_LIMIT:
                    raise QtestError(f"BAR{bar.index} of {bar.size:#x} bytes does not fit below 4G")
            reg = PCI.BAR0 + 4 * bar.index
            self.config_write(reg, bar.address & 0xFFFF_FFFF)
            if bar.is_64:
                self.config_write(reg + 4, bar.address >> 32)
        command = self.config_read(PCI.COMMAND, 2)
        self.config_write(PCI.COMMAND, command | PCI.COMMAND_MEMORY | PCI.COMMAND_MASTER, 2)
        self.bars = bars
        return bars

    def bar_address(self, index: int) -> int:
        """Guest physical address of BAR ``index`` (after :meth:`assign_bars`)."""
        bar = self.bars.get(index)
        if bar is None or bar.address is None:
            raise QtestError(f"BAR{index} is not assigned: call assign_bars() first")
        return bar.address

    def bar_read(self, index: int, offset: int, size: int = 4) -> int:
        """Read ``size`` bytes at ``offset`` in BAR ``index``."""
        return self.mem_read(self.bar_address(index) + offset, size)

    def bar_write(self, index: int, offset: int, value: int, size: int = 4) -> None:
        """Write ``size`` bytes at ``offset`` in BAR ``index``."""
        self.mem_write(self.bar_address(index) + offset, value, size)

    # -- ivshmem registers and shared memory -----------------------------------------------

    def reg_read(self, name: str) -> int:
        """Read the BAR0 register ``name`` (see ``regmap.PCI_REV1_REGS``)."""
        return self.bar_read(0, PCI_REV1_REGS[name].offset)

    def reg_write(self, name: str, value: int) -> None:
        """Write the BAR0 register ``name``."""
        self.bar_write(0, PCI_REV1_REGS[name].offset, value)

    @property
    def ivposition(self) -> int:
        """IVPosition: the device's peer ID (FFFFFFFFh before the server assigned one)."""
        return self.reg_read("IVPosition")

    def ring(self, peer: int, vector: int) -> None:
        """Ring ``peer`` on ``vector`` through the Doorbell register."""
        self.reg_write("Doorbell", DOORBELL.pack(peer, vector))

    @property
    def shm_bar_size(self) -> int:
        """Size of BAR2, the shared memory."""
        bar = self.bars.get(2)
        if bar is None:
            raise QtestError("BAR2 is not assigned: call assign_bars() first")
        return bar.size

    def shm_read(self, offset: int, size: int) -> bytes:
        """Read ``size`` bytes of shared memory through BAR2."""
        self._check_shm(offset, size)
        return self.read(self.bar_address(2) + offset, size)

    def shm_write(self, offset: int, data: bytes) -> None:
        """Write ``data`` to shared memory through BAR2."""
        self._check_shm(offset, len(data))
        self.write(self.bar_address(2) + offset, data)

    def _check_shm(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > self.shm_bar_size:
            raise ValueError(
                f"shared-memory access {offset:#x}+{size:#x} outside BAR2 ({self.shm_bar_size:#x})"
            )

    # -- MSI-X -----------------------------------------------------------------------------

    @property
    def msix_cap(self) -> int:
        """Config offset of the MSI-X capability."""
        cap = self.find_capability(PCI.CAP_ID_MSIX)
        if cap is None:
            raise QtestError(f"{self.device} has no MSI-X capability")
        return cap

    def _msix_table(self) -> tuple[int, int]:
        cap = self.msix_cap
        table = self.config_read(cap + PCI.MSIX_TABLE)
        return table & PCI.MSIX_BIR_MASK, table & ~PCI.MSIX_BIR_MASK

    def _msix_pba(self) -> tuple[int, int]:
        pba = self.config_read(self.msix_cap + PCI.MSIX_PBA)
        return pba & PCI.MSIX_BIR_MASK, pba & ~PCI.MSIX_BIR_MASK

    @staticmethod
    def msix_address(vector: int) -> int:
        """Guest RAM address vector ``vector``'s message is written to."""
        return MSIX_RAM_BASE + PCI.MSIX_ENTRY_SIZE * vector

    @staticmethod
    def msix_data(vector: int) -> int:
        """Message data of vector ``vector``."""
        return MSIX_DATA_BASE | vector

    def msix_program(self, vector: int, *, masked: bool = False) -> None:
        """Point table entry ``vector`` at its RAM slot with its data; unmask unless ``masked``."""
        bir, base = self._msix_table()
        entry = base + PCI.MSIX_ENTRY_SIZE * vector
        self.writel(self.msix_address(vector), 0)
        address = self.msix_address(vector)
        self.bar_write(bir, entry + PCI.MSIX_ENTRY_LOWER_ADDR, address & 0xFFFF_FFFF)
        self.bar_write(bir, entry + PCI.MSIX_ENTRY_UPPER_ADDR, address >> 32)
        self.bar_write(bir, entry + PCI.MSIX_ENTRY_DATA, self.msix_data(vector))
        self.msix_mask(vector, masked)

    def msix_mask(self, vector: int, masked: bool) -> None:
        """Set or clear the per-vector mask bit of table entry ``vector``."""
        bir, base = self._msix_table()
        ctrl = base + PCI.MSIX_ENTRY_SIZE * vector + PCI.MSIX_ENTRY_VECTOR_CTRL
        self.bar_write(bir, ctrl, PCI.MSIX_ENTRY_CTRL_MASKBIT if masked else 0)

    def msix_control(self, *, enable: bool, function_mask: bool = False) -> None:
        """Write MSI-X Message Control: enable and function-mask bits."""
        cap = self.msix_cap
        flags = self.config_read(cap + PCI.MSIX_FLAGS, 2)
        flags &= ~(PCI.MSIX_FLAGS_ENABLE | PCI.MSIX_FLAGS_MASKALL)
        if enable:
            flags |= PCI.MSIX_FLAGS_ENABLE
        if function_mask:
            flags |= PCI.MSIX_FLAGS_MASKALL
        self.config_write(cap + PCI.MSIX_FLAGS, flags, 2)

    def msix_pending(self, vector: int) -> bool:
        """Whether PBA bit ``vector`` is set."""
        bir, base = self._msix_pba()
        word = self.bar_read(bir, base + 4 * (vector // 32))
        return bool(word >> (vector % 32) & 1)

    def setup_msix(self, vectors: int | None = None) -> None:
        """Program and unmask vectors ``0..vectors-1`` (default: all) and enable MSI-X."""
        count = self.vectors if vectors is None else vectors
        for vector in range(count):
            self.msix_program(vector)
            self._msix_ready.add(vector)
        self.msix_control(enable=True)

    def setup(self) -> QemuIvshmem:
        """What firmware and a driver do: assign BARs, bus master, MSI-X (doorbell only)."""
        self.assign_bars()
        if self.doorbell:
            self.setup_msix()
        return self

    def msix_fired(self, vector: int, *, clear: bool = True) -> bool:
        """Whether vector ``vector``'s message arrived (cleared for the next one when ``clear``)."""
        address = self.msix_address(vector)
        if self.readl(address) != self.msix_data(vector):
            return False
        if clear:
            self.writel(address, 0)
        return True

    def msix_clear(self, vector: int | None = None) -> None:
        """Forget earlier messages of ``vector`` (default: all vectors)."""
        for v in range(self.vectors) if vector is None else (vector,):
            self.writel(self.msix_address(v), 0)

    def wait_msix(self, vector: int, timeout: float = 5.0, *, clear: bool = True) -> bool:
        """Poll until vector ``vector``'s message arrives; ``False`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.msix_fired(vector, clear=clear):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)

    def fired_vectors(self, *, clear: bool = True) -> set[int]:
        """Every vector whose message arrived since the last clear."""
        return {v for v in range(self.vectors) if self.msix_fired(v, clear=clear)}


_WIDTH = {1: "b", 2: "w", 4: "l", 8: "q"}
#: how much of QEMU's stderr (its end) an error message carries
_STDERR_TAIL = 4000
_PORT_WIDTH = {1: "b", 2: "w", 4: "l"}


def _check_access(offset: int, size: int, sizes: tuple[int, ...]) -> None:
    if size not in sizes:
        raise ValueError(f"access size must be one of {sizes}, not {size!r}")
    if offset % size:
        raise ValueError(f"offset {offset:#x} is not aligned to the access size {size}")


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)
