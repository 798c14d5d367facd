"""The event loop a node's text server runs on: asyncio's own, or uvloop's.

``[node NAME] event_loop`` (``--event-loop``) picks it: ``asyncio`` (the default)
or ``uvloop``, which needs uvloop installed (``pip install 'pyrokv[fast]'``). Both
run the same code. uvloop serves a local GET in about 40 % fewer instructions, but
a node on it keeps (for reuse) rather than returns to the system the memory of
the replies of connections it closed; docs/performance.md, "uvloop", has the
figures, and why asyncio's loop stays the default.
"""

from __future__ import annotations

import asyncio
import importlib.util

from .defaults import EVENT_LOOPS
from .errors import ConfigError

__all__ = ["EVENT_LOOPS", "check_event_loop", "new_event_loop"]


def check_event_loop(choice: str) -> None:
    """Raise :class:`ConfigError` for a choice that is none of :data:`EVENT_LOOPS`,
    or for ``uvloop`` when it is not installed."""
    if choice not in EVENT_LOOPS:
        raise ConfigError(
            f"event loop {choice!r} is not one of {', '.join(EVENT_LOOPS)} "
            "(--event-loop, event_loop)"
        )
    if choice == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigError(
            "event loop 'uvloop' (--event-loop, event_loop) needs uvloop: pip "
            "install 'pyrokv[fast]', or use event_loop = asyncio"
        )


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """A new event loop of kind ``choice`` (checked by :func:`check_event_loop`)."""
    check_event_loop(choice)
    if choice == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()
