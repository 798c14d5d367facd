"""Logging: how the long-running commands log (:func:`configure`), and warnings
about hostile or broken peers at a bounded rate (:class:`RateLimited`)."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["LEVELS", "RateLimited", "configure"]


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


#: The levels ``--log-level`` takes.
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_FORMAT = "%(asctime)s %(levelname)s %(who)s %(name)s: %(message)s"


def configure(level: str = "INFO", who: str = "-") -> None:
    """Log to stderr at ``level``, one line per event: time, level, who (the node's
    name, ``nameserver`` or ``up``), logger and message. For the long-running
    commands (``pyrokv node``, ``nameserver``, ``up``); library code only logs.
    """
    if level.upper() not in LEVELS:
        raise ValueError(
            f"{level!r} is not a log level: use one of {', '.join(LEVELS)}"
        )
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(_FORMAT, "%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(_Who(who))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Pyro5 logs every connection, and every failed connect as an ERROR: one line
    # per request while a node is down. pyrokv logs those events itself, once per
    # outage; Pyro5's own lines show at DEBUG only.
    logging.getLogger("Pyro5").setLevel(
        logging.DEBUG if root.level <= logging.DEBUG else logging.CRITICAL
    )


class _Who(logging.Filter):
    def __init__(self, who: str) -> None:
        super().__init__()
        self.who = who

    def filter(self, record: logging.LogRecord) -> bool:
        record.who = self.who
        return True
