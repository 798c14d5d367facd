"""Logging helpers: warnings about hostile or broken peers, at a bounded rate."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["RateLimited"]


class RateLimited:
    """Logs a warning at most once per ``every`` seconds, saying how many were held
    back since: a flood of refusals must not become a flood of log lines."""

    def __init__(self, log: logging.Logger, every: float = 10.0) -> None:
        self.log = log
        self.every = every
        self._lock = threading.Lock()
        self._last = -every
        self._quiet = 0

    def note(self, what: str) -> None:
        """Warn ``refused <what>``, unless a warning went out less than ``every`` ago."""
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.every:
                self._quiet += 1
                return
            quiet, self._quiet, self._last = self._quiet, 0, now
        more = f" (and {quiet} more since the last such warning)" if quiet else ""
        self.log.warning("refused %s%s", what, more)
