"""pyrokv across several hosts: the name server, foo, bar and the client each in its own
network namespace, cabled to one bridge, talking over real (TEST-NET) addresses.

Needs root to make namespaces; skips with the reason where it cannot. Nothing is
added to the machine's own namespace: the bridge lives in a switch namespace, and
every namespace made is deleted at the end of each test (see tests/netns.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network

import pytest
from netns import (
    Host,
    Lab,
    LabError,
    free_subnet,
    poll,
    root_networks,
    unavailable_reason,
)
from netns import ip as run_ip

pytestmark = pytest.mark.distributed

GUIDE_TABLE = "a..m=foo, n..z=bar"
NS_PORT = 9090
TEXT_PORT = 4040
#: The nodes' --timeout, and the client's: the longest a routed request may take.
TIMEOUT = 3.0
#: How long after a cable is plugged back in the cluster must serve again.
RECOVERY = 20.0


@dataclass
class Cluster:
    """The lab, its hosts, and where the name server and text ports are."""

    lab: Lab
    ns: Host
    foo: Host
    bar: Host
    client: Host
    ready: dict[str, str]  # node -> its READY line

    @property
    def ns_address(self) -> str:
        return f"{self.ns.address}:{NS_PORT}"

    def text_address(self, node: str) -> tuple[str, int]:
        return (getattr(self, node).address, TEXT_PORT)

    def call(self, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
        """``pyrokv call ARGS`` from the client host; its result and wall time."""
        started = time.monotonic()
        done = self.client.pyrokv(
            "call",
            *args,
            "--ns",
            self.ns_address,
            "--timeout",
            str(TIMEOUT),
            "--config",
            "/dev/null",
        )
        return done, time.monotonic() - started


def _root_links() -> set[str]:
    return {
        line.split(":")[1].strip().split("@")[0]
        for line in run_ip("-o", "link", "show").stdout.splitlines()
        if line.strip()
    }


@pytest.fixture(name="lab")
def _lab() -> Iterator[Lab]:
    """A fresh switch namespace with a bridge, on a TEST-NET the machine does not use."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"multi-host tests need network namespaces: {reason}")
    used = root_networks()
    subnet = free_subnet(used)
    if subnet is None:
        pytest.skip(
            "every TEST-NET (198.51.100.0/24, 203.0.113.0/24, 192.0.2.0/24) overlaps "
            f"a network of this machine: {', '.join(map(str, used))}"
        )
    links_before = _root_links()
    lab = Lab(subnet)
    try:
        lab.start()
        yield lab
    finally:
        lab.close()
    # Nothing of the lab is left, in the namespaces list or in the root namespace.
    assert not [n for n in Lab.namespaces() if n.startswith(lab.tag)]
    assert not [n for n in root_networks() if n.overlaps(subnet)]
    assert not {n for n in _root_links() - links_before if n.startswith("sw-")}


@pytest.fixture(name="cluster")
def _cluster(lab: Lab) -> Cluster:
    """The guide's cluster on four hosts: name server, foo (a..m), bar (n..z), client.

    Each node binds its host's address for Pyro5 (any free port) and for the text
    protocol (port 4040), and finds the name server at its host's address.
    """
    hosts = {name: lab.add_host(name) for name in ("ns", "foo", "bar", "client")}
    ns = hosts["ns"]
    server = ns.spawn_pyrokv(
        "nameserver",
        "--host",
        ns.address,
        "--port",
        str(NS_PORT),
        "--config",
        "/dev/null",
    )
    assert server.wait_for("READY ") == f"READY nameserver {ns.address}:{NS_PORT}"
    nodes = {
        name: hosts[name].spawn_pyrokv(
            "node",
            name,
            "--host",
            hosts[name].address,
            "--port",
            "0",
            "--ns",
            f"{ns.address}:{NS_PORT}",
            "--table",
            GUIDE_TABLE,
            "--listen",
            f"{hosts[name].address}:{TEXT_PORT}",
            "--timeout",
            str(TIMEOUT),
            "--config",
            "/dev/null",
        )
        for name in ("foo", "bar")
    }
    ready = {}
    for name, node in nodes.items():
        ready[name] = node.wait_for(f"READY {name} ")
        listen = node.listen_address()
        assert listen == (hosts[name].address, TEXT_PORT), node.output()
    return Cluster(lab, ns, hosts["foo"], hosts["bar"], hosts["client"], ready)


def test_routes_across_hosts(cluster: Cluster) -> None:
    """Nodes on different hosts register real addresses and route to each other;
    the client reaches them only over the bridge."""
    c = cluster
    # Each node is registered at its own host's address, not at loopback.
    for name in ("foo", "bar"):
        host = getattr(c, name)
        assert re.fullmatch(
            rf"READY {name} PYRO:pyrokv\.{name}\.tasks@{re.escape(host.address)}:\d+",
            c.ready[name],
        ), c.ready[name]
    # The client host is a host of its own: nothing of the cluster on its loopback.
    assert c.client.can_reach(*c.text_address("foo"))
    assert not c.client.can_reach("127.0.0.1", TEXT_PORT)
    assert not c.client.can_reach("127.0.0.1", NS_PORT)

    done, _ = c.call("hello", "node_name", "--via", "bar")
    assert (done.returncode, done.stdout, done.stderr) == (0, "foo\n", "")
    done, _ = c.call("world", "node_name", "--via", "foo")
    assert (done.returncode, done.stdout, done.stderr) == (0, "bar\n", "")

    status = c.client.pyrokv("status", "--ns", c.ns_address, "--config", "/dev/null")
    assert status.returncode == 0, status.stderr
    rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
    for name in ("foo", "bar"):
        address, _text, state = rows[name][1:4]
        assert address.startswith(f"{getattr(c, name).address}:"), status.stdout
        assert state == "alive", status.stdout

    # The text protocol on foo's address: zoo is routed to bar, apple is foo's own.
    replies = c.client.text(
        c.text_address("foo"),
        "CREATE zoo",
        "PUT zoo k v",
        "GET zoo k",
        "CREATE apple",
        "PUT apple a 1",
        "GET apple a",
        "GET 1abc x",
    )
    assert [r.reply for r in replies] == [
        "OK",
        "OK",
        "v|OK",
        "OK",
        "OK",
        "1|OK",
        "ERROR could not find entry for '1abc' in table [a..m -> foo, n..z -> bar]: "
        "start the bucket name with a byte the table covers, or add an entry for it",
    ]
    # zoo lives on bar and apple on foo: bar serves zoo itself and routes apple back.
    replies = c.client.text(c.text_address("bar"), "GET zoo k", "GET apple a")
    assert [r.reply for r in replies] == ["v|OK", "1|OK"]
    done, _ = c.call("zoo", "get", "zoo", "k", "--via", "foo")
    assert (done.returncode, done.stdout) == (0, "v\n")
    done, _ = c.call("apple", "buckets", "--via", "bar")  # runs on foo
    assert (done.returncode, done.stdout) == (0, "['apple']\n")
    done, _ = c.call("zoo", "buckets", "--via", "foo")  # runs on bar
    assert (done.returncode, done.stdout) == (0, "['zoo']\n")


def test_link_down_fails_in_time_and_recovers(
    cluster: Cluster, record_property: Callable[[str, object], None]
) -> None:
    """With bar's cable pulled, requests for bar's buckets fail within the timeout
    naming bar, foo's buckets are still served; plugged back in, bar serves again."""
    c = cluster

    def note(name: str, seconds: float) -> None:
        """Keep a timing: in the junit report, and printed (pytest -rP shows it)."""
        record_property(name, round(seconds, 3))
        print(f"{name}: {seconds:.3f}s")

    foo_text = c.text_address("foo")
    replies = c.client.text(
        foo_text, "CREATE zoo", "PUT zoo k v", "CREATE apple", "PUT apple a 1"
    )
    assert [r.reply for r in replies] == ["OK"] * 4

    c.lab.link("bar", up=False)
    assert c.lab.link_state("bar")[0] == "down"

    # Text protocol: foo's route to bar runs out of time and says so; then foo's own
    # bucket on the same connection is answered at once. (Only reads go to bar while
    # its cable is out: a write that times out may still arrive once it is back.)
    routed, local = c.client.text(foo_text, "GET zoo k", "GET apple a")
    assert routed.reply.startswith("ERROR node 'bar' "), routed
    assert routed.seconds < TIMEOUT + 2, routed
    assert local.reply == "1|OK"
    assert local.seconds < 1.0, local
    note("text_failure_seconds", routed.seconds)
    print(f"text reply: {routed.reply}")

    # The command line: a NodeUnavailableError (timed out, or unreachable) naming
    # bar, within the timeout.
    done, seconds = c.call("world", "node_name", "--via", "foo")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert re.match(
        r"pyrokv: Node(Timeout|Unreachable)Error: node 'bar' ", done.stderr
    ), done.stderr
    assert "Traceback" not in done.stderr
    assert seconds < TIMEOUT + 2, (seconds, done.stderr)
    note("call_failure_seconds", seconds)
    print(f"call error: {done.stderr.strip()}")
    done, _ = c.call("hello", "node_name", "--via", "foo")
    assert (done.returncode, done.stdout) == (0, "foo\n")

    c.lab.link("bar", up=True)
    plugged = time.monotonic()

    def text_served() -> bool:
        [reply] = c.client.text(foo_text, "GET zoo k")
        return reply.reply == "v|OK"

    poll("foo serving bar's bucket zoo again", text_served, RECOVERY)
    note("text_recovery_seconds", time.monotonic() - plugged)

    def call_served() -> bool:
        done, _ = c.call("world", "node_name", "--via", "foo")
        return (done.returncode, done.stdout) == (0, "bar\n")

    poll("pyrokv call reaching bar again", call_served, RECOVERY)
    note("call_recovery_seconds", time.monotonic() - plugged)
    # And the other way: bar routes foo's buckets, and serves zoo over its own port.
    replies = c.client.text(c.text_address("bar"), "GET apple a", "GET zoo k")
    assert [r.reply for r in replies] == ["1|OK", "v|OK"]


def test_lab_leaves_nothing_behind() -> None:
    """A lab that made hosts deletes every namespace it made, even with a process in one."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"multi-host tests need network namespaces: {reason}")
    subnet = free_subnet(root_networks())
    if subnet is None:
        pytest.skip("every TEST-NET overlaps a network of this machine")
    with Lab(subnet) as lab:
        host = lab.add_host("one")
        sleeper = host.spawn(["sleep", "600"], "sleep")
        assert sleeper.alive()
        made = [n for n in Lab.namespaces() if n.startswith(lab.tag)]
        assert sorted(made) == sorted([lab.switch, host.netns])
    assert not sleeper.alive()
    assert not [n for n in Lab.namespaces() if n.startswith(lab.tag)]
    with pytest.raises(LabError, match="ip netns exec"):
        run_ip("netns", "exec", host.netns, "true")


def test_subnet_choice_avoids_the_machines_networks() -> None:
    """The lab takes the first TEST-NET that overlaps no address or route of the
    machine (the default route aside), and none when all do."""
    used = [IPv4Network("192.0.2.0/24")]
    assert free_subnet(used) == IPv4Network("198.51.100.0/24")
    used.append(IPv4Network("198.51.0.0/16"))
    assert free_subnet(used) == IPv4Network("203.0.113.0/24")
    used.append(IPv4Network("203.0.113.7/32"))
    assert free_subnet(used) is None
    if shutil.which("ip") is not None:  # reading the machine's networks needs no root
        assert all(n.prefixlen > 0 for n in root_networks())
