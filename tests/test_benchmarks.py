"""The benchmark suite keeps working: it runs at tiny sizes and prints every case.

No test here asserts a time or a rate: the figures depend on the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parent.parent
CASES = (
    "local_get",
    "routed_get",
    "pipelined",
    "api",
    "scaling",
    "memory",
    "hostile",
    "metrics",
    "durable",
    "moves",
    "move_load",
    "many",
)


def run_suite(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYROKV_")}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def table_rows(output: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in output.splitlines()
        if line.startswith("| ") and not line.startswith("|--")
    ]


def test_quick_run_prints_every_case_with_rounds_median_and_targets() -> None:
    """--quick runs every case and prints each round, the median and all 23 targets."""
    done = run_suite("-m", "benchmarks.run", "--quick")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = table_rows(done.stdout)
    head, body = rows[0], rows[1:]
    assert head[:3] == ["case", "measure", "unit"]
    assert head[3:6] == ["round 1", "round 2", "round 3"]
    assert head[-3:] == ["median", "target", "result"]
    assert {row[0] for row in body} == set(CASES)
    for row in body:
        assert len(row) == len(head), row
        assert all(cell not in ("", "-") for cell in row[3:7]), row
        assert (row[-2] == "") == (row[-1] == ""), row
        assert row[-1] in ("", "PASS", "MISS"), row
    targeted = {(row[0], row[1]) for row in body if row[-1]}
    # Every target of the issue is checked somewhere in the table.
    assert {case for case, _ in targeted} == set(CASES)
    assert len(targeted) == 23
    assert "every target met" in done.stdout or "MISSED targets:" in done.stdout


def test_runs_as_a_script_with_only_some_cases() -> None:
    """python benchmarks/run.py --only pipelined runs as a script and prints only it."""
    done = run_suite(
        "benchmarks/run.py", "--quick", "--only", "pipelined", "--rounds", "1"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    body = table_rows(done.stdout)[1:]
    assert body
    assert {row[0] for row in body} == {"pipelined"}


def test_an_unknown_case_is_a_usage_error() -> None:
    """--only with an unknown case name exits 2 and names the case."""
    done = run_suite("-m", "benchmarks.run", "--only", "nosuch", timeout=60)
    assert done.returncode == 2
    assert "unknown case(s) nosuch" in done.stderr
