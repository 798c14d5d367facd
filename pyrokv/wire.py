"""The Pyro5 settings every pyrokv process shares; the one place that touches Pyro5's global config."""

from __future__ import annotations

import threading

import Pyro5.api

from .errors import register_with_pyro

__all__ = ["DEFAULT_WORKERS", "PEER_IDLE_TIMEOUT", "accept_serpent_only", "setup_pyro"]

#: A connection into a node's Pyro5 daemon that carries no request for this long is
#: closed by the node, so idle or half-open peers cannot hold its worker threads.
#: Routers reconnect on their own after half of it (see router.RECONNECT_IDLE).
PEER_IDLE_TIMEOUT = 60.0
#: Pyro5 worker threads per node; each open connection into the node holds one.
DEFAULT_WORKERS = 256

_done = threading.Lock()
_ready = False


def setup_pyro() -> None:
    """Configure Pyro5 for pyrokv once per process; idempotent.

    - serpent is the serializer (plain data only, no code);
    - ``SERPENT_BYTES_REPR``: bytes travel as bytes, not as base64 dicts;
    - ``SOCK_NODELAY``: small request/reply messages go out at once (Nagle's
      algorithm otherwise delays them);
    - every pyrokv error is rebuilt as its own class when it arrives;
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
        register_with_pyro()
        _ready = True


def accept_serpent_only() -> None:
    """Make this process's Pyro5 daemons refuse every serializer but serpent.

    A Pyro5 daemon decodes whatever serializer the client picks, marshal included
    (documented as unsafe on untrusted data), and has no setting to limit it. With
    the other serializers gone from ``serializers_by_id``, a message in one of them
    fails its lookup before any decoding, and the daemon closes that connection.
    Process-wide: ``pyrokv node`` and ``pyrokv nameserver`` call it at start-up.
    """
    from Pyro5 import serializers

    serpent_id = serializers.serializers["serpent"].serializer_id
    for key in list(serializers.serializers_by_id):
        if key != serpent_id:
            del serializers.serializers_by_id[key]
