"""The echo firmware, request by request in Amaranth's simulator (``bench.soc_profile``).

Each payload length takes another path through the firmware's copy (whole words
only, one to three bytes more, the largest payload): every reply must be the
request inverted with nothing else of the inbox written, and the profile's cycles
must add up: phases end to end, functions and kinds of instruction to the doorbell.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import require_tool

from bench import soc_profile
from ivhw.boards.firmware import FirmwareConfig, FirmwareError, build, code_symbols

LENGTHS = (1, 2, 3, 4, 21, 55, 56)


@pytest.fixture(scope="module")
def profiles() -> list[soc_profile.Profile]:
    require_tool("riscv64-unknown-elf-gcc")
    return soc_profile.profile([bytes(range(7, 7 + n)) for n in LENGTHS])


@pytest.mark.parametrize("index", range(len(LENGTHS)), ids=[f"{n}B" for n in LENGTHS])
def test_every_payload_is_echoed_exactly(profiles: list[soc_profile.Profile], index: int) -> None:
    result = profiles[index]
    assert result.ok
    starts = [start for _, start, _ in result.phases]
    ends = [end for _, _, end in result.phases]
    assert starts[0] == 0 and starts[1:] == ends[:-1] and ends[-1] == result.sleep
    assert starts[-1] == result.ring  # the last phase is the one after the doorbell
    assert sum(cycles for cycles, _ in result.functions.values()) == result.ring
    assert sum(cycles for cycles, _ in result.kinds.values()) == result.ring
    assert result.kinds["store, shared memory"][1] >= 3  # source, length, outbox cleared


def test_more_words_cost_more_cycles(profiles: list[soc_profile.Profile]) -> None:
    ring = {n: p.ring for n, p in zip(LENGTHS, profiles, strict=True)}
    assert ring[4] < ring[21] < ring[56]


def test_the_report_names_every_phase(profiles: list[soc_profile.Profile]) -> None:
    text = soc_profile.report(profiles[4], LENGTHS[4])
    assert f"**{profiles[4].ring} cycles**" in text and "reply ok" in text
    for name, start, end in profiles[4].phases:
        assert f"| {name} | {start} | {end - start} |" in text


def test_code_symbols_of_the_echo_firmware(tmp_path: Path) -> None:
    require_tool("riscv64-unknown-elf-gcc")
    firmware = build("echo", FirmwareConfig(), tmp_path)
    symbols = code_symbols(firmware.elf)
    names = [s.name for s in symbols]
    assert symbols[0].name == "_start" and symbols[0].address == 0
    assert {"trap_entry", "main", "putc", "put_dec"} <= set(names)
    assert "__bss_start" not in names  # a linker symbol, not code
    addresses = [s.address for s in symbols]
    assert addresses == sorted(set(addresses))
    assert max(addresses) < firmware.size


def test_code_symbols_of_something_else_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "not.elf"
    path.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(FirmwareError, match="not a 32-bit little-endian ELF"):
        code_symbols(path)
    with pytest.raises(FirmwareError, match="cannot read firmware"):
        code_symbols(tmp_path / "missing.elf")


def test_code_symbols_of_a_truncated_elf_is_one_error(tmp_path: Path) -> None:
    require_tool("riscv64-unknown-elf-gcc")
    whole = build("echo", FirmwareConfig(), tmp_path).elf.read_bytes()
    for size in (40, 60, len(whole) // 2, len(whole) - 8):
        path = tmp_path / f"cut{size}.elf"
        path.write_bytes(whole[:size])
        with pytest.raises(FirmwareError, match=r"damaged|no code symbols"):
            code_symbols(path)
