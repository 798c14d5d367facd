"""What a node counts while it serves: plain integers on the request path, read when
asked (``INFO``, ``pyrokv status``, the metrics endpoint).

Nothing here locks: each counter is bumped by the thread that owns it (the text
server's event loop, or a Pyro5 worker for the ``pyro`` counts, where a lost
increment under contention costs one count, not correctness), and readers take a
snapshot. That keeps the cost on the hot path to an integer increment.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter

__all__ = ["LATENCY_BOUNDS", "Stats", "VerbCounts"]

#: Upper bounds (seconds) of the latency histogram's buckets; the last is +Inf.
LATENCY_BOUNDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class VerbCounts:
    """Requests of one kind, by verb: ``ok[verb]`` and ``error[verb]``."""

    __slots__ = ("error", "ok")

    def __init__(self) -> None:
        self.ok: Counter[str] = Counter()
        self.error: Counter[str] = Counter()

    def total(self) -> int:
        """Every request counted, whatever its outcome."""
        return sum(self.ok.values()) + sum(self.error.values())


class Stats:
    """The counters of one node."""

    def __init__(self) -> None:
        self.started = time.time()
        self._started = time.monotonic()
        #: requests that arrived from clients (text and Pyro5), by verb and outcome
        self.requests = VerbCounts()
        #: requests this node served as the owner for another node
        self.peer_requests = VerbCounts()
        #: requests sent on to another owner, by owner
        self.routed: Counter[str] = Counter()
        #: the latency histogram: counts per bucket of LATENCY_BOUNDS (+Inf last)
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        #: local requests answered on the text port, by verb; folded into
        #: ``requests`` when read (the hot path bumps a list cell, not a Counter)
        self.local: dict[str, list[int]] = {}

    def cell(self, verb: str) -> list[int]:
        """The [ok, error] counts of ``verb``'s local text requests, bumped in place."""
        return self.local.setdefault(verb, [0, 0])

    def observe(self, seconds: float, count: int = 1) -> None:
        """``count`` requests took ``seconds`` each."""
        self.latency[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += count
        self.latency_sum += seconds * count
        self.latency_count += count

    def uptime(self) -> float:
        """Seconds since the node started."""
        return time.monotonic() - self._started

    def client_requests(self) -> VerbCounts:
        """``requests`` with the local text counts folded in (a new object)."""
        merged = VerbCounts()
        merged.ok.update(self.requests.ok)
        merged.error.update(self.requests.error)
        for verb, (ok, error) in list(self.local.items()):
            merged.ok[verb] += ok
            merged.error[verb] += error
        return merged

    def served(self) -> int:
        """Every request counted so far: from clients, from other nodes, sent on."""
        local = sum(ok + error for ok, error in list(self.local.values()))
        return (
            self.requests.total()
            + self.peer_requests.total()
            + sum(self.routed.values())
            + local
        )

    def errors(self) -> int:
        """Requests from clients that failed."""
        return sum(self.client_requests().error.values())
