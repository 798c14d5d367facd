"""The benchmark suite's machinery: the processes it starts, and how it drives load.

:class:`Suite` starts, on free ports of 127.0.0.1, the cluster under test (nodes
``foo`` and ``bar``, and the hop chain ``h0``..``h4``), the baselines, the
load-client processes and the API benchmark process, fills the buckets every case
reads, and stops it all. Its :meth:`Suite.text`, :meth:`Suite.bare` and
:meth:`Suite.pair` measure rates; the cases in ``cases.py`` call them and record
figures in :attr:`Suite.results`. The options come in a :class:`BenchOptions`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.results import Results
from pyrokv.cluster import Child, LocalCluster
from pyrokv.durable import DurableRegistry
from pyrokv.naming import parse_address
from pyrokv.store import Store
from pyrokv.testing import Conn

if TYPE_CHECKING:
    from benchmarks.many import ManyClusters
    from benchmarks.moves import Mover

__all__ = [
    "BIG_VALUE",
    "DURABLE_NODES",
    "GET_BIG",
    "GET_LOCAL",
    "GET_ROUTED",
    "HOPS",
    "REPLY",
    "START_TIMEOUT",
    "BenchError",
    "BenchOptions",
    "Helper",
    "Suite",
    "client_mode",
    "describe_clients",
    "hop_bucket",
    "pinned",
    "reset_peak",
    "rss_kib",
    "script",
    "text_address",
]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GUIDE = "a..m=foo, n..z=bar"
GET_LOCAL = "GET apple k\r\n"
GET_ROUTED = "GET zoo k\r\n"
REPLY = "v\r\nOK\r\n"
#: The value the hostile case's pipelining attackers GET and never read: 60 KiB.
BIG_VALUE = 60 * 1024
GET_BIG = "GET apple big\r\n"
HOPS = 4
#: The durable case's nodes, each owning every bucket: its fsync mode, or None
#: for the in-memory node that is its baseline.
DURABLE_NODES: dict[str, str | None] = {
    "mem": None,
    "dsec": "everysec",
    "dalw": "always",
}
HOP_NODES = [f"h{i}" for i in range(HOPS + 1)]
START_TIMEOUT = 60.0
#: Each read of the text client that loads data waits at most this long.
TEXT_TIMEOUT = 30.0


class BenchError(Exception):
    """A helper process failed to start or answered with an error."""


@dataclass
class BenchOptions:
    """What a run measures and how long: the parsed command line of ``benchmarks.run``.

    Not to be confused with :class:`pyrokv.config.Settings`, pyrokv's own configuration.
    """

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
    #: the range the move cases move: keys in all, and buckets
    move_keys: int = 100_000
    move_buckets: int = 1_000
    #: the latency case: requests per open-loop point, and the seconds a point
    #: without a target stops at (0: no limit)
    latency_requests: int = 100_000
    latency_seconds: float = 3.0
    #: the shortest slice of a point, in seconds (0: no minimum); the points with
    #: a target send more requests than latency_requests if they need them
    latency_slice_seconds: float = 1.0
    #: keys of the ycsb case (in 1,000 buckets)
    ycsb_keys: int = 100_000
    #: the many case: nodes of its big cluster, and idle connections to one node
    many_nodes: int = 16
    many_idle: int = 1_000


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
        """Wait for the helper's ``READY ...`` line; return it."""
        return self.wait_for("READY", timeout)

    def ask(self, obj: Any, timeout: float) -> dict[str, Any]:
        """Send ``obj`` as one JSON line; return the helper's JSON answer."""
        self.send(json.dumps(obj))
        return self.result(timeout)

    def result(self, timeout: float) -> dict[str, Any]:
        """The next JSON answer (a line starting with ``{``; other output is kept)."""
        answer: dict[str, Any] = json.loads(self.wait_for("{", timeout))
        if "error" in answer:
            raise BenchError(f"{self.name} failed:\n{answer['error']}")
        return answer


def script(name: str) -> str:
    """The path of the helper script ``name`` beside this file."""
    return str(HERE / name)


def text_address(child: Child) -> tuple[str, int]:
    """Where node ``child`` serves the text protocol; it was started with --listen."""
    address = child.listen_address()
    if address is None:
        raise BenchError(f"{child.name} printed no LISTEN line: {child.output()}")
    return address


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident set size of process ``pid`` in KiB, from /proc/PID/status.

    ``field="VmHWM"`` gives its peak instead (see :func:`reset_peak`).
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> int:
    """Reset process ``pid``'s peak RSS (VmHWM) to its RSS; return the KiB it starts from.

    Writes 5 to /proc/PID/clear_refs (Linux 4.0 and later). Where that is not
    allowed, the peak is not reset and the peak so far is returned instead.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return rss_kib(pid, "VmHWM")
    return rss_kib(pid)


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
    """Where 8 connections come from under ``--clients``, for the header line."""
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


def hop_bucket(hops: int) -> str:
    """The bucket that h0 reaches through ``hops`` forwarding hops: ahop, bhop, ..."""
    return f"{chr(ord('a') + hops)}hop"


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


# -- the suite ------------------------------------------------------------------


class Suite:
    """Every process a run needs, the rates it measures, and the results it records."""

    def __init__(self, options: BenchOptions, log: Callable[[str], None]) -> None:
        self.options = options
        self.log = log
        self.results = Results(options.rounds)
        self.cluster: LocalCluster | None = None
        self.echo_helper: Helper | None = None
        self.bare_helper: Helper | None = None
        self.helpers: list[Helper] = []
        self.workers: list[Helper] = []
        self.mem_nodes: list[Child] = []
        self.addresses: dict[str, tuple[str, int]] = {}
        self.echo: tuple[str, int] | None = None
        self.bare_uri = ""
        self.api: Helper | None = None
        self.attacker: Helper | None = None
        #: Where the durable case keeps its data dirs.
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.mover: Mover | None = None
        #: What the many case keeps from round to round (started by its first).
        self.many: ManyClusters | None = None

    def wants(self, *cases: str) -> bool:
        """Whether this run includes any of ``cases``."""
        return any(case in self.options.cases for case in cases)

    # -- starting and stopping -----------------------------------------------

    def start(self) -> None:
        """Start what the chosen cases need, all at once; fill the buckets they read."""
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
        if self.wants("durable"):
            # nodes owning every bucket: in memory, and with data dirs (fsync
            # everysec and always)
            self._tmp = tempfile.TemporaryDirectory(prefix="pyrokv-bench-")
            for name, fsync in DURABLE_NODES.items():
                nodes[name] = f"0..255={name}"
                data = os.path.join(self._tmp.name, name)
                extra[name] = ["--listen", "127.0.0.1:0"] + (
                    [] if fsync is None else ["--data-dir", data, "--fsync", fsync]
                )
        if self.wants("metrics"):
            # two twin nodes owning every bucket, one with metrics on: against foo
            # (another table, other traffic before) the twin without metrics read
            # 0.94x as well, so the baseline is the twin
            nodes["met"] = "0..255=met"
            extra["met"] = ["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]
            nodes["nomet"] = "0..255=nomet"
            extra["nomet"] = ["--listen", "127.0.0.1:0"]
        # Baselines and load clients start while the cluster does.
        echo = bare = None
        if self.wants("local_get", "pipelined", "latency"):
            echo = self._helper(
                "echo server", script("baselines.py"), "echo", "v\\r\\nOK\\r\\n"
            )
        if self.wants("routed_get", "api", "latency", "client"):
            bare = self._helper(
                "bare Pyro5 daemon", script("baselines.py"), "pyro", "zoo", "k", "v"
            )
        count = 1 if self.options.clients == "threads" else 8
        if self.wants(
            "local_get",
            "routed_get",
            "pipelined",
            "scaling",
            "hostile",
            "metrics",
            "durable",
            "move_load",
            "latency",
            "sizes",
            "ycsb",
            "many",
        ):
            self.workers = [
                self._helper(f"load client {i}", script("loadgen.py"))
                for i in range(count)
            ]
        if self.wants("hostile"):
            self.attacker = self._helper("attacker", script("loadgen.py"))
        moving: threading.Thread | None = None
        failed: list[BaseException] = []
        if self.wants("moves", "move_load"):
            from benchmarks.moves import Mover  # it uses this module

            # its own name server: a change reaches every node registered there
            self.mover = Mover(self.options.move_keys, self.options.move_buckets)

            def start_mover() -> None:
                try:
                    assert self.mover is not None
                    self.mover.start()
                except BaseException as exc:
                    failed.append(exc)

            moving = threading.Thread(target=start_mover, name="start move cluster")
            moving.start()
        try:
            self.cluster = LocalCluster(nodes, extra).start()
        finally:
            if moving is not None:
                moving.join()
        if failed:
            raise failed[0]
        for name, child in self.cluster.nodes.items():
            if name in extra:
                self.addresses[name] = text_address(child)
        if echo is not None:
            self.echo = parse_address(echo.wait_ready().split()[1])
            self.echo_helper = echo
        if bare is not None:
            self.bare_uri = bare.wait_ready().split()[1]
            self.bare_helper = bare
        for worker in self.workers:
            worker.wait_ready()
        if self.attacker is not None:
            self.attacker.wait_ready()
        self._fill()
        if self.wants("api", "scaling"):
            self._start_api()
        self.log(f"# started everything in {time.monotonic() - started:.1f}s")

    def _start_api(self) -> None:
        assert self.cluster is not None
        ns = self.cluster.ns
        options = self.options
        self.api = self._helper(
            "API benchmark process",
            script("apibench.py"),
            "--ns",
            f"{ns[0]}:{ns[1]}",
            "--bare-uri",
            self.bare_uri,
            "--keys",
            ",".join(str(n) for n in options.key_sizes),
            "--calls",
            str(options.api_calls),
            "--repeats",
            str(options.api_repeats),
            "--seconds",
            str(options.api_seconds),
        )
        self.api.wait_ready(timeout=START_TIMEOUT * 2)

    def _helper(self, name: str, *args: str) -> Helper:
        helper = Helper(name, args)
        self.helpers.append(helper)
        return helper

    def _fill(self) -> None:
        """The buckets every case reads: apple (foo), zoo (bar), the hop buckets."""
        with Conn(self.addresses["foo"], timeout=TEXT_TIMEOUT) as conn:
            ok = b"OK\r\n"
            conn.expect(
                b"CREATE apple\r\nPUT apple k v\r\nCREATE zoo\r\nPUT zoo k v\r\n",
                ok * 4,
            )
            conn.expect(GET_LOCAL.encode() + GET_ROUTED.encode(), REPLY.encode() * 2)
            if self.wants("hostile"):
                big = b"b" * BIG_VALUE
                conn.expect(b"PUT apple big %s\r\n" % big, ok)
                conn.expect(GET_BIG.encode(), big + b"\r\nOK\r\n")
        for name in ("met", "nomet", *DURABLE_NODES):
            if name in self.addresses:
                with Conn(self.addresses[name], timeout=TEXT_TIMEOUT) as conn:
                    conn.expect(b"CREATE apple\r\nPUT apple k v\r\n", b"OK\r\n" * 2)
                    conn.expect(GET_LOCAL.encode(), REPLY.encode())
        if "h0" in self.addresses:
            with Conn(self.addresses["h0"], timeout=TEXT_TIMEOUT) as conn:
                for hops in range(HOPS + 1):
                    bucket = hop_bucket(hops).encode()
                    conn.expect(
                        b"CREATE %s\r\nPUT %s k v\r\nGET %s k\r\n"
                        % (bucket, bucket, bucket),
                        b"OK\r\nOK\r\n" + REPLY.encode(),
                    )

    def big_data_dir(self, count: int) -> str:
        """A data dir holding bucket ``big`` of ``count`` keys with 10-byte values,
        written once (straight through pyrokv's store, as a node would have)."""
        assert self._tmp is not None
        path = os.path.join(self._tmp.name, f"big{count}")
        if not os.path.exists(path):
            started = time.monotonic()
            registry = DurableRegistry(Store.open(path, "no"))
            registry.install({"big": {f"k{i:07d}": f"{i:010d}" for i in range(count)}})
            registry.store.close()
            self.log(
                f"# wrote a data dir of {count} keys in {time.monotonic() - started:.1f}s"
            )
        return path

    def big_log_dir(self, count: int, writes: int, fresh: str) -> str:
        """A copy (named ``fresh``) of :meth:`big_data_dir`'s dir of ``count`` keys
        whose log holds ``writes`` more, not folded (as a crash leaves it): each
        gives one of the first ``writes`` keys a new value, ``-`` and its number
        reversed (the template is written once, then copied)."""
        assert self._tmp is not None
        template = os.path.join(self._tmp.name, f"big{count}log{writes}")
        if not os.path.exists(template):
            started = time.monotonic()
            shutil.copytree(self.big_data_dir(count), template)
            registry = DurableRegistry(Store.open(template, "no"))
            for i in range(writes):
                registry.put("big", f"k{i % count:07d}", f"-{i:09d}"[::-1])
            store = registry.store
            store.close(fold=False)
            self.log(
                f"# wrote a log of {writes} writes in "
                f"{time.monotonic() - started:.1f}s ({store.log_writes} left unfolded)"
            )
        path = os.path.join(self._tmp.name, fresh)
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(template, path)
        return path

    def stop(self) -> None:
        """Stop every process this suite started."""
        for child in list(self.mem_nodes):
            child.stop()
        if self.mover is not None:
            self.mover.stop()
        if self.many is not None:
            self.many.stop()
        for helper in self.helpers:
            helper.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- measuring -----------------------------------------------------------

    def load(
        self, job: dict[str, Any], conns: int, duration: float | None = None
    ) -> float:
        """Requests per second of ``job`` over ``conns`` connections, clients apart."""
        duration = self.options.duration if duration is None else duration
        start = time.time() + self.options.warmup
        busy = self.start_load(job, conns, start, start + duration)
        total = sum(int(got["ops"]) for got in self.collect(busy, start + duration))
        return total / duration

    def start_load(
        self, job: dict[str, Any], conns: int, start: float, end: float
    ) -> list[Helper]:
        """Send ``job`` for the window ``[start, end)`` (``time.time()``) to the load
        clients, over ``conns`` connections; the clients that run it (for
        :meth:`collect`)."""
        job = {**job, "start": start, "end": end}
        if client_mode(self.options.clients, job["kind"]) == "processes":
            # one connection a process; past the processes there are, as many
            # threads in each (64 connections: 8 threads in each of 8 processes)
            each, extra = divmod(conns, len(self.workers))
            if each and extra:
                raise BenchError(
                    f"{conns} connections do not spread evenly over "
                    f"{len(self.workers)} load clients"
                )
            busy = self.workers[: conns if not each else len(self.workers)]
            threads = max(each, 1)
            for i, worker in enumerate(busy):
                worker.send(
                    json.dumps({**job, "threads": threads, "first": i * threads})
                )
        else:
            busy = self.workers[:1]
            busy[0].send(json.dumps({**job, "threads": conns}))
        return busy

    def collect(self, busy: list[Helper], end: float) -> list[dict[str, Any]]:
        """The answers of the load clients ``busy`` to a job whose window ends at ``end``."""
        timeout = max(end - time.time(), 0.0) + 60
        return [worker.result(timeout) for worker in busy]

    def text(
        self,
        address: tuple[str, int],
        request: str,
        conns: int,
        depth: int = 1,
        duration: float | None = None,
        *,
        reply: str = REPLY,
        unique: bool = False,
    ) -> float:
        """Rate of ``request`` to a text port, each reply checked to be ``reply``
        (``v``, OK); with ``unique``, ``%d`` in ``request`` is a new number each time."""
        job = {
            "kind": "text",
            "host": address[0],
            "port": address[1],
            "request": request,
            "reply": reply,
            "depth": depth,
            "unique": unique,
        }
        return self.load(job, conns, duration)

    def bare(self, conns: int, duration: float | None = None) -> float:
        """Rate of ``get("zoo", "k")`` on the bare Pyro5 daemon, one proxy a connection."""
        job = {
            "kind": "pyro",
            "uri": self.bare_uri,
            "method": "get",
            "args": ["zoo", "k"],
            "expect": "v",
        }
        return self.load(job, conns, duration)

    def attack(
        self, address: tuple[str, int], malformed: int, pipelined: int, depth: int
    ) -> None:
        """Start the attacker's hostile connections to ``address``; return once all run.

        ``malformed`` connections send ``depth`` malformed peer frames per write and
        read the replies; ``pipelined`` ones write :data:`GET_BIG` and never read.
        """
        assert self.attacker is not None
        job = {
            "kind": "attack",
            "host": address[0],
            "port": address[1],
            "malformed": malformed,
            "depth": depth,
            "pipelined": pipelined,
            "request": GET_BIG,
        }
        self.attacker.ask(job, timeout=60)

    def stop_attack(self) -> dict[str, Any]:
        """Stop the hostile connections; what they did (lines answered, bytes sent)."""
        assert self.attacker is not None
        return self.attacker.ask({"kind": "stop"}, timeout=60)

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
        a, b = self.interleave(rnd, first, second)
        return a, b

    def interleave(self, rnd: int, *measures: Callable[..., float]) -> list[float]:
        """Run several measures in turn, ``slices`` slices each, rotating which one
        goes first (ABC BCA CAB .., from a round-dependent start; for two, AB BA ..);
        each one's mean rate."""
        slices = self.options.slices
        part = self.options.duration / slices
        n = len(measures)
        total = [0.0] * n
        for i in range(slices):
            start = (rnd + i) % n
            for k in range(n):
                j = (start + k) % n
                total[j] += measures[j](duration=part)
        return [t / slices for t in total]
