"""Mutual TLS (pyrokv.tls, pyrokv.wire.configure_tls): settings checks, and who may
connect.

Certificates are made at test time (tlstesting.make_pki). Pyro5's config is
process-global: the autouse fixture puts every SSL setting, and Pyro5's SSL context
cache, back after each test.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import Pyro5.api
import Pyro5.errors
import pytest
from cryptography.hazmat.primitives import serialization
from Pyro5 import socketutil
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
import pyrokv.tls
import pyrokv.wire
from pyrokv import naming
from pyrokv.daemon import make_daemon, make_nameserver
from pyrokv.errors import ConfigError, IncompatiblePyroError, PyroKVError
from pyrokv.tls import TLSSettings
from pyrokv.wire import configure_tls, tls_configured


@pytest.fixture(name="pki", scope="module")
def _pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """This module's CAs and certificates."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def _restore_pyro_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put Pyro5's SSL config and SSL context cache back after the test."""
    restore_pyro_config(monkeypatch)


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The failed TLS handshakes a daemon logged."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "pyrokv.tls" and "TLS handshake failed" in r.getMessage()
    ]


# -- settings ---------------------------------------------------------------


def test_settings_are_absolute_and_checked(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLSSettings makes its paths absolute; its contexts require the peer's certificate."""
    monkeypatch.chdir(pki.dir)
    settings = TLSSettings("node.pem", "node.key", "ca.pem")
    assert settings.cert == str(pki.node_cert)
    assert settings.key == str(pki.node_key)
    assert settings.ca == str(pki.ca)
    assert settings.server_context().verify_mode == ssl.CERT_REQUIRED
    client = settings.client_context()
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


def test_from_options_none_given_means_plain() -> None:
    """from_options returns None (plain) when no option is given, or only empty ones."""
    assert TLSSettings.from_options(None, None, None) is None
    assert TLSSettings.from_options("", "", "") is None


def test_from_options_needs_all_three(pki: PKI) -> None:
    """from_options names the missing options when only some are given."""
    with pytest.raises(
        ConfigError,
        match=r"missing --tls-key, --tls-ca \(in a config file: cert, key and ca under \[tls\]\)$",
    ):
        TLSSettings.from_options(pki.node_cert, None, None)
    settings = TLSSettings.from_options(pki.node_cert, pki.node_key, pki.ca)
    assert settings == pki.node


@pytest.mark.parametrize(
    ("field", "option"),
    [("cert", "--tls-cert"), ("key", "--tls-key"), ("ca", "--tls-ca")],
)
def test_missing_file_names_option_and_file(pki: PKI, field: str, option: str) -> None:
    """A file that does not exist is a ConfigError naming its option and path."""
    paths = {"cert": str(pki.node_cert), "key": str(pki.node_key), "ca": str(pki.ca)}
    paths[field] = str(pki.dir / "nothere.pem")
    with pytest.raises(ConfigError, match=rf"^{option} .*nothere\.pem: no such file"):
        TLSSettings(**paths)


def test_directory_is_not_a_file(pki: PKI) -> None:
    """A directory given for a PEM file is a ConfigError saying it is not a file."""
    with pytest.raises(ConfigError, match=r"^--tls-ca .*: not a file"):
        TLSSettings(str(pki.node_cert), str(pki.node_key), str(pki.dir))


def test_unreadable_file(
    pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that cannot be read is a ConfigError naming its option, path and reason."""
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
    """A file with the wrong PEM contents, or a CA that will not load, is named."""
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
    """A key that is not the certificate's is a ConfigError naming both files."""
    with pytest.raises(
        ConfigError,
        match=r"^--tls-key .*client\.key is not the key of --tls-cert .*node\.pem",
    ):
        TLSSettings(str(pki.node_cert), str(pki.client_key), str(pki.ca))


def test_encrypted_key_is_refused_without_prompting(pki: PKI, tmp_path: Path) -> None:
    """An encrypted key is a ConfigError at once, with no passphrase prompt."""
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
    """configure_tls sets Pyro5's SSL config and context cache; None clears them."""
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


def test_pyro5_without_its_ssl_context_cache_is_incompatible(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configure_tls raises IncompatiblePyroError when Pyro5 no longer caches contexts."""
    monkeypatch.delitem(vars(socketutil), "__ssl_client_context")
    with pytest.raises(IncompatiblePyroError, match="__ssl_client_context") as caught:
        configure_tls(pki.node)
    assert isinstance(caught.value, PyroKVError)


# -- names that moved to pyrokv.wire and pyrokv.daemon ---------------------------


MOVED = {
    "configure_tls": pyrokv.wire,
    "tls_configured": pyrokv.wire,
    "HANDSHAKE_TIMEOUT": pyrokv.daemon,
    "MAX_HANDSHAKES": pyrokv.daemon,
    "BoundedHandshakeJob": pyrokv.daemon,
    "BoundedHandshakeServer": pyrokv.daemon,
    "bound_handshakes": pyrokv.daemon,
    "make_daemon": pyrokv.daemon,
    "make_nameserver": pyrokv.daemon,
}


@pytest.mark.parametrize("name", sorted(MOVED))
def test_moved_names_are_deprecated_aliases(name: str) -> None:
    """pyrokv.tls still serves a moved name: the same object, with a DeprecationWarning."""
    new = f"{MOVED[name].__name__}.{name}"
    with pytest.deprecated_call(
        match=rf"^pyrokv\.tls\.{name} is deprecated: use {new}$"
    ):
        alias = getattr(pyrokv.tls, name)
    assert alias is getattr(MOVED[name], name)
    assert name not in pyrokv.tls.__all__


def test_tls_exports_only_its_own_names() -> None:
    """pyrokv.tls exports its settings only; a from-import of an alias still works."""
    assert pyrokv.tls.__all__ == ["OPTIONS", "TLSSettings"]
    with pytest.raises(AttributeError, match="has no attribute 'make_demon'"):
        pyrokv.tls.make_demon  # noqa: B018 (the lookup is the test)
    with pytest.deprecated_call():
        from pyrokv.tls import make_daemon as old
    assert old is make_daemon


# -- who may connect ----------------------------------------------------------


@pytest.mark.distributed
def test_client_with_ca_signed_cert_can_call(pki: PKI) -> None:
    """A client certified by the CA calls a TLS daemon, which sees its certificate."""
    configure_tls(pki.client)
    with serving(make_daemon(HOST, 0, pki.node)) as uri:
        assert call(uri, "echo", [1, "two"]) == [1, "two"]
        peer = call(uri, "peer")
    assert peer == {"tls": True, "names": ["client.pyrokv.test"], "nodelay": True}


@pytest.mark.distributed
def test_client_without_cert_is_refused(
    pki: PKI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that presents no certificate is refused, and the daemon logs why."""
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
    """A client certified by another CA is refused, and the daemon logs why."""
    configure_tls(pki.rogue)
    with serving(make_daemon(HOST, 0, pki.node)) as uri:
        with pytest.raises(Pyro5.errors.CommunicationError):
            call(uri, "echo", 1)
        wait_until(lambda: bool(refusals(caplog)), "the daemon to log the refusal")
    assert "certificate verify failed" in refusals(caplog)[0]


@pytest.mark.distributed
def test_node_with_cert_from_another_ca_is_refused_by_the_client(pki: PKI) -> None:
    """A client refuses a daemon whose certificate another CA signed."""
    configure_tls(pki.client)
    rogue_node = TLSSettings(str(pki.rogue_cert), str(pki.rogue_key), str(pki.other_ca))
    refused = pytest.raises(
        Pyro5.errors.CommunicationError, match="certificate verify failed"
    )
    with serving(make_daemon(HOST, 0, rogue_node)) as uri, refused:
        call(uri, "echo", 1)


@pytest.mark.distributed
def test_plain_client_cannot_call_a_tls_node(pki: PKI) -> None:
    """A client that speaks plain Pyro5 cannot call a TLS daemon."""
    configure_tls(pki.node)
    with serving(make_daemon(HOST, 0, pki.node)) as uri:
        Pyro5.api.config.SSL = False  # this process's proxies speak plain Pyro5
        with pytest.raises(Pyro5.errors.CommunicationError):
            call(uri, "echo", 1, timeout=2.0)
        Pyro5.api.config.SSL = True


@pytest.mark.distributed
def test_name_server_over_tls(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    """make_nameserver serves the name server over TLS, to certified clients only."""
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
