"""Give the C heap's free memory back to the system: glibc's ``malloc_trim(0)``.

A connection that does not read its replies holds up to HARD_LIMIT of them in its
transport's buffer. When it closes, asyncio's loop frees those buffers and the
memory goes back to the system; uvloop frees them too, but glibc keeps the freed
pages for reuse, so the node's RSS stays high. :func:`trim` hands them back. The
server calls it (at most once a second, a second after the first such close)
when a connection stopped on unsent replies is lost; never per request.

Only on Linux with glibc; elsewhere :data:`AVAILABLE` is false and :func:`trim`
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from collections.abc import Callable

__all__ = ["AVAILABLE", "trim"]


def _malloc_trim() -> Callable[[int], int] | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_function = _malloc_trim()
#: Whether :func:`trim` can give memory back (Linux with glibc).
AVAILABLE = _function is not None


def trim() -> bool:
    """Return the heap's free pages to the system; whether any were returned."""
    return _function is not None and _function(0) == 1
