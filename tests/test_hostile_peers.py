"""Hostile clients against the peer protocol, and client limits against the nodes' own traffic.

Issue 10, finding 1 ("A client can speak the peer protocol and hang everyone") and
finding 8 ("Client limits starve the nodes' own traffic"): foo owns a..m, bar owns
n..z, both serve text; routed requests go to bar through foo.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from peertesting import (
    TIMEOUT,
    Clients,
    Pair,
    address_of,
    held_workers,
    hello,
    idle_sockets,
    load,
    open_files,
    pair,
    secret_flag,
)

from pyrokv import peering
from pyrokv.cluster import write_secret
from pyrokv.server import DEFAULT_MAX_CONNECTIONS, PEER_RESERVE
from pyrokv.testing import CLOSED, Conn

pytestmark = pytest.mark.distributed

#: Finding 1's attack: a routed GET, then a peer frame whose budget is 400 nines.
ATTACK = b"GET nut k\nFWD " + b"9" * 400 + b" x GET apple k\n"
TOO_MANY = b"ERROR too many connections, try again later"
#: Pyro5 workers of a node started with --workers 4 (Pyro5 needs at least 4).
WORKERS = 4


@pytest.fixture(name="other_secret")
def _other_secret(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second cluster secret: a node given it is not of the first cluster."""
    return write_secret(str(tmp_path_factory.mktemp("other") / "other.secret"))


@pytest.fixture(name="nodes")
def _nodes(ns: tuple[str, int], unique: str, secret_file: str) -> Iterator[Pair]:
    """foo and bar sharing the cluster secret."""
    with pair(ns, unique, secret_flag(secret_file), secret_flag(secret_file)) as nodes:
        yield nodes


def routed_put_get(conn: Conn, i: int, n: int) -> None:
    """One round of a benign client: a PUT and a GET on a bucket of bar, via foo."""
    bucket = b"nest%d" % i
    if n == 0:
        assert conn.ask(b"CREATE " + bucket) == b"OK"
    assert conn.ask(b"PUT %s k%d v%d" % (bucket, n, n)) == b"OK"
    assert conn.ask(b"GET %s k%d" % (bucket, n)) == b"v%d|OK" % n


def attack(
    conns: list[Conn], payload: bytes, lines: int, rounds: int
) -> list[list[bytes]]:
    """Send ``payload`` on every connection ``rounds`` times; the reply lines of each.

    Each round reads ``lines`` lines from each connection.
    """
    replies: list[list[bytes]] = [[] for _ in conns]
    for _ in range(rounds):
        for c in conns:
            c.send(payload)
        for c, got in zip(conns, replies, strict=True):
            got += [c.line() for _ in range(lines)]
    return replies


def test_peer_frames_from_clients_do_not_stall_routed_requests(nodes: Pair) -> None:
    """30 connections sending FWD with a 400-digit budget: 8 routed clients are all answered."""
    load(nodes)
    foo = nodes.text(nodes.foo)
    hostile = [Conn(foo, timeout=TIMEOUT + 2) for _ in range(30)]
    try:
        clients = Clients(foo, 8, routed_put_get, rounds=50)
        replies = attack(hostile, ATTACK, lines=3, rounds=20)
        clients.stop(timeout=30)
        assert clients.failures == []
        assert clients.slowest < TIMEOUT
        for got in replies:
            assert got == [b"brown", b"OK", b"UNKNOWN COMMAND"] * 20
        for c in hostile:  # still open, and still a client
            assert c.ask("GET apple k") == b"red|OK"
    finally:
        for c in hostile:
            c.close()


def test_peer_frames_with_the_owner_dead_give_error_lines(nodes: Pair) -> None:
    """bar killed: routed requests get ERROR naming bar (never the exception's text); local ones work."""
    load(nodes)
    nodes.children[nodes.bar].kill()
    foo = nodes.text(nodes.foo)
    prefix = f"ERROR node '{nodes.bar}'".encode()

    def routed_and_local(conn: Conn, i: int, n: int) -> None:
        for request in (b"PUT nest k v", b"GET nut k"):
            reply = conn.ask(request)
            assert reply.startswith(prefix), reply
            assert b"division" not in reply, reply
        assert conn.ask(b"PUT apple k%d red" % i) == b"OK"
        assert conn.ask(b"GET apple k%d" % i) == b"red|OK"

    hostile = [Conn(foo, timeout=TIMEOUT + 2) for _ in range(30)]
    try:
        clients = Clients(foo, 8, routed_and_local, rounds=10)
        replies = attack(hostile, ATTACK, lines=2, rounds=5)
        clients.stop(timeout=30)
        assert clients.failures == []
        for got in replies:
            assert len(got) == 10
            for first, second in zip(got[::2], got[1::2], strict=True):
                assert first.startswith(prefix) and b"division" not in first, first
                assert second == b"UNKNOWN COMMAND"
        for c in hostile:
            assert c.ask("GET apple k") == b"red|OK"
    finally:
        for c in hostile:
            c.close()


def test_a_clients_fwd_zero_does_not_disturb_other_clients(nodes: Pair) -> None:
    """FWD lines with a zero budget from clients: UNKNOWN COMMAND, and no false timeouts for others."""
    load(nodes)
    foo = nodes.text(nodes.foo)
    payload = (
        f"FWD 0 x GET nut k\nFWD 0 {nodes.foo} GET nut k\n"
        f"FWD 0 {nodes.bar} GET apple k\nFWD 0 {nodes.foo},{nodes.bar} PUT nut k x\n"
    ).encode()
    hostile = [Conn(foo, timeout=TIMEOUT + 2) for _ in range(10)]
    try:
        clients = Clients(foo, 8, routed_put_get, rounds=20)
        replies = attack(hostile, payload, lines=4, rounds=20)
        clients.stop(timeout=30)
        assert clients.failures == []
        assert clients.slowest < TIMEOUT
        for got in replies:
            assert got == [b"UNKNOWN COMMAND"] * 80
    finally:
        for c in hostile:
            c.close()
    with Conn(foo) as c:
        assert c.ask("GET nut k") == b"brown|OK"  # no forged PUT went through


def test_peer_gets_a_challenge_and_a_wrong_proof_is_refused(
    nodes: Pair, secret_file: str
) -> None:
    """PEER gets the node's proof (over its text address) and a nonce; a wrong PROVE
    is answered ERROR after a delay, the lines after it are not run as a peer's, and
    the connection is closed; a second PEER on a connection is UNKNOWN COMMAND."""
    load(nodes)
    secret = peering.read_secret(secret_file)
    with Conn(nodes.text(nodes.foo)) as c:
        mine, owner, theirs, owner_proof = hello(c, nodes.bar)
        assert owner == nodes.foo
        assert peering.verify(
            peering.proof(secret, False, mine, owner, theirs, address_of(c)),
            owner_proof,
        )
        assert not peering.verify(  # it is bound to the address: no other one
            peering.proof(secret, False, mine, owner, theirs, "10.0.0.1:1"),
            owner_proof,
        )
        started = time.monotonic()
        c.send(
            b"PROVE " + b"0" * 64 + f"\r\nFWD 1000 {nodes.bar} GET apple k\r\n".encode()
        )
        assert c.line() == b"ERROR peer authentication failed"
        assert 0.2 <= time.monotonic() - started <= 1.5
        assert c.line() == CLOSED  # the FWD after it never ran
    with Conn(nodes.text(nodes.foo)) as c:
        hello(c, nodes.bar)
        assert c.ask(peering.hello(nodes.bar, peering.new_nonce()).strip()) == (
            b"UNKNOWN COMMAND"
        )
        assert c.ask("GET apple k") == b"red|OK"  # and a client as before


def test_a_sniffed_proof_cannot_be_replayed_on_another_connection(
    nodes: Pair, secret_file: str
) -> None:
    """A PROVE accepted on one connection is refused on another: its nonce differs."""
    load(nodes)
    secret = peering.read_secret(secret_file)
    foo = nodes.text(nodes.foo)
    with Conn(foo) as sniffed, Conn(foo) as replayed:
        mine, _, theirs, _ = hello(sniffed, nodes.bar)
        proof = peering.proof(secret, True, theirs, nodes.bar, mine)
        assert sniffed.ask(b"PROVE " + proof) == b"OK"
        sniffed.send(f"FWD 1000 0 {nodes.bar} GET apple k\r\n".encode())
        assert [sniffed.line() for _ in range(3)] == [b"9", b"red", b"OK"]

        replayed.send(peering.hello(nodes.bar, mine))  # the sniffed PEER line, too
        words = replayed.line().split()
        assert words[0] == b"PEER" and words[2] != theirs
        assert replayed.ask(b"PROVE " + proof) == b"ERROR peer authentication failed"
        assert replayed.line() == CLOSED


def test_a_node_without_a_secret_does_not_speak_the_peer_protocol(
    ns: tuple[str, int], unique: str
) -> None:
    """No secret: PEER, PROVE and FWD are UNKNOWN COMMAND; routed requests go over Pyro5."""
    with pair(ns, unique) as nodes, Conn(nodes.text(nodes.foo)) as c:
        c.send(peering.hello(nodes.bar, peering.new_nonce()))
        assert c.line() == b"UNKNOWN COMMAND"
        assert c.ask(b"PROVE " + b"0" * 64) == b"UNKNOWN COMMAND"
        assert c.ask(f"FWD 1000 {nodes.bar} CREATE apple") == b"UNKNOWN COMMAND"
        assert c.ask("CREATE nut") == b"OK"
        assert c.ask("PUT nut k v") == b"OK"
        assert c.ask("GET nut k") == b"v|OK"


@pytest.mark.parametrize("shared", [True, False], ids=["same-secret", "other-secret"])
def test_routed_requests_take_the_peer_link_when_the_nodes_share_the_secret(
    ns: tuple[str, int], unique: str, secret_file: str, other_secret: str, shared: bool
) -> None:
    """bar's Pyro5 workers all held: routed requests still work over the peer link, and only then."""
    foo_secret = secret_file if shared else other_secret
    with pair(
        ns,
        unique,
        foo=secret_flag(foo_secret),
        bar=[*secret_flag(secret_file), "--workers", str(WORKERS)],
    ) as nodes:
        with (
            held_workers(nodes.uri(nodes.bar), WORKERS),
            Conn(nodes.text(nodes.foo), timeout=TIMEOUT + 2) as c,
        ):
            replies = [c.ask(r) for r in ("CREATE nut", "PUT nut k v", "GET nut k")]
            assert c.ask("CREATE apple") == b"OK"  # foo's own: served either way
        if shared:
            assert replies == [b"OK", b"OK", b"v|OK"]
        else:  # no peer link, and bar's Pyro5 door is shut
            prefix = f"ERROR node '{nodes.bar}'".encode()
            for reply in replies:
                assert reply.startswith(prefix) and b"no free workers" in reply, reply


def test_a_thousand_idle_clients_do_not_lock_out_the_peer_link(
    ns: tuple[str, int], unique: str, secret_file: str
) -> None:
    """bar full of idle clients with its Pyro5 workers held: routed requests work, so over the link."""
    with (
        open_files(DEFAULT_MAX_CONNECTIONS + 512),  # bar's limit too: it starts here
        pair(
            ns,
            unique,
            foo=secret_flag(secret_file),
            bar=[*secret_flag(secret_file), "--workers", str(WORKERS)],
        ) as nodes,
    ):
        bar = nodes.text(nodes.bar)
        with (
            idle_sockets(bar, DEFAULT_MAX_CONNECTIONS),
            held_workers(nodes.uri(nodes.bar), WORKERS),
        ):
            with Conn(bar) as client:
                assert client.ask("CREATE nut") == TOO_MANY
            with Conn(nodes.text(nodes.foo), timeout=TIMEOUT + 2) as c:
                assert c.ask("CREATE nut") == b"OK"
                assert c.ask("PUT nut k v") == b"OK"
                assert c.ask("GET nut k") == b"v|OK"


def test_clients_holding_every_slot_and_worker_of_bar_do_not_cut_foo_off(
    ns: tuple[str, int], unique: str, secret_file: str
) -> None:
    """bar's text port full, peer reserve too, and its Pyro5 workers held by clients:
    a node's PEER still finds room (the oldest unproven reserve connection is closed),
    and foo reaches bar."""
    full = DEFAULT_MAX_CONNECTIONS + PEER_RESERVE
    with (
        open_files(full + 512),  # bar's limit too: it starts after this
        pair(
            ns,
            unique,
            foo=secret_flag(secret_file),
            bar=[*secret_flag(secret_file), "--workers", str(WORKERS)],
        ) as nodes,
        idle_sockets(nodes.text(nodes.bar), full),
        held_workers(nodes.uri(nodes.bar), WORKERS),
    ):
        with Conn(nodes.text(nodes.bar)) as probe:  # the reserve is taken, idle
            probe.send(peering.hello(nodes.foo, peering.new_nonce()))
            assert probe.line().startswith(b"PEER "), "no room made for a node"
        deadline = time.monotonic() + 10  # room for a reserve slot to time out
        while True:
            with Conn(nodes.text(nodes.foo), timeout=TIMEOUT + 2) as c:
                reply = c.ask("CREATE nut")
                if reply == b"OK":
                    assert c.ask("PUT nut k v") == b"OK"
                    assert c.ask("GET nut k") == b"v|OK"
                    break
            assert time.monotonic() < deadline, reply
            time.sleep(0.5)


@pytest.mark.parametrize("why", ["other-secret", "port-full"])
def test_a_peer_link_that_cannot_be_opened_falls_back_to_pyro5(
    ns: tuple[str, int],
    unique: str,
    secret_file: str,
    other_secret: str,
    why: str,
) -> None:
    """bar's text port refuses foo (another secret), or is full of clients (a node
    still finds room): routed requests are served either way."""
    foo_secret = other_secret if why == "other-secret" else secret_file
    full = DEFAULT_MAX_CONNECTIONS + PEER_RESERVE if why == "port-full" else 0
    with (
        open_files(full + 512),  # bar's limit too: it starts after this
        pair(ns, unique, secret_flag(foo_secret), secret_flag(secret_file)) as nodes,
        idle_sockets(nodes.text(nodes.bar), full),
    ):
        if full:  # a node's PEER makes room: an idle unproven connection goes
            with Conn(nodes.text(nodes.bar)) as probe:
                probe.send(peering.hello(nodes.foo, peering.new_nonce()))
                assert probe.line().startswith(b"PEER ")
        with Conn(nodes.text(nodes.foo), timeout=TIMEOUT + 2) as c:
            for _ in range(3):  # the first finds out, the others go straight to Pyro5
                assert c.ask("CREATE nut") == b"OK"
                assert c.ask("PUT nut k v") == b"OK"
                assert c.ask("GET nut k") == b"v|OK"
            c.send(b"GET nut k\r\nGET nut nope\r\nPUT nut k w\r\nGET nut k\r\n")
            replies = [c.line() for _ in range(7)]
            assert replies == [b"v", b"OK", b"", b"OK", b"OK", b"w", b"OK"]
