"""An open-loop load generator for the latency case (standalone: stdlib, Pyro5, hdrhistogram).

The harness (``benchmarks/latency.py``) starts a few of these once and reuses them:
each reads one JSON job per line on stdin and writes one JSON result per line on
stdout, like ``loadgen.py``. Where ``loadgen.py`` sends the next request when the
last reply arrives (a closed loop, whose rate is the server's), this one sends at
a fixed rate whatever the server does (an open loop): request ``i`` is due at
``t0 + i / rate``; when the generator falls behind it sends at once, and its
latency is still counted from that intended time, so a stall of the server shows
in the latency of every request it held up (no coordinated omission).

Latencies are kept in a list while the point runs (no histogram work on the hot
path, and the garbage collector is off) and recorded afterwards in an
HdrHistogram (microseconds, 3 significant digits), returned encoded. A second
histogram holds the generator's own lag: how late each request left against its
intended time; if its tail is near the latency's, the generator did not keep up.

Jobs (``t0`` is a ``time.time()`` shortly ahead, so several processes share it):

``{"kind": "text", "host": H, "port": P, "request": "GET a k\\r\\n", "reply": "v\\r\\nOK\\r\\n",
"conns": 8, "rate": R, "requests": N, "warmup": W, "t0": T}``
    One thread drives ``conns`` connections with one ``select`` loop: request
    ``i`` goes on connection ``i % conns`` (requests due together on one connection
    leave in one write, so a connection pipelines when the server is slow); every
    reply is checked to be ``reply``. The first ``W`` requests are not recorded.

``{"kind": "pyro", "uri": U, "method": "get", "args": [...], "expect": V, "threads": T,
"first": F, "stride": S, "rate": R, "requests": N, "warmup": W, "t0": T0}``
    A Pyro5 proxy cannot pipeline: a call holds its connection until the reply.
    ``threads`` proxies, one thread each; proxy ``j`` of this process is number
    ``F + j`` of ``S`` proxies over all processes and sends requests
    ``F + j, F + j + S, ...``, each at its intended time or, when its previous
    call ran past it, at once.

Result: ``{"latency": ENCODED, "lag": ENCODED, "sent": N, "seconds": S}``, or
``{"error": "..."}``.
"""

from __future__ import annotations

import ctypes
import gc
import select
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run by path, as the suite runs it
    sys.path.insert(0, str(ROOT))

from benchmarks.jobs import serve  # noqa: E402

#: The histograms' range: 1 µs to 60 s, 3 significant digits.
LOWEST_US = 1
HIGHEST_US = 60_000_000
DIGITS = 3
#: prctl(2) option that sets the calling thread's timer slack (Linux).
PR_SET_TIMERSLACK = 29


def histogram(samples: list[float]) -> str:
    """``samples`` (seconds) recorded in microseconds, as HdrHistogram's encoded text."""
    hist = HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)
    for seconds in samples:
        hist.record_value(min(max(int(seconds * 1e6), LOWEST_US), HIGHEST_US))
    encoded: bytes = hist.encode()
    return encoded.decode("ascii")


def fine_timers() -> None:
    """Ask Linux to wake this process's sleeps on time: its timer slack (50 µs by
    default, by which ``select`` and ``sleep`` may wake late) becomes 1 ns."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the slack stays, and shows in the lag histogram


def monotonic_start(t0: float) -> float:
    """The ``perf_counter()`` reading at wall-clock time ``t0``."""
    return time.perf_counter() + (t0 - time.time())


def text_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run a ``text`` job: ``conns`` connections from one ``select`` loop."""
    conns = int(job["conns"])
    rate, total = float(job["rate"]), int(job["requests"])
    warmup = int(job.get("warmup", 0))
    request = str(job["request"]).encode("latin-1")
    reply = str(job["reply"]).encode("latin-1")
    size = len(reply)
    address = (str(job["host"]), int(job["port"]))
    socks = []
    for _ in range(conns):
        sock = socket.create_connection(address, timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(sock)
    try:
        return _drive_text(socks, request, reply, size, rate, total, warmup, job)
    finally:
        for sock in socks:
            sock.close()


def _drive_text(
    socks: list[socket.socket],
    request: bytes,
    reply: bytes,
    size: int,
    rate: float,
    total: int,
    warmup: int,
    job: dict[str, Any],
) -> dict[str, Any]:
    conns = len(socks)
    index = {sock.fileno(): c for c, sock in enumerate(socks)}
    # each connection's requests in flight: their intended times, oldest first
    flight: list[deque[float]] = [deque() for _ in socks]
    buffers = [b""] * conns
    replies = [reply * k for k in range(64)]
    latency: list[float] = []
    lag: list[float] = []
    interval = 1.0 / rate
    start = monotonic_start(float(job["t0"]))
    recorded_from = start + warmup * interval
    clock = time.perf_counter
    due = [0] * conns
    sent = received = 0
    # the loop ends when every reply is in, or this long after the last is due
    deadline = start + total * interval + 30.0
    while received < total:
        now = clock()
        if now > deadline:
            raise TimeoutError(
                f"{total - received} of {total} replies missing 30 s after the last "
                "request was due"
            )
        if sent < total and start + sent * interval <= now:
            while sent < total and start + sent * interval <= now:
                c = sent % conns
                intended = start + sent * interval
                flight[c].append(intended)
                if intended >= recorded_from:
                    lag.append(now - intended)
                due[c] += 1
                sent += 1
            for c in range(conns):
                if due[c]:
                    socks[c].sendall(request * due[c])
                    due[c] = 0
        wait = max(start + sent * interval - clock(), 0.0) if sent < total else 1.0
        readable, _, _ = select.select(socks, [], [], wait)
        if not readable:
            continue
        for sock in readable:
            c = index[sock.fileno()]
            data = sock.recv(65536)
            got = clock()
            if not data:
                raise ConnectionError(
                    f"server closed the connection; got {buffers[c]!r}"
                )
            buffer = buffers[c] + data if buffers[c] else data
            k = len(buffer) // size
            if not k:
                buffers[c] = buffer
                continue
            expected = replies[k] if k < len(replies) else reply * k
            if buffer[: k * size] != expected:
                raise ValueError(
                    f"unexpected reply {buffer[: k * size][:200]!r}, expected "
                    f"{k} x {reply!r}"
                )
            buffers[c] = buffer[k * size :]
            pending = flight[c]
            for _ in range(k):
                intended = pending.popleft()
                if intended >= recorded_from:
                    latency.append(got - intended)
            received += k
    return {
        "latency": histogram(latency),
        "lag": histogram(lag),
        "sent": total - warmup,
        "seconds": clock() - recorded_from,
    }


def pyro_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run a ``pyro`` job: ``threads`` proxies, each sending its share on schedule."""
    from Pyro5.api import Proxy, config

    config.SERIALIZER = "serpent"
    config.SOCK_NODELAY = True
    threads, first, stride = int(job["threads"]), int(job["first"]), int(job["stride"])
    rate, total = float(job["rate"]), int(job["requests"])
    warmup = int(job.get("warmup", 0))
    args, expect = job.get("args", []), job.get("expect")
    latency: list[list[float]] = [[] for _ in range(threads)]
    lag: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    proxies = []
    for _ in range(threads):
        proxy = Proxy(job["uri"])
        proxy._pyroTimeout = 30
        proxy._pyroBind()
        proxies.append(proxy)
    start = monotonic_start(float(job["t0"]))
    interval = 1.0 / rate
    clock = time.perf_counter

    def run(j: int) -> None:
        try:
            proxies[j]._pyroClaimOwnership()  # bound by the main thread
            call: Callable[..., Any] = getattr(proxies[j], job["method"])
            mine_latency, mine_lag = latency[j], lag[j]
            for i in range(first + j, total, stride):
                intended = start + i * interval
                ahead = intended - clock()
                if ahead > 0:
                    time.sleep(ahead)
                left = clock()
                got = call(*args)
                done = clock()
                if got != expect:
                    raise ValueError(f"unexpected result {got!r}, expected {expect!r}")
                if i >= warmup:
                    mine_latency.append(done - intended)
                    mine_lag.append(left - intended)
        except BaseException:
            errors.append(traceback.format_exc())

    pool = [threading.Thread(target=run, args=(j,)) for j in range(threads)]
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    finally:
        for proxy in proxies:
            proxy._pyroClaimOwnership()
            proxy._pyroRelease()
    if errors:
        return {"error": errors[0]}
    return {
        "latency": histogram([x for part in latency for x in part]),
        "lag": histogram([x for part in lag for x in part]),
        "sent": sum(len(part) for part in latency),
        "seconds": clock() - (start + warmup * interval),
    }


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job with the garbage collector off (its pauses would be the
    generator's, not the server's)."""
    target = {"text": text_job, "pyro": pyro_job}[job["kind"]]
    gc.collect()
    gc.disable()
    try:
        return target(job)
    finally:
        gc.enable()


def main() -> int:
    fine_timers()
    return serve(run_job)


if __name__ == "__main__":
    sys.exit(main())
