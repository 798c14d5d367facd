"""The event loop a node's text server runs on: asyncio's own, or uvloop's.

``[node NAME] event_loop`` (``--event-loop``) picks it: ``auto`` (the default)
takes uvloop when it is installed (``pip install 'pyrokv[fast]'``), else asyncio's;
``asyncio`` always takes asyncio's; ``uvloop`` requires uvloop. Both run the same
code; the node logs the one it runs on. docs/performance.md, "uvloop", has the
measurements that made uvloop the default when installed, and why a node calls
``malloc_trim`` (:mod:`pyrokv.malloc`) after closing a connection that did not read.
"""

from __future__ import annotations

import asyncio
import importlib.util

from .defaults import EVENT_LOOPS
from .errors import ConfigError

__all__ = ["EVENT_LOOPS", "check_event_loop", "new_event_loop", "resolve"]


def _uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> str:
    """The loop ``choice`` stands for here: ``asyncio`` or ``uvloop``.

    Raises :class:`ConfigError` for ``uvloop`` when it is not installed, or for a
    choice that is none of :data:`EVENT_LOOPS`.
    """
    if choice not in EVENT_LOOPS:
        raise ConfigError(
            f"event loop {choice!r} is not one of {', '.join(EVENT_LOOPS)} "
            "(--event-loop, event_loop)"
        )
    if choice == "auto":
        return "uvloop" if _uvloop_installed() else "asyncio"
    if choice == "uvloop" and not _uvloop_installed():
        raise ConfigError(
            "event loop 'uvloop' (--event-loop, event_loop) needs uvloop: pip "
            "install 'pyrokv[fast]', or use event_loop = auto or asyncio"
        )
    return choice


def check_event_loop(choice: str) -> None:
    """Raise :class:`ConfigError` if ``choice`` cannot be served here (see :func:`resolve`)."""
    resolve(choice)


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """A new event loop of the kind ``choice`` resolves to."""
    if resolve(choice) == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()
