"""RoutingTable: parsing, validation, lookup and value semantics, first-byte and hashed; no network."""

from __future__ import annotations

import doctest
import itertools
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrokv import InvalidTableError, NoRouteError, RoutingTable
from pyrokv.table import slot_of

GUIDE = RoutingTable(
    [(range(ord("a"), ord("m") + 1), "foo"), (range(ord("n"), ord("z") + 1), "bar")]
)


def test_python_entries_equal_the_text_form() -> None:
    """The Python form (ranges) and the text form build the same table."""
    assert RoutingTable.parse("a..m=foo, n..z=bar") == GUIDE
    assert RoutingTable.parse("  n..z = bar ,a..m=foo ") == GUIDE


def test_owner_uses_the_first_byte() -> None:
    """hello goes to foo and world to bar, as in the guide; bytes work too."""
    assert GUIDE.owner("hello") == "foo"
    assert GUIDE.owner("world") == "bar"
    assert GUIDE.owner(b"mango") == "foo"
    assert GUIDE.owner("n") == "bar"


def test_owner_of_a_non_ascii_name_uses_its_utf8_first_byte() -> None:
    """A str is routed by the first byte of its UTF-8 encoding."""
    table = RoutingTable.parse("0xc3=latin, 0xe2=punct")
    assert table.owner("épée") == "latin"  # é = c3 a9
    assert table.owner("€uro") == "punct"  # € = e2 82 ac


def test_no_entry_names_the_bucket_and_the_table() -> None:
    """A byte no entry covers raises NoRouteError (a LookupError) with the guide's text."""
    with pytest.raises(
        NoRouteError,
        match=r"could not find entry for '1abc' in table \[a..m -> foo, n..z -> bar\]",
    ):
        GUIDE.owner("1abc")
    with pytest.raises(LookupError, match="could not find entry"):
        GUIDE.owner(b"\x00")


def test_empty_bucket_name_has_its_own_message() -> None:
    """An empty name cannot be routed and says why."""
    for empty in ("", b""):
        with pytest.raises(NoRouteError, match="empty bucket name"):
            GUIDE.owner(empty)


def test_empty_table_is_valid_and_routes_nothing() -> None:
    """An empty table builds, and every lookup fails."""
    for table in (RoutingTable(), RoutingTable.parse(""), RoutingTable.parse("  ")):
        assert len(table) == 0
        assert repr(table) == "[]"
        with pytest.raises(NoRouteError, match=r"in table \[\]"):
            table.owner("a")


def test_ends_can_be_numbers_and_single_bytes() -> None:
    """Decimal (two or more digits) and hex ends, and the one-byte form x=node."""
    table = RoutingTable.parse("0x00..31=ctl, 0..9=digit, x=ex, 0xff=top")
    assert table.owner(b"\x05") == "ctl"
    assert table.owner("7") == "digit"
    assert table.owner("x") == "ex"
    assert table.owner(b"\xff") == "top"
    with pytest.raises(NoRouteError):
        table.owner("y")
    assert repr(table) == "[0x00..0x1f -> ctl, 0..9 -> digit, x -> ex, 0xff -> top]"


def test_repr_and_spec() -> None:
    """repr is the error-message form, spec() the text form that parses back."""
    assert repr(GUIDE) == str(GUIDE) == "[a..m -> foo, n..z -> bar]"
    assert GUIDE.spec() == "a..m=foo, n..z=bar"
    odd = RoutingTable.parse("0x2c=comma, 0x20..0x2b=space")
    assert RoutingTable.parse(odd.spec()) == odd


def test_plain_form_round_trips() -> None:
    """to_plain() holds only lists of ints and str (serpent carries it)."""
    plain = GUIDE.to_plain()
    assert plain == [[97, 109, "foo"], [110, 122, "bar"]]
    assert RoutingTable.from_plain(plain) == GUIDE


def test_tables_are_immutable_values() -> None:
    """Equal tables hash equal; a table cannot be changed in place."""
    assert hash(RoutingTable.parse("a..m=foo, n..z=bar")) == hash(GUIDE)
    assert RoutingTable.parse("a..m=foo") != GUIDE
    with pytest.raises(AttributeError):
        GUIDE.by_byte = ()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("a..m=foo, k..z=bar", r"entry k..z -> 'bar' overlaps another entry at byte k"),
        ("m..a=foo", r"entry m..a -> 'foo' has a reversed range"),
        ("a..300=foo", r"range end 300 in entry 'a..300=foo' is outside 0..255"),
        ("a..m=", r"invalid node name ''"),
        ("a..m=my node", r"invalid node name 'my node'"),
        ("a..m=foo.bar", r"invalid node name 'foo.bar'"),
        ("a..mfoo", r"invalid entry 'a..mfoo': expected START..END=NODE"),
        ("ab..m=foo", r"invalid range end 'ab' in entry 'ab..m=foo'"),
        ("a..m=foo,,n..z=bar", r"empty entry"),
        ("0xzz=foo", r"invalid range end '0xzz'"),
    ],
)
def test_invalid_text_is_rejected_naming_the_entry(spec: str, message: str) -> None:
    """Malformed or inconsistent text raises InvalidTableError that names the entry."""
    with pytest.raises(InvalidTableError, match=message):
        RoutingTable.parse(spec)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([(range(ord("m"), ord("a")), "foo")], "empty or reversed range"),
        ([(range(5, 5), "foo")], "empty or reversed range"),
        ([(range(250, 300), "foo")], "outside 0..255"),
        ([(range(-1, 3), "foo")], "outside 0..255"),
        ([(range(0, 10, 2), "foo")], "step 1"),
        ([(range(0, 10), "")], "invalid node name"),
        ([("a", "foo")], "must be a range"),
        ([(range(0, 5),)], "expected \\(range, node\\)"),
        (
            [(range(0, 5), "a"), (range(4, 9), "b")],
            "overlaps another entry at byte 0x04",
        ),
    ],
)
def test_invalid_entries_are_rejected(entries: list, message: str) -> None:
    """Bad Python entries raise InvalidTableError naming the entry."""
    with pytest.raises(InvalidTableError, match=message):
        RoutingTable(entries)


NODES = st.sampled_from(["foo", "bar", "baz", "n-1", "q_2"])


@st.composite
def tables(draw: st.DrawFn) -> list[tuple[range, str]]:
    """Non-overlapping inclusive ranges over 0..255 with node names."""
    cuts = sorted(draw(st.sets(st.integers(0, 256), min_size=2, max_size=12)))
    entries = []
    for start, stop in itertools.pairwise(cuts):
        if draw(st.booleans()):
            entries.append((range(start, stop), draw(NODES)))
    return entries


@given(
    tables(),
    st.one_of(st.binary(min_size=1, max_size=8), st.text(min_size=1, max_size=8)),
)
def test_owner_matches_the_entry_holding_the_first_byte(
    entries: list, bucket: bytes | str
) -> None:
    """owner() returns the node of the entry holding the first byte, else NoRouteError naming bucket and table."""
    table = RoutingTable(entries)
    first = (
        bucket.encode("utf-8", "surrogatepass") if isinstance(bucket, str) else bucket
    )[0]
    expected = [node for span, node in entries if first in span]
    if expected:
        assert table.owner(bucket) == expected[0]
    else:
        with pytest.raises(NoRouteError) as info:
            table.owner(bucket)
        assert repr(bucket) in str(info.value)
        assert repr(table) in str(info.value)


@given(tables())
def test_text_and_plain_forms_round_trip(entries: list) -> None:
    """parse(spec()) and from_plain(to_plain()) give back an equal table."""
    table = RoutingTable(entries)
    assert RoutingTable.parse(table.spec()) == table
    assert RoutingTable.from_plain(table.to_plain()) == table
    assert table.entries == sorted(entries, key=lambda e: e[0].start)


@given(tables(), st.integers(0, 255), st.integers(0, 255), NODES)
def test_an_overlapping_entry_is_rejected(
    entries: list, a: int, b: int, node: str
) -> None:
    """Adding a range that shares a byte with an entry is always rejected."""
    start, end = min(a, b), max(a, b)
    overlaps = any(set(span) & set(range(start, end + 1)) for span, _ in entries)
    extended = [*entries, (range(start, end + 1), node)]
    if overlaps:
        with pytest.raises(InvalidTableError, match="overlaps"):
            RoutingTable(extended)
    else:
        assert RoutingTable(extended).owner(bytes([start])) == node


@given(st.text(max_size=30))
def test_parse_never_fails_with_anything_but_invalid_table(spec: str) -> None:
    """Any text either parses or raises InvalidTableError: no other exception."""
    try:
        RoutingTable.parse(spec)
    except InvalidTableError:
        pass


# -- hash routing ---------------------------------------------------------------

HALVES = "hash: 0x00..0x7f=foo, 0x80..0xff=bar"
QUARTERS = "hash: 0x00..0x3f=a, 0x40..0x7f=b, 0x80..0xbf=c, 0xc0..0xff=d"


def test_hash_prefix_makes_a_hashed_table() -> None:
    """`hash:` makes a hashed table: the same entries as Python, spec in hex, its own repr."""
    table = RoutingTable.parse(HALVES)
    assert table.hashed
    assert not GUIDE.hashed
    assert table == RoutingTable(
        [(range(0x00, 0x80), "foo"), (range(0x80, 0x100), "bar")], hashed=True
    )
    assert table.spec() == HALVES
    assert repr(table) == str(table) == "hash[0x00..0x7f -> foo, 0x80..0xff -> bar]"
    # ends are written as in first-byte tables, but shown as slots
    chars = RoutingTable.parse("hash: a..m=foo, 0=zero")
    assert chars.spec() == "hash: 0x30=zero, 0x61..0x6d=foo"
    assert RoutingTable.parse("  hash:a..m=foo,0=zero ") == chars


def test_hashed_and_first_byte_tables_with_the_same_entries_differ() -> None:
    """hashed is part of a table's value: equality, hash and repr tell them apart."""
    first = RoutingTable.parse("0x00..0x7f=foo, 0x80..0xff=bar")
    hashed = RoutingTable.parse(HALVES)
    assert first.entries == hashed.entries
    assert first != hashed
    assert hash(first) != hash(hashed)
    assert repr(first) != repr(hashed)
    assert first.spec() != hashed.spec()
    assert hashed == RoutingTable.parse(HALVES)
    assert hash(hashed) == hash(RoutingTable.parse(HALVES))


def test_hash_slots_have_known_values() -> None:
    """The slot is crc32 & 0xff: CRC-32's published check value, and crc32 by hand."""
    table = RoutingTable.parse(QUARTERS)
    # CRC-32 of "123456789" is 0xCBF43926, the standard check value: slot 0x26.
    assert table.slot("123456789") == table.slot(b"123456789") == 0x26
    assert table.owner("123456789") == "a"
    assert table.slot("user:1") == 0x82  # crc32(b"user:1") == 0x7BA5C282
    assert table.owner("user:1") == "c"
    for name in ["user:1", "hello", "épée", "€uro", "a b", "0"]:
        expected = zlib.crc32(name.encode("utf-8")) & 0xFF
        assert slot_of(name) == table.slot(name) == expected
        assert table.owner(name) == "abcd"[expected >> 6]
        assert (
            table.by_slot[expected] == table.by_byte[expected] == "abcd"[expected >> 6]
        )
    # first-byte tables keep their slot: the first byte
    assert GUIDE.slot("hello") == slot_of("hello", hashed=False) == ord("h")
    assert GUIDE.slot("épée") == 0xC3


def test_hash_spreads_common_prefixes_and_first_byte_does_not() -> None:
    """user:1 .. user:100000 spread over four equal hash ranges within 10 %; first byte puts them on one node."""
    names = [f"user:{i}" for i in range(1, 100_001)]
    hashed = RoutingTable.parse(QUARTERS)
    counts = Counter(hashed.owner(name) for name in names)
    assert set(counts) == {"a", "b", "c", "d"}
    for node, count in counts.items():
        assert abs(count - 25_000) <= 2_500, (node, count)
    first = RoutingTable.parse(QUARTERS.removeprefix("hash:"))
    assert Counter(first.owner(name) for name in names) == {"b": 100_000}


@settings(max_examples=25, deadline=None)
@given(st.text(max_size=12))
def test_hash_spreads_any_common_prefix(prefix: str) -> None:
    """Names that share any prefix, then a counter, spread over four ranges within 10 %."""
    hashed = RoutingTable.parse(QUARTERS)
    counts = Counter(hashed.owner(f"{prefix}{i}") for i in range(20_000))
    assert sorted(counts) == ["a", "b", "c", "d"]
    assert all(abs(count - 5_000) <= 500 for count in counts.values()), counts


def test_hashed_table_errors_name_the_slot() -> None:
    """No entry for the slot, an empty name, an overlap: each message speaks of slots."""
    table = RoutingTable.parse("hash: 0x80..0xff=bar")
    with pytest.raises(
        NoRouteError,
        match=(
            r"could not find entry for '123456789' \(hash slot 0x26\) in table "
            r"hash\[0x80..0xff -> bar\]: add an entry for slot 0x26"
        ),
    ):
        table.owner("123456789")
    for empty in ("", b""):
        with pytest.raises(
            NoRouteError, match=r"empty bucket name.*a hash of its name"
        ):
            table.owner(empty)
        with pytest.raises(NoRouteError, match="empty bucket name"):
            table.slot(empty)
    with pytest.raises(NoRouteError, match="must be str or bytes, not int"):
        table.owner(5)  # type: ignore[arg-type]
    with pytest.raises(
        InvalidTableError,
        match=r"entry 0x40..0xff -> 'b' overlaps another entry at slot 0x40",
    ):
        RoutingTable.parse("hash: 0x00..0x40=a, 0x40..0xff=b")
    with pytest.raises(InvalidTableError, match="hashed must be True or False"):
        RoutingTable([], hashed=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spec",
    [
        "HASH: 0x00..0xff=foo",
        "Hash: 0x00..0xff=foo",
        "hash : 0x00..0xff=foo",
        "hash 0x00..0xff=foo",
        "hashed: 0x00..0xff=foo",
        " hash= 0x00..0xff=foo",
    ],
)
def test_a_mistyped_hash_prefix_is_refused_with_a_hint(spec: str) -> None:
    """Only exactly `hash:` is the prefix; near misses fail as first-byte entries, saying how to write it."""
    with pytest.raises(InvalidTableError, match=r"starts with exactly 'hash:'"):
        RoutingTable.parse(spec)


def test_errors_after_the_hash_prefix_are_the_usual_ones() -> None:
    """A malformed rest after `hash:` fails as a first-byte one would, without the hint."""
    with pytest.raises(InvalidTableError, match=r"invalid entry 'a..m'") as info:
        RoutingTable.parse("hash: a..m")
    assert "exactly 'hash:'" not in str(info.value)
    with pytest.raises(InvalidTableError, match="empty entry"):
        RoutingTable.parse("hash: a=x,,b=y")
    # a first-byte mistake that has nothing to do with hashing gets no hint
    with pytest.raises(InvalidTableError) as info:
        RoutingTable.parse("a..mfoo")
    assert "hash" not in str(info.value)


def test_empty_hashed_table() -> None:
    """`hash:` alone is the empty hashed table, and round-trips."""
    table = RoutingTable.parse("hash:")
    assert table.hashed
    assert len(table) == 0
    assert table.spec() == "hash:"
    assert repr(table) == "hash[]"
    assert table.to_plain() == ["hash:"]
    assert RoutingTable.from_plain(["hash:"]) == table
    assert table != RoutingTable()


def test_hashed_plain_form() -> None:
    """to_plain() of a hashed table is led by 'hash:'; a first-byte table's is unchanged."""
    table = RoutingTable.parse(HALVES)
    plain = table.to_plain()
    assert plain == ["hash:", [0, 127, "foo"], [128, 255, "bar"]]
    assert RoutingTable.from_plain(plain) == table
    assert RoutingTable.from_plain(tuple(plain)) == table
    assert RoutingTable.from_plain(plain[1:]) == RoutingTable.parse(
        "0x00..0x7f=foo, 0x80..0xff=bar"
    )
    with pytest.raises(InvalidTableError, match="led by 'hash:'"):
        RoutingTable.from_plain(["HASH:", [0, 127, "foo"]])


def test_hashed_tables_are_immutable() -> None:
    """A hashed table cannot be changed in place either; by_byte is by_slot."""
    table = RoutingTable.parse(HALVES)
    assert table.by_byte is table.by_slot
    assert len(table.by_slot) == 256
    with pytest.raises(AttributeError):
        table.hashed = False  # type: ignore[misc]


def _encode_name(name: str) -> bytes:
    """A name's bytes as the slot rule counts them: surrogateescape, else surrogatepass, per character."""
    out = b""
    for char in name:
        try:
            out += char.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            out += char.encode("utf-8", "surrogatepass")
    return out


@given(tables(), st.one_of(st.binary(min_size=1, max_size=16), st.text(min_size=1)))
def test_hashed_owner_matches_the_entry_holding_the_slot(
    entries: list, bucket: bytes | str
) -> None:
    """owner() returns the node of the entry holding crc32 & 0xff, else NoRouteError naming the slot."""
    table = RoutingTable(entries, hashed=True)
    raw = _encode_name(bucket) if isinstance(bucket, str) else bucket
    slot = zlib.crc32(raw) & 0xFF
    assert table.slot(bucket) == slot_of(bucket) == slot
    expected = [node for span, node in entries if slot in span]
    if expected:
        assert table.owner(bucket) == expected[0]
    else:
        with pytest.raises(NoRouteError, match=rf"\(hash slot 0x{slot:02x}\)") as info:
            table.owner(bucket)
        assert repr(table) in str(info.value)


@given(st.binary(min_size=1, max_size=24))
def test_str_and_bytes_names_have_the_same_slot(raw: bytes) -> None:
    """A name read by the text protocol (bytes decoded with surrogateescape) has its raw bytes' slot."""
    text = raw.decode("utf-8", "surrogateescape")
    assert slot_of(text) == slot_of(raw) == slot_of(bytearray(raw))
    assert slot_of(text, hashed=False) == slot_of(raw, hashed=False) == raw[0]
    hashed = RoutingTable([(range(256), "all")], hashed=True)
    assert hashed.slot(text) == hashed.slot(raw)
    assert GUIDE.slot(text) == GUIDE.slot(raw) == raw[0]


@given(tables())
def test_hashed_text_and_plain_forms_round_trip(entries: list) -> None:
    """parse(spec()) and from_plain(to_plain()) give back an equal hashed table."""
    table = RoutingTable(entries, hashed=True)
    spec = table.spec()
    assert spec.startswith("hash:")
    assert RoutingTable.parse(spec) == table
    assert RoutingTable.parse(spec).hashed
    assert RoutingTable.from_plain(table.to_plain()) == table
    assert table.entries == sorted(entries, key=lambda e: e[0].start)
    assert RoutingTable(entries) != table


@given(st.text(max_size=30))
def test_parse_of_a_hash_spec_never_fails_with_anything_but_invalid_table(
    rest: str,
) -> None:
    """Any text after `hash:` either parses as a hashed table or raises InvalidTableError."""
    try:
        table = RoutingTable.parse(f"hash:{rest}")
    except InvalidTableError:
        return
    assert table.hashed


def test_routing_md_examples_run() -> None:
    """The Python examples in docs/routing.md (first-byte and hashed) give what they show."""
    path = Path(__file__).parent.parent / "docs" / "routing.md"
    result = doctest.testfile(str(path), module_relative=False)
    assert result.attempted >= 10
    assert result.failed == 0
