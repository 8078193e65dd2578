"""The environment of an on-chip domain, cycle by cycle, for any simulator.

:class:`DomainEnv` plays the devices on every port of an ``IvshmemDomain``:
doorbell sources, inbound event sinks (fast, slow or stalled), known-peer
queries and shared-memory masters, and checks each transfer against the model
(``ivhw.sw.models.domain.Domain``) at the clock edge where it happens. It knows
nothing about the simulator: a harness calls, once per cycle,

1. ``env.inputs()`` and drives those values,
2. reads every name in ``env.outputs`` once the logic has settled (before the edge),
3. ``env.edge(values)``, then lets the clock tick.

``tests/test_domain.py`` runs it on Amaranth's simulator, ``tests/hdl/domain_tb.py``
on Icarus and Verilator through cocotb; the scenarios (``directed``, ``random_mix``,
``contention``, ``slow_sink``) are plain functions that load the queues, so all
three simulators run the same traffic for the same seed.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ivhw.sw.models.domain import Domain
from ivhw.sw.regmap import DOORBELL

__all__ = ["SCENARIOS", "DomainEnv", "MemOp", "run"]

#: The ports of the test domain: IDs spread over the 16 bits, vector counts from 1 to 64.
TEST_PORTS = ((3, 8), (10, 4), (0x1234, 64), (0, 1))
#: Small, so that ports collide on the same words often.
TEST_SHM_SIZE = 256
TEST_EVENT_DEPTH = 2
#: The tiles' domain: (id, vectors) per tile, its memory, the tiles' buses in port order
#: (Wishbone, AXI4-Lite, Wishbone).
TILE_PORTS = ((1, 4), (2, 2), (7, 1))
TILE_SHM_SIZE = 1024
TILE_BUSES = ("a", "b", "c")
#: The SPRAM test domain: two 16K-word banks of two SB_SPRAM256KA each.
SPRAM_SHM_SIZE = 128 << 10
#: IDs no port has.
ABSENT = (1, 2, 0xFFFF, 0x1235)


#: expected data of a read from a word never written in full (``DomainEnv(undefined_memory)``)
_UNDEFINED = -2


@dataclass
class MemOp:
    word: int
    write: bool
    data: int = 0
    sel: int = 0xF


@dataclass
class _Port:
    """What the environment does on one port, and what it saw."""

    doorbells: collections.deque[int] = field(default_factory=collections.deque)
    queries: collections.deque[int] = field(default_factory=collections.deque)
    mem_ops: collections.deque[MemOp] = field(default_factory=collections.deque)
    #: probability that the event sink is ready in a cycle; 0 stalls it
    sink_ready: float = 1.0
    #: probability of an idle cycle before presenting the next doorbell or memory request
    gap: float = 0.0
    # driven now
    db_valid: bool = False
    query_req: bool = False
    query_cycles: int = 0
    mem_valid: bool = False
    event_ready: bool = False
    read_due: int | None = None  # expected data of the read in flight
    read_age: int = 0
    mem_wait: int = 0
    event_seen: int | None = None  # vector presented and not taken yet
    # statistics
    rung: int = 0
    events: int = 0
    db_stalled: int = 0
    max_mem_wait: int = 0
    accesses: int = 0


class DomainEnv:
    """Devices on every port of a domain, and the model that says what must happen.

    Parameters
    ----------
    ports, shm_size
        The domain's parameters (the model gets the same).
    rng : random.Random
        All random choices (sink speeds, gaps) come from it.
    prefix : str
        Prepended to every signal name (the toplevel's name for the domain).
    undefined_memory : bool
        The RAM starts undefined (iCE40 SPRAM): a read of a word not yet written in
        full is not compared; the model's zeros stand for "unknown" there.
    """

    def __init__(
        self,
        rng: random.Random,
        ports: tuple[tuple[int, int], ...] = TEST_PORTS,
        shm_size: int = TEST_SHM_SIZE,
        prefix: str = "",
        undefined_memory: bool = False,
    ) -> None:
        self.rng = rng
        #: words whose every byte has been written (None: all are, the RAM starts at zero)
        self.defined: set[int] | None = set() if undefined_memory else None
        self.model = Domain(ports, shm_size=shm_size)
        self.table = ports
        self.words = shm_size // 4
        self.ports = [_Port() for _ in ports]
        self.cycle = 0
        self._p = prefix
        names = ["doorbell_bad_peer", "doorbell_bad_vector"]
        for i in range(len(ports)):
            names += [
                f"ports__{i}__{name}"
                for name in (
                    "doorbell__ready", "event__valid", "event__payload", "ident__id",
                    "ident__valid", "peers__ack", "peers__vectors", "mem__ready",
                    "mem__r_data", "mem__r_valid",
                )
            ]  # fmt: skip
        #: names the harness reads before every edge (with the prefix)
        self.outputs = [prefix + name for name in names]

    # -- what the harness calls -------------------------------------------------------------

    def inputs(self) -> dict[str, int]:
        """The values to drive in this cycle, by signal name."""
        rng, values = self.rng, {}
        for i, port in enumerate(self.ports):
            p = f"{self._p}ports__{i}__"
            if not port.db_valid and port.doorbells and rng.random() >= port.gap:
                port.db_valid = True
            values[p + "doorbell__valid"] = int(port.db_valid)
            values[p + "doorbell__payload"] = port.doorbells[0] if port.db_valid else 0
            port.event_ready = port.sink_ready > 0 and rng.random() < port.sink_ready
            values[p + "event__ready"] = int(port.event_ready)
            port.query_req = bool(port.queries)
            values[p + "peers__req"] = int(port.query_req)
            values[p + "peers__peer"] = port.queries[0] if port.queries else 0
            if (
                not port.mem_valid
                and port.mem_ops
                and port.read_due is None
                and rng.random() >= port.gap
            ):
                port.mem_valid = True
            op = port.mem_ops[0] if port.mem_valid else MemOp(0, False, 0, 0)
            values[p + "mem__valid"] = int(port.mem_valid)
            values[p + "mem__addr"] = op.word
            values[p + "mem__we"] = int(op.write)
            values[p + "mem__w_data"] = op.data
            values[p + "mem__sel"] = op.sel
        return values

    def edge(self, values: dict[str, int]) -> None:
        """Check what the domain shows before this edge, and apply the transfers of the edge."""
        self.cycle += 1
        get = {name[len(self._p) :]: value for name, value in values.items()}.__getitem__
        where = f"cycle {self.cycle}"
        counters = self.model.counters
        assert get("doorbell_bad_peer") == counters.bad_peer, (
            f"{where}: doorbell_bad_peer {get('doorbell_bad_peer')}, model {counters.bad_peer}"
        )
        assert get("doorbell_bad_vector") == counters.bad_vector, (
            f"{where}: doorbell_bad_vector {get('doorbell_bad_vector')}, "
            f"model {counters.bad_vector}"
        )
        granted = []
        for i, port in enumerate(self.ports):

            def sig(name: str, i: int = i) -> int:
                return get(f"ports__{i}__{name}")

            at = f"{where} port {i}"
            assert sig("ident__valid") == 1 and sig("ident__id") == self.table[i][0], (
                f"{at}: ident {sig('ident__id')} valid {sig('ident__valid')}"
            )
            # Doorbell source.
            if port.db_valid:
                if sig("doorbell__ready"):
                    self.model.ring(i, port.doorbells.popleft())
                    port.db_valid = False
                    port.rung += 1
                else:
                    port.db_stalled += 1
            # Event sink: a presented event stays, unchanged, until taken.
            if sig("event__valid"):
                vector = sig("event__payload")
                if port.event_seen is not None:
                    assert port.event_seen == vector, (
                        f"{at}: event changed from {port.event_seen} to {vector} before ready"
                    )
                port.event_seen = vector
                if port.event_ready:
                    assert self.model.take_event(i, vector), (
                        f"{at}: event on vector {vector}; in flight per source: "
                        f"{self.model.expected_events(i)}"
                    )
                    port.event_seen = None
                    port.events += 1
            else:
                assert port.event_seen is None, f"{at}: event withdrawn before ready"
            # Known-peer query: answered from the table, one cycle after req.
            if port.query_req:
                port.query_cycles += 1
                if sig("peers__ack"):
                    peer = port.queries.popleft()
                    assert sig("peers__vectors") == self.model.query(peer), (
                        f"{at}: query {peer:#x} answered {sig('peers__vectors')}, "
                        f"model {self.model.query(peer)}"
                    )
                    assert port.query_cycles == 2, f"{at}: answer after {port.query_cycles}"
                    port.query_cycles = 0
            else:
                assert not sig("peers__ack"), f"{at}: ack without a query"
            # Memory: read data one cycle after the grant.
            if port.read_due is not None:
                port.read_age += 1
                if sig("mem__r_valid"):
                    assert port.read_age == 1, f"{at}: read data after {port.read_age} cycles"
                    assert port.read_due is _UNDEFINED or sig("mem__r_data") == port.read_due, (
                        f"{at}: read {sig('mem__r_data'):#010x}, model {port.read_due:#010x}"
                    )
                    port.read_due = None
                assert port.read_age < 2, f"{at}: read data missing"
            else:
                assert not sig("mem__r_valid"), f"{at}: read data nobody asked for"
            if port.mem_valid:
                if sig("mem__ready"):
                    granted.append(i)
                    port.max_mem_wait = max(port.max_mem_wait, port.mem_wait)
                    port.mem_wait = 0
                else:
                    port.mem_wait += 1
                    assert port.mem_wait < len(self.ports), (
                        f"{at}: memory request waited {port.mem_wait} cycles"
                    )
            else:
                assert not sig("mem__ready"), f"{at}: memory grant without a request"
        assert len(granted) <= 1, f"{where}: memory granted to ports {granted} at once"
        for i in granted:
            port = self.ports[i]
            op = port.mem_ops.popleft()
            data = self.model.mem_access(op.word, op.write, op.data, op.sel)
            if self.defined is not None and op.write and op.sel == 0xF:
                self.defined.add(op.word)
            if not op.write:
                undefined = self.defined is not None and op.word not in self.defined
                port.read_due, port.read_age = (_UNDEFINED if undefined else data), 0
            port.mem_valid = False
            port.accesses += 1

    def busy(self) -> bool:
        """Whether anything is left to send or in flight."""
        return any(
            port.doorbells or port.queries or port.mem_ops or port.read_due is not None
            or self.model.in_flight(i)
            for i, port in enumerate(self.ports)
        )  # fmt: skip

    def finish(self) -> None:
        """Everything sent was delivered: nothing lost, nothing left."""
        for i, port in enumerate(self.ports):
            assert not self.model.in_flight(i), (
                f"port {i}: events never delivered: {self.model.expected_events(i)}"
            )
            assert not (port.doorbells or port.queries or port.mem_ops), f"port {i}: work left"

    # -- traffic ----------------------------------------------------------------------------

    def ring(self, source: int, peer: int, vector: int) -> None:
        self.ports[source].doorbells.append(DOORBELL.pack(peer, vector))

    def random_doorbell(self, source: int) -> None:
        """A doorbell to a random port (or an absent one), on a valid or a missing vector."""
        rng = self.rng
        if rng.random() < 0.15:
            self.ring(source, rng.choice(ABSENT), rng.randrange(4))
            return
        peer, count = rng.choice(self.table)
        if rng.random() < 0.15:
            vector = rng.choice((count, count + 1, 0xFFFF, rng.randrange(count, 0x10000)))
        else:
            vector = rng.randrange(count)
        self.ring(source, peer, vector)

    def random_mem(self, port: int) -> None:
        rng = self.rng
        word = rng.randrange(self.words) if rng.random() < 0.5 else rng.randrange(4)
        write = rng.random() < 0.5
        self.ports[port].mem_ops.append(
            MemOp(word, write, rng.getrandbits(32), rng.choice((0xF, 0xF, rng.randrange(16))))
        )


async def run(
    env: DomainEnv, step: Callable[[dict[str, int]], Awaitable[dict[str, int]]], limit: int
) -> int:
    """Run ``env`` until idle, a few cycles more, then check nothing was lost; the cycles.

    ``step(inputs)`` drives ``inputs``, returns the values of ``env.outputs`` as they
    are just before the next clock edge, and lets that edge pass.
    """
    cycles, tail = 0, 3  # after idle: nothing may appear from nowhere
    while tail:
        env.edge(await step(env.inputs()))
        cycles += 1
        if not env.busy():
            tail -= 1
        assert cycles < limit, f"still busy after {limit} cycles"
    env.finish()
    return cycles


# -- scenarios: each loads the queues and returns a check to run when idle -------------------


def directed(env: DomainEnv) -> Callable[[], None]:
    """Every query, every port ringing every port (edge vectors), absent IDs, memory lanes."""
    n = len(env.table)
    for i in range(n):
        env.ports[i].queries.extend([peer for peer, _ in env.table] + list(ABSENT))
        for peer, count in env.table:
            for vector in (0, count - 1, count, 0xFFFF):
                env.ring(i, peer, vector)
        for peer in ABSENT:
            env.ring(i, peer, 0)
    # Each port writes its own word with every byte lane, then every port reads all of them.
    for i in range(n):
        for lane in range(4):
            env.ports[i].mem_ops.append(MemOp(i, True, 0x04030201 * (i + 1) + lane, 1 << lane))
        env.ports[i].mem_ops.append(MemOp(i + n, True, 0xA5000000 | i, 0b0101))
    for i in range(n):
        env.ports[i].mem_ops.extend(MemOp(w, False) for w in range(2 * n))
    env.ports[0].mem_ops.append(MemOp(env.words - 1, True, 0xDEADBEEF))
    env.ports[n - 1].mem_ops.append(MemOp(env.words - 1, False))

    def check() -> None:
        c = env.model.counters
        assert c.rings == n * 2 * n, c  # vectors 0 and count - 1 (the same when count is 1)
        assert c.bad_peer == n * len(ABSENT), c
        assert c.bad_vector == n * 2 * n, c

    return check


def random_mix(env: DomainEnv, operations: int = 120) -> Callable[[], None]:
    """Seeded random doorbells, queries and memory on every port; random sink speeds and gaps."""
    rng = env.rng
    for i, port in enumerate(env.ports):
        port.sink_ready = rng.choice((1.0, 0.7, 0.3, 0.1))
        port.gap = rng.choice((0.0, 0.3, 0.7))
        for _ in range(operations):
            kind = rng.random()
            if kind < 0.45:
                env.random_doorbell(i)
            elif kind < 0.9:
                env.random_mem(i)
            else:
                port.queries.append(rng.choice([p for p, _ in env.table] + list(ABSENT)))

    def check() -> None:
        assert env.model.counters.rings > 0

    return check


def contention(env: DomainEnv, operations: int = 60) -> Callable[[], None]:
    """All ports at once, no gaps: every port rings port 2 and hits the same memory words."""
    rng = env.rng
    target, (peer, count) = 2, env.table[2]
    for i, port in enumerate(env.ports):
        for k in range(operations):
            env.ring(i, peer, (i + len(env.table) * k) % count)
            port.mem_ops.append(MemOp(k % 4, rng.random() < 0.5, rng.getrandbits(32), 0xF))

    def check() -> None:
        n = len(env.ports)
        assert env.model.counters.rings == n * operations
        # The arbiter was busy: some port waited for all the others, and none longer.
        assert max(port.max_mem_wait for port in env.ports) == n - 1
        assert sum(port.db_stalled for port in env.ports) > 0
        assert env.ports[target].events == n * operations

    return check


def slow_sink(env: DomainEnv, operations: int = 40) -> Callable[[], None]:
    """Port 1's sink takes an event one cycle in twenty: its sources wait, nothing is lost."""
    n = len(env.ports)
    env.ports[1].sink_ready = 0.05
    peer, count = env.table[1]
    for i in range(n):
        for k in range(operations):
            env.ring(i, peer, k % count)
        env.ring(i, env.table[0][0], 0)  # behind the slow ones: waits for them

    def check() -> None:
        assert env.ports[1].events == n * operations
        stalled = [env.ports[i].db_stalled for i in range(n)]
        assert all(s > operations for s in stalled), stalled

    return check


def sparse_memory(env: DomainEnv, operations: int = 80) -> Callable[[], None]:
    """Memory only, on a few words at both ends of each 16K-word SPRAM bank, every byte lane."""
    rng = env.rng
    words = sorted({w % env.words for w in (0, 1, 2, 0x3FFE, 0x3FFF, 0x4000, 0x4001, 0x7FFF)})
    for i, port in enumerate(env.ports):
        for k in range(operations):
            word = rng.choice(words)
            if k < 4 and i == 0:
                port.mem_ops.append(MemOp(word, True, rng.getrandbits(32)))
            else:
                write = rng.random() < 0.5
                sel = rng.choice((0xF, 0xF, 1, 2, 4, 8, 3, 0xC, rng.randrange(16)))
                port.mem_ops.append(MemOp(word, write, rng.getrandbits(32), sel))

    def check() -> None:
        assert env.defined is None or len(env.defined) >= 4, env.defined
        assert sum(port.accesses for port in env.ports) == len(env.ports) * operations

    return check


SCENARIOS: dict[str, Callable[..., Callable[[], None]]] = {
    "directed": directed,
    "random_mix": random_mix,
    "contention": contention,
    "slow_sink": slow_sink,
    "sparse_memory": sparse_memory,
}
