"""The benchmark suite's figures: what each case measured per round, and the table they make.

A :class:`Row` is one measure of one case (``pyrokv GET local, 1 conn``) with a
figure per round and, where the issue sets one, a :class:`Target`. :class:`Results`
collects the rows in the order cases add them and prints them as one Markdown
table: each round, the median, the target, and PASS or MISS; then the misses.
The latency case adds a :class:`LatencyPoint` per offered rate and system (its
percentiles, curve and HdrHistogram), printed as a table of their own;
:meth:`Results.as_json` holds both, for ``--json`` and ``benchmarks/plot.py``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "LatencyPoint",
    "Results",
    "Row",
    "Target",
    "keys_name",
    "markdown",
    "ratio",
    "spread",
]


@dataclass
class Target:
    """A figure the issue asks for: the median must be ``op`` (">=" or "<=") ``value``."""

    op: str  # ">=" or "<="
    value: float

    def met(self, measured: float) -> bool:
        """Whether ``measured`` is on the right side of the target."""
        return measured >= self.value if self.op == ">=" else measured <= self.value

    def shortfall(self, measured: float, unit: str) -> str:
        """How far ``measured`` is on the wrong side of the target."""
        gap = (self.value - measured) if self.op == ">=" else (measured - self.value)
        side = "below" if self.op == ">=" else "above"
        if unit == "%":
            return f"{gap:.1f} points {side} it"
        return f"{gap / self.value * 100:.0f}% {side} it"


@dataclass
class Row:
    """One measure of one case: its unit, its figure in each round, its target."""

    case: str
    label: str
    unit: str
    values: dict[int, float] = field(default_factory=dict)
    target: Target | None = None

    def median(self) -> float | None:
        """The median over the rounds measured so far; None before the first."""
        return statistics.median(self.values.values()) if self.values else None


@dataclass
class LatencyPoint:
    """One system's latencies at one offered rate of an open loop (microseconds)."""

    case: str
    #: what was sent: ``local GET``, ``routed GET``, ``local PUT``
    workload: str
    conns: int
    #: the offered rate as a fraction of the lower closed-loop maximum
    load: float
    #: requests per second offered
    rate: float
    #: ``pyrokv``, or the baseline's name (``echo``, ``bare Pyro5``)
    system: str
    baseline: bool
    #: requests recorded
    requests: int
    #: ``p50``, ``p99``, ``p99.9``, ``max``
    percentiles: dict[str, float]
    #: the generator's own lateness (sent minus intended), its p99
    lag_p99: float
    #: ``[percentile, value]`` pairs, as HdrHistogram's percentile iterator gives them
    curve: list[list[float]]
    #: HdrHistogram's encoded (compressed, base64) histogram of every latency
    histogram: str
    #: the p99 of each slice of the point, in the order they ran
    slice_p99: list[float] = field(default_factory=list)


class Results:
    """Every row of a run of ``rounds`` rounds, in the order they were first added,
    and the latency points."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.rows: dict[tuple[str, str], Row] = {}
        self.latency: list[LatencyPoint] = []

    def add_latency(self, point: LatencyPoint) -> LatencyPoint:
        """Record one system's latencies at one offered rate; return the point."""
        self.latency.append(point)
        return point

    def add(
        self,
        case: str,
        label: str,
        unit: str,
        rnd: int,
        value: float,
        target: Target | None = None,
    ) -> float:
        """Record ``value`` as round ``rnd``'s figure of ``case``'s ``label``; return it."""
        row = self.rows.setdefault((case, label), Row(case, label, unit))
        row.values[rnd] = value
        row.target = target or row.target
        return value

    @staticmethod
    def fmt(value: float | None, unit: str) -> str:
        """A figure as the table shows it: rates whole, ratios as 0.95x, "-" for none."""
        if value is None:
            return "-"
        if unit == "ops/s":
            return f"{value:,.0f}"
        if unit == "x":
            return f"{value:.2f}x"
        if unit in ("µs", "MiB"):
            return f"{value:,.2f}" if value < 100 else f"{value:,.1f}"
        if unit == "%":
            return f"{value:.1f}%"
        if unit == "MB/s":
            return f"{value:,.1f}" if value >= 10 else f"{value:.3f}"
        if unit == "s":
            return f"{value:.3f}"
        return f"{value:g}"

    def target_text(self, row: Row) -> str:
        """The row's target as the table shows it (``>= 0.90x``), or ""."""
        if row.target is None:
            return ""
        shown = self.fmt(row.target.value, row.unit)
        return f"{row.target.op} {shown}"

    def table(self) -> str:
        """Every row as a Markdown table, figures right-aligned."""
        return markdown(self.cells(), numeric=set(range(3, 3 + self.rounds + 1)))

    def cells(self) -> list[list[str]]:
        """The table's head and rows, as the table shows them."""
        head = [
            "case",
            "measure",
            "unit",
            *(f"round {r + 1}" for r in range(self.rounds)),
            "median",
            "target",
            "result",
        ]
        body = []
        for row in self.rows.values():
            median = row.median()
            result = ""
            if row.target is not None and median is not None:
                result = "PASS" if row.target.met(median) else "MISS"
            body.append(
                [
                    row.case,
                    row.label,
                    row.unit,
                    *(
                        self.fmt(row.values.get(r), row.unit)
                        for r in range(self.rounds)
                    ),
                    self.fmt(median, row.unit),
                    self.target_text(row),
                    result,
                ]
            )
        return [head, *body]

    def latency_table(self) -> str:
        """The latency points as a Markdown table ("" when there are none): per
        workload, connections and load, each system's percentiles in µs."""
        if not self.latency:
            return ""
        head = [
            "workload",
            "conns",
            "load",
            "offered/s",
            "system",
            "requests",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "gen. lag p99 µs",
        ]
        body = [
            [
                p.workload,
                str(p.conns),
                f"{p.load * 100:.0f}%",
                f"{p.rate:,.0f}",
                p.system,
                f"{p.requests:,}",
                *(f"{p.percentiles[k]:,.0f}" for k in ("p50", "p99", "p99.9", "max")),
                f"{p.lag_p99:,.0f}",
            ]
            for p in self.latency
        ]
        return markdown([head, *body], numeric={1, 2, 3, 5, 6, 7, 8, 9, 10})

    def as_json(self, about: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run as one JSON-ready object: ``about`` (the run's header), ``rows``
        (one object per table row: ``case``, ``measure``, ``unit``, ``rounds``,
        ``median``, ``target``, ``result``) and ``latency`` (the points)."""
        rows = []
        for row in self.rows.values():
            median = row.median()
            target = None
            result = None
            if row.target is not None:
                target = {
                    "op": row.target.op,
                    "value": row.target.value,
                    "text": self.target_text(row),
                }
                if median is not None:
                    result = "PASS" if row.target.met(median) else "MISS"
            rows.append(
                {
                    "case": row.case,
                    "measure": row.label,
                    "unit": row.unit,
                    "rounds": [finite(row.values.get(r)) for r in range(self.rounds)],
                    "median": finite(median),
                    "target": target,
                    "result": result,
                }
            )
        return {
            "about": about or {},
            "rows": rows,
            "latency": [asdict(point) for point in self.latency],
        }

    def write_json(self, path: str, about: dict[str, Any] | None = None) -> None:
        """Write :meth:`as_json` to ``path``."""
        with open(path, "w", encoding="utf-8") as out:
            json.dump(self.as_json(about), out, indent=1, allow_nan=False)
            out.write("\n")

    def misses(self) -> list[str]:
        """One line per missed target: the median, the target, and by how much."""
        out = []
        for row in self.rows.values():
            median = row.median()
            if row.target is None or median is None or row.target.met(median):
                continue
            out.append(
                f"{row.case}: {row.label}: {self.fmt(median, row.unit)} vs target "
                f"{self.target_text(row)} ({row.target.shortfall(median, row.unit)})"
            )
        return out


def markdown(rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """``rows`` (the first is the head) as a Markdown table; the columns in
    ``numeric`` right-aligned."""
    head, *body = rows
    widths = [max(len(str(cells[i])) for cells in rows) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).rjust(w) if i in numeric else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in numeric else ("-" * (w + 2))
            for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(head), rule, *(line(cells) for cells in body)])


def finite(value: float | None) -> float | None:
    """``value`` for JSON: None for no figure and for NaN or infinity."""
    if value is None or not math.isfinite(value):
        return None
    return value


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0 (a baseline that measured nothing)."""
    return a / b if b else float("nan")


def spread(values: Sequence[float]) -> float:
    """(max - min) / min, in percent."""
    return (max(values) - min(values)) / min(values) * 100


def keys_name(n: int) -> str:
    """A key count as a label: 10^6 for a power of ten, else 12,345."""
    exp = len(str(n)) - 1
    return f"10^{exp}" if n == 10**exp else f"{n:,}"
