"""The direct commands (create, put, get, delete, keys) route by the bucket they act
on, with redis-cli's habits; pyrokv tasks lists what a node runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pyrokv.client import Client
from pyrokv.cluster import spawn_node

pytestmark = pytest.mark.distributed


def pyrokv(ns: tuple[str, int], *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``pyrokv ARGV --ns NS`` as a user would, with no config file around."""
    return subprocess.run(
        [sys.executable, "-m", "pyrokv", *argv, "--ns", f"{ns[0]}:{ns[1]}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


def test_put_lands_on_the_owner_of_its_bucket(
    guide: tuple[str, int], unique: str
) -> None:
    """pyrokv put s... sent via foo lands on bar, the owner of s..., and prints OK."""
    bucket = f"shopping{unique}"
    assert pyrokv(guide, "create", bucket, "--via", "foo").stdout == "OK\n"
    done = pyrokv(guide, "put", bucket, "milk", "99", "--via", "foo")
    assert (done.returncode, done.stdout, done.stderr) == (0, "OK\n", "")
    on_bar = pyrokv(guide, "call", bucket, "get", bucket, "milk", "--via", "bar")
    assert on_bar.stdout == "99\n"
    on_foo = pyrokv(guide, "call", "apple", "lookup", bucket)  # runs on foo
    assert on_foo.stdout == "False\n"
    assert pyrokv(guide, "get", bucket, "milk", "--via", "foo").stdout == "99\n"


def test_put_stores_the_text_given(guide: tuple[str, int], unique: str) -> None:
    """put stores VALUE as the string typed, spaces and brackets included; call reads literals."""
    bucket = f"apple{unique}"
    assert pyrokv(guide, "create", bucket).returncode == 0
    assert pyrokv(guide, "put", bucket, "list", "[1, 2]").returncode == 0
    assert pyrokv(guide, "put", bucket, "words", "two words").returncode == 0
    assert pyrokv(guide, "call", bucket, "put", bucket, "n", "[1, 2]").returncode == 0
    with Client(guide) as client:
        assert client.get(bucket, "list") == "[1, 2]"
        assert client.get(bucket, "words") == "two words"
        assert client.get(bucket, "n") == [1, 2]
    assert pyrokv(guide, "get", bucket, "words").stdout == "two words\n"
    assert pyrokv(guide, "get", bucket, "n").stdout == "[1, 2]\n"


def test_get_of_a_missing_key_or_bucket_prints_nothing_and_exits_1(
    guide: tuple[str, int], unique: str
) -> None:
    """get of a missing key, or of a bucket never created: no output at all, exit 1."""
    bucket = f"nuts{unique}"
    assert pyrokv(guide, "create", bucket).returncode == 0
    for argv in (("get", bucket, "nope"), ("get", f"never{unique}", "k")):
        done = pyrokv(guide, *argv)
        assert (done.returncode, done.stdout, done.stderr) == (1, "", "")


def test_keys_prints_one_key_per_line_sorted(
    guide: tuple[str, int], unique: str
) -> None:
    """keys prints each key of the bucket on a line, sorted; delete prints OK and removes."""
    bucket = f"zoo{unique}"
    assert pyrokv(guide, "create", bucket).returncode == 0
    for key in ("zebra", "ant", "lion"):
        assert pyrokv(guide, "put", bucket, key, "1", "--via", "foo").returncode == 0
    assert pyrokv(guide, "keys", bucket).stdout == "ant\nlion\nzebra\n"
    deleted = pyrokv(guide, "delete", bucket, "lion")
    assert (deleted.returncode, deleted.stdout) == (0, "OK\n")
    assert pyrokv(guide, "delete", bucket, "lion").stdout == "OK\n"  # gone already
    assert pyrokv(guide, "keys", bucket).stdout == "ant\nzebra\n"
    assert pyrokv(guide, "keys", f"empty{unique}").returncode == 1


def test_errors_are_reported_as_today(guide: tuple[str, int], unique: str) -> None:
    """A bucket with no table entry, a missing bucket: the error on stderr, exit 1."""
    done = pyrokv(guide, "put", "1abc", "k", "v")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(
        "pyrokv: NoRouteError: could not find entry for '1abc'"
    )
    missing = pyrokv(guide, "put", f"never{unique}", "k", "v")
    assert missing.returncode == 1
    assert missing.stderr.startswith("pyrokv: BucketNotFoundError: bucket 'never")
    via = pyrokv(guide, "create", "b", "--via", f"nosuch{unique}")
    assert via.returncode == 1
    assert f"node 'nosuch{unique}' is not registered" in via.stderr


def test_tasks_lists_what_a_node_runs_with_signatures(
    guide: tuple[str, int], unique: str
) -> None:
    """pyrokv tasks lists the public functions of a node's allowlisted modules, sorted."""
    done = pyrokv(guide, "tasks", "--via", "foo")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    names = [line.split("(")[0] for line in lines]
    assert names == sorted(names)
    assert "pyrokv.tasks.get" in names and "pyrokv.tasks.node_name" in names
    get = lines[names.index("pyrokv.tasks.get")]
    assert get.startswith("pyrokv.tasks.get(bucket: str, key: Any) -> Any  ")
    assert get.endswith("The value of ``key`` in ``bucket`` on this node, or None.")
    assert not any(name.split(".")[-1].startswith("_") for name in names)
    name = f"allow{unique}"
    node = spawn_node(name, guide, f"a..z={name}", extra=["--allow", "json"])
    try:
        more = pyrokv(guide, "tasks", "--via", name).stdout.splitlines()
        assert any(
            line.startswith("json.dumps(obj, *, skipkeys=False") for line in more
        )
        assert not any(line.startswith("json.JSONDecoder") for line in more)  # a class
    finally:
        node.stop()
