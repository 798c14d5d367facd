"""Python-API benchmarks, in a process of their own that hosts one pyrokv node.

Started once by the harness (``benchmarks/harness.py``): it starts node ``api`` in this process
(``pyrokv.start_node``, table ``a..m=api, n..z=bar``, so ``zoo`` belongs to the
cluster's node ``bar`` in another process), fills its buckets, prints ``READY``, then
answers one JSON command per stdin line with one JSON line:

``{"cmd": "api"}``
    ``Router.route`` of a GET to the local owner vs ``Registry.get`` called directly
    (microseconds per call, best of ``repeats`` interleaved blocks), and to a remote
    owner vs a bare Pyro5 call with one reused proxy (calls/s, sequential).

``{"cmd": "scaling"}``
    ``Router.route`` of a local GET with routing tables of 1, 16 and 256 entries, and
    over buckets of each size in ``--keys`` (random existing keys), with the direct
    ``Registry.get`` over the same keys alongside.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from Pyro5.api import Proxy

from pyrokv import RoutingTable, start_node
from pyrokv.naming import parse_address

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run by path, as the suite runs it
    sys.path.insert(0, str(ROOT))

from benchmarks.jobs import serve  # noqa: E402

GET = "pyrokv.tasks.get"


def route_loop(route: Callable[..., Any], bucket: str, keys: Sequence[str]) -> None:
    for key in keys:
        route(bucket, GET, [bucket, key])


def direct_loop(get: Callable[..., Any], bucket: str, keys: Sequence[str]) -> None:
    for key in keys:
        get(bucket, key)


def timed(loop: Callable[..., None], *args: Any) -> float:
    """Microseconds per iteration of ``loop(*args)`` (its last argument is the key list)."""
    started = time.perf_counter()
    loop(*args)
    return (time.perf_counter() - started) / len(args[-1]) * 1e6


def best_of(variants: dict[str, tuple[Any, ...]], repeats: int) -> dict[str, float]:
    """Time every variant ``repeats`` times, interleaved; keep each one's best (µs/call)."""
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):
        for name, (loop, *args) in variants.items():
            best[name] = min(best[name], timed(loop, *args))
    return best


def rate(call: Callable[[], Any], seconds: float) -> tuple[int, float]:
    """Call ``call()`` back to back for ``seconds``; return (calls, elapsed)."""
    done = 0
    started = time.perf_counter()
    end = started + seconds
    while True:
        call()
        done += 1
        now = time.perf_counter()
        if now >= end:
            return done, now - started


class Bench:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        ns = parse_address(options.ns)
        self.table = RoutingTable.parse("a..m=api, n..z=bar")
        self.node = start_node("api", self.table, ns)
        registry = self.node.registry
        registry.create("apple")
        registry.put("apple", "k", "v")
        self.loop_keys = ["k"] * options.calls
        self.sizes = [int(n) for n in options.keys.split(",")]
        self.key_lists: dict[int, list[str]] = {}
        rng = random.Random(1)
        for size in self.sizes:
            bucket = f"keys{size}"
            registry.create(bucket)
            for i in range(size):
                registry.put(bucket, f"k{i:07d}", f"{i:010d}")
            self.key_lists[size] = [
                f"k{rng.randrange(size):07d}" for _ in range(options.calls)
            ]
        # The largest bucket once more, read at only 1,000 of its keys: those stay in
        # the CPU cache, so this separates the dict's size from cache misses.
        largest = max(self.sizes)
        hot = [f"k{rng.randrange(largest):07d}" for _ in range(1000)]
        self.hot_keys = [hot[i % len(hot)] for i in range(options.calls)]
        # Every bucket read at the same small working set (100 of its keys): the
        # cost then depends on the number of keys only through the code, not through
        # how much of the dict the CPU cache holds.
        self.working_sets: dict[int, list[str]] = {}
        for size in self.sizes:
            few = [f"k{rng.randrange(size):07d}" for _ in range(100)]
            self.working_sets[size] = [few[i % len(few)] for i in range(options.calls)]
        self.bare: Any = None
        if options.bare_uri:  # the api command compares with it; scaling does not
            self.bare = Proxy(options.bare_uri)
            self.bare._pyroTimeout = 30
            self.bare._pyroBind()
            route = self.node.router.route
            remote = route(options.remote_bucket, GET, [options.remote_bucket, "k"])
            bare = self.bare.get(options.remote_bucket, "k")
            if remote != "v" or bare != "v":
                raise RuntimeError(
                    f"remote GET gave {remote!r}, bare Pyro5 gave {bare!r}"
                )

    def api(self) -> dict[str, Any]:
        router, registry = self.node.router, self.node.registry
        keys = self.loop_keys
        best = best_of(
            {
                "route": (route_loop, router.route, "apple", keys),
                "direct": (direct_loop, registry.get, "apple", keys),
            },
            self.options.repeats,
        )
        if self.bare is None:
            raise RuntimeError("the api command needs --bare-uri")
        bucket = self.options.remote_bucket
        route_call = lambda: router.route(bucket, GET, [bucket, "k"])  # noqa: E731
        bare_call = lambda: self.bare.get(bucket, "k")  # noqa: E731
        # Alternate the two in short slices so drift hits both alike.
        totals = {"route": [0, 0.0], "bare": [0, 0.0]}
        slices = 4
        for i in range(slices):
            order = ("route", "bare") if i % 2 == 0 else ("bare", "route")
            for name in order:
                call = route_call if name == "route" else bare_call
                done, elapsed = rate(call, self.options.seconds / slices)
                totals[name][0] += done
                totals[name][1] += elapsed
        return {
            "local_route_us": best["route"],
            "direct_us": best["direct"],
            "remote_route_ops": totals["route"][0] / totals["route"][1],
            "bare_pyro_ops": totals["bare"][0] / totals["bare"][1],
        }

    def scaling(self) -> dict[str, Any]:
        router, registry = self.node.router, self.node.registry
        tables = {
            1: RoutingTable([(range(256), "api")]),
            # "apple" (0x61) falls in entry 6 (even: api) and is byte 97 (odd: api).
            16: RoutingTable(
                (range(i * 16, i * 16 + 16), "api" if i % 2 == 0 else "bar")
                for i in range(16)
            ),
            256: RoutingTable(
                (range(b, b + 1), "api" if b % 2 == 1 else "bar") for b in range(256)
            ),
        }
        assert [len(t) for t in tables.values()] == [1, 16, 256]
        keys = self.loop_keys
        table_us: dict[str, float] = {}
        direct = float("inf")
        try:
            best = {n: float("inf") for n in tables}
            for _ in range(self.options.repeats):
                for n, table in tables.items():
                    router.table = table
                    best[n] = min(
                        best[n], timed(route_loop, router.route, "apple", keys)
                    )
                direct = min(direct, timed(direct_loop, registry.get, "apple", keys))
            table_us = {str(n): us for n, us in best.items()}
        finally:
            router.table = self.table
        variants: dict[str, tuple[Any, ...]] = {}
        for size in self.sizes:
            bucket, size_keys = f"keys{size}", self.key_lists[size]
            variants[f"route {size}"] = (route_loop, router.route, bucket, size_keys)
            variants[f"direct {size}"] = (direct_loop, registry.get, bucket, size_keys)
            few = self.working_sets[size]
            variants[f"route few {size}"] = (route_loop, router.route, bucket, few)
            variants[f"direct few {size}"] = (direct_loop, registry.get, bucket, few)
        largest = max(self.sizes)
        bucket = f"keys{largest}"
        variants["route hot"] = (route_loop, router.route, bucket, self.hot_keys)
        variants["direct hot"] = (direct_loop, registry.get, bucket, self.hot_keys)
        best_keys = best_of(variants, self.options.repeats)
        return {
            "hot_us": {
                "size": largest,
                "route": best_keys["route hot"],
                "direct": best_keys["direct hot"],
            },
            "table_us": table_us,
            "few_us": {
                str(size): {
                    "route": best_keys[f"route few {size}"],
                    "direct": best_keys[f"direct few {size}"],
                }
                for size in self.sizes
            },
            "table_direct_us": direct,
            "keys_us": {
                str(size): {
                    "route": best_keys[f"route {size}"],
                    "direct": best_keys[f"direct {size}"],
                }
                for size in self.sizes
            },
        }

    def close(self) -> None:
        if self.bare is not None:
            self.bare._pyroRelease()
        self.node.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ns", required=True)
    parser.add_argument("--bare-uri", default="")
    parser.add_argument("--remote-bucket", default="zoo")
    parser.add_argument("--keys", default="1000,1000000")
    parser.add_argument(
        "--calls", type=int, default=20000, help="calls per timed block"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0)
    options = parser.parse_args(argv)
    bench = Bench(options)
    try:
        return serve(
            lambda job: {"api": bench.api, "scaling": bench.scaling}[job["cmd"]]()
        )
    finally:
        bench.close()


if __name__ == "__main__":
    sys.exit(main())
