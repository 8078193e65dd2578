"""``ivshmem-hdl``: generate Verilog for the ivshmem devices, and board bitstreams.

    ivshmem-hdl verilog flat [--vectors N] [--shm-size SIZE] [--bus axil|wishbone] -o FILE
    ivshmem-hdl verilog pci [--vectors N] [--shm-size SIZE] [--interrupts msix|intx] [--plain]
        -o FILE
    ivshmem-hdl verilog domain --port ID:VECTORS [--port ...] [--shm-size SIZE]
        [--ram bram|spram|external] [--event-depth N] -o FILE
    ivshmem-hdl verilog pci --revision 2 [--layout final|rfc] [--interrupts msix|intx]
        [--vectors N] [--max-peers N] [--output-section-size SIZE] [--shm-size SIZE]
        [--state-table-size SIZE] [--protocol P] [--shm-address ADDR] -o FILE
    ivshmem-hdl bitstream {icebreaker,ulx3s} [-o DIR]

``bitstream`` builds the two-tile SoC of :mod:`ivhw.boards.bitstream` for a board
and writes the bitstream and ``report.json`` into DIR (default
``build/bitstream/BOARD``); it exits 1 if a tool fails or timing is not met.

Each device registers a builder in ``DEVICES`` (name -> how to add its options
and how to build it from them), so a new device is one entry plus its options.
Bad arguments print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..sw.regmap import REV2_LAYOUTS
from ..sw.size import size_type

__all__ = ["DEVICES", "Device", "main", "verilog_name"]

#: ``--shm-size``: the project's one size grammar; the device checks its own minimum.
_SHM_SIZE = size_type(minimum=1, power_of_two=True, what="shm size")
#: revision 2 section sizes (the device checks that they are page multiples and fit)
_SECTION = size_type(what="section size")


#: Verilog-2005 reserved words (IEEE 1364-2005, annex B): not usable as a module name.
# fmt: off
_VERILOG_KEYWORDS = frozenset((
    "always", "and", "assign", "automatic", "begin", "buf", "bufif0", "bufif1", "case", "casex",
    "casez", "cell", "cmos", "config", "deassign", "default", "defparam", "design", "disable",
    "edge", "else", "end", "endcase", "endconfig", "endfunction", "endgenerate", "endmodule",
    "endprimitive", "endspecify", "endtable", "endtask", "event", "for", "force", "forever",
    "fork", "function", "generate", "genvar", "highz0", "highz1", "if", "ifnone", "incdir",
    "include", "initial", "inout", "input", "instance", "integer", "join", "large", "liblist",
    "library", "localparam", "macromodule", "medium", "module", "nand", "negedge", "nmos",
    "nor", "noshowcancelled", "not", "notif0", "notif1", "or", "output", "parameter", "pmos",
    "posedge", "primitive", "pull0", "pull1", "pulldown", "pullup", "pulsestyle_ondetect",
    "pulsestyle_onevent", "rcmos", "real", "realtime", "reg", "release", "repeat", "rnmos",
    "rpmos", "rtran", "rtranif0", "rtranif1", "scalared", "showcancelled", "signed", "small",
    "specify", "specparam", "strong0", "strong1", "supply0", "supply1", "table", "task", "time",
    "tran", "tranif0", "tranif1", "tri", "tri0", "tri1", "triand", "trior", "trireg",
    "unsigned", "use", "uwire", "vectored", "wait", "wand", "weak0", "weak1", "while", "wire",
    "wor", "xnor", "xor",
))
# fmt: on
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def verilog_name(text: str) -> str:
    """A Verilog module name (a simple identifier, not a keyword), for ``--name``."""
    if _IDENTIFIER.fullmatch(text) is None or len(text) > 1024:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise argparse.ArgumentTypeError(
            f"not a Verilog module name: {shown!r} (letters, digits, _ and $, "
            "not starting with a digit or $)"
        )
    if text in _VERILOG_KEYWORDS:
        raise argparse.ArgumentTypeError(f"{text!r} is a Verilog keyword")
    return text


def _integer(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None


@dataclass(frozen=True)
class Device:
    """How the CLI adds a device's options and builds it from them."""

    help: str
    add_options: Callable[[argparse.ArgumentParser], None]
    build: Callable[[argparse.Namespace], object]
    #: whether the device sits behind a ``--bus`` front-end (the PCI endpoint has its own
    #: transaction interface instead)
    bus: bool = True


def _flat_options(parser: argparse.ArgumentParser, default_vectors: int | None = None) -> None:
    from ..sw.regmap import MAX_VECTORS

    vectors = MAX_VECTORS if default_vectors is None else default_vectors
    parser.add_argument(
        "--vectors",
        type=_integer,
        default=vectors,
        help=f"own vectors, 1..{MAX_VECTORS} (default {vectors})",
    )
    parser.add_argument(
        "--shm-size", type=_SHM_SIZE, default=4 << 20,
        help="shared memory, a power of two: 4096, 0x1000, 64K, 4M (default 4M)",
    )  # fmt: skip


def _flat_build(args: argparse.Namespace) -> object:
    from .flat import IvshmemFlat

    return IvshmemFlat(vectors=args.vectors, shm_size=args.shm_size)


def _pci_options(parser: argparse.ArgumentParser) -> None:
    _flat_options(parser, default_vectors=1)
    parser.add_argument(
        "--interrupts", choices=("msix", "intx"), default=None,
        help="MSI-X (default, QEMU 7.2 ivshmem-doorbell) or legacy INTx",
    )  # fmt: skip
    parser.add_argument(
        "--plain", action="store_true", help="ivshmem-plain: shared memory only, no interrupts"
    )
    parser.add_argument(
        "--revision", type=int, choices=(1, 2), default=1,
        help="1: QEMU's ivshmem (default); 2: ivshmem revision 2 (Jailhouse, the 2019 RFC)",
    )  # fmt: skip
    rev2 = parser.add_argument_group("revision 2")
    rev2.add_argument("--layout", choices=REV2_LAYOUTS, default=None,
                      help="final (Jailhouse, drivers; default) or rfc")  # fmt: skip
    rev2.add_argument("--max-peers", type=_integer, default=None, help="Maximum Peers (default 2)")
    rev2.add_argument("--output-section-size", type=_SECTION, default=None,
                      help="size of each output section, a page multiple (default 0)")  # fmt: skip
    rev2.add_argument("--state-table-size", type=_SECTION, default=None,
                      help="State Table size, a page multiple (default 4K)")  # fmt: skip
    rev2.add_argument("--protocol", type=_integer, default=None,
                      help="16-bit protocol in the class code (default 0)")  # fmt: skip
    rev2.add_argument("--shm-address", type=_integer, default=None,
                      help="no BAR2: where the shared memory is (vendor capability)")  # fmt: skip


#: revision 2 options and their defaults; given with revision 1 they are an error
_REV2_OPTIONS = {
    "layout": "final",
    "max_peers": 2,
    "output_section_size": 0,
    "state_table_size": 4096,
    "protocol": 0,
    "shm_address": None,
}


def _pci_build(args: argparse.Namespace) -> object:
    from .pci import IvshmemPci

    given = [name for name in _REV2_OPTIONS if getattr(args, name) is not None]
    if args.revision == 1:
        if given:
            option = "--" + given[0].replace("_", "-")
            raise ValueError(f"{option} is a revision 2 option: add --revision 2")
        if args.plain:
            return IvshmemPci(doorbell=False, shm_size=args.shm_size, interrupts=args.interrupts)
        return IvshmemPci(vectors=args.vectors, shm_size=args.shm_size, interrupts=args.interrupts)
    if args.plain:
        raise ValueError("revision 2 has no plain variant: leave out --plain")
    options = {name: getattr(args, name) for name in _REV2_OPTIONS}
    options = {
        k: default if options[k] is None else options[k] for k, default in _REV2_OPTIONS.items()
    }
    return IvshmemPci(
        revision=2,
        vectors=args.vectors,
        shm_size=args.shm_size,
        interrupts=args.interrupts or "msix",
        bar2=options["shm_address"] is None,
        **options,
    )


def _port(text: str) -> tuple[int, int]:
    peer, sep, vectors = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(peer, 0), int(vectors, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a port is ID:VECTORS (e.g. 1:4 or 0x10:1), not {text!r}"
        ) from None


def _domain_options(parser: argparse.ArgumentParser) -> None:
    from .domain import RAM_KINDS

    parser.add_argument(
        "--port", dest="ports", type=_port, action="append", required=True, metavar="ID:VECTORS",
        help="a port's peer ID and vector count, once per port in port order",
    )  # fmt: skip
    parser.add_argument(
        "--shm-size", type=_SHM_SIZE, default=4096,
        help="shared memory, a power of two: 4096, 64K (default 4096)",
    )  # fmt: skip
    parser.add_argument(
        "--ram", choices=RAM_KINDS, default="bram",
        help="block RAM (default), iCE40UP5K SPRAM, or an external RAM port",
    )  # fmt: skip
    parser.add_argument(
        "--event-depth", type=_integer, default=2, help="events buffered per port (default 2)"
    )


def _domain_build(args: argparse.Namespace) -> object:
    from .domain import IvshmemDomain

    return IvshmemDomain(
        args.ports, shm_size=args.shm_size, ram=args.ram, event_depth=args.event_depth
    )


#: Devices ``ivshmem-hdl verilog`` can generate.
DEVICES: dict[str, Device] = {
    "flat": Device("ivshmem-flat (QEMU hw/misc/ivshmem-flat.c)", _flat_options, _flat_build),
    "pci": Device(
        "ivshmem PCI endpoint: revision 1 (ivshmem-doorbell / ivshmem-plain) or revision 2",
        _pci_options,
        _pci_build,
        bus=False,
    ),
    "domain": Device(
        "on-chip ivshmem domain: peer table, doorbell crossbar, shared RAM",
        _domain_options,
        _domain_build,
        bus=False,
    ),
}


def _front_end(name: str, device: object) -> object:
    if name == "axil":
        from .bus.axil import AXI4LiteFrontEnd

        return AXI4LiteFrontEnd(device)  # type: ignore[arg-type]
    from .bus.wishbone import WishboneFrontEnd

    return WishboneFrontEnd(device)  # type: ignore[arg-type]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ivshmem-hdl", description="Generate Verilog for ivshmem devices.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    verilog = commands.add_parser("verilog", help="write a device as Verilog")
    devices = verilog.add_subparsers(dest="device", required=True, parser_class=_Parser)
    for name, device in DEVICES.items():
        sub = devices.add_parser(name, help=device.help)
        device.add_options(sub)
        if device.bus:
            sub.add_argument(
                "--bus",
                choices=("axil", "wishbone"),
                default="axil",
                help="bus front-end (default axil)",
            )
        default_name = "ivshmem_<device>_<bus>" if device.bus else f"ivshmem_{name}"
        sub.add_argument(
            "--name",
            type=verilog_name,
            default=None,
            help=f"Verilog module name (default {default_name})",
        )
        sub.add_argument("-o", "--output", required=True, type=Path,
                         help="Verilog file to write ('-' for stdout)")  # fmt: skip
    from ..boards.bitstream import BOARDS

    bitstream = commands.add_parser(
        "bitstream", help="synthesize, place and route the two-tile SoC for a board"
    )
    bitstream.add_argument("board", choices=sorted(BOARDS), help="the board")
    bitstream.add_argument(
        "-o", "--output", type=Path, default=None,
        help="build directory (default build/bitstream/BOARD)",
    )  # fmt: skip
    return parser


def _bitstream(args: argparse.Namespace) -> int:
    """``ivshmem-hdl bitstream BOARD``: the bitstream and report.json, a summary line."""
    from ..boards.bitstream import BuildError, build_bitstream

    out = args.output or Path("build") / "bitstream" / args.board
    try:
        report = build_bitstream(args.board, out)
    except BuildError as error:
        print(f"ivshmem-hdl bitstream: error: {error}", file=sys.stderr)
        return 1
    logic = report["logic_cells"]
    print(
        f"bitstream: {out / report['bitstream']}: Fmax {report['fmax_mhz']} MHz "
        f"(board clock {report['target_mhz']:g} MHz, timing "
        f"{'met' if report['timing_met'] else 'NOT met'}), logic {logic['used']}/"
        f"{logic['available']} ({logic['percent']} %), {report['seconds']} s; "
        f"report in {out / 'report.json'}"
    )
    return 0 if report["timing_met"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ivshmem-hdl``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "bitstream":
        return _bitstream(args)
    prog = f"ivshmem-hdl {args.command} {args.device}"
    try:
        device = DEVICES[args.device].build(args)
    except (TypeError, ValueError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    if DEVICES[args.device].bus:
        top = _front_end(args.bus, device)
        name = args.name or f"ivshmem_{args.device}_{args.bus}"
    else:
        top = device
        name = args.name or f"ivshmem_{args.device}"

    from amaranth.back import verilog

    text = verilog.convert(top, name=name)  # type: ignore[arg-type]
    if str(args.output) == "-":
        sys.stdout.write(text)
    else:
        try:
            args.output.write_text(text)
        except OSError as error:
            print(f"{prog}: error: cannot write {args.output}: {error.strerror}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
