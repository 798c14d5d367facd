"""The text-protocol server of a node: a thin asyncio layer over protocol, routing and a transport.

One asyncio event loop, in its own thread, owns every connection (see
docs/protocol.md for the concurrency model and docs/architecture.md for the flow).
Each request line is decided once (:class:`~pyrokv.routing.Routing`): a request
for a bucket of this node runs inline on the loop, straight on the registry (a dict
operation: microseconds); any other goes to its owner through the server's
:class:`~pyrokv.transport.Transport`, and the loop goes on serving everyone else.
The reply is written when it comes back, in request order for its connection.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import hmac
import logging
import socket
import ssl as ssl_module
import threading
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from . import loops, malloc, peering, protocol
from .defaults import DEFAULT_EVENT_LOOP, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_MESSAGE
from .errors import HandOffPendingError, ProtocolError
from .logs import RateLimited
from .peer import PeerLinks
from .protocol import CONNECTION, FORWARD, NODE, VERBS, Handler, Verb
from .registry import Registry
from .router import Router
from .routing import HERE, WAIT, Decision, Hop
from .stats import Stats
from .transport import Forward, PyroLanes, Transport, reset

if TYPE_CHECKING:
    from .durable import Reply

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "PEER_RESERVE",
    "ROUTE_WORKERS",
    "TextServer",
]

log = logging.getLogger("pyrokv.server")
_refused_peers = RateLimited(log)
_overloaded = RateLimited(log)

DEFAULT_MAX_CONNECTIONS = 1000
#: Threads that make Pyro5 calls for routed text requests (and name-server look-ups).
ROUTE_WORKERS = 32
#: Stop answering a connection whose unsent replies pass this many bytes (a client
#: that pipelines without reading), until they drain; replies are written out every
#: _FLUSH bytes, so one packet of requests cannot pile up more than that.
HIGH_WATER = 256 << 10
_FLUSH = 64 << 10
#: The kernel's send buffer of a client connection (Linux doubles it). Left to
#: itself it grows to megabytes on loopback, and replies built for a client that
#: does not read would fill it before HIGH_WATER is ever reached.
SEND_BUFFER = 128 << 10
#: A connection whose unsent replies pass this many bytes is aborted.
HARD_LIMIT = 4 << 20
#: Connections that may be stopped on unsent replies at once; past this, the one
#: stopped longest is aborted, so their buffers cost the node at most about
#: MAX_BLOCKED * (HIGH_WATER + _FLUSH).
MAX_BLOCKED = 128
#: Connections a node accepts past max_connections for other nodes: each must
#: open with PEER, or it is told "too many connections" and closed.
PEER_RESERVE = 64
#: Seconds a reserve connection has to prove it is a node before it is closed.
RESERVE_WAIT = 2.0
#: How much longer than max_line a peer's line may be: its FWD prefix.
PEER_EXTRA = 4096
_TOO_MANY = b"ERROR too many connections, try again later\r\n"
#: Stands in the queue for a peer's line that was too long: no line from the wire
#: can be it, since lines are split at this very byte.
_LONG = b"\n"
_QUIT = b"QUIT"
#: What a connection may send before AUTH, when the node has a password.
_BEFORE_AUTH = (b"AUTH", b"QUIT")
_NOAUTH = b"ERROR NOAUTH authentication required\r\n"
_BAD_PASSWORD = b"ERROR invalid password\r\n"
_BAD_PROOF = b"ERROR peer authentication failed\r\n"
#: How long a wrong AUTH waits before its answer, in seconds.
AUTH_DELAY = 0.5
#: Longest a TLS client may take for its handshake on the text port, in seconds.
HANDSHAKE_TIMEOUT = 5.0
# Pause reading a connection whose queued requests pass this many lines.
_MAX_QUEUED = 1024
_WAITING, _BLOCKED = 1, 2  # the bits of _Connection.hold
#: How often requests waiting for a range's data are checked for their deadline (s).
PARKED_CHECK = 0.1
#: One local request in _SAMPLE + 1 is timed for the latency histogram (and counts
#: for all of them): a clock read per request would cost more than the request.
_SAMPLE = 63
# The clock of asyncio's loop.time(), called directly: once per request.
_monotonic = time.monotonic
_crc32 = zlib.crc32


class _Connection(asyncio.Protocol):
    """One client connection: split lines, answer in order, enforce the limits."""

    def __init__(self, server: TextServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.queue: collections.deque[bytes] = collections.deque()
        #: Why the connection answers no more lines for now: _WAITING (a routed
        #: request or a delayed reply is in flight), _BLOCKED (its unsent replies
        #: passed the high-water mark), or both; one int, one check per line.
        self.hold = 0
        self.framed = False  # ... and it came as FWD: frame its reply
        self.closing = False
        self.paused = False  # reading is paused
        self.limit = server.max_line
        #: The verbs this connection may run now (none before a reserve
        #: connection has proved it is a node).
        self.handlers = server.handlers
        self.reserve = False  # admitted past max_connections: must prove it is a node
        self.authed = server.password is None
        self.peer: str | None = None  # the node this connection proved it is
        self.challenge: tuple[str, bytes, bytes] | None = None  # a PEER in progress
        self.peer_tried = False
        self.sent: tuple[str, float] | None = None  # the routed request in flight
        self.closing_after = False  # close once the reply in wait is written
        self.idle: asyncio.TimerHandle | None = None
        self.active = 0.0

    # -- asyncio callbacks ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's are not asyncio.Transport subclasses)
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        server = self.server
        if len(server.connections) >= server.max_connections:
            if server.secret is None or not server.make_room():
                _overloaded.note(
                    "a text connection: the node serves its limit of "
                    f"{server.max_connections} (too many connections)"
                )
                transport.write(_TOO_MANY)
                transport.close()
                self.closing = True
                return
            self.reserve = True
            server.reserved[self] = None
            self.idle = server.loop.call_later(RESERVE_WAIT, self._unproven)
        if self.reserve or not self.authed:
            self.handlers = {}  # every line goes to _other until it is let in
        server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        self.server.blocked.pop(self, None)
        self.server.reserved.pop(self, None)
        if self.idle is not None:
            self.idle.cancel()
        if self.hold & _BLOCKED:
            self.server.trim_soon()  # its unsent replies were freed

    def data_received(self, data: bytes) -> None:
        if self.closing or self.too_long:
            if not self.skipping:
                return
            end = data.find(b"\n")  # the rest of a peer's line that was too long
            if end < 0:
                return
            data = data[end + 1 :]
            self.skipping = self.too_long = False
        self.active = _monotonic()  # the loop's clock; see _touch
        if self.idle is None:
            self._touch()
        buffer = self.buffer + data if self.buffer else data
        lines = buffer.split(b"\n")
        self.buffer = lines.pop()
        limit = self.limit
        if len(buffer) > limit and (
            _too_long(self.buffer, limit) or any(_too_long(x, limit) for x in lines)
        ):
            if self.peer is not None:
                self._too_long_from_peer(lines, limit)
                self._run()
                return
            # Answer what came before the long line, then refuse it and hang up:
            # the rest of that line must never run as commands of its own.
            for line in lines:
                if _too_long(line, limit):
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

    def _too_long_from_peer(self, lines: list[bytes], limit: int) -> None:
        """A peer's line too long: that request alone is refused (framed), and the
        link goes on; the rest of a line still arriving is skipped."""
        self.queue.extend(_LONG if _too_long(line, limit) else line for line in lines)
        if _too_long(self.buffer, limit):
            self.queue.append(_LONG)
            self.buffer = b""
            self.too_long = self.skipping = True

    def pause_writing(self) -> None:
        # The transport's buffer passed HIGH_WATER: stop answering (and reading)
        # until it drains.
        self.hold |= _BLOCKED
        if self.transport is not None and not self.paused:
            self.transport.pause_reading()
            self.paused = True
        self.server.block(self)

    def resume_writing(self) -> None:
        self.hold &= ~_BLOCKED
        self.server.blocked.pop(self, None)
        self._run()

    def eof_received(self) -> bool:
        # Half-closed by the client: answer what it sent, then close.
        self.eof = True
        self._run()
        return True

    # -- processing -----------------------------------------------------------

    too_long = False
    skipping = False
    eof = False

    def _run(self) -> None:
        """Answer queued lines in order until one must wait for another node."""
        transport = self.transport
        if transport is None or self.closing:
            return
        out: list[bytes] = []
        size = 0
        queue = self.queue
        server = self.server
        handlers = self.handlers
        fresh = server.routing.fresh  # one table for the whole batch
        hashed = server.routing.hashed
        while queue and not self.hold:
            line = queue.popleft()
            if self.too_long and not queue:
                out.append(protocol.LINE_TOO_LONG)
                self.closing = True
                break
            words = line.split()
            handler = handlers.get(words[0]) if words else None
            if handler is not None and len(words) == handler[0]:
                # the routing decision, precomputed per slot
                decision = fresh[_crc32(words[1]) & 255 if hashed else words[1][0]]
                if decision is HERE:  # the common case: answered here and now
                    counts = handler[3]  # this verb's [ok, error]: see stats.py
                    try:
                        reply = handler[1](words)
                        if reply.__class__ is not bytes:  # a write waits for the disk
                            self._wait_for_disk(reply, handler[2])
                            continue
                        counts[0] += 1
                        if not counts[0] & _SAMPLE:  # one in 64 goes to the histogram
                            server.stats.observe(
                                _monotonic() - self.active, _SAMPLE + 1
                            )
                    except Exception as exc:  # no bucket, bad key: one reply
                        reply = protocol.error_reply(exc)
                        counts[1] += 1
                    out.append(reply)
                    size += len(reply)
                    if size > _FLUSH:  # bound the replies of one packet
                        self._write(out)
                        size = 0
                else:  # another node's bucket (a Hop), or none, or one arriving
                    self._route(words, line, handler[2], decision, out)
                    fresh = server.routing.fresh  # a table switch may have run
                    hashed = server.routing.hashed
            elif self.peer is not None and words and words[0] == FORWARD:
                self._forwarded(words, line, out)  # another node's request
                fresh = server.routing.fresh  # a table switch may have run
                hashed = server.routing.hashed
            else:
                self._other(words, line, out)
                fresh = server.routing.fresh
                hashed = server.routing.hashed
        if out:  # written here, not through _write: this is once per request
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            if self.hold & _BLOCKED and transport.get_write_buffer_size() > HARD_LIMIT:
                self._abort()
        if self.closing or (self.eof and not queue and not self.hold & _WAITING):
            if self.hold & _BLOCKED:  # it does not read: a close would wait for ever
                reset(transport)
            else:
                transport.close()
        elif (
            self.paused and not self.hold & _BLOCKED and len(queue) <= _MAX_QUEUED // 2
        ):
            self.paused = False
            transport.resume_reading()

    def _write(self, out: list[bytes]) -> None:
        """Write ``out`` (and empty it); abort past the hard limit of unsent bytes."""
        transport = self.transport
        assert transport is not None
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        if self.hold & _BLOCKED and transport.get_write_buffer_size() > HARD_LIMIT:
            self._abort()

    def _abort(self) -> None:
        """Drop the connection at once, unsent replies and all (a reset, not a close)."""
        self.closing = True
        if self.transport is not None:
            reset(self.transport)

    def failed(self) -> None:
        """A routed reply could not be handed to this connection: drop it, since it
        can no longer answer in order."""
        self._abort()

    def _route(
        self,
        words: list[bytes],
        line: bytes,
        verb: Verb,
        decision: Decision | None,
        out: list[bytes],
    ) -> None:
        """A client's request for a bucket of another node (or of none): send it on."""
        routing = self.server.routing
        try:
            if decision is None:  # no entry: decide() raises the error, naming it
                decision = routing.decide(words[1].decode("utf-8", "surrogateescape"))
        except Exception as exc:
            self.server.stats.requests.error[verb.name.decode()] += 1
            out.append(protocol.error_reply(exc))
            return
        deadline = _monotonic() + routing.timeout
        if decision is WAIT:
            if self.server.router.ready(words[1]):  # arrived whole: served here
                self._here(words, verb, out)
                return
            self._park(words, line, verb, deadline, ())
            return
        self._send(words, line, verb, decision, deadline, out)  # type: ignore[arg-type]

    def _here(self, words: list[bytes], verb: Verb, out: list[bytes]) -> None:
        """A request for a bucket of this node, off the hot path (a bucket that
        arrived whole while the rest of its range is still moving here)."""
        handler = self.server.handlers[words[0]]
        try:
            reply = handler[1](words)
            if reply.__class__ is not bytes:  # a write waits for the disk
                self._wait_for_disk(reply, verb)
                return
            handler[3][0] += 1
        except Exception as exc:
            reply = protocol.error_reply(exc)
            handler[3][1] += 1
        out.append(reply)

    def _other(self, words: list[bytes], line: bytes, out: list[bytes]) -> None:
        """A line that is not a bucket verb this connection may run now: the node
        to node protocol, a node or connection verb, or a wrong number of words."""
        first = words[0] if words else b""
        if self.reserve and first not in (peering.PEER, peering.PROVE):
            out.append(_TOO_MANY)
            self.closing = True
        elif first == FORWARD and self.peer is not None:
            self._forwarded(words, line, out)
        elif line == _LONG and self.peer is not None:
            out.append(protocol.framed(protocol.LINE_TOO_LONG))
        elif first == peering.PEER and self.server.secret and not self.peer_tried:
            self.peer_tried = True  # one handshake per connection
            out.append(self._hello(words))
        elif first == peering.PROVE and self.challenge is not None:
            self._prove(words, out)
        else:
            verb = VERBS.get(first)
            if verb is None or (not self.authed and verb.name not in _BEFORE_AUTH):
                out.append(protocol.UNKNOWN if self.authed else _NOAUTH)
            elif len(words) != verb.words:
                out.append(verb.usage_error)
            elif verb.scope == CONNECTION:
                self._connection_verb(verb, words, out)
            elif verb.scope == NODE:
                out.append(self._node_verb(verb))
            else:  # a bucket verb, and this connection may not run it (yet)
                out.append(protocol.UNKNOWN)

    def _connection_verb(
        self, verb: Verb, words: list[bytes], out: list[bytes]
    ) -> None:
        if verb.name == _QUIT:
            out.append(protocol.OK)
            self.closing = True
        elif self.server.password is None:  # AUTH with no password set
            out.append(protocol.UNKNOWN)
        else:
            self._auth(words, out)

    def _node_verb(self, verb: Verb) -> bytes:
        """PING, INFO: answered by this node, whatever the table says."""
        counts = self.server.stats.requests
        name = verb.name.decode()
        try:
            reply = verb.reply_to(self.server.run_task(verb.task_name))
        except Exception as exc:
            counts.error[name] += 1
            return protocol.error_reply(exc)
        counts.ok[name] += 1
        return reply

    def _auth(self, words: list[bytes], out: list[bytes]) -> None:
        """``AUTH <password>``: let the connection in, or answer after a delay."""
        password = self.server.password
        assert password is not None
        if hmac.compare_digest(words[1], password):
            self._let_in()
            out.append(protocol.OK)
            return
        # A wrong guess costs its sender time, not the node: the connection waits
        # (its later lines stay queued) while the loop serves everyone else.
        self.hold |= _WAITING
        self.server.loop.call_later(AUTH_DELAY, self.routed, _BAD_PASSWORD)

    def _let_in(self) -> None:
        self.authed = True
        self.reserve = False
        self.server.reserved.pop(self, None)
        self.handlers = self.server.handlers

    def _unproven(self) -> None:
        """A reserve connection that did not prove it is a node in time: out."""
        self.idle = None
        if self.reserve:
            self.server.reserved.pop(self, None)
            self._refuse()

    def _refuse(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.write(_TOO_MANY)
            self.transport.close()

    def _hello(self, words: list[bytes]) -> bytes:
        """A node opens a peer link: answer with this node's proof and a challenge."""
        secret = self.server.secret
        assert secret is not None
        try:
            name, theirs = peering.parse_hello(words, with_proof=False)[:2]
        except ProtocolError as exc:
            return protocol.error_reply(exc)
        mine = peering.new_nonce()
        self.challenge = (name, theirs, mine)
        node = self.server.node
        return peering.hello(
            node,
            mine,
            peering.proof(secret, False, theirs, node, mine, self.server.shown),
        )

    def _prove(self, words: list[bytes], out: list[bytes]) -> None:
        """The opener's answer to the challenge: a node of this cluster, or not."""
        secret = self.server.secret
        assert secret is not None
        assert self.challenge is not None
        name, theirs, mine = self.challenge
        self.challenge = None
        expected = peering.proof(secret, True, mine, name, theirs)
        if len(words) == 2 and peering.verify(expected, words[1]):
            self.peer = name
            self._let_in()
            self.limit = self.server.max_line + PEER_EXTRA
            out.append(protocol.OK)
            return
        _refused_peers.note(f"a peer link that claimed to be node {name!r}: bad proof")
        # Like a wrong password: answered late, then the connection is closed, so
        # guessing costs the guesser time and a new connection per guess.
        self.hold |= _WAITING
        self.closing_after = True
        self.server.loop.call_later(AUTH_DELAY, self.routed, _BAD_PROOF)

    def _forwarded(self, words: list[bytes], line: bytes, out: list[bytes]) -> None:
        """A ``FWD`` line from another node: decide by this node's table; reply framed."""
        server = self.server
        try:
            budget, version, path = protocol.parse_forward(words)
            inner = words[protocol.FORWARD_WORDS :]
            handler = server.handlers.get(inner[0])
            if handler is None or len(inner) != handler[0]:
                out.append(protocol.framed(protocol.UNKNOWN))
                return
            routing = server.routing
            if version != routing.version:  # the one compare a version costs
                path = server.router.catch_up(version, path)  # type: ignore[assignment]
            # A bucket of this node is served here whatever the path: its slot's
            # precomputed decision says so (as for a client's request); any other
            # decision depends on the path, and is made in full.
            word = inner[1]
            decision = routing.fresh[_crc32(word) & 255 if routing.hashed else word[0]]
            if decision is not HERE:
                bucket = word.decode("utf-8", "surrogateescape")
                decision = routing.decide(bucket, path)
                if decision is WAIT and server.router.ready(bucket):
                    decision = HERE  # arrived whole: served before the rest
            if decision is HERE:
                name = handler[2].name.decode()
                try:
                    reply = handler[1](inner)
                    if reply.__class__ is not bytes:  # a write waits for the disk
                        self._wait_for_disk(reply, handler[2])
                        self.framed = True
                        return
                except Exception:
                    server.stats.peer_requests.error[name] += 1
                    raise
                server.stats.peer_requests.ok[name] += 1
            else:
                if decision is WAIT:  # the link answers in order: do not hold it
                    out.append(protocol.framed(protocol.MOVING))
                    return
                deadline = _monotonic() + server.routing.limit(budget)
                self.framed = True
                request = line.split(None, protocol.FORWARD_WORDS)[-1]
                assert isinstance(decision, Hop)
                self._send(inner, request, handler[2], decision, deadline, out)
                return
        except ProtocolError:
            reply = protocol.UNKNOWN
        except Exception as exc:
            reply = protocol.error_reply(exc)
        out.append(protocol.framed(reply))

    def _send(
        self,
        words: list[bytes],
        line: bytes,
        verb: Verb,
        hop: Hop,
        deadline: float,
        out: list[bytes],
    ) -> None:
        """Hand a request to the server's transport; this connection waits for it.

        If the transport fails to take it, the request alone is answered with an
        internal error, in its place among this connection's replies.
        """
        self.hold |= _WAITING
        self.sent = (verb.name.decode(), _monotonic())
        self.server.stats.routed[hop.owner] += 1
        try:
            transport = self.server.onward if self.framed else self.server.transport
            transport.send(Forward(self, verb, words, line, hop, deadline))
        except Exception:
            log.exception("could not send a request to node %r", hop.owner)
            self.hold &= ~_WAITING
            reply = protocol.INTERNAL_ERROR
            if self.framed:
                reply = protocol.framed(reply)
                self.framed = False
            out.append(reply)

    def _park(
        self,
        words: list[bytes],
        line: bytes,
        verb: Verb,
        deadline: float,
        path: tuple[str, ...],
    ) -> None:
        """A request for a range whose data is still arriving: wait for it (see
        :meth:`TextServer.release`), answering nothing after it until then."""
        self.hold |= _WAITING
        self.sent = (verb.name.decode(), _monotonic())
        self.server.park(_Parked(self, words, line, verb, deadline, path))

    def resume(self, parked: _Parked) -> None:
        """The data of a parked request's range arrived (or a new table came):
        decide again and carry it out."""
        if self.transport is None or self.closing:
            return
        server = self.server
        bucket = parked.words[1].decode("utf-8", "surrogateescape")
        try:
            decision = server.routing.decide(bucket, parked.path)
            if decision is WAIT and server.router.ready(bucket):
                decision = HERE  # arrived whole: served before the rest
            if decision is WAIT:
                server.park(parked)
                return
            if decision is HERE:
                reply = server.handlers[parked.words[0]][1](parked.words)
                if reply.__class__ is not bytes:  # a write waits for the disk
                    self._wait_for_disk(reply, parked.verb)
                    return
            else:
                assert isinstance(decision, Hop)
                out: list[bytes] = []
                self._send(
                    parked.words,
                    parked.line,
                    parked.verb,
                    decision,
                    parked.deadline,
                    out,
                )
                if out:  # the transport did not take it: answered, go on
                    self.sent = None
                    self._write(out)
                    self._run()
                return
        except Exception as exc:
            reply = protocol.error_reply(exc)
        self.routed(reply)

    def _wait_for_disk(self, start: Any, verb: Verb) -> None:
        """A write that is answered once it is on disk (``fsync = always``): start
        it; the connection waits, as for a routed request, while the loop serves
        the others. Raises (and starts nothing) when the write is refused at once.
        """
        deliver = self.server.from_disk
        routed = self.routed

        def reply(error: Exception | None, result: Any) -> None:  # the writer's thread
            data = (
                verb.reply_to(result) if error is None else protocol.error_reply(error)
            )
            deliver(routed, data)

        started: Callable[[Reply], None] = start  # what a deferred handler returns
        started(reply)
        self.hold |= _WAITING
        self.sent = (verb.name.decode(), _monotonic())

    def routed(self, reply: bytes) -> None:
        """The reply of this connection's routed request (called on the loop)."""
        self.hold &= ~_WAITING
        if self.sent is not None:
            verb, since = self.sent
            self.sent = None
            stats = self.server.stats
            counts = stats.peer_requests if self.framed else stats.requests
            failed = reply.startswith(b"ERROR") or reply == protocol.NOT_FOUND
            (counts.error if failed else counts.ok)[verb] += 1
            stats.observe(_monotonic() - since)
        if self.framed:
            reply = protocol.framed(reply)
            self.framed = False
        transport = self.transport
        if transport is None or self.closing:
            return
        transport.write(reply)
        if self.hold & _BLOCKED and transport.get_write_buffer_size() > HARD_LIMIT:
            self._abort()
        if self.closing_after:
            self.closing = True
            transport.close()
            return
        self.active = _monotonic()  # the loop's clock; see _touch
        if self.idle is None:
            self._touch()
        if self.queue or self.eof or self.paused or self.closing:
            self._run()  # (with nothing queued, _run would do nothing)

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
        if self.hold & _WAITING or due > loop.time():
            # active since the timer was set, or a routed request is still running
            # (it has its own timeout): look again later
            self.idle = loop.call_at(max(due, loop.time() + 1.0), self._expire)
            return
        self.idle = None
        if self.transport is None or self.closing:
            return
        if self.transport.get_write_buffer_size():
            self._abort()  # it does not read: a graceful close would wait forever
        else:
            self.closing = True
            self.transport.write(b"ERROR idle timeout, closing\r\n")
            self.transport.close()


class _Parked(NamedTuple):
    """A request waiting for the data of its range (see _Connection._park)."""

    conn: _Connection
    words: list[bytes]
    line: bytes
    verb: Verb
    deadline: float
    path: tuple[str, ...]


def _deferred(registry: Registry, verb: Verb) -> Handler | None:
    """The handler of a write the registry answers once it is on disk (a
    :class:`~pyrokv.durable.DurableRegistry` with ``fsync = always``), or None.

    It returns, instead of the reply, a function that starts the write with a
    :data:`~pyrokv.durable.Reply` (see :meth:`_Connection._wait_for_disk`).
    """
    deferred = getattr(registry, "deferred", None)
    start = None if deferred is None else deferred(verb.method)
    if start is None:
        return None

    def handler(w: list[bytes]) -> Any:
        return functools.partial(
            start, *(x.decode("utf-8", "surrogateescape") for x in w[1:])
        )

    return handler


def _too_long(line: bytes, limit: int) -> bool:
    """Whether ``line`` (split at ``\\n``) passes ``limit`` without its ``\\r``."""
    size = len(line)
    return size > limit and (size > limit + 1 or line[-1] != 13)


class TextServer:
    """Serves the text protocol on (host, port) in a background thread.

    Requests for ``registry``'s buckets run on it; the others go through
    ``router``: over peer links to owners that serve text, when the node has the
    cluster's ``secret`` and ``peer_links`` is on, else over Pyro5. Without a
    secret the server neither accepts nor opens peer links. With ``ssl`` the port
    speaks TLS; with ``password`` a client must send ``AUTH <password>`` first.
    ``event_loop`` picks its event loop (:mod:`pyrokv.loops`).
    """

    def __init__(
        self,
        router: Router,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        registry: Registry,
        max_line: int = protocol.DEFAULT_MAX_LINE,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        peer_links: bool = True,
        secret: bytes | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        ssl: ssl_module.SSLContext | None = None,
        password: bytes | None = None,
        stats: Stats | None = None,
        event_loop: str = DEFAULT_EVENT_LOOP,
    ) -> None:
        if router.node is None or router.local is None:
            raise ValueError("a TextServer needs the router of a node (node, local)")
        self.router = router
        self.routing = router.routing
        self.node: str = router.node
        self.stats = Stats() if stats is None else stats
        #: word -> (words in its line, handler, verb, its [ok, error] counts): a
        #: tuple, read once per request on the hot path
        self.handlers: dict[bytes, tuple[int, Handler, Verb, list[int]]] = {
            word: (
                words,
                _deferred(registry, verb) or handler,
                verb,
                self.stats.cell(verb.name.decode()),
            )
            for word, (words, handler, verb) in protocol.handlers(registry).items()
        }
        self.secret = secret
        self.password = password
        self.max_line = max_line
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.connections: set[_Connection] = set()
        #: Requests waiting for the data of a range moving to this node.
        self.parked: list[_Parked] = []
        self._parked_timer: asyncio.TimerHandle | None = None
        #: Connections stopped on unsent replies, oldest first.
        self.blocked: dict[_Connection, None] = {}
        #: Reserve connections that have not proved they are nodes, oldest first.
        self.reserved: dict[_Connection, None] = {}
        #: The kind of event loop it runs on: ``asyncio`` or ``uvloop`` (see
        #: :mod:`pyrokv.loops`; ``event_loop`` is the setting's value).
        self.event_loop = loops.resolve(event_loop)
        self.loop = loops.new_event_loop(self.event_loop)
        #: Replies of writes that waited for the disk, for the loop to hand out.
        self._disk_replies: collections.deque[tuple[Callable[[bytes], None], bytes]] = (
            collections.deque()
        )
        self._disk_scheduled = False
        self._trim: asyncio.TimerHandle | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=ROUTE_WORKERS, thread_name_prefix="pyrokv-route"
        )
        try:
            self._server = self.loop.run_until_complete(
                self.loop.create_server(
                    lambda: _Connection(self),
                    host,
                    port,
                    backlog=1024,
                    ssl=ssl,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT if ssl else None,
                )
            )
        except BaseException:
            self._pool.shutdown()
            self.loop.close()
            raise
        self.address: tuple[str, int] = self._server.sockets[0].getsockname()[:2]
        #: The address as registered and dialled: ``HOST:PORT``.
        self.shown = f"{self.address[0]}:{self.address[1]}"
        pyro = PyroLanes(self.loop, router, self._pool, max_message)
        self.transport: Transport = (
            PeerLinks(
                self.loop,
                router.directory,
                pyro,
                self._pool,
                router.timeout,
                node=self.node,
                secret=secret,
            )
            if peer_links and secret is not None
            else pyro
        )
        #: How a request that came in on a peer link goes on to a third node:
        #: over Pyro5, never on another peer link. A peer connection answers its
        #: lines in order, so it waits while its request goes on; two links that
        #: each waited for the other (requests routed by tables that differ, as
        #: during a change) would hold each other until the timeout.
        self.onward: Transport = pyro
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="pyrokv-text", daemon=True
        )
        self._thread.start()

    def from_disk(self, routed: Callable[[bytes], None], reply: bytes) -> None:
        """Hand ``reply`` to a connection's ``routed`` on the loop (from the store's
        writer thread): the replies of one commit go in one wake-up of the loop."""
        self._disk_replies.append((routed, reply))
        if not self._disk_scheduled:
            self._disk_scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._deliver_disk_replies)
            except RuntimeError:  # the server stopped meanwhile
                pass

    def _deliver_disk_replies(self) -> None:
        self._disk_scheduled = False  # first: a reply added from now on schedules
        replies = self._disk_replies
        while replies:
            routed, reply = replies.popleft()
            routed(reply)

    def run_task(self, name: str) -> Any:
        """Run task ``name`` (no arguments) on this node (PING, INFO)."""
        return self.router.local(name, (), None)  # type: ignore[misc]

    def park(self, parked: _Parked) -> None:
        """Keep ``parked`` until :meth:`release` or its deadline (on the loop)."""
        self.parked.append(parked)
        if self._parked_timer is None:
            self._parked_timer = self.loop.call_later(PARKED_CHECK, self._expire_parked)

    def release(self) -> None:
        """The ranges this node waited for have their data: run the parked requests
        (called on the loop, by :class:`pyrokv.live.Live`)."""
        parked, self.parked = self.parked, []
        for item in parked:
            item.conn.resume(item)

    def _expire_parked(self) -> None:
        self._parked_timer = None
        now = _monotonic()
        keep = []
        for item in self.parked:
            if item.deadline > now:
                keep.append(item)
                continue
            live = self.router.live
            waiting = ", ".join(live.waiting_for()) if live is not None else ""
            bucket = item.words[1].decode("utf-8", "surrogateescape")
            item.conn.routed(
                protocol.error_reply(
                    HandOffPendingError(
                        f"bucket {bucket!r} is moving to node {self.node!r} (table "
                        f"version {self.routing.version}), and its data has not "
                        f"arrived from node(s) {waiting or '?'} in time: they are "
                        "down or hung; see 'pyrokv table show', and run the change "
                        "again once they answer"
                    )
                )
            )
        self.parked = keep
        if keep:
            self._parked_timer = self.loop.call_later(PARKED_CHECK, self._expire_parked)

    def make_room(self) -> bool:
        """Whether a reserve connection may be admitted: below the reserve, or by
        closing the oldest reserve connection that has not proved it is a node."""
        if len(self.connections) < self.max_connections + PEER_RESERVE:
            return True
        if not self.reserved:
            return False  # the reserve is full of proven peers
        oldest = next(iter(self.reserved))
        del self.reserved[oldest]
        oldest._refuse()
        self.connections.discard(oldest)
        return True

    def block(self, conn: _Connection) -> None:
        """``conn`` stopped on unsent replies; past MAX_BLOCKED, abort the oldest."""
        self.blocked[conn] = None
        while len(self.blocked) > MAX_BLOCKED:
            oldest = next(iter(self.blocked))
            del self.blocked[oldest]
            log.warning(
                "aborting a connection that does not read its replies: %d "
                "connections are stopped on unsent replies",
                MAX_BLOCKED,
            )
            oldest._abort()

    def trim_soon(self) -> None:
        """Return freed memory to the system in a second (:mod:`pyrokv.malloc`),
        once for every connection lost until then."""
        if self._trim is None and malloc.AVAILABLE:
            self._trim = self.loop.call_later(1.0, self._trim_now)

    def _trim_now(self) -> None:
        self._trim = None
        malloc.trim()

    def stop(self) -> None:
        """Close every connection and the listening socket; stop the thread."""

        async def shutdown() -> None:
            self._server.close()
            self.transport.close()
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
