"""A node raises its soft limit of open files to what its connections may need."""

from __future__ import annotations

import os
import shlex
import sys

import pytest

from pyrokv.cluster import Child, spawn_nameserver
from pyrokv.defaults import DEFAULT_WORKERS
from pyrokv.node import open_files_wanted

pytestmark = pytest.mark.distributed


def open_files_limits(pid: int) -> tuple[int, int]:
    """Soft and hard limit of open files of process ``pid``, from /proc/PID/limits."""
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError(f"no open files limit for {pid}")


def test_a_node_started_at_256_open_files_raises_its_soft_limit() -> None:
    """pyrokv node started with a soft limit of 256 open files runs with enough for
    its 1,000 text connections (as far as the hard limit allows)."""
    hard = open_files_limits(os.getpid())[1]
    want = min(open_files_wanted(DEFAULT_WORKERS), hard)
    if hard <= 256:
        pytest.skip(f"the hard limit of open files is {hard}: nothing to raise")
    ns_child, ns = spawn_nameserver()
    args = ["node", "lim", "--config", os.devnull, "--ns", f"{ns[0]}:{ns[1]}"]
    command = shlex.join(
        [sys.executable, "-u", "-m", "pyrokv", *args, "--table", "a..z=lim"]
    )
    node = Child(["sh", "-c", f"ulimit -Sn 256 && exec {command}"], "lim", pyrokv=False)
    try:
        node.wait_for("READY lim ")
        assert open_files_limits(node.proc.pid) == (want, hard)
    finally:
        node.stop()
        ns_child.stop()
