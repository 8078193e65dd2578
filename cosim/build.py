"""Build the simulated device once per parameter set, simulator and engine, cached and locked.

A build is keyed by device, simulator (or ``native``), vectors, shared-memory
size, waves and a hash of the gateware sources (and, for the native engine, of
``engine.cpp`` and this module), so a changed ``hdl/`` file rebuilds. The cache
itself is :func:`ivhw.hdl.sim.build_once`, the one the HDL tests and benchmarks
use: locked for parallel runs, built in a scratch directory and renamed into
place, so a crashed build never looks finished.

Verilog comes from ``amaranth.back.verilog.convert`` into the build directory
(never committed); ``cocotb_tools.runner`` compiles it for Icarus or Verilator,
or, for the native engine, Verilator compiles it with ``engine.cpp`` into a
shared library.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..hdl.sim import VERILATOR_ARGS, build_once

__all__ = [
    "DEVICES",
    "ENGINES",
    "NATIVE_LIBRARY",
    "REV2_COUNTERS",
    "SIMULATORS",
    "Build",
    "DeviceKind",
    "Revision2",
    "build",
    "build_root",
    "check_choice",
    "default_engine",
    "device_header",
    "is_built",
    "runner_for",
    "soc_image",
]

#: Simulators the bridge runs on (cocotb runner names).
SIMULATORS = ("icarus", "verilator")

_HDL_DIR = Path(__file__).resolve().parent.parent / "hdl"


@dataclass(frozen=True)
class DeviceKind:
    """How to build one device kind as a simulation top."""

    #: Verilog module name of the top
    toplevel: str
    #: builds the Amaranth top from (vectors, shm_size[, firmware image])
    make: Callable[..., object]
    #: the CPU-side port the bridge drives: ``axil`` (AXI4-Lite), ``pci`` (transaction
    #: port and MSI-X), ``none`` (a CPU inside runs firmware; only the transport is outside)
    bus: str
    #: a device with a CPU inside: clock cycles per bit of its UART transmitter
    #: (``uart_tx``, 8N1, decoded as the console; ``uart_rx`` is held idle), or 0
    uart_cycles_per_bit: int = 0
    #: whether the device has a ``sleeping`` output (its CPU waits for an interrupt):
    #: the bridge may then sleep in epoll while the transport is quiet
    sleeping: bool = False


def _flat_top(vectors: int, shm_size: int) -> object:
    from ..hdl.bus.axil import AXI4LiteFrontEnd
    from ..hdl.flat import IvshmemFlat

    return AXI4LiteFrontEnd(IvshmemFlat(vectors=vectors, shm_size=shm_size))


@dataclass(frozen=True)
class Revision2:
    """The revision 2 PCI endpoint's parameters: the layout and interrupt mode chosen, the
    rest from the server's INIT (``max_peers``, output section size, protocol)."""

    layout: str = "final"
    interrupts: str = "msix"
    max_peers: int = 2
    output_section_size: int = 0
    protocol: int = 0

    @property
    def tag(self) -> str:
        """The part of the build key these parameters make."""
        return (
            f"-r2{self.layout}-{self.interrupts}-n{self.max_peers}-o{self.output_section_size}"
            f"-p{self.protocol:x}"
        )


def _pci_top(vectors: int, shm_size: int, revision2: Revision2 | None = None) -> object:
    from ..hdl.pci import IvshmemPci

    if revision2 is None:
        # the doorbell variant with MSI-X, as QEMU 7.2's ivshmem-doorbell
        return IvshmemPci(vectors=vectors, shm_size=shm_size)
    return IvshmemPci(
        revision=2, layout=revision2.layout, interrupts=revision2.interrupts,  # type: ignore[arg-type]
        vectors=vectors, shm_size=shm_size, max_peers=revision2.max_peers,
        output_section_size=revision2.output_section_size, protocol=revision2.protocol,
    )  # fmt: skip


#: The SoC tile's clock in co-simulation: the bridge's 10 ns clock.
SOC_CLOCK_HZ = 100_000_000
#: Its UART bit rate there: 8 clocks per bit keeps the console cheap to simulate.
SOC_BAUD = SOC_CLOCK_HZ // 8


def _soc_top(vectors: int, shm_size: int, firmware: bytes) -> object:
    from ..boards.soc import Tile

    return Tile(firmware, vectors=vectors, shm_size=shm_size, clock_hz=SOC_CLOCK_HZ,
                baud=SOC_BAUD)  # fmt: skip


def soc_image(
    firmware: str, shm_size: int, options: Iterable[tuple[str, str]], root: Path
) -> bytes:
    """The soc tile's RAM image: built-in ``firmware`` built with ``options`` or an ELF file.

    ``options`` are ``(name, value)`` pairs of :class:`ivhw.boards.firmware.FirmwareConfig`
    fields (``--guest-arg``). ``ValueError`` with one line when anything is wrong.
    """
    import dataclasses

    from ..boards.firmware import BUILTIN, FirmwareConfig, FirmwareError, load_elf
    from ..boards.firmware import build as build_firmware

    fields = {field.name for field in dataclasses.fields(FirmwareConfig)}
    values: dict[str, int] = {}
    for key, value in options:
        if key not in fields:
            raise ValueError(f"no firmware option {key!r}; choose from {', '.join(sorted(fields))}")
        try:
            values[key] = int(value, 0)
        except ValueError:
            raise ValueError(f"firmware option {key} must be an integer, not {value!r}") from None
    try:
        config = FirmwareConfig(shm_size=shm_size, **values)
        if firmware in BUILTIN:
            return build_firmware(firmware, config, root).image
        if not os.path.isfile(firmware):
            raise ValueError(
                f"--firmware must be {', '.join(BUILTIN)} or an ELF file, not {firmware!r}"
            )
        return load_elf(Path(firmware), config.ram_size)
    except FirmwareError as error:
        raise ValueError(str(error)) from None


#: Device kinds ``ivshmem-cosim --device`` accepts.
DEVICES: dict[str, DeviceKind] = {
    "flat": DeviceKind("ivshmem_flat_axil", _flat_top, "axil"),
    "pci": DeviceKind("ivshmem_pci", _pci_top, "pci"),
    # a RISC-V tile (ivhw.boards) running C firmware that drives an ivshmem-flat device
    "soc": DeviceKind(
        "ivshmem_soc_tile",
        _soc_top,
        "none",
        uart_cycles_per_bit=SOC_CLOCK_HZ // SOC_BAUD,
        sleeping=True,
    ),
}


@dataclass(frozen=True)
class Build:
    """A finished build: where it is and what to run."""

    device: str
    sim: str
    vectors: int
    shm_size: int
    waves: bool
    build_dir: Path
    toplevel: str
    verilog: Path
    #: ``cocotb`` (cocotb's runner runs it) or ``native`` (a shared library of the engine)
    engine: str = "cocotb"
    #: the revision 2 PCI endpoint's parameters (``None``: revision 1 or another device)
    revision2: Revision2 | None = None

    @property
    def library(self) -> Path:
        """The native engine's shared library (``engine="native"`` builds)."""
        return self.build_dir / NATIVE_LIBRARY


#: Engines: ``cocotb`` (Icarus or Verilator under cocotb, Python per cycle) and
#: ``native`` (Verilator only: the clock and the transport in C++, ivhw.cosim.native).
ENGINES = ("cocotb", "native")
#: File name of the native engine's shared library in its build directory.
NATIVE_LIBRARY = "libivhw_engine.so"
_ENGINE_SOURCE = Path(__file__).resolve().parent / "engine.cpp"


def default_engine(sim: str) -> str:
    """The engine ``ivshmem-cosim`` uses on ``sim`` unless told: native for Verilator."""
    return "native" if sim == "verilator" else "cocotb"


def build_root() -> Path:
    """Where builds live: ``$IVHW_COSIM_BUILD`` or ``build/cosim`` in the source tree."""
    env = os.environ.get("IVHW_COSIM_BUILD")
    if env:
        return Path(env)
    return _HDL_DIR.parent / "build" / "cosim"


def _sources_hash(engine: str) -> str:
    digest = hashlib.sha256()
    root = _HDL_DIR.parent
    for path in sorted([*_HDL_DIR.rglob("*.py"), *(root / "boards").glob("*.py")]):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    # definitions the gateware is built from
    for shared in ("regmap.py", "pcicfg.py", "sections.py", "memmap.py"):
        digest.update((_HDL_DIR.parent / "sw" / shared).read_bytes())
    if engine == "native":
        digest.update(_ENGINE_SOURCE.read_bytes())
        digest.update(Path(__file__).read_bytes())  # the generated header and the flags
    return digest.hexdigest()[:12]


def runner_for(sim: str) -> object:
    """The cocotb runner of ``sim`` (Verilator found next to this Python if not on PATH)."""
    from cocotb_tools.runner import get_runner

    if sim == "verilator" and shutil.which("verilator") is None:
        bindir = str(Path(sys.executable).parent)
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    return get_runner(sim)


#: The revision 2 endpoint's counter ports that the status file reports (``stats["device"]``).
REV2_COUNTERS = (
    "doorbell_bad_peer", "doorbell_bad_vector", "bad_access", "events_dropped",
    "protected_writes",
)  # fmt: skip


def device_header(
    bus: str,
    uart_cycles_per_bit: int = 0,
    sleeping: bool = False,
    intx: bool = False,
    counters: tuple[str, ...] = (),
) -> str:
    """``ivhw_device.h`` of the native engine: the device's bus and every field position.

    The positions come from the one definition of each word: the doorbell register
    (``ivhw.sw.regmap.DOORBELL``) and the PCI request, completion and MSI-X layouts
    (``ivhw.hdl.pci.tlp``).
    """
    from ..hdl.pci.tlp import Completion, MsiMessage, ReqKind, Request
    from ..sw.regmap import DOORBELL, MAX_VECTORS
    from .pci import MSI_DATA_BASE

    lines = [
        "// generated by ivhw.cosim.build: do not edit",
        "#pragma once",
        f"#define IVHW_BUS_{bus.upper()} 1",
        f"#define IVHW_MAX_VECTORS {MAX_VECTORS}",
        f"#define IVHW_MSI_DATA_BASE {MSI_DATA_BASE:#x}u",
    ]
    for name, bits in (("PEER", DOORBELL.peer), ("VECTOR", DOORBELL.vector)):
        lines += [
            f"#define IVHW_DOORBELL_{name}_LSB {bits.lsb}",
            f"#define IVHW_DOORBELL_{name}_WIDTH {bits.width}",
        ]
    for prefix, layout in (("REQ", Request), ("CPL", Completion), ("MSI", MsiMessage)):
        for name, fld in layout:
            lines += [
                f"#define IVHW_{prefix}_{name.upper()}_LSB {fld.offset}",
                f"#define IVHW_{prefix}_{name.upper()}_WIDTH {fld.width}",
            ]
    for kind in ReqKind:
        lines.append(f"#define IVHW_REQ_{kind.name} {kind.value}")
    if uart_cycles_per_bit:
        lines.append(f"#define IVHW_UART_CYCLES_PER_BIT {uart_cycles_per_bit}")
    if sleeping:
        lines.append("#define IVHW_HAS_SLEEPING 1")
    if intx:  # a PCI function whose interrupt is its INTx pulse, not an MSI-X message
        lines.append("#define IVHW_IRQ_INTX 1")
    if counters:  # the device's counter ports, in this order (ivhw_device_counters)
        lines.append(f"#define IVHW_COUNTER_PORTS {len(counters)}")
        lines.append("#define IVHW_COUNTERS(X) " + " ".join(f"X({name})" for name in counters))
    return "\n".join(lines) + "\n"


def _native_compiler(
    kind: DeviceKind, waves: bool, revision2: Revision2 | None = None
) -> Callable[[Path, Path, Any], None]:
    """Verilate the device with the engine into ``libivhw_engine.so`` (position-independent)."""

    def compile(scratch: Path, source: Path, log: Any) -> None:
        verilator = os.path.abspath(shutil.which("verilator") or "verilator")
        header = device_header(
            kind.bus, kind.uart_cycles_per_bit, kind.sleeping,
            intx=revision2 is not None and revision2.interrupts == "intx",
            counters=REV2_COUNTERS if revision2 is not None else (),
        )  # fmt: skip
        (scratch / "ivhw_device.h").write_text(header)
        shutil.copy(_ENGINE_SOURCE, scratch / "engine.cpp")
        command = [
            verilator, "--cc", source.name, "--top-module", kind.toplevel, "--prefix", "Vtop",
            *VERILATOR_ARGS, "-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert",
            *(["--trace"] if waves else []),
            "--exe", "engine.cpp", "--build", "-j", "2", "--Mdir", "obj",
            "-CFLAGS", f"-fPIC -O2 -I{scratch}", "-LDFLAGS", "-shared",
            "-o", str(scratch / NATIVE_LIBRARY),
        ]  # fmt: skip
        subprocess.run(command, cwd=scratch, stdout=log, stderr=subprocess.STDOUT, check=True)

    return compile


def check_choice(device: str, sim: str, engine: str) -> None:
    """``ValueError`` unless ``device``, ``sim`` and ``engine`` exist and go together."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if sim not in SIMULATORS:
        raise ValueError(f"unknown simulator {sim!r}; choose from {', '.join(SIMULATORS)}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "native" and sim != "verilator":
        raise ValueError(f"the native engine runs on Verilator only, not on {sim}")


def _key(
    device: str,
    sim: str,
    vectors: int,
    shm_size: int,
    waves: bool,
    engine: str,
    firmware: bytes | None = None,
    revision2: Revision2 | None = None,
) -> str:
    prefix = "native" if engine == "native" else sim
    tag = "" if firmware is None else "-fw" + hashlib.sha256(firmware).hexdigest()[:12]
    if revision2 is not None:
        tag += revision2.tag
    return (
        f"{device}-{prefix}-v{vectors}-s{shm_size}{tag}{'-waves' if waves else ''}-"
        f"{_sources_hash(engine)}"
    )


def is_built(
    device: str,
    sim: str,
    *,
    vectors: int,
    shm_size: int,
    waves: bool = False,
    root: Path | None = None,
    engine: str = "cocotb",
    firmware: bytes | None = None,
    revision2: Revision2 | None = None,
) -> bool:
    """Whether :func:`build` with these parameters would reuse a finished build."""
    root = build_root() if root is None else root
    key = _key(device, sim, vectors, shm_size, waves, engine, firmware, revision2)
    return (root / key / ".built").exists()


def build(
    device: str,
    sim: str,
    *,
    vectors: int,
    shm_size: int,
    waves: bool = False,
    root: Path | None = None,
    engine: str = "cocotb",
    firmware: bytes | None = None,
    revision2: Revision2 | None = None,
) -> Build:
    """Build (or reuse) ``device`` for ``sim``; raises ``ValueError`` on bad parameters.

    ``firmware`` is the RAM image of the ``soc`` device (required for it, else unused);
    ``revision2`` makes the ``pci`` device the revision 2 endpoint.
    """
    check_choice(device, sim, engine)
    kind = DEVICES[device]
    extra: tuple[object, ...] = ()
    if device == "soc":
        if firmware is None:
            raise ValueError("the soc device needs a firmware image")
        extra = (firmware,)
    if revision2 is not None:
        if device != "pci":
            raise ValueError(f"revision 2 is a PCI function; the {device} device has none")
        extra = (revision2,)
    key = _key(device, sim, vectors, shm_size, waves, engine, firmware, revision2)
    build_dir = (build_root() if root is None else root) / key
    # the parameters are checked before anything is built (ValueError/TypeError)
    top = None if (build_dir / ".built").exists() else kind.make(vectors, shm_size, *extra)

    def convert() -> str:
        from amaranth.back import verilog

        return verilog.convert(top, name=kind.toplevel)  # type: ignore[arg-type]

    build_once(
        convert, simulator=sim, toplevel=kind.toplevel, build_dir=build_dir, waves=waves,
        compile=_native_compiler(kind, waves, revision2) if engine == "native" else None,
    )  # fmt: skip
    return Build(
        device, sim, vectors, shm_size, waves, build_dir, kind.toplevel,
        build_dir / f"{kind.toplevel}.v", engine, revision2,
    )  # fmt: skip
