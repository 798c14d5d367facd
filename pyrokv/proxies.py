"""Calls to other nodes over Pyro5: a per-thread proxy pool, and Pyro5 errors made pyrokv's.

A Pyro5 proxy belongs to one thread, so each thread keeps one proxy per node and
reuses it (a new proxy per call runs at 0.32x the rate). Where a node is comes from
the :class:`~pyrokv.directory.Directory`, shared by every thread. :func:`translate`
turns each Pyro5 failure into a pyrokv error, here at the edge: a Pyro5
``CommunicationError`` escaping a node's exposed method would make Pyro5 drop the
caller's connection.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import Pyro5.errors
from Pyro5.api import Proxy

from .directory import Directory, Entry
from .errors import (
    NodeIdentityError,
    NodeTimeoutError,
    NodeUnavailableError,
    NodeUnreachableError,
    PyroKVError,
    UndecodableReplyError,
)
from .routing import inner_budget
from .wire import PEER_IDLE_TIMEOUT

__all__ = [
    "NODE_DNS_SUFFIX",
    "RECONNECT_IDLE",
    "Held",
    "ProxyPool",
    "Remote",
    "check_certificate",
    "checked_proxy",
    "translate",
]

log = logging.getLogger("pyrokv.proxies")

#: A proxy unused for this long is reconnected before its next call: the node at
#: the other end closes connections idle for PEER_IDLE_TIMEOUT (60 s).
RECONNECT_IDLE = PEER_IDLE_TIMEOUT / 2

_LINGER_0 = struct.pack("ii", 1, 0)

#: A call reuses its proxy's timeout when it is within this of the call's time
#: left, in seconds (setting a socket's timeout costs a system call).
TIMEOUT_SLACK = 0.001

T = TypeVar("T")


def translate(
    exc: Pyro5.errors.PyroError,
    owner: str,
    *,
    limit: float,
    location: str,
    connecting: bool = False,
) -> PyroKVError:
    """The pyrokv error for a Pyro5 failure ``exc`` while calling ``owner``.

    ``limit`` is the time the call had; ``location`` the address it went to;
    ``connecting`` says the failure came while opening the connection.
    """
    if isinstance(exc, Pyro5.errors.SerializeError):
        return UndecodableReplyError(
            f"node {owner!r} answered with something this process cannot rebuild: {exc}"
        )
    # Pyro5 reports a connect that timed out as a plain CommunicationError caused
    # by a socket timeout: it is the same fault as a slow answer.
    if isinstance(exc, Pyro5.errors.TimeoutError) or isinstance(
        exc.__cause__, TimeoutError
    ):
        return NodeTimeoutError.after(owner, limit, location if connecting else None)
    if connecting:
        return NodeUnreachableError(
            f"node {owner!r} is registered at {location} but is not reachable: {exc}"
        )
    return NodeUnreachableError(f"node {owner!r} at {location} is not reachable: {exc}")


#: A node's certificate names it as the DNS name ``NAME.pyrokv`` (subjectAltName).
NODE_DNS_SUFFIX = ".pyrokv"
_unnamed_warned: set[str] = set()


def check_certificate(proxy: Any, node: str) -> None:
    """Refuse a TLS peer whose certificate names another node than ``node``.

    A certificate that names no node (no DNS name ending in ``.pyrokv``) cannot
    be checked: accepted, with a warning once per node. Plain connections pass.
    """
    connection = getattr(proxy, "_pyroConnection", None)
    sock = getattr(connection, "sock", None)
    if not isinstance(sock, ssl.SSLSocket):
        return
    cert: dict[str, Any] = dict(sock.getpeercert() or {})
    names = [
        str(pair[1])
        for pair in cert.get("subjectAltName", ())
        if pair[0] == "DNS" and str(pair[1]).endswith(NODE_DNS_SUFFIX)
    ]
    if not names:
        if node not in _unnamed_warned:
            _unnamed_warned.add(node)
            log.warning(
                "node %r's certificate names no node (no DNS name %s%s): cannot "
                "check that it is %r",
                node,
                node,
                NODE_DNS_SUFFIX,
                node,
            )
        return
    if f"{node}{NODE_DNS_SUFFIX}" not in names:
        raise NodeIdentityError(
            f"the process registered as node {node!r} at "
            f"{proxy._pyroUri.location} shows a certificate for "
            f"{', '.join(sorted(names))}, not {node}{NODE_DNS_SUFFIX}: refusing it"
        )


def checked_proxy(uri: Any, node: str, timeout: float) -> Proxy:
    """A proxy to ``node`` at ``uri``, connected, with ``timeout``, and its TLS
    certificate checked (:func:`check_certificate`); released again if either fails.
    Pyro5's errors pass through (callers :func:`translate` them)."""
    proxy = Proxy(uri)
    try:
        proxy._pyroTimeout = timeout
        proxy._pyroBind()
        check_certificate(proxy, node)
    except BaseException:
        proxy._pyroRelease()
        raise
    return proxy


class Remote:
    """A proxy's remote methods, each made once, by name: ``remote.route(...)``.

    Pyro5 makes a new remote method object on every attribute read of a proxy
    (about a microsecond); the send functions of :meth:`ProxyPool.call` read one
    per call.
    """

    def __init__(self, proxy: Any) -> None:
        self._proxy = proxy

    def __getattr__(self, name: str) -> Any:  # the first read of ``name`` only
        if name.startswith("_"):
            raise AttributeError(name)
        method = getattr(self._proxy, name)
        self.__dict__[name] = method
        return method


@dataclass(slots=True)
class Held:
    """One thread's proxy for one node, built from the directory entry ``epoch``;
    ``timeout`` is the proxy's timeout as last set, ``remote`` its methods."""

    proxy: Any
    epoch: int
    used: float
    timeout: float
    remote: Remote


class _ThreadProxies:
    """Every proxy of one thread, by node. The pool keeps only a weak reference, so
    when a worker thread ends, its proxies are collected and their connections closed."""

    __slots__ = ("__weakref__", "held")

    def __init__(self) -> None:
        self.held: dict[str, Held] = {}


class ProxyPool:
    """Pyro5 calls to nodes' TaskRunners, from any thread, each on its own proxies."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self._local = threading.local()
        self._all: weakref.WeakSet[_ThreadProxies] = weakref.WeakSet()
        self._all_lock = threading.Lock()

    def call(
        self,
        owner: str,
        limit: float,
        send: Callable[[Any, float], T],
        path: Sequence[str] = (),
    ) -> T:
        """``send(remote, inner_budget)`` on ``owner``'s TaskRunner, within ``limit``
        seconds; ``remote`` is its proxy's :class:`Remote` (``remote.route(...)``).

        ``path`` (the nodes visited) only names the route in an error. A call that
        fails to connect because the node restarted at another address is sent once
        more, to the new process (the old one is gone, so it runs once).
        """
        if limit <= 0:
            raise NodeTimeoutError.no_time_left(owner, " -> ".join(path) or "-")
        deadline = time.monotonic() + limit
        inner = inner_budget(limit)
        for attempt in (1, 2):
            held = self.held(owner, deadline)
            proxy = held.proxy
            left = deadline - time.monotonic()
            if abs(held.timeout - left) > TIMEOUT_SLACK:  # else a syscall per call
                proxy._pyroTimeout = held.timeout = max(left, 0.001)
            try:
                result = send(held.remote, inner)
                if self.directory.down:
                    self.directory.mark_up(owner)
                return result
            except Pyro5.errors.CommunicationError as exc:
                location = proxy._pyroUri.location
                error = translate(exc, owner, limit=limit, location=location)
                self.directory.mark_down(owner, error)
                if not isinstance(error, UndecodableReplyError):
                    self.directory.forget(owner)
                if (
                    attempt == 1
                    and isinstance(error, NodeUnreachableError)
                    and self._moved(owner, location, deadline)
                ):
                    continue
                raise error from exc
        raise AssertionError("unreachable")

    def _moved(self, owner: str, old: str, deadline: float) -> bool:
        """Whether the name server now has ``owner`` at an address other than ``old``."""
        try:
            entry = self.directory.lookup(owner, deadline)
        except NodeUnavailableError:
            return False
        return bool(entry.uri.location != old)

    def proxy(self, owner: str, deadline: float) -> Any:
        """This thread's proxy for ``owner``'s TaskRunner, reconnected when stale."""
        return self.held(owner, deadline).proxy

    def held(self, owner: str, deadline: float) -> Held:
        """This thread's :class:`Held` proxy for ``owner``, reconnected when stale."""
        mine = getattr(self._local, "proxies", None) or self._mine()
        known = self.directory.entries.get(owner)
        held = mine.held.get(owner)
        if held is not None:
            now = time.monotonic()
            current = known is not None and held.epoch == known.epoch
            if current and now - held.used < RECONNECT_IDLE:
                held.used = now
                return held
            del mine.held[owner]
            held.proxy._pyroRelease()
        fresh = known is None
        entry = known if known is not None else self.directory.lookup(owner, deadline)
        return self._connect(mine, entry, deadline, fresh)

    def _connect(
        self, mine: _ThreadProxies, entry: Entry, deadline: float, fresh: bool
    ) -> Held:
        owner = entry.node
        proxy = Proxy(entry.uri)
        proxy._pyroTimeout = max(deadline - time.monotonic(), 0.001)
        # The node keeps it for the calls that carry no budget (TaskRunner.get ...).
        proxy._pyroHandshake = {"timeout": self.directory.timeout}
        try:
            proxy._pyroBind()
        except Pyro5.errors.CommunicationError as exc:
            self.directory.forget(owner)
            error = translate(
                exc,
                owner,
                limit=proxy._pyroTimeout,
                location=entry.uri.location,
                connecting=True,
            )
            self.directory.mark_down(owner, error)
            if fresh or not isinstance(error, NodeUnreachableError):
                raise error from exc
            # The cached address may be from before a restart: look it up again.
            return self.held(owner, deadline)
        try:
            check_certificate(proxy, owner)
        except NodeIdentityError:
            self.directory.forget(owner)
            proxy._pyroRelease()
            raise
        # Close with a reset, not a FIN: a request that timed out must not sit in
        # the kernel's send queue and reach the node when the link comes back.
        sock = proxy._pyroConnection.sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
        held = mine.held[owner] = Held(
            proxy, entry.epoch, time.monotonic(), proxy._pyroTimeout, Remote(proxy)
        )
        return held

    def _mine(self) -> _ThreadProxies:
        mine: _ThreadProxies | None = getattr(self._local, "proxies", None)
        if mine is None:
            mine = self._local.proxies = _ThreadProxies()
            with self._all_lock:
                self._all.add(mine)
        return mine

    def close(self) -> None:
        """Close every proxy of every thread."""
        with self._all_lock:
            every = list(self._all)
        for mine in every:
            for held in list(mine.held.values()):
                held.proxy._pyroClaimOwnership()
                held.proxy._pyroRelease()
            mine.held.clear()
        self.directory.clear()
