"""Build the simulated device once per parameter set and simulator, cached and locked.

A build is keyed by device, simulator, vectors, shared-memory size, waves and a
hash of the gateware sources, so a changed ``hdl/`` file rebuilds and parallel
runs (pytest-xdist workers, several bridges) share one build: the first takes an
``flock`` on the key's lock file and builds, the others wait and reuse it.

Verilog comes from ``amaranth.back.verilog.convert`` into the build directory
(never committed); ``cocotb_tools.runner`` compiles it for Icarus or Verilator.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..hdl.sim import TIMESCALE, VERILATOR_ARGS, for_simulator

__all__ = [
    "DEVICES",
    "SIMULATORS",
    "Build",
    "DeviceKind",
    "build",
    "build_root",
    "runner_for",
]

#: Simulators the bridge runs on (cocotb runner names).
SIMULATORS = ("icarus", "verilator")

_HDL_DIR = Path(__file__).resolve().parent.parent / "hdl"
_VERILATOR_ARGS = (*VERILATOR_ARGS, "-O2")


@dataclass(frozen=True)
class DeviceKind:
    """How to build one device kind as a simulation top."""

    #: Verilog module name of the top
    toplevel: str
    #: builds the Amaranth top from (vectors, shm_size)
    make: Callable[[int, int], object]


def _flat_top(vectors: int, shm_size: int) -> object:
    from ..hdl.bus.axil import AXI4LiteFrontEnd
    from ..hdl.flat import IvshmemFlat

    return AXI4LiteFrontEnd(IvshmemFlat(vectors=vectors, shm_size=shm_size))


def _pci_top(vectors: int, shm_size: int) -> object:
    from ..hdl.pci import IvshmemPci

    # the doorbell variant with MSI-X, as QEMU 7.2's ivshmem-doorbell
    return IvshmemPci(vectors=vectors, shm_size=shm_size)


#: Device kinds ``ivshmem-cosim --device`` accepts.
DEVICES: dict[str, DeviceKind] = {
    "flat": DeviceKind("ivshmem_flat_axil", _flat_top),
    "pci": DeviceKind("ivshmem_pci", _pci_top),
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


def build_root() -> Path:
    """Where builds live: ``$IVHW_COSIM_BUILD`` or ``build/cosim`` in the source tree."""
    env = os.environ.get("IVHW_COSIM_BUILD")
    if env:
        return Path(env)
    return _HDL_DIR.parent / "build" / "cosim"


def _sources_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(_HDL_DIR.rglob("*.py")):
        digest.update(path.relative_to(_HDL_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    for shared in ("regmap.py", "pcicfg.py"):  # definitions the gateware is built from
        digest.update((_HDL_DIR.parent / "sw" / shared).read_bytes())
    return digest.hexdigest()[:12]


def runner_for(sim: str) -> object:
    """The cocotb runner of ``sim`` (Verilator found next to this Python if not on PATH)."""
    from cocotb_tools.runner import get_runner

    if sim == "verilator" and shutil.which("verilator") is None:
        bindir = str(Path(os.sys.executable).parent)
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    return get_runner(sim)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build(
    device: str,
    sim: str,
    *,
    vectors: int,
    shm_size: int,
    waves: bool = False,
    root: Path | None = None,
) -> Build:
    """Build (or reuse) ``device`` for ``sim``; raises ``ValueError`` on bad parameters."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if sim not in SIMULATORS:
        raise ValueError(f"unknown simulator {sim!r}; choose from {', '.join(SIMULATORS)}")
    kind = DEVICES[device]
    key = f"{device}-{sim}-v{vectors}-s{shm_size}{'-waves' if waves else ''}-{_sources_hash()}"
    root = build_root() if root is None else root
    build_dir = root / key
    result = Build(
        device, sim, vectors, shm_size, waves, build_dir, kind.toplevel, build_dir / "top.v"
    )
    done = build_dir / ".built"
    if done.exists():
        return result
    with _locked(root / f"{key}.lock"):
        if done.exists():
            return result
        top = kind.make(vectors, shm_size)  # ValueError/TypeError on bad parameters
        from amaranth.back import verilog

        text = verilog.convert(top, name=kind.toplevel)  # type: ignore[arg-type]
        # build in a scratch directory, then rename: a crashed build never looks finished
        scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            (scratch / "top.v").write_text(for_simulator(text, sim))
            runner = runner_for(sim)
            args = list(_VERILATOR_ARGS) if sim == "verilator" else []
            with open(scratch / "build.log", "w") as log:
                runner.build(  # type: ignore[attr-defined]
                    sources=[scratch / "top.v"],
                    hdl_toplevel=kind.toplevel,
                    build_dir=scratch,
                    build_args=args,
                    timescale=TIMESCALE,
                    waves=waves,
                    log_file=log.name,
                )
            (scratch / ".built").write_text("ok\n")
            shutil.rmtree(build_dir, ignore_errors=True)
            # Verilator's makefiles hold absolute paths: rebuild-free rename is fine for
            # running (the binary needs nothing from the tree but the cocotb libs).
            os.rename(scratch, build_dir)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return result
