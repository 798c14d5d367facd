"""The text protocol of the Elixir guide's KVServer: its verbs, lines and replies. Pure.

A request is one line of whitespace-separated words, ended by ``\\r\\n`` or ``\\n``::

    CREATE bucket          -> OK
    PUT bucket key value   -> OK
    GET bucket key         -> value\\r\\nOK      (missing key: an empty value line)
    DELETE bucket key      -> OK

Each verb is declared once, in :data:`VERBS`: its words, the task it maps to (whose
name is also the :class:`~pyrokv.Registry` method it calls) and the format of its
reply. The parser, the node's own handlers (:func:`handlers`), the owner side of a
forwarded line, the :class:`~pyrokv.Client` and the tests all read that table.

Words are bytes: a line is decoded as UTF-8 with ``surrogateescape``, so any byte
but whitespace (NUL and bytes that are not UTF-8 included) is stored and returned
exactly. See docs/protocol.md.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import tasks
from .defaults import DEFAULT_MAX_LINE
from .errors import BucketNotFoundError, ProtocolError, PyroKVError
from .table import check_node_name

__all__ = [
    "BUCKET",
    "CONNECTION",
    "DEFAULT_MAX_LINE",
    "FORWARD",
    "FORWARD_WORDS",
    "INTERNAL_ERROR",
    "LINE_TOO_LONG",
    "MOVING",
    "NODE",
    "NOT_FOUND",
    "OK",
    "UNKNOWN",
    "VERBS",
    "Command",
    "Handler",
    "Verb",
    "error_reply",
    "forward_head",
    "forward_line",
    "forward_request",
    "framed",
    "handlers",
    "info_reply",
    "keys_reply",
    "parse_forward",
    "parse_line",
    "pong_reply",
    "reply_for",
    "value_reply",
]

log = logging.getLogger("pyrokv.protocol")

OK = b"OK\r\n"
_LINE_OK = b"\r\nOK\r\n"
NOT_FOUND = b"NOT FOUND\r\n"
UNKNOWN = b"UNKNOWN COMMAND\r\n"
LINE_TOO_LONG = b"ERROR line too long\r\n"
#: What a client sees when handling its request failed inside the node (the node
#: logs the detail; nothing internal reaches the client).
INTERNAL_ERROR = b"ERROR internal error (see the node's log)\r\n"
_MULTILINE = (
    b"ERROR the value holds a line break and cannot be sent as one line; "
    b"read it with the Python client\r\n"
)

#: The reply to a ``FWD`` line whose bucket's range is still arriving at this node:
#: the sender sends it again over Pyro5, where it waits on a thread of its own, so
#: the peer link (whose replies come in order) is not held. No reply to a request
#: is this line alone (a value comes with OK after it).
MOVING = b"MOVING\r\n"

#: The first word of a line forwarded node to node (see :func:`forward_line`).
FORWARD = b"FWD"


def value_reply(value: Any) -> bytes:
    """The reply to a GET: the value's line, then OK. A missing key is an empty line."""
    if type(value) is str:  # the common case first: a value stored as text
        data = value.encode("utf-8", "surrogateescape")
    elif value is None:
        data = b""
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    else:  # stored by the Python client as another type
        data = repr(value).encode("utf-8", "backslashreplace")
    if 10 in data or 13 in data:  # b"\n", b"\r" (an int is the fast membership test)
        return _MULTILINE
    return data + _LINE_OK


def keys_reply(keys: Any) -> bytes:
    """The reply to KEYS: the number of keys on a line, each key on its own, then OK."""
    lines = [_text(key) for key in keys]
    if any(10 in line or 13 in line for line in lines):
        return (
            b"ERROR a key holds a line break and cannot be sent as one line; "
            b"list the keys with the Python client\r\n"
        )
    return b"%d\r\n" % len(lines) + b"".join(line + b"\r\n" for line in lines) + OK


def info_reply(info: Any) -> bytes:
    """The reply to INFO: a ``NAME VALUE`` line per field, then OK."""
    lines = []
    for name, value in info.items():
        if isinstance(value, (list, tuple)):
            text = ",".join(str(item) for item in value)
        else:
            text = value if isinstance(value, str) else repr(value)
        lines.append(f"{name} {' '.join(text.split()) or '-'}\r\n".encode())
    return b"".join(lines) + OK


def pong_reply(_result: Any) -> bytes:
    """The reply to PING."""
    return b"PONG\r\n"


def _text(value: Any) -> bytes:
    if type(value) is str:
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return repr(value).encode("utf-8", "backslashreplace")


#: What a verb acts on: a bucket (routed to its owner), the node the line reaches,
#: or the connection itself.
BUCKET, NODE, CONNECTION = "bucket", "node", "connection"


@dataclass(frozen=True)
class Verb:
    """One verb of the text protocol, declared once.

    ``params`` name the words after the verb. A ``bucket`` verb's first word is the
    bucket, which routes it to its owner; a ``node`` verb is answered by the node
    the line reaches; a ``connection`` verb by the connection (QUIT, AUTH).
    ``task`` is the task function a bucket or node verb runs, whose name is also the
    :class:`~pyrokv.Registry` method a bucket task calls; ``reply`` formats the
    task's result (None: the reply is ``OK``).
    """

    name: bytes
    params: tuple[str, ...]
    task: Callable[..., Any] | None = None
    reply: Callable[[Any], bytes] | None = None
    scope: str = BUCKET

    @property
    def words(self) -> int:
        """Words in a request line of this verb, the verb included."""
        return 1 + len(self.params)

    @property
    def task_name(self) -> str:
        """The dotted name the task runs under: ``pyrokv.tasks.get``."""
        assert self.task is not None, f"{self.name!r} runs no task"
        return f"{self.task.__module__}.{self.task.__name__}"

    @property
    def method(self) -> str:
        """The :class:`~pyrokv.Registry` method the task calls: ``get``."""
        assert self.task is not None, f"{self.name!r} runs no task"
        return self.task.__name__

    @property
    def usage_error(self) -> bytes:
        """The reply to a line of this verb with the wrong number of words."""
        return f"ERROR usage: {self.usage}\r\n".encode()

    @property
    def usage(self) -> str:
        """How a request of this verb is written: ``PUT BUCKET KEY VALUE``."""
        return " ".join([self.name.decode(), *self.params])

    def reply_to(self, result: Any) -> bytes:
        """The reply to a request of this verb whose task returned ``result``."""
        return OK if self.reply is None else self.reply(result)


#: Every verb, by its word.
VERBS: dict[bytes, Verb] = {
    verb.name: verb
    for verb in (
        Verb(b"CREATE", ("BUCKET",), tasks.create),
        Verb(b"PUT", ("BUCKET", "KEY", "VALUE"), tasks.put),
        Verb(b"GET", ("BUCKET", "KEY"), tasks.get, value_reply),
        Verb(b"DELETE", ("BUCKET", "KEY"), tasks.delete),
        Verb(b"KEYS", ("BUCKET",), tasks.keys, keys_reply),
        Verb(b"PING", (), tasks.ping, pong_reply, scope=NODE),
        Verb(b"INFO", (), tasks.info, info_reply, scope=NODE),
        Verb(b"QUIT", (), scope=CONNECTION),
        Verb(b"AUTH", ("PASSWORD",), scope=CONNECTION),
    )
}


class Command(NamedTuple):
    """A parsed request: the task to route by ``bucket``, with its arguments."""

    verb: bytes
    task: str
    bucket: str
    args: list[str]


def parse_line(line: bytes) -> Command | None:
    """Parse one request line for a bucket (without or with its line ending); None
    if it is not one."""
    words = line.split()
    verb = VERBS.get(words[0]) if words else None
    if verb is None or verb.scope != BUCKET or len(words) != verb.words:
        return None
    args = [w.decode("utf-8", "surrogateescape") for w in words[1:]]
    return Command(verb.name, verb.task_name, args[0], args)


def reply_for(command: Command, result: Any) -> bytes:
    """The reply to a command that succeeded with ``result``."""
    return VERBS[command.verb].reply_to(result)


def error_reply(exc: BaseException) -> bytes:
    """The reply to a request that failed with ``exc``.

    A pyrokv error is the client's to read (its text names what was wrong); any
    other exception is a fault inside the node: it is logged, with its traceback,
    and the client reads :data:`INTERNAL_ERROR`, never the exception's text.
    """
    if isinstance(exc, BucketNotFoundError):
        return NOT_FOUND
    if not isinstance(exc, PyroKVError):
        log.error("internal error while answering a request", exc_info=exc)
        return INTERNAL_ERROR
    text = " ".join(str(exc).split())  # one line, whatever the message holds
    return b"ERROR " + text.encode("utf-8", "backslashreplace") + b"\r\n"


# -- a node's own handlers ---------------------------------------------------------

#: Takes the words of a request line (``line.split()``, the verb first) and returns
#: the reply; raises what the registry raised.
Handler = Callable[[list[bytes]], bytes]


def handlers(registry: Any) -> dict[bytes, tuple[int, Handler, Verb]]:
    """Every verb run straight on ``registry``: word -> (words in its line, handler, verb).

    This is the path of every text request for a bucket of the node, so it is
    written for speed: no :class:`Command`, each word decoded where it is used, no
    task machinery (allowlist, context variable), which is there for tasks named
    by clients. A plain tuple, not a record: it is read once per request.
    """
    return {
        verb.name: (
            verb.words,
            _handler(getattr(registry, verb.method), verb.reply, len(verb.params)),
            verb,
        )
        for verb in VERBS.values()
        if verb.scope == BUCKET
    }


def _handler(
    method: Callable[..., Any], reply: Callable[[Any], bytes] | None, arity: int
) -> Handler:
    # One closure per shape (arity, reply or OK), not per verb; the words are
    # decoded inline because a generic loop over them costs more than the request.
    ok = OK
    if arity == 1 and reply is None:

        def run1(w: list[bytes]) -> bytes:
            method(w[1].decode("utf-8", "surrogateescape"))
            return ok

        return run1
    if arity == 2 and reply is None:

        def run2(w: list[bytes]) -> bytes:
            method(
                w[1].decode("utf-8", "surrogateescape"),
                w[2].decode("utf-8", "surrogateescape"),
            )
            return ok

        return run2
    if arity == 2 and reply is not None:
        answer = reply

        def get2(w: list[bytes]) -> bytes:
            return answer(
                method(
                    w[1].decode("utf-8", "surrogateescape"),
                    w[2].decode("utf-8", "surrogateescape"),
                )
            )

        return get2
    if arity == 1 and reply is not None:
        answer1 = reply

        def get1(w: list[bytes]) -> bytes:
            return answer1(method(w[1].decode("utf-8", "surrogateescape")))

        return get1
    if arity == 3 and reply is None:

        def run3(w: list[bytes]) -> bytes:
            method(
                w[1].decode("utf-8", "surrogateescape"),
                w[2].decode("utf-8", "surrogateescape"),
                w[3].decode("utf-8", "surrogateescape"),
            )
            return ok

        return run3

    def run_any(w: list[bytes]) -> bytes:  # any other shape: the general form
        result = method(*(x.decode("utf-8", "surrogateescape") for x in w[1:]))
        return OK if reply is None else reply(result)

    return run_any


# -- node to node ----------------------------------------------------------------

#: Longest budget a forwarded line may carry, in milliseconds (a day).
MAX_BUDGET_MS = 86_400_000


def forward_line(
    budget: float, path: Sequence[str], line: bytes, version: int = 0
) -> bytes:
    """A request forwarded node to node:
    ``FWD <ms left> <table version> <path> <original line>``."""
    return forward_head(int(budget * 1000), version, path) + forward_request(line)


def forward_head(ms: int, version: int, path: Sequence[str]) -> bytes:
    """The start of a ``FWD`` line, up to the request: ``FWD <ms> <version> <path> ``
    (a peer link keeps it while its ``ms``, version and path stay the same)."""
    return b"FWD %d %d %s " % (max(ms, 0), version, ",".join(path).encode("ascii"))


def forward_request(line: bytes) -> bytes:
    """The end of a ``FWD`` line: the request line as a client sent it."""
    return line.rstrip(b"\r\n") + b"\r\n"


#: The words of a ``FWD`` line before the request it carries.
FORWARD_WORDS = 4


def parse_forward(words: list[bytes]) -> tuple[float, int, tuple[str, ...]]:
    """The (seconds left, table version, nodes visited) of a ``FWD`` line's words;
    the request is ``words[FORWARD_WORDS:]``.

    Raises :class:`ProtocolError` naming the field that is malformed.
    """
    if len(words) <= FORWARD_WORDS:
        raise ProtocolError("FWD needs <ms left> <version> <path> <request>")
    if len(words[3]) > _CACHED_PATH:  # checked each time, not kept in the cache
        return _forward_fields.__wrapped__(words[1], words[2], words[3])
    return _forward_fields(words[1], words[2], words[3])


#: The longest path field whose parse is cached (the cache holds 256 of them).
_CACHED_PATH = 1024


@functools.lru_cache(maxsize=256)
def _forward_fields(
    ms: bytes, version: bytes, path: bytes
) -> tuple[float, int, tuple[str, ...]]:
    """The fields of a ``FWD`` line, checked. Cached: a peer sends the same few
    over and over (its budget is the timeout less a margin, in whole ms, and its
    path and version change with the table). An error is not cached: a peer that
    sends malformed lines pays for each."""
    if not ms.isdigit() or len(ms) > 9 or int(ms) > MAX_BUDGET_MS:
        raise ProtocolError(f"FWD budget {ms[:20]!r} is not 0..{MAX_BUDGET_MS} ms")
    if not version.isdigit() or len(version) > 18:
        raise ProtocolError(f"FWD table version {version[:20]!r} is not a number")
    try:
        nodes = tuple(check_node_name(name) for name in path.decode("ascii").split(","))
    except (UnicodeDecodeError, PyroKVError):
        raise ProtocolError(f"FWD path {path[:60]!r} is not node names") from None
    return int(ms) / 1000, int(version), nodes


def framed(reply: bytes) -> bytes:
    """A reply to a ``FWD`` line: its length on a line of its own, then the reply."""
    size = len(reply)
    return (_FRAME_HEADS[size] if size < 256 else b"%d\r\n" % size) + reply


#: The length lines of replies shorter than 256 bytes, made once: formatting one
#: costs more than the rest of a peer's request.
_FRAME_HEADS = tuple(b"%d\r\n" % size for size in range(256))
