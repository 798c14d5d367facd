"""The Pyro5 settings every pyrokv process shares; the one place that touches Pyro5's global config."""

from __future__ import annotations

import threading

import Pyro5.api

from .errors import register_with_pyro

__all__ = ["setup_pyro"]

_done = threading.Lock()
_ready = False


def setup_pyro() -> None:
    """Configure Pyro5 for pyrokv once per process; idempotent.

    - serpent is the serializer (plain data only, no code);
    - ``SERPENT_BYTES_REPR``: bytes travel as bytes, not as base64 dicts;
    - ``SOCK_NODELAY``: small request/reply messages go out at once (Nagle's
      algorithm otherwise delays them);
    - every pyrokv error is rebuilt as its own class when it arrives.
    Timeouts are set per proxy by the router and client, not here, so that idle
    connections into a node's daemon are not cut.
    """
    global _ready
    with _done:
        if _ready:
            return
        config = Pyro5.api.config
        config.SERIALIZER = "serpent"
        config.SERPENT_BYTES_REPR = True
        config.SOCK_NODELAY = True
        register_with_pyro()
        _ready = True
