"""Routed requests of many connections share a peer link's writes (issue 14).

A request sent on a link that awaits replies waits for the end of the loop's pass
and goes with the others of that pass in one write; the owner serves a ``FWD``
for its own bucket by the slot's precomputed decision. These tests check what a
client sees: every reply reaches its own connection, in order.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from peertesting import Pair, held_workers, pair, secret_flag

from pyrokv import protocol
from pyrokv.errors import ProtocolError
from pyrokv.testing import Conn

#: Pyro5 workers of bar (Pyro5 needs at least 4); all held, so that the routed
#: requests can only take the peer link.
WORKERS = 4
CONNECTIONS = 8
ROUNDS = 40


@pytest.fixture(name="nodes")
def _nodes(ns: tuple[str, int], unique: str, secret_file: str) -> Iterator[Pair]:
    """foo and bar sharing the cluster secret; bar with few Pyro5 workers."""
    with pair(
        ns,
        unique,
        secret_flag(secret_file),
        [*secret_flag(secret_file), "--workers", str(WORKERS)],
    ) as nodes:
        yield nodes


@pytest.mark.distributed
def test_pipelined_routed_requests_of_many_connections_get_their_own_replies(
    nodes: Pair,
) -> None:
    """8 connections each pipeline PUTs and GETs of their own keys on bar's bucket
    through foo, all sent before any reply is read: each gets its own values back,
    in order, over the peer link alone (bar's Pyro5 workers are held)."""
    with Conn(nodes.text(nodes.foo)) as setup:
        assert setup.ask("CREATE nut") == b"OK"
    with held_workers(nodes.uri(nodes.bar), WORKERS):
        conns = [Conn(nodes.text(nodes.foo), timeout=10) for _ in range(CONNECTIONS)]
        try:
            for c, conn in enumerate(conns):
                lines = b"".join(
                    b"PUT nut k%d_%d v%d_%d\r\nGET nut k%d_%d\r\nGET apple k\r\n"
                    % (c, i, c, i, c, i)
                    for i in range(ROUNDS)
                )
                conn.send(lines)
            for c, conn in enumerate(conns):
                for i in range(ROUNDS):
                    assert conn.line() == b"OK", (c, i)
                    assert conn.line() == b"v%d_%d" % (c, i), (c, i)
                    assert conn.line() == b"OK", (c, i)
                    assert conn.line() == b"NOT FOUND", (c, i)  # foo's, no bucket
        finally:
            for conn in conns:
                conn.close()


def test_a_frame_says_the_length_of_its_reply() -> None:
    """framed() puts the reply's length in bytes on a line before it, short or long."""
    for size in (0, 1, 9, 10, 255, 256, 257, 70_000):
        reply = b"x" * size
        head, _, rest = protocol.framed(reply).partition(b"\r\n")
        assert head == str(size).encode() and rest == reply


def test_forward_fields_are_checked_each_time_they_are_read() -> None:
    """A FWD line's fields parse the same however often they come, and a bad field
    after good ones (or the reverse) is refused every time."""
    good = b"FWD 4499 3 foo,bar GET nut k".split()
    bad = b"FWD 4499 3 foo,b.r GET nut k".split()
    for _ in range(3):
        assert protocol.parse_forward(good) == (4.499, 3, ("foo", "bar"))
        with pytest.raises(ProtocolError, match="not node names"):
            protocol.parse_forward(bad)
    too_long = b"FWD 86400001 3 foo GET nut k".split()
    with pytest.raises(ProtocolError, match="budget"):
        protocol.parse_forward(too_long)
    long_path = b",".join([b"n%d" % i for i in range(400)])
    words = [b"FWD", b"10", b"0", long_path, b"PING"]
    assert protocol.parse_forward(words)[2] == tuple(f"n{i}" for i in range(400))
    with pytest.raises(ProtocolError, match="not node names"):
        protocol.parse_forward([*words[:3], long_path + b",x.y", b"PING"])


def test_a_forwarded_line_is_its_head_and_the_request() -> None:
    """forward_line is forward_head then the request with one line ending; a budget
    below zero is sent as 0 ms."""
    line = protocol.forward_line(4.4996, ("foo",), b"GET nut k\r", 7)
    assert line == b"FWD 4499 7 foo GET nut k\r\n"
    assert line == protocol.forward_head(4499, 7, ["foo"]) + protocol.forward_request(
        b"GET nut k"
    )
    assert protocol.forward_line(-2.0, ("a", "b"), b"PING\n") == b"FWD 0 0 a,b PING\r\n"
