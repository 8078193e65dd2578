"""Smoke test of ``bench.rev2``: a small join on both revisions, every message delivered.

No timing assertions: only that both servers deliver all of a join's messages in the
counting swarm's checked order, and that the round trips run and report numbers.
"""

from __future__ import annotations

import pytest

from bench import rev2

__all__: list[str] = []


@pytest.mark.parametrize("revision", [1, 2])
def test_join_delivers_everything(revision: int) -> None:
    row = rev2.measure_join(revision, 8, 2)
    handshake = 3 if revision == 1 else 1
    assert row.complete and row.delivered == row.expected == 8 * (handshake + 8 * 2)


def test_round_trips_report_every_kind() -> None:
    rows = rev2._round_trips(samples=20, rounds=1)
    assert [name for name, *_ in rows] == ["rev 1 doorbell", "rev 2 doorbell", "rev 2 state"]
    assert all(median > 0 for _name, median, _p90, _p99 in rows)
