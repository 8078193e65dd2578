"""ivshmem PCI revision 1 (QEMU 7.2 ``ivshmem-doorbell`` / ``ivshmem-plain``) as an endpoint.

The endpoint speaks the transaction interface of :mod:`ivhw.hdl.pci.tlp`
(one dword request, one completion) and the transport ports of
:mod:`ivhw.hdl.transport`, like ivshmem-flat. Behaviour follows the register
model :class:`ivhw.sw.models.pci.IvshmemPci` (the oracle the tests compare
with); offsets, IDs and layouts come from :mod:`ivhw.sw.pcicfg` and
:mod:`ivhw.sw.regmap`.

Config space (``CFG_READ`` / ``CFG_WRITE``)
    The type-0 header of QEMU's device; per byte ``new = old & ~wmask | data
    & wmask`` with the request's byte enables. 40h..FFh outside the MSI-X
    capability read 0; 100h..FFFh read all-ones; writes there are ignored.
    Status bit 3 (INTERRUPT) shows the INTx state of the legacy variant.

Memory decode
    A BAR decodes only with Command MEMORY set, a base that is not 0 and not
    the all-ones sizing pattern (QEMU ``pci_bar_address``); BARs are checked
    in order BAR0, BAR1, BAR2. A miss is answered ``UR`` without effect.

BAR0 (``PCI_REV1_REGS``), byte enables standing for the CPU access size
    (QEMU's memory core, :mod:`ivhw.sw.models._mmio`): no byte enabled: no
    effect, reads 0. Enables no CPU access makes (holes, three bytes, two at
    lane 1): no effect, reads 0, counted in ``bad_access``. A read reaches a
    register only if lane 0 is enabled (returns the enabled bytes; IntrStatus
    clears); a write with enables at lane ``L`` acts on the dword's register
    with the enabled bytes shifted down to bit 0 (QEMU zero-extends the
    narrow value and masks the offset with FCh). Doorbell writes decode
    vector bits 7:0 (as QEMU) and are validated through ``peers`` before
    they are queued for the transport; the write completes only once queued.

BAR1 (``MSIX_BAR``, MSI-X variant)
    Only whole-dword accesses (QEMU ``.valid`` 4..8); others: no effect,
    reads 0, counted. Table entries 0..vectors-1, vector control bit 0 the
    mask; the PBA is read-only; everything else reads 0.

BAR2
    Forwarded to the ``mem`` port: reads return the whole word, writes carry
    the byte enables.

Inbound events
    MSI-X variant: MSI-X disabled -> dropped (``events_dropped``); enabled ->
    the vector's PBA bit is set. A pending vector that is not masked (vector
    mask and function mask clear) is delivered before anything else happens:
    its bit clears and, with bus mastering on, its message goes out on
    ``msi``; with bus mastering off it is lost, as in QEMU. Delivery on
    unmask follows from the same rule. INTx variant: IntrStatus := 1, and
    ``intx`` = ``IntrStatus & IntrMask != 0`` unless Command INTX_DISABLE.
    ivshmem-plain drops every event. Events on vectors >= ``vectors`` are
    dropped too.
"""

# Nested `with m.State(...)` / `with m.If(...)` blocks mirror the hardware's decision tree.
# ruff: noqa: SIM117

from __future__ import annotations

from typing import Literal

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...sw.pcicfg import BARS, CFG, CMD, CONFIG_SIZE, MSIX_CAP, STATUS, BarLayout
from ...sw.regmap import DOORBELL, MAX_VECTORS, MSIX_BAR, MSIX_ENTRY, PCI_REV1_REGS
from ..transport import (
    Doorbell,
    add_doorbell_queue,
    check_int,
    check_shm_size,
    transport_members,
)
from .config import config_layout
from .tlp import (
    Completion,
    CplStatus,
    ReqKind,
    Request,
    completion_signature,
    msi_signature,
    request_signature,
)

__all__ = ["IvshmemPci"]

_MiB = 1 << 20
#: Byte-enable masks of the accesses a CPU makes: 1, 2 or 4 bytes aligned to their size.
_CPU_MASKS = tuple(((1 << size) - 1) << lane for size in (1, 2, 4) for lane in range(0, 4, size))
#: QEMU's PCI ivshmem decodes only bits 7:0 of the doorbell's vector field.
_VECTOR_BITS = 8
_REGS = PCI_REV1_REGS


def _bit(flag: int) -> int:
    """Bit index of a one-bit flag."""
    if flag <= 0 or flag & (flag - 1):
        raise ValueError(f"not a single bit: {flag:#x}")
    return flag.bit_length() - 1


class IvshmemPci(wiring.Component):
    """The ivshmem PCI function, revision 1: ``ivshmem-doorbell`` or ``ivshmem-plain``.

    Parameters
    ----------
    doorbell : bool
        ``True``: ivshmem-doorbell (server, doorbells, interrupts);
        ``False``: ivshmem-plain (BAR0 + BAR2, no interrupts, IVPosition 0).
    vectors : int
        Own vectors, 1..64 (MSI-X table size; doorbell only).
    shm_size : int
        BAR2 size in bytes, a power of two >= 16 (default 4 MiB).
    interrupts : "msix", "intx" or None
        Doorbell only: MSI-X (default, QEMU 7.2) or the legacy INTx variant
        (pin INTA, no MSI-X capability nor BAR1). Must be ``None`` when plain.
    doorbell_depth : int
        Outbound doorbell FIFO depth (>= 1); when full, Doorbell writes wait.

    Attributes
    ----------
    req : ``In(request_signature())``
        Config and memory requests (:mod:`ivhw.hdl.pci.tlp`).
    cpl : ``Out(completion_signature())``
        One completion per request, in order.
    msi : ``Out(msi_signature())``
        MSI-X messages to write upstream (never valid without MSI-X).
    intx : ``Out(1)``
        Legacy INTx level (INTx variant; 0 otherwise).
    doorbell, event, ident, peers, mem
        The transport ports, as :class:`ivhw.hdl.flat.IvshmemFlat`.
    doorbell_bad_peer, doorbell_bad_vector, bad_access, events_dropped : ``Out(32)``
        Wrapping counts: doorbells to unknown peers / vectors out of range,
        register accesses refused for their byte enables, inbound events dropped.

    Raises
    ------
    TypeError, ValueError
        On a parameter of the wrong type or out of range.
    """

    def __init__(
        self,
        *,
        doorbell: bool = True,
        vectors: int = 1,
        shm_size: int = 4 * _MiB,
        interrupts: Literal["msix", "intx"] | None = None,
        doorbell_depth: int = 4,
    ) -> None:
        try:
            if not isinstance(doorbell, bool):
                raise TypeError(f"doorbell must be a bool, not {doorbell!r}")
            if doorbell:
                interrupts = "msix" if interrupts is None else interrupts
                if interrupts not in ("msix", "intx"):
                    raise ValueError(f"interrupts must be 'msix' or 'intx', not {interrupts!r}")
            elif interrupts is not None:
                raise ValueError("ivshmem-plain has no interrupts; leave interrupts unset")
            self._vectors = check_int("vectors", vectors, 1, MAX_VECTORS)
            check_shm_size(shm_size, 16)
            self._doorbell_depth = check_int("doorbell_depth", doorbell_depth, 1)
        except (TypeError, ValueError):
            # A component refused at construction is not an "unused elaboratable".
            self._MustUse__used = True
            raise
        self._doorbell = doorbell
        self._interrupts = interrupts
        self._shm_size = shm_size
        bars: list[tuple[BarLayout, int]] = [(BARS.regs, BARS.regs.size)]  # type: ignore[list-item]
        if interrupts == "msix":
            bars.append((BARS.msix, BARS.msix.size))  # type: ignore[arg-type]
        bars.append((BARS.shm, shm_size))  # type: ignore[arg-type]
        self._bars = bars
        self._cfg = config_layout(
            msix=self.msix, intx=interrupts == "intx", vectors=vectors, bars=bars
        )
        super().__init__({
            "req": In(request_signature()),
            "cpl": Out(completion_signature()),
            "msi": Out(msi_signature()),
            "intx": Out(1),
            **transport_members(shm_size),
        })  # fmt: skip

    @property
    def doorbell_variant(self) -> bool:
        """ivshmem-doorbell (``True``) or ivshmem-plain."""
        return self._doorbell

    @property
    def interrupts(self) -> str | None:
        return self._interrupts

    @property
    def msix(self) -> bool:
        return self._interrupts == "msix"

    @property
    def vectors(self) -> int:
        return self._vectors

    @property
    def shm_size(self) -> int:
        return self._shm_size

    @property
    def config_init(self) -> tuple[int, ...]:
        """Reset value of every config dword (index = offset / 4)."""
        return self._cfg.init

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self._cfg
        vectors = self._vectors
        shm_bits = self._shm_size.bit_length() - 1

        # -- configuration registers: only dwords with writable bits are stored ---------------
        regs = {i: Signal(32, init=cfg.init[i], name=f"cfg_{4 * i:02x}") for i in cfg.writable()}

        def dword(i: int) -> object:
            return regs[i] if i in regs else Const(cfg.init[i], 32)

        command = regs[CFG.COMMAND // 4][:16]
        mem_en = command[_bit(CMD.MEMORY)]
        master = command[_bit(CMD.MASTER)]
        intx_disable = command[_bit(CMD.INTX_DISABLE)]
        if self.msix:
            ctrl_shift = 8 * (MSIX_CAP.control_offset % 4)
            ctrl = regs[MSIX_CAP.control_offset // 4][ctrl_shift : ctrl_shift + 16]
            msix_en = ctrl[_bit(MSIX_CAP.ENABLE)]
            fmasked = ~msix_en | ctrl[_bit(MSIX_CAP.MASKALL)]
        else:
            msix_en = Const(0)
            fmasked = Const(1)

        # -- latched request and completion ---------------------------------------------------
        r = Signal(Request)
        cpl = Signal(Completion)
        m.d.comb += self.cpl.payload.eq(cpl)
        lane_mask = Cat(*(r.be[i].replicate(8) for i in range(4)))
        cpu_access = Signal()
        w_shifted = Signal(32)  # a narrow write's bytes moved down to bit 0, as QEMU passes them
        with m.Switch(r.be):
            for mask in _CPU_MASKS:
                with m.Case(mask):
                    lane = (mask & -mask).bit_length() - 1
                    size = mask.bit_length() - lane
                    m.d.comb += [
                        cpu_access.eq(1),
                        w_shifted.eq(r.data[8 * lane : 8 * (lane + size)]),
                    ]

        # -- BAR decode -----------------------------------------------------------------------
        hits: dict[int, Signal] = {}
        for bar, size in self._bars:
            width = 64 if bar.is64 else 32
            low = size.bit_length() - 1
            if bar.is64:
                raw = Cat(dword(bar.offset // 4), dword(bar.offset // 4 + 1))
            else:
                raw = dword(bar.offset // 4)
            base = raw[low:width]
            decodes = mem_en & (base != 0) & (base != (1 << (width - low)) - 1)
            hit = Signal(name=f"hit_bar{bar.index}")
            m.d.comb += hit.eq(decodes & (r.addr[low:] == base))
            hits[bar.index] = hit

        # -- state ----------------------------------------------------------------------------
        intrmask = Signal(32, init=_REGS.IntrMask.reset)
        intrstatus = Signal(32, init=_REGS.IntrStatus.reset)
        intx_state = Signal()
        if self._interrupts == "intx":
            m.d.comb += intx_state.eq((intrstatus & intrmask) != 0)
        m.d.comb += self.intx.eq(intx_state & ~intx_disable)

        pba = Signal(vectors)
        vmask = Signal(vectors, init=(1 << vectors) - 1)
        deliverable = Signal(vectors)
        m.d.comb += deliverable.eq(pba & ~Mux(fmasked, (1 << vectors) - 1, vmask))
        dv_vec = Signal(range(vectors))
        for i in reversed(range(vectors)):
            with m.If(deliverable[i]):
                m.d.comb += dv_vec.eq(i)
        dv_any = deliverable.any()

        bad_peer = Signal(32)
        bad_vector = Signal(32)
        bad_access = Signal(32)
        events_dropped = Signal(32)
        m.d.comb += [
            self.doorbell_bad_peer.eq(bad_peer),
            self.doorbell_bad_vector.eq(bad_vector),
            self.bad_access.eq(bad_access),
            self.events_dropped.eq(events_dropped),
        ]

        # Outbound doorbells: a FIFO between the register write and the transport.
        db_width = Shape.cast(Doorbell).width
        fifo = add_doorbell_queue(m, self, self._doorbell_depth)
        pending_db = Signal(db_width)
        m.d.comb += self.peers.peer.eq(pending_db[DOORBELL.peer.lsb :])
        db_vector = pending_db[DOORBELL.vector.lsb : DOORBELL.vector.lsb + DOORBELL.vector.width]

        # MSI-X table: address low/high and data of every vector in one memory; masks in FFs.
        entry_lanes = {
            MSIX_ENTRY.MsgAddrLo.offset // 4: 0,
            MSIX_ENTRY.MsgAddrHi.offset // 4: 1,
            MSIX_ENTRY.MsgData.offset // 4: 2,
        }
        ctrl_field = MSIX_ENTRY.VectorCtrl.offset // 4
        entry_words = MSIX_ENTRY.size // 4
        m.submodules.msix_table = table = Memory(shape=unsigned(96), depth=vectors, init=[])
        t_rd = table.read_port()
        t_wr = table.write_port(granularity=32)
        msi_vec = Signal(range(vectors))

        bar1_word = r.addr[2:12]
        t_vector = bar1_word[2:]
        t_field = bar1_word[:2]
        in_table = bar1_word < vectors * entry_words
        pba_first = MSIX_BAR.pba // 4
        pba_words = MSIX_BAR.pba_size(vectors) // 4
        in_pba = (bar1_word >= pba_first) & (bar1_word < pba_first + pba_words)
        pba_word = Signal(32)
        with m.Switch(bar1_word - pba_first):
            for k in range(pba_words):
                with m.Case(k):
                    m.d.comb += pba_word.eq(pba[32 * k : 32 * (k + 1)])

        m.d.comb += [
            t_rd.addr.eq(t_vector),
            t_wr.addr.eq(t_vector),
            t_wr.data.eq(r.data.replicate(3)),
            self.msi.payload.addr.eq(t_rd.data[:64]),
            self.msi.payload.data.eq(t_rd.data[64:96]),
        ]

        ivposition = Const(0, 32)
        if self._doorbell:
            ivposition = Mux(self.ident.valid, self.ident.id, _REGS.IVPosition.reset)

        def respond(status: CplStatus = CplStatus.SC, data: object = 0) -> None:
            m.d.sync += [cpl.status.eq(status), cpl.data.eq(data)]
            m.next = "RESP"

        reg_index = r.addr[2 : (_REGS.size - 1).bit_length()]
        cfg_index = r.addr[2:12]

        with m.FSM(name="ep"):
            with m.State("IDLE"):
                with m.If(dv_any):
                    # A pending, unmasked vector goes out before anything else happens.
                    m.d.sync += pba.bit_select(dv_vec, 1).eq(0)
                    with m.If(master):
                        m.d.comb += t_rd.addr.eq(dv_vec)
                        m.d.sync += msi_vec.eq(dv_vec)
                        m.next = "MSI"
                with m.Elif(self.event.valid):
                    m.d.comb += self.event.ready.eq(1)
                    ev = self.event.payload.vector
                    own = ev < vectors
                    if self._interrupts == "intx":
                        with m.If(own):
                            m.d.sync += intrstatus.eq(1)
                        with m.Else():
                            m.d.sync += events_dropped.eq(events_dropped + 1)
                    elif self.msix:
                        with m.If(own & msix_en):
                            m.d.sync += pba.bit_select(ev[: len(dv_vec)], 1).eq(1)
                        with m.Else():
                            m.d.sync += events_dropped.eq(events_dropped + 1)
                    else:
                        m.d.sync += events_dropped.eq(events_dropped + 1)
                with m.Elif(self.req.valid):
                    m.d.comb += self.req.ready.eq(1)
                    m.d.sync += r.eq(self.req.payload)
                    m.next = "EXEC"

            with m.State("MSI"):
                m.d.comb += [t_rd.addr.eq(msi_vec), self.msi.valid.eq(1)]
                with m.If(self.msi.ready):
                    m.next = "IDLE"

            with m.State("EXEC"):
                with m.Switch(r.kind):
                    with m.Case(ReqKind.CFG_READ):
                        value = Signal(32)
                        with m.Switch(cfg_index):
                            for i in range(CONFIG_SIZE // 4):
                                if i == CFG.STATUS // 4:
                                    shift = 8 * (CFG.STATUS % 4) + _bit(STATUS.INTERRUPT)
                                    with m.Case(i):
                                        m.d.comb += value.eq(dword(i) | (intx_state << shift))
                                elif i in regs or cfg.init[i]:
                                    with m.Case(i):
                                        m.d.comb += value.eq(dword(i))
                        extended = cfg_index >= CONFIG_SIZE // 4
                        respond(data=Mux(extended, 0xFFFF_FFFF, value))
                    with m.Case(ReqKind.CFG_WRITE):
                        with m.Switch(cfg_index):
                            for i, reg in regs.items():
                                with m.Case(i):
                                    wm = Const(cfg.wmask[i], 32) & lane_mask
                                    m.d.sync += reg.eq(reg & ~wm | r.data & wm)
                        respond()
                    with m.Case(ReqKind.MEM_READ, ReqKind.MEM_WRITE):
                        write = r.kind == ReqKind.MEM_WRITE
                        with m.If(hits[BARS.regs.index]):
                            self._bar0(m, r, write, cpu_access, lane_mask, w_shifted, reg_index,
                                       respond, intrmask, intrstatus, ivposition, pending_db,
                                       bad_access, bad_peer)  # fmt: skip
                        if self.msix:
                            with m.Elif(hits[BARS.msix.index]):
                                with m.If(r.be != 0b1111):
                                    with m.If(r.be != 0):
                                        m.d.sync += bad_access.eq(bad_access + 1)
                                    respond()
                                with m.Elif(in_table):
                                    with m.If(t_field == ctrl_field):
                                        with m.If(write):
                                            m.d.sync += vmask.bit_select(t_vector, 1).eq(
                                                r.data[_bit(MSIX_BAR.mask.mask)]
                                            )
                                            respond()
                                        with m.Else():
                                            respond(data=vmask.bit_select(t_vector, 1))
                                    with m.Elif(write):
                                        with m.Switch(t_field):
                                            for field, lane in entry_lanes.items():
                                                with m.Case(field):
                                                    m.d.comb += t_wr.en.eq(1 << lane)
                                        respond()
                                    with m.Else():
                                        m.next = "TABLE_READ"
                                with m.Elif(in_pba & ~write):
                                    respond(data=pba_word)
                                with m.Else():
                                    respond()
                        with m.Elif(hits[BARS.shm.index]):
                            m.next = "SHM_REQUEST"
                        with m.Else():
                            respond(CplStatus.UR)

            with m.State("TABLE_READ"):
                with m.Switch(t_field):
                    for field, lane in entry_lanes.items():
                        with m.Case(field):
                            respond(data=t_rd.data[32 * lane : 32 * (lane + 1)])

            with m.State("QUERY"):
                m.d.comb += self.peers.req.eq(1)
                with m.If(self.peers.ack):
                    with m.If(self.peers.vectors == 0):
                        m.d.sync += bad_peer.eq(bad_peer + 1)
                        respond()
                    with m.Elif(db_vector >= self.peers.vectors):
                        m.d.sync += bad_vector.eq(bad_vector + 1)
                        respond()
                    with m.Else():
                        m.next = "PUSH"

            with m.State("PUSH"):
                m.d.comb += [fifo.w_en.eq(1), fifo.w_data.eq(pending_db)]
                with m.If(fifo.w_rdy):
                    respond()

            with m.State("SHM_REQUEST"):
                m.d.comb += [
                    self.mem.valid.eq(1),
                    self.mem.addr.eq(r.addr[2:shm_bits]),
                    self.mem.we.eq(r.kind == ReqKind.MEM_WRITE),
                    self.mem.w_data.eq(r.data),
                    self.mem.sel.eq(r.be),
                ]
                with m.If(self.mem.ready):
                    with m.If(r.kind == ReqKind.MEM_WRITE):
                        respond()
                    with m.Else():
                        m.next = "SHM_READ"

            with m.State("SHM_READ"):
                with m.If(self.mem.r_valid):
                    respond(data=self.mem.r_data)

            with m.State("RESP"):
                m.d.comb += self.cpl.valid.eq(1)
                with m.If(self.cpl.ready):
                    m.next = "IDLE"
        return m

    def _bar0(  # type: ignore[no-untyped-def]
        self, m, r, write, cpu_access, lane_mask, w_shifted, reg_index, respond,
        intrmask, intrstatus, ivposition, pending_db, bad_access, bad_peer,
    ) -> None:  # fmt: skip
        """The BAR0 register access of the request in ``r`` (inside the EXEC state)."""
        with m.If(r.be == 0):
            respond()
        with m.Elif(~cpu_access):
            m.d.sync += bad_access.eq(bad_access + 1)
            respond()
        with m.Elif(write):
            respond()
            with m.Switch(reg_index):
                for reg in _REGS:
                    with m.Case(reg.offset >> 2):
                        if reg is _REGS.IntrMask:
                            m.d.sync += intrmask.eq(w_shifted)
                        elif reg is _REGS.IntrStatus:
                            m.d.sync += intrstatus.eq(w_shifted)
                        elif reg is _REGS.Doorbell:
                            if self._doorbell:
                                vec = DOORBELL.vector
                                keep = (
                                    ~vec.mask & 0xFFFF_FFFF | ((1 << _VECTOR_BITS) - 1) << vec.lsb
                                )
                                m.d.sync += pending_db.eq(w_shifted & keep)
                                m.next = "QUERY"  # overrides respond(): completes once queued
                            else:
                                m.d.sync += bad_peer.eq(bad_peer + 1)
                        elif reg is not _REGS.IVPosition:
                            raise NotImplementedError(f"no HDL behaviour for writes to {reg.name}")
        with m.Else():
            value = Signal(32)
            with m.Switch(reg_index):
                for reg in _REGS:
                    with m.Case(reg.offset >> 2):
                        if reg is _REGS.IntrMask:
                            m.d.comb += value.eq(intrmask)
                        elif reg is _REGS.IntrStatus:
                            m.d.comb += value.eq(intrstatus)
                            with m.If(r.be[0]):
                                m.d.sync += intrstatus.eq(0)
                        elif reg is _REGS.IVPosition:
                            m.d.comb += value.eq(ivposition)
                        elif reg is not _REGS.Doorbell:
                            raise NotImplementedError(f"no HDL behaviour for reads of {reg.name}")
            respond(data=Mux(r.be[0], value & lane_mask, 0))
