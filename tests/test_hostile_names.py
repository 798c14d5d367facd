"""Nodes keep their names: a registration taken over is taken back, a client picks a
node that answers its own name, and over TLS a certificate must name the node."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from Pyro5.api import URI

from pyrokv import Client, NodeIdentityError, naming
from pyrokv.cluster import Child, spawn_nameserver, spawn_node
from pyrokv.testing import Conn

pytestmark = pytest.mark.distributed


class Impostor:
    """A listening socket that records every byte sent to it and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        conns: list[socket.socket] = []
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                conn.setblocking(False)
                conns.append(conn)
            except TimeoutError:
                pass
            for conn in conns:
                try:
                    self.received += conn.recv(65536)
                except (BlockingIOError, OSError):
                    pass
        for conn in conns:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(name="pair")
def _pair(
    ns: tuple[str, int], unique: str, secret_file: str
) -> Iterator[dict[str, Child]]:
    a, b = f"a{unique}", f"b{unique}"
    table = f"a..m={a}, n..z={b}"
    children: dict[str, Child] = {}
    try:
        for name in (a, b):
            children[name] = spawn_node(
                name,
                ns,
                table,
                extra=[
                    "--listen",
                    "127.0.0.1:0",
                    "--timeout",
                    "2",
                    "--cluster-secret-file",
                    secret_file,
                ],
            )
        yield children
    finally:
        for child in children.values():
            child.stop()


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


def test_a_taken_over_registration_is_taken_back_and_gets_nothing(
    ns: tuple[str, int], pair: dict[str, Child]
) -> None:
    """Overwriting bar's names with an impostor's address and text port: bar takes
    them back within its check interval and logs the address found; the impostor
    never receives a request line."""
    a, b = list(pair)
    real = naming.ns_proxy(*ns, 5.0)
    with real:
        uri = real.lookup(naming.tasks_name(b))
    impostor = Impostor()
    try:
        fake = f"PYRO:{naming.tasks_name(b)}@127.0.0.1:{impostor.port}"
        with naming.ns_proxy(*ns, 5.0) as proxy:
            proxy.register(
                naming.tasks_name(b),
                fake,
                metadata={
                    naming.NODE_METADATA,
                    naming.text_metadata("127.0.0.1", impostor.port),
                },
            )
        address = pair[a].listen_address()
        assert address is not None
        with Conn(address) as c:
            c.ask("CREATE zoo")  # may meet the impostor: it must learn nothing
            c.ask("PUT zoo password hunter2")

        def back() -> bool:
            with naming.ns_proxy(*ns, 5.0) as proxy:
                return bool(proxy.lookup(naming.tasks_name(b)) == uri)

        _wait(back, 6.0, "bar registered again")
        _wait(
            lambda: f"127.0.0.1:{impostor.port}" in pair[b].output(),
            3.0,
            "bar's warning naming the address found",
        )
        with Conn(address) as c:
            assert c.ask("CREATE zoo") == b"OK"
            assert c.ask("PUT zoo password hunter2") == b"OK"
            assert c.ask("GET zoo password") == b"hunter2|OK"
    finally:
        impostor.close()
    assert b"hunter2" not in impostor.received
    assert b"FWD" not in impostor.received


def test_a_client_picks_a_node_that_answers_its_own_name(
    ns: tuple[str, int], pair: dict[str, Child], unique: str
) -> None:
    """A registration 'aaa...' (first in name order) pointing at another node's
    address is not chosen: the Client and pyrokv call use a node answering its name."""
    a, b = list(pair)
    sneaky = f"aaa{unique}"
    with naming.ns_proxy(*ns, 5.0) as proxy:
        proxy.register(
            naming.tasks_name(sneaky),
            proxy.lookup(naming.tasks_name(a)),
            metadata={naming.NODE_METADATA},
        )
    try:
        with Client(ns) as client:
            assert client.node != sneaky
            assert client.node in (a, b) or not client.node.startswith("aaa")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pyrokv",
                "call",
                "hello",
                "node_name",
                "--ns",
                f"{ns[0]}:{ns[1]}",
                "--config",
                os.devnull,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    finally:
        with naming.ns_proxy(*ns, 5.0) as proxy:
            proxy.remove(naming.tasks_name(sneaky))


@pytest.fixture(name="named_pki", scope="module")
def _named_pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """--tls-* options: nodes foo and bar with certificates naming them
    (DNS foo.pyrokv, bar.pyrokv), a client, and a node certificate naming no node."""
    where = tmp_path_factory.mktemp("namedpki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    options = {}
    for name, sans in (
        ("foo", ("127.0.0.1", "foo.pyrokv")),
        ("bar", ("127.0.0.1", "bar.pyrokv")),
        ("plain", ("127.0.0.1",)),
    ):
        leaf = ca.issue_cert(*sans)
        leaf.cert_chain_pems[0].write_to_path(str(where / f"{name}.pem"))
        leaf.private_key_pem.write_to_path(str(where / f"{name}.key"))
        options[name] = [
            "--tls-cert",
            str(where / f"{name}.pem"),
            "--tls-key",
            str(where / f"{name}.key"),
            "--tls-ca",
            str(where / "ca.pem"),
        ]
    return options


def test_over_tls_a_certificate_for_another_node_is_refused(
    named_pki: dict[str, list[str]], unique: str
) -> None:
    """A registration of node zzz pointing at foo's daemon: a client reaching zzz sees
    foo's certificate and refuses it (NodeIdentityError); foo itself is reached."""
    from pyrokv.tls import TLSSettings
    from pyrokv.wire import configure_tls

    children: list[Child] = []
    ns_child, tls_ns = spawn_nameserver(extra=named_pki["plain"])
    children.append(ns_child)
    try:
        table = "a..m=foo, n..z=bar"
        for name in ("foo", "bar"):
            children.append(spawn_node(name, tls_ns, table, extra=named_pki[name]))
        opts = named_pki["plain"]
        configure_tls(TLSSettings(opts[1], opts[3], opts[5]))
        try:
            with naming.ns_proxy(*tls_ns, 5.0) as proxy:
                foo_uri = proxy.lookup(naming.tasks_name("foo"))
                proxy.register(
                    naming.tasks_name(f"zzz{unique}"),
                    URI(str(foo_uri)),
                    metadata={naming.NODE_METADATA},
                )
            with Client(tls_ns, via="foo") as client:
                assert client.route("hello", "pyrokv.tasks.node_name") == "foo"
                assert client.route("world", "pyrokv.tasks.node_name") == "bar"
            with (
                Client(tls_ns, via=f"zzz{unique}") as client,
                pytest.raises(NodeIdentityError, match=r"foo\.pyrokv"),
            ):
                client.route("hello", "pyrokv.tasks.node_name")
        finally:
            configure_tls(None)
    finally:
        for child in reversed(children):
            child.stop()


def test_a_nodes_own_certificate_comes_from_its_section(
    named_pki: dict[str, list[str]], tmp_path: Path
) -> None:
    """[node NAME] tls_cert and tls_key give each node its own certificate: the
    node's daemon shows the one naming it."""
    import ssl

    foo, ca = named_pki["foo"], named_pki["foo"][5]
    config = tmp_path / "c.conf"
    config.write_text(
        f"[tls]\ncert = {named_pki['plain'][1]}\nkey = {named_pki['plain'][3]}\n"
        f"ca = {ca}\n\n[node foo]\ntls_cert = {foo[1]}\ntls_key = {foo[3]}\n"
    )
    ns_child, tls_ns = spawn_nameserver(extra=named_pki["plain"])
    node = None
    try:
        node = spawn_node("foo", tls_ns, "a..z=foo", config=str(config))
        ready = next(x for x in node.lines if x.startswith("READY foo "))
        uri = URI(ready.split()[2])
        context = ssl.create_default_context(cafile=ca)
        context.load_cert_chain(named_pki["plain"][1], named_pki["plain"][3])
        with (
            socket.create_connection((uri.host, uri.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=uri.host) as tls,
        ):
            names = [v for k, v in tls.getpeercert().get("subjectAltName", ())]
        assert "foo.pyrokv" in names
    finally:
        if node is not None:
            node.stop()
        ns_child.stop()
