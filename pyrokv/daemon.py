"""Pyro5 daemons whose new connections cannot stop the accept loop, TLS or plain.

:func:`make_daemon` and :func:`make_nameserver` build daemons that accept on a plain
socket, run every TLS handshake off the accept loop against a deadline, and bound
Pyro5's connect message by the same deadline (plain daemons too).
docs/daemon.md says why stock Pyro5 needs this, and how it is done.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import Pyro5.api
from Pyro5 import socketutil
from Pyro5.svr_threads import ClientConnectionJob, PoolError, SocketServer_Threadpool

from .defaults import DEFAULT_NS
from .errors import ConfigError
from .tls import TLSSettings
from .wire import PEER_IDLE_TIMEOUT

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAX_HANDSHAKES",
    "BoundedHandshakeJob",
    "BoundedHandshakeServer",
    "NodeDaemon",
    "bound_handshakes",
    "client_timeout",
    "make_daemon",
    "make_nameserver",
]

# The logger kept the name it had when this code lived in pyrokv.tls, so log
# settings written for that name still catch these refusals.
log = logging.getLogger("pyrokv.tls")

#: Longest a new connection may take from accept to a finished TLS handshake and
#: Pyro5 connect message, in seconds.
HANDSHAKE_TIMEOUT = 5.0

#: Connections that may be between accept and a finished handshake at once; past
#: this, new connections are closed (a flood must not use up the file descriptors).
MAX_HANDSHAKES = 1024

#: Threads that may be telling refused peers "no free workers" at once.
_DENIERS = 16


def make_daemon(
    host: str = "127.0.0.1",
    port: int = 0,
    tls: TLSSettings | None = None,
    *,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    idle_timeout: float = PEER_IDLE_TIMEOUT,
    daemon_class: Callable[..., Any] = Pyro5.api.Daemon,
    **kwargs: Any,
) -> Any:
    """A Pyro5 daemon on host:port: TLS with ``tls`` (else plain), handshakes bounded.

    ``daemon_class`` (default ``Pyro5.api.Daemon``; ``NameServerDaemon`` works too)
    gets ``host``, ``port`` and ``kwargs``. ``tls`` must agree with the process:
    given when :func:`pyrokv.wire.configure_tls` turned TLS on, None when it did not
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
        bound_handshakes(daemon, tls, handshake_timeout, idle_timeout)
    except BaseException:
        daemon.close()
        raise
    return daemon


class NodeDaemon(Pyro5.api.Daemon):  # type: ignore[misc]
    """A node's Pyro5 daemon: it keeps the timeout each connecting proxy gives.

    pyrokv's proxies send ``{"timeout": SECONDS}`` as Pyro5's connect handshake
    data: the longest their calls wait (:meth:`pyrokv.proxies.ProxyPool`). A verb
    of :class:`pyrokv.Client` (``TaskRunner.get`` and the like) carries no budget in
    its arguments; the node reads it here (:func:`client_timeout`). Anything else
    in the handshake (Pyro5's own ``"hello"``) gives no timeout.
    """

    def validateHandshake(self, conn: Any, data: Any) -> Any:  # noqa: N802 (Pyro5's)
        timeout = data.get("timeout") if isinstance(data, dict) else None
        if (
            timeout.__class__ in (int, float)
            and 0 < timeout <= MAX_CLIENT_TIMEOUT  # NaN fails both
        ):
            conn.pyrokv_timeout = float(timeout)
        return super().validateHandshake(conn, data)


#: The longest timeout a connecting proxy may give (a day); a larger one gives none.
MAX_CLIENT_TIMEOUT = 86400.0


def client_timeout() -> float | None:
    """The timeout the proxy of the call this worker serves gave when it connected
    (see :class:`NodeDaemon`); None when it gave none."""
    client = Pyro5.api.current_context.client
    return getattr(client, "pyrokv_timeout", None)


def make_nameserver(
    host: str = DEFAULT_NS[0],
    port: int = DEFAULT_NS[1],
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
    daemon: Any,
    tls: TLSSettings | None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    idle_timeout: float = PEER_IDLE_TIMEOUT,
) -> None:
    """Move ``daemon``'s TLS handshake off its accept loop, bounded by a deadline.

    For a daemon made by some other code (any thread-pool ``Daemon`` subclass); call
    it before ``requestLoop``. With ``tls`` None the daemon stays plain, but Pyro5's
    connect message is bounded by ``handshake_timeout`` all the same. Past the
    connect message, a connection that waits for a request (or for the rest of one)
    for ``idle_timeout`` seconds is closed, and so is one whose peer stops reading
    its replies for as long.
    """
    _check_timeout(handshake_timeout)
    _check_timeout(idle_timeout, "idle")
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
    server._adopt(
        tls.server_context() if tls is not None else None,
        handshake_timeout,
        idle_timeout,
    )


def _check_timeout(timeout: float, what: str = "TLS handshake") -> None:
    if not timeout > 0:
        raise ConfigError(f"the {what} timeout must be positive, not {timeout!r}")


class BoundedHandshakeServer(SocketServer_Threadpool):  # type: ignore[misc]
    """Pyro5's thread-pool transport whose accept loop only accepts.

    Installed on a live transport by :func:`bound_handshakes` (docs/daemon.md says
    why); never constructed directly.
    """

    sock: Any  # the listening socket (Pyro5's attribute)
    tls_context: ssl.SSLContext | None
    handshake_timeout: float

    def _adopt(
        self, context: ssl.SSLContext | None, timeout: float, idle_timeout: float
    ) -> None:
        self.tls_context = context
        self.handshake_timeout = float(timeout)
        self.idle_timeout = float(idle_timeout)
        self._denier = _Denier(self.daemon)
        self._pending: set[BoundedHandshakeJob] = set()
        self._pending_lock = threading.Lock()
        self._live: set[BoundedHandshakeJob] = set()  # past the connect message
        self._swept = threading.Event()  # set: the server is closing
        threading.Thread(
            target=self._sweep, name="pyrokv-idle-connections", daemon=True
        ).start()
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
            self._denier.deny(job)

    def _finished(self, job: BoundedHandshakeJob) -> None:
        with self._pending_lock:
            self._pending.discard(job)

    def _watch(self, job: BoundedHandshakeJob, live: bool) -> None:
        with self._pending_lock:
            if live:
                self._live.add(job)
            else:
                self._live.discard(job)

    def _sweep(self) -> None:
        """Close the connections whose current receive began over ``idle_timeout``
        ago: an idle peer, or a request that stalls half-sent (see
        :class:`WatchedConnection`). A peer that stops reading its replies is cut
        by the socket's send timeout instead."""
        while not self._swept.wait(min(self.idle_timeout / 4, 5.0)):
            now = time.monotonic()
            with self._pending_lock:
                live = list(self._live)
            for job in live:
                since = job.csock.receiving
                if since and now - since > self.idle_timeout:
                    log.info(
                        "closing the connection from %s: no request for %.0fs",
                        job.caddr,
                        now - since,
                    )
                    _cut(job.csock.sock)

    def close(self) -> None:
        """Also cut the handshakes in progress, so their workers end now."""
        self._swept.set()
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

    csock: WatchedConnection  # .sock becomes the TLS socket

    def __init__(
        self,
        csock: socket.socket,
        caddr: Any,
        daemon: Any,
        server: BoundedHandshakeServer,
    ) -> None:
        # ClientConnectionJob.__init__, with a WatchedConnection (a second
        # SocketConnection of the same socket would close it when collected).
        self.csock = WatchedConnection(csock)
        self.caddr = caddr
        self.daemon = daemon
        self.server = server
        self.deadline = time.monotonic() + server.handshake_timeout

    def __call__(self) -> None:
        try:
            super().__call__()  # the connect message (handleConnection), requests
        finally:
            self.server._watch(self, False)

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
            # Blocking, without a timeout: a timeout makes every receive and send
            # poll first (and, with many connections, wait for the GIL twice).
            # The server's sweep closes idle peers; the send timeout, peers that
            # stop reading.
            sock = self.csock.sock
            sock.settimeout(None)
            sock.setsockopt(
                socket.SOL_SOCKET,
                socket.SO_SNDTIMEO,
                _timeval(self.server.idle_timeout),
            )
            self.server._watch(self, True)
            return True
        finally:
            self.server._finished(self)


class WatchedConnection(socketutil.SocketConnection):  # type: ignore[misc]
    """Pyro5's SocketConnection that notes when its current receive began.

    ``receiving`` is that time (``time.monotonic()``), 0 while the worker does
    anything else; the server's sweep closes a connection receiving for longer than
    its idle timeout. As cheap as Pyro5's own ``recv``: no extra call.
    """

    receiving = 0.0

    def recv(self, size: int) -> bytes:
        self.receiving = time.monotonic()
        data: bytes = socketutil.receive_data(self.sock, size)
        self.receiving = 0.0
        return data


def _timeval(seconds: float) -> bytes:
    """``seconds`` as a ``struct timeval``, for SO_SNDTIMEO."""
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


def _cut(sock: socket.socket) -> None:
    """Shut ``sock`` down, so the worker blocked on it returns (TLS or plain: the
    plain socket's own shutdown, so a TLS object in use by the worker is left)."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


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


class _Denier:
    """Tells a peer refused for want of a free worker why, off the accept loop.

    Pyro5 answers "no free workers" on its accept loop; here a few short-lived
    threads do it, each bounded by the handshake deadline, so a caller gets the
    reason instead of a dropped connection. Past ``_DENIERS`` at once (a flood),
    new connections are closed without an answer.
    """

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self._slots = threading.BoundedSemaphore(_DENIERS)

    def deny(self, job: BoundedHandshakeJob) -> None:
        """Tell ``job``'s peer the pool is full, on a thread of its own, or close it."""
        if not self._slots.acquire(blocking=False):
            job.csock.close()
            return
        reason = (
            f"no free workers: all {Pyro5.api.config.THREADPOOL_SIZE} are busy; try "
            "again, or give this node or name server more (its --workers, or "
            "workers in the config file)"
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
                self._slots.release()

        threading.Thread(target=deny, name="pyrokv-deny", daemon=True).start()


def _log_refusal(addr: Any, exc: BaseException, timeout: float) -> None:
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        log.warning("refused a connection from %s: TLS handshake failed: %s", addr, exc)
    elif isinstance(exc, TimeoutError):
        log.info(
            "closed a connection from %s: no handshake within %.1fs", addr, timeout
        )
    else:
        log.info("connection from %s ended during its handshake: %s", addr, exc)
