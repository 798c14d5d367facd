"""A node's store of record (pyrokv.store) and its durable registry (pyrokv.durable),
in this process: typed values, group commit, hand-offs, meta values, bad dirs and
failed commits."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
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
    """Make the store's commits (and folds) fail with a full disk while ``failing``
    is set (the fallback of the full-disk tests that mount a small tmpfs,
    tests/test_durable.py)."""
    append, apply = store_module._append, store_module._apply

    def full_append(db: sqlite3.Connection, writes: int, data: bytes) -> int:
        if failing.is_set():
            raise sqlite3.OperationalError("database or disk is full")
        return append(db, writes, data)

    def full_apply(db: sqlite3.Connection, ops: Any) -> None:
        if failing.is_set():
            raise sqlite3.OperationalError("database or disk is full")
        apply(db, ops)

    monkeypatch.setattr(store_module, "_append", full_append)
    monkeypatch.setattr(store_module, "_apply", full_apply)


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


class SlowHandler(logging.Handler):
    """Takes a fifth of a second over each record: the time a stalled writer thread
    may take between deciding to refuse writes and logging why."""

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(0.2)


def test_everysec_a_failed_commit_refuses_writes_until_one_succeeds(
    data: Path,
    monkeypatch: pytest.MonkeyPatch,
    opened: list[DurableRegistry],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """fsync everysec: writes were acknowledged when applied; once a commit fails
    they are refused with DiskError (reads go on), the log says how many may be
    lost, and a commit that succeeds later writes them and lets writes in again.
    The log line comes before writes are refused: a slow log handler on the store's
    logger may not let the refusal overtake it."""
    logger = logging.getLogger("pyrokv.store")
    monkeypatch.setattr(logger, "handlers", [*logger.handlers, SlowHandler()])
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


# -- the log: one row per commit, folded into the tables ------------------------------


def log_rows(data: Path) -> list[tuple[int, int]]:
    """The log's rows (id, writes) as a reader of the database sees them."""
    conn = sqlite3.connect(data / DB_FILE)
    try:
        return list(conn.execute("SELECT id, writes FROM log ORDER BY id"))
    finally:
        conn.close()


def kv_rows(data: Path) -> dict[Any, Any]:
    """The kv table's keys and values (decoded), as a reader sees them."""
    conn = sqlite3.connect(data / DB_FILE)
    try:
        return {
            decode(k): decode(v) for k, v in conn.execute("SELECT key, value FROM kv")
        }
    finally:
        conn.close()


def put_in_commits(registry: DurableRegistry, pairs: list[tuple[Any, Any]]) -> None:
    """PUT ``pairs`` in bucket b (the store's only write so far: its creation), 100
    at a time, each hundred committed before the next: log rows of at most 100."""
    store = registry.store
    for start in range(0, len(pairs), 100):
        part = pairs[start : start + 100]
        for key, value in part:
            registry.put("b", key, value)
        done = 1 + start + len(part)
        wait_until(lambda: store.writes_committed == done, "a commit")  # noqa: B023


def test_a_commit_is_one_log_row_and_a_close_folds_it(data: Path) -> None:
    """The writes of a commit are one row of the log, not rows of kv; a graceful
    close folds the log into the tables and leaves it empty."""
    registry = open_registry(data, "always")
    registry.create("b")
    registry.put("b", "k", "v")
    assert [writes for _, writes in log_rows(data)] == [1, 1]
    assert kv_rows(data) == {}
    registry.store.close()
    assert log_rows(data) == []
    assert kv_rows(data) == {"k": "v"}


@pytest.mark.parametrize("fsync", MODES)
def test_a_restart_replays_an_unfolded_log_in_order(data: Path, fsync: str) -> None:
    """Left unfolded, as a crash leaves it: a restart replays the log over the
    tables in order: the last write of a key wins, deletes and drops win over the
    rows of kv, an install replaces a bucket, meta values come back, typed."""
    registry = open_registry(data, fsync)
    registry.create("b")
    registry.create("gone")
    registry.install({"replaced": {"old": 1}})
    for i in range(50):
        registry.put("b", f"k{i}", f"v{i}")
    registry.store.close()  # folded: these are rows of kv now
    assert log_rows(data) == [] and len(kv_rows(data)) == 51
    registry = open_registry(data, fsync)
    registry.put("b", "k0", "again")
    registry.put("b", "k0", "last")
    assert registry.delete("b", "k1") == "v1"
    registry.put("b", "k2", "briefly")
    registry.delete("b", "k2")
    registry.put("b", "new", 7)
    registry.delete("b", "new")
    registry.put("b", "new", (1, 2.5))
    registry.extract(["gone"])
    registry.install({"replaced": {"new": b"\x00"}})
    registry.create("made")
    registry.put("made", 1, {"a": [None, True]})
    registry.store.meta_set("table_version", 9)
    store = registry.store
    wait_until(lambda: not store._pending, "the writes to be committed")
    store.close(fold=False)
    assert len(log_rows(data)) >= 1
    assert sum(writes for _, writes in log_rows(data)) == store.log_writes
    again = open_registry(data, fsync)
    try:
        assert again.store.log_writes == store.log_writes
        assert again.buckets() == ["b", "made", "replaced"]
        got = again._bucket("b")
        assert got["k0"] == "last"
        assert "k1" not in got and "k2" not in got
        assert got["new"] == (1, 2.5) and type(got["new"]) is tuple
        assert len(got) == 49
        assert again._bucket("replaced") == {"new": b"\x00"}
        assert again._bucket("made") == {1: {"a": [None, True]}}
        assert again.store.meta_get("table_version") == 9
    finally:
        again.store.close()
    assert log_rows(data) == []
    assert kv_rows(data)["k0"] == "last"


def test_values_marshal_cannot_take_are_logged_as_the_tables_keep_them(
    data: Path,
) -> None:
    """A group holding a value of a class (an int subclass here) is logged with
    its values encoded as in the tables (the class's value comes back as serpent
    gives it, as from kv); the others in it keep their types."""

    class Count(int):
        """An int subclass: marshal refuses it."""

    registry = open_registry(data)
    registry.create("b")
    for key, value in TYPED.items():
        registry.put("b", key, value)
    registry.put("b", "count", Count(3))
    registry.store.close(fold=False)
    again = open_registry(data)
    try:
        got = again._bucket("b")
        assert got["count"] == decode(encode(Count(3)))
        for key, value in TYPED.items():
            assert type(got[key]) is type(value), key
            assert got[key] == value, key
    finally:
        again.store.close()


def test_the_idle_writer_folds_the_log_in_parts(
    data: Path, monkeypatch: pytest.MonkeyPatch, opened: list[DurableRegistry]
) -> None:
    """Once no write came for FOLD_IDLE, the log is folded, a part of about
    FOLD_WRITES writes a transaction, into kv; the memory is unchanged."""
    monkeypatch.setattr(store_module, "FOLD_IDLE", 0.05)
    monkeypatch.setattr(store_module, "FOLD_WRITES", 300)
    registry = open_registry(data)
    opened.append(registry)
    store = registry.store
    registry.create("b")
    put_in_commits(registry, [(f"k{i}", i) for i in range(2000)])
    registry.delete("b", "k0")
    wait_until(lambda: store.log_writes == 0 and not store._pending, "the fold")
    assert store.folds >= 5  # at most 300 writes a fold, plus the row past them
    assert store.writes_folded == 2002
    assert log_rows(data) == []
    rows = kv_rows(data)
    assert len(rows) == 1999 and rows["k1999"] == 1999
    assert registry.get("b", "k1999") == 1999
    assert store.stats()["log_writes"] == 0


def test_a_log_past_its_bound_is_folded_while_writes_go_on(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no idle moment, the writer folds after a commit while the log holds
    more than LOG_MAX_WRITES writes: what a start replays stays bounded."""
    monkeypatch.setattr(store_module, "FOLD_IDLE", 3600.0)
    monkeypatch.setattr(store_module, "LOG_MAX_WRITES", 100)
    monkeypatch.setattr(store_module, "FOLD_WRITES", 50)
    registry = open_registry(data)
    store = registry.store
    registry.create("b")
    put_in_commits(registry, [(i, str(i)) for i in range(3000)])
    store.close(fold=False)
    assert store.folds >= 10
    assert 0 < sum(writes for _, writes in log_rows(data)) <= 100
    again = open_registry(data)
    try:
        assert again._bucket("b") == {i: str(i) for i in range(3000)}
    finally:
        again.store.close()


def test_a_data_dir_of_format_1_opens_and_is_given_a_log(data: Path) -> None:
    """A database of format 1 (tables, no log) written by the pyrokv before: its
    buckets load and it takes writes, now at this pyrokv's format."""
    data.mkdir()
    conn = sqlite3.connect(data / DB_FILE, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in store_module._SCHEMA[:3]:
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id={store_module.APPLICATION_ID}")
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO buckets VALUES ('b')")
    conn.execute("INSERT INTO kv VALUES ('b', 'k', ?)", (encode((1, "x")),))
    conn.execute("INSERT INTO meta VALUES ('table_version', 4)")
    conn.close()
    registry = open_registry(data)
    try:
        assert registry.get("b", "k") == (1, "x")
        assert registry.store.meta_get("table_version") == 4
        registry.put("b", "k2", "v")
    finally:
        registry.store.close()
    conn = sqlite3.connect(data / DB_FILE)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == FORMAT == 2
    conn.close()
    again = open_registry(data)
    try:
        assert again._bucket("b") == {"k": (1, "x"), "k2": "v"}
    finally:
        again.store.close()


def test_a_damaged_log_row_is_refused_and_left_as_is(data: Path) -> None:
    """A log row that is not what pyrokv wrote: CorruptDataError naming the file;
    nothing changed."""
    registry = open_registry(data)
    registry.create("b")
    registry.store.close(fold=False)
    db = data / DB_FILE
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE log SET data = ?", (b"m\xff\x00garbage",))
    conn.close()
    before = digest(db)
    with pytest.raises(CorruptDataError, match=f"{db} holds a value this pyrokv"):
        open_registry(data)
    assert digest(db) == before
