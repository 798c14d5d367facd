"""Peer links: text requests to their owner's text port, pipelined, on the event loop.

A :class:`~pyrokv.transport.Transport`. For each owner that serves the text
protocol, this node keeps one connection, writes
``FWD <ms left> <path> <original line>`` and relays the owner's framed reply bytes
as they are: no threads, no serializer, many requests in flight on one connection.
An owner with no text port is handed to the ``fallback`` transport (Pyro5).
See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time

from . import protocol
from .directory import Directory
from .errors import NodeTimeoutError, NodeUnreachableError, PyroKVError
from .routing import inner_budget
from .transport import Forward, ReplySink, Transport, deliver

__all__ = ["NO_TEXT_RETRY", "PeerLinks"]

log = logging.getLogger("pyrokv.peer")

#: How long an owner found to have no text port is reached over Pyro5 before asking again.
NO_TEXT_RETRY = 30.0


class _Link(asyncio.Protocol):
    """A pipelined text connection to one owner; replies come back in order."""

    def __init__(self, links: PeerLinks, owner: str, address: tuple[str, int]) -> None:
        self.links = links
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
        assert self.transport is not None
        self.transport.write(
            protocol.forward_line(inner_budget(left), item.hop.path, item.line)
        )
        self.inflight.append(item)
        if self.timer is None:
            self._arm()

    def data_received(self, data: bytes) -> None:
        try:
            self._replies(data)
        except Exception:  # a bug here must fail this link, not the loop
            log.exception("peer link to %s failed", self.owner)
            self._fail("internal error")

    def _replies(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        pos = 0
        done: list[tuple[ReplySink, bytes]] = []
        while not self.failed:
            if self.need < 0:
                end = buffer.find(b"\r\n", pos)
                if end < 0:
                    break
                size = buffer[pos:end]
                if not size.isdigit() or len(size) > 9 or not self.inflight:
                    deliver(done)
                    self._fail(f"answered out of protocol ({size[:40]!r})")
                    return
                self.need = int(size)
                pos = end + 2
            if len(buffer) - pos < self.need:
                break
            reply = buffer[pos : pos + self.need]
            pos += self.need
            self.need = -1
            done.append((self.inflight.popleft().sink, reply))
        self.buffer = buffer[pos:]
        deliver(done)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("connection lost" if exc is None else str(exc))

    def _arm(self) -> None:
        self.timer = None
        if self.inflight and not self.failed:
            self.timer = self.links.loop.call_at(self.inflight[0].deadline, self._check)

    def _check(self) -> None:
        self.timer = None
        if self.inflight and self.inflight[0].deadline <= time.monotonic():
            self._fail_with(NodeTimeoutError.after(self.owner, self.links.timeout))
        else:
            self._arm()

    def _fail(self, why: str) -> None:
        host, port = self.address
        self._fail_with(
            NodeUnreachableError(
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
        self.links.lost(self)
        reply = protocol.error_reply(error)
        inflight, self.inflight = self.inflight, collections.deque()
        deliver([(item.sink, reply) for item in inflight])


class _Lane:
    """One owner's state: its link, or requests waiting for one."""

    __slots__ = ("connecting", "link", "pyro_until", "queued")

    def __init__(self) -> None:
        self.link: _Link | None = None
        self.connecting = False
        self.queued: list[Forward] = []
        self.pyro_until = 0.0


class PeerLinks:
    """Every peer link of one text server, keyed by owner; all on the server's loop.

    ``directory`` says where owners serve text; ``fallback`` carries the requests of
    owners that serve none; ``pool`` runs the (blocking) name-server look-ups;
    ``timeout`` is what an error says a request had.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        directory: Directory,
        fallback: Transport,
        pool: concurrent.futures.Executor,
        timeout: float,
    ) -> None:
        self.loop = loop
        self.directory = directory
        self.fallback = fallback
        self.pool = pool
        self.timeout = timeout
        self.lanes: dict[str, _Lane] = {}

    def send(self, request: Forward) -> None:
        """Forward ``request`` on its owner's link, or over the fallback if it has none."""
        owner = request.hop.owner
        lane = self.lanes.get(owner)
        if lane is None:
            lane = self.lanes[owner] = _Lane()
        if lane.link is not None:
            lane.link.send(request)
        elif lane.pyro_until > time.monotonic():
            self.fallback.send(request)
        else:
            lane.queued.append(request)
            if not lane.connecting:
                lane.connecting = True
                self.loop.create_task(self._connect(owner, lane))

    async def _connect(self, owner: str, lane: _Lane) -> None:
        address: tuple[str, int] | None = None
        error: PyroKVError | None = None
        try:
            address = await self.loop.run_in_executor(
                self.pool, self.directory.text_address, owner
            )
            if address is not None:
                left = min(item.deadline for item in lane.queued) - time.monotonic()
                _, link = await asyncio.wait_for(
                    self.loop.create_connection(
                        lambda: _Link(self, owner, address), *address
                    ),
                    timeout=max(left, 0.001),
                )
                lane.link = link
        except PyroKVError as exc:
            error = exc
        except (asyncio.TimeoutError, TimeoutError):
            error = NodeTimeoutError.after(
                owner, self.timeout, None if address is None else _show(address)
            )
        except Exception as exc:
            where = "" if address is None else f" at {_show(address)}"
            error = NodeUnreachableError(
                f"node {owner!r}{where} is not reachable: {exc}"
            )
        # Settle the lane before handing anything out: a reply may send the next
        # request for this owner at once, and it must find the lane as it now is.
        lane.connecting = False
        queued, lane.queued = lane.queued, []
        if error is not None:
            self.directory.forget_text(owner)
            reply = protocol.error_reply(error)
            deliver([(item.sink, reply) for item in queued])
        elif lane.link is not None:
            for item in queued:
                lane.link.send(item)
        else:  # the owner serves no text protocol: use the fallback for a while
            lane.pyro_until = time.monotonic() + NO_TEXT_RETRY
            for item in queued:
                self.fallback.send(item)

    def lost(self, link: _Link) -> None:
        """A link failed: forget it and the owner's address (it may have moved)."""
        lane = self.lanes.get(link.owner)
        if lane is not None and lane.link is link:
            lane.link = None
        self.directory.forget_text(link.owner)

    def close(self) -> None:
        """Close every link (on the loop)."""
        for lane in self.lanes.values():
            if lane.link is not None and lane.link.transport is not None:
                lane.link.transport.abort()
        self.fallback.close()


def _show(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"
