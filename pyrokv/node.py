"""A node: one Pyro5 daemon serving a Registry and a TaskRunner, registered by name.

:func:`start_node` starts one in a background thread and returns a handle (tests
use it to run several nodes in one process); :func:`serve_node` is what
``pyrokv node NAME`` runs: start, print ``READY``, wait for SIGTERM or Ctrl-C,
unregister, exit.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

import Pyro5.api
import Pyro5.errors
from Pyro5.api import Proxy

from . import __version__, naming, peering
from . import metrics as metrics_module
from .daemon import NodeDaemon, make_daemon
from .defaults import (
    DEFAULT_ALLOW,
    DEFAULT_EVENT_LOOP,
    DEFAULT_FSYNC,
    DEFAULT_HOP_LIMIT,
    DEFAULT_HOST,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_MESSAGE,
    DEFAULT_NS,
    DEFAULT_PORT,
    DEFAULT_TIMEOUT,
    DEFAULT_WORKERS,
    FSYNC_MODES,
)
from .durable import DurableRegistry
from .errors import (
    ConfigError,
    ListenError,
    NameServerUnavailableError,
    NameTakenError,
)
from .guard import guard_daemons
from .live import Live
from .loops import check_event_loop
from .registry import Registry
from .router import Router
from .runner import TaskRunner
from .server import DEFAULT_MAX_CONNECTIONS, PEER_RESERVE, TextServer
from .signals import STOP_SIGNALS, StopSignals
from .stats import Stats
from .store import Store
from .table import RoutingTable, check_node_name
from .tls import TLSSettings
from .wire import set_workers, setup_pyro

log = logging.getLogger("pyrokv.node")

__all__ = ["STOP_SIGNALS", "NodeHandle", "StopSignals", "serve_node", "start_node"]

#: How often a node checks that the name server still holds its registration
#: (a restarted name server is empty: the node registers again by itself).
REREGISTER_INTERVAL = 2.0


class NodeHandle:
    """A running node: its registry, runner and router, and the daemon serving them."""

    def __init__(
        self,
        name: str,
        daemon: Any,
        registry: Registry,
        runner: TaskRunner,
        router: Router,
        ns: tuple[str, int],
    ) -> None:
        self.name = name
        self.daemon = daemon
        self.registry = registry
        self.runner = runner
        self.router = router
        self.ns = ns
        self.text: TextServer | None = None
        self.metrics: metrics_module.MetricsServer | None = None
        #: The node's store of record (its data dir), or None: in memory only.
        self.store: Store | None = getattr(registry, "store", None)
        #: The meta values of a node without a data dir (kept in memory).
        self._meta: dict[str, Any] = {}
        self.stats = Stats()
        runner.describe = self.describe
        runner.stats = self.stats
        self.uri = daemon.uriFor(naming.tasks_name(name))
        self.registry_uri = daemon.uriFor(naming.registry_name(name))
        self._stopping = threading.Event()
        self._loop = threading.Thread(
            target=daemon.requestLoop, name=f"pyrokv-{name}-daemon", daemon=True
        )
        self._keeper = threading.Thread(
            target=self._keep_registered, name=f"pyrokv-{name}-ns", daemon=True
        )

    def _start(self, replace: bool) -> None:
        self._loop.start()
        self._register(safe=not replace)
        host, port = self.ns
        text = "" if self.text is None else f", text protocol at {self.text.shown}"
        log.info(
            "node %r serving Pyro5 at %s%s; registered with the name server at %s:%d",
            self.name,
            self.uri.location,
            text,
            host,
            port,
        )
        self._keeper.start()

    def describe(self) -> dict[str, Any]:
        """What :meth:`TaskRunner.info` adds for a running node: its version, pid,
        uptime, text address and counters (``INFO``, ``pyrokv status``)."""
        stats = self.stats
        text = self.text
        requests = stats.client_requests()
        return {
            "pyrokv_version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(stats.uptime(), 1),
            "text": None if text is None else text.shown,
            "connections": 0 if text is None else len(text.connections),
            "requests": requests.total(),
            "routed": sum(stats.routed.values()),
            "errors": sum(requests.error.values()),
            **({} if self.store is None else self.store.stats()),
        }

    def meta_get(self, key: str, default: Any = None) -> Any:
        """A value the node keeps about itself (its routing table and version):
        from its data dir, or from memory without one."""
        if self.store is None:
            return self._meta.get(key, default)
        return self.store.meta_get(key, default)

    def meta_set(self, key: str, value: Any) -> None:
        """Keep ``value`` under ``key`` (see :meth:`meta_get`); with a data dir it
        is on disk when this returns (:meth:`Store.meta_set`)."""
        if self.store is None:
            self._meta[key] = value
        else:
            self.store.meta_set(key, value)

    def _metadata(self) -> set[str]:
        metadata = {naming.NODE_METADATA}
        if self.text is not None:
            metadata.add(naming.text_metadata(*self.text.address))
        return metadata

    def _register(self, safe: bool) -> None:
        host, port = self.ns
        metadata = self._metadata()
        with naming.ns_proxy(host, port, self.router.timeout) as ns:
            ns.register(
                naming.tasks_name(self.name), self.uri, safe=safe, metadata=metadata
            )
            ns.register(
                naming.registry_name(self.name), self.registry_uri, metadata=metadata
            )

    def _keep_registered(self) -> None:
        """Every REREGISTER_INTERVAL: register again if either name is gone (a
        restarted name server) or points elsewhere (someone took it over)."""
        host, port = self.ns
        mine = {
            naming.tasks_name(self.name): str(self.uri),
            naming.registry_name(self.name): str(self.registry_uri),
        }
        ns_down = False
        while not self._stopping.wait(REREGISTER_INTERVAL):
            try:
                with naming.ns_proxy(host, port, self.router.timeout) as ns:
                    found = ns.list(
                        prefix=naming.node_prefix(self.name),
                        return_metadata=True,
                    )
                    self._keep_table_copy(ns)
                metadata = self._metadata()
                wrong = [
                    (name, found.get(name))
                    for name, uri in mine.items()
                    if found.get(name) is None
                    or str(found[name][0]) != uri
                    or set(found[name][1]) != metadata
                ]
                if ns_down:
                    ns_down = False
                    log.info("the name server at %s:%d answers again", host, port)
                if not wrong:
                    continue
                for name, entry in wrong:
                    if entry is not None:
                        log.warning(
                            "the name server has %s at %s (metadata %s), not this "
                            "node: registering it again",
                            name,
                            entry[0],
                            sorted(entry[1]),
                        )
                self._register(safe=False)
                log.info("node %r registered again with the name server", self.name)
            except Pyro5.errors.PyroError as exc:
                if not ns_down:  # once per outage
                    ns_down = True
                    log.warning(
                        "cannot reach the name server at %s:%d (%s): serving on, "
                        "registering again when it is back",
                        host,
                        port,
                        exc,
                    )
                continue

    def _keep_table_copy(self, ns: Any) -> None:
        """Put the cluster's table back in the name server when its copy is gone
        (a restarted name server) or older than this node's."""
        routing = self.router.routing
        version = routing.version
        if version < 1:
            return
        try:
            _uri, metadata = ns.lookup(naming.TABLE_NAME, return_metadata=True)
            copy = naming.parse_table_metadata(metadata)
        except Pyro5.errors.NamingError:
            copy = None
        if copy is not None and copy[0] >= version:
            return
        spec = routing.table.spec()
        ns.register(
            naming.TABLE_NAME, self.uri, metadata=naming.table_metadata(version, spec)
        )
        log.info(
            "put the cluster's table (version %d) back in the name server", version
        )

    def stop(self) -> None:
        """Unregister (if the name server still points at us), stop serving, close."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("node %r stopping", self.name)
        if self.text is not None:
            self.text.stop()
        if self.metrics is not None:
            self.metrics.stop()
        host, port = self.ns
        try:
            with naming.ns_proxy(host, port, 2.0) as ns:
                if ns.lookup(naming.tasks_name(self.name)) == self.uri:
                    ns.remove(naming.tasks_name(self.name))
                    ns.remove(naming.registry_name(self.name))
        except Pyro5.errors.PyroError:
            pass  # name server gone or the name already taken over: nothing to undo
        self.daemon.shutdown()
        if self.router.live is not None:
            self.router.live.close()
        self._loop.join(timeout=5)
        if self._keeper.is_alive():
            self._keeper.join(timeout=5)
        self.router.close()
        if self.store is not None:
            self.store.close()  # commits every pending write

    def __enter__(self) -> NodeHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_node(
    name: str,
    table: RoutingTable,
    ns: tuple[str, int] = DEFAULT_NS,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allow: Iterable[str] = DEFAULT_ALLOW,
    timeout: float = DEFAULT_TIMEOUT,
    hop_limit: int = DEFAULT_HOP_LIMIT,
    listen: tuple[str, int] | None = None,
    max_line: int = DEFAULT_MAX_LINE,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    workers: int = DEFAULT_WORKERS,
    tls: TLSSettings | None = None,
    secret_file: str | None = None,
    max_message: int = DEFAULT_MAX_MESSAGE,
    listen_tls: bool = False,
    listen_tls_verify_client: bool = False,
    password_file: str | None = None,
    password: str | None = None,
    metrics: tuple[str, int] | None = None,
    data_dir: str | None = None,
    fsync: str = DEFAULT_FSYNC,
    event_loop: str = DEFAULT_EVENT_LOOP,
) -> NodeHandle:
    """Start node ``name`` in this process and register it; return its handle.

    With ``tls`` the daemon speaks mutual TLS only; call
    :func:`pyrokv.wire.configure_tls` with the same settings first (process-wide).
    With ``listen`` (host, port) the node also serves the text protocol there
    (``handle.text.address`` is the real address when port is 0). With
    ``secret_file`` (the cluster's secret, see :mod:`pyrokv.peering`) and no TLS,
    its text server opens and accepts peer links to other nodes' text ports.
    Refuses (with :class:`NameTakenError`) a name that a live node holds; replaces a
    registration left behind by a dead one.
    With ``data_dir`` the node's buckets are loaded from there before it registers,
    and every write is recorded there (:mod:`pyrokv.durable`); ``fsync`` says when
    a write is acknowledged (``always``, ``everysec``, ``no``). A dir that cannot be
    used raises a :class:`DataDirError` naming it. ``event_loop`` picks the text
    server's event loop (:mod:`pyrokv.loops`: ``auto`` takes uvloop when installed).
    """
    setup_pyro()
    check_event_loop(event_loop)
    check_node_name(name)
    text_tls = _text_tls(listen, tls, listen_tls, listen_tls_verify_client)
    if metrics is not None:
        metrics_module.check_available()
    if password_file is not None:
        password = read_password(password_file)
    secret = None if secret_file is None else peering.read_secret(secret_file)
    if secret_file is not None and peering.exposed(secret_file):
        log.warning(
            "the cluster secret file %s can be read by other users: chmod 600 it",
            secret_file,
        )
    stale = _refuse_if_live(name, ns, timeout)
    registry = _registry(name, data_dir, fsync)
    try:
        return _start_node(
            name,
            table,
            ns,
            registry,
            stale,
            host=host,
            port=port,
            allow=allow,
            timeout=timeout,
            hop_limit=hop_limit,
            listen=listen,
            max_line=max_line,
            idle_timeout=idle_timeout,
            workers=workers,
            tls=tls,
            secret=secret,
            max_message=max_message,
            text_tls=text_tls,
            password=password,
            metrics=metrics,
            event_loop=event_loop,
        )
    except BaseException:
        if isinstance(registry, DurableRegistry):
            registry.store.close()  # idempotent: a handle that stopped closed it
        raise


def _registry(name: str, data_dir: str | None, fsync: str) -> Registry:
    """The node's registry: in memory, or loaded from its data dir."""
    if data_dir is None:
        return Registry()
    if fsync not in FSYNC_MODES:
        raise ConfigError(
            f"fsync {fsync!r} is not one of {', '.join(FSYNC_MODES)} (--fsync, fsync)"
        )
    started = time.monotonic()
    store = Store.open(data_dir, fsync)
    try:
        registry = DurableRegistry(store)
    except BaseException:
        store.close()
        raise
    log.info(
        "node %r loaded %d buckets, %d keys from %s in %.1fs (fsync %s)",
        name,
        registry.count(),
        registry.key_count(),
        store.data_dir,
        time.monotonic() - started,
        fsync,
    )
    return registry


def _start_node(
    name: str,
    table: RoutingTable,
    ns: tuple[str, int],
    registry: Registry,
    stale: bool,
    *,
    host: str,
    port: int,
    allow: Iterable[str],
    timeout: float,
    hop_limit: int,
    listen: tuple[str, int] | None,
    max_line: int,
    idle_timeout: float,
    workers: int,
    tls: TLSSettings | None,
    secret: bytes | None,
    max_message: int,
    text_tls: ssl.SSLContext | None,
    password: str | None,
    metrics: tuple[str, int] | None,
    event_loop: str,
) -> NodeHandle:
    """:func:`start_node` once its arguments are checked and its registry loaded."""
    # Pyro5 reads the pool size and message limit from its global config:
    # process-wide.
    set_workers(workers)
    Pyro5.api.config.MAX_MESSAGE_SIZE = max_message
    try:
        daemon = make_daemon(host, port, tls, daemon_class=NodeDaemon)
    except OSError as exc:
        raise ListenError.of(
            "port",
            f"node {name!r} cannot listen on {host}:{port}: {exc.strerror or exc}",
        ) from None
    runner = TaskRunner(name, registry, allow)
    router = Router(
        table, name, local=runner.execute, ns=ns, timeout=timeout, hop_limit=hop_limit
    )
    runner.router = router
    router.live = Live(
        name,
        registry,
        router.routing,
        lambda owner, limit, call: router.proxies.call(owner, limit, call, [name]),
    )
    daemon.register(registry, naming.registry_name(name))
    daemon.register(runner, naming.tasks_name(name))
    handle = NodeHandle(name, daemon, registry, runner, router, ns)
    router.live.served = handle.stats.served  # a hand-off makes room for requests
    if listen is not None:
        try:
            handle.text = TextServer(
                router,
                *listen,
                max_line=max_line,
                idle_timeout=idle_timeout,
                peer_links=tls is None,  # with TLS, nodes talk over Pyro5 only
                secret=secret,
                max_message=max_message,
                ssl=text_tls,
                password=None if password is None else password.encode("utf-8"),
                stats=handle.stats,
                registry=registry,
                event_loop=event_loop,
            )
        except OSError as exc:
            daemon.close()
            raise ListenError.of(
                "listen",
                f"node {name!r} cannot serve the text protocol on "
                f"{listen[0]}:{listen[1]}: {exc.strerror or exc}",
            ) from None
    if handle.text is not None:
        log.info("node %r: event loop: %s", name, handle.text.event_loop)
        router.live.loop = handle.text.loop
        router.live.on_release = handle.text.release
    _join_cluster_table(handle)
    if metrics is not None:
        try:
            handle.metrics = metrics_module.serve_metrics(
                metrics, handle.stats, runner.info
            )
        except BaseException:
            if handle.text is not None:
                handle.text.stop()
            daemon.close()
            raise
    try:
        handle._start(replace=stale)
    except Pyro5.errors.NamingError:
        handle.stop()
        raise _taken(name, "another node registered it just now") from None
    except Pyro5.errors.CommunicationError as exc:
        handle.stop()
        raise NameServerUnavailableError(
            f"node {name!r} cannot reach the name server at {ns[0]}:{ns[1]}: {exc} "
            "(start one with 'pyrokv nameserver', or point --ns at it)"
        ) from None
    return handle


def _check_options(options: dict[str, Any]) -> None:
    """The checks of :func:`start_node` that need no network: the text port's TLS,
    the metrics library, the password and secret files, the event loop. Each
    raises a :class:`ConfigError`."""
    _text_tls(
        options.get("listen"),
        options.get("tls"),
        options.get("listen_tls", False),
        options.get("listen_tls_verify_client", False),
    )
    if options.get("metrics") is not None:
        metrics_module.check_available()
    if options.get("password_file") is not None:
        read_password(options["password_file"])
    if options.get("secret_file") is not None:
        peering.read_secret(options["secret_file"])
    check_event_loop(options.get("event_loop", DEFAULT_EVENT_LOOP))


def _text_tls(
    listen: tuple[str, int] | None,
    tls: TLSSettings | None,
    listen_tls: bool,
    verify_client: bool,
) -> ssl.SSLContext | None:
    """The text port's TLS context (``--listen-tls``), or None; a ConfigError when
    the options do not go together."""
    if verify_client and not listen_tls:
        raise ConfigError(
            "--listen-tls-verify-client (listen_tls_verify_client) goes with "
            "--listen-tls (listen_tls)"
        )
    if not listen_tls:
        return None
    if listen is None:
        raise ConfigError(
            "--listen-tls (listen_tls) needs a text port: --listen HOST:PORT "
            "(listen under [node NAME], for 'pyrokv up')"
        )
    if tls is None:
        raise ConfigError(
            "--listen-tls (listen_tls) serves the text port with this node's "
            "certificate: give --tls-cert, --tls-key and --tls-ca (or [tls] cert, "
            "key, ca)"
        )
    return tls.text_context(verify_client)


#: The meta keys under which a node keeps its table version and table (in its data
#: dir when it has one).
META_VERSION = "table_version"
META_TABLE = "table"


def _join_cluster_table(handle: NodeHandle) -> None:
    """From version 1 on, a node that starts takes the cluster's table, whatever
    its own: the highest version a live node is at, or the one in its data dir if
    that is higher (a node with a data dir keeps its version across restarts).
    With neither at version 1 or more, the node routes by its own table at
    version 0. Buckets it holds (from its data dir) that another node owns by that
    table are handed to their owner before it registers; those whose owner cannot
    be reached are kept aside, never served (``pyrokv status`` reports them).
    Every later switch is kept in the meta values."""
    from .changes import node_states

    live = handle.router.live
    assert live is not None
    stored = int(handle.meta_get(META_VERSION, 0) or 0)
    stored_table = handle.meta_get(META_TABLE)
    try:
        alive, _down, _uris = node_states(
            handle.ns, min(handle.router.timeout, 2.0), skip=handle.name
        )
    except Exception as exc:  # no name server yet: start alone
        log.debug("no table to join: %s", exc)
        alive = {}
    best = max(alive.values(), key=lambda s: s["version"], default=None)
    own = handle.router.table
    if best is not None and best["version"] >= max(stored, 1):
        version, table = best["version"], RoutingTable.parse(best["table"])
        whence = "the cluster's table"
    elif stored >= 1 and isinstance(stored_table, str):
        version, table = stored, RoutingTable.parse(stored_table)
        whence = "the table in its data dir"
    else:
        version = 0
    if version >= 1:
        live.adopt(version, table)
        log.info(
            "node %r takes %s, version %d: %s (instead of its own table %s)",
            handle.name,
            whence,
            version,
            table.spec() or "(empty)",
            own.spec() or "(empty)",
        )
        failed = live.hand_off_strays()
        for owner, why in failed.items():
            log.warning(
                "node %r keeps aside the buckets of node %r it holds (%s): they are "
                "not served; they go to %r at the next table change, or when this "
                "node starts again",
                handle.name,
                owner,
                why,
                owner,
            )

    def keep(version: int, table: RoutingTable) -> None:
        handle.meta_set(META_VERSION, version)
        handle.meta_set(META_TABLE, table.spec())

    live.on_switch.append(keep)
    if version >= 1 and stored != version:
        keep(version, table)


def read_password(path: str) -> str:
    """The text port's password in file ``path``; a ConfigError naming the file
    when it cannot be read, is empty, or holds whitespace inside."""
    try:
        with open(path, encoding="utf-8") as file:
            password = file.read(4096).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the password file {path}: {exc}") from None
    if not password or any(c.isspace() for c in password):
        raise ConfigError(
            f"the password file {path} must hold one word (AUTH sends it as one): "
            "no spaces, not empty"
        )
    return password


def _refuse_if_live(name: str, ns: tuple[str, int], timeout: float) -> bool:
    """Raise if a live node holds ``name``; return True if a dead node's entry does."""
    host, port = ns
    try:
        with naming.ns_proxy(host, port, timeout) as proxy:
            uri = proxy.lookup(naming.tasks_name(name))
    except Pyro5.errors.NamingError:
        return False  # not registered
    except Pyro5.errors.PyroError as exc:
        if naming.not_a_name_server(exc):
            raise NameServerUnavailableError.not_a_name_server(
                host, port, exc
            ) from None
        raise NameServerUnavailableError(
            f"node {name!r} cannot reach the name server at {host}:{port}: {exc} "
            "(start one with 'pyrokv nameserver', or point --ns at it)"
        ) from None
    try:
        with Proxy(uri) as other:
            other._pyroTimeout = min(timeout, 2.0)
            other._pyroBind()
    except Pyro5.errors.CommunicationError:
        return True  # a dead node's registration: ours replaces it
    raise _taken(name, f"a live node answers at {uri.location}")


def _taken(name: str, why: str) -> NameTakenError:
    return NameTakenError(
        f"node name {name!r} is taken: {why}; stop that node or pick another name"
    )


def open_files_wanted(workers: int) -> int:
    """Files a node may hold open at once: the text server's connections and its
    reserve for peers, a connection per Pyro5 worker, and room for the rest
    (listening sockets, peer links, name-server look-ups, its log and data dir)."""
    return DEFAULT_MAX_CONNECTIONS + PEER_RESERVE + workers + 256


def raise_open_files(workers: int) -> None:
    """Raise this process's soft limit of open files to :func:`open_files_wanted`
    (as far as the hard limit allows; never lower it). Many systems start
    processes at 1,024, fewer than a node's 1,000 text connections need."""
    try:
        import resource
    except ImportError:  # not a Unix system
        return
    want = open_files_wanted(workers)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < want:
        log.warning(
            "this node may open only %d files (the hard limit, ulimit -Hn), fewer "
            "than the %d its connections may need: raise the hard limit",
            new,
            want,
        )


def serve_node(
    name: str,
    table: RoutingTable,
    ns: tuple[str, int],
    *,
    ns_wait: float = 0.0,
    **options: Any,
) -> int:
    """Run node ``name`` until SIGTERM or Ctrl-C (``pyrokv node``); return the exit code.

    The process's daemons refuse what :mod:`pyrokv.guard` says, before decoding it.
    A name server not up yet is waited for, up to ``ns_wait`` seconds (a stop
    signal ends the wait).
    """
    setup_pyro()
    guard_daemons(options.get("max_message", DEFAULT_MAX_MESSAGE), refuse_uris=True)
    _check_options(options)  # a configuration error is told at once, not after a wait
    raise_open_files(options.get("workers", DEFAULT_WORKERS))
    with StopSignals() as signals:
        timeout = options.get("timeout", DEFAULT_TIMEOUT)
        if ns_wait <= 0 or naming.wait_for_nameserver(
            *ns, ns_wait, signals.stop, timeout
        ):
            with start_node(name, table, ns, **options) as handle:
                if handle.text is not None:
                    host, port = handle.text.address
                    print(f"LISTEN {name} {host}:{port}", flush=True)
                if handle.metrics is not None:
                    host, port = handle.metrics.address
                    print(f"METRICS {name} {host}:{port}", flush=True)
                print(f"READY {name} {handle.uri}", flush=True)
                signals.wait()
    print(f"STOPPED {name}", file=sys.stderr, flush=True)
    return 0
