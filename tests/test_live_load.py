"""Live routing tables under load (issue 11): no error, no lost write, no stale read.

Writers and readers on every node, over the text protocol and the Python client
(one request per call, and pipelines),
run while the cluster's table changes ten times (first-byte and hashed layouts,
one of them leaving a node empty). Each writer writes increasing values to keys
of its own and reads its own last acknowledged value back; each reader checks
that no read returns less than what was acknowledged before the read was sent,
nor less than it saw before. Both ways a node forwards text requests are tested:
peer links (the nodes share a cluster secret) and Pyro5 (they do not).
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from livetesting import NODES, START_TABLE, misplaced, placement, start_cluster

from pyrokv import Client, Cluster
from pyrokv.cluster import LocalCluster
from pyrokv.testing import Conn

pytestmark = pytest.mark.distributed

#: The tables the cluster goes through, in turn, from START_TABLE: each moves
#: ranges between all three nodes; the hashed ones move nearly every bucket.
LAYOUTS = [
    "0x00..f=bar, g..p=baz, q..0xff=foo",
    "hash: 0x00..0x55=foo, 0x56..0xaa=bar, 0xab..0xff=baz",
    "0x00..m=baz, n..0xff=foo",  # bar holds nothing
    "hash: 0x00..0x7f=bar, 0x80..0xff=baz",
    START_TABLE,
]
CHANGES = 10
#: Acknowledged writes between two changes (or WRITES_WAIT seconds, if fewer).
WRITES_BETWEEN = 1000
WRITES_WAIT = 3.0
#: Buckets the load uses: first bytes all over the tables' ranges.
FIRSTS = "0Aacegikmoqsuwy~"


@dataclass
class Load:
    """What every worker shares: the acknowledged values, and what went wrong."""

    buckets: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    #: (bucket, key) -> the last value its writer got acknowledged
    acked: dict[tuple[str, str], int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    writes: int = 0
    reads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, who: str, what: str) -> None:
        with self.lock:
            now = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
            self.errors.append(f"{now} {who}: {what}")


class TextPath:
    """One text connection to a node: read and write integer values."""

    def __init__(self, cluster: LocalCluster, node: str) -> None:
        address = cluster.nodes[node].listen_address()
        assert address is not None
        self.address = address
        self.conn = Conn(address)

    def put(self, bucket: str, key: str, value: int) -> None:
        reply = self.conn.ask(f"PUT {bucket} {key} {value}")
        if reply != b"OK":
            raise AssertionError(f"PUT {bucket} {key} {value}: {reply!r}")

    def get(self, bucket: str, key: str) -> int | None:
        line = f"GET {bucket} {key}"
        reply = self.conn.exchange(line)
        if len(reply) != 2:
            raise AssertionError(f"{line}: {reply!r}")
        return int(reply[0]) if reply[0] else None

    def reset(self) -> None:
        """A fresh connection after a failure (the old one may be out of step)."""
        self.conn.close()
        self.conn = Conn(self.address)

    def close(self) -> None:
        self.conn.close()


class ClientPath:
    """A Python client that sends its requests through one node."""

    def __init__(self, cluster: LocalCluster, node: str) -> None:
        self.client = Client(cluster.ns, via=node)

    def put(self, bucket: str, key: str, value: int) -> None:
        self.client.put(bucket, key, str(value))

    def get(self, bucket: str, key: str) -> int | None:
        value = self.client.get(bucket, key)
        return None if value is None else int(value)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self.client.close()


Path = TextPath | ClientPath


def writer(load: Load, who: str, path: Path) -> None:
    """Write 1, 2, 3 ... to key ``who`` of every bucket in turn; after each
    acknowledged write, read back the value last acknowledged in the bucket before."""
    value = 0
    last: tuple[str, int] | None = None
    while not load.stop.is_set():
        value += 1
        for bucket in load.buckets:
            if load.stop.is_set():
                break
            try:
                path.put(bucket, who, value)
            except Exception as exc:
                load.fail(
                    who, f"PUT {bucket} {who} {value}: {type(exc).__name__}: {exc}"
                )
                path.reset()
                continue  # not acknowledged: the value may or may not be there
            with load.lock:
                load.acked[bucket, who] = value
                load.writes += 1
            if last is not None:
                check, expected = last
                try:
                    got = path.get(check, who)
                except Exception as exc:
                    load.fail(who, f"GET {check} {who}: {type(exc).__name__}: {exc}")
                    path.reset()
                else:
                    if got != expected:
                        load.fail(
                            who,
                            f"GET {check} {who} is {got}, but {expected} was "
                            "acknowledged (a lost write or a stale read)",
                        )
            last = (bucket, value)


def batch_writer(load: Load, who: str, path: ClientPath) -> None:
    """Write 1, 2, 3 ... to key ``who`` of every bucket, all in one pipeline per
    value, then read them all back in one pipeline: each is the value just written."""
    value = 0
    while not load.stop.is_set():
        value += 1
        with path.client.pipeline() as puts:
            for bucket in load.buckets:
                puts.put(bucket, who, str(value))
        for bucket, result in zip(load.buckets, puts.results or [], strict=True):
            if result is not None:
                load.fail(who, f"PUT {bucket} {who} {value}: {result!r}")
                continue
            with load.lock:
                load.acked[bucket, who] = value
                load.writes += 1
        with path.client.pipeline() as gets:
            for bucket in load.buckets:
                gets.get(bucket, who)
        for bucket, result in zip(load.buckets, gets.results or [], strict=True):
            if result != str(value):
                load.fail(who, f"GET {bucket} {who} is {result!r}, not {value}")


def reader(load: Load, who: str, path: Path, keys: list[str]) -> None:
    """Read every writer's keys in turn: never below what was acknowledged before
    the read was sent, nor below what this reader read before."""
    seen: dict[tuple[str, str], int] = {}
    while not load.stop.is_set():
        for bucket in load.buckets:
            for key in keys:
                if load.stop.is_set():
                    return
                with load.lock:
                    floor = load.acked.get((bucket, key), 0)
                try:
                    got = path.get(bucket, key) or 0
                except Exception as exc:
                    load.fail(who, f"GET {bucket} {key}: {type(exc).__name__}: {exc}")
                    path.reset()
                    continue
                with load.lock:
                    load.reads += 1
                before = seen.get((bucket, key), 0)
                if got < max(floor, before):
                    load.fail(
                        who,
                        f"GET {bucket} {key} is {got}: {floor} was acknowledged "
                        f"before the read, and this reader saw {before} (a stale read)",
                    )
                seen[bucket, key] = got


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def node_warnings(cluster: LocalCluster, most: int = 40) -> list[str]:
    """The last ``most`` warnings and errors the nodes logged, for a failure's message."""
    lines = [
        f"  {line}"
        for child in cluster.nodes.values()
        for line in child.lines
        if " WARNING " in line or " ERROR " in line
    ]
    return ["the nodes logged:", *lines[-most:]]


def load_runs(load: Load) -> None:
    """Wait until the load made WRITES_BETWEEN more writes (at most WRITES_WAIT s)."""
    floor = load.writes
    wait_for(lambda: load.writes >= floor + WRITES_BETWEEN, WRITES_WAIT)


def run_load(cluster: LocalCluster, unique: str) -> dict[str, float]:
    """Writers and readers on every node, over both paths, while the table changes
    CHANGES times; returns what it measured. Fails on any error, lost write or
    stale read."""
    buckets = [f"{first}load{unique}" for first in FIRSTS]
    load = Load(buckets)
    admin = Cluster(cluster.ns)
    with Conn(cluster.nodes["foo"].listen_address() or ("", 0)) as conn:
        for bucket in buckets:
            assert conn.ask(f"CREATE {bucket}") == b"OK"
    paths: list[Path] = []
    threads: list[threading.Thread] = []
    writers: list[str] = []
    for node in NODES:
        for kind, make in (
            ("text", TextPath),
            ("text", TextPath),
            ("client", ClientPath),
        ):
            who = f"w{len(writers)}-{node}-{kind}"
            writers.append(who)
            path = make(cluster, node)
            paths.append(path)
            threads.append(threading.Thread(target=writer, args=(load, who, path)))
    for node in NODES:
        who = f"w{len(writers)}-{node}-pipeline"
        writers.append(who)
        pipe = ClientPath(cluster, node)
        paths.append(pipe)
        threads.append(threading.Thread(target=batch_writer, args=(load, who, pipe)))
    for node in NODES:
        for kind, make in (("text", TextPath), ("client", ClientPath)):
            path = make(cluster, node)
            paths.append(path)
            threads.append(
                threading.Thread(
                    target=reader, args=(load, f"r-{node}-{kind}", path, writers)
                )
            )
    changes: list[float] = []
    version = admin.table()["version"]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        for number in range(CHANGES):
            load_runs(load)
            spec = LAYOUTS[number % len(LAYOUTS)]
            result = admin.set_table(spec, timeout=30.0)
            changes.append(result["seconds"])
            version += 1
            assert result["version"] == version
            assert result["lost"] == []
        load_runs(load)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        for path in paths:
            path.close()
    elapsed = time.monotonic() - started
    assert not any(thread.is_alive() for thread in threads)
    assert load.errors == [], "\n".join(
        [f"{len(load.errors)} errors:", *load.errors[:30], *node_warnings(cluster)]
    )
    spec = LAYOUTS[(CHANGES - 1) % len(LAYOUTS)]
    assert misplaced(cluster.ns, NODES, spec) == {}
    assert sorted(placement(cluster.ns, NODES)) == sorted(buckets)
    for node in NODES:  # every acknowledged write is there, through every node
        with Client(cluster.ns, via=node) as client:
            for (bucket, key), value in load.acked.items():
                assert client.get(bucket, key) == str(value), (node, bucket, key)
    assert load.writes > CHANGES * WRITES_BETWEEN / 4  # the load did run
    return {
        "seconds": elapsed,
        "writes": load.writes,
        "reads": load.reads,
        "slowest_change": max(changes),
    }


@pytest.mark.parametrize("links", ["peer", "pyro5"])
def test_changes_under_load_lose_nothing(links: str, unique: str) -> None:
    """Ten table changes while writers and readers work through every node (text
    and client): no request fails, no acknowledged write is lost, no read is stale,
    and every bucket ends on its owner; over peer links and over Pyro5."""
    cluster = start_cluster(secret=links == "peer")
    try:
        measured = run_load(cluster, unique)
    finally:
        cluster.stop()
    print(f"{links}: {measured}")


#: Tables that send each of x, y and z through two nodes, each pair in turn, so
#: that three requests entered at the right nodes cross every link at once:
#: x: baz -> foo -> bar, y: foo -> bar -> baz, z: bar -> baz -> foo.
CROSSING = {
    "foo": "x..y=bar, z=foo",
    "bar": "x=bar, y..z=baz",
    "baz": "x=foo, y=baz, z=foo",
}


@pytest.mark.parametrize("links", ["peer", "pyro5"])
def test_requests_crossing_between_nodes_do_not_wait_for_each_other(
    links: str, unique: str
) -> None:
    """Requests that take two hops each, in a ring (as requests routed by an older
    table do while a change switches the nodes one by one), all complete: a node
    that sends a forwarded request on does not hold the link it came by while
    the link it goes out by waits for it."""
    cluster = start_cluster(CROSSING, secret=links == "peer", extra=["--timeout", "2"])
    entries = {"x": "baz", "y": "foo", "z": "bar"}
    errors: list[str] = []
    done: list[str] = []  # one item per thread that got every reply

    def work(first: str, node: str) -> None:
        address = cluster.nodes[node].listen_address()
        assert address is not None
        bucket = f"{first}{unique}"
        with Conn(address) as conn:
            for value in range(200):
                reply = conn.ask(
                    f"CREATE {bucket}" if not value else f"PUT {bucket} k {value}"
                )
                if reply != b"OK":
                    errors.append(f"{bucket} via {node}: {reply!r}")
                    return
        done.append(first)

    try:
        threads = [
            threading.Thread(target=work, args=item)
            for item in entries.items()
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == [], "\n".join([*errors, *node_warnings(cluster)])
        assert sorted(done) == sorted([*entries, *entries])
    finally:
        cluster.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    "links",
    ["peer", "pyro5"],
)
def test_requests_for_buckets_that_do_not_move_are_not_paused(links: str) -> None:
    """While a range of 100,000 keys moves from foo to bar, and another client asks
    foo for a bucket of that range, reads through foo of a bucket of bar's that
    does not move keep being answered (none takes half a second)."""
    table = "a..m=foo, n..z=bar"
    cluster = start_cluster({"foo": table, "bar": table}, secret=links == "peer")
    try:
        foo = cluster.nodes["foo"].listen_address()
        assert foo is not None
        with Conn(foo, timeout=60) as conn:
            conn.expect(
                b"".join(b"CREATE a%d\r\n" % i for i in range(1000)), b"OK\r\n" * 1000
            )
            conn.expect(
                b"".join(
                    b"PUT a%d k%d v\r\n" % (i, j)
                    for i in range(1000)
                    for j in range(100)
                ),
                b"OK\r\n" * 100_000,
            )
            assert conn.ask("CREATE night") == b"OK"
            assert conn.ask("PUT night k 1") == b"OK"
        stop = threading.Event()
        timings: dict[str, list[tuple[float, float]]] = {"night": [], "a1": []}
        replies: dict[str, set[bytes]] = {"night": set(), "a1": set()}

        def read(bucket: str, key: str) -> None:
            with Conn(foo) as conn:
                while not stop.is_set():
                    sent = time.monotonic()
                    replies[bucket].add(conn.ask(f"GET {bucket} {key}"))
                    timings[bucket].append((sent, time.monotonic() - sent))

        threads = [
            threading.Thread(target=read, args=("night", "k")),
            threading.Thread(target=read, args=("a1", "k1")),
        ]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(timings["night"]) > 100, 10.0)
            started = time.monotonic()
            result = Cluster(cluster.ns).set_table("a..f=bar, g..m=foo, n..z=bar")
            ended = time.monotonic()
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        assert result["moved"][0]["keys"] == 100_000
        assert replies == {"night": {b"1|OK"}, "a1": {b"v|OK"}}
        during = [took for sent, took in timings["night"] if started <= sent <= ended]
        assert during, "no read of the bucket that stays ran during the change"
        assert max(during) < 0.5, (
            f"a read of a bucket that does not move took {max(during):.2f} s "
            f"while the change took {ended - started:.2f} s"
        )
    finally:
        cluster.stop()
