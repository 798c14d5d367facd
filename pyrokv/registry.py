"""The buckets of one node: bucket name -> dict of key -> value.

A plain object (``@expose`` is only a marker) so it is tested without a network.
Pyro5's thread pool calls it from many threads at once. Each method does one
operation on a builtin dict (``setdefault``, ``get``, ``__setitem__``, ``pop``), which
is atomic in CPython and on free-threaded builds, so no lock is needed and readers
never wait on writers.
"""

from __future__ import annotations

from typing import Any

from Pyro5.api import expose

from .errors import BucketNotFoundError

__all__ = ["Registry"]


@expose
class Registry:
    """The buckets of one node. ``get``/``put``/``delete`` need the bucket to exist."""

    def __init__(self) -> None:
        self._buckets: dict[Any, dict[Any, Any]] = {}

    def create(self, bucket: str) -> None:
        """Create ``bucket`` if it does not exist yet; an existing bucket is kept as is."""
        self._buckets.setdefault(bucket, {})

    def lookup(self, bucket: str) -> bool:
        """Whether ``bucket`` exists on this node."""
        return bucket in self._buckets

    def get(self, bucket: str, key: Any) -> Any:
        """The value of ``key`` in ``bucket``, or None when the key is missing."""
        return self._bucket(bucket).get(key)

    def put(self, bucket: str, key: Any, value: Any) -> None:
        """Set ``key`` in ``bucket`` to ``value``."""
        self._bucket(bucket)[key] = value

    def delete(self, bucket: str, key: Any) -> Any:
        """Remove ``key`` from ``bucket``; return its old value, or None if it was missing."""
        return self._bucket(bucket).pop(key, None)

    def keys(self, bucket: str) -> list[Any]:
        """The keys of ``bucket``, sorted (by their ``repr`` when their types differ)."""
        found = list(self._bucket(bucket))
        try:
            return sorted(found)
        except TypeError:
            return sorted(found, key=repr)

    def extract(self, names: list[str]) -> dict[str, dict[Any, Any]]:
        r"""Remove the buckets ``names`` (those that exist) and return them: a hand-off.

        Used when a bucket's owner changes (docs/routing.md): the old owner extracts
        it, the new owner :meth:`install`\ s it.
        """
        taken = {}
        for name in names:
            bucket = self._buckets.pop(name, None)
            if bucket is not None:
                taken[name] = bucket
        return taken

    def install(self, buckets: dict[str, dict[Any, Any]]) -> None:
        """Add ``buckets`` (name -> its keys and values), replacing any of the same name."""
        for name, items in buckets.items():
            self._buckets[name] = dict(items)

    def key_count(self) -> int:
        """How many keys this node holds, in all its buckets."""
        return sum(len(bucket) for bucket in list(self._buckets.values()))

    def buckets(self) -> list[str]:
        """The names of every bucket on this node, sorted."""
        return sorted(self._buckets, key=repr)

    def count(self) -> int:
        """How many buckets this node holds."""
        return len(self._buckets)

    def _bucket(self, bucket: str) -> dict[Any, Any]:
        try:
            return self._buckets[bucket]
        except KeyError:
            raise BucketNotFoundError(
                f"bucket {bucket!r} does not exist: create it first"
            ) from None
        except TypeError:
            raise BucketNotFoundError(
                f"bucket {bucket!r} does not exist: a bucket name is text"
            ) from None
