"""The one size grammar of every command-line option that takes a number of bytes.

``ivshmem-server -l``, ``ivshmem-hdl --shm-size``, ``ivshmem-cosim --shm-size``
and any later size option parse with :func:`parse_size` (or :func:`size_type`
for argparse), so a size means the same everywhere:

- a decimal number: ``4194304``
- a hexadecimal number: ``0x400000`` (no suffix after a hex number)
- a decimal number with a binary suffix ``B`` (bytes), ``K``, ``M``, ``G``,
  ``T``, ``P``, ``E`` (powers of 1024, either case): ``64K``, ``4M``, ``1G``
- a decimal fraction with a suffix other than ``B``: ``1.5G``; fractions of a
  byte are dropped, as QEMU's ``parse_option_size`` does

This is QEMU's grammar for ``ivshmem-server -l``. Anything else, and anything
out of the caller's range (the default range is what fits in 64 bits), raises
``ValueError`` with a one-line message that quotes the input.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from fractions import Fraction

__all__ = ["MAX_SIZE", "format_size", "parse_size", "size_type"]

#: The largest size anything accepts: QEMU's sizes are ``uint64_t``.
MAX_SIZE = (1 << 64) - 1

_SHIFTS = {"": 0, "B": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}
_GRAMMAR = re.compile(
    r"(?P<hex>0[xX][0-9a-fA-F]+)|(?P<int>[0-9]+)(?P<frac>\.[0-9]*)?(?P<suffix>[bBkKmMgGtTpPeE]?)"
)
#: inputs are echoed in errors: never a whole pasted file
_ECHO = 40
_EXAMPLES = "e.g. 4096, 0x1000, 64K, 4M, 1.5G"


def _quote(text: str) -> str:
    return repr(text if len(text) <= _ECHO else text[:_ECHO] + "...")


def format_size(value: int) -> str:
    """``value`` bytes in the grammar, with the largest exact suffix: ``4M``, ``1536``, ``8E``."""
    if value <= 0:
        return str(value)
    for suffix in "EPTGMK":
        shift = _SHIFTS[suffix]
        if value % (1 << shift) == 0:
            return f"{value >> shift}{suffix}"
    return str(value)


def parse_size(
    text: str,
    *,
    minimum: int = 0,
    maximum: int = MAX_SIZE,
    power_of_two: bool = False,
    what: str = "size",
) -> int:
    """Bytes that ``text`` stands for; ``ValueError`` with a one-line reason otherwise.

    ``minimum`` and ``maximum`` bound the result (inclusive); ``power_of_two``
    also requires a power of two. ``what`` names the value in messages.
    """
    if not isinstance(text, str):
        raise TypeError(f"{what} must be given as text, not {type(text).__name__}")
    stripped = text.strip()
    match = _GRAMMAR.fullmatch(stripped) if len(stripped) <= 100 else None
    if match is None:
        raise ValueError(f"invalid {what} {_quote(text)} (expected {_EXAMPLES})")
    if match["hex"]:
        value = int(match["hex"], 16)
    else:
        shift = _SHIFTS[match["suffix"].upper()]
        fraction = match["frac"]
        if fraction is not None and shift == 0:
            raise ValueError(
                f"invalid {what} {_quote(text)}: a fraction needs a suffix (K, M, G, ...)"
            )
        number = Fraction(match["int"] + (fraction or "").rstrip("."))
        value = int(number * (1 << shift))  # whole bytes, truncated as QEMU does
    if value > maximum:
        limit = "64 bits" if maximum == MAX_SIZE else f"{format_size(maximum)} ({maximum} bytes)"
        raise ValueError(f"{what} {_quote(text)} is too large: at most {limit}")
    if value < minimum:
        raise ValueError(f"{what} {_quote(text)} is too small: at least {format_size(minimum)}")
    if power_of_two and value & (value - 1):
        raise ValueError(f"{what} must be a power of two, not {_quote(text)} ({value} bytes)")
    return value


def size_type(
    *,
    minimum: int = 0,
    maximum: int = MAX_SIZE,
    power_of_two: bool = False,
    what: str = "size",
) -> Callable[[str], int]:
    """An argparse ``type=`` that parses with :func:`parse_size` under these bounds."""

    def convert(text: str) -> int:
        try:
            return parse_size(
                text, minimum=minimum, maximum=maximum, power_of_two=power_of_two, what=what
            )
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = what  # argparse names the type in its own messages
    return convert
