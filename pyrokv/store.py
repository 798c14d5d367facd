"""A node's store of record: its buckets in a SQLite database in its data dir.

Reads never come here: the node serves them from memory (:mod:`pyrokv.durable`).
Writes are handed to :meth:`Store.submit` as small tuples and return at once; one
writer thread takes every write that arrived while its previous commit ran and
commits them in one transaction (group commit), so a write never waits for the disk
on the caller's thread. A caller that must know its write is on disk (``fsync =
always``, :meth:`meta_set`) passes a callback, called on the writer thread once the
transaction that holds the write committed (or failed).

A commit writes its group as ONE row of the ``log`` table (the writes in order,
one blob): one append, not one B-tree update per key. The writer *folds* the log
into the tables (``buckets``, ``kv``, ``meta``: the writes applied in order, the
log rows deleted, in one transaction per part of the log) once it has had no write
for :data:`FOLD_IDLE` seconds, while the log holds more than :data:`LOG_MAX_WRITES`
writes or :data:`LOG_MAX_BYTES` bytes, and at :meth:`Store.close`. :meth:`load`
reads the tables, then replays what is left of the log in order: the tables and
the log together are the data, whichever part a write is in.

The files of a data dir::

    pyrokv.db (+ -wal, -shm)   the SQLite database, WAL mode
    pyrokv.lock                 the pid of the process using the dir (flock'ed)

Values keep their type. In the tables a ``str`` is stored as TEXT, an ``int``
(64-bit), a ``float`` and None as SQLite's own types, anything else as a BLOB with
a tag byte: ``s`` a str that UTF-8 cannot encode (lone surrogates), ``b`` bytes,
``p`` serpent (the serializer Pyro5 uses, plain data only). A log row is a tag byte
and the standard library's :mod:`marshal` of the group's write tuples: ``m`` the
writes as they are (str, int, float, bool, None, bytes, tuples, lists, dicts and
sets, each kept with its type), or ``e`` when a write holds anything else, its
keys and values encoded as in the tables first. :mod:`marshal` builds plain data
only (never an object of a class of its own), and a graceful stop folds the log,
so a data dir that was stopped cleanly has none to read. Never ``repr``, never
pickle.

The database keeps a format version (``PRAGMA user_version``): 2, the tables and
the log; a database of format 1 (the tables only) is given an empty log when
opened. A database of a newer format, a corrupt one, or a file that is not
pyrokv's is refused, and nothing in the dir is written before the checks pass.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import functools
import logging
import marshal
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import serpent

from .defaults import FSYNC_MODES
from .errors import (
    CorruptDataError,
    DataDirError,
    DataDirInUseError,
    DataFormatError,
    DiskError,
)

__all__ = [
    "DB_FILE",
    "FORMAT",
    "FSYNC_MODES",
    "LOCK_FILE",
    "Store",
    "decode",
    "encode",
    "encode_key",
    "pack",
    "unpack",
]

log = logging.getLogger("pyrokv.store")

#: The format of the database this pyrokv writes (``PRAGMA user_version``): 1 had
#: no log table; a database of format 1 is given one when opened.
FORMAT = 2
#: ``PRAGMA application_id`` of a pyrokv database: "pykv".
APPLICATION_ID = 0x70796B76
DB_FILE = "pyrokv.db"
LOCK_FILE = "pyrokv.lock"
#: How often ``fsync = everysec`` syncs the WAL (``always`` syncs every commit,
#: ``no`` leaves it to the OS).
SYNC_INTERVAL = 1.0
#: With fsync everysec and no, a commit is followed by a pause of this many seconds
#: (less the commit's own time) unless BATCH_WRITES writes queue up meanwhile: no
#: writer waits for these commits, and fewer, larger ones cost less. A process
#: crash loses what was acknowledged in the last pause and commit.
BATCH_INTERVAL = 0.02
BATCH_WRITES = 2000
#: Longest the writer waits for a group to gather (fsync always; see Store._gather).
GATHER_MAX = 0.005
_NEVER = 1 << 62
#: How long a failed commit waits before it is tried again (everysec and no).
RETRY_INTERVAL = 0.5
#: The writer folds the log into the tables once it has had no write for this many
#: seconds (and a fold that failed is tried again this long after).
FOLD_IDLE = 1.0
#: Writes folded in one transaction at most (a write that arrives meanwhile waits
#: for that transaction: about 10 ms); a log row is never split.
FOLD_WRITES = 10_000
#: While the log holds more than this many writes, or bytes, the writer folds after
#: each commit until it is below both: the bound of the log a start replays (about
#: 0.3 s of a node's CPU for 500,000 writes).
LOG_MAX_WRITES = 500_000
LOG_MAX_BYTES = 64 << 20
#: A graceful stop folds the log for at most this many seconds (about 2 * 10^6
#: writes on a quiet machine: the whole of a log within its bound); the next start
#: replays what is left.
CLOSE_FOLD = 3.0

#: The kinds of write :meth:`Store.submit` takes: ``(PUT, bucket, key, value)``,
#: ``(DELETE, bucket, key)``, ``(CREATE, bucket)``, ``(DROP, bucket)``,
#: ``(INSTALL, bucket, items)``, ``(META, key, value)``.
PUT, DELETE, CREATE, DROP, INSTALL, META = range(6)

#: The log of writes not yet folded: one row per commit, ``writes`` of them in
#: ``data`` (see :func:`pack`).
_LOG_TABLE = (
    "CREATE TABLE log (id INTEGER PRIMARY KEY, writes INTEGER NOT NULL, "
    "data BLOB NOT NULL)"
)
_SCHEMA = (
    "CREATE TABLE buckets (bucket PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE kv (bucket, key, value, PRIMARY KEY (bucket, key)) WITHOUT ROWID",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    _LOG_TABLE,
)
_TABLES = {"buckets", "kv", "meta"}

_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1

#: A write's callback: None once its transaction committed, else the DiskError.
Done = Callable[[DiskError | None], None]


# -- typed values ------------------------------------------------------------------


def encode(value: Any) -> Any:
    """``value`` as a SQLite value that :func:`decode` turns back into it."""
    kind = type(value)
    if kind is str:
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return b"s" + value.encode("utf-8", "surrogatepass")
    if kind is int:
        return value if _INT_MIN <= value <= _INT_MAX else b"p" + serpent.dumps(value)
    if kind is float:
        return value if value == value else b"p" + serpent.dumps(value)  # NaN: NULL
    if value is None:
        return None
    if kind is bytes:
        return b"b" + value
    return b"p" + serpent.dumps(value)


def encode_key(key: Any) -> Any:
    """A key as :func:`encode` stores it, but ``True``/``False`` as 1/0: keys that
    a dict holds as one (``1 == True == 1.0``) are one row, as they are one key."""
    if type(key) is bool:
        return int(key)
    return encode(key)


def decode(stored: Any) -> Any:
    """The value :func:`encode` stored as ``stored``."""
    if type(stored) is not bytes:
        return stored
    tag, body = stored[:1], stored[1:]
    if tag == b"s":
        return body.decode("utf-8", "surrogatepass")
    if tag == b"b":
        return body
    if tag == b"p":
        return serpent.loads(body)
    raise ValueError(f"unknown value tag {tag!r}")


def _hashable(key: Any) -> Any:
    """A key read back as serpent gives it: lists (tuples in memory) as tuples."""
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, set):
        return frozenset(key)
    return key


# -- the log: a group of writes as one blob ------------------------------------------


def pack(ops: list[tuple[Any, ...]]) -> bytes:
    """The writes ``ops`` as one log row's blob, which :func:`unpack` turns back
    into them, every key and value with its type."""
    try:
        return b"m" + marshal.dumps(ops, 4)
    except ValueError:  # a type marshal does not take (an int subclass, a class)
        return b"e" + marshal.dumps([_encoded(op) for op in ops], 4)


def unpack(blob: bytes) -> list[tuple[Any, ...]]:
    """The writes :func:`pack` made ``blob`` of, in order."""
    tag, body = blob[:1], blob[1:]
    if tag == b"m":
        ops: list[tuple[Any, ...]] = marshal.loads(body)
        return ops
    if tag == b"e":
        return [_decoded(op) for op in marshal.loads(body)]
    raise ValueError(f"unknown log row tag {tag!r}")


def _encoded(op: tuple[Any, ...]) -> tuple[Any, ...]:
    """A write with its names, keys and values as :func:`encode` stores them."""
    kind = op[0]
    if kind == PUT:
        return (PUT, encode(op[1]), encode_key(op[2]), encode(op[3]))
    if kind == DELETE:
        return (DELETE, encode(op[1]), encode_key(op[2]))
    if kind == INSTALL:
        items = [(encode_key(k), encode(v)) for k, v in op[2].items()]
        return (INSTALL, encode(op[1]), items)
    if kind == META:
        return (META, op[1], encode(op[2]))
    return (kind, encode(op[1]))  # CREATE, DROP


def _decoded(op: tuple[Any, ...]) -> tuple[Any, ...]:
    """The write :func:`_encoded` made ``op`` of."""
    kind = op[0]
    if kind == META:
        return (META, op[1], decode(op[2]))
    name = _hashable(decode(op[1]))
    if kind == PUT:
        return (PUT, name, _hashable(decode(op[2])), decode(op[3]))
    if kind == DELETE:
        return (DELETE, name, _hashable(decode(op[2])))
    if kind == INSTALL:
        return (INSTALL, name, {_hashable(decode(k)): decode(v) for k, v in op[2]})
    return (kind, name)


def _replay(
    buckets: dict[Any, dict[Any, Any]],
    meta: dict[str, Any],
    ops: Iterable[tuple[Any, ...]],
) -> None:
    """Apply ``ops`` in order to ``buckets`` and ``meta`` as a fold applies them to
    the tables (and the registry did to its memory when it queued them)."""
    for op in ops:
        kind = op[0]
        if kind == PUT:
            items = buckets.get(op[1])
            if items is not None:
                items[op[2]] = op[3]
        elif kind == DELETE:
            items = buckets.get(op[1])
            if items is not None:
                items.pop(op[2], None)
        elif kind == CREATE:
            buckets.setdefault(op[1], {})
        elif kind == DROP:
            buckets.pop(op[1], None)
        elif kind == INSTALL:
            buckets[op[1]] = dict(op[2])
        elif kind == META:
            meta[op[1]] = op[2]
        else:
            raise ValueError(f"unknown write kind {kind!r} in the log")


def _writes(ops: list[tuple[Any, ...]]) -> int:
    """How many writes ``ops`` count for in the log's bound: one a write, one a key
    of an installed bucket."""
    count = len(ops)
    for op in ops:
        if op[0] == INSTALL:
            count += len(op[2])
    return count


# -- the store ---------------------------------------------------------------------


class Store:
    """One data dir, opened by one process: its lock, its database, its writer.

    Build it with :meth:`open`; read what it holds with :meth:`load` (once, before
    any write); then :meth:`submit` writes; :meth:`close` commits what is pending.
    """

    def __init__(self, data_dir: str, fsync: str, lock_fd: int) -> None:
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, DB_FILE)
        self.fsync = fsync
        self._lock_fd = lock_fd
        self._db: sqlite3.Connection | None = None
        self._wal_fd = -1
        self._meta: dict[str, Any] = {}
        #: Guards the queue of writes; held by :meth:`append`'s callers, so that a
        #: caller can change its memory and queue the write as one step.
        self.mutex = threading.Lock()
        self._pending: list[tuple[Any, ...]] = []
        self._waiters: list[Done] = []
        self._idle = True
        #: While the writer gathers the next group (fsync always): wake it once
        #: this many writes are queued.
        self._want = _NEVER
        self._sync_next = False  # a write in the queue asks for a sync (meta_set)
        self._closing = False
        self._fold_on_close = True
        self._wake = threading.Event()
        self._closed = threading.Event()  # set by close(): ends a retry's wait
        #: Set while commits fail (fsync everysec/no): writes are refused with it.
        self.failure: DiskError | None = None
        # -- counted by the writer
        self.commits = 0
        self.writes_committed = 0
        self.commit_seconds = 0.0
        self.last_commit_seconds = 0.0
        #: The log's rows not yet folded, oldest first: (id, writes, bytes).
        self._log: collections.deque[tuple[int, int, int]] = collections.deque()
        self.log_writes = 0  # writes in the log (a key of an INSTALL counts as one)
        self.log_bytes = 0
        self.folds = 0  # fold transactions committed
        self.writes_folded = 0
        self._fold_after = 0.0  # no idle fold before this time.monotonic()
        self._fold_failing = False
        self._writer: threading.Thread | None = None

    # -- opening --------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: str, fsync: str = "everysec") -> Store:
        """Lock ``data_dir`` for this process (creating it), check its database.

        Raises :class:`DataDirError` when the dir cannot be created or written,
        :class:`DataDirInUseError` when another process holds it,
        :class:`CorruptDataError` or :class:`DataFormatError` for a database this
        pyrokv cannot read; nothing in the dir is changed then.
        """
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}")
        data_dir = os.path.abspath(data_dir)
        try:
            os.makedirs(data_dir, exist_ok=True)
        except OSError as exc:
            raise DataDirError(
                f"cannot create the data dir {data_dir}: {_why(exc)}; give a "
                "directory this user can create and write (--data-dir, data_dir)"
            ) from None
        lock_fd = _lock(data_dir)
        store = cls(data_dir, fsync, lock_fd)
        try:
            store._connect()
        except BaseException:
            store._release()
            raise
        return store

    def _connect(self) -> None:
        path = self.path
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise DataDirError(f"cannot open {path}: {exc}") from None
        try:
            self._check(db)
        except BaseException:
            db.close()
            raise
        self._db = db

    def _check(self, db: sqlite3.Connection) -> None:
        """Refuse a database this pyrokv cannot read; create the schema in a new one,
        add the log to one of format 1."""
        path = self.path
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            app = db.execute("PRAGMA application_id").fetchone()[0]
            tables = {
                row[0]
                for row in db.execute(
                    "SELECT name FROM sqlite_master WHERE type='table'"
                )
            }
        except sqlite3.DatabaseError as exc:
            raise CorruptDataError(_corrupt(path, exc)) from None
        if not tables and version == 0 and app == 0:  # new (or an empty file)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("BEGIN")
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                db.execute(f"PRAGMA user_version={FORMAT}")
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise DataDirError(f"cannot write {path}: {exc}") from None
            return
        if app != APPLICATION_ID:
            raise CorruptDataError(
                f"{path} is not a pyrokv database (its application_id is {app:#x}); "
                "give the node a data dir of its own"
            )
        if version > FORMAT:
            raise DataFormatError(
                f"{path} has format {version}, newer than this pyrokv's ({FORMAT}): "
                "run the pyrokv that wrote it, or upgrade this one; the file is "
                "left as it is"
            )
        needed = _TABLES if version == 1 else {*_TABLES, "log"}
        if version < 1 or not needed <= tables:
            raise CorruptDataError(
                f"{path} lacks pyrokv's tables (format {version}): it is damaged"
                " or not pyrokv's; restore it from a backup, or move it aside to "
                "start afresh"
            )
        if version == 1:  # format 1: the tables only; give it an (empty) log
            try:
                db.execute("BEGIN")
                if "log" not in tables:
                    db.execute(_LOG_TABLE)
                db.execute(f"PRAGMA user_version={FORMAT}")
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise DataDirError(
                    f"cannot write {path} (to add the log of format {FORMAT}): {exc}"
                ) from None
            log.info("%s: format 1 given the log of format %d", path, FORMAT)

    def load(self) -> dict[Any, dict[Any, Any]]:
        """Every bucket in the database, with its keys and values (the tables, then
        the log's writes replayed in order); then start the writer. Raises
        :class:`CorruptDataError` if the data cannot be read."""
        db = self._db
        assert db is not None
        assert self._writer is None
        path = self.path
        buckets: dict[Any, dict[Any, Any]] = {}
        try:
            names = [row[0] for row in db.execute("SELECT bucket FROM buckets")]
            for stored in names:
                items = dict(
                    db.execute(
                        "SELECT key, value FROM kv WHERE bucket = ? AND "
                        "typeof(key) != 'blob' AND typeof(value) != 'blob'",
                        (stored,),
                    )
                )
                for key, value in db.execute(
                    "SELECT key, value FROM kv WHERE bucket = ? AND "
                    "(typeof(key) = 'blob' OR typeof(value) = 'blob')",
                    (stored,),
                ):
                    items[_hashable(decode(key))] = decode(value)
                buckets[_hashable(decode(stored))] = items
            orphans = db.execute(
                "SELECT count(*) FROM kv WHERE bucket NOT IN (SELECT bucket FROM buckets)"
            ).fetchone()[0]
            self._meta = {
                key: decode(value)
                for key, value in db.execute("SELECT key, value FROM meta")
            }
            for row, writes, data in db.execute(
                "SELECT id, writes, data FROM log ORDER BY id"
            ):
                _replay(buckets, self._meta, unpack(data))
                self._log.append((row, writes, len(data)))
                self.log_writes += writes
                self.log_bytes += len(data)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "PRAGMA synchronous="
                + {"always": "FULL", "everysec": "NORMAL", "no": "OFF"}[self.fsync]
            )
        except sqlite3.DatabaseError as exc:
            raise CorruptDataError(_corrupt(path, exc)) from None
        except (
            ValueError,
            SyntaxError,
            UnicodeDecodeError,
            EOFError,
            TypeError,
            IndexError,
            AttributeError,
        ) as exc:
            raise CorruptDataError(
                f"{path} holds a value this pyrokv cannot read ({exc}): restore it "
                "from a backup, or move it aside to start afresh"
            ) from None
        if orphans:
            raise CorruptDataError(
                f"{path} holds {orphans} keys of buckets it does not list: it is "
                "damaged; restore it from a backup, or move it aside to start afresh"
            )
        with contextlib.suppress(OSError):
            self._wal_fd = os.open(self.path + "-wal", os.O_RDONLY)
        self._writer = threading.Thread(
            target=self._write_loop, name="pyrokv-store", daemon=True
        )
        self._writer.start()
        return buckets

    # -- writing --------------------------------------------------------------

    def submit(self, op: tuple[Any, ...], done: Done | None = None) -> None:
        """Queue one write (:meth:`append` under :attr:`mutex`)."""
        with self.mutex:
            self.append(op, done)

    def append(
        self, op: tuple[Any, ...], done: Done | None = None, sync: bool = False
    ) -> None:
        """Queue one write; the caller holds :attr:`mutex`. ``done`` (if given) is
        called on the writer thread once the write's transaction committed (None)
        or failed (the :class:`DiskError`). The queue's order is the disk's.
        With ``sync`` its transaction is synced in every fsync mode.
        """
        if self._closing:
            raise DiskError(f"disk: the store of {self.data_dir} is closed")
        self._pending.append(op)
        if done is not None:
            self._waiters.append(done)
        if sync:
            self._sync_next = True
        if self._idle or len(self._pending) >= self._want:
            self._idle = False
            self._wake.set()

    def meta_get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key`` in the meta table (as committed), or
        ``default``."""
        return self._meta.get(key, default)

    def meta_set(self, key: str, value: Any, timeout: float = 30.0) -> None:
        """Store ``value`` under ``key`` in the meta table; return once it is on
        disk (synced, in every fsync mode). Raises :class:`DiskError`."""
        if not isinstance(key, str):
            raise TypeError("a meta key is text")
        result: list[DiskError | None] = []
        finished = threading.Event()

        def done(error: DiskError | None) -> None:
            result.append(error)
            finished.set()

        with self.mutex:
            self.append((META, key, value), done, sync=True)
        if not finished.wait(timeout):
            raise DiskError(f"disk: no commit within {timeout:g}s ({self.path})")
        if result[0] is not None:
            raise result[0]

    def stats(self) -> dict[str, Any]:
        """What INFO shows of the store: mode, dir, commits, writes committed, the
        mean and last commit time in milliseconds, the writes in the log not yet
        folded, and the folds."""
        commits = self.commits
        return {
            "data_dir": self.data_dir,
            "fsync": self.fsync,
            "commits": commits,
            "writes_committed": self.writes_committed,
            "commit_ms": round(self.commit_seconds / commits * 1000, 3)
            if commits
            else 0.0,
            "last_commit_ms": round(self.last_commit_seconds * 1000, 3),
            "log_writes": self.log_writes,
            "folds": self.folds,
            "disk": "ok" if self.failure is None else str(self.failure),
        }

    def close(self, fold: bool = True) -> None:
        """Commit every pending write, fold the log into the tables (for at most
        :data:`CLOSE_FOLD` seconds; none if ``fold`` is false: the log is left as a
        crash leaves it), sync, close the database, release the dir."""
        with self.mutex:
            if self._closing:
                return
            self._closing = True
            self._fold_on_close = fold
            self._wake.set()
            self._closed.set()
        if self._writer is not None:
            self._writer.join()
        db = self._db
        self._db = None
        if db is not None:
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("could not checkpoint %s on close: %s", self.path, exc)
            db.close()
        self._release()

    def _release(self) -> None:
        if self._wal_fd >= 0:
            os.close(self._wal_fd)
            self._wal_fd = -1
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = -1

    # -- the writer thread ------------------------------------------------------

    def _write_loop(self) -> None:
        unsynced = False
        last_sync = last_write = time.monotonic()
        retry: list[tuple[Any, ...]] = []  # a failed group, tried again (everysec, no)
        while True:
            with self.mutex:
                ops, self._pending = self._pending, []
                waiters, self._waiters = self._waiters, []
                sync, self._sync_next = self._sync_next, False
                closing = self._closing
                if not ops and not retry:
                    self._idle = True
                    self._wake.clear()
            if retry:
                ops = retry + ops
            if not ops:
                if closing:
                    if self._fold_on_close and self.failure is None:
                        until = time.monotonic() + CLOSE_FOLD
                        while self._log and time.monotonic() < until:
                            if self._fold() is not None:
                                break
                    break
                now = time.monotonic()
                sync_due = last_sync + SYNC_INTERVAL if unsynced else None
                fold_due = self._fold_due(last_write)
                due = min(
                    (t for t in (sync_due, fold_due) if t is not None), default=None
                )
                if due is None:
                    self._wake.wait()
                    continue
                if due > now and self._wake.wait(due - now):
                    continue  # a write came
                now = time.monotonic()
                if sync_due is not None and now >= sync_due:
                    self._sync()
                    unsynced, last_sync = False, now
                if fold_due is not None and now >= fold_due:
                    self._fold()  # one part; then look for writes again
                continue
            started = time.monotonic()
            error = self._commit(ops)
            if error is None:
                if self.failure is not None:
                    log.warning(
                        "writes to %s succeed again: the %d writes held back are on "
                        "disk",
                        self.path,
                        len(retry),
                    )
                    self.failure = None
                retry = []
                now = last_write = time.monotonic()
                synced = self.fsync == "always"
                if not synced and (
                    sync
                    or (self.fsync == "everysec" and now - last_sync >= SYNC_INTERVAL)
                ):
                    self._sync()
                    synced = True
                if synced:
                    unsynced, last_sync = False, now
                else:
                    unsynced = self.fsync == "everysec"
                self._notify(waiters, None)
                if closing:
                    continue
                while self._log_full() and self._fold() is None:
                    pass
                if self.fsync == "always":
                    if waiters:
                        self._gather(len(waiters))
                else:  # nobody waits: let a group grow, fewer commits cost less
                    spent = time.monotonic() - started
                    self._hold(BATCH_INTERVAL - spent, BATCH_WRITES)
                continue
            if self.fsync == "always":
                self._notify(waiters, error)  # not applied, not acknowledged
                continue
            # everysec, no: the writes were acknowledged; keep them, refuse new ones
            # logged before the failure shows, so that whoever sees writes refused
            # can already read why in the log
            if self.failure is None or closing:
                log.error(
                    "%s; %d acknowledged writes are not on disk and may be lost: "
                    "the node refuses writes until a commit succeeds again",
                    error,
                    len(ops),
                )
            self.failure = error
            self._notify(waiters, error)
            retry = ops
            if closing:
                log.error(
                    "stopping with %d acknowledged writes that could not be "
                    "committed to %s: they are lost",
                    len(ops),
                    self.path,
                )
                break
            self._closed.wait(RETRY_INTERVAL)

    def _gather(self, returning: int) -> None:
        """Wait, at most as long as the last commit took, for the writers just
        answered to send their next write, so that it joins the next group.

        With fsync always each writer waits for its commit. Started at once, the
        next commit would take only the writes that queued during this one, and
        the writers just answered would wait for the whole of it: the writers
        would split in two groups taking turns, each commit half full.
        """
        with self.mutex:
            want = len(self._pending) + returning
        self._hold(min(self.last_commit_seconds, GATHER_MAX), want)

    def _hold(self, seconds: float, writes: int) -> None:
        """Wait up to ``seconds`` for ``writes`` writes to be queued (or close())."""
        if seconds <= 0:
            return
        with self.mutex:
            if self._closing or len(self._pending) >= writes:
                return
            self._want = writes
            self._wake.clear()
        self._wake.wait(seconds)
        with self.mutex:
            self._want = _NEVER

    def _notify(self, waiters: list[Done], error: DiskError | None) -> None:
        for done in waiters:
            try:
                done(error)
            except Exception:
                log.exception("a write's callback failed")

    def _commit(self, ops: list[tuple[Any, ...]]) -> DiskError | None:
        """Write ``ops`` in one transaction, as one row of the log; None, or the
        DiskError it failed with."""
        db = self._db
        assert db is not None
        started = time.perf_counter()
        try:
            data = pack(ops)
            writes = _writes(ops)
            db.execute("BEGIN")
            row = _append(db, writes, data)
            db.execute("COMMIT")
        except (sqlite3.Error, OSError, ValueError, TypeError) as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            return DiskError(f"disk: {exc} (writing {self.path})")
        took = time.perf_counter() - started
        self.commits += 1
        self.writes_committed += len(ops)
        self.commit_seconds += took
        self.last_commit_seconds = took
        self._log.append((row, writes, len(data)))
        self.log_writes += writes
        self.log_bytes += len(data)
        for op in ops:
            if op[0] == META:
                self._meta[op[1]] = op[2]
        return None

    # -- folding the log into the tables ---------------------------------------

    def _fold_due(self, last_write: float) -> float | None:
        """When the idle writer folds next (``last_write``: its last commit), or
        None: nothing to fold, or the disk is failing."""
        if not self._log or self.failure is not None:
            return None
        return max(last_write + FOLD_IDLE, self._fold_after)

    def _log_full(self) -> bool:
        return self.log_writes > LOG_MAX_WRITES or self.log_bytes > LOG_MAX_BYTES

    def _fold(self) -> Exception | None:
        """Fold the oldest rows of the log (about :data:`FOLD_WRITES` writes, at
        least one row) into the tables, deleting them, in one transaction. None
        once done; the error otherwise (logged; the log is left as it was and the
        next fold waits :data:`FOLD_IDLE`)."""
        db = self._db
        assert db is not None
        rows = writes = 0
        for _, count, _ in self._log:
            rows += 1
            writes += count
            if writes >= FOLD_WRITES:
                break
        last = self._log[rows - 1][0]
        try:
            db.execute("BEGIN")
            ops: list[tuple[Any, ...]] = []
            for (data,) in db.execute(
                "SELECT data FROM log WHERE id <= ? ORDER BY id", (last,)
            ):
                ops += unpack(data)
            _apply(db, ops)
            db.execute("DELETE FROM log WHERE id <= ?", (last,))
            db.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._fold_after = time.monotonic() + FOLD_IDLE
            if not self._fold_failing:  # once, not at every try
                log.warning(
                    "cannot fold the log of %s into its tables (%s): the log is "
                    "kept (nothing is lost), and the fold tried again every %gs",
                    self.path,
                    exc,
                    FOLD_IDLE,
                )
            self._fold_failing = True
            return exc
        if self._fold_failing:
            log.warning("the log of %s folds again", self.path)
            self._fold_failing = False
        for _ in range(rows):
            _, count, size = self._log.popleft()
            self.log_writes -= count
            self.log_bytes -= size
        self.folds += 1
        self.writes_folded += len(ops)
        return None

    def _sync(self) -> None:
        """Make every committed transaction durable (fsync everysec, meta_set)."""
        if self._wal_fd < 0:
            return
        try:
            os.fsync(self._wal_fd)
        except OSError as exc:
            log.error("cannot sync %s-wal: %s", self.path, _why(exc))


def _append(db: sqlite3.Connection, writes: int, data: bytes) -> int:
    """Add a row to the log; its id."""
    row = db.execute(
        "INSERT INTO log (writes, data) VALUES (?, ?)", (writes, data)
    ).lastrowid
    assert row is not None
    return row


def _apply(db: sqlite3.Connection, ops: Iterable[tuple[Any, ...]]) -> None:
    """Run ``ops`` in order on the tables (a fold); consecutive key writes as one
    batch, each key once."""
    keys: dict[tuple[Any, Any], Any] = {}  # (bucket, key) -> value, or _GONE
    last: Any = None  # a group's writes are mostly to one bucket: encode it once
    stored: Any = None
    for op in ops:
        kind = op[0]
        if kind in (PUT, DELETE):
            bucket, key = op[1], op[2]
            if bucket is not last:
                last, stored = bucket, encode(bucket)
            if key.__class__ is not str or not key.isascii():  # text: stored as is
                key = encode_key(key)
            keys[(stored, key)] = op[3] if kind == PUT else _GONE
            continue
        if keys:
            _flush(db, keys)
            keys = {}
        if kind == CREATE:
            db.execute("INSERT OR IGNORE INTO buckets VALUES (?)", (encode(op[1]),))
        elif kind == DROP:
            stored = encode(op[1])
            db.execute("DELETE FROM kv WHERE bucket = ?", (stored,))
            db.execute("DELETE FROM buckets WHERE bucket = ?", (stored,))
        elif kind == INSTALL:
            stored = encode(op[1])
            db.execute("DELETE FROM kv WHERE bucket = ?", (stored,))
            db.execute("INSERT OR IGNORE INTO buckets VALUES (?)", (stored,))
            rows = [
                x for k, v in op[2].items() for x in (stored, encode_key(k), encode(v))
            ]
            _many(db, _UPSERT_ROWS, rows, 3)
        elif kind == META:
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", (op[1], encode(op[2]))
            )
    if keys:
        _flush(db, keys)


#: Stands for a deleted key in a batch of key writes.
_GONE = object()


def _flush(db: sqlite3.Connection, keys: dict[tuple[Any, Any], Any]) -> None:
    puts = [
        x
        for (b, k), v in keys.items()
        if v is not _GONE
        for x in (b, k, v if v.__class__ is str and v.isascii() else encode(v))
    ]
    if puts:
        _many(db, _UPSERT_ROWS, puts, 3)
    if len(puts) < 3 * len(keys):
        gone = [x for bk, v in keys.items() if v is _GONE for x in bk]
        _many(db, _REMOVE_ROWS, gone, 2)


def _many(
    db: sqlite3.Connection, statement: Callable[[int], str], flat: list[Any], width: int
) -> None:
    """Run ``statement(n)`` (n rows of ``width`` parameters each) over ``flat``, the
    rows' parameters in a row, :data:`_ROWS` rows a statement.

    One statement of many rows, not ``executemany``: the sqlite3 module lets go of
    the GIL for every step, and a thread that wants it back waits for the text
    server's loop to let go of it (up to the switch interval, 5 ms) once a row.
    """
    chunk = _ROWS * width
    for start in range(0, len(flat), chunk):
        part = flat[start : start + chunk]
        db.execute(statement(len(part) // width), part)


#: Rows a statement writes at most: 3 * 300 parameters, far below SQLite's limit.
_ROWS = 300


@functools.lru_cache(maxsize=_ROWS + 1)
def _UPSERT_ROWS(rows: int) -> str:  # noqa: N802
    return "INSERT OR REPLACE INTO kv (bucket, key, value) VALUES " + ",".join(
        ["(?, ?, ?)"] * rows
    )


@functools.lru_cache(maxsize=_ROWS + 1)
def _REMOVE_ROWS(rows: int) -> str:  # noqa: N802
    # (bucket, key) IN (VALUES ...) would scan the table; from a subquery, it is
    # a search by primary key per row
    return (
        "DELETE FROM kv WHERE (bucket, key) IN (SELECT column1, column2 FROM "
        "(VALUES " + ",".join(["(?, ?)"] * rows) + "))"
    )


def _lock(data_dir: str) -> int:
    """Take the dir's lock file (flock, held while the fd is open); write our pid."""
    path = os.path.join(data_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DataDirError(
            f"cannot write in the data dir {data_dir}: {_why(exc)}; give a directory "
            "this user can write (--data-dir, data_dir)"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise DataDirInUseError(
                f"the data dir {data_dir} is in use by process {holder} (another "
                "node): stop that node, or give this one another data dir"
            ) from None
        raise DataDirError(f"cannot lock {path}: {_why(exc)}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise DataDirError(
            f"cannot write in the data dir {data_dir}: {_why(exc)}"
        ) from None
    return fd


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _corrupt(path: str, exc: Exception) -> str:
    return (
        f"{path} cannot be read: {exc}; the database is damaged (or not a "
        "database): restore it from a backup, or move the data dir aside to start "
        "afresh (nothing was changed)"
    )
