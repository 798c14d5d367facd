"""The text server's event loop: asyncio's own, or uvloop's (pyrokv[fast])."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from pyrokv import ConfigError
from pyrokv.cluster import LocalCluster
from pyrokv.defaults import DEFAULT_EVENT_LOOP
from pyrokv.loops import check_event_loop, new_event_loop
from pyrokv.testing import Conn

UVLOOP = importlib.util.find_spec("uvloop") is not None
TABLE = "a..m=foo, n..z=bar"


def test_asyncio_is_the_default_and_asyncio_s_own_loop() -> None:
    """A node's text server runs on asyncio's own loop unless told otherwise, uvloop
    installed or not."""
    loop, own = new_event_loop(DEFAULT_EVENT_LOOP), asyncio.new_event_loop()
    try:
        assert DEFAULT_EVENT_LOOP == "asyncio"
        assert type(loop) is type(own)
    finally:
        loop.close()
        own.close()


def test_uvloop_is_uvloop_s_loop_or_says_how_to_get_it() -> None:
    """event_loop uvloop gives uvloop's loop with uvloop installed; without, a
    ConfigError names the extra to install."""
    if UVLOOP:
        loop = new_event_loop("uvloop")
        try:
            assert type(loop).__module__.split(".")[0] == "uvloop"
        finally:
            loop.close()
    else:
        with pytest.raises(ConfigError, match=r"pip install 'pyrokv\[fast\]'"):
            check_event_loop("uvloop")


def test_an_unknown_loop_is_a_config_error() -> None:
    """An event loop that is neither asyncio nor uvloop is refused, naming both."""
    with pytest.raises(ConfigError, match="not one of asyncio, uvloop"):
        check_event_loop("trio")


@pytest.mark.distributed
@pytest.mark.parametrize(
    "loop",
    [
        "asyncio",
        pytest.param(
            "uvloop",
            marks=pytest.mark.skipif(not UVLOOP, reason="uvloop is not installed"),
        ),
    ],
)
def test_nodes_serve_local_and_routed_requests_on_either_loop(loop: str) -> None:
    """Two nodes on the loop named by --event-loop log it at start and answer text
    requests, local ones and ones routed to the other node over a peer link."""
    listen = ["--listen", "127.0.0.1:0", "--event-loop", loop]
    with LocalCluster(
        {"foo": TABLE, "bar": TABLE}, {"foo": listen, "bar": listen}
    ) as c:
        for child in c.nodes.values():
            assert any(line.endswith(f"event loop: {loop}") for line in child.lines)
        foo = c.nodes["foo"].listen_address()
        assert foo is not None
        with Conn(foo) as conn:
            for bucket in ("apple", "zoo"):  # foo's, then bar's over the peer link
                assert conn.ask(f"CREATE {bucket}") == b"OK"
                assert conn.ask(f"PUT {bucket} k v") == b"OK"
                assert conn.ask(f"GET {bucket} k") == b"v|OK"
            assert conn.ask("INFO").startswith(b"node foo")
