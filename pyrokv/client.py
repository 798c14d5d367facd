"""Client: use a pyrokv cluster from a Python program, the way redis-py uses Redis.

The transport is Pyro5 to a node's TaskRunner, the same call nodes make to each
other: values keep their types (any plain data serpent carries, not only text),
errors arrive as their own pyrokv classes, and the node you talk to routes the
request by its own table, so the client needs no table of its own.
A :class:`Pipeline` sends many requests in one call (``TaskRunner.route_batch``),
which the node splits per owner.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import Pyro5.errors
from Pyro5.api import URI

from . import naming
from .defaults import DEFAULT_MAX_MESSAGE, DEFAULT_NS
from .errors import (
    ClientClosedError,
    ConfigError,
    NameServerUnavailableError,
    NodeNotRegisteredError,
    PyroKVError,
    UndecodableReplyError,
)
from .pipeline import Pipeline, send_batches
from .protocol import VERBS
from .proxies import checked_proxy
from .router import DEFAULT_TIMEOUT, Router
from .table import RoutingTable
from .wire import use_tls

if TYPE_CHECKING:
    from .tls import TLSSettings

__all__ = [
    "URL_SCHEME",
    "Client",
    "NodeStatus",
    "Pipeline",
    "list_nodes",
    "node_status",
    "node_tasks",
    "parse_ns",
]

#: The scheme of :meth:`Client.from_url`: ``pyrokv://HOST:PORT``.
URL_SCHEME = "pyrokv"


def list_nodes(ns: tuple[str, int], timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Every node registered in the name server, as {name: URI of its TaskRunner}."""
    host, port = ns
    try:
        with naming.ns_proxy(host, port, timeout) as proxy:
            names = proxy.yplookup(
                meta_all={naming.NODE_METADATA}, return_metadata=False
            )
    except Pyro5.errors.PyroError as exc:
        if naming.not_a_name_server(exc):  # something else answers there
            raise NameServerUnavailableError.not_a_name_server(
                host, port, exc
            ) from None
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
        with checked_proxy(uri, node, timeout) as proxy:
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


def parse_ns(ns: object) -> tuple[str, int]:
    """The name server's (host, port) from ``"HOST:PORT"`` or ``(host, port)``.

    Raises :class:`ConfigError` (a ``ValueError``) saying what was expected.
    """
    if isinstance(ns, str):
        if "://" in ns:
            raise ConfigError(
                f"invalid name server address {ns!r}: Client() takes HOST:PORT; "
                f"for a URL use Client.from_url({ns!r})"
            )
        return naming.parse_address(ns, "name server address")
    if isinstance(ns, (tuple, list)) and len(ns) == 2:
        host, port = ns
        if isinstance(host, str) and host and type(port) is int:
            try:
                return host, naming.parse_port(str(port))
            except ValueError:
                pass
    raise ConfigError(
        f"invalid name server address {ns!r}: expected 'HOST:PORT' or "
        "(host, port), for example '127.0.0.1:9090' or ('127.0.0.1', 9090)"
    )


def node_tasks(
    ns: tuple[str, int], node: str, timeout: float = DEFAULT_TIMEOUT
) -> list[list[str]]:
    """The tasks node ``node`` runs, as ``[name, signature, summary]`` each, sorted
    (``pyrokv tasks``; see :meth:`pyrokv.TaskRunner.tasks`)."""
    router = Router(RoutingTable(), None, ns=ns, timeout=timeout)
    try:
        found: list[list[str]] = router.proxies.call(
            node, timeout, lambda proxy, _inner: proxy.tasks(), []
        )
    finally:
        router.close()
    return found


class Client:
    """A connection to a pyrokv cluster, found through its name server.

    ``ns`` is the name server, as ``"HOST:PORT"`` or ``(host, port)``; see also
    :meth:`from_url`. ``via`` names the node to send requests to; without it the
    client picks the first live node (by name). ``timeout`` bounds each call, in
    seconds. ``tls`` turns mutual TLS on with these settings, for the whole
    process: Pyro5's TLS configuration is process-wide, so every client of one
    process shares one certificate (a client with other settings is refused with
    :class:`ConfigError`); without ``tls`` the client uses whatever the process
    uses. ``max_message`` is the largest Pyro5 message the nodes accept (their
    ``max_message`` setting): a :class:`Pipeline` is sent in calls that fit.

    Use it as a context manager, or call :meth:`close`; a closed client raises
    :class:`ClientClosedError`.

    >>> with Client("127.0.0.1:9090") as kv:            # doctest: +SKIP
    ...     kv.create("shopping"); kv.put("shopping", "milk", 1)
    ...     kv.get("shopping", "milk")
    1
    """

    def __init__(
        self,
        ns: str | tuple[str, int] = DEFAULT_NS,
        *,
        via: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        tls: TLSSettings | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        address = parse_ns(ns)
        if tls is not None:
            use_tls(tls)
        self._tls = tls
        self._router = Router(RoutingTable(), None, ns=address, timeout=timeout)
        self._via = via
        self._max_message = int(max_message)
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        via: str | None = None,
        timeout: float | None = None,
        tls: TLSSettings | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> Client:
        """A client for the name server at ``pyrokv://HOST:PORT``.

        The URL may add ``?via=NODE`` and ``&timeout=SECONDS``; the keywords, when
        given, win over it. A missing host or port is the default's
        (``127.0.0.1``, ``9090``). Raises :class:`ConfigError` for any other URL.
        """
        parts = _split_url(url)
        query = _url_query(url, parts)
        address = _url_address(url, parts)
        if via is None:
            via = query.get("via")
        if timeout is None:
            timeout = _parse_seconds(url, query.get("timeout", str(DEFAULT_TIMEOUT)))
        return cls(address, via=via, timeout=timeout, tls=tls, max_message=max_message)

    # -- what the client is --------------------------------------------------

    @property
    def ns(self) -> tuple[str, int]:
        """The name server's (host, port)."""
        return self._router.ns

    @property
    def timeout(self) -> float:
        """The longest one call may take, in seconds."""
        return self._router.timeout

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def node(self) -> str:
        """The node this client sends its requests to (picked on first use)."""
        self._check_open()
        if self._via is None:
            self._via = self._pick_node(time.monotonic() + self._router.timeout)
        return self._via

    def __repr__(self) -> str:
        host, port = self.ns
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        node = "(first live)" if self._via is None else repr(self._via)
        tls = " tls" if self._tls is not None else ""
        state = "closed" if self._closed else "open"
        return (
            f"<pyrokv.Client ns={where} node={node} timeout={self.timeout:g}{tls} "
            f"{state}>"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError(
                f"this client of the name server at {self.ns[0]}:{self.ns[1]} is "
                "closed: make a new Client"
            )

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

    # -- requests --------------------------------------------------------------

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
        self._check_open()
        deadline = time.monotonic() + self._router.timeout
        if self._via is None:
            self._via = self._pick_node(deadline)
        left = deadline - time.monotonic()
        return self._router.via(self._via, bucket, func, args, kwargs, timeout=left)

    def _verb(self, method: str, *args: Any) -> Any:
        """Run the bucket verb whose ``TaskRunner`` method is ``method`` (``get`` ...)
        on the owner of ``args[0]``: :meth:`route` on the shortest path, the smallest
        message (every verb of this API takes it)."""
        if self._closed:
            self._check_open()
        router = self._router
        limit = router.routing.timeout
        node = self._via
        if node is None:
            deadline = time.monotonic() + limit
            node = self._via = self._pick_node(deadline)
            limit = deadline - time.monotonic()
        return router.proxies.call(
            node, limit, lambda remote, _inner: getattr(remote, method)(*args)
        )

    def create(self, bucket: str) -> None:
        """Create ``bucket`` on its owner (no change if it exists)."""
        self._verb("create", bucket)

    def get(self, bucket: str, key: Any, default: Any = None) -> Any:
        """The value of ``key`` in ``bucket``, or ``default`` when the key is missing.

        A missing bucket raises :class:`BucketNotFoundError`. A key stored with the
        value None reads as missing.
        """
        value = self._verb("get", bucket, key)
        return default if value is None else value

    def put(self, bucket: str, key: Any, value: Any) -> None:
        """Set ``key`` in ``bucket`` to ``value``."""
        self._verb("put", bucket, key, value)

    def delete(self, bucket: str, key: Any) -> Any:
        """Remove ``key`` from ``bucket``; return its old value or None."""
        return self._verb("delete", bucket, key)

    def keys(self, bucket: str) -> list[Any]:
        """The keys of ``bucket``, sorted (by their ``repr`` when their types differ)."""
        return list(self._verb("keys", bucket))

    def ping(self) -> bool:
        """True when the node this client talks to answers (``PING``); raises a
        :class:`NodeUnavailableError` when it does not."""
        return bool(self._node_task(b"PING", None) == "PONG")

    def info(self, node: str | None = None) -> dict[str, Any]:
        """What a node says about itself: the fields of the text protocol's ``INFO``
        (``node``, ``pyrokv_version``, ``uptime_s``, ``keys``, ``requests`` ...).

        ``node`` names the node to ask; by default, the one this client talks to.
        """
        info = self._node_task(b"INFO", node)
        if not isinstance(info, dict):
            raise UndecodableReplyError(f"INFO answered {info!r:.60}, not a dict")
        return info

    def _node_task(self, word: bytes, node: str | None) -> Any:
        """Run the task of node verb ``word`` on ``node`` (default: this client's)."""
        self._check_open()
        deadline = time.monotonic() + self._router.timeout
        if node is None:
            if self._via is None:
                self._via = self._pick_node(deadline)
            node = self._via
        task = VERBS[word].task_name
        return self._router.proxies.call(
            node,
            deadline - time.monotonic(),
            lambda proxy, _inner: proxy.run(task, [], None),
        )

    def pipeline(self) -> Pipeline:
        """A :class:`Pipeline`: calls queued here and sent together by its
        :meth:`~Pipeline.execute` (or at the end of its ``with`` block)."""
        self._check_open()
        return Pipeline(self)

    def _batch(self, items: list[list[Any]]) -> list[list[Any]]:
        """Send a pipeline's ``[bucket, func, args]`` items to this client's node:
        ``[ok, value]`` per item, in order (see :func:`pyrokv.pipeline.send_batches`)."""
        self._check_open()
        return send_batches(
            self._router, self.node, items, self._max_message, self._router.timeout
        )

    def close(self) -> None:
        """Close the client's connections; using the client afterwards raises
        :class:`ClientClosedError`. Closing twice is harmless."""
        self._closed = True
        self._router.close()

    def __enter__(self) -> Client:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _url_address(url: str, parts: urllib.parse.SplitResult) -> tuple[str, int]:
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"invalid pyrokv URL {url!r}: the port is not 0..65535"
        ) from None
    return parts.hostname or DEFAULT_NS[0], DEFAULT_NS[1] if port is None else port


def _url_query(url: str, parts: urllib.parse.SplitResult) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(
            parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)
        )
    except ValueError:
        raise ConfigError(f"invalid pyrokv URL {url!r}: malformed query") from None
    query: dict[str, str] = {}
    for name, value in pairs:
        if name not in ("via", "timeout") or name in query:
            raise ConfigError(
                f"invalid pyrokv URL {url!r}: {name!r} is not a setting it may "
                "carry once (via, timeout)"
            )
        query[name] = value
    return query


def _split_url(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(str(url))
    if (
        parts.scheme != URL_SCHEME
        or parts.path not in ("", "/")
        or parts.fragment
        or parts.username is not None
        or parts.password is not None
    ):
        raise ConfigError(
            f"invalid pyrokv URL {url!r}: expected {URL_SCHEME}://HOST:PORT, for "
            f"example {URL_SCHEME}://127.0.0.1:9090?via=foo&timeout=2"
        )
    return parts


def _parse_seconds(url: str, text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(
            f"invalid pyrokv URL {url!r}: timeout {text!r} is not a positive number "
            "of seconds"
        )
    return seconds
