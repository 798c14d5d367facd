"""Fixtures: a name server and the guide's two nodes, started on free ports and always stopped.

``pytest --ns HOST:PORT`` runs the distributed tests against a cluster that is already
running (nodes foo a..m and bar n..z registered there) instead of spawning one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from pyrokv.cluster import Child, spawn_nameserver, spawn_node, write_secret
from pyrokv.naming import parse_address

GUIDE_TABLE = "a..m=foo, n..z=bar"

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--ns",
        metavar="HOST:PORT",
        default=None,
        help="run distributed tests against this running name server, whose cluster "
        "has nodes foo (a..m) and bar (n..z), instead of spawning one",
    )


@pytest.fixture(name="ns", scope="session")
def _ns(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """The name server's (host, port): given by --ns, or spawned for the session."""
    given = request.config.getoption("--ns")
    if given:
        yield parse_address(given)
        return
    child, address = spawn_nameserver()
    try:
        yield address
    finally:
        child.stop()


@pytest.fixture(name="guide", scope="session")
def _guide(
    request: pytest.FixtureRequest, ns: tuple[str, int]
) -> Iterator[tuple[str, int]]:
    """The guide's cluster: foo owns a..m and bar owns n..z; yields the name server."""
    if request.config.getoption("--ns"):
        yield ns
        return
    children: list[Child] = []
    try:
        for name in ("foo", "bar"):
            children.append(spawn_node(name, ns, GUIDE_TABLE))
        yield ns
    finally:
        for child in children:
            child.stop()


@pytest.fixture(name="secret_file", scope="session")
def _secret_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A cluster secret file: nodes given it open peer links to each other."""
    return write_secret(str(tmp_path_factory.mktemp("secret") / "cluster.secret"))


@pytest.fixture(name="unique")
def _unique() -> str:
    """A short suffix that makes node and bucket names unique to one test."""
    return uuid.uuid4().hex[:8]
