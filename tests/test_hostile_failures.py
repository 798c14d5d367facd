"""One request's failure is that request's (issue 10, finding 1 and its rule).

A client once made an exception escape inside a peer link's ``data_received`` and
inside the loops that hand replies out, stopping them part-way: other clients' routed
requests hung for good. What must hold: no exception raised while handling or
answering one request stops another request's reply; the delivery loops, link
callbacks and timers are exception-safe; the client whose request failed reads
``ERROR internal error (see the node's log)`` and the node logs the detail.

Each test injects a failure with ``monkeypatch`` into one place, on nodes running in
this process (real sockets, a shared name server), while several connections have
requests in flight, then checks every reply. foo owns a..m, bar n..s and baz t..z;
``apples`` lives on foo, ``nuts`` on bar, ``tulips`` on baz. With the cluster secret
foo reaches bar over a peer link (``peer``); without it, over Pyro5 (``pyro``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pyrokv import RoutingTable, start_node
from pyrokv import peer as peer_module
from pyrokv import server as server_module
from pyrokv.errors import NodeTimeoutError
from pyrokv.node import NodeHandle
from pyrokv.protocol import INTERNAL_ERROR
from pyrokv.registry import Registry
from pyrokv.testing import CLOSED, Conn
from pyrokv.transport import PyroLanes

pytestmark = pytest.mark.distributed

INTERNAL = INTERNAL_ERROR.rstrip(b"\r\n")
KEPT = b"kept|OK"
#: What a connection that never got its reply shows (see :func:`replies`).
TIMEOUT = b"<no reply in time>"
RESET = b"<reset>"


@dataclass
class Cluster:
    """Nodes running in this process, by role (foo, bar, baz)."""

    nodes: dict[str, NodeHandle]

    def addr(self, role: str = "foo") -> tuple[str, int]:
        text = self.nodes[role].text
        assert text is not None
        return text.address


Start = Callable[..., Cluster]


@pytest.fixture(name="start")
def _start(ns: tuple[str, int], unique: str, secret_file: str) -> Iterator[Start]:
    """Start foo and bar (and baz) in this process with text ports; stopped at the end.

    ``peer`` gives them the cluster secret (peer links), else they route over
    Pyro5. Stores ``k = kept`` in apples, nuts (and tulips).
    """
    started: list[NodeHandle] = []

    def start(
        *, peer: bool, timeout: float = 5.0, roles: tuple[str, ...] = ("foo", "bar")
    ) -> Cluster:
        names = {role: f"{role}{unique}" for role in ("foo", "bar", "baz")}
        table = RoutingTable.parse(
            f"a..m={names['foo']}, n..s={names['bar']}, t..z={names['baz']}"
        )
        nodes = {}
        for role in roles:
            handle = start_node(
                names[role],
                table,
                ns,
                listen=("127.0.0.1", 0),
                secret_file=secret_file if peer else None,
                timeout=timeout,
            )
            started.append(handle)
            nodes[role] = handle
        cluster = Cluster(nodes)
        with Conn(cluster.addr()) as c:
            buckets = ["apples", "nuts"] + (["tulips"] if "baz" in roles else [])
            for bucket in buckets:
                assert c.ask(f"CREATE {bucket}") == b"OK"
                assert c.ask(f"PUT {bucket} k kept") == b"OK"
        return cluster

    try:
        yield start
    finally:
        for handle in reversed(started):
            handle.stop()


def replies(c: Conn, requests: list[bytes]) -> list[bytes]:
    """Read the replies to ``requests`` (sent already) as :meth:`Conn.ask` shows them.

    The first reply that does not come within the connection's timeout reads
    :data:`TIMEOUT`, a close :data:`CLOSED`, a reset :data:`RESET`; nothing is read
    after it.
    """
    out: list[bytes] = []
    for request in requests:
        try:
            first = c.line()
            if first == CLOSED:
                out.append(CLOSED)
                break
            if (
                request.startswith(b"GET ")
                and first not in (b"NOT FOUND", b"UNKNOWN COMMAND")
                and not first.startswith(b"ERROR ")
            ):
                first += b"|" + c.line()
        except TimeoutError:
            out.append(TIMEOUT)
            break
        except ConnectionResetError:
            out.append(RESET)
            break
        out.append(first)
    return out


def exchange_all(
    addr: tuple[str, int], scripts: list[list[bytes]], timeout: float = 5.0
) -> list[list[bytes]]:
    """Open a connection per script, send each script pipelined in one write, all
    before reading any; return each connection's replies (read side by side, so
    connections left waiting cost ``timeout`` once, not each)."""
    conns = [Conn(addr, timeout=timeout) for _ in scripts]
    try:
        for c, script in zip(conns, scripts, strict=True):
            c.send(b"".join(line + b"\r\n" for line in script))
        with concurrent.futures.ThreadPoolExecutor(len(conns)) as pool:
            return list(pool.map(replies, conns, scripts))
    finally:
        for c in conns:
            c.close()


def port_of(conn: server_module._Connection) -> int | None:
    """The client's port of a server-side connection."""
    if conn.transport is None:
        return None
    peername = conn.transport.get_extra_info("peername")
    return None if peername is None else int(peername[1])


def logged_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records of level ERROR or above from pyrokv's own loggers."""
    return [
        r
        for r in caplog.records
        if r.name.startswith("pyrokv") and r.levelno >= logging.ERROR
    ]


def injected(record: logging.LogRecord, text: str) -> bool:
    """Whether ``record`` carries the injected exception saying ``text``."""
    return record.exc_info is not None and text in str(record.exc_info[1])


def still_serving(
    cluster: Cluster, buckets: tuple[str, ...] = ("apples", "nuts")
) -> None:
    """A new client is served, locally and routed."""
    with Conn(cluster.addr()) as c:
        for bucket in buckets:
            assert c.ask(f"GET {bucket} k") == KEPT, bucket


def warm(cluster: Cluster, bucket: str = "nuts") -> None:
    """Send one routed request, so foo's link (or lane) to the owner is open."""
    with Conn(cluster.addr()) as c:
        assert c.ask(f"GET {bucket} k") == KEPT


@pytest.mark.parametrize(
    ("where", "peer"),
    [("local", True), ("routed", True), ("routed", False)],
    ids=["local", "routed-peer", "routed-pyro"],
)
def test_a_registry_failure_is_an_internal_error_for_that_request_only(
    start: Start,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
    peer: bool,
) -> None:
    """Registry.get raising for one key: that GET reads ERROR internal error, is logged; 8 connections' other requests are answered."""
    original = Registry.get

    def get(self: Registry, bucket: str, key: Any) -> Any:
        if key == "boom":
            raise RuntimeError("injected: Registry.get")
        return original(self, bucket, key)

    monkeypatch.setattr(Registry, "get", get)  # before the nodes bind their handlers
    cluster = start(peer=peer)
    bucket = b"apples" if where == "local" else b"nuts"
    normal = [b"GET nuts k", b"GET apples k"] * 5
    victim = [*normal[:5], b"GET " + bucket + b" boom", *normal[5:]]
    got = exchange_all(cluster.addr(), [victim] + [normal] * 7)
    assert got[0] == [KEPT] * 5 + [INTERNAL] + [KEPT] * 5
    assert got[1:] == [[KEPT] * 10] * 7
    assert any(injected(r, "injected: Registry.get") for r in logged_errors(caplog))
    still_serving(cluster)


@pytest.mark.parametrize("peer", [True, False], ids=["peer", "pyro"])
def test_a_reply_that_cannot_be_delivered_to_one_connection_does_not_stop_the_others(
    start: Start,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    peer: bool,
) -> None:
    """_Connection.routed raising for one connection: the others get every reply; that one is answered with ERROR internal error or dropped.

    Dropping it is sane: the code that writes its replies is what failed, so the
    connection cannot go on in order; leaving it waiting for ever is not.
    """
    cluster = start(peer=peer)
    warm(cluster)
    victim_port: list[int] = []
    original = server_module._Connection.routed

    def routed(self: server_module._Connection, reply: bytes) -> None:
        if port_of(self) in victim_port:
            raise RuntimeError("injected: routed")
        original(self, reply)

    monkeypatch.setattr(server_module._Connection, "routed", routed)
    script = [b"GET nuts k", b"GET apples k"] * 10
    conns = [Conn(cluster.addr(), timeout=2) for _ in range(8)]
    try:
        victim_port.append(conns[0].sock.getsockname()[1])
        for c in conns:
            c.send(b"".join(line + b"\r\n" for line in script))
        got = [replies(c, script) for c in conns]
    finally:
        for c in conns:
            c.close()
    assert got[1:] == [[KEPT] * 20] * 7
    assert got[0][-1] in (INTERNAL, CLOSED, RESET), (
        f"the connection whose reply could not be delivered got {got[0]}: neither "
        "ERROR internal error nor a close within 2 s"
    )
    assert any(injected(r, "injected: routed") for r in logged_errors(caplog))
    still_serving(cluster)


def test_a_failure_in_the_peer_links_reply_reader_fails_only_the_requests_in_flight(
    start: Start,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """_Link._replies raising once: the requests then in flight on that link read ERROR internal error; every other gets its reply.

    Failing those in flight is the only sane outcome: the bytes that carried their
    replies were lost with the exception, so the link cannot be read in order any
    more. At most one request per connection is in flight, and the link reopens.
    """
    cluster = start(peer=True)
    warm(cluster)
    calls = [0]
    original = peer_module._Link._replies

    def _replies(self: peer_module._Link, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == 3:  # a few replies in: the link is busy
            raise RuntimeError("injected: _Link._replies")
        original(self, data)

    monkeypatch.setattr(peer_module._Link, "_replies", _replies)
    script = [b"GET nuts k", b"GET apples k"] * 15
    got = exchange_all(cluster.addr(), [script] * 8)
    assert calls[0] >= 3
    flat = [reply for conn in got for reply in conn]
    assert len(flat) == 8 * len(script), got
    wrong = sorted({r for r in flat if r not in (KEPT, INTERNAL)})
    assert wrong == [], f"replies other than {KEPT!r} or {INTERNAL!r}: {wrong}"
    failed = [sum(r == INTERNAL for r in conn) for conn in got]
    assert sum(failed) >= 1 and max(failed) <= 1, failed
    assert any(injected(r, "injected: _Link._replies") for r in logged_errors(caplog))
    still_serving(cluster)


def test_a_pyro5_call_that_raises_fails_only_its_own_requests(
    start: Start,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PyroLanes._call raising once for bar: that call's requests read ERROR internal error; baz's, foo's and later ones are answered."""
    cluster = start(peer=False, roles=("foo", "bar", "baz"))
    warm(cluster)
    bar = cluster.nodes["bar"].name
    raised = threading.Event()
    original = PyroLanes._call

    def _call(self: PyroLanes, items: list[Any], deadline: float) -> list[bytes]:
        if items[0].hop.owner == bar and not raised.is_set():
            raised.set()
            raise RuntimeError("injected: PyroLanes._call")
        return original(self, items, deadline)

    monkeypatch.setattr(PyroLanes, "_call", _call)
    script = [b"GET nuts k", b"GET tulips k", b"GET apples k"] * 5
    got = exchange_all(cluster.addr(), [script] * 8, timeout=2)
    assert raised.is_set()
    for conn in got:
        assert len(conn) == len(script), (
            f"a connection stopped getting replies: {conn} (a request of the call "
            "that raised was never answered)"
        )
        for request, reply in zip(script, conn, strict=True):
            if request == b"GET nuts k":
                assert reply in (KEPT, INTERNAL)
            else:  # another owner, or foo itself
                assert reply == KEPT, request
    assert any(INTERNAL in conn for conn in got)
    assert any(injected(r, "injected: PyroLanes._call") for r in logged_errors(caplog))
    still_serving(cluster, ("apples", "nuts", "tulips"))


def test_a_failing_link_timer_still_times_out_every_request_in_flight(
    start: Start,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The link's timeout timer raising once (bar hung): the requests in flight still read an ERROR at their deadline; local ones are answered meanwhile."""
    original = Registry.get

    def get(self: Registry, bucket: str, key: Any) -> Any:
        if key == "slow":
            time.sleep(2.5)  # on bar's event loop: bar answers no one meanwhile
        return original(self, bucket, key)

    monkeypatch.setattr(Registry, "get", get)
    cluster = start(peer=True, timeout=0.5)
    warm(cluster)
    raised = threading.Event()
    after = NodeTimeoutError.after.__func__  # type: ignore[attr-defined]

    def failing_after(cls: type[NodeTimeoutError], *args: Any) -> NodeTimeoutError:
        if not raised.is_set():
            raised.set()
            raise RuntimeError("injected: NodeTimeoutError.after")
        return after(cls, *args)

    monkeypatch.setattr(NodeTimeoutError, "after", classmethod(failing_after))
    conns = [Conn(cluster.addr(), timeout=1.5) for _ in range(4)]
    try:
        sent = time.monotonic()
        conns[0].send(b"GET nuts slow\r\n")
        time.sleep(0.05)
        for c in conns[1:]:
            c.send(b"GET nuts k\r\n")  # on the same link, behind the slow one
        with Conn(cluster.addr(), timeout=1) as local:
            for _ in range(5):
                assert local.ask("GET apples k") == KEPT
        got = [replies(c, [b"GET nuts k"])[0] for c in conns]
        took = time.monotonic() - sent
    finally:
        for c in conns:
            c.close()
    assert raised.is_set()
    assert took < 2.0 and all(reply.startswith(b"ERROR ") for reply in got), (
        f"replies of the requests in flight when the timer failed: {got} after "
        f"{took:.1f}s (timeout 0.5 s; bar answers after 2.5 s)"
    )
    assert any(
        injected(r, "injected: NodeTimeoutError.after") for r in logged_errors(caplog)
    )
    time.sleep(2.5)  # bar awake again
    still_serving(cluster)


@pytest.mark.parametrize("first", [True, False], ids=["from-a-packet", "from-a-reply"])
@pytest.mark.parametrize("peer", [True, False], ids=["peer", "pyro"])
def test_a_request_the_transport_cannot_send_fails_alone(
    start: Start,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    peer: bool,
    first: bool,
) -> None:
    """The transport raising as it sends one request: that one reads ERROR internal error; the requests around it, and other connections', are answered.

    ``from-a-packet``: the failing request is sent as its packet is read;
    ``from-a-reply``: it is sent when the routed reply before it arrives.
    """
    cluster = start(peer=peer)
    warm(cluster)
    if peer:
        cls: Any = peer_module._Link
        original = cls.send

        def send(self: Any, item: Any) -> None:
            if b"boom" in item.line:
                raise RuntimeError("injected: send")
            original(self, item)

    else:
        cls = PyroLanes
        original = cls.send

        def send(self: Any, item: Any) -> None:
            if b"boom" in item.line:
                raise RuntimeError("injected: send")
            original(self, item)

    monkeypatch.setattr(cls, "send", send)
    before = b"GET apples k" if first else b"GET nuts k"
    victim = [before, b"GET nuts boom", b"GET nuts k", b"GET apples k"]
    normal = [b"GET nuts k", b"GET apples k"] * 3
    got = exchange_all(cluster.addr(), [victim] + [normal] * 4, timeout=2)
    assert got[1:] == [[KEPT] * 6] * 4
    assert got[0] == [KEPT, INTERNAL, KEPT, KEPT]
    assert any(injected(r, "injected: send") for r in logged_errors(caplog))
    still_serving(cluster)
