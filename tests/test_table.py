"""RoutingTable: parsing, validation, lookup and value semantics; no network."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrokv import InvalidTableError, NoRouteError, RoutingTable

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
