"""The routing table: which node owns a bucket, by the bucket's first byte or a hash.

Pure and immutable: no network, no Pyro5. Built from Python entries
(``range``, node) like Elixir's ``{?a..?m, :foo}``, or parsed from the text form
``a..m=foo, n..z=bar`` used by the command line and ``nameserver.conf``.
A table routes by the first byte of the bucket name (the default), or, when its
text starts with ``hash:``, by the *slot* ``zlib.crc32(name) & 0xff``:
``hash: 0x00..0x7f=foo, 0x80..0xff=bar``. Either way a lookup is one index into a
precomputed 256-slot tuple, whatever the number of entries.
:func:`slot_of` gives a name's slot.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import InvalidTableError, NoRouteError

__all__ = ["HASH_PREFIX", "RoutingTable", "check_node_name", "slot_of"]

#: The text form of a hashed table starts with exactly this (lower case).
HASH_PREFIX = "hash:"
# A first-byte spec that starts like this was probably meant to be hashed.
_LIKE_HASH = re.compile(r"\s*hash", re.IGNORECASE)
_NO_OWNERS: tuple[str | None, ...] = (None,) * 256
_HASH_HINT = (
    "; a hashed table starts with exactly 'hash:' (lower case, the colon right "
    "after), as in 'hash: 0x00..0x7f=foo, 0x80..0xff=bar'"
)

_NODE_NAME = re.compile(r"[A-Za-z0-9_-]+")
# Characters that the text form cannot carry as themselves; write them as numbers.
_SPECIAL = set(",=. \t\r\n")
# Characters shown as numbers too: a config file's comment characters (a table
# written into one, as 'pyrokv up' does for its children, must read back whole).
_SHOWN_AS_NUMBERS = _SPECIAL | set("#;")


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
    if 0x21 <= byte <= 0x7E and char not in _SHOWN_AS_NUMBERS:
        return char
    return f"0x{byte:02x}"


def _show_range(start: int, end: int) -> str:
    if start == end:
        return _show_byte(start)
    return f"{_show_byte(start)}..{_show_byte(end)}"


def _show_slot(slot: int) -> str:
    return f"0x{slot:02x}"


def _show_slots(start: int, end: int) -> str:
    # Hash slots are numbers, not characters: always hex.
    if start == end:
        return _show_slot(start)
    return f"{_show_slot(start)}..{_show_slot(end)}"


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


def _parse_entries(body: str, spec: str) -> list[tuple[int, int, str]]:
    """The (start, end, node) triples of ``body``, the entries of ``spec``."""
    triples = []
    for raw in body.split(","):
        entry = raw.strip()
        if not entry:
            if body.strip():
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
    return triples


class RoutingTable:
    """Maps the slot of a bucket name to the node that owns the bucket.

    The slot (0..255) is the first byte of the name, or, in a *hashed* table
    (``hashed=True``, text ``hash: ...``), ``zlib.crc32(name) & 0xff``: see
    :meth:`slot`. Entries are inclusive slot ranges that must not overlap; a slot
    that no entry covers raises :class:`NoRouteError` on lookup. Tables compare by
    value, and ``repr`` gives the form used in error messages:
    ``[a..m -> foo, n..z -> bar]``, or ``hash[0x00..0x7f -> foo, 0x80..0xff -> bar]``.

    >>> table = RoutingTable.parse("a..m=foo, n..z=bar")
    >>> table.owner("hello"), table.owner(b"world")
    ('foo', 'bar')
    >>> hashed = RoutingTable.parse("hash: 0x00..0x7f=foo, 0x80..0xff=bar")
    >>> hashed.slot("user:1"), hashed.owner("user:1")
    (130, 'bar')
    """

    __slots__ = ("_by_first", "_entries", "by_byte", "by_slot", "hashed")

    _entries: tuple[tuple[int, int, str], ...]
    # by_slot for a first-byte table; all None for a hashed one (see owner).
    _by_first: tuple[str | None, ...]
    #: True: the slot of a name is ``zlib.crc32(name) & 0xff``; False: its first byte.
    hashed: bool
    #: 256 entries: ``by_slot[s]`` owns the buckets whose name has slot ``s`` (see
    #: :meth:`slot`; None: no entry covers it). :meth:`owner` is the checked way to ask.
    by_slot: tuple[str | None, ...]
    #: The same tuple as :attr:`by_slot`, under its first name: for a first-byte table
    #: ``by_byte[b]`` owns the names that start with byte ``b``. A hashed table's is
    #: indexed by hash slot, not by byte.
    by_byte: tuple[str | None, ...]

    def __init__(
        self, entries: Iterable[tuple[range, str]] = (), *, hashed: bool = False
    ) -> None:
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
        self._build(triples, hashed)

    def _build(self, triples: Iterable[tuple[int, int, str]], hashed: bool) -> None:
        if not isinstance(hashed, bool):
            raise InvalidTableError(f"hashed must be True or False, not {hashed!r}")
        unit, show, show_range = (
            ("slot", _show_slot, _show_slots)
            if hashed
            else ("byte", _show_byte, _show_range)
        )
        slots: list[str | None] = [None] * 256
        checked = []
        for start, end, node in triples:
            if not (0 <= start <= 255 and 0 <= end <= 255):
                raise InvalidTableError(
                    f"entry {start}..{end} -> {node!r} has {unit}s outside 0..255"
                )
            shown = f"{show_range(start, end)} -> {node!r}"
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
                        f"entry {shown} overlaps another entry at {unit} "
                        f"{show(byte)} (already routed to {other!r})"
                    )
                slots[byte] = node
            checked.append((start, end, node))
        self._entries = tuple(sorted(checked))
        self.hashed = hashed
        self.by_slot = tuple(slots)
        self._by_first = _NO_OWNERS if hashed else self.by_slot
        self.by_byte = self.by_slot  # last: __setattr__ freezes the table on it

    # -- building -----------------------------------------------------------

    @classmethod
    def parse(cls, spec: str) -> RoutingTable:
        """Build a table from its text form, ``"a..m=foo, n..z=bar"``.

        An end is one ASCII character (``a``), or a byte number of two or more digits
        (``97``) or in hex (``0x61``); ``x=foo`` is the one-byte range. Bytes 0..9 are
        written ``0x00``..``0x09``, since a lone digit is the ASCII character.
        An empty or blank spec is the empty table.

        A spec that starts with exactly ``hash:`` (lower case; whitespace before it
        is ignored, as everywhere in the text form) is a hashed table over the same
        256 slots, its ends written the same way: ``hash: 0x00..0x7f=foo,
        0x80..0xff=bar``. Any other spelling (``HASH:``, ``hash :``) is read as
        first-byte entries, fails there, and the message says how to write it.
        """
        if not isinstance(spec, str):
            raise InvalidTableError(f"a table spec must be text, not {spec!r}")
        body = spec.lstrip()
        hashed = body.startswith(HASH_PREFIX)
        if hashed:
            body = body[len(HASH_PREFIX) :]
        try:
            triples = _parse_entries(body, spec)
            table = cls.__new__(cls)
            table._build(triples, hashed)
        except InvalidTableError as exc:
            if hashed or not _LIKE_HASH.match(spec):
                raise
            raise InvalidTableError(f"{exc}{_HASH_HINT}") from None
        return table

    @classmethod
    def from_plain(cls, plain: Sequence[Any]) -> RoutingTable:
        """Rebuild a table from :meth:`to_plain`.

        That is ``[[start, end, node], ...]``, led by the item ``"hash:"`` for a
        hashed table: ``["hash:", [0, 127, "foo"], [128, 255, "bar"]]``.
        """
        hashed = (
            bool(plain) and isinstance(plain, (list, tuple)) and plain[0] == HASH_PREFIX
        )
        rows = plain[1:] if hashed else plain
        try:
            triples = [(int(start), int(end), node) for start, end, node in rows]
        except (TypeError, ValueError):
            raise InvalidTableError(
                f"invalid plain table {plain!r}: expected [[start, end, node], ...], "
                "led by 'hash:' for a hashed table"
            ) from None
        table = cls.__new__(cls)
        table._build(triples, hashed)
        return table

    def to_plain(self) -> list[Any]:
        """The table as plain lists for the wire: serpent cannot carry ``range``.

        ``[[start, end, node], ...]``; a hashed table's list starts with the item
        ``"hash:"`` (so a reader that does not know hashed tables refuses it).
        """
        rows: list[Any] = [[start, end, node] for start, end, node in self._entries]
        return [HASH_PREFIX, *rows] if self.hashed else rows

    def spec(self) -> str:
        """The text form that :meth:`parse` reads back: ``a..m=foo, n..z=bar``.

        A hashed table's starts with ``hash:`` and shows its slots in hex:
        ``hash: 0x00..0x7f=foo, 0x80..0xff=bar`` (just ``hash:`` when empty).
        """
        if self.hashed:
            inner = ", ".join(
                f"{_show_slots(s, e)}={node}" for s, e, node in self._entries
            )
            return f"{HASH_PREFIX} {inner}" if inner else HASH_PREFIX
        return ", ".join(f"{_show_range(s, e)}={node}" for s, e, node in self._entries)

    # -- looking up ---------------------------------------------------------

    @property
    def entries(self) -> list[tuple[range, str]]:
        """The entries as (range, node), ordered by their first slot."""
        return [(range(s, e + 1), node) for s, e, node in self._entries]

    @property
    def nodes(self) -> list[str]:
        """Every node named in the table, once each, in entry order."""
        return list(dict.fromkeys(node for _, _, node in self._entries))

    def slot(self, bucket: str | bytes) -> int:
        """The slot (0..255) that routes ``bucket``: see :func:`slot_of`.

        The first byte of the name, or in a hashed table ``zlib.crc32(name) & 0xff``.
        Raises :class:`NoRouteError` for an empty name or one that is not text or bytes.
        """
        return slot_of(bucket) if self.hashed else _first_slot(bucket)

    def owner(self, bucket: str | bytes) -> str:
        """Return the node that owns ``bucket``: ``by_slot[slot(bucket)]``.

        A ``str`` is routed by its UTF-8 encoding (see :func:`slot_of`).
        Raises :class:`NoRouteError` when no entry covers the bucket's slot, or when
        the name is empty.
        """
        # The first-byte lookup, inline: this is on every request's path. A hashed
        # table's _by_first is all None, so it costs first-byte tables nothing.
        try:
            if isinstance(bucket, str):
                first = ord(bucket[0])
                if first > 0x7F:
                    first = _first_byte(bucket[0])
            elif isinstance(bucket, (bytes, bytearray)):
                first = bucket[0]
            else:
                raise _not_a_name(bucket)
        except IndexError:
            raise _empty_bucket(self.hashed) from None
        node = self._by_first[first]
        if node is None:
            return self._other_owner(bucket)
        return node

    def _other_owner(self, bucket: str | bytes) -> str:
        if not self.hashed:
            raise NoRouteError(
                f"could not find entry for {bucket!r} in table {self!r}: start the "
                "bucket name with a byte the table covers, or add an entry for it"
            )
        # bucket is a str or bytes, not empty: owner() checked
        if isinstance(bucket, str):
            try:
                data: bytes | bytearray = bucket.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                data = _name_bytes(bucket)
        else:
            data = bucket
        slot = zlib.crc32(data) & 0xFF
        node = self.by_slot[slot]
        if node is None:
            raise NoRouteError(
                f"could not find entry for {bucket!r} (hash slot {_show_slot(slot)}) "
                f"in table {self!r}: add an entry for slot {_show_slot(slot)}, or let "
                "the entries cover every slot, 0x00..0xff"
            )
        return node

    # -- value semantics ----------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoutingTable):
            return NotImplemented
        return self.hashed == other.hashed and self._entries == other._entries

    def __hash__(self) -> int:
        return hash((self.hashed, self._entries))

    def __repr__(self) -> str:
        show = _show_slots if self.hashed else _show_range
        inner = ", ".join(f"{show(s, e)} -> {node}" for s, e, node in self._entries)
        return f"hash[{inner}]" if self.hashed else f"[{inner}]"

    __str__ = __repr__

    def __len__(self) -> int:
        return len(self._entries)

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, "by_byte"):
            raise AttributeError("RoutingTable is immutable; build a new one")
        object.__setattr__(self, name, value)


def slot_of(bucket: str | bytes, *, hashed: bool = True) -> int:
    """The slot (0..255) of a bucket name: ``zlib.crc32(name) & 0xff``, as hashed
    tables route it, or with ``hashed=False`` the name's first byte.

    A ``str`` counts as its UTF-8 bytes. Characters the text protocol made from
    bytes that are not UTF-8 (``surrogateescape``, U+DC80..U+DCFF) count as those
    bytes, so a name has the same slot as text and as the raw bytes of the line; any
    other lone surrogate as its ``surrogatepass`` bytes. Raises
    :class:`NoRouteError` for an empty name or one that is not text or bytes.

    >>> slot_of("user:1"), slot_of(b"user:1"), slot_of("user:1", hashed=False)
    (130, 130, 117)
    """
    if not hashed:
        return _first_slot(bucket)
    if isinstance(bucket, str):
        data = _name_bytes(bucket)
    elif isinstance(bucket, (bytes, bytearray)):
        data = bucket
    else:
        raise _not_a_name(bucket)
    if not data:
        raise _empty_bucket(True)
    return zlib.crc32(data) & 0xFF


def _first_slot(bucket: str | bytes) -> int:
    try:
        if isinstance(bucket, str):
            first = ord(bucket[0])
            return first if first <= 0x7F else _first_byte(bucket[0])
        if isinstance(bucket, (bytes, bytearray)):
            return bucket[0]
    except IndexError:
        raise _empty_bucket(False) from None
    raise _not_a_name(bucket)


def _name_bytes(name: str) -> bytes:
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no byte stands for: char by char
        return b"".join(_char_bytes(char) for char in name)


def _char_bytes(char: str) -> bytes:
    try:
        return char.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return char.encode("utf-8", "surrogatepass")


def _first_byte(char: str) -> int:
    # surrogateescape first: the text protocol decodes bytes that are not UTF-8
    # that way, and such a name must route by the byte the client sent.
    try:
        return char.encode("utf-8", "surrogateescape")[0]
    except UnicodeEncodeError:
        return char.encode("utf-8", "surrogatepass")[0]


def _not_a_name(bucket: object) -> NoRouteError:
    return NoRouteError(
        f"bucket name must be str or bytes, not {type(bucket).__name__}"
    )


def _empty_bucket(hashed: bool) -> NoRouteError:
    rule = "a hash of its name" if hashed else "the first byte of its name"
    return NoRouteError(
        f"cannot route an empty bucket name: a bucket is routed by {rule}, so give "
        "it a name of at least one character"
    )
