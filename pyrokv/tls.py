"""Mutual TLS settings: this process's certificate, its key, and the CA of every peer.

:class:`TLSSettings` checks the three PEM files once, when it is made, and builds the
SSL contexts a daemon and a proxy use.
:func:`pyrokv.wire.configure_tls` hands them to Pyro5 for the whole process, and
:func:`pyrokv.daemon.make_daemon` serves with them; docs/api.md shows the steps in order.

``configure_tls``, ``tls_configured``, ``make_daemon``, ``make_nameserver``,
``bound_handshakes``, ``BoundedHandshakeServer``, ``BoundedHandshakeJob``,
``HANDSHAKE_TIMEOUT`` and ``MAX_HANDSHAKES`` lived here once; they are still
importable from this module, as deprecated aliases of the same objects in
:mod:`pyrokv.wire` and :mod:`pyrokv.daemon`.
"""

from __future__ import annotations

import importlib
import os
import ssl
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:  # the deprecated aliases, typed; at run time __getattr__ serves them
    from .daemon import HANDSHAKE_TIMEOUT as HANDSHAKE_TIMEOUT
    from .daemon import MAX_HANDSHAKES as MAX_HANDSHAKES
    from .daemon import BoundedHandshakeJob as BoundedHandshakeJob
    from .daemon import BoundedHandshakeServer as BoundedHandshakeServer
    from .daemon import bound_handshakes as bound_handshakes
    from .daemon import make_daemon as make_daemon
    from .daemon import make_nameserver as make_nameserver
    from .wire import configure_tls as configure_tls
    from .wire import tls_configured as tls_configured

__all__ = ["OPTIONS", "TLSSettings"]

#: The command-line option behind each field of :class:`TLSSettings`.
OPTIONS = {"cert": "--tls-cert", "key": "--tls-key", "ca": "--tls-ca"}

#: Names that moved out of this module: name -> the module that defines it now.
#: Imported on first use (pyrokv.daemon imports this module, so not at import time).
_MOVED = {
    "HANDSHAKE_TIMEOUT": "pyrokv.daemon",
    "MAX_HANDSHAKES": "pyrokv.daemon",
    "BoundedHandshakeJob": "pyrokv.daemon",
    "BoundedHandshakeServer": "pyrokv.daemon",
    "bound_handshakes": "pyrokv.daemon",
    "make_daemon": "pyrokv.daemon",
    "make_nameserver": "pyrokv.daemon",
    "configure_tls": "pyrokv.wire",
    "tls_configured": "pyrokv.wire",
}


@dataclass(frozen=True)
class TLSSettings:
    """This process's certificate, its private key, and the CA that signs every peer.

    Paths are made absolute. Construction checks them all and raises
    :class:`ConfigError` naming the option (``--tls-cert`` ...) and the file.
    """

    cert: str
    key: str
    ca: str

    def __post_init__(self) -> None:
        texts = {}
        for field, option in OPTIONS.items():
            path, text = _read_pem(option, getattr(self, field))
            object.__setattr__(self, field, path)
            texts[field] = text
        if "-----BEGIN CERTIFICATE-----" not in texts["cert"]:
            raise ConfigError(
                f"--tls-cert {self.cert} holds no PEM certificate "
                "(expected '-----BEGIN CERTIFICATE-----')"
            )
        if "ENCRYPTED" in texts["key"]:
            raise ConfigError(_encrypted(self.key))
        if "PRIVATE KEY-----" not in texts["key"]:
            raise ConfigError(
                f"--tls-key {self.key} holds no PEM private key "
                "(expected '-----BEGIN ... PRIVATE KEY-----')"
            )
        if "-----BEGIN CERTIFICATE-----" not in texts["ca"]:
            raise ConfigError(
                f"--tls-ca {self.ca} holds no PEM CA certificate "
                "(expected '-----BEGIN CERTIFICATE-----')"
            )
        self.server_context()  # loads everything once: mismatched key, bad CA ...

    @classmethod
    def from_options(
        cls,
        cert: str | os.PathLike[str] | None,
        key: str | os.PathLike[str] | None,
        ca: str | os.PathLike[str] | None,
    ) -> TLSSettings | None:
        """Settings from the three options; None when none is given (plain).

        Some but not all of them is a :class:`ConfigError` naming the missing ones.
        """
        given = {"cert": cert, "key": key, "ca": ca}
        if not any(given.values()):
            return None
        missing = [OPTIONS[field] for field, value in given.items() if not value]
        if missing:
            raise ConfigError(
                "TLS needs all of --tls-cert, --tls-key and --tls-ca; missing "
                + ", ".join(missing)
                + " (in a config file: cert, key and ca under [tls])"
            )
        return cls(os.fspath(cert), os.fspath(key), os.fspath(ca))  # type: ignore[arg-type]

    def server_context(self) -> ssl.SSLContext:
        """A daemon's context: present ``cert``, require a peer certificate from ``ca``."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._load(context)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def text_context(self, verify_client: bool) -> ssl.SSLContext:
        """A text port's context (``--listen-tls``): present ``cert``; with
        ``verify_client``, require a client certificate signed by ``ca``."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._load(context)
        context.verify_mode = ssl.CERT_REQUIRED if verify_client else ssl.CERT_NONE
        return context

    def client_context(self) -> ssl.SSLContext:
        """A proxy's context: present ``cert``, accept a daemon certified by ``ca``
        for the host it was reached at."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self._load(context)
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _load(self, context: ssl.SSLContext) -> None:
        context.minimum_version = ssl.TLSVersion.TLSv1_2

        def no_passphrase() -> str:
            raise ConfigError(_encrypted(self.key))

        try:
            context.load_cert_chain(self.cert, self.key, password=no_passphrase)
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise ConfigError(
                    f"--tls-key {self.key} is not the key of --tls-cert {self.cert}"
                ) from None
            raise ConfigError(
                f"--tls-cert {self.cert} / --tls-key {self.key} cannot be loaded: "
                f"{exc.reason or exc}"
            ) from None
        try:
            context.load_verify_locations(cafile=self.ca)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"--tls-ca {self.ca} cannot be loaded: {exc.reason or exc}"
            ) from None


def _encrypted(key: str) -> str:
    return (
        f"--tls-key {key} is encrypted (passphrase-protected); pyrokv needs an "
        "unencrypted key file, readable only by the user that runs it"
    )


def _read_pem(option: str, value: Any) -> tuple[str, str]:
    """(absolute path, text) of one of the files, or a ConfigError naming ``option``."""
    if value is None or not os.fspath(value):
        raise ConfigError(f"{option} needs a file name")
    path = os.path.abspath(os.fspath(value))
    if not os.path.exists(path):
        raise ConfigError(f"{option} {path}: no such file")
    if not os.path.isfile(path):
        raise ConfigError(f"{option} {path}: not a file (expected a PEM file)")
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(
            f"{option} {path}: cannot read it: {exc.strerror or exc}"
        ) from None
    return path, data.decode("ascii", "replace")


def __getattr__(name: str) -> Any:
    """Serve the names that moved to pyrokv.daemon and pyrokv.wire, with a warning."""
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"pyrokv.tls.{name} is deprecated: use {module}.{name}",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(module), name)
