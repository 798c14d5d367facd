"""The daemon (pyrokv.daemon): a handshake, TLS or plain, cannot stop the accept loop.

Certificates are made at test time (tlstesting.make_pki). Pyro5's config is
process-global: the autouse fixture puts every SSL setting, and Pyro5's SSL context
cache, back after each test.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import Pyro5.api
import Pyro5.errors
import pytest
from tlstesting import (
    HOST,
    PKI,
    call,
    make_pki,
    restore_pyro_config,
    serving,
    wait_until,
)

import pyrokv.daemon
from pyrokv.daemon import bound_handshakes, make_daemon
from pyrokv.errors import ConfigError
from pyrokv.wire import configure_tls


@pytest.fixture(name="pki", scope="module")
def _pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """This module's CAs and certificates."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def _restore_pyro_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put Pyro5's SSL config and SSL context cache back after the test."""
    restore_pyro_config(monkeypatch)


def pending(daemon: Any) -> int:
    """Connections ``daemon`` accepted whose handshake is not over yet."""
    return int(daemon.transportServer.pending_handshakes)


def closed_within(sock: socket.socket, timeout: float, reply: bytes = b"") -> float:
    """Seconds until the server closes ``sock`` (EOF or reset); fails after ``timeout``.

    ``reply`` is how what the server may send first begins (nothing, by default).
    """
    start = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for more than {timeout}s")
    if reply:
        assert data.startswith(reply), f"the server sent {data!r}"
    else:
        assert data == b"", f"the server sent {data!r} to a peer that sent nothing"
    return time.monotonic() - start


def open_idle(stack: contextlib.ExitStack, daemon: Any, port: int, count: int) -> None:
    """Open ``count`` TCP connections that never handshake; wait until accepted."""
    for _ in range(count):
        stack.enter_context(socket.create_connection((HOST, port)))
    wait_until(
        lambda: pending(daemon) == count, f"the daemon to accept {count} connections"
    )


# -- a daemon's TLS must agree with the process ---------------------------------


def test_daemon_must_agree_with_the_process(pki: PKI) -> None:
    """make_daemon refuses TLS settings the process disagrees with, and a zero timeout."""
    configure_tls(pki.node)
    with pytest.raises(ConfigError, match="got no TLS settings"):
        make_daemon(HOST, 0, None)
    configure_tls(None)
    with pytest.raises(ConfigError, match="call configure_tls"):
        make_daemon(HOST, 0, pki.node)
    with pytest.raises(ConfigError, match="must be positive"):
        make_daemon(HOST, 0, None, handshake_timeout=0)


@pytest.mark.distributed
def test_bound_handshakes_keeps_a_tls_daemon_tls(pki: PKI) -> None:
    """bound_handshakes refuses to make a TLS daemon plain, or to bound one twice."""
    configure_tls(pki.node)
    with Pyro5.api.Daemon(host=HOST, port=0) as daemon:
        with pytest.raises(ConfigError, match="would serve plain connections"):
            bound_handshakes(daemon, None)
        bound_handshakes(daemon, pki.node)
        with pytest.raises(ConfigError, match="bounded already"):
            bound_handshakes(daemon, pki.node)


# -- handshakes cannot stop the accept loop -------------------------------------


@pytest.mark.distributed
def test_stock_pyro5_ssl_daemon_is_stopped_by_one_idle_connection(pki: PKI) -> None:
    """A stock Pyro5 SSL daemon accepts no one while an idle peer holds its handshake.

    Why pyrokv.daemon exists: Pyro5 5.17 handshakes inside accept().

    If this starts failing, Pyro5 moved the handshake off its accept loop.
    """
    configure_tls(pki.node)
    with (
        serving(Pyro5.api.Daemon(host=HOST, port=0)) as uri,
        socket.create_connection((HOST, uri.port)),
        pytest.raises(Pyro5.errors.CommunicationError),
    ):
        # The idle connection is first in the listen queue: accept() takes it
        # first and waits in its handshake, so the call is never accepted.
        call(uri, "echo", 1, timeout=1.0)


@pytest.mark.distributed
def test_idle_raw_connections_delay_nobody_and_hold_no_worker(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Peers that never handshake cannot fill the pool: only proven peers get a worker."""
    monkeypatch.setattr(Pyro5.api.config, "THREADPOOL_SIZE", 2)
    monkeypatch.setattr(Pyro5.api.config, "THREADPOOL_SIZE_MIN", 1)
    configure_tls(pki.client)
    daemon = make_daemon(HOST, 0, pki.node, handshake_timeout=30.0)
    with serving(daemon) as uri, contextlib.ExitStack() as idle:
        open_idle(idle, daemon, uri.port, 10)
        start = time.monotonic()
        for i in range(3):  # each call a new connection: it needs a free worker
            assert call(uri, "echo", i, timeout=2.0) == i
        assert time.monotonic() - start < 2.0
        assert pending(daemon) == 10  # still waiting for their handshakes


@pytest.mark.distributed
def test_handshakes_past_the_limit_are_closed(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_HANDSHAKES pending handshakes, new connections are closed at once."""
    monkeypatch.setattr(pyrokv.daemon, "MAX_HANDSHAKES", 3)
    configure_tls(pki.client)
    daemon = make_daemon(HOST, 0, pki.node, handshake_timeout=30.0)
    with serving(daemon) as uri, contextlib.ExitStack() as idle:
        open_idle(idle, daemon, uri.port, 3)
        extra = idle.enter_context(socket.create_connection((HOST, uri.port)))
        assert closed_within(extra, timeout=5.0) < 3.0
        assert pending(daemon) == 3
        idle.close()  # the peers go away: their handshakes end, and room is made
        wait_until(lambda: pending(daemon) == 0, "the handshakes to end")
        assert call(uri, "echo", 1, timeout=2.0) == 1


@pytest.mark.distributed
def test_idle_connection_is_closed_after_the_handshake_timeout(pki: PKI) -> None:
    """A connection that never handshakes is closed at the handshake timeout."""
    configure_tls(pki.client)
    daemon = make_daemon(HOST, 0, pki.node, handshake_timeout=0.5)
    with serving(daemon) as uri, socket.create_connection((HOST, uri.port)) as idle:
        elapsed = closed_within(idle, timeout=5.0)
        assert 0.4 <= elapsed < 3.0
        wait_until(lambda: pending(daemon) == 0, "the handshake to be given up")
        assert call(uri, "echo", 1) == 1


@pytest.mark.distributed
def test_trickled_handshake_is_cut_at_the_deadline(pki: PKI) -> None:
    """A peer sending a byte now and then gets one deadline, not one per byte."""
    configure_tls(pki.client)
    daemon = make_daemon(HOST, 0, pki.node, handshake_timeout=0.6)
    with serving(daemon) as uri, socket.create_connection((HOST, uri.port)) as slow:
        slow.sendall(b"\x16\x03\x01\x02\x00")  # a TLS record header: 512 bytes follow
        start = time.monotonic()
        while time.monotonic() - start < 5.0:
            try:
                slow.sendall(b"\x01")
            except (ConnectionResetError, BrokenPipeError):
                break
            readable, _, _ = select.select([slow], [], [], 0.1)
            if readable:
                assert closed_within(slow, timeout=1.0) < 1.0
                break
        else:
            pytest.fail("a trickling peer kept its handshake open for 5s")
        assert 0.5 <= time.monotonic() - start < 3.0


@pytest.mark.distributed
def test_plain_daemon_through_make_daemon() -> None:
    """A plain daemon from make_daemon serves calls and bounds the connect message."""
    configure_tls(None)
    daemon = make_daemon(HOST, 0, None, handshake_timeout=0.5)
    with serving(daemon) as uri, socket.create_connection((HOST, uri.port)) as idle:
        wait_until(lambda: pending(daemon) == 1, "the daemon to accept")
        assert call(uri, "echo", b"\x00bytes", timeout=2.0) == b"\x00bytes"
        assert call(uri, "peer") == {"tls": False, "names": [], "nodelay": True}
        # Pyro5 answers a connect message that never came with "connection
        # rejected" (a PYRO message), then closes.
        assert closed_within(idle, timeout=5.0, reply=b"PYRO") < 3.0


# -- connections past the connect message: idle, stalled, not reading ------------


@contextlib.contextmanager
def _connected(idle_timeout: float = 0.5) -> Iterator[tuple[Any, Any, Any]]:
    """A plain daemon cutting idle connections after ``idle_timeout``, serving;
    yields (daemon, uri, proxy), the proxy past its connect message."""
    configure_tls(None)
    daemon = make_daemon(HOST, 0, None, idle_timeout=idle_timeout)
    with serving(daemon) as uri:
        proxy = Pyro5.api.Proxy(uri)
        proxy._pyroTimeout = 5
        try:
            proxy._pyroBind()
            yield daemon, uri, proxy
        finally:
            proxy._pyroRelease()


def _serves(uri: Any) -> bool:
    """Whether a new connection to ``uri`` gets a worker and an answer."""
    try:
        return bool(call(uri, "echo", 1, timeout=2.0) == 1)
    except Pyro5.errors.CommunicationError:
        return False


def _pool_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Pyro5.api.config, "THREADPOOL_SIZE", 1)
    monkeypatch.setattr(Pyro5.api.config, "THREADPOOL_SIZE_MIN", 1)


@pytest.mark.distributed
def test_an_idle_connection_is_closed_and_its_worker_freed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Pyro5 connection that sends no request for the idle timeout is closed,
    without a timeout on its socket (no poll before every receive and send)."""
    _pool_of_one(monkeypatch)
    with _connected() as (daemon, uri, idle):
        assert idle.echo(1) == 1
        worker = daemon.transportServer._live.copy().pop()
        assert worker.csock.sock.gettimeout() is None
        with pytest.raises(Pyro5.errors.CommunicationError, match="no free"):
            call(uri, "echo", 2, timeout=2.0)  # the only worker is held
        assert closed_within(idle._pyroConnection.sock, timeout=5.0) < 4.0
        wait_until(lambda: _serves(uri), "the worker to be freed")


@pytest.mark.distributed
def test_a_request_stalled_half_sent_is_closed_at_the_idle_timeout() -> None:
    """A peer that sends part of a request and stops is cut after the idle timeout."""
    with _connected() as (_daemon, _uri, proxy):
        sock = proxy._pyroConnection.sock
        sock.sendall(b"PYRO\x05")  # the first bytes of a message header
        start = time.monotonic()
        closed_within(sock, timeout=5.0)
        assert 0.4 <= time.monotonic() - start < 4.0


@pytest.mark.distributed
def test_a_peer_that_stops_reading_replies_is_cut_by_the_send_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer that sends a request with a large reply and never reads it holds its
    worker only until the send timeout (the idle timeout) runs out."""
    from Pyro5 import protocol, serializers

    _pool_of_one(monkeypatch)
    monkeypatch.setattr(Pyro5.api.config, "MAX_MESSAGE_SIZE", 64 * 1024 * 1024)
    with _connected() as (_daemon, uri, proxy):
        sock = proxy._pyroConnection.sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        serpent = serializers.serializers["serpent"]
        body = serpent.dumpsCall("echo", "echo", (b"x" * 24_000_000,), {})
        message = protocol.SendingMessage(
            protocol.MSG_INVOKE, 0, 1, serpent.serializer_id, body
        )
        sock.sendall(message.data)  # and never read the 24 MB reply
        assert not _serves(uri)  # the only worker is sending the reply
        wait_until(
            lambda: _serves(uri), "the worker to give up the reply", timeout=20.0
        )
