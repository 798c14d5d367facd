"""Mutual TLS for every pyrokv connection (nodes, name server, clients), on Pyro5's SSL.

Three steps, in this order, before any Pyro5 proxy or daemon exists in the process:

1. ``tls = TLSSettings.from_options(args.tls_cert, args.tls_key, args.tls_ca)``
   checks the three files (exist, readable, a certificate, an unencrypted key that
   belongs to it, a CA) and raises :class:`~pyrokv.errors.ConfigError` naming the
   option and the file; it returns None when no option was given (plain).
2. ``configure_tls(tls)`` sets Pyro5's process-global config (``SSL``,
   ``SSL_SERVERCERT``/``KEY``, ``SSL_CLIENTCERT``/``KEY``, ``SSL_CACERTS``,
   ``SSL_REQUIRECLIENTCERT``) and hands Pyro5 the SSL contexts built here, so that
   every proxy of the process (to the name server, to other nodes) presents the
   certificate and checks the peer's. One identity per process: a node is a server
   to its callers and a client of its peers, with the same certificate.
3. ``make_daemon(host, port, tls)`` (or ``make_nameserver``) instead of
   ``Pyro5.api.Daemon(...)`` / ``Pyro5.nameserver.start_ns(...)``.

Both directions are verified: a daemon refuses a peer without a certificate signed
by the CA (``CERT_REQUIRED``), and a proxy refuses a daemon whose certificate is not
signed by the CA or does not name the host in the URI (``check_hostname``, so a
node's certificate needs a subjectAltName for every address it is reached by).

Why the daemon is not stock Pyro5
---------------------------------
Pyro5 5.17's thread-pool server wraps its *listening* socket in SSL
(``socketutil.create_socket(..., sslContext=...)``), so the single accept loop
(``SocketServer_Threadpool.events``) calls ``SSLSocket.accept()``, which runs the
whole TLS handshake inline, on a blocking socket, with no time limit. One peer that
opens a TCP connection and sends nothing stops the accept loop, and with it every
new connection to the node, for as long as it likes. (Pyro5's ``denyConnection``
path, taken when the pool is full, also reads from the new socket inline.)

:func:`bound_handshakes` fixes that with the least surgery on Pyro5's internals:

- The listening socket is unwrapped back to a plain TCP socket (the same file
  descriptor, so bound address, ``SO_REUSEADDR``, ``TCP_NODELAY`` and the port the
  name server knows are untouched), so ``accept()`` only accepts.
- The daemon's transport server object switches class to
  :class:`BoundedHandshakeServer`, a subclass of Pyro5's own
  ``SocketServer_Threadpool`` that overrides ``events`` (accept, hand the raw socket
  to a worker) and ``close``; everything else (pool, housekeeper, shutdown, location)
  is Pyro5's code. The class is swapped on the live object because ``Daemon.__init__``
  builds its transport server inline with no hook to choose the class, and the
  alternatives are worse: patching ``Pyro5.svr_threads`` globally would change every
  daemon in the process, and re-implementing ``Daemon.__init__`` or ``init`` would
  copy Pyro5 code that drifts between releases.
- With TLS, the accepted socket goes to one handshake thread (:class:`_Handshaker`)
  that drives every pending handshake non-blocking with a selector, each against
  one deadline (``handshake_timeout`` from accept). A peer that stalls, or trickles
  a byte at a time, is closed at the deadline, and until then holds no worker: only
  a socket (at most :data:`MAX_HANDSHAKES` of them; past that, new connections are
  closed). Only a peer that has proved its certificate reaches a worker
  (:class:`BoundedHandshakeJob`, a subclass of Pyro5's ``ClientConnectionJob``),
  where the same deadline bounds Pyro5's own connect message (in plain mode too,
  where the socket goes to a worker at once). Then the connection's timeout
  becomes ``COMMTIMEOUT`` and Pyro5 serves it as usual.
- A full pool is reported to the new peer ("no free workers") by one of a few
  short-lived threads, bounded by the same deadline, instead of Pyro5's inline
  ``denyConnection`` (which would read from it on the accept loop); in a flood,
  past those few, new connections are closed without an answer.

What remains: as in any Pyro5 thread-pool daemon, every open connection holds a
worker, so peers that *can* connect (with a certificate under TLS; anyone who can
reach the port in plain mode) can fill the pool with idle connections, until
``COMMTIMEOUT`` closes them. The accept loop itself is never blocked.

Keep ``SOCK_NODELAY`` on (``pyrokv.wire.setup_pyro`` does): the handshake is a few
small writes each way, and with Nagle's algorithm a new TLS connection takes
~14 times as long (delayed ACKs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import Pyro5.api
from Pyro5 import socketutil
from Pyro5.svr_threads import ClientConnectionJob, PoolError, SocketServer_Threadpool

from .errors import ConfigError, PyroKVError
from .wire import setup_pyro

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAX_HANDSHAKES",
    "OPTIONS",
    "BoundedHandshakeJob",
    "BoundedHandshakeServer",
    "TLSSettings",
    "bound_handshakes",
    "configure_tls",
    "make_daemon",
    "make_nameserver",
    "tls_configured",
]

log = logging.getLogger("pyrokv.tls")

#: Longest a new connection may take from accept to a finished TLS handshake and
#: Pyro5 connect message, in seconds.
HANDSHAKE_TIMEOUT = 5.0

#: The command-line option behind each field of :class:`TLSSettings`.
OPTIONS = {"cert": "--tls-cert", "key": "--tls-key", "ca": "--tls-ca"}

# Pyro5's socketutil caches one server and one client SSLContext in these module
# globals (built from config on first use, never rebuilt). configure_tls puts its
# own contexts there, so Pyro5 uses exactly those and never loads the files itself.
_PYRO_CACHE = {"server": "__ssl_server_context", "client": "__ssl_client_context"}

_configure_lock = threading.Lock()


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
            )
        return cls(os.fspath(cert), os.fspath(key), os.fspath(ca))  # type: ignore[arg-type]

    def server_context(self) -> ssl.SSLContext:
        """A daemon's context: present ``cert``, require a peer certificate from ``ca``."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._load(context)
        context.verify_mode = ssl.CERT_REQUIRED
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


# -- the process's Pyro5 config ---------------------------------------------


def configure_tls(settings: TLSSettings | None) -> None:
    """Make every Pyro5 connection of this process mutual TLS with ``settings``.

    Sets Pyro5's global config and SSL context cache; None switches back to plain.
    Call it once at start-up, after parsing options and before any proxy or daemon
    is created (a proxy that is already connected keeps its connection). Also runs
    :func:`pyrokv.wire.setup_pyro`, which keeps ``SOCK_NODELAY`` on.
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


def _install_pyro_contexts(
    server: ssl.SSLContext | None, client: ssl.SSLContext | None
) -> None:
    cache = vars(socketutil)
    if any(name not in cache for name in _PYRO_CACHE.values()):
        raise PyroKVError(
            f"Pyro5 {Pyro5.__version__} no longer caches its SSL contexts in "
            f"socketutil.{_PYRO_CACHE['client']}: pyrokv.tls needs updating"
        )
    cache[_PYRO_CACHE["server"]] = server
    cache[_PYRO_CACHE["client"]] = client


# -- daemons whose handshake cannot stop the accept loop --------------------


def make_daemon(
    host: str = "127.0.0.1",
    port: int = 0,
    tls: TLSSettings | None = None,
    *,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    daemon_class: Callable[..., Any] = Pyro5.api.Daemon,
    **kwargs: Any,
) -> Any:
    """A Pyro5 daemon on host:port: TLS with ``tls`` (else plain), handshakes bounded.

    ``daemon_class`` (default ``Pyro5.api.Daemon``; ``NameServerDaemon`` works too)
    gets ``host``, ``port`` and ``kwargs``. ``tls`` must agree with the process:
    given when :func:`configure_tls` turned TLS on, None when it did not
    (:class:`ConfigError` otherwise). Raises OSError when the address is taken.
    Register objects and start ``requestLoop`` as with any daemon.
    """
    _check_timeout(handshake_timeout)
    config = Pyro5.api.config
    if tls is None and config.SSL:
        raise ConfigError(
            f"this process uses TLS (configure_tls) but the daemon for {host}:{port} "
            "got no TLS settings: pass tls=, a plain daemon would accept anyone"
        )
    if tls is not None and not config.SSL:
        raise ConfigError(
            f"the daemon for {host}:{port} has TLS settings but this process does "
            "not use TLS: call configure_tls(settings) first, or this process's own "
            "calls (name server, other nodes) would go out without it"
        )
    if config.SERVERTYPE != "thread":
        raise ConfigError(
            f"pyrokv daemons use Pyro5's thread-pool server, not {config.SERVERTYPE!r}"
        )
    daemon = daemon_class(host=host, port=port, **kwargs)
    try:
        bound_handshakes(daemon, tls, handshake_timeout)
    except BaseException:
        daemon.close()
        raise
    return daemon


def make_nameserver(
    host: str = "127.0.0.1",
    port: int = 9090,
    tls: TLSSettings | None = None,
    *,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> tuple[Any, Any]:
    """Pyro5's name server daemon, as :func:`make_daemon` makes it; (uri, daemon).

    What ``pyrokv nameserver`` runs instead of ``Pyro5.nameserver.start_ns`` (which
    starts no broadcast server on loopback, and pyrokv never wants one).
    """
    from Pyro5.nameserver import NameServerDaemon

    daemon = make_daemon(
        host,
        port,
        tls,
        handshake_timeout=handshake_timeout,
        daemon_class=NameServerDaemon,
    )
    return daemon.uriFor(daemon.nameserver), daemon


def bound_handshakes(
    daemon: Any, tls: TLSSettings | None, handshake_timeout: float = HANDSHAKE_TIMEOUT
) -> None:
    """Move ``daemon``'s TLS handshake off its accept loop, bounded by a deadline.

    For a daemon made by some other code (any thread-pool ``Daemon`` subclass); call
    it before ``requestLoop``. With ``tls`` None the daemon stays plain, but Pyro5's
    connect message is bounded by ``handshake_timeout`` all the same.
    """
    _check_timeout(handshake_timeout)
    server = daemon.transportServer
    if isinstance(server, BoundedHandshakeServer):
        raise ConfigError(f"the handshakes of {daemon} are bounded already")
    if not isinstance(server, SocketServer_Threadpool):
        raise ConfigError(
            f"cannot bound the handshakes of {type(server).__name__}: pyrokv "
            "daemons use Pyro5's thread-pool server (SERVERTYPE 'thread')"
        )
    if tls is None and isinstance(server.sock, ssl.SSLSocket):
        raise ConfigError(
            f"{daemon} was made for TLS (Pyro5's config.SSL): give its TLS settings, "
            "or it would serve plain connections"
        )
    server.__class__ = BoundedHandshakeServer
    server._adopt(tls.server_context() if tls is not None else None, handshake_timeout)


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise ConfigError(
            f"the TLS handshake timeout must be positive, not {timeout!r}"
        )


#: Connections that may be between accept and a finished handshake at once; past
#: this, new connections are closed (a flood must not use up the file descriptors).
MAX_HANDSHAKES = 1024

#: Threads that may be telling refused peers "no free workers" at once.
_DENIERS = 16


class BoundedHandshakeServer(SocketServer_Threadpool):  # type: ignore[misc]
    """Pyro5's thread-pool transport whose accept loop only accepts.

    Installed on a live transport by :func:`bound_handshakes` (see the module
    docstring for why); never constructed directly.
    """

    sock: Any  # the listening socket (Pyro5's attribute)
    tls_context: ssl.SSLContext | None
    handshake_timeout: float

    def _adopt(self, context: ssl.SSLContext | None, timeout: float) -> None:
        self.tls_context = context
        self.handshake_timeout = float(timeout)
        self._deniers = threading.BoundedSemaphore(_DENIERS)
        self._pending: set[BoundedHandshakeJob] = set()
        self._pending_lock = threading.Lock()
        self._handshaker = _Handshaker(self, context) if context is not None else None
        listener = self.sock
        if isinstance(listener, ssl.SSLSocket):
            # Same descriptor, plain socket object: accept() no longer handshakes.
            family, kind, proto = listener.family, listener.type, listener.proto
            timeout_now = listener.gettimeout()
            self._selector.unregister(listener)
            plain = socket.socket(family, kind, proto, fileno=listener.detach())
            plain.settimeout(timeout_now)
            self.sock = plain
            self._selector.register(plain, selectors.EVENT_READ, self)

    @property
    def pending_handshakes(self) -> int:
        """Connections accepted whose handshake has not finished (or failed) yet."""
        with self._pending_lock:
            return len(self._pending)

    def events(self, eventsockets: Any) -> None:
        """Accept one connection and pass it on; never reads from it here.

        With TLS it goes to the handshaker (one thread for every handshake), and to
        a worker once the peer has proved its certificate; plain, straight to a worker.
        """
        assert self.sock in eventsockets
        with contextlib.suppress(socket.timeout):
            if not self._selector.select(Pyro5.api.config.POLLTIMEOUT):
                return
            csock, caddr = self.sock.accept()
            if self.shutting_down:
                csock.close()
                return
            if Pyro5.api.config.SOCK_NODELAY:
                socketutil.set_nodelay(csock)
            job = BoundedHandshakeJob(csock, caddr, self.daemon, self)
            with self._pending_lock:
                if len(self._pending) >= MAX_HANDSHAKES:
                    log.warning(
                        "closing a new connection from %s: %d handshakes are in "
                        "progress already",
                        caddr,
                        len(self._pending),
                    )
                    job.csock.close()
                    return
                self._pending.add(job)
            if self._handshaker is not None:
                self._handshaker.add(job)
            else:
                self.to_worker(job)

    def to_worker(self, job: BoundedHandshakeJob) -> None:
        """Give ``job`` (TLS done, if any) to a worker; tell the peer if none is free."""
        try:
            self.pool.process(job)
        except PoolError as exc:
            self._finished(job)
            log.warning("refusing a new connection from %s: %s", job.caddr, exc)
            self._deny(job)

    def _deny(self, job: BoundedHandshakeJob) -> None:
        """Tell a peer the pool is full, off the accept loop, or just close it.

        Pyro5 answers "no free workers" on its accept loop; here a few short-lived
        threads do it, each bounded by the handshake deadline, so a caller gets the
        reason instead of a dropped connection. Past ``_DENIERS`` at once (a flood),
        new connections are closed without an answer.
        """
        if not self._deniers.acquire(blocking=False):
            job.csock.close()
            return
        reason = (
            f"no free workers: all {Pyro5.api.config.THREADPOOL_SIZE} are busy; try "
            "again, or start the node with a larger --workers"
        )

        def deny() -> None:
            try:
                remaining = job.deadline - time.monotonic()
                if remaining > 0:
                    job.csock.sock.settimeout(remaining)
                    self.daemon._handshake(job.csock, denied_reason=reason)
            except Exception as exc:  # the peer went away or stalled: nothing to tell
                log.info("could not tell %s the pool is full: %s", job.caddr, exc)
            finally:
                job.csock.close()
                self._deniers.release()

        threading.Thread(target=deny, name="pyrokv-deny", daemon=True).start()

    def _finished(self, job: BoundedHandshakeJob) -> None:
        with self._pending_lock:
            self._pending.discard(job)

    def close(self) -> None:
        """Also cut the handshakes in progress, so their workers end now."""
        with self._pending_lock:
            pending = list(self._pending)
        if self._handshaker is not None:
            self._handshaker.close()
        for job in pending:
            with contextlib.suppress(OSError):
                job.csock.sock.shutdown(socket.SHUT_RDWR)
        super().close()


class BoundedHandshakeJob(ClientConnectionJob):  # type: ignore[misc]
    """One connection on a worker: TLS handshake and Pyro5 connect before a deadline,
    then Pyro5's request loop."""

    csock: Any  # Pyro5's SocketConnection; .sock becomes the TLS socket

    def __init__(
        self,
        csock: socket.socket,
        caddr: Any,
        daemon: Any,
        server: BoundedHandshakeServer,
    ) -> None:
        super().__init__(csock, caddr, daemon)
        self.server = server
        self.deadline = time.monotonic() + server.handshake_timeout

    def handleConnection(self) -> bool:  # noqa: N802 (Pyro5's name)
        try:
            try:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no time left for the Pyro5 connect message")
                self.csock.sock.settimeout(remaining)
            except (OSError, ValueError) as exc:
                _log_refusal(self.caddr, exc, self.server.handshake_timeout)
                self.csock.close()
                return False
            if not super().handleConnection():  # Pyro5's connect message
                return False
            self.csock.sock.settimeout(Pyro5.api.config.COMMTIMEOUT or None)
            return True
        finally:
            self.server._finished(self)


class _Handshaker:
    """One thread that drives every pending TLS handshake of a daemon, non-blocking.

    A peer that connects and proves nothing holds no worker: only a socket here,
    until its deadline. Once the handshake is done the job goes to
    ``server.to_worker`` (Pyro5's connect message, then requests).
    """

    def __init__(self, server: BoundedHandshakeServer, context: ssl.SSLContext) -> None:
        self.server = server
        self.context = context
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ)
        self._incoming: list[BoundedHandshakeJob] = []
        self._lock = threading.Lock()
        self._closed = False
        self._jobs: dict[ssl.SSLSocket, BoundedHandshakeJob] = {}
        self._thread = threading.Thread(
            target=self._run, name="pyrokv-tls-handshakes", daemon=True
        )
        self._thread.start()

    def add(self, job: BoundedHandshakeJob) -> None:
        """Start ``job``'s handshake (called on the accept loop)."""
        with self._lock:
            if self._closed:
                job.csock.close()
                return
            self._incoming.append(job)
        with contextlib.suppress(BlockingIOError):  # a wake-up is pending already
            self._wake_w.send(b"\0")

    def close(self) -> None:
        """Stop the thread; it closes the connections whose handshake was not done."""
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while not self._closed:
                now = time.monotonic()
                for tls, job in list(self._jobs.items()):
                    if job.deadline <= now:
                        self._drop(
                            tls, TimeoutError("TLS handshake not finished in time")
                        )
                wait = min(
                    (job.deadline for job in self._jobs.values()), default=now + 1
                )
                for key, _ in self.selector.select(max(wait - now, 0.0)):
                    if key.fileobj is self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096)
                        self._take_incoming()
                    else:
                        try:
                            self._step(key.fileobj)  # type: ignore[arg-type]
                        except Exception:  # a bug must not stop every handshake
                            log.exception("TLS handshake step failed")
                            self._drop(key.fileobj, None)  # type: ignore[arg-type]
        finally:
            for tls in list(self._jobs):
                self._drop(tls, None)
            with self._lock:
                incoming, self._incoming = self._incoming, []
            for job in incoming:
                job.csock.close()
                self.server._finished(job)
            self.selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _take_incoming(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for job in incoming:
            raw = job.csock.sock
            raw.setblocking(False)
            try:
                tls = self.context.wrap_socket(
                    raw, server_side=True, do_handshake_on_connect=False
                )
            except OSError as exc:  # the peer is gone already
                _log_refusal(job.caddr, exc, self.server.handshake_timeout)
                raw.close()
                self.server._finished(job)
                continue
            job.csock.sock = tls
            self._jobs[tls] = job
            self.selector.register(tls, selectors.EVENT_READ)
            self._step(tls)

    def _step(self, tls: ssl.SSLSocket) -> None:
        """Take ``tls``'s handshake as far as the peer's bytes allow."""
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self.selector.modify(tls, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            self.selector.modify(tls, selectors.EVENT_WRITE)
        except (OSError, ValueError) as exc:
            self._drop(tls, exc)
        else:
            job = self._jobs.pop(tls)
            self.selector.unregister(tls)
            tls.setblocking(True)
            self.server.to_worker(job)

    def _drop(self, tls: ssl.SSLSocket, exc: BaseException | None) -> None:
        job = self._jobs.pop(tls, None)
        if job is None:  # handed on already
            return
        self.selector.unregister(tls)
        if exc is not None:
            _log_refusal(job.caddr, exc, self.server.handshake_timeout)
        job.csock.close()
        self.server._finished(job)


def _log_refusal(addr: Any, exc: BaseException, timeout: float) -> None:
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        log.warning("refused a connection from %s: TLS handshake failed: %s", addr, exc)
    elif isinstance(exc, TimeoutError):
        log.info(
            "closed a connection from %s: no handshake within %.1fs", addr, timeout
        )
    else:
        log.info("connection from %s ended during its handshake: %s", addr, exc)
