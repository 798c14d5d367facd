"""The live-table cases (issue 11): moving a range of buckets while the cluster runs.

They run on a cluster of their own, because a change reaches every node registered
in its name server: a name server and nodes ``mv1`` and ``mv2`` (a shared cluster
secret, so requests between them go over peer links), both serving the text
protocol. The range ``c`` holds ``move_buckets`` buckets (``c0000``, ``c0001``, ..)
of ``move_keys`` keys in all, filled over the text protocol, pipelined on a few
connections. Every move takes it from the node that holds it to the other one
(tables :data:`TABLES` in turn, through :meth:`pyrokv.Cluster.set_table`), so
each round moves the same data, once one way and once the other.

- ``moves``: the time of one ``Cluster.set_table`` call that moves the range, with
  no other load; and its parts as the coordinator sees them (look, check, prepare
  and apply; the hand-off until every node says it is complete; the copy left in
  the name server).
- ``move_load``: 8 connections read buckets that do not move (4 ``GET apple k`` on
  ``mv1``, 4 ``GET zoo k`` on ``mv2``) through one window; the range moves in the
  middle of it. The reads' rate while the move runs is compared with their rate
  in the same window before it starts and after it ends (counted per 10 ms bin by
  the load client), and the move's time under that load is shown too.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from benchmarks.harness import TEXT_TIMEOUT, BenchError, Suite, text_address
from benchmarks.results import Target, keys_name, ratio
from pyrokv.changes import Cluster
from pyrokv.cluster import LocalCluster
from pyrokv.testing import Conn

__all__ = ["TABLES", "MoveCluster", "Mover", "move_load", "moves"]

#: The tables a move switches between: range ``c`` on mv1, then on mv2.
TABLES = ("a..m=mv1, n..z=mv2", "a..b=mv1, c=mv2, d..m=mv1, n..z=mv2")
#: What the readers of ``move_load`` ask, 4 connections each: buckets that stay.
READS = (("mv1", "GET apple k\r\n"), ("mv2", "GET zoo k\r\n"))
READ_REPLY = "v\r\nOK\r\n"
#: Width of the load client's bins, in seconds.
BIN = 0.01
#: Fill connections, and PUT lines sent before their replies are read.
FILL_CONNS = 4
FILL_BATCH = 2000


class MoveCluster(Cluster):
    """A :class:`pyrokv.Cluster` that notes when its wait for the hand-off starts
    and ends (``marks``, ``time.perf_counter()``), to split a change into parts."""

    def __init__(self, ns: tuple[str, int]) -> None:
        super().__init__(ns)
        self.marks: dict[str, float] = {}

    def _wait(self, *args: Any, **kwargs: Any) -> dict[str, dict[str, Any]]:
        self.marks["wait"] = time.perf_counter()
        try:
            return super()._wait(*args, **kwargs)
        finally:
            self.marks["waited"] = time.perf_counter()


class Mover:
    """The move cases' cluster, its data, and the moves made so far."""

    def __init__(self, keys: int, buckets: int) -> None:
        self.keys = keys
        self.buckets = buckets
        self.cluster: LocalCluster | None = None
        self.addresses: dict[str, tuple[str, int]] = {}
        self.made = 0  # moves made: the range is on mv1 when even
        #: seconds of each move with no other load, so far
        self.unloaded: list[float] = []

    def label(self) -> str:
        """The data a move carries, as the table's rows name it."""
        return f"{keys_name(self.keys)} keys in {self.buckets:,} buckets"

    def start(self) -> None:
        """Start the name server and nodes mv1, mv2; fill the range and the readers'
        buckets."""
        listen = ["--listen", "127.0.0.1:0"]
        self.cluster = LocalCluster(
            {"mv1": TABLES[0], "mv2": TABLES[0]}, {"mv1": listen, "mv2": listen}
        ).start()
        for name, child in self.cluster.nodes.items():
            self.addresses[name] = text_address(child)
        self._fill()

    def stop(self) -> None:
        """Stop the cluster."""
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    def _fill(self) -> None:
        ok = b"OK\r\n"
        with Conn(self.addresses["mv1"], timeout=TEXT_TIMEOUT) as conn:
            conn.expect(
                b"CREATE apple\r\nPUT apple k v\r\nCREATE zoo\r\nPUT zoo k v\r\n",
                ok * 4,
            )
        per = self.keys // self.buckets
        if per * self.buckets != self.keys:
            raise BenchError(
                f"{self.keys} keys do not split evenly into {self.buckets} buckets"
            )
        errors: list[BaseException] = []

        def fill(part: range) -> None:
            try:
                with Conn(self.addresses["mv1"], timeout=TEXT_TIMEOUT) as conn:
                    lines: list[bytes] = []
                    for b in part:
                        name = b"c%04d" % b
                        lines.append(b"CREATE %s\r\n" % name)
                        lines.extend(
                            b"PUT %s k%05d %010d\r\n" % (name, k, k) for k in range(per)
                        )
                        if len(lines) >= FILL_BATCH:
                            conn.expect(b"".join(lines), ok * len(lines))
                            lines = []
                    if lines:
                        conn.expect(b"".join(lines), ok * len(lines))
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=fill, args=(range(i, self.buckets, FILL_CONNS),))
            for i in range(FILL_CONNS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def move(self) -> dict[str, float]:
        """Move the range to the other node; its time and parts, in seconds.

        Checks that the change moved every bucket and key of the range, and that
        the last key is read back through the node that no longer holds it.
        """
        assert self.cluster is not None
        source = "mv1" if self.made % 2 == 0 else "mv2"
        table = TABLES[(self.made + 1) % 2]
        coordinator = MoveCluster(self.cluster.ns)
        pids = [child.proc.pid for child in self.cluster.nodes.values()]
        cpu = sum(cpu_seconds(pid) for pid in pids)
        own = time.process_time()
        began = time.perf_counter()
        got = coordinator.set_table(table)
        ended = time.perf_counter()
        own = time.process_time() - own
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
        self.made += 1
        moved = [m for m in got["moved"] if m["from"] == source]
        buckets = sum(m["buckets"] for m in moved)
        keys = sum(m["keys"] for m in moved)
        if (buckets, keys) != (self.buckets, self.keys):
            raise BenchError(
                f"the move to {table!r} moved {buckets} buckets and {keys} keys "
                f"from {source}, not {self.buckets} and {self.keys}: {got}"
            )
        last = self.buckets - 1
        with Conn(self.addresses[source], timeout=TEXT_TIMEOUT) as conn:
            per = self.keys // self.buckets
            conn.expect(
                b"GET c%04d k%05d\r\n" % (last, per - 1),
                b"%010d\r\nOK\r\n" % (per - 1),
            )
        marks = coordinator.marks
        return {
            "seconds": ended - began,
            "before": marks["wait"] - began,
            "handoff": marks["waited"] - marks["wait"],
            "after": ended - marks["waited"],
            "nodes_cpu": cpu,
            "coordinator_cpu": own,
        }


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process ``pid`` has used, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def moves(suite: Suite, r: int) -> None:
    """One move of the range with no other load: its time and its parts."""
    add = suite.results.add
    assert suite.mover is not None
    mover = suite.mover
    got = mover.move()
    mover.unloaded.append(got["seconds"])
    add(
        "moves",
        f"move {mover.label()}, no load",
        "s",
        r,
        got["seconds"],
        Target("<=", 2.0),
    )
    add("moves", "- look, check, prepare, apply", "s", r, got["before"])
    add("moves", "- hand-off, until every node is complete", "s", r, got["handoff"])
    add("moves", "- copy of the table to the name server", "s", r, got["after"])
    add("moves", "CPU of both nodes during the move", "s", r, got["nodes_cpu"])
    add(
        "moves",
        "CPU of the coordinator (Cluster.set_table)",
        "s",
        r,
        got["coordinator_cpu"],
    )
    add("moves", "keys moved per second", "ops/s", r, mover.keys / got["seconds"])


def move_load(suite: Suite, r: int) -> None:
    """8 connections reading buckets that stay, while the range moves in the middle
    of their window: their rate during the move against before and after it."""
    add = suite.results.add
    assert suite.mover is not None
    mover = suite.mover
    calm = suite.options.duration / 2
    # long enough for a move 6 times as slow as with no load, at most the target
    expected = max(max(mover.unloaded, default=2.0) * 6, 1.0)
    window = calm + min(expected, 10.0) + calm
    targets = [
        [*mover.addresses[node], request] for node, request in READS for _ in range(4)
    ]
    job = {"kind": "text", "targets": targets, "reply": READ_REPLY, "bin": BIN}
    start = time.time() + suite.options.warmup
    end = start + window
    busy = suite.start_load(job, len(targets), start, end)
    while time.time() < start + calm:  # the first calm part of the window
        time.sleep(0.005)
    began = time.time()
    got = mover.move()
    ended = time.time()
    answers = suite.collect(busy, end)
    bins = [sum(column) for column in zip(*(a["bins"] for a in answers), strict=True)]
    # whole bins only: those entirely before the move, during it, after it
    first = int((began - start) / BIN)
    last = int((ended - start) / BIN) + 1
    before = bins[:first]
    during = bins[first + 1 : last - 1] or bins[first:last]  # a move of a bin or two
    after = bins[last:]
    calm_bins = before + after
    calm_rate = sum(calm_bins) / (len(calm_bins) * BIN)
    moving_rate = sum(during) / (len(during) * BIN)
    add(
        "move_load",
        "GET of buckets that stay, 8 conn, no change",
        "ops/s",
        r,
        calm_rate,
    )
    add("move_load", "same, while the range moves", "ops/s", r, moving_rate)
    add(
        "move_load",
        "ratio moving/no change, 8 conn",
        "x",
        r,
        ratio(moving_rate, calm_rate),
        Target(">=", 0.6),
    )
    add(
        "move_load",
        f"move {mover.label()}, 8 conn reading",
        "s",
        r,
        got["seconds"],
        Target("<=", 10.0),
    )
    add("move_load", "- hand-off, until every node is complete", "s", r, got["handoff"])
    if ended > end:
        suite.log(
            f"# move_load round {r + 1}: the move outlasted the readers' window by "
            f"{ended - end:.1f}s; its rate is over the part they covered"
        )
