"""The Client as redis-py users expect it: address forms, TLS, ping/keys/info, get's
default, pipelines, a closed client, repr and py.typed (issue 13)."""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import Pyro5.api
import pytest
from tlstesting import make_pki, restore_pyro_config

import pyrokv
import pyrokv.pipeline
from pyrokv import (
    BucketNotFoundError,
    Client,
    ClientClosedError,
    ConfigError,
    NodeNotRegisteredError,
    NodeUnavailableError,
    NoRouteError,
    TaskArgumentError,
    TaskNotAllowedError,
)
from pyrokv.client import parse_ns
from pyrokv.cluster import Child, spawn_nameserver, spawn_node
from pyrokv.guard import MAX_STRUCTURE
from pyrokv.pipeline import Pipeline, chunks, runs
from pyrokv.protocol import VERBS
from pyrokv.routing import Hop
from pyrokv.wire import tls_configured

pytestmark = pytest.mark.distributed

GET = VERBS[b"GET"].task_name
PUT = VERBS[b"PUT"].task_name
CREATE = VERBS[b"CREATE"].task_name


def spy_batches(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of each route_batch call ``client`` makes."""
    sizes: list[int] = []
    router = client._router
    original = router.send_batch

    def send_batch(hop: Hop, items: Any, deadline: float) -> Any:
        sizes.append(len(items))
        return original(hop, items, deadline)

    monkeypatch.setattr(router, "send_batch", send_batch)
    return sizes


# -- addresses -----------------------------------------------------------------


def test_every_address_form_reaches_the_cluster(guide: tuple[str, int]) -> None:
    """ "HOST:PORT", (host, port), [host, port], ns= and pyrokv://HOST:PORT all work."""
    host, port = guide
    forms: list[Callable[[], Client]] = [
        lambda: Client(f"{host}:{port}"),
        lambda: Client((host, port)),
        lambda: Client([host, port]),  # type: ignore[arg-type]
        lambda: Client(ns=f"{host}:{port}"),
        lambda: Client(ns=(host, port)),
        lambda: Client.from_url(f"pyrokv://{host}:{port}"),
        lambda: Client.from_url(f"pyrokv://{host}:{port}/"),
    ]
    for make in forms:
        with make() as kv:
            assert kv.ns == (host, port)
            assert kv.ping() is True


def test_a_url_carries_via_and_timeout(guide: tuple[str, int]) -> None:
    """?via= and &timeout= set the node and the timeout; keywords win over them."""
    host, port = guide
    with Client.from_url(f"pyrokv://{host}:{port}?via=bar&timeout=2.5") as kv:
        assert (kv.node, kv.timeout) == ("bar", 2.5)
        assert kv.info()["node"] == "bar"
    with Client.from_url(f"pyrokv://{host}:{port}?via=bar", via="foo", timeout=3) as kv:
        assert (kv.node, kv.timeout) == ("foo", 3.0)


def test_defaults_and_ipv6_addresses_are_read() -> None:
    """A URL without host or port takes the defaults; [::1]:PORT is IPv6."""
    assert parse_ns("[::1]:9091") == ("::1", 9091)
    assert parse_ns(" 10.0.0.1:0 ") == ("10.0.0.1", 0)
    with Client.from_url("pyrokv://") as kv:
        assert kv.ns == ("127.0.0.1", 9090)
    with Client.from_url("pyrokv://[::1]:9091") as kv:
        assert kv.ns == ("::1", 9091)
    with Client.from_url("pyrokv://example.test") as kv:
        assert kv.ns == ("example.test", 9090)


@pytest.mark.parametrize(
    "ns",
    ["127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000", ":9090", "pyrokv://h:9090",
     "h/x:9090", ("h",), ("h", "9090"),
     ("h", 1, 2), ("", 9090), ("h", True), ("h", -1), 9090, None],
)  # fmt: skip
def test_a_bad_address_is_a_config_error(ns: object) -> None:
    """An address in no known form raises ConfigError (a ValueError) saying what fits."""
    with pytest.raises(ConfigError, match=r"HOST:PORT"):
        Client(ns)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:9090",
        "127.0.0.1:9090",
        "pyrokv://127.0.0.1:99999",
        "pyrokv://127.0.0.1:9090/0",
        "pyrokv://user:pw@127.0.0.1:9090",
        "pyrokv://127.0.0.1:9090?db=0",
        "pyrokv://127.0.0.1:9090?via=a&via=b",
        "pyrokv://127.0.0.1:9090?timeout=0",
        "pyrokv://127.0.0.1:9090?timeout=soon",
        "pyrokv://127.0.0.1:9090#x",
    ],
)
def test_a_bad_url_is_a_config_error(url: str) -> None:
    """A URL that is not pyrokv://HOST:PORT[?via=..&timeout=..] raises ConfigError."""
    with pytest.raises(ConfigError, match="invalid pyrokv URL"):
        Client.from_url(url)


# -- TLS -------------------------------------------------------------------------


@pytest.fixture(name="tls_cluster")
def _tls_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> Iterator[tuple[Any, tuple[str, int], str]]:
    """A name server and a node under mutual TLS; Pyro5's config is put back after."""
    restore_pyro_config(monkeypatch)
    pki = make_pki(tmp_path)
    options = ["--tls-cert", str(pki.node_cert), "--tls-key", str(pki.node_key)]
    options += ["--tls-ca", str(pki.ca)]
    children: list[Child] = []
    try:
        ns_child, ns = spawn_nameserver(extra=options)
        children.append(ns_child)
        name = f"t{unique}"
        children.append(spawn_node(name, ns, f"a..z={name}", extra=options))
        yield pki, ns, name
    finally:
        for child in reversed(children):
            child.stop()


def test_tls_keyword_configures_tls(
    tls_cluster: tuple[Any, tuple[str, int], str], unique: str
) -> None:
    """Client(tls=...) turns mutual TLS on for the process and reaches a TLS cluster;
    a client with other certificates is refused, as the setting is process-wide."""
    pki, ns, name = tls_cluster
    assert not tls_configured()
    with Client(ns, tls=pki.client) as kv:
        assert tls_configured()
        assert str(pki.client_cert) == Pyro5.api.config.SSL_CLIENTCERT
        assert kv.ping() is True
        assert kv.node == name
        kv.create(f"b{unique}")
        kv.put(f"b{unique}", "k", [1, 2])
        assert kv.get(f"b{unique}", "k") == [1, 2]
        assert "tls" in repr(kv)
    with Client(f"{ns[0]}:{ns[1]}", tls=pki.client) as again:  # the same settings
        assert again.keys(f"b{unique}") == ["k"]
    with pytest.raises(ConfigError, match="process-wide"):
        Client(ns, tls=pki.rogue)
    assert str(pki.client_cert) == Pyro5.api.config.SSL_CLIENTCERT


# -- ping, keys, info, get ---------------------------------------------------------


def test_ping_keys_info_and_get_with_a_default(
    guide: tuple[str, int], unique: str
) -> None:
    """ping is True; keys is a sorted list; info is INFO's fields; get has a default."""
    with Client(guide, via="foo") as kv:
        assert kv.ping() is True
        for bucket in (f"a{unique}", f"z{unique}"):
            kv.create(bucket)
            assert kv.keys(bucket) == []
            for key in ("pear", "apple", "fig"):
                kv.put(bucket, key, key.upper())
            assert kv.keys(bucket) == ["apple", "fig", "pear"]
            assert kv.get(bucket, "fig", "none") == "FIG"
            assert kv.get(bucket, "kiwi") is None
            assert kv.get(bucket, "kiwi", default=0) == 0
        with pytest.raises(BucketNotFoundError):
            kv.get(f"anosuch{unique}", "k", "default")
        with pytest.raises(BucketNotFoundError):
            kv.keys(f"znosuch{unique}")
        info = kv.info()
        assert info["node"] == "foo"
        for field in ("pyrokv_version", "uptime_s", "table_version", "table"):
            assert field in info
        for field in ("buckets", "keys", "connections", "requests", "routed", "errors"):
            assert isinstance(info[field], int)
        assert info["pyrokv_version"] == pyrokv.__version__
        assert kv.info("bar")["node"] == "bar"
        with pytest.raises(NodeNotRegisteredError):
            kv.info(f"nowhere{unique}")


def test_ping_of_a_node_that_is_not_registered_raises(guide: tuple[str, int]) -> None:
    """ping through a node that does not exist raises NodeUnavailableError."""
    with (
        Client(guide, via="nowhere", timeout=2) as kv,
        pytest.raises(NodeUnavailableError),
    ):
        kv.ping()


# -- pipelines -----------------------------------------------------------------


def test_a_failed_call_in_a_pipeline_holds_its_exception(
    guide: tuple[str, int], unique: str
) -> None:
    """A failing call in the middle: its slot holds the exception, the others their
    results, in call order; nothing is raised."""
    bucket = f"a{unique}"
    with Client(guide) as kv:
        p = kv.pipeline()
        p.create(bucket).put(bucket, "milk", 1)
        p.get(f"anosuch{unique}", "milk")
        p.route("1abc", GET, ["1abc", "k"])
        p.route(bucket, "os.system", ["true"])
        p.get(bucket, "milk").get(bucket, "eggs", default=0).delete(bucket, "milk")
        p.keys(bucket)
        assert len(p) == 9
        results = p.execute()
        assert len(p) == 0 and p.results is results
    assert results[:2] == [None, None]
    assert type(results[2]) is BucketNotFoundError
    assert type(results[3]) is NoRouteError
    assert type(results[4]) is TaskNotAllowedError
    assert results[5:] == [1, 0, 1, []]


def test_a_pipeline_spans_both_nodes(guide: tuple[str, int], unique: str) -> None:
    """Calls for foo's and bar's buckets, sent through either node, land on their owners."""
    for via in ("foo", "bar"):
        mine, other = f"a{via}{unique}", f"z{via}{unique}"
        with Client(guide, via=via) as kv:
            with kv.pipeline() as p:
                for bucket in (mine, other):
                    p.create(bucket)
                for i in range(10):
                    p.put((mine, other)[i % 2], f"k{i}", i)
                p.route(mine, "pyrokv.tasks.node_name")
                p.route(other, "pyrokv.tasks.node_name")
                p.keys(mine).keys(other)
            assert p.results is not None
            assert p.results[:12] == [None] * 12
            assert p.results[12:14] == ["foo", "bar"]
            assert p.results[14] == ["k0", "k2", "k4", "k6", "k8"]
            assert p.results[15] == ["k1", "k3", "k5", "k7", "k9"]
            assert kv.get(other, "k9") == 9


def test_a_with_block_that_raises_sends_nothing(
    guide: tuple[str, int], unique: str
) -> None:
    """An exception inside the block drops the queued calls, unsent."""
    bucket = f"a{unique}"
    with Client(guide) as kv:
        p = kv.pipeline()

        def queue_then_fail() -> None:
            with p:
                p.create(bucket)
                raise RuntimeError("stop")

        with pytest.raises(RuntimeError, match="stop"):
            queue_then_fail()
        assert p.results is None and len(p) == 0
        with pytest.raises(BucketNotFoundError):
            kv.keys(bucket)
        assert kv.pipeline().execute() == []


def test_a_pipeline_through_an_unreachable_node_fills_every_slot(
    guide: tuple[str, int],
) -> None:
    """When the call itself fails, every slot holds that error."""
    with Client(guide, via="nowhere", timeout=2) as kv:
        results = kv.pipeline().create("apple").get("apple", "k").execute()
    assert [type(r) for r in results] == [NodeNotRegisteredError] * 2


def test_a_pipeline_of_the_verbs_goes_in_one_compact_call(
    guide: tuple[str, int], unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls whose first argument is their bucket go as one route_runs call, in
    runs of one task; a route with other arguments sends the pipeline as items."""
    sent: list[tuple[int, list[list[Any]] | None]] = []
    original = pyrokv.pipeline._send_chunk

    def spy(router: Any, node: str, chunk: Any, compact: Any, timeout: float) -> Any:
        sent.append((len(chunk), compact))
        return original(router, node, chunk, compact, timeout)

    monkeypatch.setattr(pyrokv.pipeline, "_send_chunk", spy)
    bucket = f"z{unique}"
    with Client(guide, via="foo") as kv:
        p = kv.pipeline().create(bucket).put(bucket, "a", 1).put(bucket, "b", 2)
        p.get(bucket, "a").get(bucket, "b").get(f"znosuch{unique}", "a")
        results = p.execute()
        assert results[:5] == [None, None, None, 1, 2]
        assert type(results[5]) is BucketNotFoundError
        assert sent == [
            (
                6,
                [
                    [CREATE, 1, [bucket]],
                    [PUT, 3, [bucket, "a", 1, bucket, "b", 2]],
                    [GET, 2, [bucket, "a", bucket, "b", f"znosuch{unique}", "a"]],
                ],
            )
        ]
        sent.clear()
        got = (
            kv.pipeline().get(bucket, "a").route(bucket, "pyrokv.tasks.ping").execute()
        )
        assert got == [1, "PONG"]
        assert sent == [(2, None)]


def test_runs_group_calls_of_one_task_in_a_row() -> None:
    """runs() keeps call order in runs of one task and width; None when a call's
    first argument is not its bucket."""
    items = [
        ["a", GET, ["a", "k"]],
        ["a", GET, ["a", "j"]],
        ["b", PUT, ["b", "k", 1]],
        ["b", GET, ["b", "k"]],
        ["b", GET, ["b", "k", "default"]],
    ]
    assert runs(items) == [
        [GET, 2, ["a", "k", "a", "j"]],
        [PUT, 3, ["b", "k", 1]],
        [GET, 2, ["b", "k"]],
        [GET, 3, ["b", "k", "default"]],
    ]
    assert runs([["a", GET, ["b", "k"]]]) is None
    assert runs([["a", "pyrokv.tasks.ping", []]]) is None
    assert runs([[b"a", GET, ["a", "k"]]]) is None
    assert runs([]) == []


def test_a_pipeline_past_the_structure_limit_is_split(
    guide: tuple[str, int], unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12,000 small calls pass the node's 128 KiB of structure: several calls, in order."""
    bucket = f"z{unique}"
    with Client(guide, via="foo") as kv:
        sizes = spy_batches(kv, monkeypatch)
        p = kv.pipeline().create(bucket)
        for i in range(12_000):
            p.put(bucket, i, i)
        p.get(bucket, 11_999)
        results = p.execute()
        assert len(sizes) >= 2 and sum(sizes) == 12_002
        assert results == [None] * 12_001 + [11_999]
        assert kv.keys(bucket) == list(range(12_000))


def test_a_pipeline_past_the_message_size_is_split(
    guide: tuple[str, int], unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three values of 3 MiB pass the node's 8 MiB message limit: sent in two calls;
    a value too large for any message is refused alone, unsent."""
    bucket = f"z{unique}"
    values = [str(i) * (3 << 20) for i in range(3)]
    with Client(guide, via="bar") as kv:
        kv.create(bucket)
        sizes = spy_batches(kv, monkeypatch)
        p = kv.pipeline()
        for i, value in enumerate(values):
            p.put(bucket, i, value)
            if i == 1:
                p.put(bucket, "huge", b"\x00" * (3 << 20))  # b'\x00' takes 4 bytes
        results = p.execute()
        assert sizes == [2, 1]
        assert results[:2] == [None, None] and results[3] is None
        assert type(results[2]) is TaskArgumentError
        assert "too large to send" in str(results[2])
        for i, value in enumerate(values):
            assert kv.get(bucket, i) == value
        assert kv.keys(bucket) == [0, 1, 2]


def test_chunks_keep_order_and_stay_under_the_limits() -> None:
    """chunks() splits in order, each run under max_message and the structure limit;
    an item too large alone is an error in its place."""
    items = [["zoo", PUT, ["zoo", i, "x" * 100]] for i in range(5000)]
    runs = chunks(items, 64 * 1024 + 100 * 1024)
    assert [item for run in runs for item in run] == items
    assert len(runs) > 4 and all(run for run in runs)
    huge = [items[0], ["zoo", PUT, ["zoo", 0, "y" * 200_000]], *items[1:3]]
    runs = chunks(huge, 64 * 1024 + 100_000)
    assert runs[0] == huge[:1] and runs[2] == huge[2:]
    assert isinstance(runs[1], TaskArgumentError)
    small = [["zoo", PUT, ["zoo", i, i]] for i in range(MAX_STRUCTURE // 8)]
    assert len(chunks(small, 8 << 20)) > 1


# -- closing, repr, py.typed ---------------------------------------------------------


def test_a_closed_client_raises_on_use(guide: tuple[str, int]) -> None:
    """After close, every method raises ClientClosedError; closing twice is harmless."""
    kv = Client(guide)
    p = kv.pipeline().create("apple")
    kv.close()
    kv.close()
    assert kv.closed
    uses: list[Callable[[], object]] = [
        kv.ping,
        lambda: kv.get("apple", "k"),
        lambda: kv.put("apple", "k", 1),
        lambda: kv.create("apple"),
        lambda: kv.delete("apple", "k"),
        lambda: kv.keys("apple"),
        kv.info,
        lambda: kv.route("apple", "pyrokv.tasks.node_name"),
        kv.pipeline,
        lambda: kv.node,
        kv.__enter__,
        p.execute,
        p.__enter__,
    ]
    for use in uses:
        with pytest.raises(ClientClosedError, match="closed: make a new Client"):
            use()
    assert len(p) == 1  # kept: nothing was sent


def test_repr_says_where_which_node_and_whether_open(guide: tuple[str, int]) -> None:
    """repr names the name server, the node (once picked), the timeout and the state."""
    host, port = guide
    kv = Client(guide, timeout=2)
    assert repr(kv) == (
        f"<pyrokv.Client ns={host}:{port} node=(first live) timeout=2 open>"
    )
    kv.ping()
    assert repr(kv).startswith(f"<pyrokv.Client ns={host}:{port} node='")
    p = kv.pipeline().create("apple").get("apple", "k")
    assert repr(p) == f"<pyrokv.Pipeline 2 queued on {kv!r}>"
    assert isinstance(p, Pipeline) and bool(kv.pipeline())
    kv.close()
    assert repr(kv).endswith(" closed>")
    assert repr(Client("[::1]:9091", via="foo")) == (
        "<pyrokv.Client ns=[::1]:9091 node='foo' timeout=5 open>"
    )


def test_the_package_ships_py_typed() -> None:
    """The installed package holds py.typed, so type checkers read its annotations."""
    assert (importlib.resources.files("pyrokv") / "py.typed").is_file()
