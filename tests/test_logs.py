"""What a node logs: one line per event (start, peers up and down, owners unreachable
and back), none per request."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from pyrokv.cluster import Child, spawn_node
from pyrokv.testing import Conn

pytestmark = pytest.mark.distributed


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


def test_a_node_logs_its_peer_going_down_and_coming_back(
    ns: tuple[str, int], unique: str, secret_file: str
) -> None:
    """foo's stderr: its start, the peer link to bar up, bar unreachable once (not
    per request) while it is down, the link up again when bar is back, and no line
    for each of many requests."""
    foo, bar = f"f{unique}", f"b{unique}"
    table = f"a..m={foo}, n..z={bar}"
    extra = ["--listen", "127.0.0.1:0", "--timeout", "2"]
    extra += ["--cluster-secret-file", secret_file]
    a = spawn_node(foo, ns, table, extra=extra)
    b: Child | None = spawn_node(bar, ns, table, extra=extra)
    try:
        assert any(f"node '{foo}' serving Pyro5" in x for x in a.lines), a.output()
        address = a.listen_address()
        assert address is not None
        with Conn(address) as c:
            assert c.ask("CREATE zoo") == b"OK"
            wait_for(
                lambda: any(
                    f"peer link to node '{bar}'" in x and "is up" in x for x in a.lines
                ),
                "the link up",
            )
            before = len(a.lines)
            for _ in range(200):
                assert c.ask("CREATE apple") == b"OK"
                assert c.ask("CREATE zoo") == b"OK"
            assert len(a.lines) == before, a.lines[before:]  # nothing per request
            assert b is not None
            b.kill()
            b = None
            for _ in range(5):
                assert c.ask("GET zoo k").startswith(b"ERROR node")
            wait_for(
                lambda: any(f"node '{bar}' is unreachable" in x for x in a.lines),
                "bar unreachable",
            )
            down = [x for x in a.lines if f"node '{bar}' is unreachable" in x]
            assert len(down) == 1, down  # once per outage, not per request
            wait_for(
                lambda: any(f"no peer link to {bar}" in x for x in a.lines),
                "the link given up for Pyro5",
            )
            during = len(a.lines)
            for _ in range(20):  # each tries the link again, and says nothing
                assert c.ask("GET zoo k").startswith(b"ERROR node")
            assert a.lines[during:] == [], a.lines[during:]
            assert any(f"peer link to node '{bar}' is down" in x for x in a.lines)
            b = spawn_node(bar, ns, table, extra=extra)
            wait_for(lambda: c.ask("CREATE zoo") == b"OK", "bar served again")
            wait_for(
                lambda: any(f"node '{bar}' is reachable again" in x for x in a.lines),
                "bar reachable again",
            )
        errors = [x for x in a.lines if x[:4].isdigit() and x.split()[1] == "ERROR"]
        assert not errors, errors  # one event a line, and no errors
    finally:
        if b is not None:
            b.stop()
        a.stop()


def test_a_stopping_node_does_not_report_its_peers_down(
    ns: tuple[str, int], unique: str, secret_file: str
) -> None:
    """The peer links a node drops as it stops are no outage of their owners: no
    "unreachable" or "is down" line from the node that stops."""
    foo, bar = f"f{unique}", f"b{unique}"
    table = f"a..m={foo}, n..z={bar}"
    extra = ["--listen", "127.0.0.1:0", "--cluster-secret-file", secret_file]
    a = spawn_node(foo, ns, table, extra=extra)
    b = spawn_node(bar, ns, table, extra=extra)
    try:
        address = a.listen_address()
        assert address is not None
        with Conn(address) as c:
            assert c.ask("CREATE zoo") == b"OK"
        wait_for(
            lambda: any(f"peer link to node '{bar}'" in x for x in a.lines),
            "the link up",
        )
        a.stop()
        stopping = next(i for i, x in enumerate(a.lines) if "stopping" in x)
        assert not [x for x in a.lines[stopping:] if "WARNING" in x], a.lines
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize(
    ("level", "shown", "hidden"),
    [("WARNING", None, " INFO "), ("DEBUG", " DEBUG ", None)],
)
def test_a_node_logs_at_its_log_level(
    ns: tuple[str, int], unique: str, level: str, shown: str | None, hidden: str | None
) -> None:
    """--log-level WARNING hides the INFO lines (its start); DEBUG shows more (Pyro5's
    own lines among them)."""
    node = spawn_node(f"l{unique}", ns, f"a..z=l{unique}", extra=["--log-level", level])
    node.stop()
    logged = [x for x in node.lines if x[:4].isdigit()]
    if shown is not None:
        assert any(shown in x for x in logged), node.lines
    if hidden is not None:
        assert not any(hidden in x for x in logged), node.lines
