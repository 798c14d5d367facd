"""Long lines and their terminators (issue 10, findings 4 and 9).

"A legal line cannot be routed": a 65,530-byte ``PUT`` sent to foo for a bucket of
bar failed, because the ``FWD <ms> <path>`` prefix pushed it over bar's line limit,
and the refused frame tore down the peer link with everything in flight on it (20
such lines during an 8-client load: 111 errors for the others). And a line of
exactly the limit was refused with CRLF but accepted with LF. What must hold: any
line a node accepts can be routed; a refused peer frame never tears down a link
that carries other requests; the limit counts the line without its terminator, the
same for LF and CRLF.

foo owns a..m and bar n..z; both serve text and share a cluster secret, so foo
reaches bar over a peer link.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from pyrokv.cluster import Child, spawn_node
from pyrokv.protocol import DEFAULT_MAX_LINE
from pyrokv.testing import CLOSED, Conn

pytestmark = pytest.mark.distributed


@dataclass
class Pair:
    """foo (a..m) and bar (n..z), each serving text: their addresses."""

    foo: tuple[str, int]
    bar: tuple[str, int]


Start = Callable[..., Pair]


@pytest.fixture(name="start_pair")
def _start_pair(ns: tuple[str, int], unique: str, secret_file: str) -> Iterator[Start]:
    """Start foo and bar, each with its own extra flags; both stopped at the end."""
    children: list[Child] = []

    def start(foo_extra: tuple[str, ...] = (), bar_extra: tuple[str, ...] = ()) -> Pair:
        foo, bar = f"f{unique}", f"b{unique}"
        table = f"a..m={foo}, n..z={bar}"
        addresses = []
        for name, extra in ((foo, foo_extra), (bar, bar_extra)):
            child = spawn_node(
                name,
                ns,
                table,
                extra=[
                    "--listen",
                    "127.0.0.1:0",
                    "--cluster-secret-file",
                    secret_file,
                    *extra,
                ],
            )
            children.append(child)
            address = child.listen_address()
            assert address is not None, child.output()
            addresses.append(address)
        return Pair(*addresses)

    try:
        yield start
    finally:
        for child in children:
            child.stop()


def put_line(bucket: bytes, key: bytes, size: int) -> bytes:
    """A ``PUT bucket key value`` line of exactly ``size`` bytes (no terminator)."""
    head = b"PUT " + bucket + b" " + key + b" "
    return head + b"x" * (size - len(head))


@dataclass
class Load:
    """Clients doing routed PUT/GET pairs through foo, each checking every reply."""

    addr: tuple[str, int]
    clients: int = 8
    minimum: int = 20  # pairs each client does at least

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.done = [0] * self.clients
        self.threads = [
            threading.Thread(target=self.run, args=(i,), daemon=True)
            for i in range(self.clients)
        ]

    def run(self, i: int) -> None:
        bucket = f"olive{i}"
        try:
            with Conn(self.addr, timeout=10) as c:
                if (reply := c.ask(f"CREATE {bucket}")) != b"OK":
                    self.errors.append(f"client {i}: CREATE: {reply!r}")
                n = 0
                while n < self.minimum or not self.stop.is_set():
                    for request, expected in (
                        (f"PUT {bucket} k{n} v{n}", b"OK"),
                        (f"GET {bucket} k{n}", b"v%d|OK" % n),
                    ):
                        reply = c.ask(request)
                        if reply != expected:
                            self.errors.append(
                                f"client {i}: {request}: {reply[:200]!r}"
                            )
                    n += 1
                    self.done[i] = n
        except Exception as exc:
            self.errors.append(f"client {i}: {exc!r}")

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self.threads)


@pytest.mark.parametrize("size", [65_530, DEFAULT_MAX_LINE])
def test_a_line_a_node_accepts_is_routed_and_stored(
    start_pair: Start, size: int
) -> None:
    """A PUT of 65,530 bytes (and of exactly the 64 KiB limit) sent to foo is stored on bar."""
    pair = start_pair()
    line = put_line(b"nut", b"big", size)
    value = line.split(b" ", 3)[3]
    with Conn(pair.foo) as c:
        assert c.ask("CREATE nut") == b"OK"
        assert c.ask(line) == b"OK"
        assert c.ask("GET nut big") == value + b"|OK"
        assert c.ask("PUT nut small s") == b"OK"  # the link still carries requests
    with Conn(pair.bar) as c:
        assert c.ask("GET nut big") == value + b"|OK"
        assert c.ask("GET nut small") == b"s|OK"


def test_twenty_long_routed_lines_cause_no_errors_for_other_clients(
    start_pair: Start,
) -> None:
    """20 pipelined 65,530-byte routed PUTs during an 8-client routed load: no errors for anyone."""
    pair = start_pair()
    lines = [put_line(b"nut", b"big%d" % i, 65_530) for i in range(20)]
    with Conn(pair.foo, timeout=15) as big:
        assert big.ask("CREATE nut") == b"OK"
        with Load(pair.foo) as load:
            time.sleep(0.2)  # the load is running
            big.send(b"".join(line + b"\r\n" for line in lines))
            replies = [big.line() for _ in lines]
            time.sleep(0.2)
        assert load.errors == []
        assert min(load.done) >= load.minimum
        assert replies == [b"OK"] * len(lines)
        for i, line in enumerate(lines):
            assert big.ask(b"GET nut big%d" % i) == line.split(b" ", 3)[3] + b"|OK"


def test_a_peer_frame_the_owner_refuses_fails_only_its_own_request(
    start_pair: Start,
) -> None:
    """A line foo accepts but bar's smaller limit refuses gets an ERROR; the link's other requests do not."""
    pair = start_pair(foo_extra=("--max-line", "200000"))  # bar: the 64 KiB default
    line = put_line(b"nut", b"huge", 100_000)
    with Conn(pair.foo, timeout=15) as big:
        assert big.ask("CREATE nut") == b"OK"
        with Load(pair.foo) as load:
            time.sleep(0.2)
            reply = big.ask(line)
            after = big.ask("PUT nut after a")  # the same connection goes on
            time.sleep(0.2)
        assert reply.startswith(b"ERROR "), reply[:200]
        assert after == b"OK"
        assert load.errors == []
    with Conn(pair.bar) as c:
        assert c.ask("GET nut huge") == b"|OK"  # not stored: refused whole
        assert c.ask("GET nut after") == b"a|OK"


@pytest.mark.parametrize("split", [False, True], ids=["one-packet", "split"])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_the_line_limit_counts_the_line_without_its_terminator(
    start_pair: Start, ending: bytes, split: bool
) -> None:
    """With --max-line 100 a line of 100 bytes is accepted and one of 101 refused, with LF and CRLF alike."""
    pair = start_pair(foo_extra=("--max-line", "100"), bar_extra=("--max-line", "100"))
    with Conn(pair.foo) as c:
        assert c.ask("CREATE apples") == b"OK"
    verdicts = {}
    for size in (100, 101):
        line = put_line(b"apples", b"k%d" % size, size)
        assert len(line) == size
        with Conn(pair.foo) as c:
            if split:  # the terminator's last byte comes in a packet of its own
                c.send(line + ending[:-1])
                time.sleep(0.1)
                with contextlib.suppress(OSError):  # refused already: closed
                    c.send(ending[-1:])
            else:
                c.send(line + ending)
            verdicts[size] = c.line()
            if verdicts[size] != b"OK":
                assert c.line() == CLOSED
    assert verdicts == {100: b"OK", 101: b"ERROR line too long"}
    with Conn(pair.foo) as c:
        assert c.ask("GET apples k100") == b"x" * (100 - len(b"PUT apples k100 ")) + (
            b"|OK"
        )
        assert c.ask("GET apples k101") == b"|OK"


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_a_routed_line_of_exactly_the_limit_is_stored_on_the_owner(
    start_pair: Start, ending: bytes
) -> None:
    """With --max-line 100 on both nodes, a 100-byte routed PUT is stored, with LF and CRLF alike."""
    pair = start_pair(foo_extra=("--max-line", "100"), bar_extra=("--max-line", "100"))
    line = put_line(b"nut", b"k", 100)
    with Conn(pair.foo) as c:
        assert c.ask("CREATE nut") == b"OK"
        c.send(line + ending)
        assert c.line() == b"OK"
    with Conn(pair.bar) as c:
        assert c.ask("GET nut k") == line.split(b" ", 3)[3] + b"|OK"
