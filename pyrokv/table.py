"""The routing table: which node owns a bucket, decided by the bucket's first byte.

Pure and immutable: no network, no Pyro5. Built from Python entries
(``range``, node) like Elixir's ``{?a..?m, :foo}``, or parsed from the text form
``a..m=foo, n..z=bar`` used by the command line and ``nameserver.conf``.
A lookup is one index into a precomputed 256-slot tuple, whatever the number of entries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import InvalidTableError, NoRouteError

__all__ = ["RoutingTable", "check_node_name"]

_NODE_NAME = re.compile(r"[A-Za-z0-9_-]+")
# Characters that the text form cannot carry as themselves; write them as numbers.
_SPECIAL = set(",=. \t\r\n")


def check_node_name(node: object) -> str:
    """Return ``node`` if it is a valid node name, else raise :class:`InvalidTableError`.

    A node name becomes part of name-server names (``pyrokv.<node>.tasks``), so it is
    limited to letters, digits, ``_`` and ``-``.
    """
    if not isinstance(node, str) or not _NODE_NAME.fullmatch(node):
        raise InvalidTableError(
            f"invalid node name {node!r}: use letters, digits, '_' or '-' "
            "(at least one character)"
        )
    return node


def _show_byte(byte: int) -> str:
    char = chr(byte)
    if 0x21 <= byte <= 0x7E and char not in _SPECIAL:
        return char
    return f"0x{byte:02x}"


def _show_range(start: int, end: int) -> str:
    if start == end:
        return _show_byte(start)
    return f"{_show_byte(start)}..{_show_byte(end)}"


def _parse_end(text: str, entry: str) -> int:
    text = text.strip()
    if len(text) == 1 and text not in _SPECIAL:
        return ord(text)
    try:
        if text.lower().startswith("0x"):
            value = int(text[2:], 16)
        elif len(text) > 1 and text.isdigit():
            value = int(text)
        else:
            raise ValueError(text)
    except ValueError:
        raise InvalidTableError(
            f"invalid range end {text!r} in entry {entry!r}: write one ASCII "
            "character, a byte number of two or more digits, or 0x00..0xff"
        ) from None
    if not 0 <= value <= 255:
        raise InvalidTableError(
            f"range end {text} in entry {entry!r} is outside 0..255"
        )
    return value


class RoutingTable:
    """Maps the first byte of a bucket name to the node that owns the bucket.

    Entries are inclusive byte ranges that must not overlap; a byte that no entry
    covers raises :class:`NoRouteError` on lookup. Tables compare by value, and
    ``repr`` gives the form used in error messages: ``[a..m -> foo, n..z -> bar]``.

    >>> table = RoutingTable.parse("a..m=foo, n..z=bar")
    >>> table.owner("hello"), table.owner(b"world")
    ('foo', 'bar')
    """

    __slots__ = ("_entries", "by_byte")

    _entries: tuple[tuple[int, int, str], ...]
    #: 256 entries: ``by_byte[b]`` owns the buckets whose name starts with byte ``b``
    #: (None: no entry covers it). :meth:`owner` is the checked way to ask.
    by_byte: tuple[str | None, ...]

    def __init__(self, entries: Iterable[tuple[range, str]] = ()) -> None:
        triples = []
        for entry in entries:
            try:
                span, node = entry
            except (TypeError, ValueError):
                raise InvalidTableError(
                    f"invalid entry {entry!r}: expected (range, node)"
                ) from None
            if not isinstance(span, range) or span.step != 1:
                raise InvalidTableError(
                    f"invalid entry {entry!r}: the first item must be a range with "
                    "step 1, such as range(ord('a'), ord('m') + 1)"
                )
            if len(span) == 0:
                raise InvalidTableError(
                    f"entry {entry!r} has an empty or reversed range"
                )
            triples.append((span.start, span.stop - 1, node))
        self._build(triples)

    def _build(self, triples: Iterable[tuple[int, int, str]]) -> None:
        slots: list[str | None] = [None] * 256
        checked = []
        for start, end, node in triples:
            if not (0 <= start <= 255 and 0 <= end <= 255):
                raise InvalidTableError(
                    f"entry {start}..{end} -> {node!r} has bytes outside 0..255"
                )
            shown = f"{_show_range(start, end)} -> {node!r}"
            try:
                check_node_name(node)
            except InvalidTableError as exc:
                raise InvalidTableError(f"entry {shown}: {exc}") from None
            if start > end:
                raise InvalidTableError(f"entry {shown} has a reversed range")
            for byte in range(start, end + 1):
                other = slots[byte]
                if other is not None:
                    raise InvalidTableError(
                        f"entry {shown} overlaps another entry at byte "
                        f"{_show_byte(byte)} (already routed to {other!r})"
                    )
                slots[byte] = node
            checked.append((start, end, node))
        self._entries = tuple(sorted(checked))
        self.by_byte = tuple(slots)

    # -- building -----------------------------------------------------------

    @classmethod
    def parse(cls, spec: str) -> RoutingTable:
        """Build a table from its text form, ``"a..m=foo, n..z=bar"``.

        An end is one ASCII character (``a``), or a byte number of two or more digits
        (``97``) or in hex (``0x61``); ``x=foo`` is the one-byte range. Bytes 0..9 are
        written ``0x00``..``0x09``, since a lone digit is the ASCII character.
        An empty or blank spec is the empty table.
        """
        if not isinstance(spec, str):
            raise InvalidTableError(f"a table spec must be text, not {spec!r}")
        triples = []
        for raw in spec.split(","):
            entry = raw.strip()
            if not entry:
                if spec.strip():
                    raise InvalidTableError(
                        f"empty entry in table {spec!r}: remove the extra comma"
                    )
                continue
            span, sep, node = entry.partition("=")
            if not sep:
                raise InvalidTableError(
                    f"invalid entry {entry!r}: expected START..END=NODE or CHAR=NODE"
                )
            first, dots, last = span.partition("..")
            start = _parse_end(first, entry)
            end = _parse_end(last, entry) if dots else start
            triples.append((start, end, node.strip()))
        table = cls.__new__(cls)
        table._build(triples)
        return table

    @classmethod
    def from_plain(cls, plain: Sequence[Sequence[Any]]) -> RoutingTable:
        """Rebuild a table from :meth:`to_plain` (``[[start, end, node], ...]``)."""
        try:
            triples = [(int(start), int(end), node) for start, end, node in plain]
        except (TypeError, ValueError):
            raise InvalidTableError(
                f"invalid plain table {plain!r}: expected [[start, end, node], ...]"
            ) from None
        table = cls.__new__(cls)
        table._build(triples)
        return table

    def to_plain(self) -> list[list[Any]]:
        """The table as plain lists for the wire: serpent cannot carry ``range``."""
        return [[start, end, node] for start, end, node in self._entries]

    def spec(self) -> str:
        """The text form that :meth:`parse` reads back: ``a..m=foo, n..z=bar``."""
        return ", ".join(f"{_show_range(s, e)}={node}" for s, e, node in self._entries)

    # -- looking up ---------------------------------------------------------

    @property
    def entries(self) -> list[tuple[range, str]]:
        """The entries as (range, node), ordered by their first byte."""
        return [(range(s, e + 1), node) for s, e, node in self._entries]

    @property
    def nodes(self) -> list[str]:
        """Every node named in the table, once each, in entry order."""
        return list(dict.fromkeys(node for _, _, node in self._entries))

    def slot(self, bucket: str | bytes) -> int:
        """The slot (0..255) of ``bucket``: the first byte of its name."""
        if isinstance(bucket, str):
            first = ord(bucket[0])
            return first if first <= 0x7F else _first_byte(bucket[0])
        return bucket[0]

    def owner(self, bucket: str | bytes) -> str:
        """Return the node that owns ``bucket``, from the first byte of its name.

        A ``str`` is routed by the first byte of its UTF-8 encoding.
        Raises :class:`NoRouteError` when no entry covers that byte, or when the name
        is empty.
        """
        if isinstance(bucket, str):
            if not bucket:
                raise _empty_bucket()
            first = ord(bucket[0])
            if first > 0x7F:
                first = _first_byte(bucket[0])
        elif isinstance(bucket, (bytes, bytearray)):
            if not bucket:
                raise _empty_bucket()
            first = bucket[0]
        else:
            raise NoRouteError(
                f"bucket name must be str or bytes, not {type(bucket).__name__}"
            )
        node = self.by_byte[first]
        if node is None:
            raise NoRouteError(
                f"could not find entry for {bucket!r} in table {self!r}: start the "
                "bucket name with a byte the table covers, or add an entry for it"
            )
        return node

    # -- value semantics ----------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoutingTable):
            return NotImplemented
        return self._entries == other._entries

    def __hash__(self) -> int:
        return hash(self._entries)

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{_show_range(s, e)} -> {node}" for s, e, node in self._entries
        )
        return f"[{inner}]"

    __str__ = __repr__

    def __len__(self) -> int:
        return len(self._entries)

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, "by_byte"):
            raise AttributeError("RoutingTable is immutable; build a new one")
        object.__setattr__(self, name, value)


def _first_byte(char: str) -> int:
    # surrogateescape first: the text protocol decodes bytes that are not UTF-8
    # that way, and such a name must route by the byte the client sent.
    try:
        return char.encode("utf-8", "surrogateescape")[0]
    except UnicodeEncodeError:
        return char.encode("utf-8", "surrogatepass")[0]


def _empty_bucket() -> NoRouteError:
    return NoRouteError(
        "cannot route an empty bucket name: a bucket is routed by the first byte of "
        "its name, so give it a name of at least one character"
    )
