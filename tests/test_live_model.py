"""Live routing tables against a model (issue 11): a dict of dicts, whatever the table.

A hypothesis state machine over three nodes creates, writes, reads and deletes
through random nodes, over the text protocol and the Python client, while it
changes the cluster's table at random (first-byte and hashed); after each change
every bucket must live on its owner only, and every value must still be there.
One cluster serves every example of the module: each example's buckets carry a
prefix of their own, so examples do not see each other's data (the placement
check covers every bucket, old examples' too).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)
from livetesting import NODES, misplaced, placement, pyrokv_cli, start_cluster, tables

from pyrokv import BucketNotFoundError, Client, Cluster, RoutingTable
from pyrokv.cluster import LocalCluster
from pyrokv.testing import Conn

pytestmark = pytest.mark.distributed

#: First characters of bucket names: first bytes all over 0..255, so that random
#: first-byte tables split them (é is 0xc3 in UTF-8).
FIRSTS = "0AZafmntz~é"
#: Where ranges of random tables start: anywhere, or at or next to those bytes.
CUTS = st.one_of(
    st.integers(1, 255),
    st.sampled_from(
        sorted(
            {
                b + d
                for c in FIRSTS
                for b in [c.encode()[0]]
                for d in (0, 1)
                if b + d <= 255
            }
        )
    ),
)
_runs = itertools.count()


@pytest.fixture(name="three", scope="module")
def _three() -> Iterator[LocalCluster]:
    """foo, bar and baz with text ports and a cluster secret, for the whole module."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


class LiveStore(RuleBasedStateMachine):
    """Requests through any node and either path agree with a dict, across changes."""

    cluster: LocalCluster  # set by the test before it runs the machine

    names = st.sampled_from([f"{first}{n}" for first in FIRSTS for n in (1, 2)])
    keys = st.sampled_from(["k1", "k2", "k3"])
    values = st.text(alphabet="abcxyz0123", min_size=1, max_size=6)
    nodes = st.sampled_from(NODES)
    paths = st.sampled_from(["text", "client"])

    @initialize()
    def start(self) -> None:
        cluster = self.cluster
        self.prefix = f"-{next(_runs)}-{uuid.uuid4().hex[:6]}-"
        self.model: dict[str, dict[str, str]] = {}
        self.conns: dict[str, Conn] = {}
        self.clients: dict[str, Client] = {}
        for node in NODES:
            address = cluster.nodes[node].listen_address()
            assert address is not None
            self.conns[node] = Conn(address)
            self.clients[node] = Client(cluster.ns, via=node)
        self.admin = Cluster(cluster.ns)
        shown = self.admin.table()
        self.version, self.spec = shown["version"], shown["table"]

    def teardown(self) -> None:
        for conn in getattr(self, "conns", {}).values():
            conn.close()
        for client in getattr(self, "clients", {}).values():
            client.close()

    def bucket(self, name: str) -> str:
        return f"{name[0]}{self.prefix}{name[1:]}"

    def text(self, node: str, line: str) -> bytes:
        return self.conns[node].ask(line.encode("utf-8"))

    @rule(name=names, node=nodes, path=paths)
    def create(self, name: str, node: str, path: str) -> None:
        bucket = self.bucket(name)
        if path == "text":
            assert self.text(node, f"CREATE {bucket}") == b"OK"
        else:
            self.clients[node].create(bucket)
        self.model.setdefault(bucket, {})

    @rule(name=names, key=keys, value=values, node=nodes, path=paths)
    def put(self, name: str, key: str, value: str, node: str, path: str) -> None:
        bucket = self.bucket(name)
        exists = bucket in self.model
        if path == "text":
            reply = self.text(node, f"PUT {bucket} {key} {value}")
            assert reply == (b"OK" if exists else b"NOT FOUND")
        elif exists:
            self.clients[node].put(bucket, key, value)
        else:
            with pytest.raises(BucketNotFoundError):
                self.clients[node].put(bucket, key, value)
        if exists:
            self.model[bucket][key] = value

    @rule(name=names, key=keys, node=nodes, path=paths)
    def get(self, name: str, key: str, node: str, path: str) -> None:
        self.check_get(self.bucket(name), key, node, path)

    def check_get(self, bucket: str, key: str, node: str, path: str) -> None:
        expected = self.model[bucket].get(key) if bucket in self.model else None
        if path == "text":
            reply = self.text(node, f"GET {bucket} {key}")
            if bucket not in self.model:
                assert reply == b"NOT FOUND"
            else:
                assert reply == f"{expected or ''}|OK".encode()
        elif bucket in self.model:
            assert self.clients[node].get(bucket, key) == expected
        else:
            with pytest.raises(BucketNotFoundError):
                self.clients[node].get(bucket, key)

    @rule(name=names, key=keys, node=nodes, path=paths)
    def delete(self, name: str, key: str, node: str, path: str) -> None:
        bucket = self.bucket(name)
        exists = bucket in self.model
        if path == "text":
            reply = self.text(node, f"DELETE {bucket} {key}")
            assert reply == (b"OK" if exists else b"NOT FOUND")
        elif exists:
            old = self.clients[node].delete(bucket, key)
            assert old == self.model[bucket].get(key)
        else:
            with pytest.raises(BucketNotFoundError):
                self.clients[node].delete(bucket, key)
        if exists:
            self.model[bucket].pop(key, None)

    @rule(name=names, node=nodes)
    def keys_of(self, name: str, node: str) -> None:
        bucket = self.bucket(name)
        if bucket in self.model:
            assert self.clients[node].keys(bucket) == sorted(self.model[bucket])
        else:
            with pytest.raises(BucketNotFoundError):
                self.clients[node].keys(bucket)

    @rule(spec=tables(cuts=CUTS), node=nodes, path=paths)
    def change(self, spec: str, node: str, path: str) -> None:
        result = self.admin.set_table(spec, timeout=30.0)
        same = spec == self.spec and self.version > 0  # nothing to do
        assert result["version"] == (self.version if same else self.version + 1)
        assert result["lost"] == []
        self.version, self.spec = result["version"], spec
        shown = self.admin.table()
        assert shown["version"] == self.version
        assert shown["table"] == spec
        assert shown["nodes"] == dict.fromkeys(sorted(NODES), self.version)
        assert shown["complete"]
        assert shown["down"] == {}
        assert misplaced(self.cluster.ns, NODES, spec) == {}
        held = placement(self.cluster.ns, NODES)
        for bucket in self.model:
            assert bucket in held, f"bucket {bucket!r} is gone after {spec}"
        for bucket, items in self.model.items():  # every value, through one node
            for key in ["k1", "k2", "k3"]:
                self.check_get(bucket, key, node, path)
            assert set(items) <= {"k1", "k2", "k3"}


def _run(cluster: LocalCluster, examples: int, steps: int) -> None:
    LiveStore.cluster = cluster
    run_state_machine_as_test(
        LiveStore,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_live_tables_keep_the_store_a_dict(three: LocalCluster) -> None:
    """Across random table changes (first-byte and hashed), requests through any
    node, over text and the Python client, agree with a dict, and every bucket
    lives only on its owner after each change."""
    _run(three, examples=12, steps=20)


@pytest.mark.slow
def test_live_tables_keep_the_store_a_dict_long(three: LocalCluster) -> None:
    """The model test above with many more examples and longer runs."""
    _run(three, examples=150, steps=40)


#: Tables that differ per node at version 0, as in the tests that chain nodes:
#: each entry is (the nodes' tables, where a..m and n..z live).
CHAINS = {
    "foo-bar-baz": (
        {"foo": "a..z=bar", "bar": "a..m=bar, n..z=baz", "baz": "a..m=bar, n..z=baz"},
        ("bar", "baz"),
    ),
    "bar-foo-baz": (
        {"bar": "a..z=foo", "foo": "a..m=foo, n..z=baz", "baz": "a..m=foo, n..z=baz"},
        ("foo", "baz"),
    ),
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_version_zero_with_differing_tables_then_the_first_change(
    chain: str, unique: str
) -> None:
    """At version 0 each node routes by its own table (one node sends a..z on to a
    second, which owns a..m and sends n..z on to a third); data written there
    through every node survives the first ``table set``, each bucket lands on its
    owner, the summary counts what moved from where, and ``table show`` says
    version 1."""
    tables_, (low, high) = CHAINS[chain]
    cluster = start_cluster(tables_)
    try:
        ns = f"{cluster.ns[0]}:{cluster.ns[1]}"
        shown = json.loads(pyrokv_cli("table", "show", "--json", "--ns", ns).stdout)
        assert shown == {
            "version": 0,
            "table": None,
            "nodes": {"bar": 0, "baz": 0, "foo": 0},
        }
        model: dict[str, dict[str, str]] = {}
        for i, first in enumerate("abmnstz"):
            node = NODES[i % 3]
            bucket = f"{first}{unique}"
            address = cluster.nodes[node].listen_address()
            assert address is not None
            with Conn(address) as conn, Client(cluster.ns, via=node) as client:
                assert conn.ask(f"CREATE {bucket}") == b"OK"
                assert conn.ask(f"PUT {bucket} text {i}") == b"OK"
                client.put(bucket, "client", f"c{i}")
            model[bucket] = {"text": str(i), "client": f"c{i}"}
        before = placement(cluster.ns, NODES)
        assert before == {b: [low] if b[0] <= "m" else [high] for b in model}
        spec = "a..f=foo, g..n=bar, o..z=baz"
        done = pyrokv_cli("table", "set", spec, "--json", "--ns", ns)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["version"] == 1
        assert result["lost"] == []
        new = RoutingTable.parse(spec)
        expected: dict[tuple[str, str], int] = {}
        for bucket, [holder] in before.items():
            if holder != new.owner(bucket):
                pair = (holder, new.owner(bucket))
                expected[pair] = expected.get(pair, 0) + 1
        reported: dict[tuple[str, str], int] = {}
        for move in result["moved"]:
            if move["buckets"]:
                pair = (move["from"], move["to"])
                reported[pair] = reported.get(pair, 0) + move["buckets"]
        assert reported == expected
        assert misplaced(cluster.ns, NODES, spec) == {}
        assert sorted(placement(cluster.ns, NODES)) == sorted(model)
        for node in NODES:
            with Client(cluster.ns, via=node) as client:
                for bucket, items in model.items():
                    for key, value in items.items():
                        assert client.get(bucket, key) == value
        shown = json.loads(pyrokv_cli("table", "show", "--json", "--ns", ns).stdout)
        assert shown == {
            "version": 1,
            "table": spec,
            "nodes": {"bar": 1, "baz": 1, "foo": 1},
        }
    finally:
        cluster.stop()
