"""The ``many`` case (issue 14, item 5): many nodes on this machine, many connections to one.

Many nodes: each round writes a config file of ``nodes`` nodes (16; 4 with
``--quick``) sharing a 256-entry table (byte ``b`` to node ``n{b % nodes}``), each
serving the text protocol on a free port, with a name server of its own on a free
port, and runs ``pyrokv up --config FILE`` on it, as a user would:

- the time from starting ``pyrokv up`` to its "pyrokv cluster is up" line, which
  it prints once every node has printed ``READY`` (registered and serving);
- the time of the command ``pyrokv status --ns HOST:PORT`` (a new process: Python's
  start, the look-up, every node asked), which must show every node alive;
- each idle node's resident memory (VmRSS; the largest of them has the target) and
  its proportional share (PSS: shared pages split between the processes sharing them,
  so the sum is what the nodes cost the machine);
- the cost of a routed GET, ``GET apple k`` sent to ``n00`` for ``n01``'s bucket, on
  one connection, against the same on a cluster of 2 nodes started the same way
  (``pyrokv up``, the same kind of table; kept from the first round to the end),
  in interleaved slices; and 8 connections to ``n00`` each reading a bucket of
  another owner (``n01``..``n08``; all ``n01`` with 2 nodes), without a target.

Many connections: a fresh node owning every bucket (``c1k<round>``, in the suite's
name server) gets ``idle`` connections (1,000; 100 with ``--quick``) that send
nothing: its VmRSS growth from before they open to when the node counts them all
(``INFO``), and the rate of 8 connections reading a bucket of the node while
``idle - 8`` of them stay open (so 1,000 are open, the node's limit), against
the same 8 with none open, in interleaved slices.

The benchmark process holds the idle connections itself; it raises its soft limit
of open files to the hard one first, and its children (the nodes) inherit that.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial

from benchmarks.harness import (
    TEXT_TIMEOUT,
    BenchError,
    Suite,
    rss_kib,
    text_address,
)
from benchmarks.results import Target, ratio
from pyrokv.cluster import Child, spawn_node
from pyrokv.naming import parse_address
from pyrokv.testing import Conn

__all__ = ["ManyClusters", "UpCluster", "many", "table_spec"]

#: Active connections among them.
ACTIVE = 8
#: The baseline cluster's nodes.
SMALL = 2
#: ``pyrokv up``'s line once every node is ready, and the one naming its name server.
UP_LINE = "pyrokv cluster is up"
NS_LINE = "  name server "
#: Longest a ``pyrokv up`` of 16 nodes may take before the case fails (s).
UP_TIMEOUT = 120.0
GET = "GET apple k\r\n"
REPLY = "v\r\nOK\r\n"


def table_spec(nodes: int) -> str:
    """A table of 256 entries, one per first byte: byte ``b`` to node ``n{b % nodes}``."""
    return ", ".join(f"0x{b:02x}={node_name(b % nodes)}" for b in range(256))


def node_name(i: int) -> str:
    """The name of the cluster's ``i``-th node: n00, n01, ..."""
    return f"n{i:02d}"


def owned_bucket(owner: int, nodes: int) -> str:
    """A bucket that node ``owner`` holds in a cluster of ``nodes``: its first byte
    is the first lower-case letter that :func:`table_spec` gives that node."""
    first = next(c for c in range(ord("a"), ord("z") + 1) if c % nodes == owner)
    return f"{chr(first)}bucket"


def _environ() -> dict[str, str]:
    """This environment without PYROKV_*: the commands read their config only."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYROKV_")}


class UpCluster:
    """A cluster of ``nodes`` nodes started by ``pyrokv up`` from a config file."""

    def __init__(self, nodes: int, directory: str) -> None:
        self.nodes = nodes
        self.config = os.path.join(directory, f"many{nodes}.conf")
        self.child: Child | None = None
        self.ns = ""
        #: each node's pid and text address, from ``pyrokv status``
        self.pids: dict[str, int] = {}
        self.text: dict[str, tuple[str, int]] = {}

    def write_config(self) -> None:
        """The config file: a name server and every node on free ports, one table."""
        lines = [
            "[nameserver]",
            "host = 127.0.0.1",
            "port = 0",
            "",
            "[cluster]",
            f"table = {table_spec(self.nodes)}",
        ]
        for i in range(self.nodes):
            lines += [
                "",
                f"[node {node_name(i)}]",
                "host = 127.0.0.1",
                "port = 0",
                "listen = 127.0.0.1:0",
            ]
        with open(self.config, "w", encoding="utf-8") as file:
            file.write("\n".join(lines) + "\n")

    def start(self) -> float:
        """Run ``pyrokv up``; return the seconds until it said every node is ready."""
        self.write_config()
        started = time.perf_counter()
        self.child = Child(
            ["up", "--config", self.config],
            f"pyrokv up of {self.nodes} nodes",
            die_with_parent=True,
        )
        self.child.wait_for(UP_LINE, UP_TIMEOUT)
        took = time.perf_counter() - started
        self.ns = self.child.wait_for(NS_LINE, 5).split()[-1]
        return took

    def status(self) -> subprocess.CompletedProcess[str]:
        """Run ``pyrokv status --ns NS``; it must exit 0 (every node alive)."""
        done = subprocess.run(
            [sys.executable, "-m", "pyrokv", "status", "--ns", self.ns],
            capture_output=True,
            text=True,
            env=_environ(),
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(
                f"pyrokv status exited {done.returncode}: {done.stdout}{done.stderr}"
            )
        return done

    def timed_status(self) -> float:
        """Seconds ``pyrokv status`` takes; checks that it shows every node alive,
        and notes each node's pid and text address from its table."""
        started = time.perf_counter()
        done = self.status()
        took = time.perf_counter() - started
        for line in done.stdout.splitlines()[1:]:
            # NODE ADDRESS TEXT STATE PID ...
            name, _address, text, state, pid = line.split()[:5]
            if state != "alive":
                raise BenchError(f"node {name} is {state}: {done.stdout}")
            self.pids[name] = int(pid)
            self.text[name] = parse_address(text)
        if len(self.pids) != self.nodes:
            raise BenchError(f"pyrokv status shows {sorted(self.pids)}: {done.stdout}")
        return took

    def fill(self) -> None:
        """A key in the bucket of each of n01..n08 (all n01's with 2 nodes), via n00."""
        with Conn(self.text[node_name(0)], timeout=TEXT_TIMEOUT) as conn:
            for bucket in {self.bucket(i) for i in range(ACTIVE)} | {"apple"}:
                conn.expect(
                    f"CREATE {bucket}\r\nPUT {bucket} k v\r\nGET {bucket} k\r\n".encode(),
                    b"OK\r\nOK\r\n" + REPLY.encode(),
                )

    def bucket(self, i: int) -> str:
        """The bucket connection ``i`` of 8 reads: another owner for each, if there are."""
        return owned_bucket(1 + i % (self.nodes - 1), self.nodes)

    def stop(self) -> None:
        """Stop ``pyrokv up`` (it stops its nodes and name server)."""
        if self.child is not None:
            self.child.stop(timeout=60)
            self.child = None


class Idle:
    """Idle connections to one node's text port, held by this process.

    One of them (the probe) asks the node how many it counts, so that a call
    returns once the node has taken every connection opened or closed (a
    connection it has not counted yet could push the next one past its limit).
    """

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.socks: list[socket.socket] = []
        self.probe: Conn | None = None

    def open(self, count: int) -> None:
        """Hold ``count`` open connections; return once the node counts them all."""
        if self.probe is None:
            self.probe = Conn(self.address, timeout=TEXT_TIMEOUT)
        while len(self.socks) < count - 1:
            self.socks.append(socket.create_connection(self.address, timeout=30))
        wait_for_count(self.probe, count)

    def close(self) -> None:
        """Close them all; return once the node counts none (but the one asking)."""
        for sock in self.socks:
            sock.close()
        self.socks = []
        if self.probe is not None:
            self.probe.close()
            self.probe = None
        with Conn(self.address, timeout=TEXT_TIMEOUT) as probe:
            wait_for_count(probe, 1)


def wait_for_count(probe: Conn, count: int) -> None:
    """Ask the node over ``probe`` until it counts ``count`` text connections."""
    deadline = time.monotonic() + TEXT_TIMEOUT
    while (seen := connections(probe)) != count:
        if time.monotonic() > deadline:
            raise BenchError(f"the node counts {seen} connections, not {count}")
        time.sleep(0.005)  # it has not accepted (or closed) them all yet


def connections(conn: Conn) -> int:
    """The ``connections`` field of the node's INFO."""
    conn.send(b"INFO\r\n")
    found = None
    while (line := conn.line()) != b"OK":
        if line.startswith((b"ERROR", b"NOT")) or not line:
            raise BenchError(f"INFO answered {line!r}")
        name, _, value = line.partition(b" ")
        if name == b"connections":
            found = int(value)
    if found is None:
        raise BenchError("INFO has no connections field")
    return found


def pss_kib(pid: int) -> int:
    """Proportional set size of process ``pid`` in KiB (Linux 4.14 and later)."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise BenchError(f"no Pss for process {pid}")


def raise_file_limit(need: int) -> None:
    """Raise this process's soft limit of open files to its hard limit; fail if
    even that is below ``need``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < need:
        raise BenchError(
            f"the hard limit of open files is {hard}, below the {need} the many "
            "case needs: raise it (ulimit -Hn)"
        )


class ManyClusters:
    """What the case keeps from round to round: its directory and the 2-node cluster."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="pyrokv-bench-many-")
        self.small = UpCluster(SMALL, self.tmp.name)
        self.small.start()
        self.small.timed_status()
        self.small.fill()

    def stop(self) -> None:
        """Stop the 2-node cluster; remove the directory."""
        self.small.stop()
        self.tmp.cleanup()


def many(suite: Suite, r: int) -> None:
    """Round ``r``: ``pyrokv up`` of many nodes, its status, its memory, routed GETs
    against 2 nodes; then one node with many idle connections."""
    count, idle = suite.options.many_nodes, suite.options.many_idle
    raise_file_limit(idle + 256)
    if suite.many is None:
        suite.many = ManyClusters()
    many_nodes(suite, r, suite.many, count)
    many_connections(suite, r, idle)


def many_nodes(suite: Suite, r: int, kept: ManyClusters, count: int) -> None:
    """``pyrokv up`` of ``count`` nodes: start, status, memory, routed GET vs 2 nodes."""
    add = suite.results.add
    big = UpCluster(count, kept.tmp.name)
    try:
        took = big.start()
        add(
            "many",
            f"pyrokv up to every node ready, {count} nodes",
            "s",
            r,
            took,
            Target("<=", 10.0),
        )
        add(
            "many",
            f"pyrokv status, {count} nodes",
            "s",
            r,
            big.timed_status(),
            Target("<=", 1.0),
        )
        rss = [rss_kib(pid) / 1024 for pid in big.pids.values()]
        pss = [pss_kib(pid) / 1024 for pid in big.pids.values()]
        add(
            "many",
            f"idle node RSS, largest of {count}",
            "MiB",
            r,
            max(rss),
            Target("<=", 40.0),
        )
        add("many", f"idle node PSS, mean of {count}", "MiB", r, sum(pss) / len(pss))
        big.fill()
        small = kept.small
        one, base = suite.pair(
            r,
            partial(suite.text, big.text[node_name(0)], GET, 1),
            partial(suite.text, small.text[node_name(0)], GET, 1),
        )
        add("many", f"routed GET, {count} nodes, 1 conn", "µs", r, 1e6 / one)
        add("many", f"routed GET, {SMALL} nodes, 1 conn", "µs", r, 1e6 / base)
        add(
            "many",
            f"routed GET cost ratio {count}/{SMALL} nodes, 1 conn",
            "x",
            r,
            ratio(base, one),
            Target("<=", 1.2),
        )
        spread, base8 = suite.pair(r, spread_get(suite, big), spread_get(suite, small))
        owners = min(ACTIVE, count - 1)
        add(
            "many",
            f"routed GET, {count} nodes, 8 conn to {owners} owners",
            "ops/s",
            r,
            spread,
        )
        add("many", f"routed GET, {SMALL} nodes, 8 conn to 1 owner", "ops/s", r, base8)
        add(
            "many",
            f"ratio routed GET 8 conn {count}/{SMALL} nodes",
            "x",
            r,
            ratio(spread, base8),
        )
    finally:
        big.stop()


def spread_get(suite: Suite, cluster: UpCluster) -> Callable[..., float]:
    """The rate of 8 connections to n00, connection ``i`` reading ``cluster.bucket(i)``."""
    host, port = cluster.text[node_name(0)]
    targets = [[host, port, f"GET {cluster.bucket(i)} k\r\n"] for i in range(ACTIVE)]
    job = {"kind": "text", "targets": targets, "reply": REPLY, "depth": 1}

    def rate(duration: float | None = None) -> float:
        return suite.load(job, ACTIVE, duration)

    return rate


def many_connections(suite: Suite, r: int, idle: int) -> None:
    """A fresh node: RSS growth for ``idle`` idle connections; 8 active among them."""
    add = suite.results.add
    assert suite.cluster is not None
    name = f"c1k{r}"
    child = spawn_node(
        name, suite.cluster.ns, f"0x00..0xff={name}", extra=["--listen", "127.0.0.1:0"]
    )
    suite.mem_nodes.append(child)
    try:
        address = text_address(child)
        with Conn(address, timeout=TEXT_TIMEOUT) as conn:
            conn.expect(b"CREATE apple\r\nPUT apple k v\r\n", b"OK\r\nOK\r\n")
        active = partial(suite.text, address, GET, ACTIVE)
        active(duration=suite.options.duration / suite.options.slices)  # warm
        conns = Idle(address)
        conns.close()  # nothing open: the node counts only the one asking
        before = rss_kib(child.proc.pid)
        conns.open(idle)
        grown = (rss_kib(child.proc.pid) - before) / 1024
        conns.close()

        def crowded(duration: float | None = None) -> float:
            conns.open(idle - ACTIVE)
            try:
                return active(duration=duration)
            finally:
                conns.close()

        among, alone = suite.pair(r, crowded, active)
        add(
            "many",
            f"node RSS growth, {idle:,} idle conns",
            "MiB",
            r,
            grown,
            Target("<=", 10.0),
        )
        add(
            "many",
            f"GET local, {ACTIVE} conn among {idle:,} open",
            "ops/s",
            r,
            among,
        )
        add("many", f"GET local, {ACTIVE} conn alone", "ops/s", r, alone)
        add(
            "many",
            f"ratio {ACTIVE} conn among {idle:,} / alone",
            "x",
            r,
            ratio(among, alone),
            Target(">=", 0.9),
        )
    finally:
        child.stop()
        suite.mem_nodes.remove(child)
