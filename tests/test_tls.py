"""Mutual TLS (pyrokv.tls): settings checks, who may connect, and handshakes that
cannot stop a daemon's accept loop.

Certificates are made at test time with trustme: a CA whose leaf certificates name
127.0.0.1, and a second CA that nobody trusts. Pyro5's config is process-global:
the autouse fixture puts every SSL setting, and Pyro5's SSL context cache, back
after each test.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import Pyro5.api
import Pyro5.errors
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from Pyro5 import socketutil
from Pyro5.callcontext import current_context

import pyrokv.daemon
import pyrokv.tls
from pyrokv import naming
from pyrokv.daemon import bound_handshakes, make_daemon, make_nameserver
from pyrokv.errors import ConfigError
from pyrokv.tls import TLSSettings
from pyrokv.wire import configure_tls, setup_pyro, tls_configured

HOST = "127.0.0.1"
SSL_SETTINGS = (
    "SSL",
    "SSL_SERVERCERT",
    "SSL_SERVERKEY",
    "SSL_SERVERKEYPASSWD",
    "SSL_REQUIRECLIENTCERT",
    "SSL_CLIENTCERT",
    "SSL_CLIENTKEY",
    "SSL_CLIENTKEYPASSWD",
    "SSL_CACERTS",
    "SOCK_NODELAY",
)
PYRO_CONTEXT_CACHE = ("__ssl_server_context", "__ssl_client_context")


@dataclass(frozen=True)
class PKI:
    """The files of one test run: ``ca`` signs node and client, ``other_ca`` rogue."""

    dir: Path
    ca: Path
    other_ca: Path
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path

    @property
    def node(self) -> TLSSettings:
        return TLSSettings(str(self.node_cert), str(self.node_key), str(self.ca))

    @property
    def client(self) -> TLSSettings:
        return TLSSettings(str(self.client_cert), str(self.client_key), str(self.ca))

    @property
    def rogue(self) -> TLSSettings:
        """Certified by the other CA; trusts ours (so only the peer refuses it)."""
        return TLSSettings(str(self.rogue_cert), str(self.rogue_key), str(self.ca))


@pytest.fixture(name="pki", scope="module")
def _pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    where = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    files: dict[str, Path] = {"dir": where}
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    other_ca.cert_pem.write_to_path(str(where / "other-ca.pem"))
    files["ca"], files["other_ca"] = where / "ca.pem", where / "other-ca.pem"
    for name, issuer, identity in (
        ("node", ca, HOST),
        ("client", ca, "client.pyrokv.test"),
        ("rogue", other_ca, HOST),
    ):
        leaf = issuer.issue_cert(identity)
        leaf.cert_chain_pems[0].write_to_path(str(where / f"{name}.pem"))
        leaf.private_key_pem.write_to_path(str(where / f"{name}.key"))
        files[f"{name}_cert"] = where / f"{name}.pem"
        files[f"{name}_key"] = where / f"{name}.key"
    return PKI(**files)


@pytest.fixture(autouse=True)
def _restore_pyro_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put Pyro5's SSL config and SSL context cache back after the test."""
    setup_pyro()  # its one-time settings stay, as in every other test module
    for name in SSL_SETTINGS:
        monkeypatch.setattr(Pyro5.api.config, name, getattr(Pyro5.api.config, name))
    cache = vars(socketutil)
    for name in PYRO_CONTEXT_CACHE:
        monkeypatch.setitem(cache, name, cache[name])


@Pyro5.api.expose
class Echo:
    def echo(self, value: Any) -> Any:
        return value

    def peer(self) -> dict[str, Any]:
        """What this daemon knows of the caller's connection."""
        conn = current_context.client
        cert = conn.getpeercert()
        return {
            "tls": cert is not None,
            "names": [value for _kind, value in (cert or {}).get("subjectAltName", ())],
            "nodelay": bool(
                conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            ),
        }


@contextlib.contextmanager
def serving(daemon: Any) -> Iterator[Any]:
    """Run ``daemon`` with an Echo object in a thread; yield the Echo's URI."""
    uri = daemon.register(Echo(), "echo")
    loop = threading.Thread(target=daemon.requestLoop, name="test-tls-daemon")
    loop.start()
    try:
        yield uri
    finally:
        daemon.shutdown()
        loop.join(timeout=10)
        assert not loop.is_alive(), "the daemon's request loop did not stop"


def call(uri: Any, method: str, *args: Any, timeout: float = 5.0) -> Any:
    """One call on a fresh proxy (so a fresh connection and handshake)."""
    with Pyro5.api.Proxy(uri) as proxy:
        proxy._pyroTimeout = timeout
        return getattr(proxy, method)(*args)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout}s for {what}")
        time.sleep(0.01)


def pending(daemon: Any) -> int:
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


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "pyrokv.tls" and "TLS handshake failed" in r.getMessage()
    ]


# -- settings ---------------------------------------------------------------


def test_settings_are_absolute_and_checked(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(pki.dir)
    settings = TLSSettings("node.pem", "node.key", "ca.pem")
    assert settings.cert == str(pki.node_cert)
    assert settings.key == str(pki.node_key)
    assert settings.ca == str(pki.ca)
    assert settings.server_context().verify_mode == ssl.CERT_REQUIRED
    client = settings.client_context()
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


def test_from_options_none_given_means_plain() -> None:
    assert TLSSettings.from_options(None, None, None) is None
    assert TLSSettings.from_options("", "", "") is None


def test_from_options_needs_all_three(pki: PKI) -> None:
    with pytest.raises(ConfigError, match=r"missing --tls-key, --tls-ca$"):
        TLSSettings.from_options(pki.node_cert, None, None)
    settings = TLSSettings.from_options(pki.node_cert, pki.node_key, pki.ca)
    assert settings == pki.node


@pytest.mark.parametrize(
    ("field", "option"),
    [("cert", "--tls-cert"), ("key", "--tls-key"), ("ca", "--tls-ca")],
)
def test_missing_file_names_option_and_file(pki: PKI, field: str, option: str) -> None:
    paths = {"cert": str(pki.node_cert), "key": str(pki.node_key), "ca": str(pki.ca)}
    paths[field] = str(pki.dir / "nothere.pem")
    with pytest.raises(ConfigError, match=rf"^{option} .*nothere\.pem: no such file"):
        TLSSettings(**paths)


def test_directory_is_not_a_file(pki: PKI) -> None:
    with pytest.raises(ConfigError, match=r"^--tls-ca .*: not a file"):
        TLSSettings(str(pki.node_cert), str(pki.node_key), str(pki.dir))


def test_unreadable_file(
    pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "secret.key"
    key.write_bytes(pki.node_key.read_bytes())
    key.chmod(0)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # root reads any file: fail the read as it fails for everyone else
        real_open = open

        def deny(path: Any, *args: Any, **kwargs: Any) -> Any:
            if os.fspath(path) == str(key):
                raise PermissionError(13, "Permission denied", str(key))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(pyrokv.tls, "open", deny, raising=False)
    with pytest.raises(
        ConfigError,
        match=r"^--tls-key .*secret\.key: cannot read it: Permission denied",
    ):
        TLSSettings(str(pki.node_cert), str(key), str(pki.ca))


def test_wrong_contents_are_named(pki: PKI, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    cert, key, ca = str(pki.node_cert), str(pki.node_key), str(pki.ca)
    with pytest.raises(
        ConfigError, match=r"^--tls-cert .*junk\.pem holds no PEM certificate"
    ):
        TLSSettings(str(junk), key, ca)
    with pytest.raises(
        ConfigError, match=r"^--tls-key .*junk\.pem holds no PEM private key"
    ):
        TLSSettings(cert, str(junk), ca)
    with pytest.raises(ConfigError, match=r"^--tls-ca .*node\.key holds no PEM CA"):
        TLSSettings(cert, key, key)
    broken = tmp_path / "broken-ca.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(
        ConfigError, match=r"^--tls-ca .*broken-ca\.pem cannot be loaded"
    ):
        TLSSettings(cert, key, str(broken))


def test_key_of_another_certificate(pki: PKI) -> None:
    with pytest.raises(
        ConfigError,
        match=r"^--tls-key .*client\.key is not the key of --tls-cert .*node\.pem",
    ):
        TLSSettings(str(pki.node_cert), str(pki.client_key), str(pki.ca))


def test_encrypted_key_is_refused_without_prompting(pki: PKI, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.node_key.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match=r"^--tls-key .*locked\.key is encrypted"):
        TLSSettings(str(pki.node_cert), str(locked), str(pki.ca))


def test_configure_tls_sets_pyro5_config_and_back(pki: PKI) -> None:
    config = Pyro5.api.config
    configure_tls(pki.node)
    assert tls_configured()
    assert config.SSL and config.SSL_REQUIRECLIENTCERT and config.SOCK_NODELAY
    assert config.SSL_SERVERCERT == config.SSL_CLIENTCERT == str(pki.node_cert)
    assert config.SSL_SERVERKEY == config.SSL_CLIENTKEY == str(pki.node_key)
    assert str(pki.ca) == config.SSL_CACERTS
    client = socketutil.get_ssl_context(cacerts=config.SSL_CACERTS)
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    server = socketutil.get_ssl_context(servercert=config.SSL_SERVERCERT)
    assert server.verify_mode == ssl.CERT_REQUIRED
    configure_tls(None)
    assert not tls_configured()
    assert config.SSL_SERVERCERT == config.SSL_CACERTS == ""
    assert vars(socketutil)["__ssl_client_context"] is None


def test_daemon_must_agree_with_the_process(pki: PKI) -> None:
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
    configure_tls(pki.node)
    with Pyro5.api.Daemon(host=HOST, port=0) as daemon:
        with pytest.raises(ConfigError, match="would serve plain connections"):
            bound_handshakes(daemon, None)
        bound_handshakes(daemon, pki.node)
        with pytest.raises(ConfigError, match="bounded already"):
            bound_handshakes(daemon, pki.node)


# -- who may connect ----------------------------------------------------------


@pytest.mark.distributed
def test_client_with_ca_signed_cert_can_call(pki: PKI) -> None:
    configure_tls(pki.client)
    with serving(make_daemon(HOST, 0, pki.node)) as uri:
        assert call(uri, "echo", [1, "two"]) == [1, "two"]
        peer = call(uri, "peer")
    assert peer == {"tls": True, "names": ["client.pyrokv.test"], "nodelay": True}


@pytest.mark.distributed
def test_client_without_cert_is_refused(
    pki: PKI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    configure_tls(pki.client)
    # Trusts the CA, presents no certificate.
    anonymous = ssl.create_default_context(cafile=str(pki.ca))
    monkeypatch.setitem(vars(socketutil), "__ssl_client_context", anonymous)
    with serving(make_daemon(HOST, 0, pki.node)) as uri:
        with pytest.raises(Pyro5.errors.CommunicationError):
            call(uri, "echo", 1)
        wait_until(lambda: bool(refusals(caplog)), "the daemon to log the refusal")
    assert "CERTIFICATE" in refusals(caplog)[0].upper()


@pytest.mark.distributed
def test_client_with_cert_from_another_ca_is_refused(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    configure_tls(pki.rogue)
    with serving(make_daemon(HOST, 0, pki.node)) as uri:
        with pytest.raises(Pyro5.errors.CommunicationError):
            call(uri, "echo", 1)
        wait_until(lambda: bool(refusals(caplog)), "the daemon to log the refusal")
    assert "certificate verify failed" in refusals(caplog)[0]


@pytest.mark.distributed
def test_node_with_cert_from_another_ca_is_refused_by_the_client(pki: PKI) -> None:
    configure_tls(pki.client)
    rogue_node = TLSSettings(str(pki.rogue_cert), str(pki.rogue_key), str(pki.other_ca))
    refused = pytest.raises(
        Pyro5.errors.CommunicationError, match="certificate verify failed"
    )
    with serving(make_daemon(HOST, 0, rogue_node)) as uri, refused:
        call(uri, "echo", 1)


@pytest.mark.distributed
def test_plain_client_cannot_call_a_tls_node(pki: PKI) -> None:
    configure_tls(pki.node)
    with serving(make_daemon(HOST, 0, pki.node)) as uri:
        Pyro5.api.config.SSL = False  # this process's proxies speak plain Pyro5
        with pytest.raises(Pyro5.errors.CommunicationError):
            call(uri, "echo", 1, timeout=2.0)
        Pyro5.api.config.SSL = True


@pytest.mark.distributed
def test_name_server_over_tls(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    configure_tls(pki.node)
    ns_uri, ns_daemon = make_nameserver(HOST, 0, pki.node)
    with serving(ns_daemon):
        with naming.ns_proxy(HOST, ns_uri.port, 5.0) as ns:
            ns.register("pyrokv.x.tasks", f"PYRO:x@{HOST}:1")
            assert str(ns.lookup("pyrokv.x.tasks")) == f"PYRO:x@{HOST}:1"
        anonymous = ssl.create_default_context(cafile=str(pki.ca))
        monkeypatch.setitem(vars(socketutil), "__ssl_client_context", anonymous)
        with (
            pytest.raises(Pyro5.errors.CommunicationError),
            naming.ns_proxy(HOST, ns_uri.port, 5.0) as ns,
        ):
            ns.lookup("pyrokv.x.tasks")


# -- handshakes cannot stop the accept loop -------------------------------------


@pytest.mark.distributed
def test_stock_pyro5_ssl_daemon_is_stopped_by_one_idle_connection(pki: PKI) -> None:
    """Why pyrokv.tls exists: Pyro5 5.17 handshakes inside accept().

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


def open_idle(stack: contextlib.ExitStack, daemon: Any, port: int, count: int) -> None:
    """Open ``count`` TCP connections that never handshake; wait until accepted."""
    for _ in range(count):
        stack.enter_context(socket.create_connection((HOST, port)))
    wait_until(
        lambda: pending(daemon) == count, f"the daemon to accept {count} connections"
    )


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
def test_plain_daemon_through_make_daemon(pki: PKI) -> None:
    configure_tls(None)
    daemon = make_daemon(HOST, 0, None, handshake_timeout=0.5)
    with serving(daemon) as uri, socket.create_connection((HOST, uri.port)) as idle:
        wait_until(lambda: pending(daemon) == 1, "the daemon to accept")
        assert call(uri, "echo", b"\x00bytes", timeout=2.0) == b"\x00bytes"
        assert call(uri, "peer") == {"tls": False, "names": [], "nodelay": True}
        # Pyro5 answers a connect message that never came with "connection
        # rejected" (a PYRO message), then closes.
        assert closed_within(idle, timeout=5.0, reply=b"PYRO") < 3.0
