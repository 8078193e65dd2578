"""A small Wishbone B4 classic master for cocotb tests.

Written here before cocotbext-wishbone was pinned; kept beside it as a second, differently
timed master (it drives on the falling edge and idles a cycle between accesses, where
cocotbext-wishbone drives right after the rising edge). It follows cocotbext-axi's driver shape:
``(bus_prefix entity, clock, reset=None)``, a logger named ``cocotb.wishbone``,
and ``ValueError`` on bad arguments. One classic cycle per access: CYC/STB and
the request are driven on a falling edge and held until ACK or ERR is seen.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from cocotb.triggers import FallingEdge

__all__ = ["WishboneMaster", "WishboneResult"]


class WishboneResult(NamedTuple):
    """How one access ended: ``data`` (reads), ``ack`` (else ERR)."""

    data: int
    ack: bool


class WishboneMaster:
    """Wishbone classic master on signals ``<prefix>cyc``, ``stb``, ``we``, ``adr``, ...

    Parameters
    ----------
    entity : cocotb handle
        The toplevel holding the signals.
    prefix : str
        Name prefix of the bus signals (``"wb__wb__"`` for ``wb__wb__cyc``).
    clock : cocotb handle
        The bus clock.
    timeout : int
        Cycles to wait for ACK/ERR before raising ``TimeoutError``.
    """

    def __init__(self, entity: Any, prefix: str, clock: Any, timeout: int = 1000) -> None:
        self.log = logging.getLogger("cocotb.wishbone")
        self._clock = clock
        self._timeout = timeout
        self._sig = {
            name: getattr(entity, f"{prefix}{name}")
            for name in ("cyc", "stb", "we", "adr", "dat_w", "sel", "dat_r", "ack", "err")
        }
        self._adr_width = len(self._sig["adr"])
        for name in ("cyc", "stb", "we", "adr", "dat_w", "sel"):
            self._sig[name].value = 0

    async def read(self, adr: int, sel: int = 0b1111) -> WishboneResult:
        """Read word ``adr`` with byte enables ``sel``."""
        return await self._cycle(adr, False, 0, sel)

    async def write(self, adr: int, data: int, sel: int = 0b1111) -> WishboneResult:
        """Write ``data`` to word ``adr`` with byte enables ``sel``."""
        return await self._cycle(adr, True, data, sel)

    async def _cycle(self, adr: int, we: bool, data: int, sel: int) -> WishboneResult:
        if not 0 <= adr < 1 << self._adr_width:
            raise ValueError(f"address must fit in {self._adr_width} bits, not {adr!r}")
        if not 0 <= sel <= 0xF:
            raise ValueError(f"sel must be 4 bits, not {sel!r}")
        if not 0 <= data <= 0xFFFF_FFFF:
            raise ValueError(f"data must be 32 bits, not {data!r}")
        s = self._sig
        await FallingEdge(self._clock)
        s["cyc"].value = 1
        s["stb"].value = 1
        s["we"].value = int(we)
        s["adr"].value = adr
        s["dat_w"].value = data
        s["sel"].value = sel
        for _ in range(self._timeout):
            await FallingEdge(self._clock)
            ack, err = int(s["ack"].value), int(s["err"].value)
            if ack or err:
                result = WishboneResult(int(s["dat_r"].value) if ack and not we else 0, bool(ack))
                # The transfer completes at the next rising edge; end the cycle after it.
                await FallingEdge(self._clock)
                s["cyc"].value = 0
                s["stb"].value = 0
                self.log.debug("%s %#x sel=%s -> %s", "write" if we else "read", adr, sel, result)
                return result
        raise TimeoutError(f"no ACK/ERR within {self._timeout} cycles at word {adr:#x}")
