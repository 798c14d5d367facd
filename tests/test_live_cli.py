"""Live routing tables from the command line, end to end (issue 11): ``pyrokv table
show``/``set`` and ``pyrokv status`` as real processes against real nodes; nodes that
join and leave; two changes at once."""

from __future__ import annotations

import json
import re

import pytest
from livecli import (
    GUIDE,
    by_first_byte,
    check_all,
    cluster,
    fill,
    held,
    join,
    logged,
    ns_flag,
    ok,
    only_on_owners,
    pyrokv,
    refused,
    start,
    status,
    table_set,
    table_show,
    text,
)

from pyrokv.table import RoutingTable
from pyrokv.testing import Conn

pytestmark = pytest.mark.distributed

FRUIT = ["apple", "fig", "grape", "kiwi", "lime", "nut", "orange", "zucchini"]


def test_show_at_version_0_gives_the_shared_table() -> None:
    """Before any change: version 0, the table every node shares, each node at 0;
    --json is exactly {version, table, nodes}; exit 0."""
    with cluster({"foo": GUIDE, "bar": GUIDE}) as running:
        result = pyrokv("table", "show", "--json", *ns_flag(running.ns))
        shown = json.loads(ok(result))
        assert shown == {"version": 0, "table": GUIDE, "nodes": {"bar": 0, "foo": 0}}
        out = ok(pyrokv("table", "show", *ns_flag(running.ns)))
        assert out.splitlines() == [
            f"version 0: {GUIDE}",
            "  bar  version 0",
            "  foo  version 0",
        ]


def test_differing_tables_show_null_then_the_first_set_moves_their_buckets() -> None:
    """At version 0 with per-node tables that differ (foo -> bar -> baz), "table" is
    null; the first table set makes version 1 on every node and moves the buckets
    to the owners of the new table, readable through every node."""
    chain = {
        "foo": "a..m=foo, n..z=bar",
        "bar": "a..m=foo, n..z=baz",
        "baz": "a..m=foo, n..z=baz",
    }
    with cluster(dict(chain)) as running:
        fill(text(running, "foo"), FRUIT, 3)  # n..z go on to baz through bar
        shown = table_show(running.ns)
        assert shown == {
            "version": 0,
            "table": None,
            "nodes": {"bar": 0, "baz": 0, "foo": 0},
        }
        out = ok(pyrokv("table", "show", *ns_flag(running.ns)))
        assert out.splitlines()[0] == (
            "version 0: (differs between nodes: each routes by its own)"
        )
        spec = "a..f=foo, g..s=bar, t..z=baz"
        moved = json.loads(ok(table_set(running.ns, spec, "--json")))
        assert moved["version"] == 1
        ranges = {(m["range"], m["from"], m["to"]): m for m in moved["moved"]}
        assert ranges[("g..m", "foo", "bar")]["buckets"] == 3  # grape kiwi lime
        assert ranges[("n..s", "baz", "bar")]["buckets"] == 2  # nut orange
        assert table_show(running.ns) == {
            "version": 1,
            "table": spec,
            "nodes": {"bar": 1, "baz": 1, "foo": 1},
        }
        for node in chain:
            check_all(text(running, node), FRUIT, 3)
        only_on_owners(running.ns, by_first_byte(spec))


def test_set_prints_each_moved_range_the_version_and_the_time() -> None:
    """table set prints one line per moved range (range, from, to, buckets, keys),
    then the new version and the seconds it took; exit 0. Setting the table it has
    already moves nothing."""
    with cluster({"foo": GUIDE, "bar": GUIDE}) as running:
        fill(text(running, "foo"), FRUIT, 4)
        out = ok(table_set(running.ns, "a..f=foo, g..r=bar, s..z=foo"))
        lines = out.splitlines()
        assert lines[:2] == [
            "moved g..m: foo -> bar, 3 buckets, 12 keys",
            "moved s..z: bar -> foo, 1 buckets, 4 keys",
        ]
        assert re.fullmatch(r"table version 1 in \d+\.\d\d s", lines[2]), lines
        assert len(lines) == 3
        out = ok(table_set(running.ns, "a..f=foo, g..r=bar, s..z=foo"))
        assert re.fullmatch(r"table version 1 in \d+\.\d\d s\n", out), out
        for node in ("foo", "bar"):
            check_all(text(running, node), FRUIT, 4)


def test_set_json_is_one_object_and_hash_tables_move_like_any_other() -> None:
    """table set --json prints {"version", "seconds", "moved": [{"range", "from",
    "to", "buckets", "keys"}], ...}; switching to a hash: table and back moves the
    buckets, each to its owner only, and every node reads them all."""
    with cluster({"foo": GUIDE, "bar": GUIDE}) as running:
        names = [f"user:{i}" for i in range(200)] + FRUIT
        fill(text(running, "foo"), names, 2)
        hashed = "hash: 0x00..0x7f=foo, 0x80..0xff=bar"
        result = json.loads(ok(table_set(running.ns, hashed, "--json")))
        assert {"version", "seconds", "moved"} <= set(result)
        assert result["version"] == 1
        assert isinstance(result["seconds"], float) and result["seconds"] >= 0
        for move in result["moved"]:
            assert set(move) == {"range", "from", "to", "buckets", "keys"}
        # user:* all lived on bar (first byte u); about half go to foo
        to_foo = sum(m["buckets"] for m in result["moved"] if m["to"] == "foo")
        assert 60 < to_foo < 140, result
        table = RoutingTable.parse(hashed)
        only_on_owners(running.ns, table.owner)
        for node in ("foo", "bar"):
            check_all(text(running, node), names, 2)
        back = json.loads(ok(table_set(running.ns, GUIDE, "--json")))
        assert back["version"] == 2
        assert sum(m["buckets"] for m in back["moved"]) > 0
        only_on_owners(running.ns, by_first_byte(GUIDE))
        check_all(text(running, "bar"), names, 2)


def test_a_table_naming_a_node_not_alive_is_refused_and_nothing_changes() -> None:
    """A SPEC that names a node not registered, or registered but dead: exit 1, the
    message names the node, and the version, tables and data stay as they were."""
    with cluster({"foo": GUIDE, "bar": GUIDE, "baz": GUIDE}) as running:
        fill(text(running, "foo"), FRUIT, 2)
        ok(table_set(running.ns, "a..m=foo, n..z=bar"))
        before = table_show(running.ns)
        err = refused(table_set(running.ns, "a..f=foo, g..m=qux, n..z=bar"))
        assert "TableChangeError" in err and "'qux'" in err and "not registered" in err
        assert "nothing changed" in err
        running.nodes["baz"].kill()  # registered, not alive
        err = refused(table_set(running.ns, "a..f=foo, g..m=baz, n..z=bar"))
        assert "TableChangeError" in err and "'baz'" in err
        after = table_show(running.ns)
        assert after["version"] == before["version"] == 1
        assert after["table"] == before["table"]
        only_on_owners(running.ns, lambda b: "foo" if b < "n" else "bar")
        check_all(text(running, "bar"), FRUIT, 2)


@pytest.mark.parametrize(
    "argv",
    [
        ["a..f=foo, g..z"],
        ["a..m=foo, k..z=bar"],
        ["z..a=foo"],
        ["a..m=f o o"],
        ["hash: 0x00..0x1ff=foo"],
        ["a..m=foo", "--expect-version", "x"],
        ["a..m=foo", "--expect-version", "-1"],
        ["a..m=foo", "--timeout", "0"],
        [],
    ],
    ids=repr,
)
def test_a_bad_spec_or_option_is_a_usage_error(argv: list[str]) -> None:
    """A malformed SPEC or option is a usage error: exit 2, one message, before any
    name server is asked (none answers at this address)."""
    result = pyrokv("table", "set", *argv, "--ns", "127.0.0.1:9")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip(), "the error says what is wrong"
    assert result.stdout == ""


def test_a_node_joins_owning_nothing_gets_a_range_then_leaves_losing_nothing() -> None:
    """pyrokv node baz joins at the cluster's version with its table (not its own
    --table) and owns nothing; a table set gives it g..m (moved, readable through
    every node, status shows its buckets); a table set without baz empties it; then
    stopping baz loses nothing."""
    with cluster({"foo": GUIDE, "bar": GUIDE}) as running:
        names = [f"{c}{i}" for c in "aegkmnz" for i in range(20)]
        fill(text(running, "foo"), names, 5)
        ok(table_set(running.ns, GUIDE))  # version 1: the cluster's table
        baz = join(running, "baz", "a..z=baz")
        line = logged(baz, "takes the cluster's table")
        assert "version 1" in line and GUIDE in line
        rows = status(running.ns)
        assert rows["baz"]["table_version"] == 1
        assert rows["baz"]["table"] == GUIDE
        assert (rows["baz"]["buckets"], rows["baz"]["keys"]) == (0, 0)
        check_all(text(running, "baz"), names, 5)  # routes by the cluster's table

        with_baz = "a..f=foo, g..m=baz, n..z=bar"
        out = ok(table_set(running.ns, with_baz))
        assert "moved g..m: foo -> baz, 60 buckets, 300 keys" in out.splitlines()
        rows = status(running.ns)
        assert {n: (r["buckets"], r["keys"]) for n, r in rows.items()} == {
            "foo": (40, 200),
            "baz": (60, 300),
            "bar": (40, 200),
        }
        assert {r["table_version"] for r in rows.values()} == {2}
        for node in ("foo", "bar", "baz"):
            check_all(text(running, node), names, 5)
        only_on_owners(running.ns, by_first_byte(with_baz))
        with Conn(text(running, "foo")) as conn:  # a write through foo lands on baz
            assert conn.ask("CREATE gnew") == b"OK"
            assert conn.ask("PUT gnew k 1") == b"OK"
        assert "gnew" in held(running.ns)["baz"]

        out = ok(table_set(running.ns, "a..h=foo, i..z=bar"))
        assert "moved g..h: baz -> foo, 21 buckets, 101 keys" in out
        assert "moved i..m: baz -> bar, 40 buckets, 200 keys" in out
        rows = status(running.ns)
        assert (rows["baz"]["buckets"], rows["baz"]["keys"]) == (0, 0)
        assert rows["baz"]["table_version"] == 3
        assert running.nodes.pop("baz").stop() == 0
        rows = status(running.ns)
        assert set(rows) == {"foo", "bar"}
        for node in ("foo", "bar"):
            check_all(text(running, node), names, 5)
            with Conn(text(running, node)) as conn:
                assert conn.ask("GET gnew k") == b"1|OK"
        assert table_show(running.ns)["nodes"] == {"bar": 3, "foo": 3}


@pytest.mark.parametrize("expect", [True, False], ids=["expect-version", "plain"])
def test_two_changes_at_once_one_wins_and_nothing_of_the_other_applies(
    expect: bool,
) -> None:
    """Two table set started together, with --expect-version 1 or without: exactly
    one exits 0; the other exits 1 with TableVersionError naming the current
    version; the table is the winner's, and nothing of the loser's is applied.
    Without --expect-version two that did not overlap both apply, in turn."""
    with cluster({"foo": GUIDE, "bar": GUIDE}) as running:
        fill(text(running, "foo"), [f"g{i}" for i in range(200)], 100)
        fill(text(running, "bar"), [f"t{i}" for i in range(200)], 100)
        ok(table_set(running.ns, GUIDE))  # version 1
        one, two = "a..f=foo, g..z=bar", "a..m=bar, n..z=foo"
        flags = ["--expect-version", "1"] if expect else []
        procs = [
            start("table", "set", spec, *flags, *ns_flag(running.ns))
            for spec in (one, two)
        ]
        results = [(p.wait(120), *p.communicate()) for p in procs]
        if not expect and [code for code, _, _ in results] == [0, 0]:
            # they did not overlap: one completed before the other looked (each
            # refuses while the other's coordinator runs), so both applied in turn
            last = next(i for i, r in enumerate(results) if "version 3" in r[1])
            assert "version 2" in results[1 - last][1], results
            spec = (one, two)[last]
            assert table_show(running.ns)["table"] == spec
            only_on_owners(running.ns, by_first_byte(spec))
            return
        _one_won(running.ns, results, (one, two))


def test_a_change_started_while_another_hands_off_is_refused_as_running() -> None:
    """A table set (the previous table, or another) that arrives while a change
    hands its buckets off: exit 1, TableVersionError saying another change runs and
    the version; the running change completes, and nothing of the second applies."""
    with cluster({"foo": GUIDE, "bar": GUIDE}) as running:
        fill(text(running, "foo"), [f"g{i}" for i in range(1000)], 200)
        ok(table_set(running.ns, GUIDE))  # version 1
        first = "a..f=foo, g..z=bar"
        foo = running.nodes["foo"]
        mark = len(foo.lines)
        winner = start("table", "set", first, *ns_flag(running.ns))
        logged(foo, "routes by table version 2", after=mark)
        for spec in (GUIDE, "a..z=foo"):  # undo it; another change
            second = table_set(running.ns, spec)
            if winner.poll() is not None:
                winner.communicate()  # its pipes, closed
                pytest.skip("the hand-off ended before the second change arrived")
            err = refused(second)
            assert "TableVersionError" in err and "another change is running" in err
            assert "version 2" in err, err
        results = [(winner.wait(120), *winner.communicate())]
        assert results[0][0] == 0, results
        assert table_show(running.ns) == {
            "version": 2,
            "table": first,
            "nodes": {"bar": 2, "foo": 2},
        }
        only_on_owners(running.ns, by_first_byte(first))
        rows = status(running.ns)
        assert (rows["bar"]["buckets"], rows["bar"]["keys"]) == (1000, 200_000)


def _one_won(
    ns: tuple[str, int],
    results: list[tuple[int, str, str]],
    specs: tuple[str, str],
) -> None:
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    winner = next(i for i, r in enumerate(results) if r[0] == 0)
    loser = results[1 - winner]
    assert "TableVersionError" in loser[2], loser
    assert re.search(r"version [12]\b", loser[2]), loser
    assert "Traceback" not in loser[2]
    spec = specs[winner]
    shown = table_show(ns)
    assert shown == {"version": 2, "table": spec, "nodes": {"bar": 2, "foo": 2}}
    only_on_owners(ns, by_first_byte(spec))
    rows = status(ns)
    assert rows["foo"]["buckets"] + rows["bar"]["buckets"] == 400
    assert rows["foo"]["keys"] + rows["bar"]["keys"] == 40_000
