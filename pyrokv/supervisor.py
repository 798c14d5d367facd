"""``pyrokv up``'s supervision of its children: one for one, as OTP's supervisors do.

A child (the name server or a node) that exits while ``up`` runs is started again
as it was started (the same command: the same config file, so the same settings),
and ``up`` says so in one line on stderr::

    pyrokv up: node bar exited (signal SIGKILL); restarting (1 of 3 in 10 s)

Only that child is restarted (one for one), and one child at a time: a child whose
turn comes while another is starting waits until that one is ready (printed its
``READY`` line). Restart intensity, as in OTP: more than :data:`INTENSITY` restarts
of the same child within :data:`PERIOD` seconds, and :meth:`Supervisor.check`
raises :class:`ChildError` naming the child that keeps failing and its log file;
``up`` then stops the cluster and exits 1.

:meth:`Supervisor.check` does not block: ``up``'s main thread calls it between
waits for a stop signal, and every child is forked from that thread (a child's
``PR_SET_PDEATHSIG`` fires when the thread that forked it ends).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from .cluster import START_TIMEOUT, Child, describe_exit
from .errors import ChildError

__all__ = ["INTENSITY", "PERIOD", "POLL", "Supervised", "Supervisor", "last_error"]

#: Restarts of one child allowed within PERIOD seconds; one more stops the cluster.
INTENSITY = 3
#: The window, in seconds, over which a child's restarts are counted.
PERIOD = 10.0
#: How often ``pyrokv up`` looks at its children, in seconds.
POLL = 0.1


@dataclass
class Supervised:
    """One child of the supervisor: what it is called, its process, its restarts."""

    label: str  # "node bar", "the name server": how the stderr lines name it
    child: Child  # the current process
    ready: str  # the start of the line it prints once it serves ("READY bar ")
    restarts: deque[float] = field(default_factory=deque)  # when, this PERIOD
    starting: float | None = None  # when the current process started, until ready
    waiting: bool = False  # exited; restarted when no other child is starting


class Supervisor:
    """Watches children, restarts those that exit, gives up on one that keeps failing."""

    def __init__(
        self,
        err: TextIO = sys.stderr,
        *,
        intensity: int = INTENSITY,
        period: float = PERIOD,
        start_timeout: float = START_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.err = err
        self.intensity = intensity
        self.period = period
        self.start_timeout = start_timeout
        self.clock = clock
        self.supervised: list[Supervised] = []
        #: How many times a child exited while supervised (0: none ever did).
        self.exits = 0

    def add(self, label: str, child: Child, ready: str) -> Supervised:
        """Supervise ``child``, started and ready; later ones are restarted after it."""
        entry = Supervised(label, child, ready)
        self.supervised.append(entry)
        return entry

    def children(self) -> list[Child]:
        """The current process of each supervised child, in the order added."""
        return [entry.child for entry in self.supervised]

    def check(self) -> None:
        """Restart what exited (one child at a time); never blocks.

        Raises :class:`ChildError` when a child exited more than ``intensity``
        restarts allow within ``period`` seconds.
        """
        now = self.clock()
        for entry in self.supervised:
            if entry.waiting:
                continue
            ended = self._ended(entry, now)
            if ended is not None:
                self._exited(entry, ended, now)
        if any(entry.starting is not None for entry in self.supervised):
            return
        turn = next((entry for entry in self.supervised if entry.waiting), None)
        if turn is not None:
            turn.child = turn.child.again()
            turn.starting = self.clock()
            turn.waiting = False

    def _ended(self, entry: Supervised, now: float) -> tuple[str, str] | None:
        """What happened to the child, as the stderr line says it (``exited (signal
        SIGKILL)``) and in short (``signal SIGKILL``); None while it runs (or
        starts, within ``start_timeout``)."""
        child = entry.child
        if child.alive():
            if entry.starting is None:
                return None
            if child.printed(entry.ready) is not None:
                entry.starting = None
                return None
            if now - entry.starting < self.start_timeout:
                return None
            child.kill()
            late = f"no {entry.ready.strip()} within {self.start_timeout:g} s"
            return f"did not start ({late}: killed)", late
        child.stop()  # reaps it, closes its pipes and its log
        how = describe_exit(child.proc.returncode)
        return f"exited ({how})", how

    def _exited(self, entry: Supervised, ended: tuple[str, str], now: float) -> None:
        what, how = ended
        self.exits += 1
        entry.starting = None
        while entry.restarts and now - entry.restarts[0] > self.period:
            entry.restarts.popleft()
        period = f"{self.period:g} s"
        if len(entry.restarts) >= self.intensity:
            self._say(
                f"{entry.label} {what}; not restarting it: "
                f"{len(entry.restarts)} restarts in {period} already"
            )
            said = last_error(entry.child)
            error = ChildError(
                f"{entry.label} keeps failing: it stopped {len(entry.restarts) + 1} "
                f"times within {period}, more than the {self.intensity} restarts "
                f"allowed in {period}, so pyrokv up stopped the cluster (the last "
                f"time: {how}{f'; it said: {said}' if said else ''}); its output "
                f"is in {entry.child.log or '(no log file)'}"
            )
            error.child = entry.child
            raise error
        entry.restarts.append(now)
        self._say(
            f"{entry.label} {what}; restarting "
            f"({len(entry.restarts)} of {self.intensity} in {period})"
        )
        entry.waiting = True

    def _say(self, text: str) -> None:
        print(f"pyrokv up: {text}", file=self.err, flush=True)

    def stop(self) -> None:
        """Stop every child: all but the first added at once (each is sent SIGTERM,
        then each is waited for), then the first. ``up`` adds the name server
        first, so the nodes stop together and can still unregister from it."""
        first, rest = self.supervised[:1], self.supervised[1:]
        for entry in rest:
            entry.child.terminate()
        for entry in [*reversed(rest), *first]:
            entry.child.stop()


def last_error(child: Child) -> str | None:
    """The child's last ``pyrokv: ClassName: text`` line, as its text; None if none."""
    for line in reversed(child.lines):
        if line.startswith("pyrokv: "):
            return line.split(": ", 2)[-1]
    return None
