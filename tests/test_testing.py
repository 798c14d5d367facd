"""pyrokv.testing.Conn against a socket this test answers by hand: no node needed."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pyrokv.testing import CLOSED, Conn, UnexpectedReplyError


@pytest.fixture(name="server")
def _server() -> Iterator[socket.socket]:
    """A listening socket on a free port of 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


@pytest.fixture(name="pair")
def _pair(server: socket.socket) -> Iterator[tuple[Conn, socket.socket]]:
    """A Conn with a 0.5 s deadline, and the server's end of its connection."""
    with Conn(server.getsockname(), timeout=0.5) as conn:
        peer, _ = server.accept()
        with peer:
            yield conn, peer


def test_ask_joins_a_gets_value_and_ok(pair: tuple[Conn, socket.socket]) -> None:
    """A GET that found its bucket reads two lines, as value|OK; other replies one."""
    conn, peer = pair
    peer.sendall(b"v\r\nOK\r\nNOT FOUND\r\nERROR no\r\n\r\nOK\r\nOK\r\n")
    assert conn.ask("GET b k") == b"v|OK"
    assert conn.ask("GET nosuch k") == b"NOT FOUND"
    assert conn.ask(b"GET 1abc k") == b"ERROR no"
    assert conn.exchange("GET b missing") == [b"", b"OK"]
    assert conn.ask("CREATE b") == b"OK"
    assert peer.recv(1000).split(b"\r\n")[:5] == [
        b"GET b k",
        b"GET nosuch k",
        b"GET 1abc k",
        b"GET b missing",
        b"CREATE b",
    ]


def test_a_value_without_ok_is_an_unexpected_reply(
    pair: tuple[Conn, socket.socket],
) -> None:
    """A GET's value followed by anything but OK raises UnexpectedReplyError."""
    conn, peer = pair
    peer.sendall(b"v\r\nv\r\n")
    with pytest.raises(UnexpectedReplyError, match="then OK, got b'v'"):
        conn.ask("GET b k")


def test_every_read_has_a_deadline(pair: tuple[Conn, socket.socket]) -> None:
    """A server that never ends the line: TimeoutError after the deadline, not a hang."""
    conn, peer = pair
    peer.sendall(b"half a line")
    with pytest.raises(TimeoutError):
        conn.line()
    with pytest.raises(TimeoutError):
        conn.expect(b"GET b k\r\n", b"half a line\r\n")


def test_expect_checks_bytes_and_keeps_the_rest(
    pair: tuple[Conn, socket.socket],
) -> None:
    """expect reads exactly the expected bytes; what follows stays for the next read."""
    conn, peer = pair
    peer.sendall(b"OK\r\nOK\r\nnext\r\n")
    conn.expect(b"PUT b k v\r\nPUT b j w\r\n", b"OK\r\nOK\r\n")
    assert conn.line() == b"next"
    peer.sendall(b"NOT FOUND\r\n")
    with pytest.raises(UnexpectedReplyError, match="got b'NOT FOUND"):
        conn.expect(b"PUT x k v\r\n", b"OK\r\n")


def test_closed_and_line_see_the_server_close(
    pair: tuple[Conn, socket.socket],
) -> None:
    """closed() is False while the server keeps the connection, True once it closes;
    line() returns an unended last line, then CLOSED."""
    conn, peer = pair
    assert conn.closed(0.1) is False
    peer.sendall(b"last")
    peer.shutdown(socket.SHUT_WR)
    assert conn.line() == b"last"
    assert conn.line() == CLOSED
    assert conn.closed(0.5) is True
