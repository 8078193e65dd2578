"""The shared-memory layout of ivshmem revision 2: State Table, R/W section, output sections.

One definition for the server (which validates its options against it), the peer
library (which maps each section with the right protection), the device model and
the HDL (which enforce it in the BAR2 window) and the co-simulation bridge::

    +-----------------------------+  shm_size
    | output section of peer n-1  |  output_section_size each
    :             ...             :
    | output section of peer 0    |
    +-----------------------------+  rw.end
    | R/W section                 |  shm_size - state table - n x output
    +-----------------------------+  state_table_size
    | State Table (u32 per peer)  |  read-only to every peer
    +-----------------------------+  0

Every size is a multiple of the 4 KiB page, so that each section can be mapped
with its own protection. The revision 2 server protocol does not carry the State
Table size: it is one page, which holds the states of at most 1024 peers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAX_PEERS_PROTOCOL",
    "MAX_PEERS_REGISTER",
    "MIN_PEERS",
    "PAGE_SIZE",
    "STATE_ENTRY_SIZE",
    "STATE_TABLE_SIZE",
    "Layout",
    "Section",
    "page_align",
]

#: The page every section size is a multiple of.
PAGE_SIZE = 4096
#: Bytes per peer in the State Table (a little-endian u32 state).
STATE_ENTRY_SIZE = 4
#: The State Table size implied by the revision 2 server protocol: one page.
STATE_TABLE_SIZE = PAGE_SIZE
#: The most peers that State Table holds.
MAX_PEERS_PROTOCOL = STATE_TABLE_SIZE // STATE_ENTRY_SIZE
#: The Maximum Peers register's lower bound (drivers refuse fewer).
MIN_PEERS = 2
#: ... and its upper bound (IDs are 16 bits).
MAX_PEERS_REGISTER = 0x10000


def page_align(size: int) -> int:
    """``size`` rounded up to a multiple of :data:`PAGE_SIZE`."""
    return -(-size // PAGE_SIZE) * PAGE_SIZE


@dataclass(frozen=True, slots=True)
class Section:
    """One section: ``offset`` and ``size`` in bytes from the start of the shared memory."""

    offset: int
    size: int

    @property
    def end(self) -> int:
        """First byte after the section."""
        return self.offset + self.size

    def __contains__(self, address: object) -> bool:
        return isinstance(address, int) and self.offset <= address < self.end


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each section of a revision 2 shared memory lies.

    Parameters
    ----------
    shm_size : int
        Size of the whole shared memory in bytes.
    max_peers : int
        Number of peers (2..65536), one output section and one State Table entry each.
    output_section_size : int
        Size of each output section (0: none), a page multiple.
    state_table_size : int
        Size of the State Table, a page multiple holding ``4 x max_peers`` bytes.

    Raises
    ------
    ValueError
        With a one-line reason when the sections do not fit or are not page multiples.
    """

    shm_size: int
    max_peers: int
    output_section_size: int = 0
    state_table_size: int = STATE_TABLE_SIZE

    def __post_init__(self) -> None:
        if not MIN_PEERS <= self.max_peers <= MAX_PEERS_REGISTER:
            raise ValueError(
                f"max peers must be {MIN_PEERS}..{MAX_PEERS_REGISTER}, not {self.max_peers}"
            )
        for what, size in (
            ("output section size", self.output_section_size),
            ("State Table size", self.state_table_size),
        ):
            if size < 0 or size % PAGE_SIZE:
                raise ValueError(f"{what} must be a multiple of {PAGE_SIZE}, not {size}")
        if self.state_table_size < STATE_ENTRY_SIZE * self.max_peers:
            raise ValueError(
                f"a State Table of {self.state_table_size} bytes holds "
                f"{self.state_table_size // STATE_ENTRY_SIZE} peers, not {self.max_peers}"
            )
        need = self.state_table_size + self.max_peers * self.output_section_size
        if self.shm_size < need:
            raise ValueError(
                f"shared memory of {self.shm_size} bytes cannot hold the State Table "
                f"({self.state_table_size}) and {self.max_peers} output sections of "
                f"{self.output_section_size}: it needs at least {need} bytes"
            )

    @property
    def state_table(self) -> Section:
        """The State Table: one u32 per peer, read-only to peers."""
        return Section(0, self.state_table_size)

    @property
    def rw(self) -> Section:
        """The R/W section, writable by every peer (may be empty)."""
        size = self.shm_size - self.state_table_size - self.max_peers * self.output_section_size
        return Section(self.state_table_size, size)

    @property
    def outputs(self) -> Section:
        """All output sections together."""
        start = self.rw.end
        return Section(start, self.max_peers * self.output_section_size)

    def output(self, peer: int) -> Section:
        """The output section of ``peer``: writable by it, read-only to the others."""
        if not 0 <= peer < self.max_peers:
            raise ValueError(f"peer {peer} outside 0..{self.max_peers - 1}")
        return Section(self.rw.end + peer * self.output_section_size, self.output_section_size)

    def state_offset(self, peer: int) -> int:
        """Offset of ``peer``'s State Table entry."""
        if not 0 <= peer < self.max_peers:
            raise ValueError(f"peer {peer} outside 0..{self.max_peers - 1}")
        return STATE_ENTRY_SIZE * peer

    def writable(self, peer: int, offset: int) -> bool:
        """Whether ``peer`` may write the byte at ``offset``: R/W or its own output section."""
        if offset in self.rw:
            return True
        if offset in self.outputs and self.output_section_size:
            return (offset - self.outputs.offset) // self.output_section_size == peer
        return False
