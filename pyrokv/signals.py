"""How a pyrokv process is stopped: SIGTERM, SIGINT (Ctrl-C) and SIGHUP, handled alike.

``pyrokv node``, ``pyrokv nameserver`` and ``pyrokv up`` all run under
:class:`StopSignals`, so each stops cleanly (a node unregisters first; ``up``
stops its children) whichever of the three arrives.
"""

from __future__ import annotations

import signal
import socket
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

    The Python-level handler takes no lock: a second signal can run a handler in
    the middle of the first (two signals in a row: Ctrl-C pressed twice, a
    SIGTERM sent again, one ``PR_SET_PDEATHSIG`` signal per thread of a dying
    parent), and a handler that blocked on the event's lock held by the handler it
    interrupted would hang the process for good. It only sets a flag; the event is set by a thread of its own that reads the signal
    numbers Python writes to a wakeup socket (``signal.set_wakeup_fd``).
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._signalled = False
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> StopSignals:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._wakeup = (reader, writer)
        self._previous_fd = signal.set_wakeup_fd(
            writer.fileno(), warn_on_full_buffer=False
        )
        self._watcher = threading.Thread(
            target=self._watch, args=(reader,), name="pyrokv-signals", daemon=True
        )
        self._watcher.start()

        def handler(_signum: int, _frame: object) -> None:
            self._signalled = True  # no lock here: see the class's docstring

        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, handler)
        return self

    def _watch(self, reader: socket.socket) -> None:
        """Set the event when a stop signal's number arrives; end at end of file."""
        stopping = {int(sig) for sig in STOP_SIGNALS}
        while True:
            try:
                data = reader.recv(256)
            except OSError:
                return
            if not data:
                return
            if stopping.intersection(data):
                self.stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a signal arrived (True), or for at most ``timeout`` seconds."""
        if timeout is not None:
            return self.stop.wait(timeout) or self._signalled
        while not self.stop.wait(1.0) and not self._signalled:
            pass
        return True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(self._previous_fd)
        if self._wakeup is not None:
            reader, writer = self._wakeup
            writer.close()  # the watcher reads end of file and ends
            if self._watcher is not None:
                self._watcher.join(timeout=5)
            reader.close()
