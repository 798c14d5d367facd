"""How a pyrokv process is stopped: SIGTERM, SIGINT (Ctrl-C) and SIGHUP, handled alike.

``pyrokv node``, ``pyrokv nameserver`` and ``pyrokv up`` all run under
:class:`StopSignals`, so each stops cleanly (a node unregisters first; ``up``
stops its children) whichever of the three arrives.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["STOP_SIGNALS", "StopSignals"]

#: The signals that stop a pyrokv process cleanly (a node unregisters first).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopSignals:
    """SIGTERM, SIGINT (Ctrl-C) and SIGHUP (terminal closed) set an event, from the
    moment this is entered; leaving it puts the previous handlers back.

    Enter it *before* printing READY: a parent that stops the child as soon as it
    reads READY must find the handler in place, or the child dies of the signal's
    default action instead of unregistering.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        def handler(_signum: int, _frame: object) -> None:
            self.stop.set()

        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, handler)
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a signal arrived (True), or for at most ``timeout`` seconds."""
        if timeout is not None:
            return self.stop.wait(timeout)
        while not self.stop.wait(1.0):
            pass
        return True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
