"""A node's metrics endpoint: Prometheus text format, parsed by prometheus-client's own
parser, counting what was sent."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyrokv.cluster import Child, spawn_node
from pyrokv.testing import Conn

pytestmark = pytest.mark.distributed


@pytest.fixture(name="watched")
def _watched(
    ns: tuple[str, int], unique: str, secret_file: str
) -> Iterator[tuple[Child, Child]]:
    """foo (a..m) and bar (n..z), each with --metrics and a text port."""
    a, b = f"m{unique}", f"n{unique}"
    table = f"a..m={a}, n..z={b}"
    extra = ["--listen", "127.0.0.1:0", "--cluster-secret-file", secret_file]
    children = []
    try:
        children.append(
            spawn_node(a, ns, table, extra=[*extra, "--metrics", "127.0.0.1:0"])
        )
        children.append(
            spawn_node(b, ns, table, extra=[*extra, "--metrics", "127.0.0.1:0"])
        )
        yield children[0], children[1]
    finally:
        for child in children:
            child.stop()


def scrape(child: Child) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the node's /metrics: (name, sorted labels) -> value."""
    line = next(x for x in child.lines if x.startswith("METRICS "))
    address = line.split()[2]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_what_was_sent(watched: tuple[Child, Child]) -> None:
    """Requests by verb and outcome, routed requests by owner, keys, buckets,
    connections and the latency histogram match the requests sent."""
    foo, bar = watched
    address = foo.listen_address()
    assert address is not None
    owner = bar.name.split()[-1]
    with Conn(address) as c:
        for line in ("CREATE apple", "PUT apple k v", "PUT apple j w", "GET apple k"):
            assert c.ask(line).endswith(b"OK")
        assert c.ask("GET nosuch k") == b"NOT FOUND"
        assert c.ask("GET 1abc k").startswith(b"ERROR could not find entry")
        for line in ("CREATE zoo", "PUT zoo k v", "GET zoo k"):
            assert c.ask(line).endswith(b"OK")
        samples = scrape(foo)

    def count(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert count("pyrokv_requests_total", verb="PUT", outcome="ok") == 3
    assert count("pyrokv_requests_total", verb="GET", outcome="ok") == 2
    assert count("pyrokv_requests_total", verb="GET", outcome="error") == 2
    assert count("pyrokv_requests_total", verb="CREATE", outcome="ok") == 2
    assert count("pyrokv_routed_total", owner=owner) == 4  # zoo x3, nosuch
    assert count("pyrokv_keys") == 2
    assert count("pyrokv_buckets") == 1
    assert count("pyrokv_connections") >= 1
    assert count("pyrokv_table_version") == 0
    assert count("pyrokv_request_seconds_count") >= 3  # the routed ones at least
    assert count("pyrokv_request_seconds_bucket", le="+Inf") == count(
        "pyrokv_request_seconds_count"
    )
    served_as_owner = scrape(bar)
    assert (
        served_as_owner.get(
            ("pyrokv_peer_requests_total", (("outcome", "ok"), ("verb", "PUT"))), 0
        )
        == 1
    )


def test_metrics_without_the_extra_is_a_clear_error(ns: tuple[str, int]) -> None:
    """--metrics without prometheus-client: exit 2, naming the extra to install."""
    code = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "from pyrokv.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "node",
            "nometrics",
            "--config",
            os.devnull,
            "--ns",
            f"{ns[0]}:{ns[1]}",
            "--metrics",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'pyrokv[metrics]'" in done.stderr
