"""The text protocol of the Elixir guide's KVServer: parse a line, format a reply. Pure.

A request is one line of whitespace-separated words, ended by ``\\r\\n`` or ``\\n``::

    CREATE bucket          -> OK
    PUT bucket key value   -> OK
    GET bucket key         -> value\\r\\nOK      (missing key: an empty value line)
    DELETE bucket key      -> OK

Words are bytes: a line is decoded as UTF-8 with ``surrogateescape``, so any byte
but whitespace (NUL and bytes that are not UTF-8 included) is stored and returned
exactly. See docs/protocol.md.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .errors import BucketNotFoundError, PyroKVError

__all__ = [
    "DEFAULT_MAX_LINE",
    "LINE_TOO_LONG",
    "NOT_FOUND",
    "OK",
    "UNKNOWN",
    "Command",
    "error_reply",
    "forward_line",
    "framed",
    "get_reply",
    "parse_forwarded",
    "parse_line",
    "reply_for",
    "value_reply",
]

DEFAULT_MAX_LINE = 64 * 1024

OK = b"OK\r\n"
_LINE_OK = b"\r\nOK\r\n"
NOT_FOUND = b"NOT FOUND\r\n"
UNKNOWN = b"UNKNOWN COMMAND\r\n"
LINE_TOO_LONG = b"ERROR line too long\r\n"

#: command word -> (task, number of words after the command)
_COMMANDS: dict[bytes, tuple[str, int]] = {
    b"CREATE": ("pyrokv.tasks.create", 1),
    b"PUT": ("pyrokv.tasks.put", 3),
    b"GET": ("pyrokv.tasks.get", 2),
    b"DELETE": ("pyrokv.tasks.delete", 2),
}


class Command(NamedTuple):
    """A parsed request: the task to route by ``bucket``, with its arguments."""

    verb: bytes
    task: str
    bucket: str
    args: list[str]


def parse_line(line: bytes) -> Command | None:
    """Parse one request line (without or with its line ending); None if it is not a command."""
    words = line.split()
    if not words:
        return None
    spec = _COMMANDS.get(words[0])
    if spec is None or len(words) != spec[1] + 1:
        return None
    args = [w.decode("utf-8", "surrogateescape") for w in words[1:]]
    return Command(words[0], spec[0], args[0], args)


def value_reply(value: Any) -> bytes:
    """The reply to a GET: the value's line, then OK. A missing key is an empty line."""
    if value is None:
        data = b""
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    else:  # stored by the Python client as another type
        data = repr(value).encode("utf-8", "backslashreplace")
    if 10 in data or 13 in data:  # b"\n", b"\r" (an int is the fast membership test)
        return (
            b"ERROR the value holds a line break and cannot be sent as one line; "
            b"read it with the Python client\r\n"
        )
    return data + b"\r\n" + OK


def error_reply(exc: BaseException) -> bytes:
    """The reply to a request that failed with ``exc``."""
    if isinstance(exc, BucketNotFoundError):
        return NOT_FOUND
    text = str(exc) if isinstance(exc, PyroKVError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())  # one line, whatever the message holds
    return b"ERROR " + text.encode("utf-8", "backslashreplace") + b"\r\n"


def forward_line(budget: float, path: list[str], line: bytes) -> bytes:
    """A request forwarded node to node: ``FWD <ms left> <path> <original line>``."""
    return b"FWD %d %s %s\r\n" % (
        max(int(budget * 1000), 0),
        ",".join(path).encode("ascii"),
        line.rstrip(b"\r\n"),
    )


def parse_forwarded(line: bytes) -> tuple[float, list[str], bytes] | None:
    """Read a ``FWD`` line into (seconds left, nodes visited, original line)."""
    parts = line.split(b" ", 3)
    if len(parts) != 4 or not parts[1].isdigit() or not parts[2]:
        return None
    try:
        path = parts[2].decode("ascii").split(",")
    except UnicodeDecodeError:
        return None
    return int(parts[1]) / 1000, path, parts[3]


def framed(reply: bytes) -> bytes:
    """A reply to a ``FWD`` line: its length on a line of its own, then the reply."""
    return b"%d\r\n%s" % (len(reply), reply)


def reply_for(command: Command, result: Any) -> bytes:
    """The reply to a command that succeeded with ``result``."""
    return get_reply(result) if command.verb == b"GET" else OK


def get_reply(value: Any) -> bytes:
    """:func:`value_reply`, quicker for the common case: a one-line str."""
    if type(value) is str:
        data = value.encode("utf-8", "surrogateescape")
        if 10 not in data and 13 not in data:  # no b"\n" or b"\r"
            return data + _LINE_OK
    return value_reply(value)
