"""``ivshmem-cosim``: run a simulated ivshmem device as a peer of a real ivshmem domain.

    ivshmem-cosim --socket PATH --device {flat,pci,soc} --sim {icarus,verilator}
                  [--engine {native,cocotb}] [--vectors N] [--shm-size SIZE]
                  [--guest NAME|module:function] [--firmware echo|ping|PATH.elf]
                  [--guest-arg KEY=VALUE ...] [--waves FILE] [--seconds S]

``--device soc`` is a RISC-V tile (:mod:`ivhw.boards.soc`) whose C firmware drives
its ivshmem-flat device: no Python guest runs, the firmware does (built-in ``echo``
or ``ping``, built with the ``--guest-arg`` options of
:class:`ivhw.boards.firmware.FirmwareConfig`, or an ELF file); on the native engine
no Python runs at all while it simulates. Its console appears in the transcript as
``[soc]`` lines.

The device is converted to Verilog and compiled once per parameter set (cached
under ``build/cosim``, see :mod:`ivhw.cosim.build`), then run by one of two
engines in a child process: ``native`` (Verilator's model with the clock and the
transport in C++, :mod:`ivhw.cosim.native`; the default on Verilator) or
``cocotb`` (cocotb with :mod:`ivhw.cosim.bridge` as its test; Icarus always uses
it). The device gets the server's shared-memory size (``--shm-size``, when
given, is only checked against it): the CLI connects, reads the size from the
handshake without consuming it, builds for that size (cached) and hands the
connection to the engine, which stays a peer until the guest returns,
SIGTERM/SIGINT, ``--seconds``, or the server goes away (one-line message, exit
status 3). Bad arguments: one line, status 2. A server that cannot be joined
(refused, not an ivshmem server, another size than ``--shm-size``): one line,
status 4.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..sw.regmap import MAX_VECTORS, REV2_LAYOUTS
from ..sw.size import size_type
from . import build as builds

if TYPE_CHECKING:
    from ..sw.peer import Handshake

__all__ = ["main"]

#: ``--shm-size``: the project's one size grammar; the hardware needs a power of two.
_SHM_SIZE = size_type(minimum=1, power_of_two=True, what="shm size")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _cycles(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _vectors(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
    if not 1 <= value <= MAX_VECTORS:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_VECTORS}, not {value}")
    return value


def _guest_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ivshmem-cosim",
        description="Run a simulated ivshmem device as a peer of an ivshmem server.",
    )
    parser.add_argument("--socket", required=True, help="the ivshmem server's UNIX socket")
    parser.add_argument("--device", choices=sorted(builds.DEVICES), default="flat")
    parser.add_argument("--sim", choices=builds.SIMULATORS, default="verilator")
    parser.add_argument(
        "--engine", choices=builds.ENGINES,
        help="native (clock and transport in C++, Verilator only; the default there) or "
        "cocotb (Python per cycle; the default on Icarus)",
    )  # fmt: skip
    parser.add_argument(
        "--vectors", type=_vectors, default=None,
        help="own vectors (default 1; revision 2: the server's, or at most that many)",
    )  # fmt: skip
    parser.add_argument(
        "--revision", type=int, choices=(1, 2), default=1,
        help="--device pci: revision 1 (ivshmem-doorbell, an ivshmem-server; the default) or "
        "2 (an ivshmem2-server)",
    )  # fmt: skip
    parser.add_argument(
        "--layout", choices=REV2_LAYOUTS, default=None,
        help="--revision 2: register layout (final: Jailhouse/Zephyr/Linux, the default; "
        "rfc: the 2019 QEMU RFC)",
    )  # fmt: skip
    parser.add_argument(
        "--interrupts", choices=("msix", "intx"), default=None,
        help="--revision 2: MSI-X (default) or INTx",
    )  # fmt: skip
    parser.add_argument(
        "--shm-size", type=_SHM_SIZE, default=None,
        help="require this shared-memory size of the server: 4096, 0x1000, 64K, 4M "
        "(default: whatever the server has)",
    )  # fmt: skip
    parser.add_argument(
        "--guest", default=None,
        help="built-in guest (echo, ping), none, or module:function (default echo)",
    )  # fmt: skip
    parser.add_argument(
        "--firmware", default="echo", metavar="echo|ping|PATH.elf",
        help="--device soc: the tile's firmware (default echo; --guest-arg sets its options)",
    )  # fmt: skip
    parser.add_argument(
        "--guest-arg", type=_guest_arg, action="append", default=[], metavar="KEY=VALUE",
        help="an option for the guest (repeatable)",
    )  # fmt: skip
    parser.add_argument("--waves", type=Path, metavar="FILE", help="write a waveform to FILE")
    parser.add_argument("--seconds", type=_seconds, help="leave after this many seconds")
    parser.add_argument(
        "--poll-cycles", type=_cycles, default=8,
        help="while busy, poll the eventfds every N cycles (default 8)",
    )  # fmt: skip
    parser.add_argument("--status", type=Path, help="write the outcome and statistics as JSON")
    parser.add_argument("--build-dir", type=Path, help="build cache (default build/cosim)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show cocotb's log")
    return parser


_stop_fd = -1


def _forward(signum: int, _frame: object) -> None:
    # tell the simulator through its stop FIFO: it leaves the domain cleanly
    if _stop_fd >= 0:
        with contextlib.suppress(OSError):
            os.write(_stop_fd, b"q")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ivshmem-cosim``."""
    args = _parser().parse_args(argv)
    prog = "ivshmem-cosim"
    if not os.path.exists(args.socket):
        print(f"{prog}: error: no ivshmem server socket at {args.socket}", file=sys.stderr)
        return 2
    if args.device == "soc":
        # the tile's CPU runs the firmware: no Python guest (either engine decodes the
        # tile's console)
        if args.guest not in (None, "none"):
            print(f"{prog}: error: --device soc runs its --firmware, not a Python --guest",
                  file=sys.stderr)  # fmt: skip
            return 2
        args.guest = "none"
    problem = _revision_problem(args)
    if problem:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return 2
    if args.guest is None:
        args.guest = "echo" if args.revision == 1 else "echo2"
    try:
        from .session import load_guest

        load_guest(args.guest, args.revision)
    except ValueError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    args.revision2 = None  # revision 2: its parameters, once the server told them
    engine = args.engine or builds.default_engine(args.sim)
    try:
        builds.check_choice(args.device, args.sim, engine)
    except ValueError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    from .session import STATUS_JOIN_FAILED

    # The device is built for the server's shared-memory size, which its handshake
    # tells (peeked, not consumed); the simulator then takes over that very connection,
    # so the device joins once. A first build for a size takes a while: meanwhile the
    # device is not yet a peer, since peers would see it joined and get no answer.
    firmwares: dict[int, bytes | None] = {}

    def firmware(size: int) -> bytes | None:
        """The soc tile's RAM image for ``size`` (it knows the size); ValueError if bad."""
        if size not in firmwares:
            root = (args.build_dir or builds.build_root()) / "firmware"
            firmwares[size] = (
                builds.soc_image(args.firmware, size, args.guest_arg, root)
                if args.device == "soc"
                else None
            )
        return firmwares[size]

    def cached(size: int) -> bool:
        return builds.is_built(
            args.device,
            args.sim,
            vectors=args.vectors or 1,
            shm_size=size,
            waves=args.waves is not None,
            root=args.build_dir,
            engine=engine,
            firmware=firmware(size),
            revision2=args.revision2,
        )

    server: socket.socket | None = None
    try:
        size = args.shm_size
        # revision 2: the device's parameters are the server's (INIT), so look first
        if size is None or args.revision == 2 or cached(size):
            joined = _connect(prog, args, size)
            if joined is None:
                return STATUS_JOIN_FAILED  # like a refused connection, the reason printed
            server, size = joined
            if not cached(size):
                server.close()
                server = None
        built = _build(prog, args, engine, size, firmware(size))
    except ValueError as error:  # the firmware for this size
        print(f"{prog}: error: {error}", file=sys.stderr)
        built = 2
    if isinstance(built, int):
        if server is not None:
            server.close()
        return built
    if server is None:
        joined = _connect(prog, args, size, given=args.shm_size is not None)
        if joined is None:
            return STATUS_JOIN_FAILED
        server = joined[0]
    with contextlib.closing(server):
        return _run(prog, args, engine, built, server)


def _revision_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the revision options (one line), or ``None``."""
    if args.revision == 2:
        if args.device != "pci":
            return f"--revision 2 is a PCI function: use --device pci, not {args.device}"
        args.layout = args.layout or "final"
        args.interrupts = args.interrupts or "msix"
        return None
    for option in ("layout", "interrupts"):
        if getattr(args, option) is not None:
            return f"--{option} is an option of the revision 2 device: add --revision 2"
    return None


def _connect(
    prog: str, args: argparse.Namespace, wanted: int | None, *, given: bool = True
) -> tuple[socket.socket, int] | None:
    """A connection to the server and its shm size, or ``None`` after a one-line error.

    ``wanted``: the size the server must have, from ``--shm-size`` (``given``) or
    the size just built for after an earlier look at the server. Revision 2: the
    device's parameters (``args.revision2``, ``args.vectors``) come from the server's
    INIT the first time, and must be the same on a later look.
    """
    from ..sw.peer import ProtocolError, peek_handshake
    from ..sw.size import format_size

    path = args.socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(10.0)
        sock.connect(path)
        handshake = peek_handshake(sock, timeout=10.0, revision=args.revision)
    except (OSError, TimeoutError, ProtocolError) as error:
        sock.close()
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        print(f"{prog}: error: cannot join the ivshmem server at {path}: {reason}",
              file=sys.stderr)  # fmt: skip
        return None
    size = handshake.shm_size
    problem = None
    if wanted is not None and size != wanted:
        have, want = format_size(size), format_size(wanted)
        if given:
            why = f"not --shm-size {want}; leave --shm-size out to take the server's"
        else:
            why = f"no longer {want} (restarted while the device was built?); run again"
        problem = f"the server at {path} has {have} of shared memory, {why}"
    elif handshake.revision == 2:
        problem = _take_revision2(args, handshake)
    if problem is not None:
        sock.close()
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return None
    return sock, size


def _take_revision2(args: argparse.Namespace, handshake: Handshake) -> str | None:
    """The revision 2 device's parameters from INIT into ``args``; a one-line problem."""
    if handshake.vectors < (args.vectors or 0):
        return (
            f"the server at {args.socket} gives every peer {handshake.vectors} vectors, "
            f"fewer than --vectors {args.vectors}"
        )
    revision2 = builds.Revision2(
        args.layout, args.interrupts, handshake.max_peers, handshake.output_section_size,
        handshake.protocol,
    )  # fmt: skip
    if args.revision2 is not None and revision2 != args.revision2:
        return (
            f"the server at {args.socket} changed its revision 2 parameters while the device "
            "was built (restarted?); run again"
        )
    args.revision2 = revision2
    args.vectors = args.vectors or handshake.vectors
    return None


class _Handoff:
    """Hands the server connection to the simulator over a private UNIX socket, once."""

    def __init__(self, server: socket.socket, directory: str) -> None:
        self.path = os.path.join(directory, "handoff.sock")
        self._server = server
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._serve, name="cosim-handoff", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        from ..sw.protocol import send_message

        try:
            link, _ = self._listener.accept()
        except OSError:
            return  # closed: the simulator never asked
        with link, contextlib.suppress(OSError):
            send_message(link, 0, self._server.fileno())
        # the simulator holds the connection now: when it exits, the server sees it leave
        self._server.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes a pending accept()
        self._thread.join()
        self._listener.close()


def _build(
    prog: str, args: argparse.Namespace, engine: str, shm_size: int, firmware: bytes | None
) -> builds.Build | int:
    """The (cached) build for ``shm_size``, or the exit status after a one-line error."""
    try:
        return builds.build(
            args.device,
            args.sim,
            vectors=args.vectors or 1,
            shm_size=shm_size,
            waves=args.waves is not None,
            root=args.build_dir,
            engine=engine,
            firmware=firmware,
            revision2=args.revision2,
        )
    except (TypeError, ValueError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a compiler failure: point at its log
        print(f"{prog}: error: building the {args.device} device failed: {error}", file=sys.stderr)
        return 1


def _run(
    prog: str, args: argparse.Namespace, engine: str, built: builds.Build, server: socket.socket
) -> int:
    """Run the simulator on ``built``, handing it the ``server`` connection."""
    with tempfile.TemporaryDirectory(prefix="ivhw-cosim-") as tmp:
        status_path = str(args.status) if args.status else os.path.join(tmp, "status.json")
        env = {
            "IVHW_COSIM_SOCKET": os.path.abspath(args.socket),
            "IVHW_COSIM_DEVICE": args.device,
            "IVHW_COSIM_VECTORS": str(built.vectors),
            "IVHW_COSIM_REVISION2": (
                "" if built.revision2 is None else json.dumps(dataclasses.asdict(built.revision2))
            ),
            "IVHW_COSIM_SHM_SIZE": str(built.shm_size),
            "IVHW_COSIM_GUEST": args.guest,
            "IVHW_COSIM_GUEST_ARGS": json.dumps(dict(args.guest_arg)),
            "IVHW_COSIM_STATUS": status_path,
            "IVHW_COSIM_POLL_CYCLES": str(max(1, args.poll_cycles)),
            "IVHW_COSIM_SECONDS": "" if args.seconds is None else str(args.seconds),
            "COCOTB_LOG_LEVEL": "INFO" if args.verbose else "WARNING",
            "GPI_LOG_LEVEL": "INFO" if args.verbose else "ERROR",
            "PYTHONUNBUFFERED": "1",
        }
        # the runner merges os.environ over its extra_env, so the settings go there
        os.environ.update(env)
        # under pytest the runner would judge the results itself; this is a plain run
        os.environ.pop("PYTEST_CURRENT_TEST", None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(status_path)
        waves = args.waves.resolve() if args.waves else None
        test_args: list[str] = []
        plusargs: list[str] = []
        if waves is not None and args.sim == "verilator":
            test_args = ["--trace-file", str(waves)]
        elif waves is not None:
            plusargs = [f"+dumpfile_path={waves}"]
        global _stop_fd
        fifo = os.path.join(tmp, "stop.fifo")
        os.mkfifo(fifo)
        _stop_fd = os.open(fifo, os.O_RDWR)  # held open for the simulator's lifetime
        os.environ["IVHW_COSIM_STOP_FIFO"] = fifo
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _forward)
        handoff = _Handoff(server, tmp)
        os.environ["IVHW_COSIM_HANDOFF"] = handoff.path
        try:
            if engine == "native":
                os.environ["IVHW_COSIM_LIBRARY"] = str(built.library)
                os.environ["IVHW_COSIM_WAVES"] = "" if waves is None else str(waves)
                # the simulator is this child: no Python in it runs per cycle
                subprocess.run(
                    [sys.executable, "-m", "ivhw.cosim.native"], stdin=subprocess.DEVNULL
                )
            else:
                _run_cocotb(args, built, tmp, waves, test_args, plusargs)
        finally:
            handoff.close()
        return _outcome(prog, status_path, waves)


def _run_cocotb(
    args: argparse.Namespace,
    built: builds.Build,
    tmp: str,
    waves: Path | None,
    test_args: list[str],
    plusargs: list[str],
) -> None:
    runner = builds.runner_for(args.sim)
    try:
        runner.test(  # type: ignore[attr-defined]
            test_module="ivhw.cosim.bridge",
            hdl_toplevel=built.toplevel,
            hdl_toplevel_lang="verilog",
            build_dir=built.build_dir,
            test_dir=tmp,
            results_xml=os.path.join(tmp, "results.xml"),
            waves=waves is not None,
            test_args=test_args,
            plusargs=plusargs,
        )
    except (RuntimeError, SystemExit):
        pass  # the status file (or its absence) tells what happened


def _outcome(prog: str, status_path: str, waves: Path | None) -> int:
    try:
        with open(status_path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        print(f"{prog}: error: the simulator exited without a status (crashed?)",
              file=sys.stderr)  # fmt: skip
        return 1
    status = int(record.get("status", 1))
    message = record.get("message", "")
    if status:
        print(f"{prog}: error: {message}", file=sys.stderr)
    else:
        print(f"[bridge] {message}", flush=True)
        if waves is not None:
            print(f"[bridge] waveform written to {waves}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
