"""Every forwarded request carries the table version it was routed by (issue 11)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest
from livetesting import start_cluster
from Pyro5.api import Proxy

from pyrokv import Router, RoutingTable, naming
from pyrokv.protocol import VERBS
from pyrokv.routing import Hop
from pyrokv.transport import Forward, PyroLanes

pytestmark = pytest.mark.distributed

GUIDE = "a..m=foo, n..z=bar"


class _Sink:
    """A reply sink that nothing calls here: PyroLanes._send returns the replies."""

    def routed(self, reply: bytes) -> None:
        raise AssertionError(f"unexpected reply {reply!r}")

    def failed(self) -> None:
        raise AssertionError("unexpected failure")


def _create(bucket: str, version: int) -> Forward:
    line = f"CREATE {bucket}".encode()
    hop = Hop("bar", ("foo",), version)
    deadline = time.monotonic() + 10.0
    return Forward(_Sink(), VERBS[b"CREATE"], line.split(), line, hop, deadline)


def test_a_batch_over_pyro5_sends_each_request_with_its_own_version(
    unique: str,
) -> None:
    """Requests for one owner that were routed by two table versions (queued
    across a switch) travel in one batch each with the version it was routed by:
    the one routed by the newer table makes the owner switch to it, instead of
    being routed back by the older table as a loop."""
    cluster = start_cluster({"foo": GUIDE, "bar": GUIDE})
    loop = asyncio.new_event_loop()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    router = Router(RoutingTable(), None, ns=cluster.ns)
    try:
        with naming.ns_proxy(*cluster.ns, 5.0) as ns:
            uri = ns.lookup(naming.tasks_name("bar"))
        with Proxy(uri) as bar:  # version 1 (bar owns a..z) is prepared on bar
            bar.table_prepare(1, "a..z=bar", ["bar"], "token", 30.0)
        lanes = PyroLanes(loop, router, pool)
        # night is bar's at both versions; apple moves from foo to bar at 1
        batch = [_create(f"night{unique}", 0), _create(f"apple{unique}", 1)]
        replies = [reply for _sink, reply in lanes._send(batch)]
        assert replies == [b"OK\r\n", b"OK\r\n"]
        with Proxy(uri) as bar:
            assert bar.table_state()["version"] == 1
    finally:
        router.close()
        pool.shutdown()
        loop.close()
        cluster.stop()
