"""A dead owner fails fast, in order, and a restarted one is reached at once.

Issue 10, finding 5 ("After an owner dies, pipelined requests hang"): foo owns
a..m, bar owns n..z; bar is killed with SIGKILL (it stays registered) while
requests for its buckets are pipelined to foo, then started again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from peertesting import TIMEOUT, Pair, load, pair, secret_flag

from pyrokv.testing import Conn

pytestmark = pytest.mark.distributed

PIPELINE = b"GET nut k\nGET nut k\nGET nut k\nGET apple k\n"
#: "At once": well under the routed-request timeout.
FAST = TIMEOUT / 3


@pytest.fixture(name="nodes")
def _nodes(ns: tuple[str, int], unique: str, secret_file: str) -> Iterator[Pair]:
    """foo and bar sharing the cluster secret."""
    with pair(ns, unique, secret_flag(secret_file), secret_flag(secret_file)) as nodes:
        yield nodes


def pipelined(
    address: tuple[str, int], count: int = 5
) -> tuple[list[bytes], list[float]]:
    """Send :data:`PIPELINE` at once; its first ``count`` reply lines and when each came."""
    with Conn(address, timeout=TIMEOUT + 2) as c:
        started = time.monotonic()
        c.send(PIPELINE)
        lines, times = [], []
        for _ in range(count):
            lines.append(c.line())
            times.append(time.monotonic() - started)
    return lines, times


def check_failed_fast(nodes: Pair, lines: list[bytes], times: list[float]) -> None:
    """Three ERRORs naming bar, then apple's value, all well under the timeout."""
    prefix = f"ERROR node '{nodes.bar}'".encode()
    for line in lines[:3]:
        assert line.startswith(prefix), lines
        assert b"did not answer within" not in line, lines
    assert lines[3:] == [b"red", b"OK"], lines
    assert times[-1] < FAST, times


@pytest.mark.parametrize("linked", [True, False], ids=["link-open", "never-linked"])
def test_pipelined_requests_for_a_killed_owner_fail_at_once_in_order(
    nodes: Pair, linked: bool
) -> None:
    """bar killed: each routed GET gets its ERROR at once, and the local GET follows."""
    load(nodes, nodes.foo if linked else nodes.bar)
    nodes.children[nodes.bar].kill()
    lines, times = pipelined(nodes.text(nodes.foo))
    check_failed_fast(nodes, lines, times)
    lines, times = pipelined(nodes.text(nodes.foo))  # and again, the same
    check_failed_fast(nodes, lines, times)


def test_many_connections_pipelining_to_a_killed_owner_are_all_answered(
    nodes: Pair,
) -> None:
    """bar killed: 8 connections pipelining at once each get their replies in order, fast."""
    load(nodes, nodes.foo)
    nodes.children[nodes.bar].kill()
    results: list[tuple[list[bytes], list[float]] | BaseException] = [
        ValueError("not run")
    ] * 8

    def one(i: int) -> None:
        try:
            results[i] = pipelined(nodes.text(nodes.foo))
        except Exception as exc:  # checked below
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT + 5)
    for result in results:
        assert not isinstance(result, BaseException), result
        check_failed_fast(nodes, *result)


def test_a_restarted_owner_is_reached_by_the_next_request(nodes: Pair) -> None:
    """bar killed, requests failed, bar started again: the next routed request works at once."""
    load(nodes, nodes.foo)
    nodes.children[nodes.bar].kill()
    check_failed_fast(nodes, *pipelined(nodes.text(nodes.foo)))
    nodes.start(nodes.bar)  # same name, new process, empty
    with Conn(nodes.text(nodes.foo), timeout=TIMEOUT + 2) as c:
        started = time.monotonic()
        assert c.ask("CREATE nut") == b"OK"
        assert time.monotonic() - started < FAST
        assert c.ask("PUT nut k again") == b"OK"
        assert c.ask("GET nut k") == b"again|OK"
    lines, times = pipelined(nodes.text(nodes.foo), 8)
    assert lines == [b"again", b"OK"] * 3 + [b"red", b"OK"], lines
    assert times[-1] < FAST, times


def test_an_owner_restarted_after_the_timeout_is_reached_at_once(nodes: Pair) -> None:
    """Requests fail, more than the timeout passes, bar returns: no stale deadline cuts its connect."""
    load(nodes, nodes.foo)
    nodes.children[nodes.bar].kill()
    check_failed_fast(nodes, *pipelined(nodes.text(nodes.foo)))
    time.sleep(TIMEOUT + 0.5)  # any deadline of the failed requests is past now
    nodes.start(nodes.bar)
    lines, times = pipelined(nodes.text(nodes.foo))
    assert lines[:3] == [b"NOT FOUND"] * 3, lines  # bar's answer: it is empty
    assert lines[3:] == [b"red", b"OK"], lines
    assert times[-1] < FAST, times
