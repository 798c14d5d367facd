"""Router: run a task on the node that owns a bucket, here or by forwarding over Pyro5.

The decision is :class:`~pyrokv.routing.Routing`'s (one function for every path);
the router carries it out: in-process when this node owns the bucket, no network
hop; otherwise a call to the owner's ``TaskRunner.route``, which decides again by
*its* table, as in the Elixir guide. Calls go through a
:class:`~pyrokv.proxies.ProxyPool`, which finds nodes in the
:class:`~pyrokv.directory.Directory` and turns Pyro5 errors into pyrokv errors.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .defaults import DEFAULT_NS
from .directory import Directory
from .errors import HandOffPendingError, TaskNotAllowedError
from .proxies import ProxyPool
from .routing import DEFAULT_HOP_LIMIT, DEFAULT_TIMEOUT, HERE, WAIT, Hop, Routing
from .table import RoutingTable
from .wire import setup_pyro

if TYPE_CHECKING:
    from .live import Live

__all__ = ["DEFAULT_HOP_LIMIT", "DEFAULT_TIMEOUT", "LocalRunner", "Router", "task_name"]

#: Runs a task on this node: ``TaskRunner.run(func, args, kwargs)``.
LocalRunner = Callable[[str, Sequence[Any], "dict[str, Any] | None"], Any]


def task_name(func: str | Callable[..., Any]) -> str:
    """The dotted name of a task: a string as it is, or a module-level function's name.

    A lambda, closure, method or builtin is refused: another node could not find it
    by name.
    """
    if isinstance(func, str):
        return func
    if (
        isinstance(func, types.FunctionType)
        and func.__qualname__ == func.__name__
        and func.__name__ != "<lambda>"
        and func.__module__ not in (None, "__main__")
    ):
        return f"{func.__module__}.{func.__name__}"
    raise TaskNotAllowedError(
        f"cannot send {func!r} to another node: pass a module-level function "
        "(or its dotted name, such as 'pyrokv.tasks.get'), not a lambda, closure, "
        "method or a function defined in __main__"
    )


class Router:
    """Routes tasks by bucket name over a :class:`RoutingTable`.

    ``node`` is the name of the node this router lives on (None for a router in a
    client process, which always forwards); ``local`` runs a task on this node
    (``TaskRunner.run``). ``ns`` is the name server's (host, port). ``timeout`` bounds
    the whole route in seconds: a forwarded request carries the time it has left,
    less a margin, so the node nearest the fault reports it, naming that node.
    """

    def __init__(
        self,
        table: RoutingTable,
        node: str | None = None,
        *,
        local: LocalRunner | None = None,
        ns: tuple[str, int] = DEFAULT_NS,
        timeout: float = DEFAULT_TIMEOUT,
        hop_limit: int = DEFAULT_HOP_LIMIT,
    ) -> None:
        setup_pyro()
        self.routing = Routing(
            table,
            node,
            timeout=timeout,
            hop_limit=hop_limit,
            runs_here=local is not None,
        )
        self.node = node
        self.local = local
        self.ns = ns
        self.directory = Directory(ns, timeout)
        self.proxies = ProxyPool(self.directory)
        #: The node's live-table state (:mod:`pyrokv.live`); None in a client.
        self.live: Live | None = None

    @property
    def table(self) -> RoutingTable:
        """The routing table; assign a new one to swap it atomically."""
        return self.routing.table

    @table.setter
    def table(self, table: RoutingTable) -> None:
        if not isinstance(table, RoutingTable):
            raise TypeError(f"a Router needs a RoutingTable, not {table!r}")
        self.routing.table = table

    @property
    def timeout(self) -> float:
        """The longest a route may take from here, in seconds."""
        return self.routing.timeout

    @property
    def hop_limit(self) -> int:
        """How many nodes a request may pass."""
        return self.routing.hop_limit

    # -- routing ------------------------------------------------------------

    def route(
        self,
        bucket: str | bytes,
        func: str | Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run ``func(*args, **kwargs)`` on the node that owns ``bucket``; return its result.

        ``timeout`` (default: the router's) bounds the whole route, in seconds.
        Raises :class:`NoRouteError` (no entry), :class:`NodeUnavailableError` (owner
        not registered, unreachable or too slow), :class:`RoutingLoopError`, and
        whatever the task itself raised, with its own class.
        """
        name = task_name(func)
        if self.local is None:  # a client's router: always sends
            decision = self.routing.decide(bucket)
            assert isinstance(decision, Hop)
            limit = self.timeout if timeout is None else timeout
            deadline = time.monotonic() + limit
            return self.send(decision, bucket, name, args, kwargs, deadline)
        routing = self.routing
        gate = routing.gate
        ticket = gate.enter()  # see _carry_out
        try:
            decision = routing.decide(bucket)
            if decision is HERE:  # the common case of a node's own router, inline
                return self.local(name, args, kwargs)
        finally:
            gate.leave(ticket)
        limit = self.timeout if timeout is None else timeout
        return self._carry_out(bucket, name, args, kwargs, (), limit)

    def forwarded(
        self,
        bucket: str | bytes,
        func: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        path: Sequence[str],
        budget: float | None,
        version: int | None = None,
    ) -> Any:
        """Route a request that arrived from ``path`` with ``budget`` seconds left,
        routed by table ``version`` (see :meth:`catch_up`).

        The remote half of :meth:`route`, called by ``TaskRunner.route``.
        """
        limit = self.routing.limit(budget)
        path = self.catch_up(version, path)
        return self._carry_out(bucket, func, args, kwargs, path, limit)

    def catch_up(self, version: int | None, path: Sequence[str]) -> Sequence[str]:
        """A request routed by table ``version`` (None: a client's, no version):
        when it is newer than this node's, switch to it first if it is prepared
        here; when it differs, the nodes it visited do not count as a loop (they
        routed by another table). Returns the path to decide with."""
        routing = self.routing
        if version is None or version == routing.version:
            return path
        if version > routing.version and self.live is not None:
            self.live.catch_up(version)
        return ()

    def _carry_out(
        self,
        bucket: str | bytes,
        func: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        path: Sequence[str],
        limit: float,
    ) -> Any:
        """Decide and run here, wait for a range's data, or send on."""
        routing = self.routing
        gate = routing.gate
        deadline = None  # read the clock only off the common path (HERE)
        while True:
            ticket = gate.enter()  # a switch waits for tasks that decided before it
            try:
                decision = routing.decide(bucket, path)
                if decision is HERE or (decision is WAIT and self.ready(bucket)):
                    return self.local(func, args, kwargs)  # type: ignore[misc]
            finally:
                gate.leave(ticket)
            if deadline is None:
                deadline = time.monotonic() + limit
            if decision is not WAIT:
                break
            self.wait_for_data(bucket, deadline)
        assert isinstance(decision, Hop)
        return self.send(decision, bucket, func, args, kwargs, deadline)

    def ready(self, bucket: str | bytes) -> bool:
        """Whether ``bucket``, in a range moving to this node, has arrived whole
        (it is served before the rest of its range)."""
        return self.live is not None and self.live.ready(bucket)

    def wait_for_data(self, bucket: str | bytes, deadline: float) -> None:
        """Wait until the range of ``bucket``, moving to this node, has its data;
        :class:`HandOffPendingError` at the deadline."""
        live = self.live
        if live is not None and live.wait_released(bucket, deadline):
            return
        waiting = live.waiting_for() if live is not None else []
        raise HandOffPendingError(
            f"bucket {bucket!r} is moving to node {self.node!r} (table version "
            f"{self.routing.version}), and its data has not arrived from node(s) "
            f"{', '.join(waiting) or '?'} in time: they are down or hung; see "
            "'pyrokv table show', and run the change again once they answer"
        )

    def send(
        self,
        hop: Hop,
        bucket: str | bytes,
        func: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        deadline: float,
    ) -> Any:
        """Carry out ``hop``: ``TaskRunner.route`` on ``hop.owner``, by ``deadline``."""
        path = list(hop.path)
        return self.proxies.call(
            hop.owner,
            deadline - time.monotonic(),
            lambda proxy, inner: proxy.route(
                bucket, func, list(args), kwargs or {}, path, inner, hop.version
            ),
            path,
        )

    def send_batch(
        self, hop: Hop, items: Sequence[Sequence[Any]], deadline: float
    ) -> list[list[Any]]:
        """Carry out ``hop`` for several ``[bucket, func, args]`` requests in one call.

        The result has one ``[ok, value]`` per item, where ``value`` is the result,
        or the exception when ``ok`` is False. A failure to reach the owner raises,
        for the whole batch.
        """
        path = list(hop.path)
        result: list[list[Any]] = self.proxies.call(
            hop.owner,
            deadline - time.monotonic(),
            lambda proxy, inner: proxy.route_batch(
                [list(i) for i in items], path, inner, hop.version
            ),
            path,
        )
        return result

    def forward_batch(
        self, owner: str, items: Sequence[Sequence[Any]], timeout: float | None = None
    ) -> list[list[Any]]:
        """Send several requests for ``owner``'s buckets in one Pyro5 call.

        ``items`` are ``[bucket, func, args]``; see :meth:`send_batch`.
        """
        path = () if self.node is None else (self.node,)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        return self.send_batch(Hop(owner, path), items, deadline)

    def next_hop(self, bucket: str | bytes, path: Sequence[str]) -> str | None:
        """The node a request for ``bucket`` goes to next; None when it runs here.

        ``path`` lists the nodes visited, this one last (see
        :meth:`pyrokv.routing.Routing.decide`, which this asks).
        """
        upstream = list(path)
        if upstream and upstream[-1] == self.node:
            upstream.pop()
        decision = self.routing.decide(bucket, upstream)
        return decision.owner if isinstance(decision, Hop) else None

    def via(
        self,
        node: str,
        bucket: str | bytes,
        func: str | Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Hand a route request to ``node``, which routes it by its own table.

        What a client outside the cluster does: it holds no table, and lets the node
        it talks to decide (``pyrokv call --via NODE``).
        """
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        return self.send(Hop(node, ()), bucket, task_name(func), args, kwargs, deadline)

    def close(self) -> None:
        """Close every connection this router opened (from any thread)."""
        self.proxies.close()
