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

``{"kind": "pyro", "uri": U, "method": "get", "args": [...], "expect": V, "threads": 1, ...}``
    ``threads`` Pyro5 proxies (one thread each), each reused for every call.

Result: ``{"ops": N, "seconds": T1 - T0}``, or ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import traceback
from typing import Any


def _text_worker(job: dict[str, Any], counts: list[int], slot: int) -> None:
    request = job["request"].encode("latin-1")
    reply = job["reply"].encode("latin-1")
    depth = int(job.get("depth", 1))
    start, end = float(job["start"]), float(job["end"])
    size = len(reply)
    clock = time.time
    with socket.create_connection((job["host"], int(job["port"])), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        recv, send = sock.recv, sock.sendall
        replies = [reply * k for k in range(depth + 1)]
        requests = [request * k for k in range(depth + 1)]
        done = 0
        buffer = b""
        send(requests[depth])
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
            send(requests[k])
    counts[slot] = done


def _pyro_worker(job: dict[str, Any], counts: list[int], slot: int) -> None:
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
    errors: list[str] = []

    def guarded(slot: int) -> None:
        try:
            target(job, counts, slot)
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
    return {"ops": sum(counts), "seconds": float(job["end"]) - float(job["start"])}


def main() -> int:
    print("READY", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = run_job(json.loads(line))
        except BaseException:
            result = {"error": traceback.format_exc()}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
