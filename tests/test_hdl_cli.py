"""``ivshmem-hdl``: Verilog generation and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import require_tool

from ivhw.hdl.cli import main

__all__: list[str] = []


@pytest.mark.parametrize("bus, port", [("axil", "axil__awaddr"), ("wishbone", "wb__cyc")])
def test_writes_verilog(tmp_path: Path, bus: str, port: str) -> None:
    out = tmp_path / "flat.v"
    assert main(["verilog", "flat", "--vectors", "4", "--shm-size", "4K", "--bus", bus,
                 "-o", str(out)]) == 0  # fmt: skip
    text = out.read_text()
    assert f"module ivshmem_flat_{bus}(" in text
    assert port in text
    assert "doorbell__payload" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["verilog", "flat", "--vectors", "65"], "vectors must be 1..64, not 65"),
        (["verilog", "flat", "--vectors", "x"], "must be an integer, not 'x'"),
        (["verilog", "flat", "--shm-size", "3K"], "power of two, not '3K' (3072 bytes)"),
        (["verilog", "flat", "--shm-size", "3Q"], "invalid shm size '3Q'"),
        (["verilog", "flat", "--bus", "apb"], "invalid choice: 'apb'"),
        (["verilog", "isa"], "invalid choice: 'isa'"),
        (["verilog", "pci", "--vectors", "0"], "vectors must be 1..64, not 0"),
        (["verilog", "pci", "--interrupts", "msi"], "invalid choice: 'msi'"),
        (["verilog", "pci", "--plain", "--interrupts", "intx"], "ivshmem-plain has no interrupts"),
        (["verilog", "pci", "--shm-size", "8"], "shm_size must be >= 16, not 8"),
        (["verilog", "pci", "--bus", "axil"], "unrecognized arguments: --bus"),
        (["verilog", "flat"], "required: -o/--output"),
        (["verilog", "flat", "--name", "a b"], "--name: not a Verilog module name: 'a b'"),
        (["verilog", "pci", "--name", "9top"], "--name: not a Verilog module name: '9top'"),
        (["verilog", "flat", "--name", ""], "--name: not a Verilog module name: ''"),
        (["verilog", "flat", "--name", "module"], "--name: 'module' is a Verilog keyword"),
        (["verilog", "flat", "-o", "/nonexistent/dir/x.v"], "cannot write"),
        (["verilog", "domain"], "required: --port"),
        (
            ["verilog", "domain", "--port", "1"],
            "a port is ID:VECTORS (e.g. 1:4 or 0x10:1), not '1'",
        ),
        (["verilog", "domain", "--port", "1:2", "--port", "1:4"], "port id 1 appears twice"),
        (["verilog", "domain", "--port", "1:65"], "port vectors must be 1..64, not 65"),
        (["verilog", "domain", "--port", "1:1", "--ram", "dram"], "invalid choice: 'dram'"),
        (
            ["verilog", "domain", "--port", "1:1", "--ram", "spram", "--shm-size", "1M"],
            "ram='spram' holds at most 128 KiB",
        ),
    ],
)
def test_bad_arguments_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if "-o" not in argv and "required" not in message:
        argv = [*argv, "-o", "/dev/null"]
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert message in err


@pytest.mark.parametrize(
    "options, present, absent",
    [
        ([], ["msi__payload", "req__payload", "cpl__payload", "doorbell__payload"], []),
        (["--vectors", "8", "--interrupts", "intx"], ["intx", "req__payload"], []),
        (["--plain", "--shm-size", "1M"], ["mem__addr", "req__payload"], []),
    ],
)
def test_writes_pci_verilog(
    tmp_path: Path, options: list[str], present: list[str], absent: list[str]
) -> None:
    out = tmp_path / "pci.v"
    assert main(["verilog", "pci", *options, "-o", str(out)]) == 0
    text = out.read_text()
    assert "module ivshmem_pci(" in text
    for port in present:
        assert port in text
    for port in absent:
        assert port not in text


@pytest.mark.parametrize(
    "options, present, absent",
    [
        ([], ["ports__1__doorbell__payload", "ports__0__mem__addr"], ["ram__addr", "SB_SPRAM"]),
        (["--ram", "external"], ["ram__addr", "ram__r_data"], ["SB_SPRAM"]),
        (["--ram", "spram", "--shm-size", "64K"], ["SB_SPRAM256KA"], ["ram__addr"]),
    ],
)
def test_writes_domain_verilog(
    tmp_path: Path, options: list[str], present: list[str], absent: list[str]
) -> None:
    out = tmp_path / "domain.v"
    assert main(["verilog", "domain", "--port", "1:4", "--port", "0x10:1", *options,
                 "-o", str(out)]) == 0  # fmt: skip
    text = out.read_text()
    assert "module ivshmem_domain(" in text
    for port in present:
        assert port in text
    for port in absent:
        assert port not in text


@pytest.mark.parametrize(
    "options, present",
    [
        (["--revision", "2", "--layout", "final", "--interrupts", "msix", "--vectors", "4",
          "--max-peers", "4", "--output-section-size", "4K", "--shm-size", "64K"],
         ["msi__payload", "protected_writes", "mem__addr"]),
        (["--revision", "2", "--layout", "rfc", "--interrupts", "intx", "--vectors", "1",
          "--max-peers", "8", "--output-section-size", "8K", "--shm-size", "128K"],
         ["intx", "protected_writes"]),
        (["--revision", "2", "--shm-size", "64K", "--shm-address", "0x40000000"],
         ["protected_writes"]),
    ],
)  # fmt: skip
def test_writes_revision_2_verilog(tmp_path: Path, options: list[str], present: list[str]) -> None:
    out = tmp_path / "pci2.v"
    assert main(["verilog", "pci", *options, "-o", str(out)]) == 0
    text = out.read_text()
    assert "module ivshmem_pci(" in text
    for port in present:
        assert port in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--layout", "rfc"], "--layout is a revision 2 option: add --revision 2"),
        (["--max-peers", "4"], "--max-peers is a revision 2 option"),
        (["--revision", "2", "--plain"], "revision 2 has no plain variant"),
        (["--revision", "2", "--max-peers", "1"], "max peers must be 2..65536, not 1"),
        (["--revision", "2", "--output-section-size", "1M", "--shm-size", "64K"], "needs at least"),
        (["--revision", "2", "--output-section-size", "100"], "multiple of 4096"),
        (["--revision", "2", "--protocol", "0x10000"], "the protocol is 16 bits"),
        (["--revision", "3"], "invalid choice: 3"),
        (["--revision", "2", "--layout", "v3"], "invalid choice: 'v3'"),
    ],
)
def test_revision_2_bad_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(["verilog", "pci", *argv, "-o", "/dev/null"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert message in err


@pytest.mark.icarus
@pytest.mark.verilator
@pytest.mark.parametrize("layout, interrupts", [("final", "msix"), ("rfc", "intx")])
def test_revision_2_verilog_compiles_and_lints(
    tmp_path: Path, layout: str, interrupts: str
) -> None:
    """``ivshmem-hdl verilog pci --revision 2``: Icarus compiles it, Verilator lints it."""
    import subprocess

    iverilog, verilator = require_tool("iverilog"), require_tool("verilator")
    out = tmp_path / "pci2.v"
    assert main(["verilog", "pci", "--revision", "2", "--layout", layout, "--interrupts",
                 interrupts, "--vectors", "4", "--max-peers", "4", "--output-section-size",
                 "4K", "--shm-size", "64K", "-o", str(out)]) == 0  # fmt: skip
    compiled = subprocess.run([iverilog, "-g2012", "-o", str(tmp_path / "pci2.vvp"), str(out)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr
    # Amaranth's output trips Verilator's style warnings (hence -Wno-lint), not its checks
    linted = subprocess.run([verilator, "--lint-only", "-Wno-fatal", "-Wno-lint", str(out)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert linted.returncode == 0, linted.stderr
    assert "%Error" not in linted.stderr, linted.stderr
