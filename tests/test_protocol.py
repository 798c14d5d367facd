"""The text protocol's parse and reply functions; no network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrokv import BucketNotFoundError, NodeUnavailableError, NoRouteError
from pyrokv.protocol import (
    NOT_FOUND,
    OK,
    Command,
    error_reply,
    parse_line,
    reply_for,
    value_reply,
)
from pyrokv.registry import Registry
from pyrokv.server import local_verbs


@pytest.mark.parametrize(
    ("line", "command"),
    [
        (
            b"CREATE shopping\r\n",
            Command(b"CREATE", "pyrokv.tasks.create", "shopping", ["shopping"]),
        ),
        (
            b"PUT shopping milk 1\n",
            Command(b"PUT", "pyrokv.tasks.put", "shopping", ["shopping", "milk", "1"]),
        ),
        (
            b"GET shopping milk",
            Command(b"GET", "pyrokv.tasks.get", "shopping", ["shopping", "milk"]),
        ),
        (
            b"  DELETE\tshopping   milk \r\n",
            Command(b"DELETE", "pyrokv.tasks.delete", "shopping", ["shopping", "milk"]),
        ),
    ],
)
def test_commands_parse(line: bytes, command: Command) -> None:
    """The four commands parse into a task routed by the bucket."""
    assert parse_line(line) == command


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"\r\n",
        b"FOO",
        b"get shopping milk",
        b"GET shopping",
        b"GET a b c",
        b"PUT a b",
        b"PUT a b c d",
        b"CREATE",
        b"CREATE a b",
        b"DELETE a",
    ],
)
def test_unknown_commands(line: bytes) -> None:
    """Unknown words, lowercase commands and wrong argument counts are not commands."""
    assert parse_line(line) is None


def test_bytes_round_trip_exactly() -> None:
    """NUL and bytes that are not UTF-8 survive parse -> store -> reply unchanged."""
    command = parse_line(b"PUT b\xff k\x00 v\xfe\x00\xc3(\r\n")
    assert command is not None
    assert value_reply(command.args[2]) == b"v\xfe\x00\xc3(\r\nOK\r\n"


def test_replies() -> None:
    """GET replies a value line then OK; a missing key is an empty line; others OK."""
    get = parse_line(b"GET a k")
    put = parse_line(b"PUT a k v")
    assert get is not None and put is not None
    assert reply_for(get, "1") == b"1\r\nOK\r\n"
    assert reply_for(get, None) == b"\r\nOK\r\n"
    assert reply_for(get, b"raw") == b"raw\r\nOK\r\n"
    assert reply_for(get, 42) == b"42\r\nOK\r\n"
    assert reply_for(put, None) == OK
    assert value_reply("two\r\nlines").startswith(b"ERROR the value holds a line break")


def test_error_replies() -> None:
    """A missing bucket is NOT FOUND; other errors are one ERROR line with their text."""
    assert error_reply(BucketNotFoundError("x")) == NOT_FOUND
    assert (
        error_reply(NoRouteError("could not find entry for '1abc'"))
        == b"ERROR could not find entry for '1abc'\r\n"
    )
    assert (
        error_reply(NodeUnavailableError("node 'bar'\nis down"))
        == b"ERROR node 'bar' is down\r\n"
    )
    assert error_reply(TypeError("bad")) == b"ERROR TypeError: bad\r\n"


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_unknown(line: bytes) -> None:
    """Any line either parses into a command or is None; never an exception."""
    command = parse_line(line)
    if command is not None:
        assert command.verb in (b"CREATE", b"PUT", b"GET", b"DELETE")


@given(
    st.binary(min_size=1, max_size=50).filter(
        lambda b: not any(c in b for c in b" \t\r\n\x0b\x0c")
    )
)
def test_values_round_trip(value: bytes) -> None:
    """Any value without whitespace comes back from a GET exactly as it was PUT."""
    command = parse_line(b"PUT b k " + value)
    assert command is not None
    assert value_reply(command.args[2]) == value + b"\r\nOK\r\n"


# Few words, so that requests meet the same buckets and keys; odd bytes among them.
_WORDS = [b"b", b"\xff\xfe", b"v\x00", b"\xc3\xa9", b"\x1c"]
_ARITY = {b"CREATE": 1, b"PUT": 3, b"GET": 2, b"DELETE": 2}


@st.composite
def _requests(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A verb and its words: mostly the right number of them, sometimes not."""
    verb = draw(st.sampled_from(sorted(_ARITY)))
    size = draw(st.sampled_from([_ARITY[verb]] * 4 + [0, 1, 2, 3, 4]))
    return verb, draw(st.lists(st.sampled_from(_WORDS), min_size=size, max_size=size))


@given(st.lists(_requests(), max_size=30))
def test_a_nodes_fast_verbs_answer_as_the_general_path(
    requests: list[tuple[bytes, list[bytes]]],
) -> None:
    """The text server's path for local buckets (words straight to the registry)
    gives the same replies and leaves the same data as parse_line + reply_for."""
    fast, general = Registry(), Registry()
    verbs = local_verbs(fast)
    ops = {
        b"CREATE": general.create,
        b"PUT": general.put,
        b"GET": general.get,
        b"DELETE": general.delete,
    }
    for verb, args in requests:
        line = b" ".join([verb, *args]) + b"\r\n"
        command = parse_line(line)
        words = line.split()
        width, handler = verbs[words[0]]
        assert (command is not None) == (len(words) == width)
        if command is None:
            continue
        try:
            expected = reply_for(command, ops[verb](*command.args))
        except Exception as exc:
            expected = error_reply(exc)
        try:
            got = handler(words)
        except Exception as exc:
            got = error_reply(exc)
        assert got == expected
    assert fast.buckets() == general.buckets()
    keys = [w.decode("utf-8", "surrogateescape") for w in _WORDS]
    for bucket in fast.buckets():
        assert [fast.get(bucket, k) for k in keys] == [
            general.get(bucket, k) for k in keys
        ]
