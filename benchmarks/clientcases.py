"""The cases of the Python client, value sizes and a YCSB mix (issue "Performance II").

``client``
    ``Client.get`` of a bucket on the node the client talks to (``apple`` on foo)
    against the bare Pyro5 daemon's ``get`` on a reused proxy, from 1 and from 8
    threads of one process of their own (``clientbench.py``); and
    ``Client.pipeline()`` of 100 GETs against single ``Client.get`` calls (GETs/s).
``sizes``
    Text GET and PUT of 100 B, 4 KiB and 60 KiB values on foo, of a bucket it owns
    (``apple``) and of one bar owns (``zoo``, routed), one connection, against echo
    servers answering the same request with a reply as long as pyrokv's, in MB/s of
    values. Every server is pinned to one CPU and the client to the other, as for
    one connection in ``local_get`` (a routed GET on one connection is one process
    working at a time: client, foo, bar, foo, client).
``ycsb``
    YCSB's core workloads A (50 % reads, 50 % updates), B (95/5) and C (reads only),
    zipfian keys (``ycsbload.py``) over ``ycsb_keys`` keys in 1,000 buckets named
    a..z in turn (so about half belong to bar and are routed), 8 connections to
    foo's text port from 8 threads of one process: ops/s, p50 and p99; beside them
    the plain local GET on 8 connections, for context.

The processes these cases need beyond the suite's are started on first use and
stopped with the suite. Each case's measures take turns in slices of a window of
half the suite's ``--duration`` (:func:`interleave`, :func:`window`).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from benchmarks import ycsbload
from benchmarks.harness import (
    GET_LOCAL,
    START_TIMEOUT,
    TEXT_TIMEOUT,
    Helper,
    Suite,
    pinned,
    script,
)
from benchmarks.results import Target, ratio
from pyrokv.naming import parse_address
from pyrokv.testing import Conn

__all__ = ["SIZES", "WORKLOADS", "client", "interleave", "sizes", "ycsb"]

#: The value sizes of the ``sizes`` case, by the label its rows show.
SIZES: dict[str, int] = {"100 B": 100, "4 KiB": 4 * 1024, "60 KiB": 60 * 1024}
#: The size whose GET has targets: local >= 0.8x the echo server, routed >= 0.4x.
TARGET_SIZE = "60 KiB"
#: YCSB's core workloads: the share of reads (the rest are updates).
WORKLOADS: dict[str, float] = {"A": 0.5, "B": 0.95, "C": 1.0}
YCSB_BUCKETS = 1_000
#: Requests drawn for each workload, sent round and round (fewer when the key
#: space is smaller).
YCSB_REQUESTS = 40_000
PIPELINE = 100
#: The name the suite gives its bare Pyro5 daemon (harness.py).
BARE = "bare Pyro5 daemon"


@dataclass
class Extras:
    """The processes and addresses these cases add to a suite."""

    client: Helper | None = None
    ycsb: Helper | None = None
    #: echo servers: "PUT" (answers OK) and one per size label (answers a GET's reply)
    echoes: dict[str, tuple[str, int]] = field(default_factory=dict)
    echo_pids: list[int] = field(default_factory=list)
    #: the share of each workload's requests for buckets bar owns
    routed: dict[str, float] = field(default_factory=dict)


_EXTRAS: weakref.WeakKeyDictionary[Suite, Extras] = weakref.WeakKeyDictionary()


def extras(suite: Suite) -> Extras:
    """What these cases need beyond the suite's processes, started the first time
    any of them runs (for every chosen one at once), and its data loaded."""
    got = _EXTRAS.get(suite)
    if got is not None:
        return got
    started = time.monotonic()
    got = _EXTRAS[suite] = Extras()
    assert suite.cluster is not None
    ns = suite.cluster.ns
    echoes: dict[str, Helper] = {}

    def helper(name: str, *args: str) -> Helper:
        child = Helper(name, args)
        suite.helpers.append(child)  # the suite stops it
        return child

    if suite.wants("client"):
        got.client = helper(
            "client benchmark process",
            script("clientbench.py"),
            "--ns",
            f"{ns[0]}:{ns[1]}",
            "--via",
            "foo",
            "--bucket",
            "apple",
            "--key",
            "k",
            "--value",
            "v",
            "--bare-uri",
            suite.bare_uri,
            "--bare-bucket",
            "zoo",
            "--batch",
            str(PIPELINE),
        )
    if suite.wants("sizes"):
        echoes["PUT"] = helper(
            "echo server (PUT)", script("baselines.py"), "echo", "OK\\r\\n"
        )
        for label, size in SIZES.items():
            echoes[label] = helper(
                f"echo server ({label})",
                script("baselines.py"),
                "echo",
                get_reply(size).replace("\r\n", "\\r\\n"),
            )
    if suite.wants("ycsb"):
        got.ycsb = helper("YCSB load process", script("ycsbload.py"))
    for label, child in echoes.items():
        got.echoes[label] = parse_address(child.wait_ready().split()[1])
        got.echo_pids.append(child.proc.pid)
    if suite.wants("sizes"):
        _fill_sizes(suite)
    if got.ycsb is not None:
        got.ycsb.wait_ready()
        keys = suite.options.ycsb_keys
        _fill_ycsb(suite, keys)
        answer = got.ycsb.ask(
            {
                "kind": "prepare",
                "keys": keys,
                "buckets": YCSB_BUCKETS,
                "reads": WORKLOADS,
                "count": min(keys, YCSB_REQUESTS),
            },
            timeout=120,
        )
        got.routed = answer["routed"]
    if got.client is not None:
        got.client.wait_ready(timeout=START_TIMEOUT)
    suite.log(
        f"# started the client, sizes and ycsb extras in {time.monotonic() - started:.1f}s"
    )
    return got


def get_reply(size: int) -> str:
    """The reply to a GET of the ``sizes`` case's value of ``size`` bytes."""
    return "v" * size + "\r\nOK\r\n"


def size_key(size: int) -> str:
    return f"s{size}"


def _fill_sizes(suite: Suite) -> None:
    """Keys ``s100``, ``s4096``, ``s61440`` in apple (foo) and zoo (bar)."""
    with Conn(suite.addresses["foo"], timeout=TEXT_TIMEOUT) as conn:
        for bucket in (b"apple", b"zoo"):
            for size in SIZES.values():
                key = size_key(size).encode()
                value = b"v" * size
                conn.expect(b"PUT %s %s %s\r\n" % (bucket, key, value), b"OK\r\n")
                conn.expect(b"GET %s %s\r\n" % (bucket, key), get_reply(size).encode())


def _fill_ycsb(suite: Suite, keys: int) -> None:
    """The YCSB buckets and keys, each written straight to its owner."""
    owners = {"foo": suite.addresses["foo"], "bar": suite.addresses["bar"]}
    by_owner: dict[str, list[int]] = {"foo": [], "bar": []}
    for k in range(keys):
        by_owner[
            "bar" if ycsbload.bucket_of(k, YCSB_BUCKETS)[0] >= "n" else "foo"
        ].append(k)
    for owner, numbers in by_owner.items():
        with Conn(owners[owner], timeout=TEXT_TIMEOUT) as conn:
            names = sorted({ycsbload.bucket_of(k, YCSB_BUCKETS) for k in numbers})
            conn.expect(
                b"".join(b"CREATE %s\r\n" % n.encode() for n in names),
                b"OK\r\n" * len(names),
            )
            chunk = 2000
            for low in range(0, len(numbers), chunk):
                part = numbers[low : low + chunk]
                lines = b"".join(
                    (
                        f"PUT {ycsbload.bucket_of(k, YCSB_BUCKETS)} "
                        f"{ycsbload.key_of(k)} {ycsbload.value_of(k)}\r\n"
                    ).encode()
                    for k in part
                )
                conn.expect(lines, b"OK\r\n" * len(part))


def window(suite: Suite) -> float:
    """Seconds each measure of these cases runs in a round: half of ``--duration``
    (a quarter when that is under a second, as with ``--quick``: these cases have
    many measures)."""
    duration = suite.options.duration
    return duration / 2 if duration >= 1 else duration / 4


def interleave(
    suite: Suite, r: int, runs: Sequence[Callable[..., float]], seconds: float
) -> list[float]:
    """Each of ``runs`` (called with ``duration=``) for ``seconds`` in all, taking
    turns in ``--slices`` slices (in order, then reversed, from round ``r``'s turn);
    each one's mean rate."""
    slices = suite.options.slices
    part = seconds / slices
    totals = [0.0] * len(runs)
    for i in range(slices):
        order = range(len(runs)) if (r + i) % 2 == 0 else reversed(range(len(runs)))
        for j in order:
            totals[j] += runs[j](duration=part)
    return [total / slices for total in totals]


# -- client ----------------------------------------------------------------------


def _client_rate(suite: Suite, call: str, threads: int, duration: float) -> float:
    """GETs per second that ``threads`` threads of the client process make with ``call``."""
    helper = extras(suite).client
    assert helper is not None
    start = time.time() + suite.options.warmup
    got = helper.ask(
        {"call": call, "threads": threads, "start": start, "end": start + duration},
        timeout=duration + 60,
    )
    return int(got["ops"]) / duration


def client(suite: Suite, r: int) -> None:
    """``Client.get`` vs a bare Pyro5 call, 1 and 8 threads; a pipeline of 100 GETs
    vs single calls."""
    add = suite.results.add
    seconds = window(suite)
    helper = extras(suite).client
    assert helper is not None
    assert suite.cluster is not None
    bare_pid = next(h.proc.pid for h in suite.helpers if h.name == BARE)
    servers = [suite.cluster.nodes["foo"].proc.pid, bare_pid]
    for threads in (1, 8):
        # one thread is a ping-pong: pinned as local_get pins one connection
        one = threads == 1
        with pinned(servers if one else [], [helper.proc.pid] if one else []):
            got, bare = interleave(
                suite,
                r,
                [
                    partial(_client_rate, suite, "get", threads),
                    partial(_client_rate, suite, "bare", threads),
                ],
                seconds,
            )
        each = f"{threads} thread{'s' if threads > 1 else ''}"
        add("client", f"Client.get local, {each}", "ops/s", r, got)
        add("client", f"bare Pyro5 call, {each}", "ops/s", r, bare)
        add(
            "client",
            f"ratio Client.get/bare, {each}",
            "x",
            r,
            ratio(got, bare),
            Target(">=", 0.9) if threads == 1 else None,
        )
    with pinned(servers, [helper.proc.pid]):
        many, single = interleave(
            suite,
            r,
            [
                partial(_client_rate, suite, "pipeline", 1),
                partial(_client_rate, suite, "get", 1),
            ],
            seconds,
        )
    add("client", f"GETs in pipelines of {PIPELINE}, 1 thread", "ops/s", r, many)
    add("client", "GETs in single Client.get calls, 1 thread", "ops/s", r, single)
    add(
        "client",
        f"ratio pipeline of {PIPELINE}/single calls",
        "x",
        r,
        ratio(many, single),
        Target(">=", 10.0),
    )


# -- sizes -----------------------------------------------------------------------


def sizes(suite: Suite, r: int) -> None:
    """Text GET and PUT of each size, local and routed, vs an echo server, in MB/s."""
    add = suite.results.add
    ex = extras(suite)
    foo = suite.addresses["foo"]
    assert suite.cluster is not None
    nodes = suite.cluster.nodes
    servers = [nodes["foo"].proc.pid, nodes["bar"].proc.pid, *ex.echo_pids]
    clients = [worker.proc.pid for worker in suite.workers]
    seconds = window(suite)
    for op in ("GET", "PUT"):
        for label, size in SIZES.items():
            key = size_key(size)
            if op == "GET":
                local, routed = f"GET apple {key}\r\n", f"GET zoo {key}\r\n"
                reply, echo = get_reply(size), ex.echoes[label]
            else:
                value = "v" * size
                local = f"PUT apple {key} {value}\r\n"
                routed = f"PUT zoo {key} {value}\r\n"
                reply, echo = "OK\r\n", ex.echoes["PUT"]
            with pinned(servers, clients):
                here, there, base = interleave(
                    suite,
                    r,
                    [
                        partial(suite.text, foo, local, 1, reply=reply),
                        partial(suite.text, foo, routed, 1, reply=reply),
                        partial(suite.text, echo, local, 1, reply=reply),
                    ],
                    seconds,
                )
            mb = size / 1e6
            add("sizes", f"{op} {label} local, 1 conn", "MB/s", r, here * mb)
            add("sizes", f"{op} {label} routed, 1 conn", "MB/s", r, there * mb)
            add("sizes", f"echo baseline, {op} {label}", "MB/s", r, base * mb)
            target = op == "GET" and label == TARGET_SIZE
            add(
                "sizes",
                f"ratio local/echo, {op} {label}",
                "x",
                r,
                ratio(here, base),
                Target(">=", 0.8) if target else None,
            )
            add(
                "sizes",
                f"ratio routed/echo, {op} {label}",
                "x",
                r,
                ratio(there, base),
                Target(">=", 0.4) if target else None,
            )


# -- ycsb ------------------------------------------------------------------------


def _ycsb_rate(
    suite: Suite, workload: str, seen: list[dict[str, float]], duration: float
) -> float:
    helper = extras(suite).ycsb
    assert helper is not None
    foo = suite.addresses["foo"]
    start = time.time() + suite.options.warmup
    got = helper.ask(
        {
            "kind": "run",
            "workload": workload,
            "host": foo[0],
            "port": foo[1],
            "threads": 8,
            "start": start,
            "end": start + duration,
        },
        timeout=duration + 60,
    )
    seen.append(got)
    return int(got["ops"]) / duration


def ycsb(suite: Suite, r: int) -> None:
    """YCSB workloads A, B and C over 8 connections to foo: ops/s, p50 and p99;
    the plain local GET on 8 connections beside them."""
    add = suite.results.add
    ex = extras(suite)
    seen: dict[str, list[dict[str, float]]] = {name: [] for name in WORKLOADS}
    runs: list[Callable[..., float]] = [
        partial(_ycsb_rate, suite, name, seen[name]) for name in WORKLOADS
    ]
    runs.append(partial(suite.text, suite.addresses["foo"], GET_LOCAL, 8))
    *rates, plain = interleave(suite, r, runs, window(suite))
    keys = f"{suite.options.ycsb_keys:,} keys"
    for (name, reads), rate in zip(WORKLOADS.items(), rates, strict=True):
        mix = f"{reads * 100:.0f}/{(1 - reads) * 100:.0f}" if reads < 1 else "read only"
        what = f"YCSB {name} ({mix}), {keys}, 8 conn"
        # the slices' percentiles, averaged: each slice is a window of its own
        p50 = sum(got["p50_us"] for got in seen[name]) / len(seen[name])
        p99 = sum(got["p99_us"] for got in seen[name]) / len(seen[name])
        add("ycsb", what, "ops/s", r, rate)
        add("ycsb", f"YCSB {name}: p50", "µs", r, p50)
        add("ycsb", f"YCSB {name}: p99", "µs", r, p99)
        add("ycsb", f"YCSB {name}: share routed to bar", "%", r, ex.routed[name] * 100)
        add("ycsb", f"ratio YCSB {name}/plain local GET", "x", r, ratio(rate, plain))
    add("ycsb", "plain GET local (GET apple k), 8 conn", "ops/s", r, plain)
