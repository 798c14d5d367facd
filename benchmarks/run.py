"""pyrokv's benchmark suite: one command starts everything, runs every case, prints one table.

Run from the repository root (see benchmarks/README.md)::

    python -m benchmarks.run                  # the full suite (about 10 minutes on 2 cores)
    python -m benchmarks.run --quick          # tiny sizes and short windows (about 1 minute)
    python -m benchmarks.run --only local_get,memory --rounds 5
    python -m benchmarks.run --json results.json  # and python -m benchmarks.plot results.json

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
  for 8 connections is against the bare *sequential* rate. A local GET on the same
  node from the same client takes its turn in the same slices: routed/local >= 0.45x
  on 1 connection (pinned like ``local_get``), >= 0.4x on 8 (issue 14).
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
- ``hostile``: text GET of a bucket owned by the other node (over the peer link),
  8 connections, with and without 8 hostile connections to the same node from a
  process of their own: 4 send malformed peer frames (``FWD`` with a 400-digit
  budget, bad paths, ``PEER``/``PROVE`` with bad fields or proofs), 16 at a time,
  reading the replies; 4 pipeline GETs of a 60 KiB value and never read. The
  attackers start before each attacked slice and stop after it; also shown: how
  fast the malformed frames were answered, what the pipelining ones wrote, and
  the node's peak RSS growth (VmHWM) while attacked.
- ``durable``: nodes owning every bucket, one in memory and two with a data dir
  (``fsync`` everysec and always): PUT of a new key each time over 8 connections,
  everysec against in memory (target >= 0.7x) and always against
  min(in memory, 8 / commit latency) (target >= 0.7x; the latency and writes per
  commit from the node's INFO), always over 64 connections too; GET over 8
  connections with a data dir against in memory (target >= 0.95x); and the time
  from spawning a node to its READY with a data dir of ``--mem-keys`` keys with
  10-byte values (target <= 5 s), an empty in-memory node beside it, and with
  that data dir plus a log not folded of as many writes, at most the log's bound
  of 500,000 (target <= 5 s).
- ``metrics``: text GET on the owner over 8 connections, a node with ``--metrics``
  (scraped once a round) against a twin node without; target >= 0.95x (issue
  "Operable and pleasant": run it with ``--rounds 5``).
- ``moves``: one ``Cluster.set_table`` moving range ``c`` (10^5 keys in 1,000
  buckets; 10^4 in 100 with ``--quick``) between nodes ``mv1`` and ``mv2`` of a
  cluster of their own, with no other load; target <= 2 s (issue 11).
- ``move_load``: 8 connections GET buckets that stay while range ``c`` moves in
  the middle of their window, against their rate before and after the move in the
  same window; targets >= 0.6x and the move <= 10 s (issue 11).
- ``latency``: an open loop (``openloop.py``): requests at 25, 50 and 75 % of the
  lower of two closed-loop maxima measured first (pyrokv's and its baseline's),
  1 and 8 connections, latency from each request's intended send time in an
  HdrHistogram: local GET and PUT against the echo server, routed GET against
  the bare Pyro5 call; target: p99 at 50 % <= 1.5x the baseline's (first round
  only; see ``latency.py``).
- ``client``: ``Client.get`` of a bucket on the node the client talks to, from 1 and
  8 threads of a process of its own, vs the bare Pyro5 call from the same process
  (target for 1 thread >= 0.9x); ``Client.pipeline()`` of 100 GETs vs single
  ``Client.get`` calls, in GETs/s (target >= 10x) (issue 14).
- ``sizes``: text GET and PUT of 100 B, 4 KiB and 60 KiB values, local and routed,
  1 connection, in MB/s, vs echo servers giving replies of the same size (targets
  for 60 KiB GET: local >= 0.8x, routed >= 0.4x) (issue 14).
- ``ycsb``: YCSB workloads A, B and C (zipfian keys over 10^5 keys in 1,000
  buckets, about half routed), 8 connections to foo: ops/s, p50 and p99, beside
  the plain local GET (issue 14).
- ``many``: ``pyrokv up`` of 16 nodes (4 with ``--quick``) with a 256-entry table:
  the time to every node ready (<= 10 s), ``pyrokv status`` (<= 1 s), an idle
  node's RSS (<= 40 MiB), routed GET cost against a 2-node cluster (<= 1.2x);
  a node with 1,000 idle connections (100 with ``--quick``): RSS growth (<= 10
  MiB) and 8 active connections among them against alone (>= 0.9x) (issue 14).

Eight connections come, by default (``--clients auto``), from 8 threads of one client
process for the text protocol and from 8 client processes for Pyro5: on a 2-core
machine 8 text-client processes take CPU from the server (measured: echo 56k/s from
processes vs 67k/s from threads, pyrokv 45k/s vs 54k/s), while a Pyro5 client
serializes in Python and 8 threads of one process cap it (9.1k/s vs 7.9k/s).

Exit code: 0 when the suite ran (targets missed or not; ``--strict`` makes a MISS 1),
1 when something failed to start or answer, 2 for a usage error.

This module parses the command line and runs the rounds in the order of
:data:`CASES`; ``harness.py`` starts and stops the processes and measures rates,
``cases.py`` holds each case's measurement, ``results.py`` the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python benchmarks/run.py`
    sys.path.insert(0, str(ROOT))

from benchmarks import cases, clientcases, latency, many, moves  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    BenchError,
    BenchOptions,
    Suite,
    describe_clients,
)
from pyrokv.errors import PyroKVError  # noqa: E402
from pyrokv.testing import UnexpectedReplyError  # noqa: E402

#: Every case, in the order a round runs them (``--only`` keeps this order).
CASES: dict[str, Callable[[Suite, int], None]] = {
    "local_get": cases.local_get,
    "routed_get": cases.routed_get,
    "pipelined": cases.pipelined,
    "api": cases.api,
    "scaling": cases.scaling,
    "memory": cases.memory,
    "hostile": cases.hostile,
    "metrics": cases.metrics,
    "durable": cases.durable,
    "moves": moves.moves,
    "move_load": moves.move_load,
    "latency": latency.latency,
    "client": clientcases.client,
    "sizes": clientcases.sizes,
    "ycsb": clientcases.ycsb,
    "many": many.many,
}


def parse_args(argv: Sequence[str] | None) -> tuple[BenchOptions, argparse.Namespace]:
    """The options of a run, and the parsed arguments; exit 2 on a usage error."""
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
        help="keys in the memory case and in the durable case's data dir (default "
        "1,000,000; 10,000 with --quick)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is missed"
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="also write the results to FILE as JSON (rows and latency histograms; "
        "python -m benchmarks.plot FILE draws them)",
    )
    parser.add_argument(
        "--latency-requests",
        type=int,
        help="requests per open-loop point of the latency case (default 100,000; "
        "300 with --quick)",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        help="a latency point without a target stops after this many seconds if "
        "its requests take longer (default 3; 0.05 with --quick; 0: no limit)",
    )
    parser.add_argument(
        "--latency-slice-seconds",
        type=float,
        help="the shortest slice of a latency point: a point with a target sends "
        "enough requests for 10 slices this long, and no point is cut into shorter "
        "ones (default 1; 0 with --quick: no minimum)",
    )
    args = parser.parse_args(argv)
    chosen = list(CASES)
    if args.only:
        chosen = [c.strip() for c in args.only.split(",") if c.strip()]
        unknown = [c for c in chosen if c not in CASES]
        if unknown:
            parser.error(
                f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}"
            )
        chosen = [c for c in CASES if c in chosen]
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.slices is not None and args.slices < 1:
        parser.error("--slices must be at least 1")
    if args.latency_requests is not None and args.latency_requests < 10:
        parser.error("--latency-requests must be at least 10")
    if args.latency_seconds is not None and args.latency_seconds < 0:
        parser.error("--latency-seconds must be 0 (no limit) or more")
    if args.latency_slice_seconds is not None and args.latency_slice_seconds < 0:
        parser.error("--latency-slice-seconds must be 0 (no minimum) or more")
    if "latency" in chosen and not have_hdrhistogram():
        parser.error(
            "the latency case needs the hdrhistogram package: pip install -e "
            "'.[bench]' (or leave it out: --only with the other cases)"
        )
    quick = args.quick
    options = BenchOptions(
        rounds=args.rounds,
        duration=args.duration or (0.2 if quick else 1.5),
        slices=args.slices or (1 if quick else 3),
        warmup=0.05 if quick else 0.1,
        clients=args.clients,
        mem_keys=args.mem_keys or (10_000 if quick else 1_000_000),
        move_keys=10_000 if quick else 100_000,
        move_buckets=100 if quick else 1_000,
        ycsb_keys=10_000 if quick else 100_000,
        many_nodes=4 if quick else 16,
        many_idle=100 if quick else 1_000,
        key_sizes=[1_000, 10_000] if quick else [1_000, 1_000_000],
        api_calls=2_000 if quick else 20_000,
        api_repeats=3 if quick else 7,
        api_seconds=0.2 if quick else 1.0,
        cases=chosen,
    )
    if args.latency_requests is not None:
        options.latency_requests = args.latency_requests
    elif quick:
        options.latency_requests = 300
    if args.latency_seconds is not None:
        options.latency_seconds = args.latency_seconds
    elif quick:
        options.latency_seconds = 0.05
    if args.latency_slice_seconds is not None:
        options.latency_slice_seconds = args.latency_slice_seconds
    elif quick:
        options.latency_slice_seconds = 0.0
    return options, args


def have_hdrhistogram() -> bool:
    """Whether the hdrhistogram package (the bench extra) can be imported."""
    try:
        import hdrh.histogram  # noqa: F401
    except ImportError:
        return False
    return True


#: Cases that disturb the machine for the cases after them (the hostile case
#: leaves a cluster's sockets full of unread bytes, and the in-process scaling
#: rows read about 4 points higher after it): their rounds come after all others.
LAST: tuple[str, ...] = ("hostile",)


def run_rounds(suite: Suite, log: Callable[[str], None]) -> None:
    """Every round: each chosen case in turn, in the order of :data:`CASES`; then the
    rounds of the cases in :data:`LAST`."""
    options = suite.options
    phases = [
        [c for c in options.cases if c not in LAST],
        [c for c in options.cases if c in LAST],
    ]
    for chosen in phases:
        for r in range(options.rounds if chosen else 0):
            started = time.monotonic()
            for case in chosen:
                CASES[case](suite, r)
            log(
                f"# round {r + 1}/{options.rounds} of {', '.join(chosen)} took "
                f"{time.monotonic() - started:.1f}s"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; print the table; return the exit code."""
    options, args = parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # SIGTERM unwinds like Ctrl-C, so every child process is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.monotonic()
    load_before = f"{os.getloadavg()[0]:.2f}"
    suite = Suite(options, log)
    try:
        suite.start()
        run_rounds(suite, log)
    except (BenchError, UnexpectedReplyError, PyroKVError, OSError) as exc:
        log(f"benchmarks: {type(exc).__name__}: {exc}")
        return 1
    finally:
        suite.stop()
    results = suite.results
    header = (
        f"pyrokv benchmarks ({'quick, ' if args.quick else ''}{options.rounds} rounds, "
        f"{options.duration:g}s windows in {options.slices} slice(s); 8 connections: "
        f"{describe_clients(options.clients)}); Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {load_before} at start, "
        f"{os.getloadavg()[0]:.2f} at end; took {time.monotonic() - started:.0f}s"
    )
    print(header)
    print(results.table())
    if results.latency:
        print()
        print("Latency, open loop (the latency case's points):")
        print(results.latency_table())
    misses = results.misses()
    print()
    if misses:
        print("MISSED targets:")
        for miss in misses:
            print(f"- {miss}")
    else:
        print("every target met")
    if args.json:
        results.write_json(
            args.json,
            {
                "header": header,
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "quick": args.quick,
                "rounds": options.rounds,
                "cases": options.cases,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            },
        )
    return 1 if (misses and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
