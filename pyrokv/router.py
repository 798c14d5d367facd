"""Router: run a task on the node that owns a bucket, here or by forwarding.

The owner comes from the routing table (injected, swappable at run time). When this
node owns the bucket the task runs in-process with no network hop; otherwise the
request goes to the owner's ``TaskRunner.route``, which routes again by *its* table,
as in the Elixir guide. Pyro5 errors are translated here, at the edge, into
:class:`NodeUnavailableError`, so no ``CommunicationError`` ever escapes a node's
exposed method (Pyro5 would drop the caller's connection).
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import Pyro5.errors
from Pyro5.api import Proxy

from . import naming
from .errors import (
    NodeUnavailableError,
    PyroKVError,
    RoutingLoopError,
    TaskNotAllowedError,
)
from .table import RoutingTable
from .wire import PEER_IDLE_TIMEOUT, setup_pyro

__all__ = ["DEFAULT_HOP_LIMIT", "DEFAULT_TIMEOUT", "Router", "task_name"]

DEFAULT_TIMEOUT = 5.0
DEFAULT_HOP_LIMIT = 16
#: A proxy unused for this long is reconnected before its next call: the node at
#: the other end closes connections idle for PEER_IDLE_TIMEOUT (60 s).
RECONNECT_IDLE = PEER_IDLE_TIMEOUT / 2


_LINGER_0 = struct.pack("ii", 1, 0)


class _Held:
    """One thread's proxies: {node: [proxy, epoch, last used]}.

    The router keeps only a weak reference, so when a worker thread ends, its
    proxies are collected and their connections closed.
    """

    __slots__ = ("__weakref__", "proxies")

    def __init__(self) -> None:
        self.proxies: dict[str, list[Any]] = {}


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
        ns: tuple[str, int] = ("127.0.0.1", 9090),
        timeout: float = DEFAULT_TIMEOUT,
        hop_limit: int = DEFAULT_HOP_LIMIT,
    ) -> None:
        setup_pyro()
        self.table = table
        self.node = node
        self.local = local
        self.ns = ns
        self.timeout = float(timeout)
        self.hop_limit = int(hop_limit)
        # node -> (uri, epoch). Shared by all threads; a failed call drops the entry,
        # and every thread's proxy from an older epoch is then rebuilt.
        self._uris: dict[str, tuple[Any, int]] = {}
        self._text: dict[str, tuple[str, int] | None] = {}
        self._epochs = itertools.count(1)
        self._threads = threading.local()
        # Every live thread's proxies, so close() reaches them all.
        self._held: weakref.WeakSet[_Held] = weakref.WeakSet()
        self._held_lock = threading.Lock()

    @property
    def table(self) -> RoutingTable:
        """The routing table; assign a new one to swap it atomically."""
        return self._table

    @table.setter
    def table(self, table: RoutingTable) -> None:
        if not isinstance(table, RoutingTable):
            raise TypeError(f"a Router needs a RoutingTable, not {table!r}")
        self._table = table

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
        owner = self._table.owner(bucket)
        if owner == self.node and self.local is not None:
            return self.local(name, args, kwargs)
        path = [self.node] if self.node is not None else []
        limit = self.timeout if timeout is None else timeout
        return self._forward(owner, bucket, name, args, kwargs, path, limit)

    def forwarded(
        self,
        bucket: str | bytes,
        func: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        path: list[str],
        budget: float | None,
    ) -> Any:
        """Route a request that arrived from ``path`` with ``budget`` seconds left.

        The remote half of :meth:`route`, called by ``TaskRunner.route``.
        """
        started = time.monotonic()
        if self.node is not None:
            path = [*path, self.node]
        owner = self.next_hop(bucket, path)
        if owner is None:
            return self.local(task_name(func), args, kwargs)  # type: ignore[misc]
        limit = self.timeout if budget is None else min(float(budget), self.timeout)
        limit -= time.monotonic() - started
        return self._forward(owner, bucket, func, args, kwargs, path, limit)

    def next_hop(self, bucket: str | bytes, path: Sequence[str]) -> str | None:
        """The node a request for ``bucket`` goes to next; None when it runs here.

        ``path`` lists the nodes visited, this one last. A next hop already in the
        path is a loop (same node, same table, same bucket: it would go round
        forever); a path longer than the hop limit is refused too.
        """
        owner = self._table.owner(bucket)
        if owner == self.node and self.local is not None:
            return None
        if owner in path:
            raise RoutingLoopError(
                f"routing loop for bucket {bucket!r}: {' -> '.join([*path, owner])}; "
                "fix the routing tables so that one node owns the bucket"
            )
        if len(path) > self.hop_limit:
            raise RoutingLoopError(
                f"bucket {bucket!r} passed the hop limit of {self.hop_limit}: "
                f"{' -> '.join([*path, owner])}"
            )
        return owner

    def text_address(self, owner: str) -> tuple[str, int] | None:
        """Where ``owner`` serves the text protocol, from its registration; None if not.

        Blocking (a name-server call); cached until :meth:`forget_text`.
        """
        if owner in self._text:
            return self._text[owner]
        self._resolve(owner, time.monotonic() + self.timeout)
        return self._text.get(owner)

    def forget_text(self, owner: str) -> None:
        """Drop the cached text address of ``owner`` (its link failed)."""
        self._text.pop(owner, None)

    def _forward(
        self,
        owner: str,
        bucket: str | bytes,
        func: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        path: list[str],
        limit: float,
    ) -> Any:
        return self._call(
            owner,
            path,
            limit,
            lambda proxy, inner: proxy.route(
                bucket, func, list(args), kwargs or {}, path, inner
            ),
        )

    def forward_batch(
        self, owner: str, items: Sequence[Sequence[Any]], timeout: float | None = None
    ) -> list[list[Any]]:
        """Send several requests for ``owner``'s buckets in one Pyro5 call.

        ``items`` are ``[bucket, func, args]``; the result has one ``[ok, value]`` per
        item, where ``value`` is the result, or the exception when ``ok`` is False.
        A failure to reach ``owner`` raises, for the whole batch. Used by the text
        server to coalesce concurrent requests for the same owner.
        """
        path = [self.node] if self.node is not None else []
        limit = self.timeout if timeout is None else timeout
        result: list[list[Any]] = self._call(
            owner,
            path,
            limit,
            lambda proxy, inner: proxy.route_batch(
                [list(i) for i in items], path, inner
            ),
        )
        return result

    def _call(
        self,
        owner: str,
        path: list[str],
        limit: float,
        send: Callable[[Any, float], Any],
    ) -> Any:
        """Call ``send(proxy, inner_budget)`` on ``owner``'s TaskRunner, within ``limit``.

        Translates every Pyro5 error into a pyrokv error, here at the edge.
        """
        if limit <= 0:
            raise NodeUnavailableError(
                f"node {owner!r} was not reached in time: the request's time ran out "
                f"before it could be sent (path {' -> '.join(path) or '-'})"
            )
        deadline = time.monotonic() + limit
        inner = limit - min(0.5, limit * 0.1)
        for attempt in (1, 2):
            proxy = self._proxy(owner, deadline)
            proxy._pyroTimeout = max(deadline - time.monotonic(), 0.001)
            try:
                return send(proxy, inner)
            except Pyro5.errors.SerializeError as exc:
                raise PyroKVError(
                    f"node {owner!r} answered with something this process cannot "
                    f"rebuild: {exc}"
                ) from exc
            except Pyro5.errors.TimeoutError as exc:
                self._forget(owner)
                raise NodeUnavailableError(
                    f"node {owner!r} did not answer within {limit:.1f}s"
                ) from exc
            except Pyro5.errors.CommunicationError as exc:
                self._forget(owner)
                if attempt == 1 and self._moved(owner, proxy._pyroUri, deadline):
                    # The node restarted at another address: the old process is
                    # gone, so sending the request to the new one runs it once.
                    continue
                raise NodeUnavailableError(
                    f"node {owner!r} at {proxy._pyroUri.location} is not reachable: "
                    f"{exc}"
                ) from exc
        raise AssertionError("unreachable")

    def _moved(self, owner: str, old: Any, deadline: float) -> bool:
        """Whether the name server now has ``owner`` at an address other than ``old``."""
        try:
            uri, _epoch = self._resolve(owner, deadline)
        except NodeUnavailableError:
            return False
        return bool(uri.location != old.location)

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
        return self._forward(node, bucket, task_name(func), args, kwargs, [], limit)

    # -- finding nodes ------------------------------------------------------

    def _proxy(self, owner: str, deadline: float) -> Any:
        """This thread's proxy for ``owner``'s TaskRunner, reconnected when stale.

        A Pyro5 proxy belongs to one thread, so each thread keeps its own; the
        resolved address is shared.
        """
        held: _Held | None = getattr(self._threads, "held", None)
        if held is None:
            held = self._threads.held = _Held()
            with self._held_lock:
                self._held.add(held)
        known = self._uris.get(owner)
        mine = held.proxies.get(owner)
        if mine is not None:
            now = time.monotonic()
            if (
                known is not None
                and mine[1] == known[1]
                and now - mine[2] < RECONNECT_IDLE
            ):
                mine[2] = now
                return mine[0]
            del held.proxies[owner]
            mine[0]._pyroRelease()
        fresh = known is None
        if known is None:
            known = self._resolve(owner, deadline)
        proxy = Proxy(known[0])
        proxy._pyroTimeout = max(deadline - time.monotonic(), 0.001)
        try:
            proxy._pyroBind()
        except Pyro5.errors.CommunicationError as exc:
            self._forget(owner)
            # Pyro5 reports a connect that timed out as a plain CommunicationError
            # caused by a socket timeout: it is the same fault as a slow answer.
            if isinstance(exc, Pyro5.errors.TimeoutError) or isinstance(
                exc.__cause__, TimeoutError
            ):
                raise NodeUnavailableError(
                    f"node {owner!r} did not answer within "
                    f"{proxy._pyroTimeout:.1f}s (connecting to {known[0].location})"
                ) from exc
            if fresh:
                raise NodeUnavailableError(
                    f"node {owner!r} is registered at {known[0].location} but is not "
                    f"reachable: {exc}"
                ) from exc
            # The cached address may be from before a restart: look it up again.
            return self._proxy(owner, deadline)
        # Close with a reset, not a FIN: a request that timed out must not sit in
        # the kernel's send queue and reach the node when the link comes back.
        sock = proxy._pyroConnection.sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
        held.proxies[owner] = [proxy, known[1], time.monotonic()]
        return proxy

    def _resolve(self, owner: str, deadline: float) -> tuple[Any, int]:
        """Look ``owner`` up in the name server: cache its address and text address."""
        host, port = self.ns
        timeout = max(deadline - time.monotonic(), 0.001)
        ns = naming.ns_proxy(host, port, timeout)
        try:
            with ns:
                uri, metadata = ns.lookup(
                    naming.tasks_name(owner), return_metadata=True
                )
        except Pyro5.errors.NamingError as exc:
            raise NodeUnavailableError(
                f"node {owner!r} is not registered in the name server at "
                f"{host}:{port}: start it with 'pyrokv node {owner}'"
            ) from exc
        except Pyro5.errors.TimeoutError as exc:
            raise NodeUnavailableError(
                f"node {owner!r} was not reached in time: the name server at "
                f"{host}:{port} did not say where it is within {timeout:.1f}s"
            ) from exc
        except Pyro5.errors.CommunicationError as exc:
            raise NodeUnavailableError(
                f"cannot reach the name server at {host}:{port} to find node "
                f"{owner!r}: {exc}"
            ) from exc
        entry = (uri, next(self._epochs))
        self._uris[owner] = entry
        self._text[owner] = naming.text_address(metadata)
        return entry

    def _forget(self, owner: str) -> None:
        self._uris.pop(owner, None)

    def close(self) -> None:
        """Close every connection this router opened (from any thread)."""
        with self._held_lock:
            held = list(self._held)
        for each in held:
            for proxy, _epoch, _used in list(each.proxies.values()):
                proxy._pyroClaimOwnership()
                proxy._pyroRelease()
            each.proxies.clear()
        self._uris.clear()
