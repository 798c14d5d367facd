"""The buckets of a node with a data dir: served from memory, recorded in a :class:`Store`.

:class:`DurableRegistry` is a :class:`~pyrokv.Registry` whose writes also go to the
node's store (SQLite, :mod:`pyrokv.store`); reads are the registry's own dict
look-ups, untouched. What a write waits for is the ``fsync`` setting's:

- ``everysec`` (the default) and ``no``: the write is applied in memory and queued
  for the store's writer thread, under one lock, so the order of the queue is the
  order of memory; it returns at once. While the store's commits fail, writes are
  refused with :class:`DiskError` (reads go on).
- ``always``: the write is checked (the bucket exists), queued, and applied in memory
  only once its transaction is on disk; a Python caller's call returns then. A write
  that fails on disk is not applied: its caller gets the :class:`DiskError`. The text
  server does not wait on its loop: :meth:`DurableRegistry.deferred` gives it a
  function that starts the write and calls back when it is done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from Pyro5.api import expose

from .errors import BucketNotFoundError, DiskError
from .registry import Registry
from .store import CREATE, DELETE, DROP, INSTALL, PUT, Store

__all__ = ["DurableRegistry", "Reply"]

#: How a write that waits for the disk is answered: (the DiskError or None, the
#: result the plain registry method would have returned).
Reply = Callable[[Exception | None, Any], None]
#: Starts a write; calls its Reply on the store's writer thread when it is done.
Start = Callable[[Reply], None]

#: Longest a Python caller waits for its write's commit (fsync always).
WAIT = 60.0
_MISSING = object()


@expose
class DurableRegistry(Registry):
    """A registry loaded from ``store`` at start, whose every write goes to it.

    Takes the store's buckets (:meth:`Store.load`, which starts its writer) when
    built; the caller closes the store.
    """

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self._always = store.fsync == "always"
        #: Buckets whose DROP is queued, not yet on disk (always): writes to them
        #: are refused as to a bucket that is gone.
        self._dropping: set[Any] = set()
        self._buckets = store.load()

    # -- writes -------------------------------------------------------------------

    def create(self, bucket: str) -> None:
        """Create ``bucket`` if it does not exist yet; an existing bucket is kept as is."""
        if self._always:
            self._wait(self.start_create, bucket)
            return
        if bucket in self._buckets:
            return
        store = self.store
        with store.mutex:
            self._refuse_if_failing()
            if bucket not in self._buckets:
                self._buckets[bucket] = {}
                store.append((CREATE, bucket))

    def put(self, bucket: str, key: Any, value: Any) -> None:
        """Set ``key`` in ``bucket`` to ``value``."""
        if self._always:
            self._wait(self.start_put, bucket, key, value)
            return
        store = self.store
        with store.mutex:
            self._refuse_if_failing()
            self._bucket(bucket)[key] = value
            store.append((PUT, bucket, key, value))

    def delete(self, bucket: str, key: Any) -> Any:
        """Remove ``key`` from ``bucket``; return its old value, or None if it was missing."""
        if self._always:
            return self._wait(self.start_delete, bucket, key)
        store = self.store
        with store.mutex:
            self._refuse_if_failing()
            old = self._bucket(bucket).pop(key, _MISSING)
            if old is _MISSING:
                return None
            store.append((DELETE, bucket, key))
            return old

    def extract(self, names: list[str]) -> dict[str, dict[Any, Any]]:
        """Remove the buckets ``names`` (those that exist) and return them: a hand-off.

        Their rows are deleted from the store like any write (with ``fsync =
        always``, this returns once that is on disk).
        """
        if self._always:
            taken: dict[str, dict[Any, Any]] = self._wait(self.start_extract, names)
            return taken
        store = self.store
        taken = {}
        with store.mutex:
            self._refuse_if_failing()
            for name in names:
                bucket = self._buckets.pop(name, None)
                if bucket is not None:
                    taken[name] = bucket
                    store.append((DROP, name))
        return taken

    def install(self, buckets: dict[str, dict[Any, Any]]) -> None:
        """Add ``buckets`` (name -> its keys and values), replacing any of the same
        name, in memory and in the store."""
        if self._always:
            self._wait(self.start_install, buckets)
            return
        store = self.store
        with store.mutex:
            self._refuse_if_failing()
            for name, items in buckets.items():
                self._buckets[name] = dict(items)
                store.append((INSTALL, name, dict(items)))

    def merge(self, buckets: dict[str, dict[Any, Any]]) -> None:
        """Add the keys of ``buckets`` to the buckets of the same name (the rest of
        a bucket handed off in several parts), in memory and in the store."""
        if self._always:
            with self.store.mutex:
                whole = {
                    name: {**self._buckets.get(name, {}), **items}
                    for name, items in buckets.items()
                }
            self._wait(self.start_install, whole)
            return
        store = self.store
        with store.mutex:
            self._refuse_if_failing()
            for name, items in buckets.items():
                bucket = self._buckets.get(name)
                if bucket is None:
                    self._buckets[name] = dict(items)
                    store.append((INSTALL, name, dict(items)))
                    continue
                for key, value in items.items():
                    bucket[key] = value
                    store.append((PUT, name, key, value))

    # -- fsync = always: start a write, answer once it is on disk -----------------

    def deferred(self, method: str) -> Callable[..., None] | None:
        """The ``start_*`` function of a write the text server must not wait for on
        its loop (``fsync = always``): called with the request's words and a
        :data:`Reply`; None when writes are answered at once."""
        if not self._always:
            return None
        starts: dict[str, Callable[..., None]] = {
            "create": self.start_create,
            "put": self.start_put,
            "delete": self.start_delete,
        }
        return starts.get(method)

    def start_create(self, bucket: str, reply: Reply) -> None:
        """Queue the creation of ``bucket``; ``reply`` once it is on disk (at once
        when the bucket exists)."""
        store = self.store
        with store.mutex:
            if bucket in self._buckets and bucket not in self._dropping:
                reply(None, None)
                return
            hash(bucket)  # an unhashable name fails here, not on the writer

            def done(error: DiskError | None) -> None:
                if error is None:
                    with store.mutex:
                        self._buckets.setdefault(bucket, {})
                reply(error, None)

            store.append((CREATE, bucket), done)

    def start_put(self, bucket: str, key: Any, value: Any, reply: Reply) -> None:
        """Queue ``key`` = ``value`` in ``bucket``; apply and ``reply`` once on disk."""
        store = self.store
        with store.mutex:
            self._existing(bucket)
            hash(key)

            def done(error: DiskError | None) -> None:
                if error is None:
                    items = self._buckets.get(bucket)
                    if items is not None:
                        items[key] = value
                reply(error, None)

            store.append((PUT, bucket, key, value), done)

    def start_delete(self, bucket: str, key: Any, reply: Reply) -> None:
        """Queue the removal of ``key``; apply and ``reply`` with its old value once
        on disk."""
        store = self.store
        with store.mutex:
            self._existing(bucket)
            hash(key)

            def done(error: DiskError | None) -> None:
                old = None
                if error is None:
                    items = self._buckets.get(bucket)
                    if items is not None:
                        old = items.pop(key, None)
                reply(error, old)

            store.append((DELETE, bucket, key), done)

    def start_extract(self, names: list[str], reply: Reply) -> None:
        """Queue the removal of the buckets ``names``; once on disk, take them out
        of memory and ``reply`` with them."""
        store = self.store
        with store.mutex:
            found = [n for n in names if n in self._buckets and n not in self._dropping]
            if not found:
                reply(None, {})
                return
            self._dropping.update(found)

            def done(error: DiskError | None) -> None:
                taken = {}
                with store.mutex:
                    self._dropping.difference_update(found)
                    if error is None:
                        for name in found:
                            bucket = self._buckets.pop(name, None)
                            if bucket is not None:
                                taken[name] = bucket
                reply(error, taken)

            for name in found[:-1]:
                store.append((DROP, name))
            store.append((DROP, found[-1]), done)

    def start_install(self, buckets: dict[str, dict[Any, Any]], reply: Reply) -> None:
        """Queue ``buckets``; once on disk, put them in memory and ``reply``."""
        store = self.store
        copies = {name: dict(items) for name, items in buckets.items()}
        if not copies:
            reply(None, None)
            return
        with store.mutex:

            def done(error: DiskError | None) -> None:
                if error is None:
                    with store.mutex:
                        for name, items in copies.items():
                            self._buckets[name] = dict(items)
                            self._dropping.discard(name)
                reply(error, None)

            names = list(copies)
            for name in names[:-1]:
                store.append((INSTALL, name, copies[name]))
            store.append((INSTALL, names[-1], copies[names[-1]]), done)

    # -- helpers ---------------------------------------------------------------------

    def _existing(self, bucket: Any) -> None:
        """Raise as the plain registry does when ``bucket`` is missing (or going)."""
        self._bucket(bucket)
        if bucket in self._dropping:
            raise BucketNotFoundError(
                f"bucket {bucket!r} does not exist: create it first"
            )

    def _refuse_if_failing(self) -> None:
        failure = self.store.failure
        if failure is not None:
            raise DiskError(str(failure))

    def _wait(self, start: Callable[..., None], *args: Any) -> Any:
        """Run ``start(*args, reply)`` and wait for its reply (a Python caller's
        thread, never the text server's loop)."""
        finished = threading.Event()
        box: list[tuple[Exception | None, Any]] = []

        def reply(error: Exception | None, result: Any) -> None:
            box.append((error, result))
            finished.set()

        start(*args, reply)
        if not finished.wait(WAIT):
            raise DiskError(
                f"disk: no commit within {WAIT:g}s ({self.store.path}); the write "
                "may or may not be applied"
            )
        error, result = box[0]
        if error is not None:  # one error object per commit: raise a copy of it
            raise type(error)(*error.args)
        return result
