"""bench.domain_latency: the cycle counts docs/domain.md quotes; fair shares under contention."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.domain_latency import contention, paths  # noqa: E402

__all__: list[str] = []


def test_paths_take_the_documented_cycles() -> None:
    assert paths() == {
        "flat DOORBELL: bus request to ack": 4,
        "flat DOORBELL: bus request to the other device's IRQ": 9,
        "flat shm write: bus request to ack": 2,
        "flat shm read: bus request to ack": 3,
        "domain: known-peer req to ack": 1,
        "domain: doorbell taken to event valid at the target": 2,
        "domain: memory request to grant (alone)": 0,
        "domain: memory read grant to r_valid": 1,
    }


def test_contention_shares_fairly_at_full_rate() -> None:
    stats = contention(4, 80)
    assert stats["cycles per event at the target"] <= 1.05
    assert stats["cycles per memory access"] == 1.0
    assert stats["doorbells taken per source, fewest / most"] >= 0.95
    assert stats["memory grants per port, fewest / most"] >= 0.95
    assert stats["longest memory wait"] == 3
