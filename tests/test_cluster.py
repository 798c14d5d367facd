"""Routing across real node processes on a real Pyro5 name server."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from Pyro5.api import Proxy

import pyrokv
from pyrokv import (
    BucketNotFoundError,
    NodeNotRegisteredError,
    NodeUnavailableError,
    NoRouteError,
    PyroKVError,
    Router,
    RoutingLoopError,
    RoutingTable,
    TaskArgumentError,
    TaskNotAllowedError,
    naming,
)
from pyrokv.cluster import Child, ChildError, spawn_node
from pyrokv.router import task_name
from pyrokv.routing import Hop

pytestmark = pytest.mark.distributed

GUIDE = RoutingTable.parse("a..m=foo, n..z=bar")


@pytest.fixture(name="spawn")
def _spawn(ns: tuple[str, int]) -> Iterator:
    """Start extra nodes for one test; all are stopped at its end."""
    children: list[Child] = []

    def spawn(name: str, table: str, *extra: str) -> Child:
        child = spawn_node(name, ns, table, extra=extra)
        children.append(child)
        return child

    yield spawn
    for child in children:
        child.stop()


def ask(
    ns: tuple[str, int], node: str, bucket: str, func: str, *args: object
) -> object:
    router = Router(RoutingTable(), None, ns=ns)
    try:
        return router.via(node, bucket, func, args)
    finally:
        router.close()


@pytest.mark.parametrize("start", ["foo", "bar"])
def test_seed_routes_hello_to_foo_and_world_to_bar(
    guide: tuple[str, int], start: str
) -> None:
    """The guide's test: from either node, hello runs on foo and world on bar."""
    assert ask(guide, start, "hello", "pyrokv.tasks.node_name") == "foo"
    assert ask(guide, start, "world", "pyrokv.tasks.node_name") == "bar"


def test_seed_no_entry_raises_no_route(guide: tuple[str, int]) -> None:
    """A bucket b"\\x00" has no entry: NoRouteError, with the guide's text, from the remote node."""
    with pytest.raises(
        NoRouteError, match="could not find entry for b'\\\\x00' in table"
    ):
        ask(guide, "foo", b"\x00", "pyrokv.tasks.node_name")


def test_client_router_with_a_table_routes_directly(
    guide: tuple[str, int], unique: str
) -> None:
    """A Router holding the guide's table sends each request straight to the owner."""
    router = Router(GUIDE, None, ns=guide)
    try:
        assert router.route("apple", "pyrokv.tasks.node_name") == "foo"
        assert router.route("zebra", pyrokv.tasks.node_name) == "bar"
        bucket = f"z{unique}"
        router.route(bucket, "pyrokv.tasks.create", [bucket])
        router.route(
            bucket, "pyrokv.tasks.put", [bucket, "milk", {"n": 1, "b": b"\x00\xff"}]
        )
        assert router.route(bucket, "pyrokv.tasks.get", [bucket, "milk"]) == {
            "n": 1,
            "b": b"\x00\xff",
        }
        assert ask(guide, "bar", bucket, "pyrokv.tasks.lookup", bucket) is True
        assert ask(guide, "foo", "apple", "pyrokv.tasks.lookup", bucket) is False
    finally:
        router.close()


def test_errors_keep_their_class_across_hops(
    guide: tuple[str, int], unique: str
) -> None:
    """Errors raised on bar arrive through foo as the same class with the same text."""
    with pytest.raises(BucketNotFoundError, match=f"bucket 'z{unique}' does not exist"):
        ask(guide, "foo", f"z{unique}", "pyrokv.tasks.get", f"z{unique}", "k")
    with pytest.raises(
        TaskNotAllowedError, match="module 'os' is not in its allowlist"
    ):
        ask(guide, "foo", "zoo", "os.system", "true")
    with pytest.raises(TaskArgumentError, match="too many positional"):
        ask(guide, "foo", "zoo", "pyrokv.tasks.node_name", 1)


def test_three_nodes_with_different_tables_forward(
    spawn, ns: tuple[str, int], unique: str
) -> None:
    """foo sends everything to bar; bar sends a..m on to baz: a two-hop route."""
    foo, bar, baz = f"foo{unique}", f"bar{unique}", f"baz{unique}"
    spawn(foo, f"0..255={bar}")
    spawn(bar, f"a..m={baz}, n..z={bar}")
    spawn(baz, f"a..z={baz}")
    assert ask(ns, foo, "apple", "pyrokv.tasks.node_name") == baz
    assert ask(ns, foo, "zebra", "pyrokv.tasks.node_name") == bar
    ask(ns, foo, "apple", "pyrokv.tasks.create", "apple")
    assert ask(ns, baz, "apple", "pyrokv.tasks.lookup", "apple") is True
    with pytest.raises(
        NoRouteError, match=f"could not find entry for '1x' in table \\[a..m -> {baz}"
    ):
        ask(ns, foo, "1x", "pyrokv.tasks.node_name")
    with pytest.raises(BucketNotFoundError):
        ask(ns, foo, "apricot", "pyrokv.tasks.get", "apricot", "k")


def test_a_loop_between_two_tables_is_a_routing_loop(
    spawn, ns: tuple[str, int], unique: str
) -> None:
    """Two tables that point at each other give RoutingLoopError naming the path, quickly."""
    ping, pong = f"ping{unique}", f"pong{unique}"
    spawn(ping, f"a..z={pong}")
    spawn(pong, f"a..z={ping}")
    started = time.monotonic()
    with pytest.raises(RoutingLoopError, match=f"{ping} -> {pong} -> {ping}"):
        ask(ns, ping, "apple", "pyrokv.tasks.node_name")
    assert time.monotonic() - started < 5
    # the nodes still serve afterwards
    with pytest.raises(NoRouteError):
        ask(ns, ping, "1", "pyrokv.tasks.node_name")


def test_a_long_chain_passes_the_hop_limit(
    spawn, ns: tuple[str, int], unique: str
) -> None:
    """A chain of distinct nodes longer than the hop limit raises RoutingLoopError."""
    names = [f"h{i}{unique}" for i in range(4)]
    for here, there in itertools.pairwise(names):
        spawn(here, f"a..z={there}", "--timeout", "5")
    spawn(names[-1], f"a..z={names[-1]}")
    assert ask(ns, names[0], "x", "pyrokv.tasks.node_name") == names[-1]
    router = Router(
        RoutingTable.parse(f"a..z={names[0]}"), "origin", ns=ns, hop_limit=2
    )
    try:
        # the origin's own hop limit is not what stops it; each node applies its own (16)
        assert router.route("x", "pyrokv.tasks.node_name") == names[-1]
        with pytest.raises(RoutingLoopError, match="hop limit of 2"):
            router.forwarded("x", "pyrokv.tasks.node_name", [], None, ["a", "b"], None)
    finally:
        router.close()


def test_unregistered_owner_is_node_unavailable(
    spawn, ns: tuple[str, int], unique: str
) -> None:
    """An entry pointing at a node that never registered raises NodeUnavailableError naming it."""
    lone = f"lone{unique}"
    spawn(lone, f"a..m={lone}, n..z=ghost{unique}")
    with pytest.raises(
        NodeUnavailableError, match=f"node 'ghost{unique}' is not registered"
    ):
        ask(ns, lone, "zoo", "pyrokv.tasks.node_name")


def test_dead_owner_fails_fast_and_a_restart_is_found_again(
    spawn, ns: tuple[str, int], unique: str
) -> None:
    """A killed owner gives NodeUnavailableError; restarted on a new port, it is routed to again."""
    front, back = f"front{unique}", f"back{unique}"
    table = f"a..m={front}, n..z={back}"
    spawn(front, table)
    child = spawn(back, table)
    assert ask(ns, front, "zoo", "pyrokv.tasks.node_name") == back
    child.kill()  # dies without unregistering: the name server still has its old address
    started = time.monotonic()
    with pytest.raises(NodeUnavailableError, match=f"node '{back}'"):
        ask(ns, front, "zoo", "pyrokv.tasks.node_name")
    assert time.monotonic() - started < 5
    assert (
        ask(ns, front, "apple", "pyrokv.tasks.node_name") == front
    )  # others unaffected
    spawn(back, table)  # replaces the dead registration, on a new free port
    assert ask(ns, front, "zoo", "pyrokv.tasks.node_name") == back


def test_a_live_name_is_refused(spawn, ns: tuple[str, int], unique: str) -> None:
    """A second node with a live node's name refuses to start and says why."""
    name = f"dup{unique}"
    spawn(name, f"a..z={name}")
    with pytest.raises(ChildError, match="is taken: a live node answers"):
        spawn(name, f"a..z={name}")
    assert ask(ns, name, "a", "pyrokv.tasks.node_name") == name


def test_sigterm_unregisters(ns: tuple[str, int], unique: str) -> None:
    """SIGTERM removes both names from the name server and exits 0."""
    name = f"term{unique}"
    child = spawn_node(name, ns, f"a..z={name}")
    with naming.ns_proxy(*ns, 5) as proxy:
        assert naming.tasks_name(name) in proxy.list(prefix=f"pyrokv.{name}.")
        assert child.stop() == 0
        assert proxy.list(prefix=f"pyrokv.{name}.") == {}


def test_registration_has_names_and_metadata(guide: tuple[str, int]) -> None:
    """Nodes register pyrokv.NAME.registry and pyrokv.NAME.tasks with metadata pyrokv.node."""
    with naming.ns_proxy(*guide, 5) as proxy:
        found = proxy.yplookup(meta_all={"pyrokv.node"}, return_metadata=False)
        for node in ("foo", "bar"):
            assert f"pyrokv.{node}.registry" in found
            assert f"pyrokv.{node}.tasks" in found
        with Proxy(found["pyrokv.foo.registry"]) as registry:
            assert isinstance(registry.buckets(), list)


def test_in_process_nodes_swap_tables_at_run_time(
    ns: tuple[str, int], unique: str
) -> None:
    """Two nodes in one process: a swapped table takes effect on the next request."""
    one, two = f"one{unique}", f"two{unique}"
    table = RoutingTable.parse(f"a..m={one}, n..z={two}")
    with pyrokv.start_node(one, table, ns) as a, pyrokv.start_node(two, table, ns) as b:
        assert a.router.route("zoo", "pyrokv.tasks.node_name") == two
        assert a.router.route("apple", "pyrokv.tasks.node_name") == one  # no hop
        a.router.table = RoutingTable.parse(f"a..z={one}")
        assert a.router.route("zoo", "pyrokv.tasks.node_name") == one
        b.router.table = RoutingTable.parse(f"a..z={one}")
        assert ask(ns, two, "zoo", "pyrokv.tasks.node_name") == one
        with pytest.raises(TypeError):
            a.router.table = "a..z=x"  # type: ignore[assignment]


def test_timeout_names_the_slow_node(
    ns: tuple[str, int], unique: str, tmp_path, monkeypatch
) -> None:
    """An owner slower than the timeout gives NodeUnavailableError within the timeout."""
    (tmp_path / f"slow_{unique}.py").write_text(
        "import time\ndef nap(s):\n    time.sleep(s)\n    return 'late'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fast, slow = f"fast{unique}", f"slow{unique}"
    table = RoutingTable.parse(f"a..m={fast}, n..z={slow}")
    with (
        pyrokv.start_node(fast, table, ns, timeout=1.0) as a,
        pyrokv.start_node(slow, table, ns, allow=["pyrokv.tasks", f"slow_{unique}"]),
    ):
        started = time.monotonic()
        with pytest.raises(
            NodeUnavailableError, match=f"node '{slow}' did not answer within 1.0s"
        ):
            a.router.route("zoo", f"slow_{unique}.nap", [3])
        assert time.monotonic() - started < 2.5
        assert a.router.route("zoo", f"slow_{unique}.nap", [0]) == "late"


def test_functions_and_lambdas_as_tasks() -> None:
    """A module-level function becomes its dotted name; a lambda or method is refused."""
    assert task_name(pyrokv.tasks.get) == "pyrokv.tasks.get"
    assert task_name("x.y") == "x.y"
    for bad in (lambda: 1, Router.route, print, (lambda: lambda: 0)()):
        with pytest.raises(TaskNotAllowedError, match="cannot send"):
            task_name(bad)


def test_name_server_down_is_node_unavailable() -> None:
    """No name server at the address: NodeUnavailableError naming it."""
    router = Router(GUIDE, None, ns=("127.0.0.1", 1), timeout=2)
    with pytest.raises(
        NodeUnavailableError, match=r"cannot reach the name server at 127\.0\.0\.1:1"
    ):
        router.route("apple", "pyrokv.tasks.node_name")


def test_pyrokv_error_base_catches_all(guide: tuple[str, int]) -> None:
    """Every routed failure is a PyroKVError."""
    with pytest.raises(PyroKVError):
        ask(guide, "foo", "", "pyrokv.tasks.node_name")


def test_a_batch_carries_results_and_errors_per_item(
    guide: tuple[str, int], unique: str
) -> None:
    """forward_batch sends several requests in one call; each keeps its own result or error class."""
    router = Router(RoutingTable(), None, ns=guide)
    bucket = f"z{unique}"
    try:
        results = router.forward_batch(
            "bar",
            [
                [bucket, "pyrokv.tasks.create", [bucket]],
                [bucket, "pyrokv.tasks.put", [bucket, "k", "v"]],
                [bucket, "pyrokv.tasks.get", [bucket, "k"]],
                ["znosuch", "pyrokv.tasks.get", ["znosuch", "k"]],
                ["apple", "pyrokv.tasks.node_name", []],  # bar forwards this one to foo
                ["1x", "pyrokv.tasks.node_name", []],
                [bucket, "os.system", ["true"]],
            ],
        )
    finally:
        router.close()
    assert results[:3] == [[True, None], [True, None], [True, "v"]]
    assert results[4] == [True, "foo"]
    assert [type(value) for ok, value in results if not ok] == [
        BucketNotFoundError,
        NoRouteError,
        TaskNotAllowedError,
    ]


def test_route_runs_answers_values_and_errors_by_index(
    ns: tuple[str, int], unique: str
) -> None:
    """route_runs takes calls in runs of one task (bucket first) and answers every
    result in order, None where a call failed, and the failures by index;
    malformed runs are refused with TaskArgumentError."""
    one = f"one{unique}"
    table = RoutingTable.parse(f"a..z={one}")
    with pyrokv.start_node(one, table, ns) as a:
        create, put, get = (f"pyrokv.tasks.{v}" for v in ("create", "put", "get"))
        values, errors = a.runner.route_runs(
            [
                [create, 1, ["apple"]],
                [put, 3, ["apple", "k", 1, "apple", "j", 2]],
                [get, 2, ["apple", "k", "nosuch", "k", "1x", "k", "apple", "j"]],
            ]
        )
        assert values == [None, None, None, 1, None, None, 2]
        assert {i: type(e) for i, e in errors.items()} == {
            4: BucketNotFoundError,
            5: NoRouteError,
        }
        for bad in (
            "x",
            [[get, 0, []]],
            [[get, 2, ["apple"]]],
            [[get, "2", ["apple", "k"]]],
            [[get, 2, [1, "k"]]],
            [[get, 2]],
        ):
            with pytest.raises(TaskArgumentError):
                a.runner.route_runs(bad)


def test_the_node_sends_each_owner_its_items_in_one_call(
    ns: tuple[str, int], unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """route_batch runs local items in place, sends each other owner its items in one
    send_batch call, and answers in call order; an unreachable owner fails its own."""
    one, two, ghost = f"one{unique}", f"two{unique}", f"ghost{unique}"
    table = RoutingTable.parse(f"a..m={one}, n..r={two}, s..z={ghost}")
    with pyrokv.start_node(one, table, ns) as a, pyrokv.start_node(two, table, ns) as b:
        calls: list[tuple[str, list[Any]]] = []
        original = a.router.send_batch

        def send_batch(hop: Hop, items: Any, deadline: float) -> Any:
            calls.append((hop.owner, [item[0] for item in items]))
            return original(hop, items, deadline)

        monkeypatch.setattr(a.router, "send_batch", send_batch)
        results = a.runner.route_batch(
            [
                ["apple", "pyrokv.tasks.create", ["apple"]],
                ["nut", "pyrokv.tasks.create", ["nut"]],
                ["sea", "pyrokv.tasks.create", ["sea"]],
                ["apple", "pyrokv.tasks.put", ["apple", "k", 1]],
                ["nut", "pyrokv.tasks.put", ["nut", "k", 2]],
                ["1x", "pyrokv.tasks.get", ["1x", "k"]],
                ["nut", "pyrokv.tasks.get", ["nut", "k"]],
                ["apple", "pyrokv.tasks.get", ["apple", "k"]],
                ["sea", "pyrokv.tasks.get", ["sea", "k"]],
            ]
        )
        assert calls == [(two, ["nut", "nut", "nut"]), (ghost, ["sea", "sea"])]
        assert [value if ok else type(value) for ok, value in results] == [
            None,
            None,
            NodeNotRegisteredError,
            None,
            None,
            NoRouteError,
            2,
            1,
            NodeNotRegisteredError,
        ]
        assert a.runner.stats.requests.total() == 9
        assert a.runner.stats.requests.error["GET"] == 2
        assert b.runner.stats.peer_requests.ok == {"CREATE": 1, "PUT": 1, "GET": 1}
