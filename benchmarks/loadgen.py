"""A load-generating worker process for the benchmarks (standalone: stdlib + Pyro5).

The harness (``benchmarks/harness.py``) starts a few of these once and reuses them: each
reads one JSON job per line on stdin and writes one JSON result per line on stdout.
Keeping the clients in their own processes means the client's GIL never caps the
server under test.

A job names the wall-clock window ``[start, end)`` (``time.time()``), so several
workers measure the same window; requests made before ``start`` are the warm-up and
are not counted. Jobs:

``{"kind": "text", "host": H, "port": P, "request": "GET a k\\r\\n", "reply": "v\\r\\nOK\\r\\n",
"depth": 1, "threads": 1, "start": T0, "end": T1}``
    ``threads`` connections (one thread each) send ``request`` and check every reply
    is exactly ``reply``; ``depth`` requests are kept in flight on each connection.
    With ``"unique": true`` the request holds ``%d``, a number each request takes
    anew (``PUT b k%d v``: every PUT writes a key of its own).
    Optional: ``"targets": [[H, P, REQUEST], ...]``: connection ``first + i`` (``first``
    defaults to 0) goes to target ``(first + i) % len(targets)`` instead, with its
    request; ``"bin": S``: the result also counts the replies in each ``S``-second
    bin of the window (``"bins": [n, ...]``), so the caller can take the rate of any
    part of it.

``{"kind": "pyro", "uri": U, "method": "get", "args": [...], "expect": V, "threads": 1, ...}``
    ``threads`` Pyro5 proxies (one thread each), each reused for every call.

Result: ``{"ops": N, "seconds": T1 - T0}``, or ``{"error": "..."}``.

Two more jobs run hostile connections in the background, for the ``hostile`` case:

``{"kind": "attack", "host": H, "port": P, "malformed": 4, "depth": 16, "pipelined": 4, "request": "GET apple big\\r\\n"}``
    ``malformed`` connections send peer frames no client may send (``FWD`` with a
    400-digit budget, bad paths, ``PEER``/``PROVE`` with bad fields or proofs),
    ``depth`` in each write, reading every reply line before the next write;
    ``pipelined`` connections write ``request`` (a GET of a large value) as fast
    as the node takes it and never read. A connection the node closes is opened
    again. Answered with ``{"attacking": N}`` once every connection is open and
    has sent its first lines.
``{"kind": "stop"}``
    Stops them; answered with ``{"malformed_lines": N, "pipelined_bytes": B,
    "reconnects": R, "seconds": T}``.
"""

from __future__ import annotations

import math
import os
import select
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run by path, as the suite runs it
    sys.path.insert(0, str(ROOT))

from benchmarks.jobs import serve  # noqa: E402

#: Peer frames from a connection that is no peer, each answered with one line.
MALFORMED = [
    b"FWD " + b"9" * 400 + b" x GET apple k\r\n",
    b"FWD 0 bar GET zoo k\r\n",
    b"FWD -1 ; GET apple k\r\n",
    b"FWD 1000 \xff\xfe GET apple k\r\n",
    b"FWD\r\n",
    b"PEER\r\n",
    b"PEER bar zz\r\n",
    b"PROVE 00\r\n",
]


def _text_worker(
    job: dict[str, Any], counts: list[int], slot: int, bins: list[list[int]]
) -> None:
    host, port, line = job.get("host"), job.get("port"), job.get("request")
    targets = job.get("targets")
    if targets:
        host, port, line = targets[(int(job.get("first", 0)) + slot) % len(targets)]
    request = str(line).encode("latin-1")
    reply = job["reply"].encode("latin-1")
    depth = int(job.get("depth", 1))
    start, end = float(job["start"]), float(job["end"])
    width = float(job.get("bin") or 0)
    mine = bins[slot]
    size = len(reply)
    clock = time.time
    with socket.create_connection((str(host), int(str(port))), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        recv, sendall = sock.recv, sock.sendall
        replies = [reply * k for k in range(depth + 1)]
        requests = [request * k for k in range(depth + 1)]
        if job.get("unique"):  # "%d" in the request: a new number in each one
            numbers = iter(range(slot * 1_000_000_000, (slot + 1) * 1_000_000_000))

            def send(k: int) -> None:
                sendall(b"".join(request % next(numbers) for _ in range(k)))

        else:

            def send(k: int) -> None:
                sendall(requests[k])

        done = 0
        buffer = b""
        send(depth)
        while True:
            data = recv(65536)
            if not data:
                raise ConnectionError(f"server closed the connection; got {buffer!r}")
            buffer = buffer + data if buffer else data
            k = len(buffer) // size
            if not k:
                continue
            if buffer[: k * size] != replies[k]:
                raise ValueError(
                    f"unexpected reply {buffer[: k * size][:200]!r}, expected "
                    f"{k} x {reply!r}"
                )
            buffer = buffer[k * size :]
            now = clock()
            if now >= end:
                break
            if now >= start:
                done += k
                if width:
                    mine[min(int((now - start) / width), len(mine) - 1)] += k
            send(k)
    counts[slot] = done


def _pyro_worker(
    job: dict[str, Any], counts: list[int], slot: int, bins: list[list[int]]
) -> None:
    from Pyro5.api import Proxy, config

    config.SERIALIZER = "serpent"
    config.SOCK_NODELAY = True
    args = job.get("args", [])
    expect = job.get("expect")
    start, end = float(job["start"]), float(job["end"])
    clock = time.time
    with Proxy(job["uri"]) as proxy:
        proxy._pyroTimeout = 30
        proxy._pyroBind()
        call = getattr(proxy, job["method"])
        first = call(*args)
        if first != expect:
            raise ValueError(f"unexpected result {first!r}, expected {expect!r}")
        done = 0
        while True:
            call(*args)
            now = clock()
            if now >= end:
                break
            if now >= start:
                done += 1
    counts[slot] = done


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job on ``job["threads"]`` threads; return the summed count."""
    target = {"text": _text_worker, "pyro": _pyro_worker}[job["kind"]]
    threads = int(job.get("threads", 1))
    counts = [0] * threads
    width = float(job.get("bin") or 0)
    nbins = (
        max(1, math.ceil((float(job["end"]) - float(job["start"])) / width))
        if width
        else 0
    )
    bins = [[0] * nbins for _ in range(threads)]
    errors: list[str] = []

    def guarded(slot: int) -> None:
        try:
            target(job, counts, slot, bins)
        except BaseException:
            errors.append(traceback.format_exc())

    if threads == 1:
        guarded(0)
    else:
        pool = [threading.Thread(target=guarded, args=(i,)) for i in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    if errors:
        return {"error": errors[0]}
    result: dict[str, Any] = {
        "ops": sum(counts),
        "seconds": float(job["end"]) - float(job["start"]),
    }
    if width:
        result["bins"] = [sum(column) for column in zip(*bins, strict=True)]
    return result


class Attack:
    """Hostile connections running on threads of their own until :meth:`stop`."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.address = (job["host"], int(job["port"]))
        self.request = job["request"].encode("latin-1")
        self.depth = int(job.get("depth", 16))
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"malformed_lines": 0, "pipelined_bytes": 0, "reconnects": 0}
        self.errors: list[str] = []
        roles = [self._malformed] * int(job["malformed"])
        roles += [self._pipelined] * int(job["pipelined"])
        self.started = threading.Barrier(len(roles) + 1)
        self.threads = [
            threading.Thread(target=self._guarded, args=(r,)) for r in roles
        ]
        self.began = time.monotonic()
        for thread in self.threads:
            thread.start()

    def wait_started(self, timeout: float = 30.0) -> int:
        """Wait until every connection has sent its first lines; return their number."""
        self.started.wait(timeout)
        return len(self.threads)

    def stop(self) -> dict[str, Any]:
        """Stop every connection; what they did meanwhile."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)
        if self.errors:
            return {"error": self.errors[0]}
        return {**self.counts, "seconds": time.monotonic() - self.began}

    def _count(self, what: str, n: int) -> None:
        with self.lock:
            self.counts[what] += n

    def _guarded(self, role: Any) -> None:
        try:
            role()
        except BaseException:
            self.errors.append(traceback.format_exc())
            self.started.abort()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _malformed(self) -> None:
        # A PEER with good fields is answered with a challenge, and the PROVE after
        # it fails ("peer authentication failed"): every frame gets one line.
        nonce = os.urandom(16).hex().encode()
        frames = [
            *MALFORMED,
            b"PEER bar " + nonce + b"\r\n",
            b"PROVE " + b"0" * 64 + b"\r\n",
        ]
        # Every write sends the next ``depth`` frames of the cycle.
        depth = self.depth
        cycle = frames * depth
        bursts = [
            b"".join(cycle[i : i + depth]) for i in range(0, len(frames) * depth, depth)
        ]
        turn = 0
        first = True
        while not self.stopping.is_set():
            with self._connect() as sock:
                while not self.stopping.is_set():
                    sock.sendall(bursts[turn])
                    turn = (turn + 1) % len(bursts)
                    if first:
                        first = False
                        self.started.wait()
                    replies = b""
                    data = b"-"
                    while data and replies.count(b"\r\n") < depth:
                        data = sock.recv(65536)
                        replies += data
                    self._count("malformed_lines", replies.count(b"\r\n"))
                    if not data:  # closed by the node
                        self._count("reconnects", 1)
                        break

    def _pipelined(self) -> None:
        chunk = self.request * 64
        first = True
        while not self.stopping.is_set():
            with self._connect() as sock:
                sock.setblocking(False)
                while not self.stopping.is_set():
                    try:
                        sent = sock.send(chunk)
                    except BlockingIOError:
                        select.select([], [sock], [], 0.05)
                        continue
                    except OSError:  # reset by the node
                        self._count("reconnects", 1)
                        break
                    self._count("pipelined_bytes", sent)
                    if first:
                        first = False
                        self.started.wait()


def main() -> int:
    attacks: list[Attack] = []  # the attack running, if any

    def answer(job: dict[str, Any]) -> dict[str, Any]:
        if job["kind"] == "attack":
            attacks.append(Attack(job))
            return {"attacking": attacks[-1].wait_started()}
        if job["kind"] == "stop":
            assert attacks, "stop without an attack"
            return attacks.pop().stop()
        return run_job(job)

    return serve(answer)


if __name__ == "__main__":
    sys.exit(main())
