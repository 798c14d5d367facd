"""Draw the benchmark suite's results as PNG charts.

Run from the repository root, on a file written by ``python -m benchmarks.run --json``
(needs matplotlib: ``pip install -e '.[bench]'``)::

    python -m benchmarks.plot results.json                # charts into results-plots/
    python -m benchmarks.plot results.json --out docs/img

Charts, each drawn only when the file holds its rows (a run of some cases only
draws what it has):

- ``ratios.png``: every ratio row (unit ``x``) but the latency case's: each case
  against its baseline, the median as a bar, each round as a dot, the target as
  a mark, a line at 1.0.
- ``latency.png``: the latency case's percentile curves, one panel per workload
  and connection count, one colour per offered rate, pyrokv solid and the baseline
  dashed; the percentile on a log axis as HdrHistogram plots them (x = 1 / (1 - p),
  labelled 50 %, 90 %, 99 %, 99.9 % ...), the latency in µs on a log axis.
- ``latency-p99.png``: the latency case's p99 ratios (pyrokv / baseline) by
  offered load, with the target.
- ``sizes.png``: the ``sizes`` case's MB/s rows, grouped by value size (bars of
  the rows as they are when their labels name no size).

Prints the path of each chart written. Exit code: 0, or 2 when the file cannot be
read.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["main", "plot_all"]

#: Percentile ticks of the latency charts: the label, and the percentile.
TICKS = [
    ("0%", 0.0),
    ("50%", 50.0),
    ("90%", 90.0),
    ("99%", 99.0),
    ("99.9%", 99.9),
    ("99.99%", 99.99),
    ("99.999%", 99.999),
]
#: Size units in the sizes case's labels, in bytes.
UNITS = {"B": 1, "KB": 1000, "kB": 1000, "KiB": 1024, "MB": 10**6, "MiB": 1 << 20}
SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|kB|KiB|MB|MiB)\b")


def rows_of(data: dict[str, Any], case: str | None = None) -> list[dict[str, Any]]:
    """The file's rows (of ``case`` only, if given), skipping malformed ones."""
    rows = data.get("rows")
    if not isinstance(rows, list):
        return []
    out = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("median"), int | float):
            continue
        if case is None or row.get("case") == case:
            out.append(row)
    return out


def save(fig: Figure, out: Path, name: str) -> Path:
    """Write ``fig`` as ``out/name``; return the path."""
    path = out / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_ratios(data: dict[str, Any], out: Path) -> Path | None:
    """Every ratio row but the latency case's, as horizontal bars."""
    rows = [
        r for r in rows_of(data) if r.get("unit") == "x" and r.get("case") != "latency"
    ]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.5))
    labels = [f"{r['case']}: {r['measure']}" for r in rows]
    ys = list(range(len(rows)))[::-1]
    colors = [
        {"PASS": "tab:green", "MISS": "tab:red"}.get(str(r.get("result")), "tab:blue")
        for r in rows
    ]
    ax.barh(ys, [r["median"] for r in rows], color=colors, alpha=0.7)
    for y, row in zip(ys, rows, strict=True):
        rounds = [v for v in row.get("rounds") or [] if isinstance(v, int | float)]
        ax.plot(rounds, [y] * len(rounds), "k.", markersize=4)
        target = row.get("target")
        if isinstance(target, dict) and isinstance(target.get("value"), int | float):
            ax.plot([target["value"]], [y], "k|", markersize=14, markeredgewidth=2)
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("ratio (median bar; rounds as dots; | the target)")
    ax.set_title(
        "Each case against its baseline (green PASS, red MISS, blue no target)"
    )
    return save(fig, out, "ratios.png")


def percentile_x(percentile: float) -> float:
    """Where ``percentile`` goes on the latency charts' x axis: 1 / (1 - p)."""
    return 1.0 / (1.0 - percentile / 100.0)


def curve_points(point: dict[str, Any]) -> tuple[list[float], list[float]]:
    """A latency point's curve as x (``1 / (1 - p)``) and y (µs); the 100th
    percentile (the max) at ``1 - 1 / requests``, where it would fall."""
    xs, ys = [], []
    for pair in point.get("curve") or []:
        percentile, value = float(pair[0]), float(pair[1])
        if percentile >= 100.0:
            continue
        xs.append(percentile_x(percentile))
        ys.append(max(value, 1.0))
    requests = int(point.get("requests") or 0)
    top = (point.get("percentiles") or {}).get("max")
    if requests > 1 and isinstance(top, int | float):
        xs.append(float(requests))
        ys.append(max(float(top), 1.0))
    return xs, ys


def plot_latency(data: dict[str, Any], out: Path) -> Path | None:
    """The latency case's percentile curves, one panel per workload and conns."""
    points = [p for p in data.get("latency") or [] if isinstance(p, dict)]
    if not points:
        return None
    panels: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for point in points:
        panels.setdefault((str(point["workload"]), int(point["conns"])), []).append(
            point
        )
    workloads = list(dict.fromkeys(w for w, _ in panels))
    conns = sorted({c for _, c in panels})
    fig, axes = plt.subplots(
        len(workloads),
        len(conns),
        figsize=(6.5 * len(conns), 4.2 * len(workloads)),
        squeeze=False,
    )
    loads = sorted({float(p["load"]) for p in points})
    colors = plt.get_cmap("viridis")
    for i, workload in enumerate(workloads):
        for j, n in enumerate(conns):
            ax: Axes = axes[i][j]
            mine = panels.get((workload, n), [])
            if not mine:
                ax.set_visible(False)
                continue
            widest = 10.0
            for point in mine:
                xs, ys = curve_points(point)
                if not xs:
                    continue
                widest = max(widest, max(xs))
                k = loads.index(float(point["load"]))
                ax.plot(
                    xs,
                    ys,
                    linestyle="--" if point.get("baseline") else "-",
                    color=colors(k / max(len(loads) - 1, 1) * 0.85),
                    label=f"{point['system']}, {float(point['load']):.0%} "
                    f"({float(point['rate']):,.0f}/s)",
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = [(label, percentile_x(p)) for label, p in TICKS]
            shown = [(label, x) for label, x in ticks if x <= widest * 1.01]
            ax.set_xticks([x for _, x in shown])
            ax.set_xticklabels([label for label, _ in shown])
            ax.minorticks_off()
            ax.set_xlim(1.0, widest * 1.1)
            ax.set_xlabel("percentile")
            ax.set_ylabel("latency (µs, from the intended send time)")
            ax.set_title(f"{workload}, {n} conn")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Open loop: latency by percentile (pyrokv solid, baseline dashed)")
    fig.tight_layout()
    return save(fig, out, "latency.png")


def plot_latency_ratios(data: dict[str, Any], out: Path) -> Path | None:
    """The latency case's p99 ratio rows as grouped bars by load."""
    rows = [r for r in rows_of(data, "latency") if r.get("unit") == "x"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.5))
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, [r["median"] for r in rows], alpha=0.7)
    for y, row in zip(ys, rows, strict=True):
        target = row.get("target")
        if isinstance(target, dict) and isinstance(target.get("value"), int | float):
            ax.plot([target["value"]], [y], "k|", markersize=14, markeredgewidth=2)
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([str(r["measure"]) for r in rows], fontsize=8)
    ax.set_xlabel("p99 ratio, pyrokv / baseline at the same offered rate (| target)")
    ax.set_title("Latency: p99 against the baseline")
    return save(fig, out, "latency-p99.png")


def size_of(label: str) -> tuple[int, str] | None:
    """The value size a sizes row's label names, in bytes, and the label without it."""
    found = SIZE.search(label)
    if found is None:
        return None
    size = int(float(found.group(1)) * UNITS[found.group(2)])
    rest = label[: found.start()] + label[found.end() :]
    rest = re.sub(r"\s+,", ",", rest)
    rest = re.sub(r",(\s*,)+", ",", rest)
    rest = re.sub(r"\s{2,}", " ", rest).strip(" ,;:-")
    return size, rest or "MB/s"


def plot_sizes(data: dict[str, Any], out: Path) -> Path | None:
    """The sizes case's MB/s rows: bars grouped by value size."""
    rows = [r for r in rows_of(data, "sizes") if r.get("unit") == "MB/s"]
    if not rows:
        return None
    parsed = [size_of(str(r["measure"])) for r in rows]
    if any(p is None for p in parsed):
        fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.5))
        ys = list(range(len(rows)))[::-1]
        ax.barh(ys, [r["median"] for r in rows], alpha=0.7)
        ax.set_yticks(ys)
        ax.set_yticklabels([str(r["measure"]) for r in rows], fontsize=8)
        ax.set_xlabel("MB/s")
    else:
        sizes = sorted({p[0] for p in parsed if p is not None})
        series = list(dict.fromkeys(p[1] for p in parsed if p is not None))
        values: dict[tuple[int, str], float] = {}
        for row, p in zip(rows, parsed, strict=True):
            assert p is not None
            values[p] = float(row["median"])
        fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(sizes) * len(series)), 5))
        width = 0.8 / len(series)
        for k, name in enumerate(series):
            xs = [i + k * width for i in range(len(sizes))]
            ax.bar(
                xs,
                [values.get((s, name), math.nan) for s in sizes],
                width,
                label=name,
            )
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))])
        ax.set_xticklabels([size_name(s) for s in sizes])
        ax.set_xlabel("value size")
        ax.set_ylabel("MB/s")
        ax.legend(fontsize=7)
    ax.set_title("Throughput by value size")
    return save(fig, out, "sizes.png")


def size_name(size: int) -> str:
    """A byte count as a tick label: 100 B, 4 KiB, 60 KiB."""
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def plot_all(data: dict[str, Any], out: Path) -> list[Path]:
    """Every chart ``data`` has rows for, written into ``out``; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    drawn = [
        plot_ratios(data, out),
        plot_latency(data, out),
        plot_latency_ratios(data, out),
        plot_sizes(data, out),
    ]
    return [path for path in drawn if path is not None]


def main(argv: Sequence[str] | None = None) -> int:
    """Draw the charts of one results file; print their paths."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.plot",
        description="Draw PNG charts of a results file of benchmarks.run --json.",
    )
    parser.add_argument("file", help="the JSON file benchmarks.run --json wrote")
    parser.add_argument(
        "--out", help="directory for the PNGs (default: FILE without .json + -plots)"
    )
    args = parser.parse_args(argv)
    source = Path(args.file)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(
            f"benchmarks.plot: cannot read {source}: {exc}; give the file "
            "python -m benchmarks.run --json FILE wrote",
            file=sys.stderr,
        )
        return 2
    if not isinstance(data, dict):
        print(
            f"benchmarks.plot: {source} holds no results object; give the file "
            "python -m benchmarks.run --json FILE wrote",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out) if args.out else source.with_name(source.stem + "-plots")
    drawn = plot_all(data, out)
    for path in drawn:
        print(path)
    if not drawn:
        print(f"benchmarks.plot: nothing to draw in {source}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
