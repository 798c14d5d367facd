"""The name-server directory: where each node is, cached for every thread of a process.

One look-up of ``pyrokv.<node>.tasks`` (with its metadata) gives both addresses of a
node: its Pyro5 URI and the address of its text port, if it serves one. Both are
cached until a caller reports that they failed (:meth:`Directory.forget`,
:meth:`Directory.forget_text`); each cached URI carries an *epoch*, a number that
grows with every look-up, so a proxy built from an older look-up can tell it is
stale. Failures of the name server itself become pyrokv errors here.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import Pyro5.errors

from . import naming
from .errors import (
    NameServerUnavailableError,
    NodeNotRegisteredError,
    NodeTimeoutError,
)

__all__ = ["Directory", "Entry"]

log = logging.getLogger("pyrokv.directory")


@dataclass(frozen=True, slots=True)
class Entry:
    """Where node ``node`` was, at the look-up numbered ``epoch``."""

    node: str
    uri: Any  # Pyro5.core.URI of its TaskRunner
    text: tuple[str, int] | None  # its text port, if it serves one
    epoch: int


class Directory:
    """Looks nodes up in the name server at ``ns`` and caches where they are."""

    def __init__(self, ns: tuple[str, int], timeout: float) -> None:
        self.ns = ns
        self.timeout = float(timeout)
        #: Where each node is, as last looked up (read it with :meth:`cached`,
        #: or directly on a hot path).
        self.entries: dict[str, Entry] = {}
        self._text: dict[str, tuple[str, int] | None] = {}
        self._epochs = itertools.count(1)
        self._lock = threading.Lock()
        #: The nodes that failed their last call (empty in the common case).
        self.down: set[str] = set()

    def cached(self, node: str) -> Entry | None:
        """The cached entry of ``node``, without asking the name server."""
        return self.entries.get(node)

    def lookup(self, node: str, deadline: float) -> Entry:
        """Ask the name server where ``node`` is (blocking, until ``deadline``); cache it.

        Raises :class:`NodeNotRegisteredError`, :class:`NodeTimeoutError` (the name
        server did not answer in time) or :class:`NameServerUnavailableError`.
        """
        host, port = self.ns
        timeout = max(deadline - time.monotonic(), 0.001)
        proxy = naming.ns_proxy(host, port, timeout)
        try:
            with proxy:
                uri, metadata = proxy.lookup(
                    naming.tasks_name(node), return_metadata=True
                )
        except Pyro5.errors.NamingError as exc:
            raise NodeNotRegisteredError(
                f"node {node!r} is not registered in the name server at "
                f"{host}:{port}: start it with 'pyrokv node {node}'"
            ) from exc
        except Pyro5.errors.TimeoutError as exc:
            raise NodeTimeoutError(
                f"node {node!r} was not reached in time: the name server at "
                f"{host}:{port} did not say where it is within {timeout:.1f}s"
            ) from exc
        except Pyro5.errors.CommunicationError as exc:
            raise NameServerUnavailableError(
                f"cannot reach the name server at {host}:{port} to find node "
                f"{node!r}: {exc}"
            ) from exc
        with self._lock:
            entry = Entry(node, uri, naming.text_address(metadata), next(self._epochs))
            self.entries[node] = entry
            self._text[node] = entry.text
        return entry

    def text_address(self, node: str) -> tuple[str, int] | None:
        """Where ``node`` serves the text protocol; None if it does not.

        Blocking (a name-server call) unless cached; cached until :meth:`forget_text`.
        """
        if node in self._text:
            return self._text[node]
        return self.lookup(node, time.monotonic() + self.timeout).text

    def forget(self, node: str) -> None:
        """Drop ``node``'s cached URI: a call to it failed, it may have moved."""
        self.entries.pop(node, None)

    def forget_text(self, node: str) -> None:
        """Drop ``node``'s cached text address: its peer link failed."""
        self._text.pop(node, None)

    def mark_down(self, node: str, why: object) -> None:
        """A request to ``node`` failed: log it once per outage, not per request."""
        with self._lock:
            if node in self.down:
                return
            self.down.add(node)
        log.warning("node %r is unreachable: %s", node, why)

    def mark_up(self, node: str) -> None:
        """``node`` answered: log that it is back if it was down."""
        if node not in self.down:  # the common case: no lock
            return
        with self._lock:
            if node not in self.down:
                return
            self.down.discard(node)
        log.info("node %r is reachable again", node)

    def clear(self) -> None:
        """Forget every node."""
        self.entries.clear()
        self._text.clear()
