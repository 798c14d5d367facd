"""Pipelines: many client calls sent in one Pyro5 call, as redis-py's pipelines do.

A :class:`Pipeline` queues calls made on it; :meth:`Pipeline.execute` sends them
to the client's node in one ``TaskRunner.route_runs`` call (the calls in a compact
form, :func:`runs`) or, for calls whose first argument is not their bucket, as
``[bucket, func, args]`` items of one ``TaskRunner.route_batch`` call; the node
decides each item once and sends every other owner its share in one call (see
:meth:`pyrokv.TaskRunner.route_batch`). A pipeline that would pass a node's message
limits (:mod:`pyrokv.guard`) goes in several ``route_batch`` calls, in order
(:func:`chunks`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import serpent

from .errors import TaskArgumentError, UndecodableReplyError
from .guard import MAX_STRUCTURE, structure_size
from .protocol import VERBS
from .router import task_name
from .routing import Hop

if TYPE_CHECKING:
    from .client import Client
    from .router import Router

__all__ = ["Pipeline", "chunks", "runs", "send_batches"]


class Pipeline:
    """Calls queued on a :class:`Client`, sent in one batch by :meth:`execute`.

    Each method queues a call and returns the pipeline, so calls chain::

        with kv.pipeline() as p:
            p.create("shopping").put("shopping", "milk", 1).get("shopping", "milk")
        p.results      # [None, None, 1]

    :meth:`execute` sends the queued calls to the client's node in one
    ``TaskRunner.route_batch`` call (several, in order, when they would pass the
    node's message limits), and the node sends each other owner its share in one
    call. The result is a list in call order; a call that failed holds its
    exception instance in its slot, and the others still ran. Calls on one bucket
    run in the order queued; calls on buckets of different owners may run in any
    order. It is not a transaction: nothing is undone when a call fails.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._items: list[list[Any]] = []
        self._defaults: dict[int, Any] = {}
        #: What the last :meth:`execute` returned (None before the first).
        self.results: list[Any] | None = None

    def route(
        self,
        bucket: str | bytes,
        func: str | Callable[..., Any],
        args: Sequence[Any] = (),
    ) -> Pipeline:
        """Queue an allowlisted task to run on the owner of ``bucket``."""
        self._items.append([bucket, task_name(func), list(args)])
        return self

    def _verb(self, word: bytes, *args: Any) -> Pipeline:
        self._items.append([args[0], VERBS[word].task_name, list(args)])
        return self

    def create(self, bucket: str) -> Pipeline:
        """Queue :meth:`Client.create`."""
        return self._verb(b"CREATE", bucket)

    def put(self, bucket: str, key: Any, value: Any) -> Pipeline:
        """Queue :meth:`Client.put`."""
        return self._verb(b"PUT", bucket, key, value)

    def get(self, bucket: str, key: Any, default: Any = None) -> Pipeline:
        """Queue :meth:`Client.get`: its slot holds ``default`` for a missing key."""
        if default is not None:
            self._defaults[len(self._items)] = default
        return self._verb(b"GET", bucket, key)

    def delete(self, bucket: str, key: Any) -> Pipeline:
        """Queue :meth:`Client.delete`."""
        return self._verb(b"DELETE", bucket, key)

    def keys(self, bucket: str) -> Pipeline:
        """Queue :meth:`Client.keys`."""
        return self._verb(b"KEYS", bucket)

    def execute(self) -> list[Any]:
        """Send every queued call; return their results, in call order.

        A failed call's slot holds its exception (a :class:`BucketNotFoundError`, a
        :class:`NodeUnavailableError` ...); nothing is raised for it. The queue is
        empty afterwards, so the pipeline can be used again.
        Raises :class:`ClientClosedError` when the client is closed, and
        :class:`NodeUnavailableError` when the client finds no node to talk to: then
        nothing was sent, and the calls stay queued.
        """
        results: list[Any] = []
        if self._items:
            replies = self._client._batch(self._items)
            for index, (ok, value) in enumerate(replies):
                if ok and value is None:
                    value = self._defaults.get(index)
                results.append(value)
        else:
            self._client._check_open()
        self.reset()
        self.results = results
        return results

    def reset(self) -> None:
        """Drop every queued call, unsent."""
        self._items, self._defaults = [], {}

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:  # a pipeline is true even when nothing is queued
        return True

    def __repr__(self) -> str:
        return f"<pyrokv.Pipeline {len(self._items)} queued on {self._client!r}>"

    def __enter__(self) -> Pipeline:
        self._client._check_open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        """Send what is queued when the block ends normally; drop it when it raises."""
        if exc_type is None:
            self.execute()
        else:
            self.reset()


# -- sending a pipeline in calls that fit ----------------------------------------

#: Room left in each call for what is not the items: object id, method, path, budget.
_CALL_MARGIN = 64 * 1024
_STRUCTURE_MARGIN = 4 * 1024
#: serpent's first line (``# serpent utf-8 python3.2``), in front of every dump; it
#: holds no string literal.
_SERPENT_HEADER = len(serpent.dumps(None)) - len(b"None")


def _dumps(obj: Any) -> bytes:
    """``obj`` as Pyro5 serializes it in a call (serpent, bytes as bytes)."""
    data: bytes = serpent.dumps(obj, module_in_classname=True, bytes_repr=True)
    return data


def chunks(
    items: list[list[Any]], max_message: int
) -> list[list[list[Any]] | TaskArgumentError]:
    """``items`` in runs, in order, each small enough for one call to a node.

    A node refuses a message larger than its ``max_message``, or with more than
    :data:`~pyrokv.guard.MAX_STRUCTURE` bytes outside string literals (see
    :mod:`pyrokv.guard`): both are measured on the items as serpent writes them.
    An item too large on its own is not sent: in its place is the
    :class:`TaskArgumentError` that says so.
    """
    size_limit = max(max_message - _CALL_MARGIN, 1)
    structure_limit = MAX_STRUCTURE - _STRUCTURE_MARGIN
    whole = _dumps(items)
    if len(whole) <= size_limit and structure_size(whole) <= structure_limit:
        return [items]  # the common case: one call
    runs: list[list[list[Any]] | TaskArgumentError] = []
    chunk: list[list[Any]] = []
    size = structure = 0
    for item in items:
        data = _dumps(item)
        item_size = len(data) - _SERPENT_HEADER + 1  # and the comma after it
        item_structure = structure_size(data) - _SERPENT_HEADER + 1
        if chunk and (
            size + item_size > size_limit
            or structure + item_structure > structure_limit
        ):
            runs.append(chunk)
            chunk, size, structure = [], 0, 0
        if item_size > size_limit or item_structure > structure_limit:
            runs.append(
                TaskArgumentError(
                    f"a call of {item[1]} on bucket {item[0]!r:.60} is too large to "
                    f"send: {item_size} bytes, {item_structure} of them outside "
                    f"strings, where a node takes {size_limit} and "
                    f"{structure_limit}; nothing was sent for it"
                )
            )
            continue
        chunk.append(item)
        size += item_size
        structure += item_structure
    if chunk:
        runs.append(chunk)
    return runs


def runs(items: list[list[Any]]) -> list[list[Any]] | None:
    """``items`` in the compact form of :meth:`pyrokv.TaskRunner.route_runs`: calls
    of one task in a row, with as many arguments each, as ``[func, width, args]``;
    None when a call's first argument is not its bucket (then the items go as
    they are, to ``route_batch``)."""
    out: list[list[Any]] = []
    func: Any = None
    width = 0
    flat: list[Any] = []
    for bucket, name, args in items:
        same = args and (
            args[0] is bucket or (type(args[0]) is type(bucket) and args[0] == bucket)
        )
        if not same:
            return None
        if name != func or len(args) != width:
            func, width, flat = name, len(args), []
            out.append([func, width, flat])
        flat += args
    return out


def _fits(data: Any, max_message: int) -> bool:
    """Whether ``data`` passes a node's message limits in one call (see :func:`chunks`)."""
    whole = _dumps(data)
    return (
        len(whole) <= max(max_message - _CALL_MARGIN, 1)
        and structure_size(whole) <= MAX_STRUCTURE - _STRUCTURE_MARGIN
    )


def send_batches(
    router: Router,
    node: str,
    items: list[list[Any]],
    max_message: int,
    timeout: float,
) -> list[list[Any]]:
    """Send ``[bucket, func, args]`` items to ``node`` in as few calls as its message
    limits allow, one after another: one ``TaskRunner.route_runs`` call when every
    call's first argument is its bucket (the verbs' calls) and their compact form
    (:func:`runs`) fits in one message; else ``TaskRunner.route_batch`` calls of
    the runs of items that fit (:func:`chunks`).

    Returns ``[ok, value]`` per item, in order. Each call may take ``timeout``
    seconds. An item too large to send on its own holds a :class:`TaskArgumentError`. When a call fails as a whole (the node cannot be reached, or answers
    out of protocol), its items and every item after them hold that error: nothing
    after it is sent, so calls queued later never run before calls queued earlier.
    """
    # The common case, checked without serializing the items: the compact form
    # fits in one call. Otherwise the items go in runs that fit, as they are.
    compact = runs(items)
    whole = compact is not None and _fits(compact, max_message)
    results: list[list[Any]] = []
    for chunk in [items] if whole else chunks(items, max_message):
        if isinstance(chunk, TaskArgumentError):  # one item, too large to send
            results.append([False, chunk])
            continue
        try:
            replies = _send_chunk(
                router, node, chunk, compact if whole else None, timeout
            )
        except Exception as exc:  # the call failed: the error is each item's result
            results += [[False, exc]] * (len(items) - len(results))
            break
        results += replies
    return results


def _send_chunk(
    router: Router,
    node: str,
    chunk: list[list[Any]],
    compact: list[list[Any]] | None,
    timeout: float,
) -> list[list[Any]]:
    """One call to ``node`` for ``chunk``, sent as ``compact`` when that is not None;
    ``[ok, value]`` per item. Raises when the call fails as a whole."""
    deadline = time.monotonic() + timeout
    if compact is None:
        replies = router.send_batch(Hop(node, ()), chunk, deadline)
        if not isinstance(replies, list) or len(replies) != len(chunk):
            raise _not_one_each(node, len(chunk))
        return [_checked(reply, node) for reply in replies]
    reply = router.proxies.call(
        node,
        deadline - time.monotonic(),
        lambda proxy, inner: proxy.route_runs(compact, inner),
    )
    if (
        not isinstance(reply, (list, tuple))
        or len(reply) != 2
        or not isinstance(reply[0], list)
        or len(reply[0]) != len(chunk)
        or not isinstance(reply[1], dict)
    ):
        raise _not_one_each(node, len(chunk))
    values, errors = reply
    results = [[True, value] for value in values]
    for index, error in errors.items():
        if type(index) is not int or not 0 <= index < len(chunk):
            raise _not_one_each(node, len(chunk))
        results[index] = _checked([False, error], node)
    return results


def _not_one_each(node: str, count: int) -> UndecodableReplyError:
    return UndecodableReplyError(
        f"node {node!r} answered a batch of {count} requests with something else "
        "than one result for each"
    )


def _checked(reply: Any, node: str) -> list[Any]:
    """One ``[ok, value]`` of a node's batch reply, checked."""
    if (
        isinstance(reply, (list, tuple))
        and len(reply) == 2
        and isinstance(reply[0], bool)
        and (reply[0] or isinstance(reply[1], BaseException))
    ):
        return [reply[0], reply[1]]
    return [
        False,
        UndecodableReplyError(
            f"node {node!r} answered a request of a batch with {reply!r:.60}, "
            "not [ok, value]"
        ),
    ]
