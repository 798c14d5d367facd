"""asyncio's own event loop against uvloop's, for pyrokv's text server and peer links.

Run from the repository root, with uvloop installed (``pip install -e '.[fast]'``)::

    python -m benchmarks.loops --rounds 5

It starts, on free ports of 127.0.0.1, a name server and four pairs of processes,
each pair once on asyncio's loop and once on uvloop's (a process is put on uvloop
by setting uvloop's loop policy before pyrokv or the baseline starts, so the same
code runs on either loop):

- a node owning every bucket (``GET apple k`` over 8 connections: local GET);
- the echo baseline of ``baselines.py`` answering the same reply;
- nodes ``fa``/``ba`` and ``fu``/``bu`` sharing a cluster secret, so ``GET zoo k``
  sent to ``fa`` (``fu``) goes over a peer link to ``ba`` (``bu``): routed GET,
  1 and 8 connections.

Each measure takes its two loops in interleaved slices (as ``benchmarks.run``'s
cases do) and prints the rates and the ratio uvloop/asyncio per round and their
median. The rule of issue 14: uvloop becomes the default when it raises local
GET over 8 connections by at least 5 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from functools import partial

from benchmarks.harness import (
    BenchOptions,
    Helper,
    Suite,
    script,
    text_address,
)
from pyrokv.cluster import Child, spawn_nameserver, write_secret
from pyrokv.naming import parse_address
from pyrokv.testing import Conn

#: Runs ``pyrokv ARGS`` (or, with ``-`` first, the script after it) on uvloop's loop.
ON_UVLOOP = (
    "import asyncio, runpy, sys, uvloop\n"
    "asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())\n"
    "if sys.argv[1] == '-':\n"
    "    sys.argv = sys.argv[2:]\n"
    "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "else:\n"
    "    from pyrokv.cli import main\n"
    "    sys.exit(main(sys.argv[1:]))\n"
)
LOOPS = ("asyncio", "uvloop")
GET_LOCAL = "GET apple k\r\n"
GET_ROUTED = "GET zoo k\r\n"
REPLY = "v\r\nOK\r\n"


def node(
    name: str,
    loop: str,
    ns: tuple[str, int],
    table: str,
    extra: Sequence[str] = (),
) -> Child:
    """Node ``name`` serving the text protocol, on ``loop``; started and ready."""
    args = [
        "node",
        name,
        "--ns",
        f"{ns[0]}:{ns[1]}",
        "--table",
        table,
        "--listen",
        "127.0.0.1:0",
        *extra,
    ]
    if loop == "uvloop":
        child = Child(
            [sys.executable, "-u", "-c", ON_UVLOOP, *args], name, pyrokv=False
        )
    else:
        child = Child(args, name)
    child.wait_for(f"READY {name} ")
    return child


def echo(loop: str) -> tuple[Helper, tuple[str, int]]:
    """The echo baseline on ``loop``, and its address."""
    args = [script("baselines.py"), "echo", "v\\r\\nOK\\r\\n"]
    if loop == "uvloop":
        args = ["-c", ON_UVLOOP, "-", *args]
    helper = Helper(f"echo on {loop}", args)
    return helper, parse_address(helper.wait_ready().split()[1])


def cpu_seconds(pids: Sequence[int]) -> float:
    """The CPU time (user and system) processes ``pids`` have used so far."""
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def timed(
    suite: Suite,
    spent: list[float],
    pids: Sequence[int],
    address: tuple[str, int],
    request: str,
    conns: int,
    duration: float | None = None,
) -> float:
    """The rate of ``request`` over ``conns`` connections to ``address``; adds the
    CPU seconds processes ``pids`` used meanwhile, and the requests, to ``spent``."""
    duration = suite.options.duration if duration is None else duration
    before = cpu_seconds(pids)
    rate = suite.text(address, request, conns, duration=duration)
    spent[0] += cpu_seconds(pids) - before
    spent[1] += rate * duration
    return rate


def main(argv: Sequence[str] | None = None) -> int:
    """Measure; print one line per measure and round, then the medians."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loops")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=1.5)
    parser.add_argument("--slices", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        import uvloop  # noqa: F401
    except ImportError:
        print("uvloop is not installed: pip install -e '.[fast]'", file=sys.stderr)
        return 2
    options = BenchOptions(
        rounds=args.rounds,
        duration=args.duration,
        slices=args.slices,
        warmup=0.1,
        clients="auto",
        mem_keys=0,
        key_sizes=[],
        api_calls=0,
        api_repeats=0,
        api_seconds=0,
        cases=[],
    )
    suite = Suite(options, lambda text: print(text, file=sys.stderr, flush=True))
    children: list[Child] = []
    tmp = tempfile.TemporaryDirectory(prefix="pyrokv-loops-")
    try:
        ns_child, ns = spawn_nameserver()
        children.append(ns_child)
        secret = write_secret(os.path.join(tmp.name, "secret"))
        peers = ["--cluster-secret-file", secret]
        local: dict[str, tuple[str, int]] = {}
        routed: dict[str, tuple[str, int]] = {}
        echoes: dict[str, tuple[str, int]] = {}
        nodes: dict[str, tuple[Child, Child, Child]] = {}
        echo_pids: dict[str, int] = {}
        for loop in LOOPS:
            tag = loop[0]
            own = node(f"o{tag}", loop, ns, f"0x00..0xff=o{tag}")
            front = node(f"f{tag}", loop, ns, f"a..m=f{tag}, n..z=b{tag}", peers)
            back = node(f"b{tag}", loop, ns, f"a..m=f{tag}, n..z=b{tag}", peers)
            children += [own, front, back]
            nodes[loop] = (own, front, back)
            helper, echoes[loop] = echo(loop)
            echo_pids[loop] = helper.proc.pid
            children.append(helper)
            local[loop] = text_address(own)
            routed[loop] = text_address(front)
            with Conn(local[loop]) as conn:
                conn.expect(b"CREATE apple\r\nPUT apple k v\r\n", b"OK\r\n" * 2)
            with Conn(routed[loop]) as conn:
                conn.expect(b"CREATE zoo\r\nPUT zoo k v\r\n", b"OK\r\n" * 2)
                conn.expect(GET_ROUTED.encode(), REPLY.encode())
        worker = Helper("load client", [script("loadgen.py")])
        children.append(worker)
        worker.wait_ready()
        suite.workers = [worker]
        pids = {
            loop: {
                "local": [nodes[loop][0].proc.pid],
                "echo": [echo_pids[loop]],
                "routed": [nodes[loop][1].proc.pid, nodes[loop][2].proc.pid],
            }
            for loop in LOOPS
        }
        measures: dict[str, tuple[str, str, str, int]] = {
            # label: (target, request, whose CPU, connections)
            "pyrokv GET local, 8 conn": ("local", GET_LOCAL, "local", 8),
            "echo baseline, 8 conn": ("echo", GET_LOCAL, "echo", 8),
            "pyrokv GET local, 1 conn": ("local", GET_LOCAL, "local", 1),
            "pyrokv GET routed (peer link), 8 conn": (
                "routed",
                GET_ROUTED,
                "routed",
                8,
            ),
            "pyrokv GET routed (peer link), 1 conn": (
                "routed",
                GET_ROUTED,
                "routed",
                1,
            ),
        }
        where = {"local": local, "echo": echoes, "routed": routed}
        ratios: dict[str, list[float]] = {label: [] for label in measures}
        cpu_ratios: dict[str, list[float]] = {label: [] for label in measures}
        for r in range(args.rounds):
            for label, (target, request, whose, conns) in measures.items():
                spent = {loop: [0.0, 0.0] for loop in LOOPS}  # CPU seconds, requests

                first, second = (
                    partial(
                        timed,
                        suite,
                        spent[loop],
                        pids[loop][whose],
                        where[target][loop],
                        request,
                        conns,
                    )
                    for loop in LOOPS
                )
                slow, fast = suite.pair(r, first, second)
                ratios[label].append(fast / slow)
                us = {loop: spent[loop][0] / spent[loop][1] * 1e6 for loop in LOOPS}
                cpu_ratios[label].append(us["asyncio"] / us["uvloop"])
                print(
                    f"round {r + 1}: {label}: asyncio {slow:,.0f}/s "
                    f"({us['asyncio']:.1f} µs CPU each), uvloop {fast:,.0f}/s "
                    f"({us['uvloop']:.1f} µs CPU each): rate uvloop/asyncio "
                    f"{fast / slow:.3f}x, CPU asyncio/uvloop {cpu_ratios[label][-1]:.3f}x",
                    flush=True,
                )
        print()
        for label in measures:
            rates = ", ".join(f"{v:.3f}" for v in ratios[label])
            cpus = ", ".join(f"{v:.3f}" for v in cpu_ratios[label])
            print(
                f"{label}: rate uvloop/asyncio median "
                f"{statistics.median(ratios[label]):.3f}x ({rates}); server CPU per "
                f"request asyncio/uvloop median "
                f"{statistics.median(cpu_ratios[label]):.3f}x ({cpus})"
            )
    finally:
        for child in reversed(children):
            child.stop()
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
