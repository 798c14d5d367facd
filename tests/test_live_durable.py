"""Durable nodes and live routing tables together (issues 11 and 12): a node keeps
its table version in its data dir, and a node restarted with a data dir while its
buckets' owner changed hands them to their owner before READY, or keeps them aside
(never served) while the owner cannot be reached."""

from __future__ import annotations

from pathlib import Path

import pytest
from livecli import ok, pyrokv, status, table_set, table_show

from pyrokv.cluster import Child, LocalCluster, spawn_node
from pyrokv.testing import Conn

pytestmark = pytest.mark.distributed

GUIDE = "a..m=foo, n..z=bar"
LISTEN = ["--listen", "127.0.0.1:0"]


def _foo(running: LocalCluster, data: Path) -> Child:
    """Node foo with its data dir (fsync always), the cluster secret, a text port."""
    assert running.secret_file is not None
    child = spawn_node(
        "foo",
        running.ns,
        GUIDE,
        extra=[
            "--cluster-secret-file",
            running.secret_file,
            "--data-dir",
            str(data),
            "--fsync",
            "always",
            *LISTEN,
        ],
    )
    running.nodes["foo"] = child
    return child


def _text(child: Child) -> tuple[str, int]:
    address = child.listen_address()
    assert address is not None
    return address


def test_a_restarted_node_hands_buckets_it_no_longer_owns_to_their_owner(
    tmp_path: Path,
) -> None:
    """foo (with a data dir) holds apple; while foo is down the table gives a..m to
    bar (--drop-dead), and bar's apple gets a key of its own. foo restarted on its
    data dir takes version 2, hands apple to bar before READY (bar keeps its own
    keys, gains foo's), and holds nothing; its data dir kept the version."""
    with LocalCluster({"bar": GUIDE}, extra={"bar": LISTEN}) as running:
        foo = _foo(running, tmp_path / "foo")
        ok(table_set(running.ns, GUIDE))  # version 1
        with Conn(_text(foo)) as conn:
            assert conn.ask("CREATE apple") == b"OK"
            assert conn.ask("PUT apple old 1") == b"OK"
            assert conn.ask("PUT apple both foo") == b"OK"
        foo.kill()
        ok(table_set(running.ns, "a..z=bar", "--drop-dead"))  # version 2
        bar = _text(running.nodes["bar"])
        with Conn(bar) as conn:
            assert conn.ask("CREATE apple") == b"OK"
            assert conn.ask("PUT apple new 2") == b"OK"
            assert conn.ask("PUT apple both bar") == b"OK"
        foo = _foo(running, tmp_path / "foo")  # READY: handed off already
        assert any("takes the cluster's table, version 2" in x for x in foo.lines)
        assert any(
            "handed 1 buckets it held to their owner 'bar'" in x for x in foo.lines
        )
        rows = status(running.ns)
        assert rows["foo"]["buckets"] == 0 and rows["foo"]["table_version"] == 2
        for address in (_text(foo), bar):
            with Conn(address) as conn:
                assert conn.ask("GET apple old") == b"1|OK"
                assert conn.ask("GET apple new") == b"2|OK"
                assert conn.ask("GET apple both") == b"bar|OK"  # the owner's stays
        assert table_show(running.ns)["version"] == 2


def test_buckets_whose_owner_is_down_are_kept_aside_and_not_served(
    tmp_path: Path,
) -> None:
    """foo (data dir) holds apple; while foo is down apple's range goes to bar, and
    then bar goes down too. foo restarted learns the version from baz, cannot hand
    apple to bar, keeps it aside (its log and pyrokv status say so) and never
    serves it; the next table change hands it over."""
    with LocalCluster(
        {"bar": GUIDE, "baz": GUIDE}, extra={"bar": LISTEN, "baz": LISTEN}
    ) as running:
        foo = _foo(running, tmp_path / "foo")
        ok(table_set(running.ns, GUIDE))  # version 1: baz owns nothing
        with Conn(_text(foo)) as conn:
            assert conn.ask("CREATE apple") == b"OK"
            assert conn.ask("PUT apple k 1") == b"OK"
        foo.kill()
        ok(table_set(running.ns, "a..m=bar, n..z=baz", "--drop-dead"))  # version 2
        running.nodes.pop("bar").kill()
        foo = _foo(running, tmp_path / "foo")
        assert any("keeps aside the buckets of node 'bar'" in x for x in foo.lines)
        rows = status(running.ns)
        assert rows["foo"]["table_version"] == 2 and rows["foo"]["buckets"] == 1
        shown = pyrokv("status", "--ns", f"{running.ns[0]}:{running.ns[1]}").stdout
        assert "foo keeps 1 buckets aside" in shown
        with Conn(_text(foo)) as conn:
            reply = conn.ask("GET apple k")
            assert reply.startswith(b"ERROR"), reply  # bar's, and bar is down
        assert running.secret_file is not None
        running.nodes["bar"] = spawn_node(
            "bar",
            running.ns,
            GUIDE,
            extra=["--cluster-secret-file", running.secret_file, *LISTEN],
        )
        ok(table_set(running.ns, "a..l=bar, m..z=baz"))  # foo hands apple over
        with Conn(_text(running.nodes["bar"])) as conn:
            assert conn.ask("GET apple k") == b"1|OK"
        assert status(running.ns)["foo"]["buckets"] == 0
