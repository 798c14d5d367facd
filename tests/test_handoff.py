"""A hand-off: the pairs it carries, and how it makes room for requests.

Pairs travel as JSON text when every key and value is plain, as lists otherwise; a
move must give every value back with its type, whichever form carried it. While
either node serves requests, the sender pauses between calls
(``pyrokv.live.HANDOFF_PACE``); with none, it does not.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrokv import Client, Cluster, TaskArgumentError, live
from pyrokv.cluster import LocalCluster
from pyrokv.live import Live, pack_pairs, unpack_pairs
from pyrokv.registry import Registry
from pyrokv.routing import Routing
from pyrokv.table import RoutingTable

PLAIN = st.one_of(
    st.text(),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)


def same(a: Any, b: Any) -> bool:
    """Equal, of the same type, and for floats the same sign of zero."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return math.copysign(1.0, a) == math.copysign(1.0, b) and a == b
    return bool(a == b)


@given(st.lists(st.tuples(PLAIN, PLAIN), max_size=50))
def test_plain_pairs_travel_as_json_and_come_back_alike(
    pairs: list[tuple[Any, Any]],
) -> None:
    """Keys and values that are str, int, float, bool or None go as JSON text, and
    come back with the same types and values (surrogates and -0.0 included)."""
    packed = pack_pairs(pairs)
    assert isinstance(packed, str)
    back = unpack_pairs(packed)
    assert len(back) == len(pairs)
    for (key, value), (key2, value2) in zip(pairs, back, strict=True):
        assert same(key, key2) and same(value, value2), (key, value, key2, value2)


def test_nan_and_infinities_come_back() -> None:
    """NaN and the infinities survive the JSON form."""
    back = unpack_pairs(
        pack_pairs([("a", math.nan), ("b", math.inf), ("c", -math.inf)])
    )
    assert math.isnan(back[0][1]) and back[1][1] == math.inf and back[2][1] == -math.inf


@pytest.mark.parametrize(
    "value",
    [(1, 2), [1, "x"], {"a": 1}, b"\x00\xff", {1, 2}, 10**5000],
    ids=["tuple", "list", "dict", "bytes", "set", "huge int"],
)
def test_other_values_travel_as_lists(value: Any) -> None:
    """A value JSON would not give back alike (a tuple, bytes, an int too long for
    text ...) sends its part of the bucket as [[key, value], ...], unchanged."""
    packed = pack_pairs([("k", "v"), ("x", value)])
    assert packed == [["k", "v"], ["x", value]]
    assert unpack_pairs(packed) == packed


@pytest.mark.parametrize(
    "part",
    ["not json", "[1, 2]", '[["k"]]', '{"k": "v"}', "[" * 100_000, 7, None, [["k"]]],
)
def test_malformed_pairs_are_refused(part: Any) -> None:
    """Text that is not JSON pairs, or lists that are not pairs, are refused with the
    form a hand-off takes."""
    with pytest.raises(TaskArgumentError, match=r"\[\[key, value\], \.\.\.\]"):
        unpack_pairs(part)


@pytest.mark.distributed
def test_a_move_keeps_every_value_and_its_type() -> None:
    """Values of every kind the Python client stores move with their range and read
    back alike from the new owner, both forms in one move."""
    values: dict[str, Any] = {
        "text": "v\u00e9\u2603",
        "int": -(10**30),
        "float": -0.0,
        "bool": True,
        "none": None,
        "tuple": (1, "two"),
        "list": [1, [2.5, None]],
        "dict": {"a": [1]},
        "bytes": b"\x00\xff",
    }
    nodes: dict[str, str | None] = {"mv1": "a..z=mv1", "mv2": "a..z=mv1"}
    with LocalCluster(nodes) as cluster, Client(cluster.ns) as client:
        client.create("cplain")
        client.create("cmixed")
        for i in range(50):
            client.put("cplain", f"k{i}", i)
        for key, value in values.items():
            client.put("cmixed", key, value)
        done = Cluster(cluster.ns).set_table("a..b=mv1, c=mv2, d..z=mv1")
        assert [
            (m["from"], m["to"], m["buckets"], m["keys"]) for m in done["moved"]
        ] == [("mv1", "mv2", 2, 50 + len(values))]
        assert sorted(client.keys("cplain")) == sorted(f"k{i}" for i in range(50))
        assert all(same(client.get("cplain", f"k{i}"), i) for i in range(50))
        for key, value in values.items():
            got = client.get("cmixed", key)
            assert got == value and type(got) is type(value), (key, got)
        assert math.copysign(1.0, client.get("cmixed", "float")) == -1.0


#: How long each hand-off call takes in the pacing tests.
CALL = 0.05


def ship(served: Any, busy: bool | None) -> list[tuple[float, float]]:
    """Hand 3 chunks of one bucket from node a to node b, each call taking
    :data:`CALL` seconds and answering ``busy``; each call's start and end."""
    calls: list[tuple[float, float]] = []

    class Receiver:  # what the router's proxy pool hands a call: b's TaskRunner
        def table_absorb(self, *args: Any) -> bool | None:
            start = time.monotonic()
            time.sleep(CALL)
            calls.append((start, time.monotonic()))
            return busy

    node = Live(
        "a",
        Registry(),
        Routing(RoutingTable.parse("a..z=b"), "a"),
        lambda owner, limit, call: call(Receiver(), limit),
    )
    node.served = served
    node._ship_to("b", 1, {"cat": {f"k{i}": "v" for i in range(3 * live.CHUNK_KEYS)}})
    return calls


def gaps(calls: list[tuple[float, float]]) -> list[float]:
    """The time between the end of each call and the start of the next."""
    return [start - end for (_, end), (start, _) in itertools.pairwise(calls)]


def test_a_hand_off_with_no_requests_does_not_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No requests on either node (the count stays, the receiver says not busy):
    the calls follow each other without the pause a busy node gets."""
    monkeypatch.setattr(live, "CHUNK_KEYS", 10)
    calls = ship(lambda: 7, False)
    assert len(calls) == 4  # 3 chunks of 10 keys, then the last call (empty)
    assert all(gap < CALL * live.HANDOFF_PACE for gap in gaps(calls)), gaps(calls)


@pytest.mark.parametrize("where", ["sender", "receiver"])
def test_a_hand_off_makes_room_for_requests(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Requests served on the sender (its count moves) or on the receiver (it says
    busy): after each call but the last, the sender pauses HANDOFF_PACE times as
    long as the call took."""
    monkeypatch.setattr(live, "CHUNK_KEYS", 10)
    counter = itertools.count()
    if where == "sender":
        calls = ship(lambda: next(counter), False)
    else:
        calls = ship(lambda: 7, True)
    assert len(calls) == 4
    assert all(gap >= CALL * live.HANDOFF_PACE for gap in gaps(calls)), gaps(calls)
