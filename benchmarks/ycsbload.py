"""YCSB-style load over the text protocol, for the ``ycsb`` case (standalone: stdlib,
and ``hdrhistogram`` when it is installed).

YCSB's core workloads, with its zipfian key choice, over a key space spread across
buckets (:func:`bucket_of`, :func:`key_of`): A (50 % reads, 50 % updates), B (95/5)
and C (reads only). Reads are ``GET BUCKET KEY``, updates ``PUT BUCKET KEY VALUE``
of a value as long as the one loaded (:data:`VALUE_SIZE` bytes, YCSB's field length),
so every reply has a known length.

Started once by the ``ycsb`` case (``benchmarks/clientcases.py``); reads one JSON job
per stdin line and writes one JSON result per line:

``{"kind": "prepare", "keys": N, "buckets": B, "reads": {"A": 0.5, ...}, "count": C}``
    Draws, for each workload, ``C`` requests (zipfian keys, theta 0.99, scrambled
    as YCSB's ``ScrambledZipfianGenerator`` does) and keeps them; answers
    ``{"prepared": [...], "routed": {"A": share of requests for buckets n..z}}``.
``{"kind": "run", "workload": "A", "host": H, "port": P, "threads": 8, "start": T0, "end": T1}``
    ``threads`` connections, one thread each, send the workload's requests (each
    thread from its own offset, round and round), one at a time, checking every
    reply; requests answered in ``[T0, T1)`` (``time.time()``) count, and each one's
    time from send to reply is recorded. Answers ``{"ops": N, "seconds": T1 - T0,
    "p50_us": ..., "p99_us": ..., "histogram": "hdrhistogram" or "sorted list"}``.
"""

from __future__ import annotations

import math
import random
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run by path, as the suite runs it
    sys.path.insert(0, str(ROOT))

from benchmarks.jobs import serve  # noqa: E402

#: Bytes in every value, loaded and updated: YCSB's default field length.
VALUE_SIZE = 100
#: YCSB's zipfian constant.
THETA = 0.99
#: Bucket names start with these letters in turn: a..m belong to foo, n..z to bar.
LETTERS = "abcdefghijklmnopqrstuvwxyz"

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1


def bucket_of(key: int, buckets: int) -> str:
    """The bucket of key number ``key``: key ``k`` is in bucket ``k % buckets``,
    named by a letter (in turn a..z) and its number, ``b0001``."""
    b = key % buckets
    return f"{LETTERS[b % len(LETTERS)]}{b:04d}"


def key_of(key: int) -> str:
    """The name of key number ``key`` in its bucket."""
    return f"user{key}"


def value_of(key: int, version: int = 0) -> str:
    """A value of :data:`VALUE_SIZE` bytes for key ``key``."""
    head = f"{key}.{version}."
    return head + "x" * (VALUE_SIZE - len(head))


def fnv1a64(value: int) -> int:
    """64-bit FNV-1a over the 8 little-endian bytes of ``value`` (as YCSB hashes)."""
    h = FNV_OFFSET
    for _ in range(8):
        h ^= value & 0xFF
        h = (h * FNV_PRIME) & MASK64
        value >>= 8
    return h


class Zipfian:
    """YCSB's ``ZipfianGenerator`` (Gray et al., "Quickly generating billion-record
    synthetic databases", SIGMOD 1994): item ``i`` of ``0..n-1`` is drawn with
    probability proportional to ``1 / (i + 1) ** theta``; 0 is the most popular.
    """

    def __init__(self, n: int, theta: float = THETA, rng: random.Random | None = None):
        if n < 2 or not 0 < theta < 1:
            raise ValueError(f"a zipfian needs n >= 2 and 0 < theta < 1: {n}, {theta}")
        self.n = n
        self.theta = theta
        self.rng = rng or random.Random()
        self.zetan = math.fsum(1.0 / (i**theta) for i in range(1, n + 1))
        self.zeta2 = 1.0 + 0.5**theta
        self.alpha = 1.0 / (1.0 - theta)
        self.eta = (1.0 - (2.0 / n) ** (1.0 - theta)) / (1.0 - self.zeta2 / self.zetan)

    def next(self) -> int:
        """The next item."""
        u = self.rng.random()
        uz = u * self.zetan
        if uz < 1.0:
            return 0
        if uz < self.zeta2:
            return 1
        return min(
            int(self.n * (self.eta * u - self.eta + 1.0) ** self.alpha), self.n - 1
        )


class ScrambledZipfian:
    """Zipfian popularity with the popular items scattered over the key space:
    the zipfian item's FNV-1a hash, modulo ``n`` (YCSB's ``ScrambledZipfianGenerator``
    does the same; it draws from a larger space first, which flattens the head a
    little)."""

    def __init__(self, n: int, theta: float = THETA, rng: random.Random | None = None):
        self.n = n
        self.zipf = Zipfian(n, theta, rng)

    def next(self) -> int:
        """The next key number, 0..n-1."""
        return fnv1a64(self.zipf.next()) % self.n


def requests(
    keys: int, buckets: int, reads: float, count: int, seed: int
) -> tuple[list[tuple[bytes, int]], float]:
    """``count`` requests of a workload reading a share ``reads`` of the time, each
    with the length of its reply; and the share for buckets a node other than foo
    owns (names n..z)."""
    rng = random.Random(seed)
    chooser = ScrambledZipfian(keys, THETA, random.Random(seed + 1))
    out: list[tuple[bytes, int]] = []
    routed = 0
    get_reply = VALUE_SIZE + len(b"\r\nOK\r\n")
    for i in range(count):
        k = chooser.next()
        bucket = bucket_of(k, buckets)
        routed += bucket[0] >= "n"
        if rng.random() < reads:
            out.append((f"GET {bucket} {key_of(k)}\r\n".encode(), get_reply))
        else:
            line = f"PUT {bucket} {key_of(k)} {value_of(k, i + 1)}\r\n"
            out.append((line.encode(), len(b"OK\r\n")))
    return out, routed / count


def percentiles(
    latencies: list[float], points: tuple[float, ...]
) -> tuple[dict[str, float], str]:
    """Percentiles (µs) of ``latencies`` (seconds): from an HdrHistogram when the
    ``hdrhistogram`` package is installed, else from the sorted list."""
    if not latencies:
        return {f"p{p:g}_us": 0.0 for p in points}, "none"
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError:
        ordered = sorted(latencies)
        last = len(ordered) - 1
        return {
            f"p{p:g}_us": ordered[min(last, math.ceil(p / 100 * len(ordered)) - 1)]
            * 1e6
            for p in points
        }, "sorted list"
    histogram = HdrHistogram(1, 60_000_000, 3)  # 1 µs .. 60 s, 3 digits
    for seconds in latencies:
        histogram.record_value(max(1, round(seconds * 1e6)))
    return {
        f"p{p:g}_us": float(histogram.get_value_at_percentile(p)) for p in points
    }, "hdrhistogram"


def _cycle(items: list[tuple[bytes, int]], offset: int) -> Iterator[tuple[bytes, int]]:
    n = len(items)
    i = offset % n
    while True:
        yield items[i]
        i += 1
        if i == n:
            i = 0


def _worker(
    job: dict[str, Any],
    items: list[tuple[bytes, int]],
    slot: int,
    counts: list[int],
    times: list[list[float]],
) -> None:
    threads = int(job["threads"])
    offset = slot * len(items) // threads
    # time.time() names the window; perf_counter() times each request
    shift = time.time() - time.perf_counter()
    start, end = float(job["start"]) - shift, float(job["end"]) - shift
    clock = time.perf_counter
    mine: list[float] = []
    done = 0
    ok = b"\r\nOK\r\n"
    with socket.create_connection((job["host"], int(job["port"])), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        recv, sendall = sock.recv, sock.sendall
        for request, size in _cycle(items, offset):
            sent = clock()
            sendall(request)
            reply = recv(65536)
            while len(reply) < size and not reply.startswith(b"ERR"):
                more = recv(65536)
                if not more:
                    raise ConnectionError(
                        f"server closed the connection; got {reply!r}"
                    )
                reply += more
            now = clock()
            if len(reply) != size or not reply.endswith(ok if size > 4 else b"OK\r\n"):
                raise ValueError(
                    f"unexpected reply {reply[:200]!r} to {request[:80]!r}"
                )
            if now >= end:
                break
            if sent >= start:
                done += 1
                mine.append(now - sent)
    counts[slot] = done
    times[slot] = mine


class Load:
    """The prepared workloads, and running one."""

    def __init__(self) -> None:
        self.workloads: dict[str, list[tuple[bytes, int]]] = {}

    def prepare(self, job: dict[str, Any]) -> dict[str, Any]:
        routed = {}
        for i, (name, reads) in enumerate(sorted(job["reads"].items())):
            items, share = requests(
                int(job["keys"]),
                int(job["buckets"]),
                float(reads),
                int(job["count"]),
                i,
            )
            self.workloads[name] = items
            routed[name] = share
        return {"prepared": sorted(self.workloads), "routed": routed}

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        items = self.workloads[job["workload"]]
        threads = int(job["threads"])
        counts = [0] * threads
        times: list[list[float]] = [[] for _ in range(threads)]
        errors: list[str] = []

        def guarded(slot: int) -> None:
            try:
                _worker(job, items, slot, counts, times)
            except BaseException:
                errors.append(traceback.format_exc())

        pool = [threading.Thread(target=guarded, args=(i,)) for i in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        if errors:
            return {"error": errors[0]}
        every = [t for mine in times for t in mine]
        figures, how = percentiles(every, (50, 99))
        return {
            "ops": sum(counts),
            "seconds": float(job["end"]) - float(job["start"]),
            **figures,
            "histogram": how,
        }


def main() -> int:
    load = Load()
    return serve(
        lambda job: (load.prepare if job["kind"] == "prepare" else load.run)(job)
    )


if __name__ == "__main__":
    sys.exit(main())
