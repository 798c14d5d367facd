"""Instructions per text request on a live node, counted by valgrind's callgrind.

Starts a name server and nodes ``foo`` (a..m) and ``bar`` (n..z) with a cluster
secret and text ports (so routed requests go over a peer link), one of them under
``valgrind --tool=callgrind`` with instrumentation off; sends a warm-up, switches
instrumentation on (``callgrind_control -i on``), sends ``--requests`` requests,
switches it off, and prints the instructions the measured node executed per
request (user space, every thread; the kernel's share of a syscall is not counted).
Deterministic, unlike a rate on a shared machine::

    python -m benchmarks.grind --node foo --request "GET zoo k" --conns 1
    python -m benchmarks.grind --node bar --request "GET zoo k" --conns 8

``--conns N`` writes one request on each of N connections, then reads the N
replies, and again: N requests in flight at once (under valgrind the measured
node usually finds all N in one pass of its loop).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from pyrokv.cluster import Child, spawn_nameserver, write_secret
from pyrokv.testing import Conn

GUIDE = "a..m=foo, n..z=bar"
REPLY = b"v\r\nOK\r\n"
#: A node under callgrind runs some 50 times slower: its start and replies wait longer.
SLOW = 300.0


def _node(
    name: str, ns: tuple[str, int], secret: str, prefix: list[str] | None
) -> Child:
    args = ["node", name, "--config", os.devnull, "--ns", f"{ns[0]}:{ns[1]}"]
    args += ["--table", GUIDE, "--listen", "127.0.0.1:0"]
    args += ["--cluster-secret-file", secret]
    child = Child(args, f"node {name}", prefix=prefix or ())
    try:
        child.wait_for(f"READY {name} ", SLOW)
    except BaseException:
        child.stop()
        raise
    return child


def _text_port(child: Child) -> tuple[str, int]:
    address = child.listen_address()
    if address is None:
        raise RuntimeError(f"{child.name} printed no LISTEN line: {child.output()}")
    return address


def _load(conns: list[socket.socket], request: bytes, count: int) -> None:
    """``count`` rounds of: one request on each connection, then every reply."""
    for _ in range(count):
        for sock in conns:
            sock.sendall(request)
        for sock in conns:
            got = b""
            while len(got) < len(REPLY):
                data = sock.recv(4096)
                if not data:
                    raise ConnectionError("the node closed a connection")
                got += data
            if got != REPLY:
                raise AssertionError(f"unexpected reply {got!r}")


def _control(pid: int, *args: str) -> None:
    subprocess.run(
        ["callgrind_control", *args, str(pid)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=SLOW,
    )


def main(argv: list[str] | None = None) -> int:
    """Measure; print instructions per request."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grind")
    parser.add_argument("--node", choices=("foo", "bar"), default="foo")
    parser.add_argument("--request", default="GET zoo k")
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument(
        "--keep",
        metavar="FILE",
        help="copy callgrind's output here (for callgrind_annotate)",
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("benchmarks.grind needs valgrind (callgrind_control)", file=sys.stderr)
        return 2
    request = args.request.encode() + b"\r\n"
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="pyrokv-grind-") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        grind = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
        ]
        try:
            secret = write_secret(os.path.join(tmp, "secret"))
            nameserver, ns = spawn_nameserver()
            children.append(nameserver)
            nodes = {}
            for name in ("bar", "foo"):
                prefix = grind if name == args.node else None
                nodes[name] = _node(name, ns, secret, prefix)
                children.append(nodes[name])
            with Conn(_text_port(nodes["foo"]), timeout=SLOW) as conn:
                conn.expect(
                    b"CREATE apple\r\nPUT apple k v\r\nCREATE zoo\r\nPUT zoo k v\r\n",
                    b"OK\r\n" * 4,
                )
            foo = _text_port(nodes["foo"])
            socks = [socket.create_connection(foo) for _ in range(args.conns)]
            for sock in socks:
                sock.settimeout(SLOW)
            try:
                _load(socks, request, max(args.warmup // args.conns, 1))
                pid = nodes[args.node].proc.pid
                _control(pid, "-i", "on")
                rounds = max(args.requests // args.conns, 1)
                started = time.monotonic()
                _load(socks, request, rounds)
                took = time.monotonic() - started
                _control(pid, "-i", "off")
            finally:
                for sock in socks:
                    sock.close()
            for child in reversed(children):
                child.stop()
            children.clear()
            total = _instructions(out)
            if args.keep:
                shutil.copy(out, args.keep)
        finally:
            for child in reversed(children):
                child.stop()
    count = rounds * args.conns
    print(
        f"{args.node}: {args.request!r} on {args.conns} connection(s): "
        f"{total / count:,.0f} instructions per request "
        f"({total:,} for {count} requests, {took:.1f}s under valgrind)"
    )
    return 0


def _instructions(prefix: str) -> int:
    """The instruction total of the callgrind output file(s) starting ``prefix``."""
    total = 0
    folder = os.path.dirname(prefix)
    for name in os.listdir(folder):
        if not os.path.join(folder, name).startswith(prefix):
            continue
        with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    total = max(total, int(line.split()[1]))
    return total


if __name__ == "__main__":
    raise SystemExit(main())
