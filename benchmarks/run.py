"""pyrokv's benchmark suite: one command starts everything, runs every case, prints one table.

Run from the repository root (see benchmarks/README.md)::

    python -m benchmarks.run                  # the full suite (about 2 minutes on 2 cores)
    python -m benchmarks.run --quick          # tiny sizes and short windows (about 20 s)
    python -m benchmarks.run --only local_get,memory --rounds 5

It starts, on free ports of 127.0.0.1: Pyro5's name server; nodes ``foo`` (a..m) and
``bar`` (n..z) serving the text protocol; a chain of nodes ``h0``..``h4`` for the hop
case; an asyncio echo server and a bare Pyro5 daemon (the baselines); a process that
hosts a node in-process for the Python-API cases; and load-client processes, so the
client's GIL never caps the server under test. Every case runs in interleaved rounds
(``for round: for case: case and its baseline back to back``); within a round a case
and its baseline take turns in slices of the window (AB BA AB, or BA AB BA), so load
from elsewhere on the machine hits both alike. The table shows each round's figure,
the median, and, where the issue sets one, the target with PASS or MISS. A ratio's
median is the median of its per-round ratios (each from the same round's pair).

Cases (``--only`` takes these names, comma-separated):

- ``local_get``: text GET of a bucket on the node you talk to, 1 and 8 connections,
  vs the echo server answering the same request with the same reply.
- ``routed_get``: text GET of a bucket owned by the other node, 1 and 8 connections,
  vs a bare Pyro5 call on one reused proxy (8 proxies for 8 connections); the target
  for 8 connections is against the bare *sequential* rate.
- ``pipelined``: local GETs with 16 requests in flight on one connection.
- ``api``: ``Router.route`` to a local owner vs ``Registry.get`` (µs over a direct
  call); to a remote owner vs a bare Pyro5 call (ratio).
- ``scaling``: ``Router.route`` with tables of 1, 16, 256 entries; over buckets of
  10^3 and 10^6 keys; text GET through 0 to 4 forwarding hops. The flatness target
  over table sizes is on the route's overhead over the direct call. Over bucket
  sizes it is on the route's whole cost with the same working set (100 keys of each
  bucket read over and over): random reads over all 10^6 keys miss the CPU cache,
  which slows a plain dict lookup about sixfold (shown too, without a target), so
  they measure the memory, not how the cost grows with the number of keys.
- ``memory``: a node's resident memory for 1,000,000 keys with 10-byte values
  (PUT over the text protocol) vs the same dict-of-dict in a bare Python process,
  both as VmRSS growth from before the fill.

Eight connections come, by default (``--clients auto``), from 8 threads of one client
process for the text protocol and from 8 client processes for Pyro5: on a 2-core
machine 8 text-client processes take CPU from the server (measured: echo 56k/s from
processes vs 67k/s from threads, pyrokv 45k/s vs 54k/s), while a Pyro5 client
serializes in Python and 8 threads of one process cap it (9.1k/s vs 7.9k/s).

Exit code: 0 when the suite ran (targets missed or not; ``--strict`` makes a MISS 1),
1 when something failed to start or answer, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if __package__ in (None, ""):  # run as `python benchmarks/run.py`
    sys.path.insert(0, str(ROOT))

from pyrokv.cluster import Child, LocalCluster, spawn_node  # noqa: E402
from pyrokv.errors import PyroKVError  # noqa: E402

CASES = ("local_get", "routed_get", "pipelined", "api", "scaling", "memory")
GUIDE = "a..m=foo, n..z=bar"
GET_LOCAL = "GET apple k\r\n"
GET_ROUTED = "GET zoo k\r\n"
REPLY = "v\r\nOK\r\n"
HOPS = 4
HOP_NODES = [f"h{i}" for i in range(HOPS + 1)]
START_TIMEOUT = 60.0


class BenchError(Exception):
    """A helper process failed to start or answered with an error."""


# -- helper processes -----------------------------------------------------------


class Helper(Child):
    """A child ``python -u SCRIPT ...`` that talks in lines: JSON jobs in, JSON out."""

    def __init__(self, name: str, args: Sequence[str]) -> None:
        pythonpath = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        super().__init__(
            [sys.executable, "-u", *args],
            name,
            pyrokv=False,
            cwd=str(ROOT),
            env={"PYTHONPATH": pythonpath},
            stdin=True,
        )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        return self.wait_for("READY", timeout)

    def ask(self, obj: Any, timeout: float) -> dict[str, Any]:
        self.send(json.dumps(obj))
        return self.result(timeout)

    def result(self, timeout: float) -> dict[str, Any]:
        """The next JSON answer (a line starting with ``{``; other output is kept)."""
        answer: dict[str, Any] = json.loads(self.wait_for("{", timeout))
        if "error" in answer:
            raise BenchError(f"{self.name} failed:\n{answer['error']}")
        return answer


def script(name: str) -> str:
    return str(HERE / name)


def listen_address(child: Child) -> tuple[str, int]:
    for line in child.lines:
        if line.startswith("LISTEN "):
            host, _, port = line.split()[2].rpartition(":")
            return host, int(port)
    raise BenchError(f"{child.name} printed no LISTEN line: {child.output()}")


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


class TextConn:
    """A blocking text-protocol connection for setting up data."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def expect(self, requests: bytes, reply: bytes) -> None:
        """Send ``requests`` at once; read exactly ``reply`` back."""
        self.sock.sendall(requests)
        got = b""
        while len(got) < len(reply):
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        if got != reply:
            raise BenchError(f"expected {reply[:80]!r}..., got {got[:200]!r}")

    def close(self) -> None:
        self.sock.close()


# -- results ------------------------------------------------------------------


@dataclass
class Target:
    op: str  # ">=" or "<="
    value: float

    def met(self, measured: float) -> bool:
        return measured >= self.value if self.op == ">=" else measured <= self.value

    def shortfall(self, measured: float, unit: str) -> str:
        """How far ``measured`` is on the wrong side of the target."""
        gap = (self.value - measured) if self.op == ">=" else (measured - self.value)
        side = "below" if self.op == ">=" else "above"
        if unit == "%":
            return f"{gap:.1f} points {side} it"
        return f"{gap / self.value * 100:.0f}% {side} it"


@dataclass
class Row:
    case: str
    label: str
    unit: str
    values: dict[int, float] = field(default_factory=dict)
    target: Target | None = None

    def median(self) -> float | None:
        return statistics.median(self.values.values()) if self.values else None


class Results:
    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.rows: dict[tuple[str, str], Row] = {}

    def add(
        self,
        case: str,
        label: str,
        unit: str,
        rnd: int,
        value: float,
        target: Target | None = None,
    ) -> float:
        row = self.rows.setdefault((case, label), Row(case, label, unit))
        row.values[rnd] = value
        row.target = target or row.target
        return value

    @staticmethod
    def fmt(value: float | None, unit: str) -> str:
        if value is None:
            return "-"
        if unit == "ops/s":
            return f"{value:,.0f}"
        if unit == "x":
            return f"{value:.2f}x"
        if unit in ("µs", "MiB"):
            return f"{value:,.2f}" if value < 100 else f"{value:,.1f}"
        if unit == "%":
            return f"{value:.1f}%"
        return f"{value:g}"

    def target_text(self, row: Row) -> str:
        if row.target is None:
            return ""
        shown = self.fmt(row.target.value, row.unit)
        return f"{row.target.op} {shown}"

    def table(self) -> str:
        head = [
            "case",
            "measure",
            "unit",
            *(f"round {r + 1}" for r in range(self.rounds)),
            "median",
            "target",
            "result",
        ]
        body = []
        for row in self.rows.values():
            median = row.median()
            result = ""
            if row.target is not None and median is not None:
                result = "PASS" if row.target.met(median) else "MISS"
            body.append(
                [
                    row.case,
                    row.label,
                    row.unit,
                    *(
                        self.fmt(row.values.get(r), row.unit)
                        for r in range(self.rounds)
                    ),
                    self.fmt(median, row.unit),
                    self.target_text(row),
                    result,
                ]
            )
        widths = [
            max(len(str(cells[i])) for cells in [head, *body]) for i in range(len(head))
        ]
        numeric = set(range(3, len(head) - 2))

        def line(cells: Sequence[str]) -> str:
            parts = [
                str(c).rjust(w) if i in numeric else str(c).ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ]
            return "| " + " | ".join(parts) + " |"

        rule = (
            "|"
            + "|".join(
                ("-" * (w + 1) + ":") if i in numeric else ("-" * (w + 2))
                for i, w in enumerate(widths)
            )
            + "|"
        )
        return "\n".join([line(head), rule, *(line(cells) for cells in body)])

    def misses(self) -> list[str]:
        out = []
        for row in self.rows.values():
            median = row.median()
            if row.target is None or median is None or row.target.met(median):
                continue
            out.append(
                f"{row.case}: {row.label}: {self.fmt(median, row.unit)} vs target "
                f"{self.target_text(row)} ({row.target.shortfall(median, row.unit)})"
            )
        return out


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def spread(values: Sequence[float]) -> float:
    """(max - min) / min, in percent."""
    return (max(values) - min(values)) / min(values) * 100


# -- the suite ------------------------------------------------------------------


@dataclass
class Settings:
    rounds: int
    duration: float
    slices: int
    warmup: float
    clients: str
    mem_keys: int
    key_sizes: list[int]
    api_calls: int
    api_repeats: int
    api_seconds: float
    cases: list[str]


class Suite:
    def __init__(self, settings: Settings, log: Callable[[str], None]) -> None:
        self.s = settings
        self.log = log
        self.results = Results(settings.rounds)
        self.cluster: LocalCluster | None = None
        self.echo_helper: Helper | None = None
        self.helpers: list[Helper] = []
        self.workers: list[Helper] = []
        self.mem_nodes: list[Child] = []
        self.addresses: dict[str, tuple[str, int]] = {}
        self.echo: tuple[str, int] | None = None
        self.bare_uri = ""
        self.api: Helper | None = None

    def wants(self, *cases: str) -> bool:
        return any(case in self.s.cases for case in cases)

    # -- starting and stopping -----------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        nodes: dict[str, str | None] = {"foo": GUIDE, "bar": GUIDE}
        extra: dict[str, Sequence[str]] = {
            "foo": ["--listen", "127.0.0.1:0"],
            "bar": ["--listen", "127.0.0.1:0"],
        }
        if self.wants("scaling"):
            for i, name in enumerate(HOP_NODES):
                nodes[name] = hop_table(i)
                # every hop serves the text protocol, so requests travel the way
                # they do in a cluster started by `pyrokv up`: over peer links
                extra[name] = ["--listen", "127.0.0.1:0"]
        # Baselines and load clients start while the cluster does.
        echo = bare = None
        if self.wants("local_get", "pipelined"):
            echo = self._helper(
                "echo server", script("baselines.py"), "echo", "v\\r\\nOK\\r\\n"
            )
        if self.wants("routed_get", "api"):
            bare = self._helper(
                "bare Pyro5 daemon", script("baselines.py"), "pyro", "zoo", "k", "v"
            )
        count = 1 if self.s.clients == "threads" else 8
        if self.wants("local_get", "routed_get", "pipelined", "scaling"):
            self.workers = [
                self._helper(f"load client {i}", script("loadgen.py"))
                for i in range(count)
            ]
        self.cluster = LocalCluster(nodes, extra).start()
        for name, child in self.cluster.nodes.items():
            if name in extra:
                self.addresses[name] = listen_address(child)
        if echo is not None:
            host, _, port = echo.wait_ready().split()[1].rpartition(":")
            self.echo = (host, int(port))
            self.echo_helper = echo
        if bare is not None:
            self.bare_uri = bare.wait_ready().split()[1]
        for worker in self.workers:
            worker.wait_ready()
        self._fill()
        if self.wants("api", "scaling"):
            ns = self.cluster.ns
            self.api = self._helper(
                "API benchmark process",
                script("apibench.py"),
                "--ns",
                f"{ns[0]}:{ns[1]}",
                "--bare-uri",
                self.bare_uri,
                "--keys",
                ",".join(str(n) for n in self.s.key_sizes),
                "--calls",
                str(self.s.api_calls),
                "--repeats",
                str(self.s.api_repeats),
                "--seconds",
                str(self.s.api_seconds),
            )
            self.api.wait_ready(timeout=START_TIMEOUT * 2)
        self.log(f"# started everything in {time.monotonic() - started:.1f}s")

    def _helper(self, name: str, *args: str) -> Helper:
        helper = Helper(name, args)
        self.helpers.append(helper)
        return helper

    def _fill(self) -> None:
        """The buckets every case reads: apple (foo), zoo (bar), the hop buckets."""
        conn = TextConn(self.addresses["foo"])
        try:
            ok = b"OK\r\n"
            conn.expect(
                b"CREATE apple\r\nPUT apple k v\r\nCREATE zoo\r\nPUT zoo k v\r\n",
                ok * 4,
            )
            conn.expect(GET_LOCAL.encode() + GET_ROUTED.encode(), REPLY.encode() * 2)
        finally:
            conn.close()
        if "h0" in self.addresses:
            conn = TextConn(self.addresses["h0"])
            try:
                for hops in range(HOPS + 1):
                    bucket = hop_bucket(hops).encode()
                    conn.expect(
                        b"CREATE %s\r\nPUT %s k v\r\nGET %s k\r\n"
                        % (bucket, bucket, bucket),
                        b"OK\r\nOK\r\n" + REPLY.encode(),
                    )
            finally:
                conn.close()

    def stop(self) -> None:
        for child in list(self.mem_nodes):
            child.stop()
        for helper in self.helpers:
            helper.stop()
        if self.cluster is not None:
            self.cluster.stop()

    # -- measuring -----------------------------------------------------------

    def load(
        self, job: dict[str, Any], conns: int, duration: float | None = None
    ) -> float:
        """Requests per second of ``job`` over ``conns`` connections, clients apart."""
        duration = self.s.duration if duration is None else duration
        start = time.time() + self.s.warmup
        end = start + duration
        job = {**job, "start": start, "end": end}
        if client_mode(self.s.clients, job["kind"]) == "processes":
            if conns > len(self.workers):
                raise BenchError(f"{conns} connections need {conns} load clients")
            busy = self.workers[:conns]
            for worker in busy:
                worker.send(json.dumps({**job, "threads": 1}))
        else:
            busy = self.workers[:1]
            busy[0].send(json.dumps({**job, "threads": conns}))
        timeout = self.s.warmup + duration + 60
        total = sum(int(worker.result(timeout)["ops"]) for worker in busy)
        return total / duration

    def text(
        self,
        address: tuple[str, int],
        request: str,
        conns: int,
        depth: int = 1,
        duration: float | None = None,
    ) -> float:
        job = {
            "kind": "text",
            "host": address[0],
            "port": address[1],
            "request": request,
            "reply": REPLY,
            "depth": depth,
        }
        return self.load(job, conns, duration)

    def bare(self, conns: int, duration: float | None = None) -> float:
        job = {
            "kind": "pyro",
            "uri": self.bare_uri,
            "method": "get",
            "args": ["zoo", "k"],
            "expect": "v",
        }
        return self.load(job, conns, duration)

    def pair(
        self,
        rnd: int,
        first: Callable[..., float],
        second: Callable[..., float],
    ) -> tuple[float, float]:
        """Run a case and its baseline back to back: ``slices`` alternating slices each.

        Each gets the whole window, cut in slices taken in turn (AB BA AB .., starting
        BA in odd rounds), so load from elsewhere on the machine hits both alike.
        """
        slices = self.s.slices
        part = self.s.duration / slices
        a = b = 0.0
        for i in range(slices):
            if (rnd + i) % 2 == 0:
                a += first(duration=part)
                b += second(duration=part)
            else:
                b += second(duration=part)
                a += first(duration=part)
        return a / slices, b / slices

    # -- cases ---------------------------------------------------------------

    def case_local_get(self, r: int) -> None:
        add, foo = self.results.add, self.addresses["foo"]
        assert self.echo is not None
        echo = self.echo
        assert self.cluster is not None
        assert self.echo_helper is not None
        servers = [self.cluster.nodes["foo"].proc.pid, self.echo_helper.proc.pid]
        clients = [worker.proc.pid for worker in self.workers]
        for conns in (1, 8):
            # One connection is a ping-pong whose rate depends on whether the
            # scheduler puts client and server on one core or two; pinning both
            # servers to one core and the client to the other measures the same
            # placement for pyrokv and the echo server.
            with pinned(servers if conns == 1 else [], clients if conns == 1 else []):
                node, base = self.pair(
                    r,
                    partial(self.text, foo, GET_LOCAL, conns),
                    partial(self.text, echo, GET_LOCAL, conns),
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

    def case_routed_get(self, r: int) -> None:
        add, foo = self.results.add, self.addresses["foo"]
        rates: dict[int, tuple[float, float]] = {}
        for conns in (1, 8):
            rates[conns] = self.pair(
                r,
                partial(self.text, foo, GET_ROUTED, conns),
                partial(self.bare, conns),
            )
            node, base = rates[conns]
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
        add(
            "routed_get",
            "ratio routed 8 conn / bare sequential",
            "x",
            r,
            ratio(rates[8][0], rates[1][1]),
            Target(">=", 2.0),
        )

    def case_pipelined(self, r: int) -> None:
        add, foo = self.results.add, self.addresses["foo"]
        assert self.echo is not None
        echo = self.echo
        node, base = self.pair(
            r,
            partial(self.text, foo, GET_LOCAL, 1, depth=16),
            partial(self.text, echo, GET_LOCAL, 1, depth=16),
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

    def case_api(self, r: int) -> None:
        add = self.results.add
        assert self.api is not None
        got = self.api.ask({"cmd": "api"}, timeout=600)
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

    def case_scaling(self, r: int) -> None:
        add = self.results.add
        assert self.api is not None
        got = self.api.ask({"cmd": "scaling"}, timeout=600)
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
                add(
                    "scaling", f"{label}, {keys_name(int(n))} keys", "µs", r, pair[what]
                )
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
        h0 = self.addresses["h0"]
        rates = {}
        for hops in range(HOPS + 1):
            request = f"GET {hop_bucket(hops)} k\r\n"
            rates[hops] = self.text(h0, request, 1)
            label = "local" if hops == 0 else f"{hops} hop{'s' if hops > 1 else ''}"
            add("scaling", f"text GET via h0, {label}, 1 conn", "ops/s", r, rates[hops])
        per_hop = (1 / rates[HOPS] - 1 / rates[1]) / (HOPS - 1) * 1e6
        add("scaling", "µs added per extra hop (1 -> 4)", "µs", r, per_hop)

    def case_memory(self, r: int) -> None:
        add = self.results.add
        assert self.cluster is not None
        count = self.s.mem_keys
        node_kib, node_total = self.node_memory(r, count)
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

    def node_memory(self, r: int, count: int) -> tuple[int, int]:
        """RSS growth (KiB) of a fresh node while PUTting ``count`` keys, and its total."""
        assert self.cluster is not None
        name = f"mem{r}"
        child = spawn_node(
            name,
            self.cluster.ns,
            f"0x00..0xff={name}",
            extra=["--listen", "127.0.0.1:0"],
        )
        self.mem_nodes.append(child)
        try:
            conn = TextConn(listen_address(child))
            try:
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
                conn.close()
        finally:
            child.stop()
            self.mem_nodes.remove(child)
        return after - before, after

    def run(self) -> None:
        for r in range(self.s.rounds):
            started = time.monotonic()
            for case in self.s.cases:
                getattr(self, f"case_{case}")(r)
            self.log(
                f"# round {r + 1}/{self.s.rounds} took {time.monotonic() - started:.1f}s"
            )


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


def client_mode(clients: str, kind: str) -> str:
    """Whether the connections of a ``kind`` job come from processes or threads.

    ``auto`` picks, per kind of client, the one that drives the server harder on a
    small machine: threads of one process for the text protocol (its client is a
    send and a recv, mostly outside the GIL, and 8 client processes would take the
    server's cores), processes for Pyro5 (its client serializes in Python, so 8
    threads in one process cap the rate).
    """
    if clients == "auto":
        return "threads" if kind == "text" else "processes"
    return clients


def describe_clients(clients: str) -> str:
    if clients == "auto":
        return (
            "text from 8 threads of one client process, Pyro5 from 8 client processes"
        )
    if clients == "threads":
        return "8 threads of one client process"
    return "8 client processes"


def hop_table(i: int) -> str:
    """Node h<i>'s table: the bucket of k hops goes on to h<i+1> until h<k> owns it."""
    entries = []
    for hops in range(HOPS + 1):
        owner = f"h{i + 1}" if i < hops else f"h{hops}"
        entries.append(f"{hop_bucket(hops)[0]}={owner}")
    return ", ".join(entries)


@contextlib.contextmanager
def pinned(servers: Sequence[int], clients: Sequence[int]) -> Iterator[None]:
    """Pin every thread of ``servers`` to one CPU and of ``clients`` to another."""
    cpus = sorted(os.sched_getaffinity(0))
    saved: dict[int, set[int]] = {}
    if len(cpus) >= 2:
        for pids, cpu in ((servers, cpus[0]), (clients, cpus[1])):
            for pid in pids:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    tid = int(task.name)
                    try:
                        saved[tid] = os.sched_getaffinity(tid)
                        os.sched_setaffinity(tid, {cpu})
                    except OSError:
                        pass  # the thread ended meanwhile
    try:
        yield
    finally:
        for tid, mask in saved.items():
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:
                pass


def hop_bucket(hops: int) -> str:
    """The bucket that h0 reaches through ``hops`` forwarding hops: ahop, bhop, ..."""
    return f"{chr(ord('a') + hops)}hop"


def keys_name(n: int) -> str:
    exp = len(str(n)) - 1
    return f"10^{exp}" if n == 10**exp else f"{n:,}"


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Run pyrokv's benchmark suite and print one table.",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds (default 3)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and short windows (for the test)",
    )
    parser.add_argument(
        "--only",
        metavar="CASES",
        help=f"comma-separated cases to run (default all: {','.join(CASES)})",
    )
    parser.add_argument(
        "--duration",
        type=float,
        help="seconds each throughput window lasts (default 1.5; 0.2 with --quick)",
    )
    parser.add_argument(
        "--slices",
        type=int,
        help="a case and its baseline take turns in this many slices of the window "
        "(default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--clients",
        choices=("auto", "processes", "threads"),
        default="auto",
        help="where the 8 connections of a case come from: 8 client processes, 8 "
        "threads of one process, or (auto, the default) threads for the text "
        "protocol and processes for Pyro5 calls",
    )
    parser.add_argument(
        "--mem-keys",
        type=int,
        help="keys in the memory case (default 1,000,000; 10,000 with --quick)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is missed"
    )
    args = parser.parse_args(argv)
    cases = list(CASES)
    if args.only:
        cases = [c.strip() for c in args.only.split(",") if c.strip()]
        unknown = [c for c in cases if c not in CASES]
        if unknown:
            parser.error(
                f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}"
            )
        cases = [c for c in CASES if c in cases]
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.slices is not None and args.slices < 1:
        parser.error("--slices must be at least 1")
    quick = args.quick
    settings = Settings(
        rounds=args.rounds,
        duration=args.duration or (0.2 if quick else 1.5),
        slices=args.slices or (1 if quick else 3),
        warmup=0.05 if quick else 0.1,
        clients=args.clients,
        mem_keys=args.mem_keys or (10_000 if quick else 1_000_000),
        key_sizes=[1_000, 10_000] if quick else [1_000, 1_000_000],
        api_calls=2_000 if quick else 20_000,
        api_repeats=3 if quick else 7,
        api_seconds=0.2 if quick else 1.0,
        cases=cases,
    )
    return settings, args


def main(argv: Sequence[str] | None = None) -> int:
    settings, args = parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # SIGTERM unwinds like Ctrl-C, so every child process is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.monotonic()
    load_before = f"{os.getloadavg()[0]:.2f}"
    suite = Suite(settings, log)
    try:
        suite.start()
        suite.run()
    except (BenchError, PyroKVError, OSError) as exc:
        log(f"benchmarks: {type(exc).__name__}: {exc}")
        return 1
    finally:
        suite.stop()
    results = suite.results
    print(
        f"pyrokv benchmarks ({'quick, ' if args.quick else ''}{settings.rounds} rounds, "
        f"{settings.duration:g}s windows in {settings.slices} slice(s); 8 connections: "
        f"{describe_clients(settings.clients)}); Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {load_before} at start, "
        f"{os.getloadavg()[0]:.2f} at end; took {time.monotonic() - started:.0f}s"
    )
    print(results.table())
    misses = results.misses()
    print()
    if misses:
        print("MISSED targets:")
        for miss in misses:
            print(f"- {miss}")
    else:
        print("every target met")
    return 1 if (misses and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
