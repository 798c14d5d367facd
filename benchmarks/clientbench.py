"""The Python client's benchmarks, in a process of its own (the ``client`` case).

Started once by the ``client`` case (``benchmarks/clientcases.py``)::

    python clientbench.py --ns HOST:PORT --via foo --bucket apple --key k --value v \\
        --bare-uri URI --bare-bucket zoo --threads 8

It makes one :class:`pyrokv.Client` talking to node ``--via`` and keeps
``--threads`` worker threads, each with its own connections (the client's proxy
pool is per thread; each thread has its own proxy to the bare Pyro5 daemon),
checks every way of reading answers ``--value``, prints ``READY``, then answers
one JSON job per stdin line with one JSON line:

``{"call": C, "threads": N, "start": T0, "end": T1}``
    The first ``N`` workers make call ``C`` back to back until ``T1``
    (``time.time()``), counting the GETs answered in ``[T0, T1)``; calls before
    ``T0`` are the warm-up. ``C`` is ``get`` (``Client.get``), ``bare`` (the bare
    daemon's ``get`` on a reused proxy) or ``pipeline`` (``Client.pipeline()`` of
    ``"batch"`` GETs, each counted). Answer: ``{"ops": GETS, "seconds": T1 - T0}``.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from Pyro5.api import Proxy

from pyrokv import Client

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run by path, as the suite runs it
    sys.path.insert(0, str(ROOT))

from benchmarks.jobs import serve  # noqa: E402

#: A job for one worker thread: the name of the call to repeat, and the window.
Job = tuple[str, float, float]


class Bench:
    """The client, the bare proxies, and the worker threads that drive them."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.client = Client(options.ns, via=options.via, timeout=30)
        self.local = threading.local()
        self.inbox: list[queue.Queue[Job | None]] = []
        self.outbox: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self.workers = []
        for i in range(options.threads):
            inbox: queue.Queue[Job | None] = queue.Queue()
            worker = threading.Thread(
                target=self._work, args=(inbox,), name=f"worker {i}", daemon=True
            )
            self.inbox.append(inbox)
            self.workers.append(worker)
            worker.start()
        # Every worker connects and checks each call once, before READY.
        for call in ("get", "bare", "pipeline"):
            self.run(call, options.threads, 0.0, 0.0)

    def calls(self, name: str) -> tuple[Callable[[], Any], int]:
        """This thread's call ``name`` and the GETs one call makes (connected here)."""
        options = self.options
        bucket, key, value = options.bucket, options.key, options.value
        if name == "get":
            get = self.client.get
            return (lambda: get(bucket, key)), 1
        if name == "bare":
            bare = getattr(self.local, "bare", None)
            if bare is None:
                bare = self.local.bare = Proxy(options.bare_uri)
                bare._pyroTimeout = 30
                bare._pyroBind()
            get = bare.get
            other = options.bare_bucket
            return (lambda: get(other, key)), 1
        if name == "pipeline":
            pipeline, batch = self.client.pipeline, options.batch

            def many() -> list[Any]:
                p = pipeline()
                for _ in range(batch):
                    p.get(bucket, key)
                got = p.execute()
                if got[-1] != value:
                    raise ValueError(f"a pipeline's GET gave {got[-1]!r}")
                return got

            return many, batch
        raise ValueError(f"unknown call {name!r}: get, bare or pipeline")

    def _work(self, inbox: queue.Queue[Job | None]) -> None:
        while (job := inbox.get()) is not None:
            name, start, end = job
            try:
                call, each = self.calls(name)
                first = call()
                if each == 1 and first != self.options.value:
                    raise ValueError(f"{name} gave {first!r}")
                done = 0
                clock = time.time
                while True:
                    call()
                    now = clock()
                    if now >= end:
                        break
                    if now >= start:
                        done += each
                self.outbox.put((done, None))
            except BaseException:
                self.outbox.put((0, traceback.format_exc()))

    def run(self, call: str, threads: int, start: float, end: float) -> int:
        """GETs answered in ``[start, end)`` by ``threads`` workers making ``call``."""
        if not 1 <= threads <= len(self.inbox):
            raise ValueError(f"threads must be 1..{len(self.inbox)}, not {threads}")
        for inbox in self.inbox[:threads]:
            inbox.put((call, start, end))
        total, errors = 0, []
        for _ in range(threads):
            done, error = self.outbox.get()
            total += done
            if error:
                errors.append(error)
        if errors:
            raise RuntimeError(errors[0])
        return total

    def close(self) -> None:
        for inbox in self.inbox:
            inbox.put(None)
        for worker in self.workers:
            worker.join(5)
        self.client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ns", required=True)
    parser.add_argument("--via", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--value", required=True)
    parser.add_argument("--bare-uri", required=True)
    parser.add_argument("--bare-bucket", required=True)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    options = parser.parse_args(argv)
    bench = Bench(options)

    def answer(job: dict[str, Any]) -> dict[str, Any]:
        start, end = float(job["start"]), float(job["end"])
        ops = bench.run(job["call"], int(job["threads"]), start, end)
        return {"ops": ops, "seconds": end - start}

    try:
        return serve(answer)
    finally:
        bench.close()


if __name__ == "__main__":
    sys.exit(main())
