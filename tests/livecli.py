"""Helpers of the live-table tests that drive ``pyrokv`` as a user would: the
command line as real processes, nodes as real processes, conditions with deadlines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import Pyro5.errors
from Pyro5.api import Proxy

from pyrokv.client import list_nodes
from pyrokv.cluster import Child, LocalCluster, spawn_node
from pyrokv.testing import Conn

T = TypeVar("T")

GUIDE = "a..m=foo, n..z=bar"
LISTEN = ["--listen", "127.0.0.1:0"]


def ns_flag(ns: tuple[str, int]) -> list[str]:
    """``--ns HOST:PORT`` for the command line."""
    return ["--ns", f"{ns[0]}:{ns[1]}"]


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYROKV_")}


def pyrokv(*argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pyrokv ARGV`` to its end, as a user would (no config around)."""
    return subprocess.run(
        [sys.executable, "-m", "pyrokv", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
        env=_environ(),
    )


def start(*argv: str) -> subprocess.Popen[str]:
    """Start ``python -m pyrokv ARGV`` without waiting for it (``communicate`` it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pyrokv", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        env=_environ(),
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have exited 0 (else fail, showing both)."""
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert result.stderr == "", result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The stderr of a command that must have exited ``code`` with one error line."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", result.stdout
    return result.stderr


def table_show(ns: tuple[str, int]) -> dict[str, Any]:
    """``pyrokv table show --json``, parsed (whatever its exit code)."""
    result = pyrokv("table", "show", "--json", *ns_flag(ns))
    assert result.returncode in (0, 1), (result.returncode, result.stderr)
    shown: dict[str, Any] = json.loads(result.stdout)
    return shown


def status(ns: tuple[str, int]) -> dict[str, dict[str, Any]]:
    """``pyrokv status --json``, one row per node name."""
    result = pyrokv("status", "--json", *ns_flag(ns))
    assert result.returncode in (0, 1), (result.returncode, result.stderr)
    return {row["name"]: row for row in json.loads(result.stdout)}


def table_set(
    ns: tuple[str, int], spec: str, *options: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """``pyrokv table set SPEC OPTIONS``."""
    return pyrokv("table", "set", spec, *options, *ns_flag(ns), timeout=timeout)


def wait_until(
    condition: Callable[[], T | None], timeout: float, what: str, every: float = 0.02
) -> T:
    """Poll ``condition`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(every)


def logged(child: Child, text: str, timeout: float = 20.0, after: int = 0) -> str:
    """Wait until ``child`` printed a line containing ``text`` (from line ``after``)."""

    def find() -> str | None:
        return next((line for line in child.lines[after:] if text in line), None)

    return wait_until(find, timeout, f"{child.name} prints {text!r}: {child.output()}")


def fill(address: tuple[str, int], names: Sequence[str], keys: int) -> None:
    """Create each bucket of ``names`` with ``keys`` keys ``k0``... set to the
    bucket's name, pipelined through the text port at ``address``."""
    with Conn(address, timeout=60) as conn:
        for at in range(0, len(names), 200):
            part = names[at : at + 200]
            lines = b"".join(
                b"CREATE %s\r\n" % name.encode()
                + b"".join(
                    b"PUT %s k%d %s\r\n" % (name.encode(), key, name.encode())
                    for key in range(keys)
                )
                for name in part
            )
            conn.expect(lines, b"OK\r\n" * (len(part) * (keys + 1)))


def check_all(
    address: tuple[str, int], names: Sequence[str], keys: int, *, timeout: float = 30
) -> None:
    """Every bucket of ``names`` holds its ``keys`` keys with their values, read
    through the text port at ``address`` (pipelined)."""
    with Conn(address, timeout=timeout) as conn:
        for name in names:
            conn.send(f"KEYS {name}\r\n".encode())
            count = conn.line()
            assert count == str(keys).encode(), (address, name, count)
            got = sorted(conn.line() for _ in range(keys))
            assert got == sorted(b"k%d" % k for k in range(keys)), (address, name)
            assert conn.line() == b"OK"
            assert conn.ask(f"GET {name} k{keys - 1}") == name.encode() + b"|OK"


def held(ns: tuple[str, int]) -> dict[str, set[str]]:
    """The buckets each live registered node holds in its registry (not its
    outbox); nodes that do not answer are left out."""
    found: dict[str, set[str]] = {}
    for node, uri in list_nodes(ns, 5.0).items():
        try:
            with Proxy(uri) as proxy:
                proxy._pyroTimeout = 5.0
                found[node] = set(proxy.run("pyrokv.tasks.buckets", [], None))
        except Pyro5.errors.CommunicationError:
            continue
    return found


def only_on_owners(ns: tuple[str, int], owner: Callable[[str], str]) -> None:
    """Every bucket any node holds lives on its owner only."""
    for node, buckets in held(ns).items():
        stray = sorted(b for b in buckets if owner(b) != node)
        assert stray == [], f"{node} holds buckets of other owners: {stray[:10]}"


def by_first_byte(spec: str) -> Callable[[str], str]:
    """The owner of a bucket by a first-byte table ``spec``."""
    from pyrokv.table import RoutingTable

    table = RoutingTable.parse(spec)
    return table.owner


@contextmanager
def cluster(
    nodes: dict[str, str | None], *, text: bool = True
) -> Iterator[LocalCluster]:
    """A :class:`LocalCluster` whose nodes serve text ports (``text``), stopped at the end."""
    extra = dict.fromkeys(nodes, LISTEN) if text else {}
    with LocalCluster(nodes, extra=extra) as running:
        yield running


def join(running: LocalCluster, name: str, table: str | None = None) -> Child:
    """Start node ``name`` into ``running`` as ``pyrokv node NAME --ns ...`` would,
    with the cluster secret and a text port; it is stopped with the cluster."""
    assert running.secret_file is not None
    child = spawn_node(
        name,
        running.ns,
        table,
        extra=["--cluster-secret-file", running.secret_file, *LISTEN],
    )
    running.nodes[name] = child
    return child


def text(running: LocalCluster, name: str) -> tuple[str, int]:
    """Node ``name``'s text address."""
    address = running.nodes[name].listen_address()
    assert address is not None
    return address
