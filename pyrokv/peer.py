"""Peer links: forward text requests to their owner's text port, on the event loop.

A text request for another node's bucket could go over Pyro5 (a thread-pool hand-off,
serpent, a Pyro5 call: about 400 µs here). When the owner serves the text protocol
too, this node keeps one pipelined connection to it instead, writes
``FWD <ms left> <path> <original line>`` and relays the owner's reply bytes as they
are: no threads, no serializer, many requests in flight on one connection. The owner
routes a ``FWD`` line by its own table, like a request that came over Pyro5; the
path it carries keeps loop detection, the time left keeps the timeout.

The links carry what clients could send to the owner's text port themselves, so
they are used only where the text protocol is (no TLS); an owner that serves no
text protocol, or a cluster with TLS, is reached over Pyro5.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from . import protocol
from .errors import NodeUnavailableError, PyroKVError

if TYPE_CHECKING:
    import concurrent.futures

    from .protocol import Command
    from .router import Router

__all__ = ["Forward", "PeerLanes"]

#: How long an owner found to have no text port is reached over Pyro5 before asking again.
NO_TEXT_RETRY = 30.0


class Forward(NamedTuple):
    """One request on its way to another node."""

    conn: Any  # the client connection waiting for the reply (server._Connection)
    command: Command
    line: bytes  # the original request line, sent on as it is
    upstream: list[str]  # nodes visited before this one
    path: list[str]  # upstream + this node
    deadline: float  # time.monotonic() by which the reply must be back


class _Link(asyncio.Protocol):
    """A pipelined text connection to one owner; replies come back in order."""

    def __init__(self, lanes: PeerLanes, owner: str, address: tuple[str, int]) -> None:
        self.lanes = lanes
        self.owner = owner
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.need = -1
        self.inflight: collections.deque[Forward] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.failed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, item: Forward) -> None:
        left = item.deadline - time.monotonic()
        inner = left - min(0.5, left * 0.1)  # the owner gives up first, and says why
        assert self.transport is not None
        self.transport.write(protocol.forward_line(inner, item.path, item.line))
        self.inflight.append(item)
        if self.timer is None:
            self._arm()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        pos = 0
        while True:
            if self.need < 0:
                end = buffer.find(b"\r\n", pos)
                if end < 0:
                    break
                size = buffer[pos:end]
                if not size.isdigit() or not self.inflight:
                    self._fail(f"answered out of protocol ({size[:40]!r})")
                    return
                self.need = int(size)
                pos = end + 2
            if len(buffer) - pos < self.need:
                break
            reply = buffer[pos : pos + self.need]
            pos += self.need
            self.need = -1
            self.inflight.popleft().conn.routed(reply)
        self.buffer = buffer[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("connection lost" if exc is None else str(exc))

    def _arm(self) -> None:
        self.timer = None
        if self.inflight and not self.failed:
            loop = self.lanes.loop
            self.timer = loop.call_at(self.inflight[0].deadline, self._check)

    def _check(self) -> None:
        self.timer = None
        if self.inflight and self.inflight[0].deadline <= time.monotonic():
            limit = self.lanes.router.timeout
            self._fail_with(
                NodeUnavailableError(
                    f"node {self.owner!r} did not answer within {limit:.1f}s"
                )
            )
        else:
            self._arm()

    def _fail(self, why: str) -> None:
        host, port = self.address
        self._fail_with(
            NodeUnavailableError(
                f"node {self.owner!r} at {host}:{port} is not reachable: {why}"
            )
        )

    def _fail_with(self, error: PyroKVError) -> None:
        """Give every request in flight ``error``, and drop this link."""
        if self.failed:
            return
        self.failed = True
        if self.timer is not None:
            self.timer.cancel()
        # A request that timed out may still reach the owner: reset, do not linger.
        if self.transport is not None:
            self.transport.abort()
        self.lanes.lost(self)
        reply = protocol.error_reply(error)
        inflight, self.inflight = self.inflight, collections.deque()
        for item in inflight:
            item.conn.routed(reply)


class _Lane:
    __slots__ = ("connecting", "link", "pyro_until", "queued")

    def __init__(self) -> None:
        self.link: _Link | None = None
        self.connecting = False
        self.queued: list[Forward] = []
        self.pyro_until = 0.0


class PeerLanes:
    """Every peer link of one text server, keyed by owner; all on the server's loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        router: Router,
        pool: concurrent.futures.Executor,
        over_pyro: Callable[[str, Forward], None],
    ) -> None:
        self.loop = loop
        self.router = router
        self.pool = pool
        self.over_pyro = over_pyro
        self.lanes: dict[str, _Lane] = {}

    def send(self, owner: str, item: Forward) -> None:
        """Forward ``item`` to ``owner``: on its link, or over Pyro5 if it has none."""
        lane = self.lanes.get(owner)
        if lane is None:
            lane = self.lanes[owner] = _Lane()
        if lane.link is not None:
            lane.link.send(item)
        elif lane.pyro_until > time.monotonic():
            self.over_pyro(owner, item)
        else:
            lane.queued.append(item)
            if not lane.connecting:
                lane.connecting = True
                self.loop.create_task(self._connect(owner, lane))

    async def _connect(self, owner: str, lane: _Lane) -> None:
        address: tuple[str, int] | None = None
        try:
            address = await self.loop.run_in_executor(
                self.pool, self.router.text_address, owner
            )
            if address is None:  # the owner serves no text protocol: use Pyro5
                lane.pyro_until = time.monotonic() + NO_TEXT_RETRY
                queued, lane.queued = lane.queued, []
                for item in queued:
                    self.over_pyro(owner, item)
                return
            left = min(item.deadline for item in lane.queued) - time.monotonic()
            _, link = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Link(self, owner, address),
                    *address,
                ),
                timeout=max(left, 0.001),
            )
            lane.link = link
            queued, lane.queued = lane.queued, []
            for item in queued:
                link.send(item)
        except Exception as exc:
            self.router.forget_text(owner)
            if isinstance(exc, PyroKVError):
                error: PyroKVError = exc
            elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
                error = NodeUnavailableError(
                    f"node {owner!r} did not answer within "
                    f"{self.router.timeout:.1f}s (connecting to "
                    f"{address[0]}:{address[1]})"
                    if address
                    else f"node {owner!r} was not reached in time"
                )
            else:
                where = f" at {address[0]}:{address[1]}" if address else ""
                error = NodeUnavailableError(
                    f"node {owner!r}{where} is not reachable: {exc}"
                )
            reply = protocol.error_reply(error)
            queued, lane.queued = lane.queued, []
            for item in queued:
                item.conn.routed(reply)
        finally:
            lane.connecting = False

    def lost(self, link: _Link) -> None:
        """A link failed: forget it and the owner's address (it may have moved)."""
        lane = self.lanes.get(link.owner)
        if lane is not None and lane.link is link:
            lane.link = None
        self.router.forget_text(link.owner)

    def close(self) -> None:
        """Close every link (on the loop)."""
        for lane in self.lanes.values():
            if lane.link is not None and lane.link.transport is not None:
                lane.link.transport.abort()
