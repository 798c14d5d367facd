"""A whole cluster under mutual TLS, started through the command line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from pyrokv.cluster import Child, spawn_nameserver, spawn_node
from pyrokv.testing import Conn

pytestmark = pytest.mark.distributed


@pytest.fixture(name="certs", scope="module")
def _certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """--tls-* options for the cluster (127.0.0.1) and a client, and a rogue's."""
    where = tmp_path_factory.mktemp("certs")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    options = {}
    for name, issuer in (("node", ca), ("client", ca), ("rogue", other)):
        leaf = issuer.issue_cert("127.0.0.1")
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


@pytest.fixture(name="tls_cluster", scope="module")
def _tls_cluster(certs: dict[str, list[str]]) -> Iterator[tuple[str, tuple[str, int]]]:
    children: list[Child] = []
    try:
        ns_child, ns = spawn_nameserver(extra=certs["node"])
        children.append(ns_child)
        table = "a..m=foo, n..z=bar"
        for name in ("foo", "bar"):
            children.append(
                spawn_node(
                    name, ns, table, extra=[*certs["node"], "--listen", "127.0.0.1:0"]
                )
            )
        text = children[1].listen_address()
        assert text is not None, children[1].output()
        yield f"{ns[0]}:{ns[1]}", text
    finally:
        for child in reversed(children):
            child.stop()


def call(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pyrokv",
            "call",
            *args,
            "--ns",
            ns,
            "--timeout",
            "3",
            "--config",
            "/dev/null",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_routing_over_mutual_tls(
    tls_cluster: tuple[str, tuple[str, int]], certs: dict[str, list[str]]
) -> None:
    """With the cluster's CA, calls route across the nodes; without a certificate they are refused."""
    ns, _ = tls_cluster
    assert (
        call(ns, "hello", "node_name", "--via", "bar", *certs["client"]).stdout
        == "foo\n"
    )
    assert (
        call(ns, "world", "node_name", "--via", "foo", *certs["client"]).stdout
        == "bar\n"
    )
    plain = call(ns, "hello", "node_name")
    assert plain.returncode == 1
    assert plain.stderr.startswith(
        "pyrokv: NameServerUnavailableError: cannot reach the name server"
    )
    rogue = call(ns, "hello", "node_name", *certs["rogue"])
    assert rogue.returncode == 1
    assert "Traceback" not in rogue.stderr


def test_text_protocol_routes_over_pyro_when_tls_is_on(
    tls_cluster: tuple[str, tuple[str, int]],
) -> None:
    """With TLS, bar forwards text requests to foo over Pyro5 (inside TLS), not a peer link."""
    _, text = tls_cluster
    with Conn(text) as c:
        assert c.ask("CREATE apple") == b"OK"  # a..m: foo, reached from bar
        assert c.ask("PUT apple k v") == b"OK"
        assert c.ask("GET apple k") == b"v|OK"
        # A client cannot speak the peer protocol, under TLS as without it.
        assert c.ask("FWD 1000 x GET apple k") == b"UNKNOWN COMMAND"
        assert c.ask("GET apple k") == b"v|OK"


def test_partial_tls_options_are_a_usage_error(tmp_path: Path) -> None:
    """Only some of the three options: exit 2 naming the missing ones."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyrokv",
            "status",
            "--tls-cert",
            str(tmp_path / "x.pem"),
            "--ns",
            "127.0.0.1:1",
            "--config",
            "/dev/null",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert (
        "TLS needs all of --tls-cert, --tls-key and --tls-ca; missing --tls-key, --tls-ca"
        in done.stderr
    )
