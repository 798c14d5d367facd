"""Helpers for the tests of live routing tables (issue 11).

Three nodes, ``foo``, ``bar`` and ``baz``, each serving the text protocol; where
each bucket lives, asked of every node's registry over Pyro5; and random valid
tables over the three nodes, first-byte and hashed, that cover every slot.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

from hypothesis import strategies as st
from Pyro5.api import Proxy

from pyrokv import RoutingTable, naming
from pyrokv.cluster import LocalCluster
from pyrokv.wire import setup_pyro

NODES = ("foo", "bar", "baz")
#: What every node starts with (version 0): foo a..i, bar j..r, baz s..z and the rest.
START_TABLE = "0x00..i=foo, j..r=bar, s..0xff=baz"


def start_cluster(
    tables: dict[str, str | None] | None = None,
    *,
    secret: bool = True,
    extra: Sequence[str] = (),
) -> LocalCluster:
    """A started :class:`LocalCluster` of ``tables`` (default: the three nodes on
    :data:`START_TABLE`), every node with a text port and ``extra`` flags."""
    tables = tables or dict.fromkeys(NODES, START_TABLE)
    cluster = LocalCluster(
        tables,
        {name: ["--listen", "127.0.0.1:0", *extra] for name in tables},
        secret=secret,
    )
    return cluster.start()


def node_buckets(ns: tuple[str, int], node: str, timeout: float = 5.0) -> list[str]:
    """The names of the buckets node ``node`` holds, from its registry."""
    setup_pyro()
    with naming.ns_proxy(*ns, timeout) as proxy:
        uri = proxy.lookup(naming.registry_name(node))
    with Proxy(uri) as registry:
        registry._pyroTimeout = timeout
        found: list[str] = registry.buckets()
    return found


def placement(ns: tuple[str, int], nodes: Sequence[str]) -> dict[str, list[str]]:
    """Every bucket any of ``nodes`` holds: {bucket: [the nodes that hold it]}."""
    where: dict[str, list[str]] = {}
    for node in nodes:
        for bucket in node_buckets(ns, node):
            where.setdefault(bucket, []).append(node)
    return where


def misplaced(
    ns: tuple[str, int], nodes: Sequence[str], spec: str
) -> dict[str, tuple[list[str], str | None]]:
    """The buckets not held by exactly their owner by table ``spec``:
    {bucket: (the nodes that hold it, its owner)}; empty when all is well."""
    table = RoutingTable.parse(spec)
    wrong = {}
    for bucket, holders in placement(ns, nodes).items():
        owner = table.owner(bucket)
        if holders != [owner]:
            wrong[bucket] = (holders, owner)
    return wrong


def pyrokv_cli(*argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pyrokv ARGV`` as a user would, with no config file around."""
    return subprocess.run(
        [sys.executable, "-m", "pyrokv", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )


#: Any slot a range may start at, but the first.
ANY_SLOT = st.integers(1, 255)


@st.composite
def tables(
    draw: st.DrawFn,
    nodes: Sequence[str] = NODES,
    cuts: st.SearchStrategy[int] = ANY_SLOT,
) -> str:
    """A valid table over ``nodes`` that covers all 256 slots: first-byte or hashed,
    one to five ranges, each owned by any of the nodes (not every node need own one).
    A range starts at 0 or at a slot drawn from ``cuts`` (1..255)."""
    hashed = draw(st.booleans())
    count = draw(st.integers(1, 5))
    cuts = sorted(draw(st.sets(cuts, min_size=count - 1, max_size=count - 1)))
    starts = [0, *cuts]
    ends = [*(c - 1 for c in cuts), 255]
    owners = [draw(st.sampled_from(list(nodes))) for _ in starts]
    entries = [
        (range(start, end + 1), owner)
        for start, end, owner in zip(starts, ends, owners, strict=True)
    ]
    return RoutingTable(entries, hashed=hashed).spec()
