"""Differential: the register script (``ivhw.sw.regscript``) against QEMU 7.2 and our model.

QEMU's ``ivshmem-doorbell`` joins our server next to a host peer; the host peer
rings QEMU's vectors for the script's events and waits until QEMU has read
the eventfd, so every event is handled before the next operation. The same
script then runs against ``ivhw.sw.models.pci.IvshmemPciModel`` and every
operation's result is compared. A difference must be fixed in the model or
listed in :data:`DOCUMENTED` with its reason in ``docs/differential.md``; a
listed difference that no longer occurs fails too, so the list stays true.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from qemu_domain import Domain, wait_consumed
from support import require_tool

from ivhw.sw.models.pci import IvshmemPciModel
from ivhw.sw.pcicfg import QEMU_DOORBELL_HEADER
from ivhw.sw.peer import PeerVector
from ivhw.sw.qtest import QemuIvshmem
from ivhw.sw.regscript import (
    MSG_BASE,
    MSG_DATA,
    Kind,
    ModelTarget,
    Op,
    QemuTarget,
    Result,
    compare,
    doorbell_script,
    plain_script,
    record_qemu,
    run,
)

pytestmark = pytest.mark.qemu

VECTORS = 2
SHM_SIZE = 1 << 20

#: Operations whose results legitimately differ between QEMU 7.2 and the model,
#: each explained in docs/differential.md.
_SCRATCH = "QEMU makes config 40h..FFh outside its capability scratch RAM; the model reads 0"
DOCUMENTED: dict[str, str] = {
    "ro.rsvd80.rd": _SCRATCH,
    "ro.rsvdfc.rd": _SCRATCH,
    "msix.e0.ctrl.ones.rd": "QEMU stores Vector Control bits 31:1; the model reads them 0",
}
#: The same for ``ivshmem-plain`` (no capability: 40h..4Bh is scratch RAM too).
DOCUMENTED_PLAIN: dict[str, str] = {
    "ro.msix_hdr.rd": _SCRATCH,
    "ro.msix_table.rd": _SCRATCH,
    "ro.msix_pba.rd": _SCRATCH,
    "ro.rsvd80.rd": _SCRATCH,
    "ro.rsvdfc.rd": _SCRATCH,
}


class Recorded:
    """One script run against QEMU: the device's ID, the script and its results."""

    def __init__(self, peer_id: int, script: list[Op], results: list[Result]) -> None:
        self.peer_id = peer_id
        self.script = script
        self.results = results

    def result(self, name: str) -> Result:
        """The result of the operation called ``name``."""
        for op, result in zip(self.script, self.results, strict=True):
            if op.name == name:
                return result
        raise KeyError(name)


def run_qemu(dom: Domain, *, self_ring: bool = False) -> Recorded:
    """Start a QEMU in ``dom`` and play the script against it (events from the host peer)."""
    host = dom.peer()
    vm = dom.qemu(setup=False)
    dom.wait_peer_count(len(dom.peers) + len(dom.vms))
    qemu_id = dom.server.peer_ids[-1]
    wanted = PeerVector(qemu_id, VECTORS - 1)
    if host.peers.get(qemu_id) != VECTORS:
        host.wait(lambda e: e == wanted, timeout=5)

    def inject(vector: int) -> None:
        host.ring(qemu_id, vector)
        wait_consumed(host.eventfds(qemu_id)[vector])

    script = doorbell_script(VECTORS, qemu_id)
    target = QemuTarget(vm, None if self_ring else inject)
    return Recorded(qemu_id, script, run(script, target))


@pytest.fixture(scope="module")
def qemu() -> Iterator[Recorded]:
    require_tool("qemu-system-x86_64")
    with Domain(vectors=VECTORS, shm_size=SHM_SIZE) as dom:
        yield run_qemu(dom)


def test_qemu_matches_the_spec(qemu: Recorded) -> None:
    """Pin what QEMU 7.2 answered, so that a changed QEMU shows up here first."""
    dump = [qemu.result(f"reset.cfg{off:02x}") for off in range(0, 0x50, 4)]
    assert dump == list(QEMU_DOORBELL_HEADER)
    assert qemu.result("size.bar0.mask") == 0xFFFF_FF00  # 256 bytes
    assert qemu.result("size.bar1.mask") == 0xFFFF_F000  # 4 KiB
    assert qemu.result("size.bar2.mask") == (~(SHM_SIZE - 1) & 0xFFFF_FFFF) | 0xC
    assert qemu.result("size.bar3.mask") == 0xFFFF_FFFF  # BAR2's high dword
    assert qemu.result("bar0.reset.08") == qemu.peer_id  # IVPosition
    assert qemu.result("irq.disabled.msgs") == ()
    assert qemu.result("irq.enabled.v1.msgs") == ((MSG_BASE + 16, MSG_DATA | 1),)
    assert qemu.result("irq.masked.pba") == 1 << (VECTORS - 1)
    assert qemu.result("irq.unmasked.msgs") == ((MSG_BASE + 16, MSG_DATA | 1),)
    assert qemu.result("irq.nomaster.msgs") == qemu.result("irq.master.msgs") == ()


def test_self_ring_equals_peer_injection(qemu: Recorded) -> None:
    """The QEMU target's default event (the device rings itself) is as good as a peer's ring."""
    with Domain(vectors=VECTORS, shm_size=SHM_SIZE) as dom:
        again = run_qemu(dom, self_ring=True)
    assert again.peer_id == qemu.peer_id
    assert compare(qemu.script, qemu.results, again.results, ("peer", "self")) == []


def test_model_matches_qemu(qemu: Recorded) -> None:
    model = IvshmemPciModel(doorbell=True, vectors=VECTORS, shm_size=SHM_SIZE)
    model.set_id(qemu.peer_id)
    check(qemu, run(qemu.script, ModelTarget(model)), DOCUMENTED)


def check(qemu: Recorded, results: list[Result], documented: dict[str, str]) -> None:
    """Every difference is documented, and every documented difference still occurs."""
    differences = compare(qemu.script, qemu.results, results)
    differing = {line.split(":", 1)[0] for line in differences}
    undocumented = [line for line in differences if line.split(":", 1)[0] not in documented]
    stale = sorted(set(documented) - differing)
    assert not undocumented, "QEMU and the model differ:\n" + "\n".join(undocumented)
    assert not stale, f"documented differences that no longer occur: {stale}"


@pytest.mark.parametrize("vectors", [1, 7])
def test_model_matches_qemu_other_vector_counts(vectors: int) -> None:
    """Table size, PBA bits and the last vector's mask follow the vector count in both."""
    require_tool("qemu-system-x86_64")
    script, results = record_qemu(vectors)
    model = IvshmemPciModel(doorbell=True, vectors=vectors, shm_size=SHM_SIZE)
    peer_id = results[[op.name for op in script].index("bar0.reset.08")]
    assert isinstance(peer_id, int)
    model.set_id(peer_id)
    check(Recorded(peer_id, script, results), run(script, ModelTarget(model)), DOCUMENTED)


@pytest.fixture(scope="module")
def qemu_plain() -> Iterator[Recorded]:
    require_tool("qemu-system-x86_64")
    script = plain_script()
    with QemuIvshmem(shm_size=SHM_SIZE) as vm:
        yield Recorded(0, script, run(script, QemuTarget(vm)))


def test_plain_model_matches_qemu(qemu_plain: Recorded) -> None:
    model = IvshmemPciModel(doorbell=False, shm_size=SHM_SIZE)
    check(qemu_plain, run(qemu_plain.script, ModelTarget(model)), DOCUMENTED_PLAIN)


def test_script_is_well_formed() -> None:
    script = doorbell_script(VECTORS, 0)
    names = [op.name for op in script]
    assert len(names) == len(set(names))
    kinds = {op.kind for op in script}
    assert kinds == set(Kind)
