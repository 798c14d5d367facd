"""The benchmark cases: what each measures in one round, and the rows it records.

Each case is a function ``case(suite, r)`` that measures round ``r`` with the
processes a started :class:`~benchmarks.harness.Suite` holds and adds its figures
to ``suite.results``, with the issue's target on the rows that have one. The cases
and their order are listed in ``run.py``; what each measures is described there and
in benchmarks/README.md.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from typing import Any

from benchmarks.harness import (
    DURABLE_NODES,
    GET_LOCAL,
    GET_ROUTED,
    HOPS,
    TEXT_TIMEOUT,
    BenchError,
    Helper,
    Suite,
    hop_bucket,
    pinned,
    reset_peak,
    rss_kib,
    script,
    text_address,
)
from benchmarks.results import Target, keys_name, ratio, spread
from pyrokv.cluster import spawn_node
from pyrokv.store import LOG_MAX_WRITES
from pyrokv.testing import Conn

__all__ = [
    "api",
    "durable",
    "hostile",
    "local_get",
    "memory",
    "pipelined",
    "routed_get",
    "scaling",
]

#: The hostile case's attackers: connections sending malformed peer frames, and
#: connections pipelining GETs of a 60 KiB value without reading.
MALFORMED_CONNS = 4
PIPELINED_CONNS = 4
#: Malformed frames in each write, read back before the next: as many as the
#: ``pipelined`` case keeps in flight.
MALFORMED_DEPTH = 16


def local_get(suite: Suite, r: int) -> None:
    """Text GET on the owner, 1 and 8 connections, vs the echo server."""
    add, foo = suite.results.add, suite.addresses["foo"]
    assert suite.echo is not None
    echo = suite.echo
    assert suite.cluster is not None
    assert suite.echo_helper is not None
    servers = [suite.cluster.nodes["foo"].proc.pid, suite.echo_helper.proc.pid]
    clients = [worker.proc.pid for worker in suite.workers]
    for conns in (1, 8):
        # One connection is a ping-pong whose rate depends on whether the
        # scheduler puts client and server on one core or two; pinning both
        # servers to one core and the client to the other measures the same
        # placement for pyrokv and the echo server.
        with pinned(servers if conns == 1 else [], clients if conns == 1 else []):
            node, base = suite.pair(
                r,
                partial(suite.text, foo, GET_LOCAL, conns),
                partial(suite.text, echo, GET_LOCAL, conns),
            )
        add("local_get", f"pyrokv GET local, {conns} conn", "ops/s", r, node)
        add("local_get", f"echo baseline, {conns} conn", "ops/s", r, base)
        add(
            "local_get",
            f"ratio pyrokv/echo, {conns} conn",
            "x",
            r,
            ratio(node, base),
            Target(">=", 0.9) if conns == 1 else None,
        )


def routed_get(suite: Suite, r: int) -> None:
    """Text GET of a bucket the other node owns vs a bare Pyro5 call, 1 and 8
    connections; and vs a local GET on foo from the same client (issue 14)."""
    add, foo = suite.results.add, suite.addresses["foo"]
    assert suite.cluster is not None
    assert suite.bare_helper is not None
    servers = [
        suite.cluster.nodes["foo"].proc.pid,
        suite.cluster.nodes["bar"].proc.pid,
        suite.bare_helper.proc.pid,
    ]
    clients = [worker.proc.pid for worker in suite.workers]
    rates: dict[int, tuple[float, float]] = {}
    for conns in (1, 8):
        # the CPU both nodes and the load client used, per request, over the
        # slices of the routed and of the local GET
        routed_cpu, local_cpu = _Cpu(servers[:2], clients), _Cpu(servers[:2], clients)
        # pinned on one connection, as local_get is: every server on one core,
        # the load client on the other
        with pinned(servers if conns == 1 else [], clients if conns == 1 else []):
            node, base, local = suite.interleave(
                r,
                routed_cpu.around(partial(suite.text, foo, GET_ROUTED, conns)),
                partial(suite.bare, conns),
                local_cpu.around(partial(suite.text, foo, GET_LOCAL, conns)),
            )
        rates[conns] = node, base
        add("routed_get", f"pyrokv GET routed, {conns} conn", "ops/s", r, node)
        add("routed_get", f"bare Pyro5 call, {conns} proxy", "ops/s", r, base)
        add(
            "routed_get",
            f"ratio routed/bare, {conns} conn",
            "x",
            r,
            ratio(node, base),
            Target(">=", 0.8) if conns == 1 else None,
        )
        add("routed_get", f"pyrokv GET local, {conns} conn", "ops/s", r, local)
        add(
            "routed_get",
            f"ratio routed/local, {conns} conn",
            "x",
            r,
            ratio(node, local),
            Target(">=", 0.45 if conns == 1 else 0.4),
        )
        if conns == 8:
            for what, cpu in (("routed", routed_cpu), ("local", local_cpu)):
                nodes, client = cpu.per_request()
                add(
                    "routed_get", f"CPU per {what} GET, foo+bar, 8 conn", "µs", r, nodes
                )
                add(
                    "routed_get", f"CPU per {what} GET, client, 8 conn", "µs", r, client
                )
    add(
        "routed_get",
        "ratio routed 8 conn / bare sequential",
        "x",
        r,
        ratio(rates[8][0], rates[1][1]),
        Target(">=", 2.0),
    )


class _Cpu:
    """Wraps measures to add up the CPU ``nodes`` and ``clients`` (pids) used and the
    requests made while they ran (the warm-up of each slice counts for CPU only)."""

    def __init__(self, nodes: list[int], clients: list[int]) -> None:
        self.nodes, self.clients = nodes, clients
        self.node_s = self.client_s = self.requests = 0.0

    def around(self, measure: Callable[..., float]) -> Callable[..., float]:
        """``measure``, counting as it runs."""

        def run(duration: float) -> float:
            nodes = sum(cpu_seconds(pid) for pid in self.nodes)
            clients = sum(cpu_seconds(pid) for pid in self.clients)
            rate = measure(duration=duration)
            self.node_s += sum(cpu_seconds(pid) for pid in self.nodes) - nodes
            self.client_s += sum(cpu_seconds(pid) for pid in self.clients) - clients
            self.requests += rate * duration
            return rate

        return run

    def per_request(self) -> tuple[float, float]:
        """µs of the nodes' and of the clients' CPU per request."""
        count = max(self.requests, 1.0)
        return self.node_s / count * 1e6, self.client_s / count * 1e6


def pipelined(suite: Suite, r: int) -> None:
    """Local GETs with 16 in flight on one connection, the echo server for scale."""
    add, foo = suite.results.add, suite.addresses["foo"]
    assert suite.echo is not None
    echo = suite.echo
    node, base = suite.pair(
        r,
        partial(suite.text, foo, GET_LOCAL, 1, depth=16),
        partial(suite.text, echo, GET_LOCAL, 1, depth=16),
    )
    add(
        "pipelined",
        "pyrokv GET local, 16 in flight",
        "ops/s",
        r,
        node,
        Target(">=", 50_000),
    )
    add("pipelined", "echo baseline, 16 in flight", "ops/s", r, base)
    add("pipelined", "ratio pyrokv/echo, 16 in flight", "x", r, ratio(node, base))


def api(suite: Suite, r: int) -> None:
    """Router.route to a local owner vs Registry.get; to a remote one vs bare Pyro5."""
    add = suite.results.add
    assert suite.api is not None
    got = suite.api.ask({"cmd": "api"}, timeout=600)
    add("api", "Router.route, local owner", "µs", r, got["local_route_us"])
    add("api", "Registry.get, direct", "µs", r, got["direct_us"])
    add(
        "api",
        "route overhead over direct call",
        "µs",
        r,
        got["local_route_us"] - got["direct_us"],
        Target("<=", 5.0),
    )
    add("api", "Router.route, remote owner", "ops/s", r, got["remote_route_ops"])
    add("api", "bare Pyro5 call, reused proxy", "ops/s", r, got["bare_pyro_ops"])
    add(
        "api",
        "ratio remote route/bare Pyro5",
        "x",
        r,
        ratio(got["remote_route_ops"], got["bare_pyro_ops"]),
    )


def scaling(suite: Suite, r: int) -> None:
    """Router.route over table and bucket sizes; text GET through 0 to 4 hops."""
    add = suite.results.add
    assert suite.api is not None
    got = suite.api.ask({"cmd": "scaling"}, timeout=600)
    table_us, direct = got["table_us"], got["table_direct_us"]
    for n, us in table_us.items():
        add("scaling", f"Router.route local, {n}-entry table", "µs", r, us)
    add("scaling", "Registry.get direct (same bucket, key)", "µs", r, direct)
    add(
        "scaling",
        "route overhead spread over table sizes",
        "%",
        r,
        spread([us - direct for us in table_us.values()]),
        Target("<=", 10.0),
    )
    keys_us = got["keys_us"]
    for what, label in (
        ("route", "Router.route local"),
        ("direct", "Registry.get"),
    ):
        for n, pair in keys_us.items():
            add("scaling", f"{label}, {keys_name(int(n))} keys", "µs", r, pair[what])
    for n, pair in keys_us.items():
        add(
            "scaling",
            f"route overhead, {keys_name(int(n))} keys",
            "µs",
            r,
            pair["route"] - pair["direct"],
        )
    add(
        "scaling",
        "route overhead spread over bucket sizes",
        "%",
        r,
        spread([pair["route"] - pair["direct"] for pair in keys_us.values()]),
    )
    few_us = got["few_us"]
    for n, pair in few_us.items():
        add(
            "scaling",
            f"Router.route local, {keys_name(int(n))} keys, 100 read",
            "µs",
            r,
            pair["route"],
        )
    add(
        "scaling",
        "route cost spread over bucket sizes, 100 keys read",
        "%",
        r,
        spread([pair["route"] for pair in few_us.values()]),
        Target("<=", 10.0),
    )
    add(
        "scaling",
        "route cost spread over bucket sizes",
        "%",
        r,
        spread([pair["route"] for pair in keys_us.values()]),
    )
    hot = got["hot_us"]
    name = f"{keys_name(hot['size'])} keys, 1,000 hot"
    add("scaling", f"Router.route local, {name}", "µs", r, hot["route"])
    add("scaling", f"Registry.get, {name}", "µs", r, hot["direct"])
    smallest = keys_us[min(keys_us, key=int)]
    add(
        "scaling",
        f"route cost spread, {keys_name(min(int(n) for n in keys_us))} vs {name}",
        "%",
        r,
        spread([smallest["route"], hot["route"]]),
    )
    h0 = suite.addresses["h0"]
    rates = {}
    for hops in range(HOPS + 1):
        request = f"GET {hop_bucket(hops)} k\r\n"
        rates[hops] = suite.text(h0, request, 1)
        label = "local" if hops == 0 else f"{hops} hop{'s' if hops > 1 else ''}"
        add("scaling", f"text GET via h0, {label}, 1 conn", "ops/s", r, rates[hops])
    per_hop = (1 / rates[HOPS] - 1 / rates[1]) / (HOPS - 1) * 1e6
    add("scaling", "µs added per extra hop (1 -> 4)", "µs", r, per_hop)


def hostile(suite: Suite, r: int) -> None:
    """Routed GETs on 8 connections to foo while 8 hostile ones attack it, vs without.

    The malformed frames come :data:`MALFORMED_DEPTH` to a write. A second pair of
    windows, without a target, repeats the attack with one frame a write: it
    separates what malformed frames cost from what any pipelining client takes of
    the node's loop.
    """
    add, foo = suite.results.add, suite.addresses["foo"]
    assert suite.cluster is not None
    pid = suite.cluster.nodes["foo"].proc.pid
    peaks: list[float] = []

    def attacked(depth: int, done: list[dict[str, Any]], duration: float) -> float:
        base = reset_peak(pid)
        suite.attack(foo, MALFORMED_CONNS, PIPELINED_CONNS, depth)
        try:
            return suite.text(foo, GET_ROUTED, 8, duration=duration)
        finally:
            done.append(suite.stop_attack())
            peaks.append((rss_kib(pid, "VmHWM") - base) / 1024)

    calm = partial(suite.text, foo, GET_ROUTED, 8)
    done: list[dict[str, Any]] = []
    before, under = suite.pair(r, calm, partial(attacked, MALFORMED_DEPTH, done))
    once, under_once = suite.pair(r, calm, partial(attacked, 1, []))
    attackers = MALFORMED_CONNS + PIPELINED_CONNS
    add("hostile", "pyrokv GET routed, 8 conn", "ops/s", r, before)
    add("hostile", f"same, {attackers} hostile conns attacking", "ops/s", r, under)
    add(
        "hostile",
        "ratio attacked/unattacked, 8 conn",
        "x",
        r,
        ratio(under, before),
        Target(">=", 0.5),
    )
    add(
        "hostile",
        "ratio attacked/unattacked, malformed 1 a write",
        "x",
        r,
        ratio(under_once, once),
    )
    seconds = sum(d["seconds"] for d in done)
    add(
        "hostile",
        f"malformed frames answered, {MALFORMED_CONNS} conn, {MALFORMED_DEPTH} a write",
        "ops/s",
        r,
        sum(d["malformed_lines"] for d in done) / seconds,
    )
    add(
        "hostile",
        f"GETs of 60 KiB written unread, {PIPELINED_CONNS} conn, a window",
        "MiB",
        r,
        sum(d["pipelined_bytes"] for d in done) / len(done) / (1 << 20),
    )
    add(
        "hostile",
        "hostile conns closed by foo",
        "count",
        r,
        sum(d["reconnects"] for d in done),
    )
    add("hostile", "foo peak RSS growth under attack", "MiB", r, max(peaks))


def memory(suite: Suite, r: int) -> None:
    """A node's RSS growth for the memory case's keys vs a plain dict-of-dict."""
    add = suite.results.add
    assert suite.cluster is not None
    count = suite.options.mem_keys
    node_kib, node_total = node_memory(suite, r, count)
    dict_kib, dict_total = dict_memory(count)
    add(
        "memory",
        f"node RSS growth, {keys_name(count)} keys",
        "MiB",
        r,
        node_kib / 1024,
    )
    add(
        "memory",
        f"plain dict RSS growth, {keys_name(count)} keys",
        "MiB",
        r,
        dict_kib / 1024,
    )
    add(
        "memory",
        "ratio node/plain dict",
        "x",
        r,
        ratio(node_kib, dict_kib),
        Target("<=", 1.5),
    )
    add("memory", "node RSS total after fill", "MiB", r, node_total / 1024)
    add("memory", "plain dict process RSS total", "MiB", r, dict_total / 1024)


def node_memory(suite: Suite, r: int, count: int) -> tuple[int, int]:
    """RSS growth (KiB) of a fresh node while PUTting ``count`` keys, and its total."""
    assert suite.cluster is not None
    name = f"mem{r}"
    child = spawn_node(
        name,
        suite.cluster.ns,
        f"0x00..0xff={name}",
        extra=["--listen", "127.0.0.1:0"],
    )
    suite.mem_nodes.append(child)
    try:
        with Conn(text_address(child), timeout=TEXT_TIMEOUT) as conn:
            conn.expect(b"CREATE mem\r\n", b"OK\r\n")
            time.sleep(0.2)
            before = rss_kib(child.proc.pid)
            chunk = 2000
            for low in range(0, count, chunk):
                high = min(low + chunk, count)
                lines = b"".join(
                    b"PUT mem k%07d %010d\r\n" % (i, i) for i in range(low, high)
                )
                conn.expect(lines, b"OK\r\n" * (high - low))
            conn.expect(
                b"GET mem k%07d\r\n" % (count - 1), b"%010d\r\nOK\r\n" % (count - 1)
            )
            after = rss_kib(child.proc.pid)
    finally:
        child.stop()
        suite.mem_nodes.remove(child)
    return after - before, after


def dict_memory(count: int) -> tuple[int, int]:
    """RSS growth (KiB) of a bare Python process building the same dict-of-dict."""
    helper = Helper("plain dict process", [script("dictmem.py"), str(count)])
    try:
        helper.wait_ready()
        time.sleep(0.2)
        before = rss_kib(helper.proc.pid)
        helper.send("go")
        helper.wait_for("DONE", timeout=300)
        after = rss_kib(helper.proc.pid)
    finally:
        helper.stop()
    return after - before, after


def metrics(suite: Suite, r: int) -> None:
    """Local GET over 8 connections on a node with --metrics (scraped once a round)
    against its twin without (same table, same start, no metrics); run it with
    --rounds 5 for its target."""
    add = suite.results.add
    assert suite.cluster is not None
    met = suite.cluster.nodes["met"]
    line = next(x for x in met.lines if x.startswith("METRICS "))
    with urllib.request.urlopen(f"http://{line.split()[2]}/metrics", timeout=10) as got:
        scraped = got.read()
    on, off = suite.pair(
        r,
        partial(suite.text, suite.addresses["met"], GET_LOCAL, 8),
        partial(suite.text, suite.addresses["nomet"], GET_LOCAL, 8),
    )
    add("metrics", "pyrokv GET local, 8 conn, --metrics", "ops/s", r, on)
    add("metrics", "pyrokv GET local, 8 conn, no metrics", "ops/s", r, off)
    add(
        "metrics",
        "ratio with/without metrics, 8 conn",
        "x",
        r,
        ratio(on, off),
        Target(">=", 0.95),
    )
    add("metrics", "size of a scrape", "bytes", r, len(scraped))


#: The durable case's write: a PUT of a key of its own each time (``%d``).
PUT_NEW = "PUT apple k%d v\r\n"
PUT_REPLY = "OK\r\n"


def durable(suite: Suite, r: int) -> None:
    """PUT and GET on nodes with a data dir vs the in-memory node, and the start of
    a node whose data dir holds ``--mem-keys`` keys."""
    add, at = suite.results.add, suite.addresses

    def put(node: str, conns: int, duration: float | None = None) -> float:
        return suite.text(
            at[node], PUT_NEW, conns, duration=duration, reply=PUT_REPLY, unique=True
        )

    assert suite.cluster is not None
    pids = {name: child.proc.pid for name, child in suite.cluster.nodes.items()}
    window = suite.options.duration

    def cpu_per_op(before: dict[str, float], name: str, rate: float) -> float:
        """µs of the node's CPU per request over a pair's window (each node works
        in its own slices only): a figure the machine's other load moves less."""
        return (cpu_seconds(pids[name]) - before[name]) / (rate * window) * 1e6

    def cpus() -> dict[str, float]:
        return {name: cpu_seconds(pids[name]) for name in DURABLE_NODES}

    before = cpus()
    sec, mem = suite.pair(r, partial(put, "dsec", 8), partial(put, "mem", 8))
    add("durable", "PUT in memory, 8 conn", "ops/s", r, mem)
    add("durable", "PUT fsync everysec, 8 conn", "ops/s", r, sec)
    add(
        "durable",
        "node CPU per PUT, in memory",
        "µs",
        r,
        cpu_per_op(before, "mem", mem),
    )
    add(
        "durable",
        "node CPU per PUT, everysec (its writer too)",
        "µs",
        r,
        cpu_per_op(before, "dsec", sec),
    )
    add(
        "durable",
        "ratio everysec/in memory, 8 conn",
        "x",
        r,
        ratio(sec, mem),
        Target(">=", 0.7),
    )
    # The writer folds its log into the tables once it had no write for a while:
    # wait for that, and count it in.
    deadline = time.monotonic() + 120
    while store_info(at["dsec"])["log_writes"] and time.monotonic() < deadline:
        time.sleep(0.05)
    add(
        "durable",
        "node CPU per PUT, everysec, its fold included",
        "µs",
        r,
        cpu_per_op(before, "dsec", sec),
    )
    for conns in (8, 64):
        before = store_info(at["dalw"])
        if conns == 8:
            always, mem = suite.pair(
                r, partial(put, "dalw", conns), partial(put, "mem", conns)
            )
        else:
            always = put("dalw", conns)
        commits, writes, latency = commit_figures(before, store_info(at["dalw"]))
        add("durable", f"PUT fsync always, {conns} conn", "ops/s", r, always)
        add("durable", f"always: commit latency, {conns} conn", "ms", r, latency * 1e3)
        add(
            "durable",
            f"always: writes per commit, {conns} conn",
            "count",
            r,
            writes / commits if commits else 0.0,
        )
        if conns == 8:
            bound = min(mem, conns / latency) if latency else mem
            add(
                "durable",
                "always: min(in memory, 8 / commit latency)",
                "ops/s",
                r,
                bound,
            )
            add(
                "durable",
                "ratio always/min(in memory, 8 / commit latency)",
                "x",
                r,
                ratio(always, bound),
                Target(">=", 0.7),
            )
            # Each connection waits for its round trip (8 / the in-memory rate)
            # and for its commit, one after the other: no design does better.
            serial = conns / (conns / mem + latency) if latency else mem
            add(
                "durable",
                "always: 8 / (8 / in memory + commit latency)",
                "ops/s",
                r,
                serial,
            )
            add("durable", "ratio always/that", "x", r, ratio(always, serial))
    before = cpus()
    got, base = suite.pair(
        r,
        partial(suite.text, at["dsec"], GET_LOCAL, 8),
        partial(suite.text, at["mem"], GET_LOCAL, 8),
    )
    add("durable", "GET with a data dir, 8 conn", "ops/s", r, got)
    add("durable", "GET in memory, 8 conn", "ops/s", r, base)
    add(
        "durable",
        "node CPU per GET, data dir",
        "µs",
        r,
        cpu_per_op(before, "dsec", got),
    )
    add(
        "durable",
        "node CPU per GET, in memory",
        "µs",
        r,
        cpu_per_op(before, "mem", base),
    )
    add(
        "durable",
        "ratio GET data dir/in memory, 8 conn",
        "x",
        r,
        ratio(got, base),
        Target(">=", 0.95),
    )
    count = suite.options.mem_keys
    full, empty, full_cpu, empty_cpu = start_times(suite, r, count)
    logged, logged_cpu, writes = start_with_log(suite, r, count)
    add("durable", "start to READY, in memory", "s", r, empty)
    add("durable", "CPU time to READY, in memory", "s", r, empty_cpu)
    add(
        "durable",
        f"CPU time to READY, data dir of {keys_name(count)} keys",
        "s",
        r,
        full_cpu,
    )
    add(
        "durable",
        f"start to READY, data dir of {keys_name(count)} keys",
        "s",
        r,
        full,
        Target("<=", 5.0),
    )
    both = f"{keys_name(count)} keys + a log of {keys_name(writes)} writes"
    add("durable", f"CPU time to READY, {both}", "s", r, logged_cpu)
    add(
        "durable",
        f"start to READY, {both}",
        "s",
        r,
        logged,
        Target("<=", 5.0),
    )


def store_info(address: tuple[str, int]) -> dict[str, float]:
    """A node's INFO fields of its store: commits, writes_committed, commit_ms,
    log_writes."""
    fields: dict[str, float] = {}
    with Conn(address, timeout=TEXT_TIMEOUT) as conn:
        conn.send(b"INFO\r\n")
        while (line := conn.line()) != b"OK":
            name, _, value = line.decode().partition(" ")
            if name in ("commits", "writes_committed", "commit_ms", "log_writes"):
                fields[name] = float(value)
    return fields


def commit_figures(
    before: dict[str, float], after: dict[str, float]
) -> tuple[float, float, float]:
    """Commits, writes committed and the mean commit latency (s) between two INFOs."""
    commits = after["commits"] - before["commits"]
    writes = after["writes_committed"] - before["writes_committed"]
    total_ms = (
        after["commit_ms"] * after["commits"] - before["commit_ms"] * before["commits"]
    )
    return commits, writes, (total_ms / commits / 1e3 if commits else 0.0)


def cpu_seconds(pid: int) -> float:
    """CPU time process ``pid`` has used (user and system), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_with_log(suite: Suite, r: int, count: int) -> tuple[float, float, int]:
    """Seconds from spawning a node to its READY, and its CPU seconds, on a data
    dir of ``count`` keys in its tables and a log not folded (as a crash leaves it)
    of as many writes as a log holds (LOG_MAX_WRITES, or ``count`` if fewer), each
    a new value of a key; the node is checked to hold the log's values."""
    assert suite.cluster is not None
    writes = min(count, LOG_MAX_WRITES)
    data = suite.big_log_dir(count, writes, f"logged{r}")
    name = f"logged{r}"
    started = time.monotonic()
    child = spawn_node(
        name,
        suite.cluster.ns,
        f"0..255={name}",
        extra=["--listen", "127.0.0.1:0", "--data-dir", data],
        timeout=120,
    )
    took = time.monotonic() - started
    cpu = cpu_seconds(child.proc.pid)
    suite.mem_nodes.append(child)
    try:
        last = writes - 1
        with Conn(text_address(child), timeout=TEXT_TIMEOUT) as conn:
            got = conn.exchange(f"GET big k{last % count:07d}")
        if got != [f"-{last:09d}"[::-1].encode(), b"OK"]:
            raise BenchError(f"{name} does not hold the log's last write: {got}")
    finally:
        child.kill()  # no graceful stop: it would fold the log
        suite.mem_nodes.remove(child)
        shutil.rmtree(data, ignore_errors=True)
    return took, cpu, writes


def start_times(suite: Suite, r: int, count: int) -> tuple[float, float, float, float]:
    """Seconds from spawning a node to its READY: with a data dir holding ``count``
    keys with 10-byte values (made once; the node is checked to hold them all),
    and in memory."""
    assert suite.cluster is not None
    big = suite.big_data_dir(count)
    times: list[float] = []
    cpu: list[float] = []
    for name, extra in ((f"big{r}", ["--data-dir", big]), (f"empty{r}", [])):
        started = time.monotonic()
        child = spawn_node(
            name,
            suite.cluster.ns,
            f"0..255={name}",
            extra=["--listen", "127.0.0.1:0", *extra],
            timeout=120,
        )
        times.append(time.monotonic() - started)
        cpu.append(cpu_seconds(child.proc.pid))
        suite.mem_nodes.append(child)
        try:
            with Conn(text_address(child), timeout=TEXT_TIMEOUT) as conn:
                conn.send(b"INFO\r\n")
                keys = {}
                while (line := conn.line()) != b"OK":
                    field, _, value = line.decode().partition(" ")
                    keys[field] = value
            expected = str(count) if extra else "0"
            if keys.get("keys") != expected:
                raise BenchError(
                    f"{name} holds {keys.get('keys')} keys, not {expected}"
                )
        finally:
            child.stop()
            suite.mem_nodes.remove(child)
    return times[0], times[1], cpu[0], cpu[1]
