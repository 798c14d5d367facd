"""Client: use a pyrokv cluster from a Python program.

The transport is Pyro5 to a node's TaskRunner, the same call nodes make to each
other: values keep their types (any plain data serpent carries, not only text),
errors arrive as their own pyrokv classes, and the node you talk to routes the
request by its own table, so the client needs no table of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import Pyro5.errors
from Pyro5.api import URI, Proxy

from . import naming
from .defaults import DEFAULT_NS
from .errors import NameServerUnavailableError, NodeNotRegisteredError, PyroKVError
from .protocol import VERBS
from .proxies import check_certificate
from .router import DEFAULT_TIMEOUT, Router
from .table import RoutingTable

__all__ = ["Client", "NodeStatus", "list_nodes", "node_status"]


def list_nodes(ns: tuple[str, int], timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Every node registered in the name server, as {name: URI of its TaskRunner}."""
    host, port = ns
    try:
        with naming.ns_proxy(host, port, timeout) as proxy:
            names = proxy.yplookup(
                meta_all={naming.NODE_METADATA}, return_metadata=False
            )
    except Pyro5.errors.PyroError as exc:
        raise NameServerUnavailableError.at(host, port, exc) from None
    nodes = {}
    for name, uri in names.items():
        node = naming.node_of(name)
        if node is not None:
            nodes[node] = URI(uri) if isinstance(uri, str) else uri
    return dict(sorted(nodes.items()))


NodeStatus = dict[str, Any]


def node_status(node: str, uri: Any, timeout: float = 2.0) -> NodeStatus:
    """Ask one node for its info; ``alive`` is False when it does not answer, or
    answers as another node (a registration taken over: ``error`` says so)."""
    row: NodeStatus = {"node": node, "address": uri.location, "alive": False}
    try:
        with Proxy(uri) as proxy:
            proxy._pyroTimeout = timeout
            proxy._pyroBind()
            check_certificate(proxy, node)
            info = proxy.info()
    except (Pyro5.errors.PyroError, PyroKVError) as exc:
        row["error"] = str(exc)
        return row
    if not isinstance(info, dict) or info.get("node") != node:
        claimed = info.get("node") if isinstance(info, dict) else None
        row["error"] = f"the process at {uri.location} answers as node {claimed!r}"
        return row
    row.update(info)
    row["alive"] = True
    return row


class Client:
    """A connection to a pyrokv cluster, found through its name server.

    ``via`` names the node to send requests to; without it the client picks the
    first live node (by name). Use as a context manager, or call :meth:`close`.

    >>> with Client(ns=("127.0.0.1", 9090)) as kv:            # doctest: +SKIP
    ...     kv.create("shopping"); kv.put("shopping", "milk", 1)
    ...     kv.get("shopping", "milk")
    1
    """

    def __init__(
        self,
        ns: tuple[str, int] = DEFAULT_NS,
        *,
        via: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._router = Router(RoutingTable(), None, ns=ns, timeout=timeout)
        self._via = via

    @property
    def node(self) -> str:
        """The node this client sends its requests to."""
        if self._via is None:
            self._via = self._pick_node(time.monotonic() + self._router.timeout)
        return self._via

    def _pick_node(self, deadline: float) -> str:
        nodes = list_nodes(self._router.ns, max(deadline - time.monotonic(), 0.001))
        for node, uri in nodes.items():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if node_status(node, uri, min(left, 2.0))["alive"]:
                return node
        host, port = self._router.ns
        raise NodeNotRegisteredError(
            f"no live pyrokv node is registered in the name server at {host}:{port}: "
            "start one with 'pyrokv node NAME'"
        )

    def route(
        self,
        bucket: str | bytes,
        func: str | Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Run an allowlisted task on the node that owns ``bucket``; return its result.

        The client's timeout bounds the whole call, finding a live node included.
        """
        deadline = time.monotonic() + self._router.timeout
        if self._via is None:
            self._via = self._pick_node(deadline)
        left = deadline - time.monotonic()
        return self._router.via(self._via, bucket, func, args, kwargs, timeout=left)

    def _verb(self, word: bytes, *args: Any) -> Any:
        """Run the task of text-protocol verb ``word`` on the owner of ``args[0]``."""
        verb = VERBS[word]
        return self.route(args[0], verb.task_name, list(args))

    def create(self, bucket: str) -> None:
        """Create ``bucket`` on its owner (no change if it exists)."""
        self._verb(b"CREATE", bucket)

    def get(self, bucket: str, key: Any) -> Any:
        """The value of ``key`` in ``bucket``, or None when the key is missing."""
        return self._verb(b"GET", bucket, key)

    def put(self, bucket: str, key: Any, value: Any) -> None:
        """Set ``key`` in ``bucket`` to ``value``."""
        self._verb(b"PUT", bucket, key, value)

    def delete(self, bucket: str, key: Any) -> Any:
        """Remove ``key`` from ``bucket``; return its old value or None."""
        return self._verb(b"DELETE", bucket, key)

    def close(self) -> None:
        """Close the client's connections."""
        self._router.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
