"""The YCSB load of the benchmark suite draws keys as YCSB's zipfian generator does."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from benchmarks.ycsbload import (
    VALUE_SIZE,
    ScrambledZipfian,
    Zipfian,
    bucket_of,
    fnv1a64,
    requests,
    value_of,
)


def test_zipfian_draws_item_i_in_proportion_to_one_over_i_to_the_theta() -> None:
    """Over 1,000 items (theta 0.99): the two most popular exactly as often as theory
    says (Gray's method draws them apart), the rest within its approximation."""
    n, draws = 1000, 200_000
    zipf = Zipfian(n, 0.99, random.Random(7))
    counts = Counter(zipf.next() for _ in range(draws))
    zeta = math.fsum(1 / (i + 1) ** 0.99 for i in range(n))

    def expected(item: int) -> float:
        return draws / (item + 1) ** 0.99 / zeta

    for item in (0, 1):
        assert abs(counts[item] - expected(item)) < 5 * math.sqrt(expected(item))
    for item in (9, 99):
        assert abs(counts[item] - expected(item)) < 0.2 * expected(item)
    assert min(counts) >= 0
    assert max(counts) < n


def test_scrambled_zipfian_spreads_the_popular_keys() -> None:
    """The hottest keys are scattered over the key space, not 0, 1, 2..."""
    n = 100_000
    chooser = ScrambledZipfian(n, 0.99, random.Random(1))
    counts = Counter(chooser.next() for _ in range(50_000))
    hottest = [key for key, _ in counts.most_common(3)]
    assert hottest[0] == fnv1a64(0) % n
    assert all(0 <= key < n for key in counts)
    assert hottest != [0, 1, 2]


def test_fnv1a64_is_the_64_bit_fnv_1a_hash_of_the_little_endian_bytes() -> None:
    """fnv1a64 matches FNV-1a over 8 bytes, written out byte by byte."""
    value = 0x0102030405060708
    h = 0xCBF29CE484222325
    for byte in value.to_bytes(8, "little"):
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    assert fnv1a64(value) == h


@pytest.mark.parametrize("reads", [0.5, 0.95, 1.0])
def test_a_workload_reads_its_share_and_about_half_is_routed(reads: float) -> None:
    """Workloads A, B and C: their share of GETs; about half the requests for bar's
    buckets (n..z); updates carry a value as long as the loaded ones."""
    items, routed = requests(10_000, 1000, reads, 20_000, seed=3)
    gets = sum(request.startswith(b"GET ") for request, _ in items)
    assert abs(gets / len(items) - reads) < 0.02
    assert 0.3 < routed < 0.7
    puts = [request for request, size in items if size == 4]
    assert all(len(p.split(b" ")[3]) == VALUE_SIZE + 2 for p in puts)
    assert len(value_of(12345, 7)) == VALUE_SIZE
    assert bucket_of(27, 1000) == "b0027"
