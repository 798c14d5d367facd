"""How a text server sends a request on to its owner: one interface, two transports.

The text server makes the routing decision (a :class:`~pyrokv.routing.Hop`) and
hands the request to a :class:`Transport` with ``send``; it does not know which one
it has. The reply comes back to the request's :class:`ReplySink` (the client
connection), on the server's event loop, as the bytes to write.

- :class:`PyroLanes` (here): Pyro5 calls from a thread pool, coalesced per owner:
  requests that arrive while a call to their owner is in flight travel together in
  its next call (``TaskRunner.route_batch``).
- :class:`pyrokv.peer.PeerLinks`: one pipelined text connection per owner, on the
  loop; an owner without a text port is handed to another transport (PyroLanes).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import socket
import struct
import threading
from typing import TYPE_CHECKING, NamedTuple, Protocol

from . import protocol
from .defaults import DEFAULT_MAX_MESSAGE
from .routing import Hop

if TYPE_CHECKING:
    from .protocol import Verb
    from .router import Router

__all__ = [
    "MAX_BATCH",
    "SENDERS_PER_OWNER",
    "Forward",
    "PyroLanes",
    "ReplySink",
    "Transport",
]

log = logging.getLogger("pyrokv.transport")

#: Calls in flight to one owner at once, and requests in one call.
SENDERS_PER_OWNER = 2
MAX_BATCH = 64


class ReplySink(Protocol):
    """Whoever waits for a forwarded request's reply: the client connection."""

    def routed(self, reply: bytes) -> None:
        """Take the reply (called on the event loop)."""

    def failed(self) -> None:
        """Taking a reply raised: give up on this sink (drop its connection)."""


class Forward(NamedTuple):
    """One request on its way to another node (a tuple: one is built per request)."""

    sink: ReplySink
    verb: Verb
    words: list[bytes]  # the request's words, the verb first
    line: bytes  # the request line as the client sent it, sent on as it is
    hop: Hop  # where it goes, and the nodes it has visited (this one last)
    deadline: float  # time.monotonic() by which the reply must be back


class Transport(Protocol):
    """Sends requests to their owners; each reply goes to its request's sink."""

    def send(self, request: Forward) -> None:
        """Send ``request`` to ``request.hop.owner`` (called on the event loop)."""

    def close(self) -> None:
        """Drop every connection (called on the event loop)."""


def deliver(replies: list[tuple[ReplySink, bytes]]) -> None:
    """Hand each reply to its sink; one sink's failure does not stop the others.

    A sink that fails to take its reply can no longer answer in order: it is
    dropped (``failed``), rather than left waiting for ever.
    """
    for sink, reply in replies:
        try:
            sink.routed(reply)
        except Exception:
            log.exception("could not deliver a routed reply")
            try:
                sink.failed()
            except Exception:
                log.exception("could not drop the connection of a failed reply")


_LINGER_0 = struct.pack("ii", 1, 0)


def reset(transport: asyncio.Transport) -> None:
    """Close ``transport`` with a reset (RST), dropping whatever it still has to send.

    ``abort()`` alone drops asyncio's buffer but leaves the kernel's: the socket
    would linger, still sending, to a peer that does not read.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
        except OSError:
            pass
    transport.abort()


class PyroLanes:
    """Requests to their owners over Pyro5, from ``pool``, coalesced per owner.

    A call carries at most :data:`MAX_BATCH` requests, and no more of them than fit
    in half of ``max_message`` (the largest message a node accepts).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        router: Router,
        pool: concurrent.futures.Executor,
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        self.loop = loop
        self.router = router
        self.pool = pool
        # A call carries its requests' lines and little else: half the limit
        # leaves room for serpent's quoting and the call's own fields.
        self.max_bytes = max_message // 2
        self._lock = threading.Lock()
        self._pending: collections.defaultdict[str, collections.deque[Forward]] = (
            collections.defaultdict(collections.deque)
        )
        self._senders: collections.Counter[str] = collections.Counter()

    def send(self, request: Forward) -> None:
        """Queue ``request`` for its owner; a sender on the pool takes it there."""
        owner = request.hop.owner
        with self._lock:
            self._pending[owner].append(request)
            if self._senders[owner] >= SENDERS_PER_OWNER:
                return
            self._senders[owner] += 1
        self.pool.submit(self._drain, owner)

    def close(self) -> None:
        """Nothing to drop: the router's proxies close with the router."""

    def _drain(self, owner: str) -> None:
        """Send ``owner``'s queued requests in batches until none are left."""
        while True:
            with self._lock:
                pending = self._pending[owner]
                if not pending:
                    self._senders[owner] -= 1
                    return
                batch = [pending.popleft()]
                size = len(batch[0].line)
                while pending and len(batch) < MAX_BATCH:
                    size += len(pending[0].line)
                    if size > self.max_bytes:
                        break
                    batch.append(pending.popleft())
            try:
                replies = self._send(batch)
            except Exception:  # every request of the batch still gets an answer
                log.exception("a call to node %r failed", owner)
                replies = [(item.sink, protocol.INTERNAL_ERROR) for item in batch]
            try:
                self.loop.call_soon_threadsafe(deliver, replies)
            except RuntimeError:  # the loop was closed: the server is stopping
                with self._lock:
                    self._senders[owner] -= 1
                return

    def _send(self, batch: list[Forward]) -> list[tuple[ReplySink, bytes]]:
        """One call per path and table version in ``batch`` (usually one): each
        request with its reply. (Requests queued across a table switch were routed
        by two versions: each must carry its own, see :class:`~pyrokv.routing.Hop`.)

        Each connection has one routed request in flight at a time, so the order of
        replies across connections does not matter.
        """
        # Deadlines count from arrival: time spent queued behind other routed
        # requests (a hung owner holds the senders) counts too.
        deadline = min(item.deadline for item in batch)
        groups: dict[Hop, list[Forward]] = {}  # one owner: by path and version
        for item in batch:
            groups.setdefault(item.hop, []).append(item)
        replies: list[tuple[ReplySink, bytes]] = []
        for items in groups.values():
            replies += zip(
                (item.sink for item in items), self._call(items, deadline), strict=True
            )
        return replies

    def _call(self, items: list[Forward], deadline: float) -> list[bytes]:
        hop = items[0].hop
        requests = [(item.verb, _args(item.words)) for item in items]
        try:
            if len(items) == 1:  # nothing to coalesce: the plain call is cheaper
                verb, args = requests[0]
                value = self.router.send(
                    hop, args[0], verb.task_name, args, None, deadline
                )
                return [_reply(verb, True, value)]
            results = self.router.send_batch(
                hop,
                [[args[0], verb.task_name, args] for verb, args in requests],
                deadline,
            )
        except Exception as exc:  # owner unreachable: the same error for all
            return [protocol.error_reply(exc)] * len(items)
        return [
            _reply(verb, ok, value)
            for (verb, _), (ok, value) in zip(requests, results, strict=True)
        ]


def _reply(verb: Verb, ok: bool, value: object) -> bytes:
    """The reply for a result (``ok``) or an exception; never raises."""
    try:
        if ok:
            return verb.reply_to(value)
        if isinstance(value, BaseException):
            return protocol.error_reply(value)
        return protocol.error_reply(TypeError(f"not an exception: {value!r:.60}"))
    except Exception:
        log.exception("could not format the reply of a %s", verb.name.decode())
        return protocol.INTERNAL_ERROR


def _args(words: list[bytes]) -> list[str]:
    return [w.decode("utf-8", "surrogateescape") for w in words[1:]]
