"""The simulator-independent workload of ``bench.hdl_simspeed``: one thin driver per block.

A :class:`Workload` knows only port names (the generated Verilog's, e.g.
``axi__axil__awaddr``). Once per clock cycle the simulator adapter samples a
fixed list of outputs at the rising edge (:attr:`Workload.outputs`, the values
the flip-flops see) and hands them to :meth:`Workload.step`, which returns the
inputs to change for the next edge. cocotb (Icarus, Verilator) and Amaranth's
simulator run the very same object, so the stimulus is cycle for cycle the
same and the counters at the end must agree (:meth:`Workload.checksum`).

Per cycle the driver plays a bus master and the transport:

- a register or shared-memory access starts every :data:`PERIOD` cycles (or as
  soon as the previous one is done, if later), cycling through: IVPOSITION
  read, DOORBELL write (peer 0, vector 1), shared-memory word write, read back;
- the doorbell stream is always ready; peer queries are answered the cycle
  after the request (every peer known, :data:`PEER_VECTORS` vectors); the
  memory port is always ready and returns read data the cycle after;
- an inbound event (vectors 0..3 in turn) is offered every
  :data:`EVENT_PERIOD` cycles until taken.

The PCI endpoint first gets its BARs, memory and bus-master enable, MSI-X
enable and an unmasked table (a dozen requests), so events become MSI-X
messages. These cycles count like the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

from ivhw.cosim.pci import pack, unpack
from ivhw.hdl.pci.tlp import Completion, ReqKind, Request
from ivhw.sw.pcicfg import BARS, CFG, CMD, MSIX_CAP
from ivhw.sw.regmap import DOORBELL, FLAT_REGS, MSIX_ENTRY, PCI_REV1_REGS
from ivhw.sw.regscript import BAR_ADDRESSES, MSG_BASE, MSG_DATA

__all__ = [
    "BLOCKS",
    "EVENT_PERIOD",
    "OWN_ID",
    "PEER_VECTORS",
    "PERIOD",
    "Workload",
    "make_workload",
]

#: cycles between the starts of two accesses
PERIOD = 8
#: cycles between two inbound events
EVENT_PERIOD = 16
#: own peer ID (``ident``), what IVPOSITION must read
OWN_ID = 5
#: vectors of every peer the transport is asked about
PEER_VECTORS = 4
#: vectors the events cycle through (all own vectors of the benched devices)
EVENT_VECTORS = 4
#: blocks and the Verilog prefix of their ports
BLOCKS = {"axil": "axi__", "wishbone": "wb__", "pci": ""}

_SHM_WORD = 0x40  # byte offset of the shared-memory word written and read back
# (kind, register?, write?) of the steady accesses, in turn
_OPS = (("ivposition", False), ("doorbell", True), ("shm", True), ("shm", False))


class Workload:
    """One block's driver: bus master and transport, a step per clock cycle.

    Parameters
    ----------
    block : str
        ``"axil"`` or ``"wishbone"`` (ivshmem-flat behind that front-end, the
        ``flat_bench`` toplevel of the tests) or ``"pci"`` (the endpoint).
    shm_size : int
        Shared-memory size of the flat device (where its memory window starts).

    Attributes
    ----------
    inputs : list of str
        Ports the driver sets; :meth:`step` returns changes as indices into it.
    initial : dict of str to int
        Their values before the first edge (other input ports are held at 0).
    outputs : list of str
        Ports sampled at every rising edge, in this order.
    counts : dict of str to int
        What got done: accesses, doorbells, events taken, interrupts, bad reads.
    """

    def __init__(self, block: str, shm_size: int = 4096) -> None:
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; choose from {', '.join(BLOCKS)}")
        self.block = block
        p = BLOCKS[block]
        self._shm_base = shm_size
        if block == "axil":
            bus_in = ["axil__awaddr", "axil__awvalid", "axil__wdata", "axil__wstrb",
                      "axil__wvalid", "axil__araddr", "axil__arvalid"]  # fmt: skip
            bus_out = ["axil__awready", "axil__arready", "axil__bvalid", "axil__rvalid",
                       "axil__rdata"]  # fmt: skip
            const = {"axil__bready": 1, "axil__rready": 1}
        elif block == "wishbone":
            bus_in = ["wb__cyc", "wb__stb", "wb__we", "wb__adr", "wb__dat_w", "wb__sel"]
            bus_out = ["wb__ack", "wb__err", "wb__dat_r"]
            const = {}
        else:
            bus_in = ["req__valid", "req__payload"]
            bus_out = ["req__ready", "cpl__valid", "cpl__payload"]
            const = {"cpl__ready": 1, "msi__ready": 1}
        irq = "msi__valid" if block == "pci" else "irq"
        transport_in = ["peers__ack", "mem__r_valid", "mem__r_data", "event__valid",
                        "event__payload"]  # fmt: skip
        transport_out = ["peers__req", "mem__valid", "mem__we", "mem__w_data",
                         "doorbell__valid", "event__ready", irq]  # fmt: skip
        const |= {"doorbell__ready": 1, "mem__ready": 1, "peers__vectors": PEER_VECTORS,
                  "ident__valid": 1, "ident__id": OWN_ID}  # fmt: skip
        self.inputs = [p + n for n in bus_in + transport_in]
        self.initial = {p + n: v for n, v in const.items()} | dict.fromkeys(self.inputs, 0)
        self.outputs = [p + n for n in bus_out + transport_out]
        self._index = {name[len(p) :]: i for i, name in enumerate(self.inputs)}
        self._cur = [0] * len(self.inputs)
        self.counts = dict.fromkeys(
            ("cycles", "accesses", "doorbells", "events", "interrupts", "bad_reads"), 0
        )
        self._cycle = 0
        self._op = 0
        self._state = "idle"  # idle, addr (request offered), resp (waiting for the answer)
        self._write = False
        self._expect: int | None = None
        self._next_start = 0
        self._shm_value = 0
        self._mem_word = 0
        self._event_offered = False
        self._next_event = EVENT_PERIOD
        self._event_vector = 0
        self._irq_prev = 0
        self._setup = self._pci_setup() if block == "pci" else []

    # -- helpers ------------------------------------------------------------------------------

    def _set(self, changes: list[tuple[int, int]], name: str, value: int) -> None:
        i = self._index[name]
        if self._cur[i] != value:
            self._cur[i] = value
            changes.append((i, value))

    @staticmethod
    def _pci_setup() -> list[tuple[ReqKind, int, int, int]]:
        """Config and MSI-X table requests that make events come out as MSI-X messages."""
        cw, mw = ReqKind.CFG_WRITE, ReqKind.MEM_WRITE
        shm = BAR_ADDRESSES[2]
        reqs = [
            (cw, BARS.regs.offset, 0xF, BAR_ADDRESSES[0]),
            (cw, BARS.msix.offset, 0xF, BAR_ADDRESSES[1]),
            (cw, BARS.shm.offset, 0xF, shm & 0xFFFF_FFFF),
            (cw, BARS.shm.offset + 4, 0xF, shm >> 32),
            (cw, CFG.COMMAND, 0x3, CMD.MEMORY | CMD.MASTER),
            (cw, MSIX_CAP.offset, 0xC, MSIX_CAP.ENABLE << 16),
        ]
        for v in range(EVENT_VECTORS):
            entry = BAR_ADDRESSES[1] + MSIX_ENTRY.size * v
            reqs += [
                (mw, entry + MSIX_ENTRY.MsgAddrLo.offset, 0xF, MSG_BASE + MSIX_ENTRY.size * v),
                (mw, entry + MSIX_ENTRY.MsgData.offset, 0xF, MSG_DATA | v),
                (mw, entry + MSIX_ENTRY.VectorCtrl.offset, 0xF, 0),
            ]
        return reqs

    def _next_access(self) -> tuple[int, bool, int, int | None]:
        """``(address, write?, data, expected read data)`` of the next steady access."""
        kind, write = _OPS[self._op % len(_OPS)]
        self._op += 1
        if self.block == "pci":
            regs, shm = BAR_ADDRESSES[0], BAR_ADDRESSES[2]
            ivposition, doorbell = PCI_REV1_REGS.IVPosition.offset, PCI_REV1_REGS.Doorbell.offset
        else:
            regs, shm = 0, self._shm_base
            ivposition, doorbell = FLAT_REGS.IVPOSITION.offset, FLAT_REGS.DOORBELL.offset
        if kind == "ivposition":
            return regs + ivposition, False, 0, OWN_ID
        if kind == "doorbell":
            return regs + doorbell, True, DOORBELL.pack(0, 1), None
        if write:
            self._shm_value = (self._shm_value * 1103515245 + 12345) & 0xFFFF_FFFF
            return shm + _SHM_WORD, True, self._shm_value, None
        return shm + _SHM_WORD, False, 0, self._shm_value

    def _start(self, changes: list[tuple[int, int]]) -> None:
        if self._setup:
            kind, addr, be, data = self._setup.pop(0)
            write, expect = True, None
        else:
            addr, write, data, expect = self._next_access()
            kind = ReqKind.MEM_WRITE if write else ReqKind.MEM_READ
            be = 0xF
        self._write, self._expect = write, expect
        s = self._set
        if self.block == "axil":
            if write:
                s(changes, "axil__awaddr", addr)
                s(changes, "axil__wdata", data)
                s(changes, "axil__wstrb", 0xF)
                s(changes, "axil__awvalid", 1)
                s(changes, "axil__wvalid", 1)
            else:
                s(changes, "axil__araddr", addr)
                s(changes, "axil__arvalid", 1)
        elif self.block == "wishbone":
            s(changes, "wb__adr", addr >> 2)
            s(changes, "wb__we", int(write))
            s(changes, "wb__dat_w", data if write else 0)
            s(changes, "wb__sel", 0xF)
            s(changes, "wb__cyc", 1)
            s(changes, "wb__stb", 1)
        else:
            payload = pack(Request, kind=kind.value, addr=addr, be=be, data=data)
            s(changes, "req__payload", payload)
            s(changes, "req__valid", 1)
        self._state = "addr"

    def _done(self, read_data: int) -> None:
        self.counts["accesses"] += 1
        if self._expect is not None and read_data != self._expect:
            self.counts["bad_reads"] += 1
        self._state = "idle"

    # -- the step -----------------------------------------------------------------------------

    def step(self, v: Sequence[int]) -> list[tuple[int, int]]:
        """Outputs sampled at this edge in; the inputs to change before the next edge out."""
        changes: list[tuple[int, int]] = []
        s = self._set
        self.counts["cycles"] += 1
        self._cycle += 1
        # Bus master.
        if self.block == "axil":
            awready, arready, bvalid, rvalid, rdata = v[0], v[1], v[2], v[3], v[4]
            t = 5
            if self._state == "addr" and (awready if self._write else arready):
                if self._write:
                    s(changes, "axil__awvalid", 0)
                    s(changes, "axil__wvalid", 0)
                else:
                    s(changes, "axil__arvalid", 0)
                self._state = "resp"
            elif self._state == "resp" and (bvalid if self._write else rvalid):
                self._done(rdata)
        elif self.block == "wishbone":
            ack, err, dat_r = v[0], v[1], v[2]
            t = 3
            if self._state == "addr" and (ack or err):
                s(changes, "wb__cyc", 0)
                s(changes, "wb__stb", 0)
                self._done(dat_r)
        else:
            req_ready, cpl_valid, cpl_payload = v[0], v[1], v[2]
            t = 3
            if self._state == "addr" and req_ready:
                s(changes, "req__valid", 0)
                self._state = "resp"
            elif self._state == "resp" and cpl_valid:
                self._done(unpack(Completion, cpl_payload, "data"))
        if self._state == "idle" and self._cycle >= self._next_start:
            self._next_start = self._cycle + PERIOD
            self._start(changes)
        # Transport.
        peers_req, mem_valid, mem_we, mem_w_data, db_valid, ev_ready, irq = v[t : t + 7]
        s(changes, "peers__ack", int(bool(peers_req) and not self._cur[self._index["peers__ack"]]))
        if mem_valid and mem_we:
            self._mem_word = mem_w_data
        reading = bool(mem_valid and not mem_we)
        s(changes, "mem__r_valid", int(reading))
        if reading:
            s(changes, "mem__r_data", self._mem_word)
        self.counts["doorbells"] += db_valid
        if self._event_offered and ev_ready:
            self._event_offered = False
            self.counts["events"] += 1
            s(changes, "event__valid", 0)
        if not self._event_offered and self._cycle >= self._next_event:
            self._next_event = self._cycle + EVENT_PERIOD
            self._event_offered = True
            s(changes, "event__payload", self._event_vector)
            s(changes, "event__valid", 1)
            self._event_vector = (self._event_vector + 1) % EVENT_VECTORS
        if self.block == "pci":
            self.counts["interrupts"] += irq  # msi__valid with msi__ready always high
        else:
            self.counts["interrupts"] += int(bool(irq) and not self._irq_prev)
            self._irq_prev = irq
        return changes

    def checksum(self) -> tuple[int, ...]:
        """The counters that must match between simulators."""
        return tuple(self.counts.values())


def make_workload(block: str, shm_size: int = 4096) -> Workload:
    """The driver of ``block`` (see :class:`Workload`)."""
    return Workload(block, shm_size)
