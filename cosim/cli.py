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
it). Either joins the server at ``--socket`` and stays a peer until the guest
returns, SIGTERM/SIGINT, ``--seconds``, or the server goes away (one-line
message, exit status 3). Bad arguments: one line, status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..sw.regmap import MAX_VECTORS
from ..sw.size import size_type
from . import build as builds

__all__ = ["main"]

#: ``--shm-size``: the project's one size grammar; the hardware needs a power of two.
_SHM_SIZE = size_type(minimum=1, power_of_two=True, what="shm size")


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
    parser.add_argument("--vectors", type=_vectors, default=1, help="own vectors (default 1)")
    parser.add_argument(
        "--shm-size", type=_SHM_SIZE, default=4 << 20,
        help="the server's shared-memory size: 4096, 0x1000, 64K, 4M (default 4M)",
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
    parser.add_argument("--seconds", type=float, help="leave after this many seconds")
    parser.add_argument(
        "--poll-cycles", type=int, default=8,
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
    firmware = None
    if args.device == "soc":
        # the tile's CPU runs the firmware: no Python guest (either engine decodes the
        # tile's console)
        if args.guest not in (None, "none"):
            print(f"{prog}: error: --device soc runs its --firmware, not a Python --guest",
                  file=sys.stderr)  # fmt: skip
            return 2
        args.guest = "none"
        try:
            root = (args.build_dir or builds.build_root()) / "firmware"
            firmware = builds.soc_image(args.firmware, args.shm_size, args.guest_arg, root)
        except ValueError as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return 2
    elif args.guest is None:
        args.guest = "echo"
    try:
        from .session import load_guest

        load_guest(args.guest)
    except ValueError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    engine = args.engine or builds.default_engine(args.sim)
    try:
        built = builds.build(
            args.device,
            args.sim,
            vectors=args.vectors,
            shm_size=args.shm_size,
            waves=args.waves is not None,
            root=args.build_dir,
            engine=engine,
            firmware=firmware,
        )
    except (TypeError, ValueError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a compiler failure: point at its log
        print(f"{prog}: error: building the {args.device} device failed: {error}", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="ivhw-cosim-") as tmp:
        status_path = str(args.status) if args.status else os.path.join(tmp, "status.json")
        env = {
            "IVHW_COSIM_SOCKET": os.path.abspath(args.socket),
            "IVHW_COSIM_DEVICE": args.device,
            "IVHW_COSIM_VECTORS": str(args.vectors),
            "IVHW_COSIM_SHM_SIZE": str(args.shm_size),
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
        if engine == "native":
            os.environ["IVHW_COSIM_LIBRARY"] = str(built.library)
            os.environ["IVHW_COSIM_WAVES"] = "" if waves is None else str(waves)
            # the simulator is this child: no Python in it runs per cycle
            subprocess.run([sys.executable, "-m", "ivhw.cosim.native"], stdin=subprocess.DEVNULL)
        else:
            _run_cocotb(args, built, tmp, waves, test_args, plusargs)
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
