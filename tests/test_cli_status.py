"""pyrokv status as a health check: exit codes, reasons, --json and --prune, on a
cluster of its own (a node is killed)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pyrokv.cli import STATUS_FIELDS, main
from pyrokv.client import list_nodes
from pyrokv.cluster import LocalCluster, spawn_nameserver

pytestmark = pytest.mark.distributed

TABLE = "a..m=foo, n..z=bar"


def status(ns: tuple[str, int], *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``pyrokv status --ns NS ARGV`` as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "pyrokv", "status", "--ns", f"{ns[0]}:{ns[1]}", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


@pytest.fixture(name="cluster")
def _cluster() -> Iterator[LocalCluster]:
    """foo and bar with text ports, in a name server of their own (bar gets killed)."""
    listen = ["--listen", "127.0.0.1:0"]
    with LocalCluster(
        {"foo": TABLE, "bar": TABLE}, {"foo": listen, "bar": listen}
    ) as c:
        yield c


def test_all_alive_exits_0_with_every_column(cluster: LocalCluster) -> None:
    """Every node answers: exit 0, a row each with text address, pid, keys, table version."""
    done = status(cluster.ns)
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "NODE",
        "ADDRESS",
        "TEXT",
        "STATE",
        "PID",
        "BUCKETS",
        "KEYS",
        "TABLE_VERSION",
        "TABLE",
    ]
    rows = {line.split()[0]: line.split(maxsplit=8) for line in lines[1:]}
    assert set(rows) == {"bar", "foo"}
    foo = rows["foo"]
    text = cluster.nodes["foo"].listen_address()
    assert text is not None
    assert foo[2] == f"{text[0]}:{text[1]}"
    assert foo[3:5] == ["alive", str(cluster.nodes["foo"].proc.pid)]
    assert foo[7:] == ["0", TABLE]


def test_a_killed_node_exits_1_with_its_reason(cluster: LocalCluster) -> None:
    """With bar killed: exit 1, bar's row says down, and the reason is printed."""
    cluster.nodes["bar"].kill()
    done = status(cluster.ns)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    assert rows["bar"][3:9] == ["down", "-", "-", "-", "-", "-"]
    assert rows["foo"][3] == "alive"
    assert "bar is down: cannot connect to" in done.stdout
    assert "Connection refused" in done.stdout


def test_json_has_one_object_per_node(cluster: LocalCluster) -> None:
    """--json: a list of objects with exactly the documented fields; down has a reason."""
    text = cluster.nodes["bar"].listen_address()
    cluster.nodes["bar"].kill()
    done = status(cluster.ns, "--json")
    assert done.returncode == 1
    found = json.loads(done.stdout)
    assert [node["name"] for node in found] == ["bar", "foo"]
    assert all(tuple(node) == STATUS_FIELDS for node in found)
    bar, foo = found
    assert text is not None
    assert bar["text"] == f"{text[0]}:{text[1]}"  # from its registration
    assert bar["state"] == "down" and "Connection refused" in bar["reason"]
    assert [bar[k] for k in STATUS_FIELDS[5:]] == [None] * 6
    assert foo["state"] == "alive" and foo["reason"] is None
    assert foo["pid"] == cluster.nodes["foo"].proc.pid
    assert (foo["buckets"], foo["keys"], foo["table_version"]) == (0, 0, 0)
    assert foo["table"] == TABLE
    assert isinstance(foo["uptime_s"], float)
    assert foo["address"] == str(list_nodes(cluster.ns)["foo"].location)


def test_prune_removes_the_dead_registrations_and_says_which(
    cluster: LocalCluster,
) -> None:
    """--prune removes bar (down twice) from the name server, says so; foo stays."""
    address = list_nodes(cluster.ns)["bar"].location
    cluster.nodes["bar"].kill()
    done = status(cluster.ns, "--prune")
    assert done.returncode == 1  # what it found: a node was down
    assert (
        f"pruned bar: removed its registrations (at {address}) from the name server"
        in done.stdout
    )
    assert list(list_nodes(cluster.ns)) == ["foo"]
    again = status(cluster.ns, "--prune", "--json")
    assert again.returncode == 0
    assert [(n["name"], n["pruned"]) for n in json.loads(again.stdout)] == [
        ("foo", False)
    ]


def test_no_node_registered_exits_1() -> None:
    """A name server with no node: exit 1, saying so; --json prints an empty list."""
    child, ns = spawn_nameserver()
    try:
        done = status(ns)
        assert done.returncode == 1
        assert (
            done.stdout
            == f"no nodes registered in the name server at {ns[0]}:{ns[1]}\n"
        )
        as_json = status(ns, "--json")
        assert (as_json.returncode, json.loads(as_json.stdout)) == (1, [])
    finally:
        child.stop()


def test_no_name_server_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    """No name server at --ns: exit 3 and the usual message; call still exits 1."""
    assert main(["status", "--ns", "127.0.0.1:1", "--config", "/dev/null"]) == 3
    assert capsys.readouterr().err.startswith(
        "pyrokv: NameServerUnavailableError: cannot reach the name server at "
        "127.0.0.1:1"
    )
    assert main(["status", "--json", "--ns", "127.0.0.1:1"]) == 3
    assert capsys.readouterr().out == ""


def test_a_text_port_is_not_a_name_server(cluster: LocalCluster) -> None:
    """--ns pointed at a node's text port: exit 3, saying it is not a Pyro5 name server."""
    text = cluster.nodes["foo"].listen_address()
    assert text is not None
    done = status(text)
    assert done.returncode == 3
    assert done.stderr == (
        f"pyrokv: NameServerUnavailableError: {text[0]}:{text[1]} answers, but it "
        "is not a Pyro5 name server (invalid data): point --ns at the name "
        "server's address (a node's text or Pyro5 port will not do)\n"
    )
    pyro = list_nodes(cluster.ns)["foo"]
    done = status((pyro.host, pyro.port))
    assert done.returncode == 3
    assert "answers, but it is not a Pyro5 name server" in done.stderr
    node = subprocess.run(  # does not wait --ns-wait for it: it will never be one
        [sys.executable, "-m", "pyrokv", "node", "x", "--ns", f"{text[0]}:{text[1]}"],
        capture_output=True,
        text=True,
        timeout=20,
        cwd="/",
    )
    assert node.returncode == 1
    assert "answers, but it is not a Pyro5 name server" in node.stderr
