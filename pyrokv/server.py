"""The text-protocol server of a node: a thin asyncio layer over protocol.py and the router.

Concurrency model (see docs/protocol.md for the measurements behind it): one asyncio
event loop, in its own thread, owns every connection. A request for a bucket that
this node owns runs inline on the loop (a dict operation: microseconds). A request
for another node's bucket goes to its owner over a peer link (pyrokv/peer.py), on
the same loop; or, with TLS or an owner without a text port, over Pyro5 from a
thread pool, coalesced per owner. Either way the loop goes on serving everyone
else, and the reply is written when it comes back, in request order for its
connection. So thousands of idle or slow connections cost no threads, and a slow
owner never holds up local buckets.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

from . import protocol
from .peer import Forward, PeerLanes
from .protocol import Command
from .registry import Registry
from .router import Router

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_ROUTE_WORKERS",
    "TextServer",
    "local_verbs",
]

DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_ROUTE_WORKERS = 32
#: Batches in flight to one owner at once, and commands in one batch.
SENDERS_PER_OWNER = 2
MAX_BATCH = 64
# Pause reading a connection whose unsent replies pass this many bytes (a client
# that pipelines without reading), and whose queued requests pass this many lines.
_HIGH_WATER = 1 << 20
_MAX_QUEUED = 1024
# The clock of asyncio's loop.time(), called directly: once per request.
_monotonic = time.monotonic


def local_verbs(
    registry: Registry,
) -> dict[bytes, tuple[int, Callable[[list[bytes]], bytes]]]:
    """The four verbs run on ``registry``: verb -> (words in its line, handler).

    A handler takes the words of a request line (``line.split()``) and returns the
    reply. This is the path of every request for a bucket of the node, so it is
    written for speed: no :class:`Command`, each word decoded where it is used.
    """
    create, put, get, delete = (
        registry.create,
        registry.put,
        registry.get,
        registry.delete,
    )
    ok, get_reply = protocol.OK, protocol.get_reply

    def do_create(w: list[bytes]) -> bytes:
        create(w[1].decode("utf-8", "surrogateescape"))
        return ok

    def do_put(w: list[bytes]) -> bytes:
        put(
            w[1].decode("utf-8", "surrogateescape"),
            w[2].decode("utf-8", "surrogateescape"),
            w[3].decode("utf-8", "surrogateescape"),
        )
        return ok

    def do_get(w: list[bytes]) -> bytes:
        return get_reply(
            get(
                w[1].decode("utf-8", "surrogateescape"),
                w[2].decode("utf-8", "surrogateescape"),
            )
        )

    def do_delete(w: list[bytes]) -> bytes:
        delete(
            w[1].decode("utf-8", "surrogateescape"),
            w[2].decode("utf-8", "surrogateescape"),
        )
        return ok

    return {
        b"CREATE": (2, do_create),
        b"PUT": (4, do_put),
        b"GET": (3, do_get),
        b"DELETE": (3, do_delete),
    }


class _Connection(asyncio.Protocol):
    """One client connection: split lines, answer in order, enforce the limits."""

    def __init__(self, server: TextServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.queue: collections.deque[bytes] = collections.deque()
        self.waiting = False  # a routed request of this connection is in flight
        self.closing = False
        self.paused = False
        self.idle: asyncio.TimerHandle | None = None
        self.active = 0.0

    # -- asyncio callbacks ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server = self.server
        if len(server.connections) >= server.max_connections:
            transport.write(b"ERROR too many connections, try again later\r\n")
            transport.close()
            self.closing = True
            return
        server.connections.add(self)
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        if self.idle is not None:
            self.idle.cancel()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.too_long:
            return
        server = self.server
        self.active = _monotonic()  # the loop's clock; see _touch
        if self.idle is None:
            self._touch()
        buffer = self.buffer + data if self.buffer else data
        lines = buffer.split(b"\n")
        self.buffer = lines.pop()
        limit = server.max_line
        if len(buffer) > limit and (
            len(self.buffer) > limit or any(len(line) > limit for line in lines)
        ):
            # Answer what came before the long line, then refuse it and hang up:
            # the rest of that line must never run as commands of its own.
            for line in lines:
                if len(line) > limit:
                    break
                self.queue.append(line)
            self.queue.append(b"")  # a marker: see _run
            self.buffer = b""
            self.too_long = True
        else:
            self.queue.extend(lines)
        self._run()
        if len(self.queue) > _MAX_QUEUED and not self.paused and self.transport:
            self.transport.pause_reading()
            self.paused = True

    def pause_writing(self) -> None:
        if self.transport is not None and not self.paused:
            self.transport.pause_reading()
            self.paused = True

    def resume_writing(self) -> None:
        self._resume()

    def eof_received(self) -> bool:
        # Half-closed by the client: answer what it sent, then close.
        self.eof = True
        self._run()
        return True

    # -- processing -----------------------------------------------------------

    too_long = False
    eof = False
    framed = False  # the request in flight came as FWD: frame its reply

    def _run(self) -> None:
        """Answer queued lines in order until one must wait for another node."""
        transport = self.transport
        if transport is None or self.closing:
            return
        out: list[bytes] = []
        queue = self.queue
        server = self.server
        node, verbs = server.node, server.verbs
        by_byte = server.router.table.by_byte  # one table for the whole batch
        while queue and not self.waiting:
            line = queue.popleft()
            if self.too_long and not queue:
                out.append(protocol.LINE_TOO_LONG)
                self.closing = True
                break
            words = line.split()
            verb = verbs.get(words[0]) if words else None
            if (
                verb is not None
                and len(words) == verb[0]
                and by_byte[words[1][0]] == node
            ):
                # The common case, a bucket of this node: answered here and now.
                try:
                    out.append(verb[1](words))
                except Exception as exc:  # no bucket, bad key: one reply
                    out.append(protocol.error_reply(exc))
            else:
                self._other(line, out)
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self.closing or (self.eof and not queue and not self.waiting):
            transport.close()
        elif self.paused and len(queue) <= _MAX_QUEUED // 2:
            self._resume()

    def _other(self, line: bytes, out: list[bytes]) -> None:
        """Answer a line that is not a request for a bucket in ``verbs``: route it."""
        command = protocol.parse_line(line)
        if command is None:
            if line.startswith(b"FWD "):  # forwarded by another node
                self._run_forwarded(line, out)
            else:
                out.append(protocol.UNKNOWN)
            return
        server = self.server
        try:
            if server.router.table.owner(command.bucket) == server.node:
                out.append(server.local_reply(command, line))
                return
        except Exception as exc:  # no route, no bucket, bad key: one reply
            out.append(protocol.error_reply(exc))
            return
        self._forward(command, line, [], server.router.timeout, out)

    def _run_forwarded(self, line: bytes, out: list[bytes]) -> None:
        """Answer a ``FWD`` line: route it by this node's table; reply framed."""
        router = self.server.router
        parsed = protocol.parse_forwarded(line)
        command = None if parsed is None else protocol.parse_line(parsed[2])
        if parsed is None or command is None:
            out.append(protocol.framed(protocol.UNKNOWN))
            return
        budget, upstream, inner = parsed
        try:
            owner = router.next_hop(command.bucket, [*upstream, self.server.node])
            if owner is None:
                reply = self.server.local_reply(command, inner)
            else:
                self.framed = True
                self._forward(command, inner, upstream, budget, out)
                return
        except Exception as exc:
            reply = protocol.error_reply(exc)
        out.append(protocol.framed(reply))

    def _forward(
        self,
        command: Command,
        line: bytes,
        upstream: list[str],
        budget: float,
        out: list[bytes],
    ) -> None:
        """Send ``command`` on towards its owner; this connection waits for it."""
        router = self.server.router
        try:
            path = [*upstream, self.server.node]
            owner = router.next_hop(command.bucket, path)
        except Exception as exc:
            reply = protocol.error_reply(exc)
            out.append(protocol.framed(reply) if self.framed else reply)
            self.framed = False
            return
        if owner is None:  # the table changed under us: it is ours now
            owner = self.server.node
        limit = min(budget, router.timeout)
        self.waiting = True
        self.server.forward(
            owner,
            Forward(self, command, line, upstream, path, time.monotonic() + limit),
        )

    def routed(self, reply: bytes) -> None:
        """The reply of this connection's routed request (called on the loop)."""
        self.waiting = False
        if self.framed:
            reply = protocol.framed(reply)
            self.framed = False
        if self.transport is None or self.closing:
            return
        self.transport.write(reply)
        self._touch()
        self._run()

    def _resume(self) -> None:
        transport = self.transport
        if (
            self.paused
            and transport is not None
            and not self.closing
            and transport.get_write_buffer_size() < _HIGH_WATER
        ):
            self.paused = False
            transport.resume_reading()

    def _touch(self) -> None:
        # Activity only moves a timestamp; the one timer checks it when it fires.
        # (Re-arming a timer on every request costs more than the request itself.)
        loop = self.server.loop
        self.active = loop.time()
        if self.idle is None:
            self.idle = loop.call_at(
                self.active + self.server.idle_timeout, self._expire
            )

    def _expire(self) -> None:
        loop = self.server.loop
        due = self.active + self.server.idle_timeout
        if self.waiting or due > loop.time():
            # active since the timer was set, or a routed request is still running
            # (it has its own timeout): look again later
            self.idle = loop.call_at(max(due, loop.time() + 1.0), self._expire)
            return
        self.idle = None
        if self.transport is not None and not self.closing:
            self.closing = True
            self.transport.write(b"ERROR idle timeout, closing\r\n")
            self.transport.close()


class TextServer:
    """Serves the text protocol on (host, port) in a background thread, over ``router``."""

    def __init__(
        self,
        router: Router,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_line: int = protocol.DEFAULT_MAX_LINE,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        route_workers: int = DEFAULT_ROUTE_WORKERS,
        peer_links: bool = True,
        registry: Registry | None = None,
    ) -> None:
        if router.node is None or router.local is None:
            raise ValueError("a TextServer needs the router of a node (node, local)")
        self.router = router
        self.node: str = router.node
        # The four verbs on a bucket of this node run straight on the registry:
        # no task machinery (allowlist lookup, context variable), which is there
        # for tasks named by clients, not for these.
        self.verbs: dict[bytes, tuple[int, Callable[[list[bytes]], bytes]]] = (
            {} if registry is None else local_verbs(registry)
        )
        self.max_line = max_line
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.connections: set[_Connection] = set()
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._pending: collections.defaultdict[str, collections.deque[Forward]] = (
            collections.defaultdict(collections.deque)
        )
        self._senders: collections.Counter[str] = collections.Counter()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=route_workers, thread_name_prefix="pyrokv-route"
        )
        try:
            self._server = self.loop.run_until_complete(
                self.loop.create_server(
                    lambda: _Connection(self), host, port, backlog=1024
                )
            )
        except BaseException:
            self._pool.shutdown()
            self.loop.close()
            raise
        self.address: tuple[str, int] = self._server.sockets[0].getsockname()[:2]
        self.lanes = (
            PeerLanes(self.loop, router, self._pool, self._over_pyro)
            if peer_links
            else None
        )
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="pyrokv-text", daemon=True
        )
        self._thread.start()

    def local_reply(self, command: Command, line: bytes) -> bytes:
        """Run ``command`` (parsed from ``line``) on this node, its owner; the reply."""
        if self.verbs:
            return self.verbs[command.verb][1](line.split())
        result = self.router.local(command.task, command.args, None)  # type: ignore[misc]
        return protocol.reply_for(command, result)

    def forward(self, owner: str, item: Forward) -> None:
        """Send ``item`` towards ``owner``: on a peer link, else over Pyro5 (on the loop)."""
        if self.lanes is not None:
            self.lanes.send(owner, item)
        else:
            self._over_pyro(owner, item)

    def _over_pyro(self, owner: str, item: Forward) -> None:
        """Queue ``item`` for its next hop; a sender on the pool takes it there.

        Requests for the same owner that arrive while a sender is busy travel
        together in its next Pyro5 call (``Router.forward_batch``): one round trip
        for many clients.
        """
        with self._lock:
            self._pending[owner].append(item)
            if self._senders[owner] >= SENDERS_PER_OWNER:
                return
            self._senders[owner] += 1
        self._pool.submit(self._drain, owner)

    def _drain(self, owner: str) -> None:
        """Send ``owner``'s queued requests in batches until none are left."""
        while True:
            with self._lock:
                pending = self._pending[owner]
                if not pending:
                    self._senders[owner] -= 1
                    return
                batch = [pending.popleft() for _ in range(min(len(pending), MAX_BATCH))]
            replies = self._send(owner, batch)
            try:
                self.loop.call_soon_threadsafe(self._deliver, replies)
            except RuntimeError:  # the loop was closed: the server is stopping
                with self._lock:
                    self._senders[owner] -= 1
                return

    def _send(self, owner: str, batch: list[Forward]) -> list[tuple[Any, bytes]]:
        # Deadlines count from arrival: time spent queued behind other routed
        # requests (a hung owner holds the senders) counts too.
        left = min(item.deadline for item in batch) - time.monotonic()
        singles = [item for item in batch if item.upstream] if len(batch) > 1 else batch
        together = (
            [item for item in batch if not item.upstream] if len(batch) > 1 else []
        )
        replies: list[tuple[Any, bytes]] = []
        for item in singles:  # nothing to coalesce: the plain call is cheaper
            c = item.command
            try:
                value = self.router.forwarded(
                    c.bucket, c.task, c.args, None, item.upstream, left
                )
                replies.append((item.conn, protocol.reply_for(c, value)))
            except Exception as exc:
                replies.append((item.conn, protocol.error_reply(exc)))
        if together:
            items = [
                [i.command.bucket, i.command.task, i.command.args] for i in together
            ]
            try:
                results = self.router.forward_batch(owner, items, timeout=left)
            except Exception as exc:  # owner unreachable: the same error for all
                reply = protocol.error_reply(exc)
                replies += [(item.conn, reply) for item in together]
            else:
                replies += [
                    (
                        item.conn,
                        protocol.reply_for(item.command, value)
                        if ok
                        else protocol.error_reply(value),
                    )
                    for item, (ok, value) in zip(together, results, strict=True)
                ]
        return replies

    @staticmethod
    def _deliver(replies: list[tuple[Any, bytes]]) -> None:
        for conn, reply in replies:
            conn.routed(reply)

    def stop(self) -> None:
        """Close every connection and the listening socket; stop the thread."""

        async def shutdown() -> None:
            self._server.close()
            if self.lanes is not None:
                self.lanes.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            await self._server.wait_closed()

        if self.loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        try:
            future.result(timeout=5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if not self._thread.is_alive():
            self.loop.close()

    def __enter__(self) -> TextServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
