"""asyncio's own event loop against uvloop's, for pyrokv's text server and peer links.

Run from the repository root, with uvloop installed (``pip install -e '.[fast]'``)::

    python -m benchmarks.loops --rounds 5          # rates and CPU per request
    python -m benchmarks.loops --instructions 8000 # instructions per request (callgrind)

It starts, on free ports of 127.0.0.1, a name server and, once on each loop (a
node with ``--event-loop asyncio`` or ``uvloop``; the echo baseline of
``baselines.py`` with its LOOP argument):

- a node owning every bucket (``GET apple k``: local GET, 1 and 8 connections);
- the echo baseline answering the same reply (8 connections);
- nodes ``fa``/``ba`` (``fu``/``bu``) sharing a cluster secret, so ``GET zoo k``
  sent to ``fa`` goes over a peer link to ``ba``: routed GET, 1 and 8 connections.

Each measure takes its two loops in interleaved slices (as ``benchmarks.run``'s
cases do) and prints, per round and as the median of the rounds, the rates and
their ratio uvloop/asyncio, and the server processes' CPU time per request
(``/proc/PID/stat``) and its ratio asyncio/uvloop: on a shared machine the CPU
time per request moves less than the rate.

``--instructions N`` instead runs the local node and the echo server under
valgrind's callgrind, on each loop, and counts the user-space instructions they
execute for N local GETs over 8 connections (counted from after a warm-up):
deterministic, unlike rates, but blind to the time spent in the kernel.

The rule of issue 14: uvloop becomes the default when it raises local GET over 8
connections by at least 5 %.
"""

from __future__ import annotations

import argparse
import glob
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from functools import partial

from benchmarks.harness import (
    BenchError,
    BenchOptions,
    Helper,
    Suite,
    script,
    text_address,
)
from pyrokv.cluster import Child, spawn_nameserver, write_secret
from pyrokv.naming import parse_address
from pyrokv.testing import Conn

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
    child = Child([*args, "--event-loop", loop], name)
    child.wait_for(f"READY {name} ")
    return child


def echo(loop: str) -> tuple[Helper, tuple[str, int]]:
    """The echo baseline on ``loop``, and its address."""
    helper = Helper(
        f"echo on {loop}", [script("baselines.py"), "echo", "v\\r\\nOK\\r\\n", loop]
    )
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


def drive(address: tuple[str, int], requests: int) -> None:
    """Send ``requests`` local GETs over 8 connections, one in flight on each."""
    request, reply = GET_LOCAL.encode(), REPLY.encode()

    def one(count: int) -> None:
        with socket.create_connection(address, timeout=60) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(count):
                sock.sendall(request)
                got = b""
                while len(got) < len(reply):
                    chunk = sock.recv(64)
                    if not chunk:
                        raise BenchError(f"the server closed after {got!r}")
                    got += chunk
                if got != reply:
                    raise BenchError(f"unexpected reply {got!r}")

    threads = [threading.Thread(target=one, args=(requests // 8,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def instructions_per_request(
    kind: str, loop: str, ns: tuple[str, int], requests: int, directory: str
) -> float:
    """User-space instructions the ``kind`` server (``node`` or ``echo``) on ``loop``
    executes per local GET, counted by callgrind over ``requests`` after a warm-up."""
    out = os.path.join(directory, f"cg-{kind}-{loop}")
    valgrind = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}.%p",
    ]
    if kind == "node":
        name = f"cg{loop[0]}"
        args = ["node", name, "--ns", f"{ns[0]}:{ns[1]}", "--table"]
        args += [f"0x00..0xff={name}", "--listen", "127.0.0.1:0", "--event-loop", loop]
        child = Child(
            [*valgrind, sys.executable, "-u", "-m", "pyrokv", *args],
            name,
            pyrokv=False,
        )
    else:
        args = [script("baselines.py"), "echo", "v\\r\\nOK\\r\\n", loop]
        child = Child(
            [*valgrind, sys.executable, "-u", *args], kind, pyrokv=False, stdin=True
        )
    try:
        if kind == "node":
            child.wait_for(f"READY {name} ", 600)
            address = text_address(child)
            with Conn(address) as conn:
                conn.expect(b"CREATE apple\r\nPUT apple k v\r\n", b"OK\r\n" * 2)
        else:
            address = parse_address(child.wait_for("READY", 600).split()[1])
        drive(address, 800)  # warm: the first requests take paths the rest do not
        pid = str(child.proc.pid)
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", pid], check=True, capture_output=True)
        drive(address, requests)
        subprocess.run([*control, "-i", "off", pid], check=True, capture_output=True)
        subprocess.run([*control, "-d", pid], check=True, capture_output=True)
    finally:
        child.stop(timeout=60)
    total = 0
    for dump in glob.glob(f"{out}.*"):
        with open(dump) as file:
            total += next(
                int(line.split()[1]) for line in file if line.startswith("totals:")
            )
    return total / requests


def instructions(requests: int) -> None:
    """Print the instructions per local GET of the node and the echo server, per loop."""
    ns_child, ns = spawn_nameserver()
    tmp = tempfile.TemporaryDirectory(prefix="pyrokv-loops-")
    try:
        for kind in ("node", "echo"):
            per = {
                loop: instructions_per_request(kind, loop, ns, requests, tmp.name)
                for loop in LOOPS
            }
            print(
                f"{kind}: {per['asyncio']:,.0f} instructions per local GET on "
                f"asyncio, {per['uvloop']:,.0f} on uvloop: asyncio/uvloop "
                f"{per['asyncio'] / per['uvloop']:.2f}x ({requests} requests, 8 conn)",
                flush=True,
            )
    finally:
        ns_child.stop()
        tmp.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Measure; print one line per measure and round, then the medians."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loops")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=1.5)
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument(
        "--instructions",
        type=int,
        metavar="N",
        help="count instructions per request over N local GETs under callgrind",
    )
    args = parser.parse_args(argv)
    try:
        import uvloop  # noqa: F401
    except ImportError:
        print("uvloop is not installed: pip install -e '.[fast]'", file=sys.stderr)
        return 2
    if args.instructions:
        instructions(args.instructions)
        return 0
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
