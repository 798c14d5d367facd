"""Every name-server name and metadata string pyrokv uses, and the way to reach the name server."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import Pyro5.errors
from Pyro5.api import Proxy

from .errors import ConfigError, NameServerUnavailableError

__all__ = [
    "NODE_METADATA",
    "NS_OBJECT",
    "TABLE_NAME",
    "TABLE_SPEC",
    "TABLE_VERSION",
    "TEXT_METADATA",
    "node_of",
    "node_prefix",
    "not_a_name_server",
    "ns_proxy",
    "parse_address",
    "parse_port",
    "parse_table_metadata",
    "registry_name",
    "remove_node",
    "table_metadata",
    "tasks_name",
    "text_address",
    "text_metadata",
    "wait_for_nameserver",
]

log = logging.getLogger("pyrokv.naming")

#: Metadata on both of a node's registrations: ``list(metadata_all={NODE_METADATA})``.
NODE_METADATA = "pyrokv.node"
#: The object id of Pyro5's own name server.
NS_OBJECT = "Pyro.NameServer"
_PREFIX = "pyrokv."


#: The name server's copy of the cluster's routing table (version >= 1): a
#: registration whose metadata holds TABLE_VERSION and TABLE_SPEC items.
TABLE_NAME = "pyrokv.table"
TABLE_VERSION = "pyrokv.table.version="
TABLE_SPEC = "pyrokv.table.spec="


def table_metadata(version: int, spec: str) -> set[str]:
    """The metadata of the name server's copy of table ``version``."""
    return {TABLE_VERSION + str(version), TABLE_SPEC + spec}


def parse_table_metadata(metadata: object) -> tuple[int, str] | None:
    """(version, spec) from :func:`table_metadata`'s items; None if they are not there."""
    version = spec = None
    for item in metadata if isinstance(metadata, (set, list, tuple)) else ():
        if isinstance(item, str) and item.startswith(TABLE_VERSION):
            digits = item[len(TABLE_VERSION) :]
            version = int(digits) if digits.isdigit() else None
        elif isinstance(item, str) and item.startswith(TABLE_SPEC):
            spec = item[len(TABLE_SPEC) :]
    if version is None or spec is None:
        return None
    return version, spec


def registry_name(node: str) -> str:
    """``pyrokv.<node>.registry``: the node's Registry."""
    return f"{_PREFIX}{node}.registry"


def node_prefix(node: str) -> str:
    """``pyrokv.<node>.``: the start of each of the node's names."""
    return f"{_PREFIX}{node}."


def tasks_name(node: str) -> str:
    """``pyrokv.<node>.tasks``: the node's TaskRunner."""
    return f"{_PREFIX}{node}.tasks"


#: Metadata prefix on a node's tasks registration: where it serves the text protocol.
TEXT_METADATA = "pyrokv.text="


def text_metadata(host: str, port: int) -> str:
    """The metadata string that says a node serves the text protocol at host:port."""
    return f"{TEXT_METADATA}{host}:{port}"


def text_address(metadata: object) -> tuple[str, int] | None:
    """The text address in a node's registration metadata, if it has one."""
    for item in metadata or ():  # type: ignore[attr-defined]
        if isinstance(item, str) and item.startswith(TEXT_METADATA):
            try:
                return parse_address(item[len(TEXT_METADATA) :])
            except ValueError:
                return None
    return None


def node_of(name: str) -> str | None:
    """The node a ``pyrokv.<node>.tasks`` name belongs to, else None."""
    if name.startswith(_PREFIX) and name.endswith(".tasks"):
        return name[len(_PREFIX) : -len(".tasks")]
    return None


def parse_port(text: str) -> int:
    """Read a port number, 0..65535 (0: any free port); ValueError saying why not.

    The one port check: the config file, the ``--port`` flags and
    :func:`parse_address` all use it.
    """
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0..65535")
    return port


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """Read ``HOST:PORT`` (``[::1]:9090`` for IPv6) into (host, port)."""
    host, sep, port = str(text).strip().rpartition(":")
    host = host.strip("[]")
    try:
        if not sep or not host or not port.isdigit() or "/" in host:
            raise ValueError(port)
        return host, parse_port(port)
    except ValueError:
        raise ConfigError(
            f"invalid {what} {text!r}: expected HOST:PORT, for example 127.0.0.1:9090"
        ) from None


def not_a_name_server(exc: BaseException) -> bool:
    """Whether a Pyro5 error from a name-server call means that something answers at
    that address, but not a name server: a text port (Pyro5 reads "invalid data"),
    or another Pyro5 daemon, which rejects the connection to ``Pyro.NameServer`` as
    an "unknown object"."""
    if isinstance(exc, (Pyro5.errors.ProtocolError, Pyro5.errors.DaemonError)):
        return True
    return isinstance(exc, Pyro5.errors.CommunicationError) and str(exc).endswith(
        "rejected: unknown object"
    )


def ns_proxy(host: str, port: int, timeout: float) -> Any:
    """A proxy for Pyro5's name server at host:port, with a timeout; no broadcast."""
    proxy = Proxy(f"PYRO:{NS_OBJECT}@{_uri_host(host)}:{port}")
    proxy._pyroTimeout = timeout
    return proxy


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def wait_for_nameserver(
    host: str, port: int, wait: float, stop: threading.Event, timeout: float
) -> bool:
    """Block until the name server at host:port answers, retrying for up to ``wait``
    seconds (``pyrokv node`` started before its name server, under systemd or
    compose); True once it answers, False when ``stop`` is set meanwhile.

    Logs once that it waits. Raises :class:`NameServerUnavailableError` when the
    time is up, and at once when something else answers at that address.
    """
    deadline = time.monotonic() + wait
    delay, waiting = 0.1, False
    while True:
        try:
            with ns_proxy(host, port, timeout) as proxy:
                proxy.ping()
        except Pyro5.errors.PyroError as exc:
            if not_a_name_server(exc) or not isinstance(
                exc, Pyro5.errors.CommunicationError
            ):  # it answers, but in another protocol or as another Pyro5 daemon
                raise NameServerUnavailableError.not_a_name_server(
                    host, port, exc
                ) from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise NameServerUnavailableError.at(
                    host, port, f"{exc}; waited {wait:g}s for it"
                ) from None
            if not waiting:
                waiting = True
                log.warning(
                    "the name server at %s:%d does not answer (%s): waiting up to "
                    "%gs for it",
                    host,
                    port,
                    exc,
                    wait,
                )
            if stop.wait(min(delay, left)):
                return False
            delay = min(delay * 2, 1.0)
            continue
        if waiting:
            log.info("the name server at %s:%d answers", host, port)
        return True


def remove_node(host: str, port: int, node: str, uri: object, timeout: float) -> bool:
    """Remove ``node``'s two registrations from the name server at host:port, if its
    TaskRunner's name still points at ``uri`` (the registration seen dead, not one a
    restarted node made since); True if they were removed.

    Pyro5's name server has no compare-and-remove: a node that registers again
    between the look-up and the removal loses its names until it checks them (every
    few seconds) and registers again.
    """
    try:
        with ns_proxy(host, port, timeout) as proxy:
            try:
                current = proxy.lookup(tasks_name(node))
            except Pyro5.errors.NamingError:
                return False  # gone already
            if str(current) != str(uri):
                return False  # registered again meanwhile: not the dead one
            proxy.remove(tasks_name(node))
            proxy.remove(registry_name(node))
    except Pyro5.errors.PyroError as exc:
        raise NameServerUnavailableError.at(host, port, exc) from None
    return True
