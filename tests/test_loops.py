"""The text server's event loop: asyncio's own, or uvloop's when installed (pyrokv[fast])."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from pyrokv import ConfigError
from pyrokv.cluster import LocalCluster
from pyrokv.defaults import DEFAULT_EVENT_LOOP
from pyrokv.loops import new_event_loop, resolve
from pyrokv.testing import Conn

UVLOOP = importlib.util.find_spec("uvloop") is not None
TABLE = "a..m=foo, n..z=bar"


def test_auto_takes_uvloop_exactly_when_it_is_installed() -> None:
    """event_loop auto, the default, is uvloop with uvloop installed, asyncio's loop
    without."""
    loop = new_event_loop("auto")
    try:
        assert DEFAULT_EVENT_LOOP == "auto"
        assert resolve("auto") == ("uvloop" if UVLOOP else "asyncio")
        assert (type(loop).__module__.split(".")[0] == "uvloop") == UVLOOP
    finally:
        loop.close()


def test_asyncio_is_asyncio_s_own_loop_whatever_is_installed() -> None:
    """event_loop asyncio gives the loop asyncio.new_event_loop gives."""
    loop, own = new_event_loop("asyncio"), asyncio.new_event_loop()
    try:
        assert resolve("asyncio") == "asyncio"
        assert type(loop) is type(own)
    finally:
        loop.close()
        own.close()


def test_uvloop_without_uvloop_says_how_to_get_it() -> None:
    """event_loop uvloop works with uvloop installed; without, a ConfigError names
    the extra to install."""
    if UVLOOP:
        loop = new_event_loop("uvloop")
        loop.close()
        assert resolve("uvloop") == "uvloop"
    else:
        with pytest.raises(ConfigError, match=r"pip install 'pyrokv\[fast\]'"):
            resolve("uvloop")


def test_an_unknown_loop_is_a_config_error() -> None:
    """An event loop that is none of auto, asyncio, uvloop is refused, naming them."""
    with pytest.raises(ConfigError, match="not one of auto, asyncio, uvloop"):
        resolve("trio")


@pytest.mark.distributed
@pytest.mark.parametrize(
    "loop",
    [
        None,  # the default, auto
        "asyncio",
        pytest.param(
            "uvloop",
            marks=pytest.mark.skipif(not UVLOOP, reason="uvloop is not installed"),
        ),
    ],
)
def test_nodes_serve_local_and_routed_requests_on_either_loop(loop: str | None) -> None:
    """Two nodes on the loop named by --event-loop (or auto's, without it) log it at
    start and answer text requests, local ones and ones routed to the other node
    over a peer link."""
    listen = ["--listen", "127.0.0.1:0"] + (
        [] if loop is None else ["--event-loop", loop]
    )
    runs_on = resolve(loop or DEFAULT_EVENT_LOOP)
    with LocalCluster(
        {"foo": TABLE, "bar": TABLE}, {"foo": listen, "bar": listen}
    ) as c:
        for child in c.nodes.values():
            assert any(line.endswith(f"event loop: {runs_on}") for line in child.lines)
        foo = c.nodes["foo"].listen_address()
        assert foo is not None
        with Conn(foo) as conn:
            for bucket in ("apple", "zoo"):  # foo's, then bar's over the peer link
                assert conn.ask(f"CREATE {bucket}") == b"OK"
                assert conn.ask(f"PUT {bucket} k v") == b"OK"
                assert conn.ask(f"GET {bucket} k") == b"v|OK"
            assert conn.ask("INFO").startswith(b"node foo")
