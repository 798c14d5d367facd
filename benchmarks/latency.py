"""The latency case: an open loop at fixed rates, percentiles against a baseline.

First the case measures, as the closed-loop cases do (``Suite.pair``), the maximum
rate of each workload and of its baseline, on 1 and on 8 connections. Then, for
each workload, connection count and load (25 %, 50 % and 75 % of the lower of the
two maxima), ``openloop.py`` sends requests at that fixed rate to pyrokv and to the
baseline in turn (up to 10 slices each, AB BA AB ...), and records each request's
latency from the time it was due (no coordinated omission) in an HdrHistogram.
The percentiles and curves are of every request of a point (the slices' histograms
merged); the p99 ratio row is the median, over the slice pairs, of pyrokv's p99
over the baseline's in the same pair: on a shared machine a stall of a few hundred
milliseconds sets a p99 of all requests of whichever system it hit, but spoils
one pair of slices only.

Workloads and baselines:

- ``local GET``: ``GET apple k`` on foo, the owner; the echo server.
- ``routed GET``: ``GET zoo k`` on foo, owned by bar; the bare Pyro5 daemon's
  ``get``, one proxy per connection (a Pyro5 proxy cannot pipeline: a call holds
  its connection until the reply), each proxy on a thread of its own and, under
  ``--clients auto`` or ``processes``, each in a process of its own (as the
  closed-loop ``routed_get`` case does).
- ``local PUT``: ``PUT apple p v`` on foo; the echo server (answering ``v``, OK).

The text connections, 1 or 8, come from one ``openloop.py`` process driving them
all from one ``select`` loop (on 2 cores, a thread per connection would take CPU
from the server). The open-loop points take long (100,000 requests at a quarter of
a 6,000/s maximum is over a minute), so they run in the first round only; the
points with a target (GETs at 50 %) send ``--latency-requests`` requests, the
others stop at ``--latency-seconds`` if that comes first.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from benchmarks.harness import (
    GET_LOCAL,
    GET_ROUTED,
    REPLY,
    START_TIMEOUT,
    BenchError,
    Helper,
    Suite,
    client_mode,
    script,
)
from benchmarks.results import LatencyPoint, Target, ratio

__all__ = ["CONNS", "LOADS", "WORKLOADS", "Workload", "latency"]

PUT_LOCAL = "PUT apple p v\r\n"
PUT_REPLY = "OK\r\n"
#: Loads, as fractions of the lower closed-loop maximum, and connection counts.
LOADS = (0.25, 0.5, 0.75)
CONNS = (1, 8)
#: The load whose p99 ratio has a target, and the target.
TARGET_LOAD = 0.5
TARGET = Target("<=", 1.5)
#: A point is cut into at most this many slices, pyrokv and the baseline taking
#: turns (AB BA AB ...), each slice of at least this many requests (so that its
#: p99 rests on 10 of them): the p99 ratio is the median over slice pairs.
#: Slices also last at least ``--latency-slice-seconds`` (1 s): the machine stalls
#: for about 2 ms a few times a second, and in slices of 0.2 s (10,000 requests at
#: 45,000/s) one stall more or less set the slice's p99 (0.1 ms or 1.4-2.2 ms, on
#: pyrokv and the echo server alike), so the median of the pairs' ratios said
#: where the stalls fell (2.22x in one run, 0.83x for the merged p99s).
SLICES = 10
SLICE_REQUESTS = 1_000
#: Percentiles of the table and the JSON.
PERCENTILES = {"p50": 50.0, "p99": 99.0, "p99.9": 99.9}
#: Seconds between sending a job and the time its first request is due.
LEAD_TEXT = 0.02
LEAD_PYRO = 0.1


@dataclass(frozen=True)
class Workload:
    """What the case sends to pyrokv, and what its baseline is."""

    name: str
    request: str
    reply: str
    #: ``echo`` (the same line to the echo server) or ``pyro`` (the bare Pyro5 call)
    baseline: str
    #: whether its 50 % points carry the target
    targeted: bool

    @property
    def baseline_name(self) -> str:
        """The baseline as the tables name it."""
        return "echo" if self.baseline == "echo" else "bare Pyro5"


WORKLOADS = (
    Workload("local GET", GET_LOCAL, REPLY, "echo", True),
    Workload("routed GET", GET_ROUTED, REPLY, "pyro", True),
    Workload("local PUT", PUT_LOCAL, PUT_REPLY, "echo", False),
)


def latency(suite: Suite, r: int) -> None:
    """Closed-loop maxima, then open-loop latency at 25/50/75 % of the lower one
    (first round only; see the module's docstring)."""
    if r > 0:
        return
    gens = generators(suite)
    started = time.monotonic()
    maxima = closed_maxima(suite, r)
    suite.log(f"# latency: closed-loop maxima took {time.monotonic() - started:.1f}s")
    for work in WORKLOADS:
        for conns in CONNS:
            lower = min(maxima[work.name, conns])
            for load in LOADS:
                begun = time.monotonic()
                open_point(suite, gens, r, work, conns, load, load * lower)
                suite.log(
                    f"# latency: {work.name}, {conns} conn, {load:.0%} of "
                    f"{lower:,.0f}/s took {time.monotonic() - begun:.1f}s"
                )
    suite.log(f"# latency: the case took {time.monotonic() - started:.1f}s")


def generators(suite: Suite) -> list[Helper]:
    """The ``openloop.py`` processes (started on first use, stopped with the suite):
    one for text, or one per Pyro5 connection when Pyro5 clients are processes."""
    found = [h for h in suite.helpers if h.name.startswith("open-loop client")]
    if found:
        return found
    count = (
        max(CONNS) if client_mode(suite.options.clients, "pyro") == "processes" else 1
    )
    found = [
        Helper(f"open-loop client {i}", [script("openloop.py")]) for i in range(count)
    ]
    suite.helpers.extend(found)
    for helper in found:
        helper.wait_ready(START_TIMEOUT)
    return found


def closed_maxima(suite: Suite, r: int) -> dict[tuple[str, int], tuple[float, float]]:
    """Each workload's closed-loop rate and its baseline's, 1 and 8 connections."""
    foo = suite.addresses["foo"]
    assert suite.echo is not None
    echo = suite.echo
    maxima = {}
    for work in WORKLOADS:
        for conns in CONNS:
            if work.baseline == "echo":
                base = partial(suite.text, echo, work.request, conns)
            else:
                base = partial(suite.bare, conns)
            node, other = suite.pair(
                r, partial(suite.text, foo, work.request, conns, reply=work.reply), base
            )
            maxima[work.name, conns] = (node, other)
            add = suite.results.add
            add(
                "latency",
                f"closed loop {work.name}, {conns} conn: pyrokv",
                "ops/s",
                r,
                node,
            )
            add(
                "latency",
                f"closed loop {work.name}, {conns} conn: {work.baseline_name}",
                "ops/s",
                r,
                other,
            )
    return maxima


def requests_for(suite: Suite, work: Workload, load: float, rate: float) -> int:
    """Requests a point sends: ``--latency-requests``, or for a point without a
    target, fewer if they would take longer than ``--latency-seconds``; a point
    with a target sends more if SLICES slices of ``--latency-slice-seconds`` need
    them."""
    options = suite.options
    wanted = options.latency_requests
    if work.targeted and load == TARGET_LOAD:
        wanted = max(wanted, int(rate * options.latency_slice_seconds * SLICES))
    elif options.latency_seconds > 0:
        wanted = min(wanted, int(rate * options.latency_seconds))
    return max(wanted, 10)


def open_point(
    suite: Suite,
    gens: list[Helper],
    r: int,
    work: Workload,
    conns: int,
    load: float,
    rate: float,
) -> None:
    """pyrokv and the baseline at one offered rate, in alternating slices; their
    points and the p99 ratio recorded."""
    total = requests_for(suite, work, load, rate)
    slices = max(1, min(SLICES, total // SLICE_REQUESTS))
    seconds = suite.options.latency_slice_seconds
    if seconds > 0:  # no slice shorter than that (see SLICES)
        slices = max(1, min(slices, int(total / (rate * seconds))))
    each, extra = divmod(total, slices)
    from hdrh.histogram import HdrHistogram  # the bench extra; only this case needs it

    got: dict[bool, list[Any]] = {False: [], True: []}
    for i in range(slices):
        order = (False, True) if (r + i) % 2 == 0 else (True, False)
        for baseline in order:
            part = each + (1 if i < extra else 0)
            answer = send(suite, gens, work, conns, rate, part, baseline)
            got[baseline].append(
                (
                    HdrHistogram.decode(answer["latency"]),
                    HdrHistogram.decode(answer["lag"]),
                )
            )
    # the target's figure: the median over slice pairs of the two p99s' ratio
    # (a stall of the shared machine spoils a slice, not the point)
    pairs = [
        ratio(a.get_value_at_percentile(99.0), b.get_value_at_percentile(99.0))
        for (a, _), (b, _) in zip(got[False], got[True], strict=True)
    ]
    points = {}
    for baseline, parts in got.items():
        slice_p99 = [float(h.get_value_at_percentile(99.0)) for h, _ in parts]
        hist, lag = parts[0]
        for more, more_lag in parts[1:]:
            hist.add(more)
            lag.add(more_lag)
        percentiles = {
            k: float(hist.get_value_at_percentile(p)) for k, p in PERCENTILES.items()
        }
        percentiles["max"] = float(hist.get_max_value())
        points[baseline] = suite.results.add_latency(
            LatencyPoint(
                case="latency",
                workload=work.name,
                conns=conns,
                load=load,
                rate=rate,
                system=work.baseline_name if baseline else "pyrokv",
                baseline=baseline,
                requests=int(hist.get_total_count()),
                percentiles=percentiles,
                lag_p99=float(lag.get_value_at_percentile(99.0)),
                curve=[
                    [float(v.percentile_level_iterated_to), float(v.value_iterated_to)]
                    for v in hist.get_percentile_iterator(5)
                ],
                histogram=hist.encode().decode("ascii"),
                slice_p99=slice_p99,
            )
        )
    suite.results.add(
        "latency",
        f"p99 {work.name}, {conns} conn, {load:.0%} load: pyrokv/{work.baseline_name}",
        "x",
        r,
        statistics.median(pairs),
        TARGET if work.targeted and load == TARGET_LOAD else None,
    )


def send(
    suite: Suite,
    gens: list[Helper],
    work: Workload,
    conns: int,
    rate: float,
    requests: int,
    baseline: bool,
) -> dict[str, Any]:
    """One slice: ``requests`` at ``rate`` over ``conns`` connections, to pyrokv or
    to the baseline; the generator's answer (or the merged answers of several)."""
    warmup = max(1, min(requests // 20, int(rate * 0.05)))
    if baseline and work.baseline == "pyro":
        if len(gens) > 1:  # a process per proxy
            busy, threads = gens[:conns], 1
        else:  # a thread per proxy, in one process
            busy, threads = gens[:1], conns
        t0 = time.time() + LEAD_PYRO
        job = {
            "kind": "pyro",
            "uri": suite.bare_uri,
            "method": "get",
            "args": ["zoo", "k"],
            "expect": "v",
            "threads": threads,
            "stride": conns,
            "rate": rate,
            "requests": requests + warmup,
            "warmup": warmup,
            "t0": t0,
        }
        for i, gen in enumerate(busy):
            gen.send(json.dumps({**job, "first": i * threads}))
        timeout = (requests + warmup) / rate + 60
        answers = [gen.result(timeout) for gen in busy]
        return merged(answers)
    assert suite.echo is not None
    host, port = suite.echo if baseline else suite.addresses["foo"]
    job = {
        "kind": "text",
        "host": host,
        "port": port,
        "request": work.request,
        "reply": REPLY if baseline else work.reply,
        "conns": conns,
        "rate": rate,
        "requests": requests + warmup,
        "warmup": warmup,
        "t0": time.time() + LEAD_TEXT,
    }
    return gens[0].ask(job, timeout=(requests + warmup) / rate + 60)


def merged(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Several generators' answers to one slice as one."""
    if len(answers) == 1:
        return answers[0]
    from hdrh.histogram import HdrHistogram

    out = {}
    for key in ("latency", "lag"):
        hist = HdrHistogram.decode(answers[0][key])
        for other in answers[1:]:
            hist.add(HdrHistogram.decode(other[key]))
        out[key] = hist.encode().decode("ascii")
    if not out:
        raise BenchError("no answers")
    return out
