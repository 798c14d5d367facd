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
from typing import cast

from . import peering, protocol
from .directory import Directory
from .errors import NodeTimeoutError, NodeUnreachableError, ProtocolError, PyroKVError
from .routing import Hop, inner_budget
from .transport import Forward, ReplySink, Transport, deliver, reset

__all__ = ["NO_TEXT_RETRY", "PeerLinks"]

log = logging.getLogger("pyrokv.peer")

#: A reply that sends its request over Pyro5 instead (see protocol.MOVING).
_MOVING = protocol.MOVING
#: How long an owner found to have no text port is reached over Pyro5 before asking again.
NO_TEXT_RETRY = 30.0


class _Link(asyncio.Protocol):
    """A pipelined text connection to one owner; replies come back in order.

    It starts with the handshake of :mod:`pyrokv.peering`; ``ready`` is done when
    both sides have proved themselves (or holds why they could not).
    """

    def __init__(self, links: PeerLinks, owner: str, address: tuple[str, int]) -> None:
        self.links = links
        self.owner = owner
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.need = -1
        self.inflight: collections.deque[Forward] = collections.deque()
        #: FWD lines of this pass of the loop not written yet (their requests are
        #: in ``inflight`` already), and whether a _flush is scheduled
        self.unsent: list[bytes] = []
        self.flushing = False
        #: the head of the last FWD line written (see protocol.forward_head): the
        #: same for every request sent within one millisecond by one decision
        self.ms = -1
        self.hop: Hop | None = None
        self.head = b""
        self.timer: asyncio.TimerHandle | None = None
        self.failed = False
        self.ready: asyncio.Future[None] = links.loop.create_future()
        self.mine = peering.new_nonce()
        self.theirs = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's are not asyncio.Transport subclasses)
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.write(peering.hello(self.links.node, self.mine))

    def _handshake(self, data: bytes) -> None:
        """Read the owner's PEER answer (and prove this node), then its OK."""
        self.buffer += data
        while not self.ready.done():
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) > 4096:
                    raise _NotAPeerError("it sent a line too long for a PEER answer")
                return
            line, self.buffer = self.buffer[: end + 1], self.buffer[end + 1 :]
            if not self.theirs:
                self._owner_proved(line.split())
            elif line != protocol.OK:
                raise _NotAPeerError(f"it refused this node's proof ({line[:60]!r})")
            else:
                self.ready.set_result(None)

    def _owner_proved(self, words: list[bytes]) -> None:
        secret = self.links.secret
        if b" ".join(words).startswith(b"ERROR too many connections"):
            # its port is full for the moment: the next request tries again
            raise ConnectionError("its text port has no room (too many connections)")
        try:
            name, theirs, given = peering.parse_hello(words, with_proof=True)
        except ProtocolError:
            raise _NotAPeerError(
                f"it answered PEER with {b' '.join(words)[:60]!r} (no cluster "
                "secret there, or another one?)"
            ) from None
        expected = peering.proof(
            secret, False, self.mine, self.owner, theirs, _show(self.address)
        )
        if name != self.owner or not peering.verify(expected, given):
            raise _NotAPeerError(
                f"the process at {_show(self.address)} could not prove it is node "
                f"{self.owner!r} of this cluster"
            )
        self.theirs = theirs
        assert self.transport is not None
        self.transport.write(
            peering.prove_line(
                peering.proof(secret, True, theirs, self.links.node, self.mine)
            )
        )

    def send(self, item: Forward) -> None:
        """Write ``item``'s ``FWD`` line: at once when the link is idle; else with
        the other requests of this pass of the loop, in one write (see _flush)."""
        hop = item.hop
        ms = int(inner_budget(item.deadline - time.monotonic()) * 1000)
        if ms != self.ms or hop is not self.hop:  # requests of one ms share a head
            self.ms, self.hop = ms, hop
            self.head = protocol.forward_head(ms, hop.version, hop.path)
        line = self.head + protocol.forward_request(item.line)
        if self.inflight:  # replies are awaited: more requests may come this pass
            self.unsent.append(line)
            if not self.flushing:
                self.flushing = True
                self.links.loop.call_soon(self._flush)
        else:  # a lone request (one client, say) waits for no other
            assert self.transport is not None
            self.transport.write(line)
        self.inflight.append(item)
        if self.timer is None:
            self._arm()

    def _flush(self) -> None:
        """Write the lines queued during the last pass of the loop, in one write."""
        self.flushing = False
        unsent, self.unsent = self.unsent, []
        if unsent and not self.failed and self.transport is not None:
            self.transport.write(b"".join(unsent))

    def data_received(self, data: bytes) -> None:
        try:
            if self.ready.done():
                self._replies(data)
            else:
                self._handshake(data)
        except (_NotAPeerError, ConnectionError) as exc:
            self._not_ready(exc)
            self._fail(str(exc))
        except Exception:  # a bug here must fail this link, not the loop
            log.exception("peer link to %s failed", self.owner)
            self._fail_reply(protocol.INTERNAL_ERROR)

    def _replies(self, data: bytes) -> None:
        """Hand each whole framed reply in ``data`` to its request's sink, in order."""
        buffer = self.buffer + data if self.buffer else data
        size = len(buffer)
        pos = 0
        need = self.need  # the length of the reply being read, or -1 before its line
        inflight = self.inflight
        done: list[tuple[ReplySink, bytes]] = []
        while True:
            if need < 0:
                end = buffer.find(b"\r\n", pos)
                if end < 0:
                    break
                head = buffer[pos:end]
                if not head.isdigit() or len(head) > 9 or not inflight:
                    deliver(done)
                    self._fail(f"answered out of protocol ({head[:40]!r})")
                    return
                need = int(head)
                pos = end + 2
            if size - pos < need:
                break
            reply = buffer[pos : pos + need]
            pos += need
            need = -1
            item = inflight.popleft()
            if reply == _MOVING:  # it would hold the link: wait over Pyro5
                self.links.fallback.send(item)
                continue
            done.append((item.sink, reply))
        self.need = need
        self.buffer = buffer[pos:]
        deliver(done)

    def connection_lost(self, exc: Exception | None) -> None:
        why = "connection lost" if exc is None else str(exc)
        self._not_ready(ConnectionError(why))
        self._fail(why)

    def _not_ready(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # read here: nobody may be waiting any more

    def _arm(self) -> None:
        self.timer = None
        if self.inflight and not self.failed:
            self.timer = self.links.loop.call_at(self.inflight[0].deadline, self._check)

    def _check(self) -> None:
        self.timer = None
        try:
            if self.inflight and self.inflight[0].deadline <= time.monotonic():
                self._fail_with(NodeTimeoutError.after(self.owner, self.links.timeout))
            else:
                self._arm()
        except Exception:  # the requests in flight must still get an answer
            log.exception("peer link to %s: its timer failed", self.owner)
            self._fail_reply(protocol.INTERNAL_ERROR)

    def _fail(self, why: str) -> None:
        host, port = self.address
        self._fail_with(
            NodeUnreachableError(
                f"node {self.owner!r} at {host}:{port} is not reachable: {why}"
            )
        )

    def _fail_with(self, error: PyroKVError) -> None:
        """Give every request in flight ``error``, and drop this link."""
        if not self.failed and self.ready.done() and not self.links.closing:
            self.links.directory.mark_down(self.owner, error)
        self._fail_reply(protocol.error_reply(error))

    def _fail_reply(self, reply: bytes) -> None:
        """Give every request in flight ``reply``, and drop this link."""
        if self.failed:
            return
        self.failed = True
        if self.timer is not None:
            self.timer.cancel()
        # A request that timed out may still reach the owner: reset, do not linger.
        if self.transport is not None:
            reset(self.transport)
        self.links.lost(self, reply.decode("utf-8", "replace").strip())
        inflight, self.inflight = self.inflight, collections.deque()
        deliver([(item.sink, reply) for item in inflight])


class _NotAPeerError(Exception):
    """The text port answered, but not as a node of this cluster."""


class _Lane:
    """One owner's state: its link, or requests waiting for one."""

    __slots__ = ("connecting", "link", "noted", "pyro_until", "queued")

    def __init__(self) -> None:
        self.link: _Link | None = None
        self.connecting = False
        self.queued: list[Forward] = []
        self.pyro_until = 0.0
        #: whether "no peer link" was logged since the link was last up: an owner
        #: that stays away is tried again per request, but logged once per outage
        self.noted = False


class PeerLinks:
    """Every peer link of one text server, keyed by owner; all on the server's loop.

    ``directory`` says where owners serve text; ``fallback`` carries the requests of
    owners no link can be opened to; ``pool`` runs the (blocking) name-server
    look-ups; ``timeout`` is what an error says a request had. This node is
    ``node``, and proves it to each owner with the cluster's ``secret`` (see
    :mod:`pyrokv.peering`), as each owner proves it is the node it should be.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        directory: Directory,
        fallback: Transport,
        pool: concurrent.futures.Executor,
        timeout: float,
        *,
        node: str,
        secret: bytes,
    ) -> None:
        self.loop = loop
        self.directory = directory
        self.fallback = fallback
        self.pool = pool
        self.timeout = timeout
        self.node = node
        self.secret = secret
        self.lanes: dict[str, _Lane] = {}
        #: set by :meth:`close`: links dropped by this node's own stop are no outage
        self.closing = False

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
        """Open ``owner``'s link (look up, connect, prove both ways), then send what
        queued meanwhile; on any failure, hand it to the fallback instead."""
        why = ""
        try:
            address = await self.loop.run_in_executor(
                self.pool, self.directory.text_address, owner
            )
            if address is None:
                why = "it serves no text protocol"
            else:
                left = min(item.deadline for item in lane.queued) - time.monotonic()
                lane.link = await asyncio.wait_for(
                    self._open(owner, address), timeout=max(left, 0.001)
                )
        except _NotAPeerError as exc:
            why = str(exc)
        except (asyncio.TimeoutError, TimeoutError):
            pass  # the owner is slow: the fallback reports it, within the deadline
        except Exception as exc:  # unreachable, not registered, ...: the same
            if not lane.noted:  # once per outage, not per request
                lane.noted = True
                log.info("no peer link to %s (%s); over Pyro5 instead", owner, exc)
        # Settle the lane before handing anything out: a reply may send the next
        # request for this owner at once, and it must find the lane as it now is.
        lane.connecting = False
        queued, lane.queued = lane.queued, []
        link = lane.link
        if link is not None:
            lane.noted = False
            log.info("peer link to node %r at %s is up", owner, _show(link.address))
            self.directory.mark_up(owner)
        if link is None:
            self.directory.forget_text(owner)
            if why:  # a link cannot be had for a while: do not ask per request
                log.warning(
                    "no peer link to node %r: %s; routing over Pyro5", owner, why
                )
                lane.pyro_until = time.monotonic() + NO_TEXT_RETRY
        for item in queued:
            try:
                if link is not None and not link.failed:
                    link.send(item)
                else:
                    self.fallback.send(item)
            except Exception:  # one request's failure is that request's
                log.exception("could not send a request to node %r", owner)
                deliver([(item.sink, protocol.INTERNAL_ERROR)])

    async def _open(self, owner: str, address: tuple[str, int]) -> _Link:
        """Connect to ``owner`` at ``address`` and prove both ways; the ready link."""
        _, link = await self.loop.create_connection(
            lambda: _Link(self, owner, address), *address
        )
        try:
            await link.ready
        except BaseException:
            if link.transport is not None:
                link.transport.abort()
            raise
        if link.buffer:  # replies cannot come before a request: out of protocol
            link._replies(b"")
        return link

    def lost(self, link: _Link, why: str = "") -> None:
        """A link failed: forget it and the owner's address (it may have moved)."""
        lane = self.lanes.get(link.owner)
        if lane is not None and lane.link is link:
            lane.link = None
            if link.ready.done() and not link.ready.exception() and not self.closing:
                log.warning("peer link to node %r is down: %s", link.owner, why)
        self.directory.forget_text(link.owner)

    def close(self) -> None:
        """Close every link (on the loop)."""
        self.closing = True
        for lane in self.lanes.values():
            if lane.link is not None and lane.link.transport is not None:
                lane.link.transport.abort()
        self.fallback.close()


def _show(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"
