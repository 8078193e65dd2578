"""The one size grammar (``ivhw.sw.size``) and every CLI that takes a size."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ivhw.sw.size import MAX_SIZE, format_size, parse_size

__all__: list[str] = []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("1K", 1024),
        ("1k", 1024),
        ("4M", 4 << 20),
        ("1G", 1 << 30),
        ("2T", 2 << 40),
        ("1P", 1 << 50),
        ("8E", 8 << 60),
        ("1.5K", 1536),
        ("1.5G", 3 << 29),
        ("1.K", 1024),
        ("0.5M", 512 << 10),
        ("1.0001K", 1024),  # fractions of a byte are dropped, as QEMU does
        ("2b", 2),
        ("0x1000", 4096),
        ("0X1000", 4096),
        (" 4M ", 4 << 20),
        ("18446744073709551615", MAX_SIZE),
    ],
)
def test_accepts_the_grammar(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    "text", ["", "4Q", "M", "-1", "+1", "1.5", "1.5B", "4 M", "4MB", "0x10K", "0x", "1e3", "1_000"]
)
def test_rejects_garbage_in_one_line(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert "\n" not in str(info.value)
    assert "size" in str(info.value)


@pytest.mark.parametrize(
    "text", ["16E", "18446744073709551616", "99999999999999999999", "0x1" + "0" * 16]
)
def test_beyond_64_bits_is_too_large(text: str) -> None:
    with pytest.raises(ValueError, match="too large: at most 64 bits"):
        parse_size(text)


def test_bounds_and_power_of_two() -> None:
    assert parse_size("4M", minimum=1, maximum=4 << 20, power_of_two=True) == 4 << 20
    with pytest.raises(
        ValueError, match=r"shm size '8M' is too large: at most 4M \(4194304 bytes\)"
    ):
        parse_size("8M", maximum=4 << 20, what="shm size")
    with pytest.raises(ValueError, match="'0' is too small: at least 1"):
        parse_size("0", minimum=1)
    with pytest.raises(ValueError, match=r"must be a power of two, not '3K' \(3072 bytes\)"):
        parse_size("3K", power_of_two=True)


def test_echo_of_a_long_input_is_bounded() -> None:
    with pytest.raises(ValueError) as info:
        parse_size("9" * 100_000)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("value", "text"), [(4 << 20, "4M"), (1536, "1536"), (1 << 62, "4E"), (0, "0"), (3 << 10, "3K")]
)
def test_format_size_round_trips(value: int, text: str) -> None:
    assert format_size(value) == text
    assert parse_size(text) == value


# every CLI that takes a size: same grammar, one-line error, status 2
_CLIS = {
    "server": ["ivhw.sw.server", "-F", "-S", "/nonexistent/dir/sock", "-l"],
    "hdl": ["ivhw.hdl.cli", "verilog", "flat", "-o", "-", "--shm-size"],
    "cosim": ["ivhw.cosim.cli", "--socket", "/nonexistent", "--shm-size"],
}


@pytest.mark.parametrize("cli", sorted(_CLIS))
@pytest.mark.parametrize("text", ["16E", "99999999999999999999", "4Q", "0x10K", "3K"])
def test_every_cli_gives_one_line(cli: str, text: str) -> None:
    if cli == "server" and text == "3K":
        text = "8E"  # the server rounds up to a power of two; 8E does not fit an off_t
    result = subprocess.run(
        [sys.executable, "-m", *_CLIS[cli], text],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert repr(text) in result.stderr
