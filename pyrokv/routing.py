"""The routing decision: where a request goes from this node. Pure: no network.

A request's fate on a node is one of: run here (:data:`HERE`), go on to owner X
with the path visited so far (:class:`Hop`), or an error (:class:`NoRouteError`:
no entry; :class:`RoutingLoopError`: a revisit or too many hops).
:meth:`Routing.decide` computes it, once per request per node, for every path a
request can take: a text request, a ``FWD`` line from another node, a Pyro5
``TaskRunner.route``/``route_batch``, a ``Router.route`` from a program. The
loop check, the hop limit and the time margin a hop keeps for itself
(:func:`inner_budget`) are written here and nowhere else.

A request that arrives from a client (no path yet) can only go one way per first
byte of its bucket name, so those decisions are computed once per table, by the
same function, into :attr:`Routing.fresh`: the text server's hot path reads one
slot of it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Final, NamedTuple

from .defaults import DEFAULT_HOP_LIMIT, DEFAULT_TIMEOUT
from .errors import RoutingLoopError
from .table import RoutingTable

__all__ = [
    "DEFAULT_HOP_LIMIT",
    "DEFAULT_TIMEOUT",
    "HERE",
    "WAIT",
    "Decision",
    "Gate",
    "Here",
    "Hop",
    "Routing",
    "Wait",
    "inner_budget",
]


class Here:
    """The decision "run it on this node"; :data:`HERE` is its one instance."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "HERE"


HERE: Final = Here()


class Wait:
    """The decision "this node owns it, but its data is still arriving": the request
    waits until the hand-off of its range is done (docs/routing.md);
    :data:`WAIT` is its one instance."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "WAIT"


WAIT: Final = Wait()


class Hop(NamedTuple):
    """The decision "send it on": to ``owner``, having visited ``path`` (this node
    last), decided by the table of ``version`` (which the request carries along)."""

    owner: str
    path: tuple[str, ...]
    version: int = 0


Decision = Here | Hop | Wait


def inner_budget(left: float) -> float:
    """The time a hop gives the next one when it has ``left`` seconds: a little less.

    The next node gives up first and says why, so the node nearest a fault reports
    it, naming the slow or missing node, before the caller's own clock runs out.
    """
    return left - (0.5 if left > 5.0 else left * 0.1)  # min(0.5, left * 0.1)


class Routing:
    """Decides where requests go from node ``node`` (None: a client, which always sends).

    ``runs_here`` False: this node cannot run tasks itself (a router built without a
    task runner), so even its own buckets are sent on. ``table`` may be replaced at any time (an atomic swap: a request uses the table
    it read). ``timeout`` caps the time a request may take from here; ``hop_limit``
    caps how many nodes it may pass.
    """

    __slots__ = (
        "_held",
        "_table",
        "fresh",
        "gate",
        "hashed",
        "hop_limit",
        "node",
        "runs_here",
        "timeout",
        "version",
    )

    #: 256 slots, by the first byte of a bucket name: the decision for a request
    #: with no path yet (HERE or a Hop), or None where no entry covers the byte
    #: (:meth:`decide` raises the error, naming the bucket).
    fresh: tuple[Decision | None, ...]

    def __init__(
        self,
        table: RoutingTable,
        node: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        hop_limit: int = DEFAULT_HOP_LIMIT,
        runs_here: bool = True,
    ) -> None:
        self.node = node
        self.runs_here = runs_here and node is not None
        self.timeout = float(timeout)
        self.hop_limit = int(hop_limit)
        #: The version of the cluster's table this node routes by (0: its own).
        self.version = 0
        #: Slots this node owns whose data has not arrived yet: decided WAIT.
        self._held: frozenset[int] = frozenset()
        #: Local executions on threads (Pyro5) pass it; see :class:`Gate`.
        self.gate = Gate()
        self.table = table

    @property
    def table(self) -> RoutingTable:
        """The routing table; assign a new one to swap it atomically."""
        return self._table

    @table.setter
    def table(self, table: RoutingTable) -> None:
        if not isinstance(table, RoutingTable):
            raise TypeError(f"routing needs a RoutingTable, not {table!r}")
        self.switch(table, self.version, self._held)

    @property
    def held(self) -> frozenset[int]:
        """The slots whose requests wait (see :data:`WAIT`)."""
        return self._held

    def switch(self, table: RoutingTable, version: int, held: frozenset[int]) -> None:
        """Route by ``table`` at ``version``, holding the requests of slots ``held``.

        Call it on the thread that serves text requests (the event loop), so no text
        request sees half of it; threads running tasks see the table they read.
        """
        if not isinstance(table, RoutingTable):
            raise TypeError(f"routing needs a RoutingTable, not {table!r}")
        fresh = tuple(
            WAIT if slot in held else self._fresh(owner, version)
            for slot, owner in enumerate(table.by_byte)
        )
        # Several attributes, one decision: fresh first, so a reader that sees the
        # new table never reads the old decisions (and the reverse is harmless).
        self.fresh = fresh
        self.hashed = table.hashed
        self._held = held
        self.version = version
        self._table = table

    def decide(self, bucket: str | bytes, path: Sequence[str] = ()) -> Decision:
        """Where a request for ``bucket`` goes from this node, having visited ``path``.

        ``path`` lists the nodes the request passed before this one (empty for a
        request from a client). Raises :class:`NoRouteError` when the table has no
        entry for the bucket, :class:`RoutingLoopError` when the owner was visited
        already (same table, same bucket: it would go round forever) or the request
        would pass the hop limit.
        """
        table = self._table
        owner = table.owner(bucket)
        if owner == self.node and self.runs_here:  # the common case, inline
            if self._held and table.slot(bucket) in self._held:
                return WAIT
            return HERE
        return self._choose(owner, bucket, path, self.version)

    def _fresh(self, owner: str | None, version: int) -> Decision | None:
        if owner is None:
            return None
        try:
            return self._choose(owner, "", (), version)
        except RoutingLoopError:  # a hop limit of 0: decide() says so, per bucket
            return None

    def _choose(
        self, owner: str, bucket: str | bytes, path: Sequence[str], version: int
    ) -> Decision:
        if owner == self.node and self.runs_here:
            return HERE
        visited = tuple(path) if self.node is None else (*path, self.node)
        if owner in visited:
            raise RoutingLoopError(
                f"routing loop for bucket {bucket!r}: "
                f"{' -> '.join([*visited, owner])}; "
                "fix the routing tables so that one node owns the bucket"
            )
        if len(visited) > self.hop_limit:
            raise RoutingLoopError(
                f"bucket {bucket!r} passed the hop limit of {self.hop_limit}: "
                f"{' -> '.join([*visited, owner])}"
            )
        return Hop(owner, visited, version)

    def limit(self, budget: float | None) -> float:
        """Seconds a request may still take from here: its ``budget``, at most the timeout.

        None (a request from a client) is the timeout; a budget that is not a
        finite number is treated as no time left.
        """
        if budget is None:
            return self.timeout
        try:
            budget = float(budget)
        except (TypeError, ValueError):
            return 0.0
        if math.isnan(budget):
            return 0.0
        return max(min(budget, self.timeout), 0.0)


class Gate:
    """Lets a table switch wait for the local tasks that decided by the old table.

    A thread that runs a task here (a Pyro5 request) enters (:meth:`enter`) before
    it decides and leaves (:meth:`leave`) when the task is done. A switch swaps the table,
    then flips (:meth:`flip`): it waits until every thread that entered before it has
    left, so none of them still writes to a bucket the switch hands away. Threads
    that enter after the flip read the new table. Two generations (the flip
    alternates them), so a steady stream of new requests never makes a switch wait
    for ever.

    Entering and leaving take no lock, so a task pays little for it: a thread
    appends to the current generation's list and pops from the same list when it
    leaves (each one step, atomic under the GIL and on free-threaded builds); only
    :meth:`flip` takes the lock, and a thread that leaves the list a flip waits
    for, empty, wakes it.
    """

    __slots__ = ("_flipping", "_gen", "_idle", "_inside")

    def __init__(self) -> None:
        self._idle = threading.Condition(threading.Lock())
        self._gen = 0
        self._inside: tuple[list[None], list[None]] = ([], [])
        self._flipping = False

    def enter(self) -> list[None]:
        """Count this thread in; returns the ticket :meth:`leave` takes."""
        inside = self._inside[self._gen]
        inside.append(None)
        return inside

    def leave(self, ticket: list[None]) -> None:
        """Count this thread out."""
        ticket.pop()
        if self._flipping and not ticket:
            with self._idle:
                self._idle.notify_all()

    def flip(self, timeout: float) -> bool:
        """Wait (up to ``timeout`` s) for every thread that entered before now."""
        with self._idle:
            old = self._inside[self._gen]
            self._flipping = True
            self._gen ^= 1
            try:
                return self._idle.wait_for(lambda: not old, timeout)
            finally:
                self._flipping = False
