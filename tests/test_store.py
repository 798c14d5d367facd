"""A node's store of record (pyrokv.store) and its durable registry (pyrokv.durable),
in this process: typed values, group commit, hand-offs, meta values, bad dirs and
failed commits."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tlstesting import wait_until

from pyrokv import (
    BucketNotFoundError,
    CorruptDataError,
    DataDirError,
    DataDirInUseError,
    DataFormatError,
    DiskError,
)
from pyrokv import store as store_module
from pyrokv.durable import DurableRegistry
from pyrokv.store import DB_FILE, FORMAT, Store, decode, encode, encode_key

MODES = ("always", "everysec", "no")

#: Values as a Python client may store them, each with its type.
TYPED: dict[Any, Any] = {
    "text": "plain",
    "utf8": "grüße ✓",
    "escaped \udcff": "\x00\udc80\udcfe",  # text-protocol bytes that are not UTF-8
    1: 2,
    -(1 << 70): 1 << 80,  # past SQLite's 64 bits
    2.5: 0.1,
    (1, "x"): [1, {"a": None}],
    "none": None,
    "bool": True,
    "false": False,
    "bytes": b"\x00\xff",
    "tuple": (1, 2.0, "3"),
    "nan-free float": -0.0,
}


def open_registry(path: Path, fsync: str = "everysec") -> DurableRegistry:
    """A durable registry on data dir ``path`` (its store opened and loaded)."""
    return DurableRegistry(Store.open(str(path), fsync))


@pytest.fixture(name="data")
def _data(tmp_path: Path) -> Path:
    """A data dir path that does not exist yet."""
    return tmp_path / "data"


@pytest.fixture(name="opened")
def _opened() -> Iterator[list[DurableRegistry]]:
    """Registries a test opens; their stores are closed at its end."""
    registries: list[DurableRegistry] = []
    yield registries
    for registry in registries:
        registry.store.close()


@given(st.text() | st.integers() | st.floats(allow_nan=False) | st.binary())
def test_encode_then_decode_gives_back_the_same_value_and_type(value: Any) -> None:
    """Text (lone surrogates too), ints of any size, floats and bytes come back as
    they went in, with their type."""
    back = decode(encode(value))
    assert type(back) is type(value)
    assert back == value


def test_a_str_is_stored_as_text_and_bool_keys_as_the_ints_they_equal() -> None:
    """Plain text is SQLite TEXT (no tag); True as a key is 1, the key a dict
    holds it as, while True as a value keeps its type."""
    assert encode("milk") == "milk"
    assert encode_key(True) == 1
    assert decode(encode(True)) is True


@pytest.mark.parametrize("fsync", MODES)
def test_values_and_keys_keep_their_type_across_a_restart(
    data: Path, fsync: str
) -> None:
    """Every key and value comes back with its type, never as its repr."""
    registry = open_registry(data, fsync)
    registry.create("b")
    for key, value in TYPED.items():
        registry.put("b", key, value)
    registry.store.close()
    again = open_registry(data, fsync)
    try:
        got = again._bucket("b")
        assert set(got) == set(TYPED)
        for key, value in TYPED.items():
            assert type(got[key]) is type(value), key
            assert got[key] == value, key
        assert [type(k) for k in got if k == (1, "x")] == [tuple]
    finally:
        again.store.close()


@pytest.mark.parametrize("fsync", MODES)
def test_writes_deletes_and_buckets_survive_a_close(data: Path, fsync: str) -> None:
    """An empty bucket, a key written twice, a deleted key: all as they were."""
    registry = open_registry(data, fsync)
    registry.create("empty")
    registry.create("b")
    registry.put("b", "k", "1")
    registry.put("b", "k", "2")
    registry.put("b", "gone", "x")
    assert registry.delete("b", "gone") == "x"
    assert registry.delete("b", "never") is None
    with pytest.raises(BucketNotFoundError):
        registry.put("nosuch", "k", "v")
    registry.store.close()
    again = open_registry(data, fsync)
    try:
        assert again.buckets() == ["b", "empty"]
        assert again.get("b", "k") == "2"
        assert again.lookup("empty")
        assert again.key_count() == 1
    finally:
        again.store.close()


@pytest.mark.parametrize("fsync", MODES)
def test_extract_and_install_are_durable(data: Path, fsync: str) -> None:
    """A bucket extracted is gone from disk too; one installed is there, replacing
    a bucket of the same name."""
    registry = open_registry(data, fsync)
    for name in ("apple", "banana", "cherry"):
        registry.create(name)
        registry.put(name, "k", name)
    taken = registry.extract(["apple", "nosuch", "banana"])
    assert taken == {"apple": {"k": "apple"}, "banana": {"k": "banana"}}
    registry.install({"cherry": {"new": 1}, "date": {"d": (1, 2)}})
    registry.store.close()
    again = open_registry(data, fsync)
    try:
        assert again.buckets() == ["cherry", "date"]
        assert again.keys("cherry") == ["new"]
        assert again.get("date", "d") == (1, 2)
    finally:
        again.store.close()


def test_meta_values_are_kept_on_disk(data: Path) -> None:
    """meta_set returns once the value is on disk; meta_get reads it after a restart."""
    registry = open_registry(data)
    assert registry.store.meta_get("table_version") is None
    registry.store.meta_set("table_version", 3)
    registry.store.meta_set("table", "a..m=foo, n..z=bar")
    assert registry.store.meta_get("table_version") == 3
    registry.store.close()
    again = open_registry(data)
    try:
        assert again.store.meta_get("table_version") == 3
        assert again.store.meta_get("table") == "a..m=foo, n..z=bar"
        assert again.store.meta_get("nothing", "default") == "default"
    finally:
        again.store.close()


def test_writes_that_arrive_during_a_commit_share_the_next(
    data: Path, opened: list[DurableRegistry]
) -> None:
    """Group commit: 2,000 writes in a row take far fewer commits, and every write
    is counted as committed once the store closes."""
    registry = open_registry(data)
    opened.append(registry)
    registry.create("b")
    for i in range(2000):
        registry.put("b", i, i)
    store = registry.store
    store.close()
    assert store.writes_committed == 2001
    assert store.commits < 1000
    assert store.stats()["fsync"] == "everysec"


def test_a_second_store_on_a_dir_in_use_is_refused_naming_the_pid(
    data: Path, opened: list[DurableRegistry]
) -> None:
    """The dir's lock file holds the pid of the process that uses it."""
    opened.append(open_registry(data))
    with pytest.raises(
        DataDirInUseError, match=f"{data} is in use by process {os.getpid()}"
    ):
        Store.open(str(data))


def test_a_dir_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    """A data dir inside a regular file: DataDirError naming the dir."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataDirError, match=r"cannot create the data dir .*file/data"):
        Store.open(str(tmp_path / "file" / "data"))


def digest(path: Path) -> str:
    """The file's SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_that_is_not_a_database_is_refused_and_left_as_is(data: Path) -> None:
    """Garbage where the database should be: CorruptDataError naming it; the file
    is unchanged and the dir is free again."""
    data.mkdir()
    db = data / DB_FILE
    db.write_bytes(b"not a database at all " * 400)
    before = digest(db)
    with pytest.raises(CorruptDataError, match=f"{db} cannot be read"):
        open_registry(data)
    assert digest(db) == before
    with pytest.raises(CorruptDataError):  # not DataDirInUseError: the lock is free
        open_registry(data)


def test_a_damaged_database_is_refused_and_left_as_is(data: Path) -> None:
    """Pages overwritten in the middle of a real database: refused, unchanged."""
    registry = open_registry(data)
    registry.create("b")
    for i in range(3000):
        registry.put("b", f"key{i:05d}", "v" * 40)
    registry.store.close()
    db = data / DB_FILE
    raw = bytearray(db.read_bytes())
    page = 4096
    assert len(raw) > 6 * page
    raw[2 * page : 5 * page] = os.urandom(3 * page)
    db.write_bytes(bytes(raw))
    before = digest(db)
    with pytest.raises(CorruptDataError, match=str(db)):
        open_registry(data)
    assert digest(db) == before


def test_a_database_of_a_newer_format_is_refused_and_left_as_is(data: Path) -> None:
    """user_version above this pyrokv's format: DataFormatError naming both."""
    open_registry(data).store.close()
    db = data / DB_FILE
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version={FORMAT + 1}")
    conn.close()
    before = digest(db)
    with pytest.raises(DataFormatError, match=f"{db} has format {FORMAT + 1}, newer"):
        open_registry(data)
    assert digest(db) == before


def test_another_programs_database_is_refused(data: Path) -> None:
    """A SQLite database that is not pyrokv's is not taken over."""
    data.mkdir()
    with sqlite3.connect(data / DB_FILE) as conn:
        conn.execute("CREATE TABLE mine (x)")
    conn.close()
    with pytest.raises(CorruptDataError, match="not a pyrokv database"):
        open_registry(data)


def fail_commits(monkeypatch: pytest.MonkeyPatch, failing: threading.Event) -> None:
    """Make the store's commits fail with a full disk while ``failing`` is set (the
    fallback of the full-disk tests that mount a small tmpfs, tests/test_durable.py)."""
    apply = store_module._apply

    def full(db: sqlite3.Connection, ops: Any) -> None:
        if failing.is_set():
            raise sqlite3.OperationalError("database or disk is full")
        apply(db, ops)

    monkeypatch.setattr(store_module, "_apply", full)


def test_always_a_write_that_fails_on_disk_is_not_applied(
    data: Path, monkeypatch: pytest.MonkeyPatch, opened: list[DurableRegistry]
) -> None:
    """fsync always: the caller gets DiskError and memory keeps the old value;
    reads go on; once the disk takes writes again, so does the node."""
    registry = open_registry(data, "always")
    opened.append(registry)
    registry.create("b")
    registry.put("b", "k", "old")
    failing = threading.Event()
    fail_commits(monkeypatch, failing)
    failing.set()
    with pytest.raises(DiskError, match=r"^disk: database or disk is full"):
        registry.put("b", "k", "new")
    with pytest.raises(DiskError):
        registry.delete("b", "k")
    assert registry.get("b", "k") == "old"
    failing.clear()
    registry.put("b", "k", "new")
    assert registry.get("b", "k") == "new"


def test_everysec_a_failed_commit_refuses_writes_until_one_succeeds(
    data: Path,
    monkeypatch: pytest.MonkeyPatch,
    opened: list[DurableRegistry],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """fsync everysec: writes were acknowledged when applied; once a commit fails
    they are refused with DiskError (reads go on), the log says how many may be
    lost, and a commit that succeeds later writes them and lets writes in again."""
    registry = open_registry(data, "everysec")
    opened.append(registry)
    registry.create("b")
    store = registry.store
    wait_until(lambda: store.writes_committed == 1, "the bucket's commit")
    failing = threading.Event()
    fail_commits(monkeypatch, failing)
    failing.set()
    registry.put("b", "k", "acknowledged")  # applied; its commit fails
    wait_until(lambda: store.failure is not None, "the commit to fail")
    with pytest.raises(DiskError, match=r"^disk: database or disk is full"):
        registry.put("b", "k2", "v")
    assert registry.get("b", "k") == "acknowledged"
    assert "1 acknowledged writes are not on disk and may be lost" in caplog.text
    failing.clear()
    wait_until(lambda: store.failure is None, "a commit to succeed again")
    registry.put("b", "k2", "v")
    store.close()
    again = open_registry(data)
    opened.append(again)
    assert again.get("b", "k") == "acknowledged"
    assert again.get("b", "k2") == "v"
