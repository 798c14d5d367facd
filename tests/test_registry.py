"""Registry: buckets of one node, driven directly and against a dict model; no network."""

from __future__ import annotations

import threading

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pyrokv import BucketNotFoundError, Registry


@pytest.fixture(name="registry")
def _registry() -> Registry:
    return Registry()


def test_create_is_idempotent(registry: Registry) -> None:
    """Creating a bucket twice keeps what it holds."""
    registry.create("shopping")
    registry.put("shopping", "milk", 1)
    registry.create("shopping")
    assert registry.get("shopping", "milk") == 1
    assert registry.buckets() == ["shopping"]
    assert registry.lookup("shopping") is True
    assert registry.lookup("other") is False


def test_missing_key_and_delete(registry: Registry) -> None:
    """get of a missing key is None; delete returns the old value, or None."""
    registry.create("b")
    assert registry.get("b", "k") is None
    registry.put("b", "k", [1, "two"])
    assert registry.delete("b", "k") == [1, "two"]
    assert registry.delete("b", "k") is None


@pytest.mark.parametrize("op", ["get", "put", "delete"])
def test_missing_bucket_raises(registry: Registry, op: str) -> None:
    """get/put/delete on a bucket never created raise BucketNotFoundError saying what to do."""
    args = ("nosuch", "k", "v") if op == "put" else ("nosuch", "k")
    with pytest.raises(
        BucketNotFoundError, match="bucket 'nosuch' does not exist: create it first"
    ):
        getattr(registry, op)(*args)
    assert registry.buckets() == []


def test_concurrent_writers_lose_nothing(registry: Registry) -> None:
    """Eight threads writing distinct keys into shared buckets keep every write."""
    for b in ("x", "y"):
        registry.create(b)

    def writer(n: int) -> None:
        for i in range(2000):
            registry.put("x" if i % 2 else "y", (n, i), i)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(8):
        for i in range(2000):
            assert registry.get("x" if i % 2 else "y", (n, i)) == i


class RegistryModel(RuleBasedStateMachine):
    """Registry behaves like a dict of dicts, whatever the order of operations."""

    def __init__(self) -> None:
        super().__init__()
        self.registry = Registry()
        self.model: dict[str, dict[str, int]] = {}

    names = st.sampled_from(["a", "b", "zz", "é"])
    keys = st.sampled_from(["k1", "k2", "k3"])

    @rule(bucket=names)
    def create(self, bucket: str) -> None:
        self.registry.create(bucket)
        self.model.setdefault(bucket, {})

    @rule(bucket=names, key=keys, value=st.integers())
    def put(self, bucket: str, key: str, value: int) -> None:
        if bucket in self.model:
            self.registry.put(bucket, key, value)
            self.model[bucket][key] = value
        else:
            with pytest.raises(BucketNotFoundError):
                self.registry.put(bucket, key, value)

    @rule(bucket=names, key=keys)
    def get(self, bucket: str, key: str) -> None:
        if bucket in self.model:
            assert self.registry.get(bucket, key) == self.model[bucket].get(key)
        else:
            with pytest.raises(BucketNotFoundError):
                self.registry.get(bucket, key)

    @precondition(lambda self: self.model)
    @rule(bucket=names, key=keys)
    def delete(self, bucket: str, key: str) -> None:
        if bucket in self.model:
            assert self.registry.delete(bucket, key) == self.model[bucket].pop(
                key, None
            )

    @invariant()
    def same_buckets(self) -> None:
        assert sorted(self.registry.buckets()) == sorted(self.model)


TestRegistryModel = RegistryModel.TestCase
