"""The text protocol's parse and reply functions; no network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrokv import BucketNotFoundError, NodeUnavailableError, NoRouteError
from pyrokv.protocol import (
    BUCKET,
    CONNECTION,
    INTERNAL_ERROR,
    NODE,
    NOT_FOUND,
    OK,
    VERBS,
    Command,
    error_reply,
    handlers,
    keys_reply,
    parse_line,
    reply_for,
    value_reply,
)
from pyrokv.registry import Registry


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


def test_error_replies(caplog: pytest.LogCaptureFixture) -> None:
    """A missing bucket is NOT FOUND; pyrokv errors are one ERROR line with their text;
    any other exception is logged and the client reads only 'internal error'."""
    assert error_reply(BucketNotFoundError("x")) == NOT_FOUND
    assert (
        error_reply(NoRouteError("could not find entry for '1abc'"))
        == b"ERROR could not find entry for '1abc'\r\n"
    )
    assert (
        error_reply(NodeUnavailableError("node 'bar'\nis down"))
        == b"ERROR node 'bar' is down\r\n"
    )
    with caplog.at_level("ERROR", logger="pyrokv.protocol"):
        assert error_reply(TypeError("secret detail")) == INTERNAL_ERROR
    assert INTERNAL_ERROR == b"ERROR internal error (see the node's log)\r\n"
    assert "secret detail" in caplog.text


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_unknown(line: bytes) -> None:
    """Any line either parses into a command or is None; never an exception."""
    command = parse_line(line)
    if command is not None:
        assert command.verb in VERBS


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


@st.composite
def _requests(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A verb and its words: mostly the right number of them, sometimes not."""
    verb = draw(
        st.sampled_from(sorted(w for w, v in VERBS.items() if v.scope == BUCKET))
    )
    right = len(VERBS[verb].params)
    size = draw(st.sampled_from([right] * 4 + [0, 1, 2, 3, 4]))
    return verb, draw(st.lists(st.sampled_from(_WORDS), min_size=size, max_size=size))


@given(st.lists(_requests(), max_size=30))
def test_a_nodes_handlers_answer_as_a_dict_model(
    requests: list[tuple[bytes, list[bytes]]],
) -> None:
    """Each verb's handler, read from the verb table, does what the guide says to a
    registry, checked against a dict of dicts; a line of the wrong size parses to None."""
    registry = Registry()
    table = handlers(registry)
    model: dict[str, dict[str, str]] = {}
    for verb, args in requests:
        line = b" ".join([verb, *args]) + b"\r\n"
        words = line.split()
        width, handler, declared = table[words[0]]
        assert declared is VERBS[verb] and width == declared.words
        command = parse_line(line)
        assert (command is not None) == (len(words) == width)
        if command is None:
            continue
        b, *rest = command.args
        if verb == b"CREATE":
            model.setdefault(b, {})
            expected = OK
        elif b not in model:
            expected = NOT_FOUND
        elif verb == b"PUT":
            model[b][rest[0]] = rest[1]
            expected = OK
        elif verb == b"GET":
            expected = value_reply(model[b].get(rest[0]))
        elif verb == b"KEYS":
            expected = keys_reply(sorted(model[b]))
        else:
            model[b].pop(rest[0], None)
            expected = OK
        try:
            got = handler(words)
        except Exception as exc:
            got = error_reply(exc)
        assert got == expected, (line, got, expected)
    assert registry.buckets() == sorted(model, key=repr)


def test_the_verb_table_names_tasks_and_registry_methods() -> None:
    """Each bucket verb maps to a task of pyrokv.tasks and the Registry method of the
    same name, its bucket first; node verbs run a task; connection verbs none."""
    bucket = {v.name for v in VERBS.values() if v.scope == BUCKET}
    assert bucket == {b"CREATE", b"PUT", b"GET", b"DELETE", b"KEYS"}
    for word in bucket:
        verb = VERBS[word]
        assert verb.task_name == f"pyrokv.tasks.{word.decode().lower()}"
        assert callable(getattr(Registry, verb.method))
        assert verb.params[0] == "BUCKET"
    for word in (b"PING", b"INFO"):
        assert VERBS[word].scope == NODE and VERBS[word].params == ()
    for word in (b"QUIT", b"AUTH"):
        assert VERBS[word].scope == CONNECTION and VERBS[word].task is None
    for verb in VERBS.values():
        assert verb.usage.split()[0] == verb.name.decode()
    assert VERBS[b"PUT"].usage == "PUT BUCKET KEY VALUE"
    assert VERBS[b"PUT"].usage_error == b"ERROR usage: PUT BUCKET KEY VALUE\r\n"
