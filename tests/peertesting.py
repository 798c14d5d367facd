"""Helpers for the hostile-client and hostile-peer tests (issue 10).

Two nodes with text ports, ``foo`` (a..m) and ``bar`` (n..z), each started with a
cluster secret file of its own choosing; the peer handshake of
:mod:`pyrokv.peering` done by hand; and Pyro5 connections that hold a node's
workers, so that a test can shut its Pyro5 door and see which way requests went.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import Pyro5.api
import Pyro5.errors
import pytest

from pyrokv import peering
from pyrokv.cluster import Child, spawn_node
from pyrokv.testing import Conn

#: The longest a routed request may take in these clusters (``--timeout``), in seconds.
TIMEOUT = 3.0


@dataclass
class Pair:
    """Nodes ``foo`` (a..m) and ``bar`` (n..z) of one cluster, serving text."""

    ns: tuple[str, int]
    foo: str
    bar: str
    extra: dict[str, list[str]]
    children: dict[str, Child] = field(default_factory=dict)

    @property
    def table(self) -> str:
        """Both nodes' routing table."""
        return f"a..m={self.foo}, n..z={self.bar}"

    def start(self, name: str) -> Child:
        """Start node ``name`` (again) with its options; return it once it is ready."""
        child = spawn_node(
            name,
            self.ns,
            self.table,
            extra=[
                "--listen",
                "127.0.0.1:0",
                "--timeout",
                str(TIMEOUT),
                *self.extra[name],
            ],
        )
        self.children[name] = child
        return child

    def text(self, name: str) -> tuple[str, int]:
        """Where node ``name`` serves the text protocol."""
        address = self.children[name].listen_address()
        assert address is not None, self.children[name].output()
        return address

    def uri(self, name: str) -> str:
        """The Pyro5 URI of node ``name``'s task runner, from its ``READY`` line."""
        child = self.children[name]
        for line in child.lines:
            words = line.split()
            if len(words) == 3 and words[:2] == ["READY", name]:
                return words[2]
        raise AssertionError(f"no READY line: {child.output()}")

    def stop(self) -> None:
        """Stop every node of the pair."""
        for child in self.children.values():
            child.stop()


@contextlib.contextmanager
def pair(
    ns: tuple[str, int],
    unique: str,
    foo: Sequence[str] = (),
    bar: Sequence[str] = (),
) -> Iterator[Pair]:
    """Start bar, then foo, with the options given for each; stop both at the end."""
    nodes = Pair(ns, f"f{unique}", f"b{unique}", {})
    nodes.extra = {nodes.foo: list(foo), nodes.bar: list(bar)}
    try:
        nodes.start(nodes.bar)
        nodes.start(nodes.foo)
        yield nodes
    finally:
        nodes.stop()


def secret_flag(path: str) -> list[str]:
    """The option that gives a node the cluster secret in file ``path``."""
    return ["--cluster-secret-file", path]


def load(nodes: Pair, through: str | None = None) -> None:
    """Buckets apple (foo's) and nut (bar's), each with k set; sent to ``through`` (foo)."""
    with Conn(nodes.text(through or nodes.foo)) as c:
        for request in (
            "CREATE apple",
            "PUT apple k red",
            "CREATE nut",
            "PUT nut k brown",
        ):
            assert c.ask(request) == b"OK", request


def address_of(conn: Conn) -> str:
    """``HOST:PORT`` of the text port ``conn`` dialled: what the owner's proof names."""
    host, port = conn.sock.getpeername()[:2]
    return f"{host}:{port}"


def hello(conn: Conn, claimed: str) -> tuple[bytes, str, bytes, bytes]:
    """Send ``PEER <claimed> <nonce>``; return (our nonce, owner's name, nonce, proof)."""
    mine = peering.new_nonce()
    conn.send(peering.hello(claimed, mine))
    answer = conn.line()
    words = answer.split()
    assert len(words) == 4 and words[0] == b"PEER", answer
    return mine, words[1].decode(), words[2], words[3]


def prove(conn: Conn, secret: bytes, claimed: str) -> None:
    """Prove on ``conn`` that this is node ``claimed`` of the cluster of ``secret``."""
    mine, owner, theirs, owner_proof = hello(conn, claimed)
    assert peering.verify(
        peering.proof(secret, False, mine, owner, theirs, address_of(conn)),
        owner_proof,
    ), "the owner's proof does not verify"
    answer = conn.ask(
        peering.prove_line(peering.proof(secret, True, theirs, claimed, mine)).strip()
    )
    assert answer == b"OK", answer


@contextlib.contextmanager
def held_workers(uri: str, count: int) -> Iterator[None]:
    """Hold ``count`` Pyro5 workers of the daemon at ``uri`` with idle connections.

    Each connection to a Pyro5 thread-pool daemon holds one worker until it closes
    (or until the daemon's COMMTIMEOUT, 60 s for pyrokv). A raw TCP connection that
    sends nothing holds one only for pyrokv's handshake deadline (5 s), so these
    are real Pyro5 connections that have done their handshake. The block checks
    that the daemon refuses one more.
    """
    proxies = []
    try:
        for _ in range(count):
            proxy = Pyro5.api.Proxy(uri)
            proxy._pyroTimeout = 5
            proxy._pyroBind()
            proxies.append(proxy)
        with Pyro5.api.Proxy(uri) as extra:
            extra._pyroTimeout = 5
            with pytest.raises(
                Pyro5.errors.CommunicationError, match="no free workers"
            ):
                extra._pyroBind()
        yield
    finally:
        for proxy in proxies:
            proxy._pyroRelease()


@contextlib.contextmanager
def open_files(needed: int) -> Iterator[None]:
    """Let this process (and the nodes it starts meanwhile) open ``needed`` files.

    Raises the soft RLIMIT_NOFILE for the block when it is lower; skips the test
    when the hard limit does not allow it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def idle_sockets(address: tuple[str, int], count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections to ``address`` that send nothing; closed at the end."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(address, timeout=5))
        yield socks
    finally:
        for sock in socks:
            sock.close()


class Clients:
    """Benign clients, one thread each, running ``work(conn, i)`` until stopped.

    Each records its failures (wrong replies, timeouts) and how many rounds it did;
    a client keeps going until :meth:`stop` and has done at least ``rounds``.
    """

    def __init__(
        self,
        address: tuple[str, int],
        count: int,
        work: Callable[[Conn, int, int], None],
        rounds: int,
    ) -> None:
        self.failures: list[str] = []
        self.done = [0] * count
        self.slowest = 0.0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(address, i, work, rounds))
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _run(
        self,
        address: tuple[str, int],
        i: int,
        work: Callable[[Conn, int, int], None],
        rounds: int,
    ) -> None:
        try:
            with Conn(address, timeout=TIMEOUT + 2) as conn:
                n = 0
                while n < rounds or not self._stop.is_set():
                    started = time.monotonic()
                    work(conn, i, n)
                    self.slowest = max(self.slowest, time.monotonic() - started)
                    n += 1
                    self.done[i] = n
        except Exception as exc:  # recorded, and the test fails on it
            self.failures.append(f"client {i}: {type(exc).__name__}: {exc}")

    def stop(self, timeout: float) -> None:
        """Stop every client after its current round; wait for them, by ``timeout``."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))
        stuck = sum(thread.is_alive() for thread in self._threads)
        assert not stuck, f"{stuck} clients still running after {timeout}s"
