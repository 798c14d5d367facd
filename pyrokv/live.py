"""A node's side of live routing tables: its version, a prepared change, the hand-off.

A change (``pyrokv table set``, :mod:`pyrokv.changes`) reaches every live node in
three calls of its :class:`~pyrokv.TaskRunner`, each answered here:

1. ``table_prepare``: the node keeps the new table aside (:class:`Pending`), after
   checking that no other change holds it and that it is not at that version yet.
   Nothing changes in routing. The first node (by name) is where two changes
   started at once meet: one prepares it, the other is refused.
2. ``table_apply``: the node *switches* (:meth:`Live._switch`), in one step on the
   thread that serves its text requests: it routes by the new table at the new
   version, holds (:data:`~pyrokv.routing.WAIT`) the requests for the slots it
   gains, waits for the tasks running on other threads that decided by the old
   table (:class:`~pyrokv.routing.Gate`), and takes every bucket it no longer owns
   out of its registry into an *outbox*, per new owner. Then a thread ships the
   outbox to each owner (``table_absorb``), and tells every other node of the
   change that it is done (the last call, even with nothing in it).
3. The node that gains slots serves them once every other node of the change has
   said it is done: from then on it holds all the data any node had for them.

A request never runs on a bucket whose data is elsewhere: the old owner stops
serving a range in the same step as it takes the range's buckets out, and the new
owner holds the range's requests until its data is in. A request that another node
routed by an older table reaches the old owner, which routes it by its own (newer)
table; a request routed by a newer table makes a node that has not switched yet
switch first (its table is prepared). See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import (
    NoRouteError,
    TableChangeError,
    TableVersionError,
    TaskArgumentError,
)
from .registry import Registry
from .routing import Routing
from .table import RoutingTable

log = logging.getLogger("pyrokv.live")

__all__ = [
    "CHUNK_KEYS",
    "HANDOFF_PACE",
    "Live",
    "Pending",
    "moved_ranges",
    "pack_pairs",
    "unpack_pairs",
]

#: The most keys one hand-off call carries (a bucket larger than this is sent in
#: several calls), so each call stays well inside the limits a node accepts.
CHUNK_KEYS = 4000
#: While either end of a hand-off serves requests, the sender pauses after each
#: call for this many times as long as the call took: the hand-off takes at most
#: 1 / (1 + HANDOFF_PACE) of the time, the requests the rest. With no requests on
#: either node it does not pause. Measured (benchmarks, case ``move_load``: 8
#: connections reading buckets that stay while 10^5 keys move, 2 cores): their rate
#: was 0.55x without pauses, 0.73x with 1.5, 0.79x with 2 (the move 0.6 s, 1.6 s,
#: 2.5 s).
HANDOFF_PACE = 2.0

_T = TypeVar("_T")

#: Types JSON carries exactly (the same type and value back).
_PLAIN = frozenset({str, int, float, bool, type(None)})


def pack_pairs(pairs: list[tuple[Any, Any]]) -> list[list[Any]] | str:
    """A bucket's ``(key, value)`` pairs as one hand-off call carries them.

    JSON text, when every key and value is a str, int, float, bool or None (JSON
    gives those back exactly): the receiver decodes it about 40 times faster than
    the same pairs as lists, which serpent parses into a syntax tree (a move of
    100,000 keys spent about 1.3 s there). Anything else: ``[[key, value], ...]``.
    """
    plain = _PLAIN
    if all(type(k) in plain and type(v) in plain for k, v in pairs):
        try:
            return json.dumps(pairs)
        except ValueError:  # an int longer than Python turns into text
            pass
    return [[key, value] for key, value in pairs]


def unpack_pairs(part: object) -> list[Any]:
    """What :func:`pack_pairs` made: ``[[key, value], ...]``, checked."""
    if isinstance(part, str):
        try:
            part = json.loads(part)
        except (ValueError, RecursionError):
            part = None
    if not isinstance(part, list) or not all(
        isinstance(pair, list) and len(pair) == 2 for pair in part
    ):
        raise TaskArgumentError(
            "a hand-off is [[bucket, pairs, first]], its pairs [[key, value], ...] "
            "or the same as JSON text"
        )
    return part


@dataclass
class Pending:
    """A change prepared on this node, not applied yet."""

    version: int
    table: RoutingTable
    participants: tuple[str, ...]
    token: str
    expires: float  # time.monotonic() after which another change may take over


@dataclass
class _Counts:
    buckets: int = 0
    keys: int = 0


@dataclass
class _State:
    previous: str | None = None  # the text of the table before this version
    participants: tuple[str, ...] = ()
    waiting: set[str] = field(default_factory=set)
    outbox: dict[str, dict[str, dict[Any, Any]]] = field(default_factory=dict)
    #: per slot: buckets and keys this node handed away at this version
    sent: dict[int, _Counts] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # owner -> why not shipped
    #: buckets of held slots whose every part has arrived: served already
    arrived: set[str] = field(default_factory=set)
    #: the change that made this version, and until when its coordinator drives
    #: it (0 once it gave up): an incomplete change past that stopped half-way
    token: str = ""
    expires: float = 0.0


def _owner(table: RoutingTable, bucket: str) -> str | None:
    try:
        return table.owner(bucket)
    except NoRouteError:
        return None


def moved_ranges(
    old: Iterable[str | None], new: Iterable[str | None]
) -> list[tuple[int, int, str | None, str | None]]:
    """The runs of slots whose owner changes: ``(first, last, from, to)`` each."""
    runs: list[tuple[int, int, str | None, str | None]] = []
    for slot, (before, after) in enumerate(zip(old, new, strict=True)):
        if before == after or after is None:
            continue
        if runs and runs[-1][1] == slot - 1 and runs[-1][2:] == (before, after):
            runs[-1] = (runs[-1][0], slot, before, after)
        else:
            runs.append((slot, slot, before, after))
    return runs


class Live:
    """The live-table state of node ``node`` (see the module's docstring).

    Every change of state runs on one thread (:meth:`_serial`): the event loop of
    the node's text server when it has one (so a switch falls between two text
    requests), else a thread of its own.
    """

    def __init__(
        self,
        node: str,
        registry: Registry,
        routing: Routing,
        send: Callable[[str, float, Callable[[Any, float], Any]], Any],
    ) -> None:
        self.node = node
        self.registry = registry
        self.routing = routing
        #: ``send(owner, timeout, call)``: ``call(proxy, seconds)`` on that node's
        #: TaskRunner (the router's proxy pool).
        self._send = send
        self.pending: Pending | None = None
        self.state = _State()
        #: The table this node was started with: what it routes by at version 0.
        self.own = routing.table
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Called (on the serial thread) when held slots are served again.
        self.on_release: Callable[[], None] | None = None
        #: Called (on the serial thread) after each switch: (version, table).
        self.on_switch: list[Callable[[int, RoutingTable], None]] = []
        self._released = threading.Condition()
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._shipping = threading.Lock()
        self._aside = 0  # see aside()
        #: Requests this node has served so far (``Stats.served``): a hand-off
        #: makes room for them (:data:`HANDOFF_PACE`). None: it never pauses.
        self.served: Callable[[], int] | None = None
        self._served_at_absorb = 0

    # -- the serial thread ---------------------------------------------------------

    def _serial(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run ``function(*args)`` on the serial thread and return its result."""
        loop = self.loop
        if loop is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                return function(*args)
            return asyncio.run_coroutine_threadsafe(
                _call(function, *args), loop
            ).result()
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"pyrokv-{self.node}-table"
            )
        if threading.current_thread().name.startswith(f"pyrokv-{self.node}-table"):
            return function(*args)
        return self._worker.submit(function, *args).result()

    def close(self) -> None:
        """Stop the serial thread of a node without a text server."""
        if self._worker is not None:
            self._worker.shutdown(wait=False)

    # -- what a node says ----------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The node's table state (``table_state``): version, table, a change in hand."""
        return self._serial(self._describe)

    def _describe(self) -> dict[str, Any]:
        state = self.state
        pending = self.pending
        routing = self.routing
        outbox = {
            owner: [len(buckets), sum(len(b) for b in buckets.values())]
            for owner, buckets in state.outbox.items()
            if buckets
        }
        return {
            "node": self.node,
            "version": routing.version,
            "table": routing.table.spec(),
            "own": self.own.spec(),
            "previous": state.previous,
            "participants": list(state.participants),
            "waiting": sorted(state.waiting),
            "outbox": outbox,
            "failed": dict(state.failed),
            "sent": [
                [slot, c.buckets, c.keys] for slot, c in sorted(state.sent.items())
            ],
            "pending": None
            if pending is None
            else {
                "version": pending.version,
                "table": pending.table.spec(),
                "participants": list(pending.participants),
                "token": pending.token,
                "expires_in": round(pending.expires - time.monotonic(), 3),
            },
            "complete": pending is None and not state.waiting and not outbox,
            "change": {
                "token": state.token,
                "expires_in": round(state.expires - time.monotonic(), 3),
            },
        }

    # -- a change, step by step ----------------------------------------------------

    def prepare(
        self,
        version: int,
        spec: str,
        participants: list[str],
        token: str,
        lease: float,
    ) -> dict[str, Any]:
        """Step 1: keep ``spec`` aside as the table of ``version``."""
        table = RoutingTable.parse(spec)
        return self._serial(
            self._prepare, int(version), table, tuple(participants), str(token), lease
        )

    def _prepare(
        self,
        version: int,
        table: RoutingTable,
        participants: tuple[str, ...],
        token: str,
        lease: float,
    ) -> dict[str, Any]:
        now = time.monotonic()
        pending = self.pending
        if pending is not None and pending.token != token and pending.expires > now:
            raise TableVersionError(
                f"another change is running: node {self.node!r} holds the change to "
                f"version {pending.version} ({pending.table.spec()}); the table is "
                f"at version {self.routing.version}. Nothing of this change was "
                "applied: look with 'pyrokv table show', then run it again"
            )
        current = self.routing.version
        if current == version and self.routing.table == table:
            # switched already: the change is run again to finish it, maybe
            # without nodes that are gone (--drop-dead)
            self.pending = None
            self.state.token, self.state.expires = token, now + lease
            self._retain(participants)
            return self._describe()
        if current >= version:
            raise TableVersionError(
                f"the table is at version {current} on node {self.node!r}, not "
                f"{version - 1}: another change was made first. Nothing of this "
                "change was applied: look with 'pyrokv table show', then run it again"
            )
        self.pending = Pending(version, table, participants, token, now + lease)
        return self._describe()

    def _retain(self, participants: tuple[str, ...]) -> None:
        """Wait for hand-offs from ``participants`` only (the others are gone)."""
        state = self.state
        state.participants = participants
        state.waiting &= set(participants)
        for owner in list(state.outbox):
            if owner not in participants:
                log.warning(
                    "node %r is not part of the change any more: %d buckets for it "
                    "are kept here",
                    owner,
                    len(state.outbox[owner]),
                )
        if not state.waiting:
            self._release_held()

    def adopt(self, version: int, table: RoutingTable) -> None:
        """Take the cluster's table of ``version`` (a node joining): nothing to wait
        for; any bucket it holds that another node owns is handed to it."""
        self._serial(self._adopt, Pending(version, table, (self.node,), "join", 0.0))

    def _adopt(self, pending: Pending) -> None:
        """Route by ``pending``'s table; unlike a change, keep every bucket where
        it is (see :meth:`hand_off_strays`)."""
        routing = self.routing
        old = routing.table
        routing.switch(pending.table, pending.version, frozenset())
        self.state = _State(previous=old.spec(), participants=(self.node,))
        self.pending = None
        for callback in self.on_switch:
            callback(pending.version, pending.table)

    def strays(self) -> dict[str, dict[str, dict[Any, Any]]]:
        """The buckets this node holds that another node owns, per owner: copies."""
        return self._serial(self._strays)

    def _strays(self) -> dict[str, dict[str, dict[Any, Any]]]:
        table = self.routing.table
        found: dict[str, dict[str, dict[Any, Any]]] = {}
        registry = self.registry
        for name in registry.buckets():
            owner = _owner(table, name)
            if owner not in (self.node, None):
                found.setdefault(owner, {})[name] = dict(registry._buckets[name])
        return found

    def hand_off_strays(self) -> dict[str, str]:
        """Send the buckets this node holds but does not own to their owners (a
        node that started with buckets in its data dir that the table gives
        elsewhere); each owner's buckets leave this node once it has them. The
        owner keeps what it has of a bucket and adds the keys it lacks. Returns
        why, for each owner that could not be reached (its buckets stay here,
        aside: no request is routed to them here)."""
        version = self.routing.version
        failed: dict[str, str] = {}
        kept = 0
        for owner, buckets in self.strays().items():
            try:
                self._ship_to(owner, version, buckets, keep=True)
            except Exception as exc:
                failed[owner] = f"{type(exc).__name__}: {exc}"
                kept += len(buckets)
                continue
            self._serial(self.registry.extract, list(buckets))
            log.info(
                "node %r handed %d buckets it held to their owner %r",
                self.node,
                len(buckets),
                owner,
            )
        self._aside = kept
        return failed

    def aside(self) -> int:
        """How many buckets this node holds that another node owns (kept aside):
        those :meth:`hand_off_strays` could not hand over; the next switch hands
        them off. A count kept, not a scan: INFO and every scrape read it."""
        return self._aside

    def release(self, token: str) -> None:
        """Forget a prepared change of ``token`` that was not applied; of one that was
        applied and is not complete, note that its coordinator gave up on it (it
        stopped half-way: it may be finished or undone now)."""
        self._serial(self._release, str(token))

    def _release(self, token: str) -> None:
        if self.pending is not None and self.pending.token == token:
            self.pending = None
        if self.state.token == token:  # its coordinator is done, or gave up half-way
            self.state.expires = 0.0

    def apply(self, version: int, token: str) -> dict[str, Any]:
        """Step 2: switch to the prepared table of ``version``, then hand off."""
        return self._serial(self._apply, int(version), str(token))

    def _apply(self, version: int, token: str) -> dict[str, Any]:
        current = self.routing.version
        if version > current:
            pending = self.pending
            if pending is None or pending.version != version:
                raise TableChangeError(
                    f"node {self.node!r} has no prepared table for version {version} "
                    f"(it is at version {current}): run the change again"
                )
            self._switch(pending)
        elif version < current:
            raise TableVersionError(
                f"node {self.node!r} is at version {current} already, not {version}"
            )
        self._ship_soon()
        return self._describe()

    def catch_up(self, version: int) -> bool:
        """A request routed by the table of ``version``, newer than this node's:
        switch to it now if it is prepared here. True if this node switched."""
        return self._serial(self._catch_up, version)

    def _catch_up(self, version: int) -> bool:
        pending = self.pending
        if version <= self.routing.version:
            return False
        if pending is None or pending.version != version:
            log.warning(
                "a request routed by table version %d reached node %r at version %d, "
                "with no such table prepared: routing it by this node's table",
                version,
                self.node,
                self.routing.version,
            )
            return False
        self._switch(pending)
        self._ship_soon()
        return True

    def _switch(self, pending: Pending) -> None:
        """Route by ``pending``'s table, hold the slots gained, take out the rest."""
        self._aside = 0  # every bucket another node owns goes to the outbox below
        routing = self.routing
        me = self.node
        old = routing.table
        new = pending.table
        if new.hashed == old.hashed:
            gained = frozenset(
                slot
                for slot in range(256)
                if new.by_slot[slot] == me and old.by_slot[slot] != me
            )
        else:  # another rule: a slot holds other names; hold all this node owns
            gained = frozenset(s for s in range(256) if new.by_slot[s] == me)
        others = set(pending.participants) - {me}
        routing.switch(new, pending.version, gained if others else frozenset())
        if not routing.gate.flip(routing.timeout):
            log.warning(
                "tasks that started before the switch to table version %d still run "
                "after %.1f s: their writes may be lost",
                pending.version,
                routing.timeout,
            )
        state = self.state
        outbox: dict[str, dict[str, dict[Any, Any]]] = {}
        back: dict[str, dict[Any, Any]] = {}
        for buckets in state.outbox.values():  # not handed off yet: by the new table
            for name, items in buckets.items():
                owner = _owner(new, name)
                if owner is None or owner == me:
                    back[name] = items
                else:
                    outbox.setdefault(owner, {})[name] = items
        self.registry.install(back)
        names = [
            name
            for name in self.registry.buckets()
            if _owner(new, name) not in (me, None)
        ]
        sent: dict[int, _Counts] = {}
        for name, items in self.registry.extract(names).items():
            owner = _owner(new, name)
            assert owner is not None
            outbox.setdefault(owner, {})[name] = items
            counts = sent.setdefault(new.slot(name), _Counts())
            counts.buckets += 1
            counts.keys += len(items)
        self.state = _State(
            previous=old.spec(),
            participants=pending.participants,
            waiting=others if routing.held else set(),
            outbox=outbox,
            sent=sent,
            token=pending.token,
            expires=pending.expires,
        )
        self.pending = None
        log.info(
            "node %r routes by table version %d: %s%s",
            me,
            pending.version,
            new.spec() or "(empty)",
            f"; handing off {len(names)} buckets" if names else "",
        )
        for callback in self.on_switch:
            callback(pending.version, new)

    # -- the hand-off --------------------------------------------------------------

    def _ship_soon(self) -> None:
        threading.Thread(
            target=self._ship,
            args=(self.routing.version,),
            name=f"pyrokv-{self.node}-handoff",
            daemon=True,
        ).start()

    def _ship(self, version: int) -> None:
        """Send each other node of the change its buckets, then say this node is done."""
        with self._shipping:
            todo = self._serial(self._todo, version)
            if todo is None:
                return
            failed: dict[str, str] = {}
            for owner, buckets in todo:
                try:
                    self._ship_to(owner, version, buckets)
                except Exception as exc:
                    failed[owner] = f"{type(exc).__name__}: {exc}"
                    log.warning(
                        "could not hand off %d buckets to node %r for table version "
                        "%d: %s (run the change again to retry)",
                        len(buckets),
                        owner,
                        version,
                        exc,
                    )
                    continue
                self._serial(self._shipped, owner, version, buckets)
            self._serial(self._failed, version, failed)

    def _todo(self, version: int) -> list[tuple[str, dict[str, Any]]] | None:
        if self.routing.version != version:
            return None
        state = self.state
        owners = set(state.participants) | set(state.outbox)
        owners.discard(self.node)
        return [(owner, dict(state.outbox.get(owner, {}))) for owner in sorted(owners)]

    def _ship_to(
        self, owner: str, version: int, buckets: dict[str, Any], *, keep: bool = False
    ) -> None:
        chunk: list[list[Any]] = []
        size = 0
        timeout = self.routing.timeout
        for name, items in buckets.items():
            pairs = list(items.items())
            first = True
            for start in range(0, max(len(pairs), 1), CHUNK_KEYS):
                part = pairs[start : start + CHUNK_KEYS]
                whole = start + CHUNK_KEYS >= len(pairs)  # its last part
                chunk.append([name, pack_pairs(part), first, whole])
                first = False
                size += len(part)
                if size >= CHUNK_KEYS:
                    self._send_chunk(owner, version, chunk, False, timeout, keep)
                    chunk, size = [], 0
        self._send_chunk(owner, version, chunk, True, timeout, keep)

    def _send_chunk(
        self,
        owner: str,
        version: int,
        chunk: list[Any],
        last: bool,
        timeout: float,
        keep: bool = False,
    ) -> None:
        """One ``table_absorb`` call; then, unless it was the last one, a pause if
        either node served requests meanwhile (:data:`HANDOFF_PACE`)."""
        me = self.node
        served = self.served
        before = served() if served is not None else 0
        started = time.monotonic()
        busy = self._send(
            owner,
            timeout,
            lambda proxy, _left: proxy.table_absorb(version, me, chunk, last, keep),
        )
        if last:
            return
        if busy is True or (served is not None and served() != before):
            # making room for requests, not waiting for anything
            time.sleep((time.monotonic() - started) * HANDOFF_PACE)

    def _shipped(self, owner: str, version: int, buckets: dict[str, Any]) -> None:
        if self.routing.version != version:
            return
        box = self.state.outbox.get(owner)
        if box is None:
            return
        for name, items in buckets.items():
            if box.get(name) is items:
                del box[name]
        if not box:
            del self.state.outbox[owner]
        self.state.failed.pop(owner, None)

    def _failed(self, version: int, failed: dict[str, str]) -> None:
        if self.routing.version == version:
            self.state.failed.update(failed)

    def absorb(
        self,
        version: int,
        sender: str,
        chunk: list[list[Any]],
        last: bool,
        keep: bool = False,
    ) -> bool:
        """Buckets another node hands to this one; ``last``: it has sent them all.

        True if this node served requests since the last hand-off call it took:
        the sender then makes room for them (:data:`HANDOFF_PACE`).
        """
        return self._serial(
            self._absorb, int(version), str(sender), chunk, bool(last), bool(keep)
        )

    def _absorb(
        self,
        version: int,
        sender: str,
        chunk: list[list[Any]],
        last: bool,
        keep: bool = False,
    ) -> bool:
        if version > self.routing.version and not self._catch_up(version):
            raise TableChangeError(
                f"node {self.node!r} is at table version {self.routing.version} and "
                f"has no table for version {version} prepared: run the change again"
            )
        me = self.node
        table = self.routing.table
        whole: dict[str, dict[Any, Any]] = {}  # first parts: replace what is here
        rest: dict[str, dict[Any, Any]] = {}  # later parts of a bucket: add to it
        outbox = self.state.outbox
        stray = False
        complete: set[str] = set()
        for name, pairs, first, *end in chunk:
            items = dict(pairs)  # [[key, value], ...]
            owner = _owner(table, name)
            if owner not in (me, None):  # routed by an older table: not ours now
                box = outbox.setdefault(owner, {})
                if first or name not in box:
                    box[name] = items
                else:
                    box[name].update(items)
                stray = True
                continue
            if end and end[0]:
                complete.add(name)
            if first:
                whole[name] = items
            elif name in whole:
                whole[name].update(items)
            else:
                rest.setdefault(name, {}).update(items)
        # What is here stays, and only missing keys are added, for a restarted
        # node's old copies (keep) and for a bucket served since it arrived (a
        # part sent again: its writes since must not be undone).
        here = self.registry._buckets
        arrived = self.state.arrived
        install: dict[str, dict[Any, Any]] = {}
        add: dict[str, dict[Any, Any]] = {}
        for parts, replace in ((whole, True), (rest, False)):
            for name, items in parts.items():
                if name in arrived or (keep and name in here):
                    have = here.get(name, {})
                    add.setdefault(name, {}).update(
                        (k, v) for k, v in items.items() if k not in have
                    )
                elif replace:
                    install[name] = items
                else:
                    add.setdefault(name, {}).update(items)
        self.registry.install(install)
        self.registry.merge(add)
        held = self.routing.held
        newly = {n for n in complete - arrived if held and table.slot(n) in held}
        if newly:  # each bucket is served as soon as all of it is here
            arrived |= newly
            if self.on_release is not None:
                self.on_release()
            with self._released:
                self._released.notify_all()
        if stray:
            self._ship_soon()
        if last and version == self.routing.version:
            state = self.state
            state.waiting.discard(sender)
            if not state.waiting:
                self._release_held()
        if self.served is None:
            return False
        served = self.served()
        busy = served != self._served_at_absorb
        self._served_at_absorb = served
        return busy

    def _release_held(self) -> None:
        routing = self.routing
        if not routing.held:
            return
        routing.switch(routing.table, routing.version, frozenset())
        log.info(
            "node %r has the data of every range it gained at table version %d: "
            "serving them",
            self.node,
            routing.version,
        )
        if self.on_release is not None:
            self.on_release()
        with self._released:
            self._released.notify_all()

    def ready(self, bucket: str | bytes) -> bool:
        """Whether ``bucket``, of a held slot, has arrived whole: it is served."""
        arrived = self.state.arrived
        if not arrived:
            return False
        if isinstance(bucket, bytes):
            bucket = bucket.decode("utf-8", "surrogateescape")
        return bucket in arrived

    def wait_released(self, bucket: str | bytes, deadline: float) -> bool:
        """Block (a thread, not the loop) until ``bucket`` may be served (its slot
        is no longer held, or all of it arrived), or the deadline passes; True if
        it may."""
        slot = self.routing.table.slot(bucket)
        with self._released:
            return self._released.wait_for(
                lambda: slot not in self.routing.held or self.ready(bucket),
                max(deadline - time.monotonic(), 0.0),
            )

    def waiting_for(self) -> list[str]:
        """The nodes whose data this node still waits for (for error messages)."""
        return sorted(self.state.waiting)


async def _call(function: Callable[..., _T], *args: Any) -> _T:
    return function(*args)
