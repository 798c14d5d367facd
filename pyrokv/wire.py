"""The Pyro5 settings every pyrokv process shares; the one place that touches Pyro5's global config.

:func:`setup_pyro` sets what every process needs; :func:`configure_tls` turns mutual
TLS on (or off) for every connection of the process; :func:`accept_serpent_only`
limits what its daemons decode.
"""

from __future__ import annotations

import ssl
import threading
from typing import TYPE_CHECKING, Any

import Pyro5.api
from Pyro5 import socketutil

from .defaults import DEFAULT_WORKERS
from .errors import ConfigError, IncompatiblePyroError, register_with_pyro

if TYPE_CHECKING:
    from .tls import TLSSettings

__all__ = [
    "DEFAULT_WORKERS",
    "MAX_MESSAGE_SIZE",
    "PEER_IDLE_TIMEOUT",
    "accept_serpent_only",
    "configure_tls",
    "set_workers",
    "setup_pyro",
    "tls_configured",
    "use_tls",
]

#: A connection into a node's Pyro5 daemon that carries no request for this long is
#: closed by the node, so idle or half-open peers cannot hold its worker threads.
#: Routers reconnect on their own after half of it (see router.RECONNECT_IDLE).
PEER_IDLE_TIMEOUT = 60.0
#: The largest Pyro5 message a process accepts (Pyro5's default is 1 GiB, which
#: lets one peer make a node allocate that much before anything is checked).
MAX_MESSAGE_SIZE = 64 * 1024 * 1024

_done = threading.Lock()
_ready = False

# Pyro5's socketutil caches one server and one client SSLContext in these module
# globals (built from config on first use, never rebuilt). configure_tls puts its
# own contexts there, so Pyro5 uses exactly those and never loads the files itself.
_PYRO_CACHE = {"server": "__ssl_server_context", "client": "__ssl_client_context"}

_configure_lock = threading.Lock()


def setup_pyro() -> None:
    """Configure Pyro5 for pyrokv once per process; idempotent.

    - serpent is the serializer (plain data only, no code);
    - ``SERPENT_BYTES_REPR``: bytes travel as bytes, not as base64 dicts;
    - ``SOCK_NODELAY``: small request/reply messages go out at once (Nagle's
      algorithm otherwise delays them);
    - every pyrokv error is rebuilt as its own class when it arrives;
    - ``MAX_MESSAGE_SIZE``: 64 MiB instead of 1 GiB;
    - ``COMMTIMEOUT``: a daemon closes a connection idle for ``PEER_IDLE_TIMEOUT``
      (and a request that stalls half-sent). Proxies set their own timeouts.
    """
    global _ready
    with _done:
        if _ready:
            return
        config = Pyro5.api.config
        config.SERIALIZER = "serpent"
        config.SERPENT_BYTES_REPR = True
        config.SOCK_NODELAY = True
        config.SERVERTYPE = "thread"
        config.COMMTIMEOUT = PEER_IDLE_TIMEOUT
        config.THREADPOOL_SIZE = DEFAULT_WORKERS
        config.MAX_MESSAGE_SIZE = MAX_MESSAGE_SIZE
        register_with_pyro()
        _ready = True


def set_workers(count: int) -> None:
    """Give this process's Pyro5 daemons ``count`` worker threads (process-wide).

    Pyro5 keeps a minimum pool too (``THREADPOOL_SIZE_MIN``, 4 by default), which
    must not pass the size, or the daemon cannot start.
    """
    config = Pyro5.api.config
    config.THREADPOOL_SIZE = count
    config.THREADPOOL_SIZE_MIN = min(config.THREADPOOL_SIZE_MIN, count)


def accept_serpent_only() -> None:
    """Make this process's Pyro5 daemons refuse every serializer but serpent.

    A Pyro5 daemon decodes whatever serializer the client picks, marshal included
    (documented as unsafe on untrusted data), and has no setting to limit it. This
    wraps ``Pyro5.protocol.recv_stub``, which reads every message's header before its
    body is decoded: a connect or call message in another serializer raises
    ``SecurityError`` there, so its body is never decoded. Pyro5 then answers a
    connect with "connection rejected" and the reason, and closes a call's
    connection. Only messages a daemon receives are checked (connect and invoke);
    replies this process receives as a client are not. Process-wide and idempotent:
    ``pyrokv node`` and ``pyrokv nameserver`` call it at start-up.
    """
    from Pyro5 import errors, protocol, serializers

    original = protocol.recv_stub
    if getattr(original, "pyrokv_serpent_only", False):
        return
    serpent_id = serializers.serializers["serpent"].serializer_id
    checked = (protocol.MSG_CONNECT, protocol.MSG_INVOKE)

    def recv_stub(connection: Any, accepted_msgtypes: Any = None) -> Any:
        msg = original(connection, accepted_msgtypes)
        if msg.type in checked and msg.serializer_id != serpent_id:
            raise errors.SecurityError(
                "pyrokv accepts the serpent serializer only (this message used "
                f"serializer id {msg.serializer_id}); set the proxy's serializer "
                "to serpent"
            )
        return msg

    recv_stub.pyrokv_serpent_only = True  # type: ignore[attr-defined]
    protocol.recv_stub = recv_stub


# -- mutual TLS for every connection of the process ---------------------------


def configure_tls(settings: TLSSettings | None) -> None:
    """Make every Pyro5 connection of this process mutual TLS with ``settings``.

    Sets Pyro5's global config and SSL context cache; None switches back to plain.
    Call it once at start-up, after parsing options and before any proxy or daemon
    is created (a proxy that is already connected keeps its connection). Also runs
    :func:`setup_pyro`, which keeps ``SOCK_NODELAY`` on.
    """
    setup_pyro()
    config = Pyro5.api.config
    with _configure_lock:
        if settings is None:
            config.SSL = False
            _install_pyro_contexts(server=None, client=None)
            for name in (
                "SERVERCERT",
                "SERVERKEY",
                "SERVERKEYPASSWD",
                "CLIENTCERT",
                "CLIENTKEY",
                "CLIENTKEYPASSWD",
                "CACERTS",
            ):
                setattr(config, f"SSL_{name}", "")
            config.SSL_REQUIRECLIENTCERT = False
            return
        server, client = settings.server_context(), settings.client_context()
        config.SSL_SERVERCERT = settings.cert
        config.SSL_SERVERKEY = settings.key
        config.SSL_SERVERKEYPASSWD = ""
        config.SSL_CLIENTCERT = settings.cert
        config.SSL_CLIENTKEY = settings.key
        config.SSL_CLIENTKEYPASSWD = ""
        config.SSL_CACERTS = settings.ca
        config.SSL_REQUIRECLIENTCERT = True
        _install_pyro_contexts(server=server, client=client)
        config.SSL = True


def tls_configured() -> bool:
    """Whether :func:`configure_tls` (or Pyro5's config) turned TLS on in this process."""
    return bool(Pyro5.api.config.SSL)


_use_lock = threading.Lock()


def use_tls(settings: TLSSettings) -> None:
    """Make sure this process speaks mutual TLS with ``settings``: turn it on if the
    process is plain; nothing if it uses these very files already.

    What ``Client(tls=...)`` calls. Pyro5's TLS settings are process-wide, so a
    process that uses TLS with another certificate, key or CA cannot use these
    too: :class:`ConfigError` says so, and nothing changes.
    """
    config = Pyro5.api.config
    with _use_lock:
        if tls_configured():
            using = (config.SSL_CLIENTCERT, config.SSL_CLIENTKEY, config.SSL_CACERTS)
            if using == (settings.cert, settings.key, settings.ca):
                return
            raise ConfigError(
                f"this process already uses TLS with certificate {using[0]}, key "
                f"{using[1]} and CA {using[2]}; Pyro5's TLS settings are "
                "process-wide, so every client of a process uses the same ones "
                "(make the other clients in another process)"
            )
        configure_tls(settings)


def _install_pyro_contexts(
    server: ssl.SSLContext | None, client: ssl.SSLContext | None
) -> None:
    cache = vars(socketutil)
    if any(name not in cache for name in _PYRO_CACHE.values()):
        raise IncompatiblePyroError(
            f"Pyro5 {Pyro5.__version__} no longer caches its SSL contexts in "
            f"socketutil.{_PYRO_CACHE['client']}: pyrokv.wire needs updating"
        )
    cache[_PYRO_CACHE["server"]] = server
    cache[_PYRO_CACHE["client"]] = client
