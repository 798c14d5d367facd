"""Faults and hostile input: dead owners, a restarted name server, overload, other serializers, fuzz."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import Pyro5.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from Pyro5.api import Proxy

from pyrokv import Client, NodeUnavailableError, Router, RoutingTable, naming
from pyrokv.cli import _warn_if_exposed
from pyrokv.cluster import Child, spawn_nameserver, spawn_node
from pyrokv.testing import Conn

pytestmark = pytest.mark.distributed


def wait_until(condition, timeout: float, what: str) -> None:
    """Poll ``condition`` until true, or fail after ``timeout`` seconds saying ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def registered(ns: tuple[str, int], name: str) -> bool:
    try:
        with naming.ns_proxy(*ns, 1.0) as proxy:
            return naming.tasks_name(name) in proxy.list(prefix=naming.tasks_name(name))
    except Pyro5.errors.PyroError:
        return False


@pytest.fixture(name="children")
def _children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in reversed(started):
        child.stop()


def test_nodes_route_without_the_name_server_and_reregister_when_it_returns(
    children: list[Child], unique: str
) -> None:
    """Name server down: nodes keep routing on known addresses; back (empty): they register again."""
    ns_child, ns = spawn_nameserver()
    children.append(ns_child)
    foo, bar = f"f{unique}", f"b{unique}"
    table = f"a..m={foo}, n..z={bar}"
    children += [spawn_node(foo, ns, table), spawn_node(bar, ns, table)]
    with Client(ns, via=foo) as kv:
        assert (
            kv.route("zoo", "pyrokv.tasks.node_name") == bar
        )  # foo now knows bar's address
        ns_child.stop()
        assert kv.route("zoo", "pyrokv.tasks.node_name") == bar  # no name server needed
    restarted, again = spawn_nameserver(port=ns[1])
    children.append(restarted)
    assert again == ns
    wait_until(
        lambda: registered(ns, foo) and registered(ns, bar),
        10,
        "both nodes registered again",
    )
    with Client(ns) as kv:
        assert kv.route("apple", "pyrokv.tasks.node_name") == foo


def test_a_request_in_flight_fails_when_its_owner_dies(
    children: list[Child],
    ns: tuple[str, int],
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An owner killed mid-request: the waiting caller gets NodeUnavailableError at once, not a hang."""
    module = f"naps_{unique}"
    marker = tmp_path / "started"
    (tmp_path / f"{module}.py").write_text(
        f"import pathlib, time\ndef nap(s):\n    pathlib.Path({str(marker)!r}).touch()\n    time.sleep(s)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    front, back = f"f{unique}", f"b{unique}"
    table = f"a..m={front}, n..z={back}"
    children.append(spawn_node(front, ns, table, extra=["--timeout", "30"]))
    victim = spawn_node(back, ns, table, extra=["--allow", module])
    children.append(victim)
    outcome: list[BaseException | object] = []

    def call() -> None:
        with Client(ns, via=front, timeout=30) as kv:
            try:
                outcome.append(kv.route("zoo", f"{module}.nap", [25]))
            except BaseException as exc:
                outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(marker.exists, 10, "the task started on its owner")
    killed = time.monotonic()
    victim.kill()
    caller.join(timeout=10)
    assert not caller.is_alive()
    assert time.monotonic() - killed < 5
    assert isinstance(outcome[0], NodeUnavailableError), outcome
    assert f"node '{back}'" in str(outcome[0])


def test_more_clients_than_workers_get_answers_or_a_clear_error(
    children: list[Child], ns: tuple[str, int], unique: str
) -> None:
    """With 4 workers and 12 concurrent clients: each gets an answer or 'no free workers'; none hangs."""
    name = f"w{unique}"
    children.append(spawn_node(name, ns, f"a..z={name}", extra=["--workers", "4"]))
    results: list[object] = []
    hold = threading.Barrier(12)

    def client() -> None:
        router = Router(RoutingTable(), None, ns=ns, timeout=5)
        try:
            results.append(router.via(name, "apple", "pyrokv.tasks.node_name"))
            hold.wait(
                timeout=10
            )  # keep the connection (and its worker) while others try
        except NodeUnavailableError as exc:
            results.append(exc)
            hold.wait(timeout=10)
        finally:
            router.close()

    threads = [threading.Thread(target=client) for _ in range(12)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert time.monotonic() - started < 15
    answers = [r for r in results if r == name]
    refused = [r for r in results if isinstance(r, NodeUnavailableError)]
    assert len(answers) + len(refused) == 12
    assert 1 <= len(answers) <= 4
    for exc in refused:
        assert "no free workers" in str(exc)
    with Client(ns, via=name) as kv:  # everyone gone: served again
        assert kv.route("apple", "pyrokv.tasks.node_name") == name


@pytest.mark.parametrize("serializer", ["marshal", "json", "msgpack"])
def test_nodes_and_the_name_server_refuse_other_serializers(
    guide: tuple[str, int], serializer: str
) -> None:
    """A client speaking marshal (or json, msgpack) is refused by nodes and the name server."""
    if serializer == "msgpack":
        pytest.importorskip("msgpack")
    with naming.ns_proxy(*guide, 5) as ns:
        uri = ns.lookup(naming.tasks_name("foo"))
    for target in (uri, f"PYRO:{naming.NS_OBJECT}@{guide[0]}:{guide[1]}"):
        with Proxy(target) as proxy:
            proxy._pyroSerializer = serializer
            proxy._pyroTimeout = 5
            with pytest.raises(
                Pyro5.errors.CommunicationError, match="serpent serializer only"
            ):
                proxy._pyroBind()
    with Client(guide, via="foo") as kv:
        assert kv.route("hello", "pyrokv.tasks.node_name") == "foo"


def test_forbidden_tasks_run_nothing_on_the_node(
    guide: tuple[str, int], tmp_path: Path
) -> None:
    """Every odd way of naming os.system is refused remotely, and no command ran."""
    marker = tmp_path / "pwned"
    names = [
        "os.system",
        "pyrokv.tasks.os.system",
        "pyrokv.tasks.__builtins__.eval",
        "builtins.eval",
        "builtins.exec",
        "subprocess.getoutput",
        "pyrokv.tasks._current",
        ".pyrokv.tasks.get",
        "pyrokv.tasks..get",
        "pyrokv.tasks.get.__globals__",
        "pyrokv.tasks.current.__code__",
        "pyrokv.registry.Registry.put",
        "posix.system",
        "pyrokv.tasks.g\u0435t",  # a Cyrillic ie, not an e
    ]
    with Client(guide, via="foo") as kv:
        for name in names:
            with pytest.raises(pyrokv_errors().TaskNotAllowedError):
                kv.route("zoo", name, [f"touch {marker}"])
    assert not marker.exists()


def pyrokv_errors():
    import pyrokv.errors

    return pyrokv.errors


def test_exposure_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """Binding beyond loopback without TLS warns (a log line, as every event of a
    node), saying what is exposed; loopback is quiet."""
    caplog.set_level(logging.WARNING, logger="pyrokv.cli")
    _warn_if_exposed("node 'foo'", "127.0.0.1", ("127.0.0.1", 4040))
    assert caplog.records == []
    _warn_if_exposed("node 'foo'", "0.0.0.0", ("0.0.0.0", 4040))
    err = "\n".join(r.getMessage() for r in caplog.records)
    assert all(r.levelname == "WARNING" for r in caplog.records)
    assert "serves Pyro5 on 0.0.0.0 without TLS" in err
    assert "text protocol on 0.0.0.0:4040: it has no authentication" in err


@pytest.fixture(name="text_node", scope="module")
def _text_node(ns: tuple[str, int]) -> Iterator[tuple[str, int]]:
    name = "fuzz"
    child = spawn_node(
        name, ns, "0..255=fuzz", extra=["--listen", "127.0.0.1:0", "--max-line", "4096"]
    )
    try:
        address = child.listen_address()
        assert address is not None, child.output()
        with Conn(address) as c:
            assert c.ask("CREATE keep9f3a1c") == b"OK"
            assert c.ask("PUT keep9f3a1c k kept") == b"OK"
        yield address
    finally:
        child.stop()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(chunks=st.lists(st.binary(max_size=6000), max_size=4), hang_up=st.booleans())
def test_fuzzed_bytes_never_hurt_the_server(
    text_node: tuple[str, int], chunks: list[bytes], hang_up: bool
) -> None:
    """Arbitrary bytes on the text port: the server still answers and stored data is intact."""
    with Conn(text_node, timeout=5) as c:
        try:
            for chunk in chunks:
                c.send(chunk)
            if hang_up:
                c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close on a long line
    with Conn(text_node) as c:
        assert c.ask("GET keep9f3a1c k") == b"kept|OK"
