"""The text protocol served by real node processes: the guide's transcript and every bad input."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyrokv.cluster import Child, spawn_node
from pyrokv.testing import Conn

pytestmark = pytest.mark.distributed

HINT = ": start the bucket name with a byte the table covers, or add an entry for it"


@dataclass
class Pair:
    """Two nodes serving the text protocol: ``a`` owns a..m, ``b`` owns n..z."""

    a: str
    b: str
    a_addr: tuple[str, int]
    b_addr: tuple[str, int]
    children: dict[str, Child]


def text_address(child: Child) -> tuple[str, int]:
    """The node's text-protocol address; the node was started with --listen."""
    address = child.listen_address()
    assert address is not None, child.output()
    return address


@pytest.fixture(name="pair")
def _pair(
    ns: tuple[str, int], unique: str, secret_file: str, request: pytest.FixtureRequest
) -> Iterator[Pair]:
    extra = list(getattr(request, "param", ()))
    a, b = f"a{unique}", f"b{unique}"
    table = f"a..m={a}, n..z={b}"
    children: dict[str, Child] = {}
    try:
        for name in (a, b):
            children[name] = spawn_node(
                name,
                ns,
                table,
                extra=[
                    "--listen",
                    "127.0.0.1:0",
                    "--timeout",
                    "3",
                    "--cluster-secret-file",
                    secret_file,
                    *extra,
                ],
            )
        yield Pair(
            a,
            b,
            text_address(children[a]),
            text_address(children[b]),
            children,
        )
    finally:
        for child in children.values():
            child.stop()


def wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until every thread of ``pid`` is stopped (state T), with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {
            (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            for task in Path(f"/proc/{pid}/task").iterdir()
        }
        if states <= {"T", "t"}:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop within {timeout}s")


def stored(pair: Pair) -> None:
    """Store data on both nodes that every bad-input test checks afterwards."""
    with Conn(pair.a_addr) as c:
        for request in (
            "CREATE apples",
            "PUT apples k kept",
            "CREATE zebras",
            "PUT zebras k kept",
        ):
            assert c.ask(request) == b"OK"


def intact(pair: Pair) -> None:
    """The stored data is intact and a new client is served, on both nodes."""
    for addr in (pair.a_addr, pair.b_addr):
        with Conn(addr) as c:
            assert c.ask("GET apples k") == b"kept|OK"
            assert c.ask("GET zebras k") == b"kept|OK"


def test_guide_transcript_local_and_routed(pair: Pair) -> None:
    """The guide's session, on a bucket of each node, through both nodes' ports."""
    for addr in (pair.a_addr, pair.b_addr):
        with Conn(addr) as c:
            for bucket in ("shopping", "groceries"):  # s.. -> b, g.. -> a
                assert c.ask(f"CREATE {bucket}") == b"OK"
                assert c.ask(f"PUT {bucket} milk 1") == b"OK"
                assert c.ask(f"GET {bucket} milk") == b"1|OK"
                assert c.ask(f"GET {bucket} eggs") == b"|OK"
                assert c.ask(f"DELETE {bucket} milk") == b"OK"
                assert c.ask(f"GET {bucket} milk") == b"|OK"
            assert c.ask("GET nosuch milk") == b"NOT FOUND"
            assert c.ask("GET apples milk") == b"NOT FOUND"
            assert c.ask("FOO") == b"UNKNOWN COMMAND"
            assert c.ask("") == b"UNKNOWN COMMAND"
            assert c.ask("GET shopping") == b"ERROR usage: GET BUCKET KEY"
            assert c.ask("GET 1abc milk") == (
                f"ERROR could not find entry for '1abc' in table [a..m -> {pair.a}, n..z -> {pair.b}]{HINT}".encode()
            )
            assert (
                c.ask("GET shopping milk") == b"|OK"
            )  # still usable after every reply


def test_bare_newlines_are_accepted(pair: Pair) -> None:
    """Requests may end with \\n alone."""
    with Conn(pair.a_addr) as c:
        c.send(b"CREATE apples\nPUT apples k v\nGET apples k\n")
        assert [c.line() for _ in range(4)] == [b"OK", b"OK", b"v", b"OK"]


def test_long_line_is_refused_and_closed_without_running_any_of_it(pair: Pair) -> None:
    """A line over the limit: ERROR line too long, closed, and no part of it stored."""
    stored(pair)
    with Conn(pair.a_addr) as c:
        value = b"x" * 70_000
        c.send(
            b"PUT apples k " + value + b" PUT apples k cut\r\nPUT apples k after\r\n"
        )
        assert c.line() == b"ERROR line too long"
        assert c.closed(5)
    intact(pair)


def test_long_line_without_newline_is_refused(pair: Pair) -> None:
    """A client that sends more than the limit without a line end is refused early."""
    stored(pair)
    with Conn(pair.a_addr) as c:
        c.send(b"GET apples " + b"y" * 100_000)
        assert c.line() == b"ERROR line too long"
        assert c.closed(5)
    intact(pair)


@pytest.mark.parametrize("pair", [["--max-line", "100"]], indirect=True)
def test_line_limit_is_configurable_and_values_below_it_are_whole(pair: Pair) -> None:
    """--max-line sets the limit; a value below it is stored whole, never cut."""
    with Conn(pair.a_addr) as c:
        assert c.ask("CREATE apples") == b"OK"
        value = "v" * 80
        assert c.ask(f"PUT apples k {value}") == b"OK"
        assert c.ask("GET apples k") == f"{value}|OK".encode()
        assert c.ask(f"PUT apples k {'w' * 100}") == b"ERROR line too long"
    with Conn(pair.a_addr) as c:
        assert c.ask("GET apples k") == f"{value}|OK".encode()


def test_values_of_2000_bytes_are_not_truncated(pair: Pair) -> None:
    """The Elixir version cuts values near 1,443 bytes; pyrokv stores them whole, routed too."""
    value = ("0123456789" * 200).encode()
    with Conn(pair.a_addr) as c:
        for bucket in (b"apples", b"zebras"):
            assert c.ask(b"CREATE " + bucket) == b"OK"
            assert c.ask(b"PUT " + bucket + b" k " + value) == b"OK"
            assert c.ask(b"GET " + bucket + b" k") == value + b"|OK"


def test_connect_and_close_probes_do_not_stop_the_node(pair: Pair) -> None:
    """Hundreds of connect-and-close probes (the Elixir node halts after four)."""
    stored(pair)
    for i in range(300):
        s = socket.create_connection(pair.a_addr, timeout=5)
        if i % 2:
            s.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )  # RST
        s.close()
    intact(pair)
    assert pair.children[pair.a].alive()


def test_non_utf8_and_nul_bytes_are_stored_exactly(pair: Pair) -> None:
    """Bytes that are not UTF-8, and NUL, come back exactly, locally and routed."""
    with Conn(pair.a_addr) as c:
        for bucket in (b"apples", b"zebras", b"\xffbin"):
            create = c.ask(b"CREATE " + bucket)
            if bucket == b"\xffbin":
                assert create.startswith(b"ERROR could not find entry for '\\udcffbin'")
                continue
            assert create == b"OK"
            assert c.ask(b"PUT " + bucket + b" k\xfe\x00 \x00\xff\xc3(") == b"OK"
            assert c.ask(b"GET " + bucket + b" k\xfe\x00") == b"\x00\xff\xc3(|OK"


def test_pipelined_commands_are_answered_in_order(pair: Pair) -> None:
    """Many commands in one packet, mixing local and routed buckets, answer in order."""
    with Conn(pair.a_addr) as c:
        batch = [b"CREATE apples", b"CREATE zebras"]
        for i in range(100):
            bucket = b"apples" if i % 3 else b"zebras"
            batch += [
                b"PUT " + bucket + b" k%d %d" % (i, i),
                b"GET " + bucket + b" k%d" % i,
            ]
        c.send(b"\r\n".join(batch) + b"\r\n")
        replies = [c.line() for _ in range(2 + 100 * 3)]
        expected = [b"OK", b"OK"]
        for i in range(100):
            expected += [b"OK", b"%d" % i, b"OK"]
        assert replies == expected


def test_a_command_split_across_packets_is_reassembled(pair: Pair) -> None:
    """A request sent one byte at a time is one request."""
    with Conn(pair.a_addr) as c:
        assert c.ask("CREATE apples") == b"OK"
        for byte in b"PUT apples k split\r":
            c.send(bytes([byte]))
        c.send(b"\n")
        assert c.line() == b"OK"
        assert c.ask("GET apples k") == b"split|OK"


@pytest.mark.parametrize("pair", [["--idle-timeout", "0.5"]], indirect=True)
def test_idle_connections_are_closed(pair: Pair) -> None:
    """A connection that sends nothing is closed after the idle timeout; others go on."""
    stored(pair)
    idle = Conn(pair.a_addr)
    half = Conn(pair.a_addr)
    half.send(b"GET apples")  # half a line, then silence
    try:
        assert idle.closed(5)
        assert half.closed(5)
    finally:
        idle.close()
        half.close()
    intact(pair)


def test_half_closed_connections_get_their_answers(pair: Pair) -> None:
    """A client that shuts down its sending side gets every reply, then the close."""
    with Conn(pair.a_addr) as c:
        c.send(b"CREATE apples\r\nCREATE zebras\r\nGET zebras k\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        assert [c.line() for _ in range(4)] == [b"OK", b"OK", b"", b"OK"]
        assert c.line() == b"<closed>"


def test_hundreds_of_concurrent_connections_are_served(pair: Pair) -> None:
    """250 connections open at once, each served, local and routed."""
    stored(pair)
    conns = [Conn(pair.a_addr if i % 2 else pair.b_addr) for i in range(250)]
    try:
        for i, c in enumerate(conns):
            c.send(
                b"GET apples k\r\nGET zebras k\r\n" if i % 2 else b"GET zebras k\r\n"
            )
        for i, c in enumerate(conns):
            assert c.line() == b"kept" and c.line() == b"OK"
            if i % 2:
                assert c.line() == b"kept" and c.line() == b"OK"
    finally:
        for c in conns:
            c.close()


def test_a_hung_owner_does_not_block_local_buckets(pair: Pair) -> None:
    """While routed requests wait on a hung owner, local requests are answered at once;
    the routed ones get ERROR within the timeout."""
    stored(pair)
    bar = pair.children[pair.b]
    os.kill(bar.proc.pid, signal.SIGSTOP)
    wait_stopped(bar.proc.pid)
    try:
        waiting = [
            Conn(pair.a_addr) for _ in range(40)
        ]  # more than the 32 route workers
        try:
            started = time.monotonic()
            for c in waiting:
                c.send(b"GET zebras k\r\n")
            with Conn(pair.a_addr) as local:
                for _ in range(20):
                    assert local.ask("GET apples k") == b"kept|OK"
            assert time.monotonic() - started < 2
            for c in waiting:
                reply = c.line()
                assert reply.startswith(f"ERROR node '{pair.b}'".encode()), reply
                assert (
                    b"did not answer within" in reply or b"not reached in time" in reply
                )
            assert time.monotonic() - started < 6
        finally:
            for c in waiting:
                c.close()
    finally:
        os.kill(bar.proc.pid, signal.SIGCONT)
    intact(pair)


def test_a_dead_owner_is_an_error_line_and_the_connection_stays(pair: Pair) -> None:
    """Owner killed: ERROR naming it, quickly; the same connection serves local buckets."""
    stored(pair)
    pair.children[pair.b].kill()
    with Conn(pair.a_addr) as c:
        started = time.monotonic()
        reply = c.ask("GET zebras k")
        assert reply.startswith(b"ERROR node '" + pair.b.encode() + b"'"), reply
        assert time.monotonic() - started < 4
        assert c.ask("GET apples k") == b"kept|OK"


def test_text_requests_forward_over_differing_tables_and_loops_are_caught(
    ns: tuple[str, int], unique: str, secret_file: str
) -> None:
    """foo -> bar -> baz over peer links by each node's own table; a loop is an ERROR line."""
    foo, bar, baz = f"f{unique}", f"b{unique}", f"z{unique}"
    tables = {
        foo: f"0..255={bar}",
        bar: f"a..m={baz}, n..y={bar}, z={foo}",
        baz: f"0..255={baz}",
    }
    children = {}
    try:
        for name, table in tables.items():
            children[name] = spawn_node(
                name,
                ns,
                table,
                extra=[
                    "--listen",
                    "127.0.0.1:0",
                    "--timeout",
                    "3",
                    "--cluster-secret-file",
                    secret_file,
                ],
            )
        with Conn(text_address(children[foo])) as c:
            assert c.ask("CREATE apple") == b"OK"  # foo -> bar -> baz
            assert c.ask("PUT apple k v") == b"OK"
            assert c.ask("GET apple k") == b"v|OK"
            assert c.ask("CREATE night") == b"OK"  # foo -> bar
            loop = c.ask("GET zoo k")  # foo -> bar -> foo
            assert (
                loop
                == f"ERROR routing loop for bucket 'zoo': {foo} -> {bar} -> {foo}; fix the routing tables so that one node owns the bucket".encode()
            )
            # bar's table has no entry for '1': its error comes back through foo
            assert c.ask("GET 1abc k") == (
                f"ERROR could not find entry for '1abc' in table [a..m -> {baz}, "
                f"n..y -> {bar}, z -> {foo}]{HINT}".encode()
            )
        with Conn(text_address(children[baz])) as c:
            assert c.ask("GET apple k") == b"v|OK"
            assert (
                c.ask("GET night k") == b"NOT FOUND"
            )  # baz owns every bucket by its table
        with Conn(text_address(children[bar])) as c:
            assert c.ask("GET night k") == b"|OK"
    finally:
        for child in children.values():
            child.stop()


def test_an_owner_without_a_text_port_is_reached_over_pyro(
    ns: tuple[str, int], unique: str
) -> None:
    """The owner serves no text protocol: requests for its buckets go over Pyro5 and work."""
    front, back = f"f{unique}", f"b{unique}"
    table = f"a..m={front}, n..z={back}"
    with_text = spawn_node(front, ns, table, extra=["--listen", "127.0.0.1:0"])
    without = spawn_node(back, ns, table)
    try:
        with Conn(text_address(with_text)) as c:
            assert c.ask("CREATE zoo") == b"OK"
            assert c.ask("PUT zoo k v") == b"OK"
            c.send(
                b"GET zoo k\r\nGET zoo k\r\nGET zoo nope\r\n"
            )  # pipelined: coalesced over Pyro5
            assert [c.line() for _ in range(6)] == [
                b"v",
                b"OK",
                b"v",
                b"OK",
                b"",
                b"OK",
            ]
    finally:
        without.stop()
        with_text.stop()


def test_a_restarted_owner_is_found_on_its_new_text_port(
    ns: tuple[str, int], unique: str, secret_file: str
) -> None:
    """Owner killed: ERROR; started again on other ports: served again."""
    front, back = f"f{unique}", f"b{unique}"
    table = f"a..m={front}, n..z={back}"
    extra = ["--listen", "127.0.0.1:0", "--timeout", "3"]
    extra += ["--cluster-secret-file", secret_file]
    a = spawn_node(front, ns, table, extra=extra)
    b = spawn_node(back, ns, table, extra=extra)
    try:
        with Conn(text_address(a)) as c:
            assert c.ask("CREATE zoo") == b"OK"
            b.kill()
            assert c.ask("GET zoo k").startswith(f"ERROR node '{back}'".encode())
            b = spawn_node(back, ns, table, extra=extra)
            deadline = time.monotonic() + 10
            while c.ask("CREATE zoo") != b"OK":
                assert time.monotonic() < deadline, "not served again within 10 s"
            assert c.ask("GET zoo k") == b"|OK"
    finally:
        b.stop()
        a.stop()


def test_fwd_lines_from_a_client_are_unknown_commands(pair: Pair) -> None:
    """FWD belongs to the node-to-node protocol: from a client it is UNKNOWN COMMAND,
    and the connection stays open and served."""
    stored(pair)
    with Conn(pair.a_addr) as c:
        assert c.ask("FWD 2000 someone GET apples k") == b"UNKNOWN COMMAND"
        assert c.ask("FWD x y z") == b"UNKNOWN COMMAND"
        assert c.ask("GET apples k") == b"kept|OK"
    intact(pair)
