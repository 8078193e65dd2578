"""The ivshmem PCI endpoint RTL on Icarus and Verilator through cocotb.

cocotb modules: ``tests/hdl/pci_tb.py`` (every request against the register
model, and QEMU's register script), ``tests/hdl/pci2_tb.py`` (revision 2 against
its model, and the drivers' bring-up) and ``tests/hdl/pci_rc_tb.py`` (enumerated
and driven by cocotbext-pcie's ``RootComplex``). Each simulator builds once per
variant into ``build/hdl/pci/<sim>-<variant>-<hash>`` under a file lock, so
pytest-xdist workers and later sessions share builds. ``WAVES=1`` records
waveforms; ``IVHW_SEED=N`` reruns one seed of the random test,
``IVHW_RANDOM_OPS`` sets its length.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from amaranth.back import verilog
from support import require_tool

from ivhw.hdl.pci import IvshmemPci
from ivhw.hdl.sim import build_once, cocotb_tests, for_simulator, run_cocotb
from ivhw.sw.pcicfg import QEMU_DOORBELL_HEADER

__all__: list[str] = []

ROOT = Path(__file__).resolve().parent.parent
TB_DIR = Path(__file__).resolve().parent / "hdl"
TOPLEVEL = "ivshmem_pci"
#: the variants under test; a 2-deep doorbell FIFO so stalls come early; the doorbell
#: variant's 1 MiB BAR2 is what ``regscript.record_qemu`` gives QEMU
VARIANTS: dict[str, dict[str, Any]] = {
    "doorbell": {"vectors": 4, "shm_size": 1 << 20, "doorbell_depth": 2},
    "doorbell64": {"vectors": 64, "shm_size": 4096},
    "intx": {"vectors": 2, "shm_size": 4096, "interrupts": "intx", "doorbell_depth": 2},
    "plain": {"doorbell": False, "shm_size": 4096},
    # revision 2: both layouts, both interrupt modes, with and without BAR2
    "rev2": {"revision": 2, "vectors": 4, "max_peers": 4, "output_section_size": 4096,
             "shm_size": 1 << 16, "protocol": 0x4001, "doorbell_depth": 2},
    "rev2-rfc": {"revision": 2, "layout": "rfc", "vectors": 2, "max_peers": 4,
                 "output_section_size": 4096, "shm_size": 1 << 16},
    "rev2-rfc-intx": {"revision": 2, "layout": "rfc", "interrupts": "intx", "vectors": 1,
                      "max_peers": 4, "output_section_size": 4096, "shm_size": 1 << 15},
    "rev2-intx-nobar2": {"revision": 2, "interrupts": "intx", "vectors": 1, "max_peers": 4,
                         "output_section_size": 4096, "shm_size": 1 << 15, "bar2": False,
                         "shm_address": 0x4000_0000},
}  # fmt: skip
REV2 = ("rev2", "rev2-rfc", "rev2-rfc-intx", "rev2-intx-nobar2")
SIMULATORS = [
    pytest.param("icarus", marks=pytest.mark.icarus),
    pytest.param("verilator", marks=pytest.mark.verilator),
]
#: (cocotb module, test, variants it runs on)
TESTS = [
    ("pci_tb", "config_reset", ("doorbell", "intx", "plain")),
    ("pci_tb", "directed", ("doorbell", "doorbell64", "intx", "plain")),
    ("pci_tb", "random_sequence", ("doorbell", "doorbell64", "intx", "plain")),
    ("pci_tb", "regscript_differential", ("doorbell", "doorbell64", "plain")),
    ("pci2_tb", "config_reset", REV2),
    ("pci2_tb", "directed", REV2),
    ("pci2_tb", "random_sequence", REV2),
    ("pci2_tb", "zephyr_init", ("rev2", "rev2-intx-nobar2")),
    ("pci2_tb", "linux_init", ("rev2", "rev2-intx-nobar2")),
    ("pci_rc_tb", "enumerate_and_msix", ("doorbell",)),
    ("pci_rc_tb", "enumerate_rev2_msix", ("rev2", "rev2-rfc")),
    ("pci_rc_tb", "enumerate_intx", ("intx",)),
    ("pci_rc_tb", "enumerate_plain", ("plain",)),
]


if str(TB_DIR) not in sys.path:
    sys.path.insert(0, str(TB_DIR))  # the runner passes sys.path on as PYTHONPATH
#: run by ``test_pci_matches_qemu`` (it needs QEMU's recorded answers), not by ``test_pci``
QEMU_TESTS = {("pci_tb", "regscript_qemu")}


def test_every_cocotb_test_is_run() -> None:
    """``TESTS`` names every cocotb test of every PCI testbench, and nothing else."""
    listed = {(module, test) for module, test, _variants in TESTS} | QEMU_TESTS
    modules = {module for module, _test in listed}
    found = {(module, test) for module in modules for test in cocotb_tests(module)}
    assert listed == found


def _waves() -> bool:
    return os.environ.get("WAVES") == "1"


def _build(simulator: str, variant: str) -> tuple[Any, Path]:
    """The runner and build directory of ``simulator`` and ``variant``, built at most once."""
    text = verilog.convert(IvshmemPci(**VARIANTS[variant]), name=TOPLEVEL)
    key = hashlib.sha256(f"{for_simulator(text, simulator)}{_waves()}".encode()).hexdigest()[:12]
    build_dir = ROOT / "build" / "hdl" / "pci" / f"{simulator}-{variant}-{key}"
    runner = build_once(
        text, simulator=simulator, toplevel=TOPLEVEL, build_dir=build_dir, waves=_waves()
    )
    return runner, build_dir


def _cases() -> list[Any]:
    return [
        pytest.param(module, test, variant, id=f"{variant}-{test}")
        for module, test, variants in TESTS
        for variant in variants
    ]


def _run(
    simulator: str, module: str, test: str, variant: str, tmp_path: Path,
    env: dict[str, str] | None = None,
) -> None:  # fmt: skip
    require_tool("iverilog" if simulator == "icarus" else "verilator")
    runner, build_dir = _build(simulator, variant)
    env = {"IVHW_PCI_PARAMS": json.dumps(VARIANTS[variant]), **(env or {})}
    run_cocotb(  # fails unless the test ran and passed
        runner,
        test_module=module,
        tests=[test],
        test_dir=tmp_path,
        hdl_toplevel=TOPLEVEL,
        build_dir=build_dir,
        extra_env=env,
        waves=_waves(),
    )


@pytest.mark.parametrize("module, test, variant", _cases())
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_pci(simulator: str, module: str, test: str, variant: str, tmp_path: Path) -> None:
    _run(simulator, module, test, variant, tmp_path)


@pytest.fixture(scope="module")
def qemu_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """QEMU 7.2's results of the register script, recorded once (doorbell variant's vectors)."""
    require_tool("qemu-system-x86_64")
    from test_qemu_differential import DOCUMENTED

    from ivhw.sw.regscript import record_qemu

    vectors = VARIANTS["doorbell"]["vectors"]
    assert VARIANTS["doorbell"]["shm_size"] == 1 << 20  # record_qemu's shared memory
    script, results = record_qemu(vectors)
    by_name = {op.name: result for op, result in zip(script, results, strict=True)}
    path = tmp_path_factory.mktemp("qemu") / "regscript.json"
    path.write_text(json.dumps({
        "vectors": vectors,
        "peer_id": by_name["ivposition.rd"],
        "results": results,
        "documented": sorted(DOCUMENTED),
    }))  # fmt: skip
    return path


@pytest.mark.qemu
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_pci_matches_qemu(simulator: str, qemu_results: Path, tmp_path: Path) -> None:
    """The RTL against QEMU 7.2 itself: only the model's documented differences remain."""
    env = {"IVHW_QEMU_RESULTS": str(qemu_results)}
    _run(simulator, "pci_tb", "regscript_qemu", "doorbell", tmp_path, env)


@pytest.mark.parametrize(
    "params, error, message",
    [
        ({"vectors": 0}, ValueError, "vectors must be 1..64, not 0"),
        ({"vectors": 65}, ValueError, "vectors must be 1..64, not 65"),
        ({"vectors": "2"}, TypeError, "vectors must be an integer, not '2'"),
        ({"shm_size": 8}, ValueError, "shm_size must be >= 16, not 8"),
        ({"shm_size": 3 << 10}, ValueError, "shm_size must be a power of two, not 3072"),
        ({"interrupts": "msi"}, ValueError, "interrupts must be 'msix' or 'intx', not 'msi'"),
        ({"doorbell": False, "interrupts": "msix"}, ValueError, "ivshmem-plain has no interrupts"),
        ({"doorbell": 1}, TypeError, "doorbell must be a bool, not 1"),
        ({"doorbell_depth": 0}, ValueError, "doorbell_depth must be >= 1, not 0"),
    ],
)
def test_parameters_validated(params: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        IvshmemPci(**params)


def test_config_header_matches_qemu() -> None:
    """The reset header of the doorbell variant with 2 vectors: what QEMU shows."""
    qemu = list(QEMU_DOORBELL_HEADER)
    device = IvshmemPci(vectors=2)
    device._MustUse__used = True  # type: ignore[attr-defined]  # inspected, not elaborated
    assert list(device.config_init[: len(qemu)]) == qemu
