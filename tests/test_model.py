"""A stateful model test: create/put/get/delete through routers over two real nodes vs a dict."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from pyrokv import BucketNotFoundError, NoRouteError, Router, RoutingTable

pytestmark = pytest.mark.distributed

_runs = itertools.count()
_NS: tuple[str, int] | None = None


class RoutedStore(RuleBasedStateMachine):
    """Routers entering at foo, at bar and from a client with its own table agree with a dict."""

    names = st.sampled_from(["apple", "melon", "night", "zoo", "0nope"])
    keys = st.sampled_from(["k1", "k2", "ü"])
    values = st.one_of(
        st.integers(), st.text(max_size=5), st.binary(max_size=5), st.none()
    )

    @initialize()
    def start(self) -> None:
        assert _NS is not None
        run = next(_runs)
        # bucket names unique to this run: the first byte (the route) is kept
        self.prefix = f"{run}-"
        self.model: dict[str, dict[str, object]] = {}
        self.routers = [
            Router(RoutingTable.parse("a..m=foo, n..z=bar"), None, ns=_NS),
            Router(RoutingTable.parse("0..255=foo"), None, ns=_NS),  # foo forwards n..z
            Router(RoutingTable.parse("0..255=bar"), None, ns=_NS),  # bar forwards a..m
        ]

    def teardown(self) -> None:
        for router in getattr(self, "routers", []):
            router.close()

    def bucket(self, name: str) -> str:
        return f"{name[0]}{self.prefix}{name[1:]}"

    @rule(name=names, which=st.integers(0, 2))
    def create(self, name: str, which: int) -> None:
        bucket = self.bucket(name)
        if name[0].isdigit():
            with pytest.raises(NoRouteError):
                self.routers[which].route(bucket, "pyrokv.tasks.create", [bucket])
            return
        self.routers[which].route(bucket, "pyrokv.tasks.create", [bucket])
        self.model.setdefault(bucket, {})

    @rule(name=names, key=keys, value=values, which=st.integers(0, 2))
    def put(self, name: str, key: str, value: object, which: int) -> None:
        bucket = self.bucket(name)
        call = lambda: self.routers[which].route(
            bucket, "pyrokv.tasks.put", [bucket, key, value]
        )
        if bucket in self.model:
            call()
            self.model[bucket][key] = value
        else:
            with pytest.raises((BucketNotFoundError, NoRouteError)):
                call()

    @rule(name=names, key=keys, which=st.integers(0, 2))
    def get(self, name: str, key: str, which: int) -> None:
        bucket = self.bucket(name)
        call = lambda: self.routers[which].route(
            bucket, "pyrokv.tasks.get", [bucket, key]
        )
        if bucket in self.model:
            assert call() == self.model[bucket].get(key)
        else:
            with pytest.raises((BucketNotFoundError, NoRouteError)):
                call()

    @rule(name=names, key=keys, which=st.integers(0, 2))
    def delete(self, name: str, key: str, which: int) -> None:
        bucket = self.bucket(name)
        if bucket in self.model:
            old = self.routers[which].route(
                bucket, "pyrokv.tasks.delete", [bucket, key]
            )
            assert old == self.model[bucket].pop(key, None)

    @invariant()
    def buckets_live_on_their_owner(self) -> None:
        for bucket in self.model:
            owner = "foo" if bucket[0] <= "m" else "bar"
            assert self.routers[0].route(bucket, "pyrokv.tasks.node_name") == owner


def test_routed_store_matches_a_dict(guide: tuple[str, int]) -> None:
    """Whichever node a request enters by, the store behaves like one dict of dicts."""
    global _NS
    _NS = guide
    run_state_machine_as_test(
        RoutedStore,
        settings=settings(max_examples=25, stateful_step_count=15, deadline=None),
    )
