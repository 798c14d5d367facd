"""Helpers for the TLS and daemon tests: certificates, Pyro5's config put back, an
Echo object served by a daemon in a thread, and one call per fresh connection.

Certificates are made at test time with trustme: a CA whose leaf certificates name
127.0.0.1, and a second CA that nobody trusts.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import Pyro5.api
import pytest
import trustme
from Pyro5 import socketutil
from Pyro5.callcontext import current_context

from pyrokv.tls import TLSSettings
from pyrokv.wire import setup_pyro

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
        """The daemon's settings: a certificate for 127.0.0.1 from ``ca``."""
        return TLSSettings(str(self.node_cert), str(self.node_key), str(self.ca))

    @property
    def client(self) -> TLSSettings:
        """A client's settings: a certificate for client.pyrokv.test from ``ca``."""
        return TLSSettings(str(self.client_cert), str(self.client_key), str(self.ca))

    @property
    def rogue(self) -> TLSSettings:
        """Certified by the other CA; trusts ours (so only the peer refuses it)."""
        return TLSSettings(str(self.rogue_cert), str(self.rogue_key), str(self.ca))


def make_pki(where: Path) -> PKI:
    """Write a CA, another CA, and node, client and rogue certificates into ``where``."""
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


def restore_pyro_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Have ``monkeypatch`` put Pyro5's SSL config and SSL context cache back."""
    setup_pyro()  # its one-time settings stay, as in every other test module
    for name in SSL_SETTINGS:
        monkeypatch.setattr(Pyro5.api.config, name, getattr(Pyro5.api.config, name))
    cache = vars(socketutil)
    for name in PYRO_CONTEXT_CACHE:
        monkeypatch.setitem(cache, name, cache[name])


@Pyro5.api.expose
class Echo:
    """A Pyro5 object that returns what it is given, and tells the caller about itself."""

    def echo(self, value: Any) -> Any:
        """``value``, back over the wire."""
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
    """Wait until ``condition()`` is true; fail after ``timeout`` seconds, naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout}s for {what}")
        time.sleep(0.01)
