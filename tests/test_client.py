"""pyrokv.Client against a spawned cluster."""

from __future__ import annotations

import pytest

from pyrokv import (
    BucketNotFoundError,
    Client,
    NodeUnavailableError,
    NoRouteError,
    TaskNotAllowedError,
)
from pyrokv.cluster import spawn_nameserver, spawn_node

pytestmark = pytest.mark.distributed


def test_create_put_get_delete_keep_types(guide: tuple[str, int], unique: str) -> None:
    """Values keep their Python types on a local and a routed bucket."""
    with Client(guide) as kv:
        for bucket in (f"a{unique}", f"z{unique}"):
            kv.create(bucket)
            kv.put(bucket, "milk", 1)
            kv.put(bucket, ("tuple", 2), {"nested": [1.5, None, b"\x00"]})
            assert kv.get(bucket, "milk") == 1
            assert kv.get(bucket, ("tuple", 2)) == {"nested": [1.5, None, b"\x00"]}
            assert kv.get(bucket, "eggs") is None
            assert kv.delete(bucket, "milk") == 1
            assert kv.get(bucket, "milk") is None
        assert kv.route("hello", "pyrokv.tasks.node_name") == "foo"
        assert kv.route("world", "pyrokv.tasks.node_name") == "bar"


def test_errors_arrive_as_their_classes(guide: tuple[str, int]) -> None:
    """A missing bucket, no route and a refused task raise pyrokv's own classes."""
    with Client(guide, via="bar") as kv:
        with pytest.raises(BucketNotFoundError):
            kv.get("anosuch", "k")
        with pytest.raises(NoRouteError, match="could not find entry for '1abc'"):
            kv.get("1abc", "k")
        with pytest.raises(TaskNotAllowedError):
            kv.route("hello", "os.system", ["true"])


def test_via_a_node_that_is_not_registered(guide: tuple[str, int]) -> None:
    """via naming an unknown node is NodeUnavailableError naming it."""
    with (
        Client(guide, via="nowhere", timeout=2) as kv,
        pytest.raises(NodeUnavailableError, match="'nowhere' is not registered"),
    ):
        kv.get("hello", "k")


def test_picks_a_live_node(unique: str) -> None:
    """Without via, the client skips registered nodes that are dead."""
    ns_child, ns = spawn_nameserver()
    dead, live = f"a{unique}", f"b{unique}"
    try:
        spawn_node(dead, ns, f"a..z={live}").kill()  # its registration stays behind
        child = spawn_node(live, ns, f"a..z={live}")
        try:
            with Client(ns) as kv:
                assert kv.route("x", "pyrokv.tasks.node_name") == live
                assert kv.node == live
        finally:
            child.stop()
        with (
            Client(ns, timeout=2) as kv,
            pytest.raises(NodeUnavailableError, match="no live pyrokv node"),
        ):
            kv.get("x", "k")
    finally:
        ns_child.stop()


def test_a_hung_owner_is_named_within_the_clients_timeout(unique: str) -> None:
    """A verb carries no budget in its arguments: the node takes the client's
    timeout from its connection, so a hung owner is named before the client gives
    up, though the node's own timeout is far longer."""
    import os
    import signal
    import time

    from pyrokv import NodeTimeoutError

    ns_child, ns = spawn_nameserver()
    near, far = f"a{unique}", f"b{unique}"
    table = f"a..m={near}, n..z={far}"
    nodes = []
    try:
        for name in (near, far):
            nodes.append(spawn_node(name, ns, table, extra=["--timeout", "30"]))
        with Client(ns, via=near, timeout=2) as kv:
            kv.create("zebras")
            kv.put("zebras", "k", 1)
            assert kv.get("zebras", "k") == 1
            os.kill(nodes[1].proc.pid, signal.SIGSTOP)
            try:
                start = time.monotonic()
                with pytest.raises(NodeTimeoutError, match=f"node '{far}'"):
                    kv.get("zebras", "k")
                assert time.monotonic() - start < 2.5
            finally:
                os.kill(nodes[1].proc.pid, signal.SIGCONT)
            assert kv.get("zebras", "k") == 1
    finally:
        for node in nodes:
            node.stop()
        ns_child.stop()
