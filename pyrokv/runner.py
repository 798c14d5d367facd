"""TaskRunner: runs allowlisted task functions on this node; the security boundary.

A task arrives as a dotted name (``pyrokv.tasks.get``), never as code. The name is
checked against the node's allowlist of modules *before anything is imported*, and
the object it resolves to must be a plain function defined in that very module, so
``pyrokv.tasks.os.system`` or ``builtins.eval`` never run. A plain object
(``@expose`` is only a marker), tested without a network.
"""

from __future__ import annotations

import importlib
import inspect
import re
import time
import types
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from Pyro5.api import expose

from . import guard, tasks
from .daemon import client_timeout
from .defaults import DEFAULT_ALLOW
from .errors import (
    NoRouterError,
    TaskArgumentError,
    TaskNotAllowedError,
    UndecodableReplyError,
)
from .live import unpack_pairs
from .protocol import BUCKET, VERBS
from .routing import HERE, WAIT, Hop, inner_budget
from .stats import Stats

if TYPE_CHECKING:
    from .live import Live
    from .registry import Registry
    from .router import Router

__all__ = ["DEFAULT_ALLOW", "TaskRunner", "check_module_name"]

_DOTTED = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*")


def check_module_name(module: str) -> str:
    """Return ``module`` if it is a dotted module name with no private parts."""
    if not isinstance(module, str) or not _DOTTED.fullmatch(module):
        raise TaskNotAllowedError(
            f"invalid module name {module!r} for the allowlist: use a dotted name "
            "such as mypackage.tasks, with no part starting with '_'"
        )
    return module


_F = TypeVar("_F", bound=Callable[..., Any])


def _exposed(method: _F) -> _F:
    """Pyro5's ``@expose``, typed: only these methods are reachable remotely."""
    return cast(_F, expose(method))


class TaskRunner:
    """Runs tasks on one node, within its allowlist; the Pyro object ``pyrokv.<node>.tasks``.

    ``run`` executes a task here. ``route`` is the remote half of
    :meth:`pyrokv.Router.route`: a request forwarded by another node, routed again by
    this node's own table. ``info`` describes the node for ``pyrokv status``.
    """

    def __init__(
        self,
        node: str,
        registry: Registry,
        allow: Iterable[str] = DEFAULT_ALLOW,
    ) -> None:
        self._context = tasks.TaskContext(node, registry, lambda: self.info())
        self._allow = frozenset(check_module_name(m) for m in allow)
        self._resolved: dict[str, Callable[..., Any]] = {}
        self.router: Router | None = None
        #: More of what :meth:`info` says: the node adds its counters and addresses.
        self.describe: Callable[[], dict[str, Any]] | None = None
        #: Where requests that arrive over Pyro5 are counted (the node's).
        self.stats = Stats()

    @property
    def node(self) -> str:
        """This node's name."""
        return self._context.node

    @property
    def allow(self) -> list[str]:
        """The modules whose functions this node runs, sorted."""
        return sorted(self._allow)

    @_exposed
    def run(
        self,
        func: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Run the allowlisted function ``func`` here with ``args`` and ``kwargs``.

        Raises :class:`TaskNotAllowedError` (and runs nothing) when ``func`` is outside
        the allowlist, :class:`TaskArgumentError` when the arguments do not fit.
        The remote entry: its arguments are checked before anything uses them.
        """
        return self.execute(func, guard.check_args(args), guard.check_kwargs(kwargs))

    def execute(
        self,
        func: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """:meth:`run` for callers in this process (the node's router), unchecked."""
        function = self._resolved.get(func) if isinstance(func, str) else None
        if function is None:
            function = self._resolve(func)
        token = tasks._current.set(self._context)
        try:
            if kwargs:
                return function(*args, **kwargs)
            return function(*args)
        except TypeError as exc:
            _check_arguments(func, function, args, kwargs, exc)
            raise
        finally:
            tasks._current.reset(token)

    @_exposed
    def route(
        self,
        bucket: str,
        func: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        path: Sequence[str] = (),
        budget: float | None = None,
        version: int | None = None,
    ) -> Any:
        """Route a task that another node (or a client) forwarded to this node.

        ``path`` names the nodes the request has visited; ``budget`` is the time left,
        in seconds, for the whole route; ``version`` the table version it was routed
        by (None from a client).
        """
        if not isinstance(func, str):
            raise TaskArgumentError("bucket must be text or bytes, func a dotted name")
        checked_path = guard.check_path(path)
        return self._route(
            bucket,
            func,
            _label(func),
            guard.check_args(args),
            guard.check_kwargs(kwargs),
            checked_path,
            guard.check_budget(budget),
            guard.check_version(version),
        )

    # -- the client's verbs: pyrokv.Client's calls, as small as Pyro5 calls go ----

    @_exposed
    def get(self, bucket: str, key: Any) -> Any:
        """``GET``: :meth:`route` of ``pyrokv.tasks.get``, from a client."""
        return self._verb("GET", (bucket, key))

    @_exposed
    def put(self, bucket: str, key: Any, value: Any) -> None:
        """``PUT``: :meth:`route` of ``pyrokv.tasks.put``, from a client."""
        self._verb("PUT", (bucket, key, value))

    @_exposed
    def delete(self, bucket: str, key: Any) -> Any:
        """``DELETE``: :meth:`route` of ``pyrokv.tasks.delete``, from a client."""
        return self._verb("DELETE", (bucket, key))

    @_exposed
    def create(self, bucket: str) -> None:
        """``CREATE``: :meth:`route` of ``pyrokv.tasks.create``, from a client."""
        self._verb("CREATE", (bucket,))

    @_exposed
    def keys(self, bucket: str) -> list[Any]:
        """``KEYS``: :meth:`route` of ``pyrokv.tasks.keys``, from a client."""
        return list(self._verb("KEYS", (bucket,)))

    def _verb(self, word: str, args: tuple[Any, ...]) -> Any:
        """Route a client's request of the bucket verb ``word``: :meth:`route` of its
        task, with nothing in the message but the arguments.

        Pyro5 decodes a call's arguments at a cost per element (see
        :mod:`pyrokv.guard`), so these calls carry no task name and no budget: the
        budget is the client's timeout, less a margin, which its proxy gave when it
        connected (:func:`pyrokv.daemon.client_timeout`).
        """
        router = self.router
        bucket = args[0]
        if router is not None and bucket.__class__ is str:
            # The common case, inline: a bucket of this node, decided as the text
            # server decides it; the verb's task is its registry method.
            routing = router.routing
            ticket = routing.gate.enter()
            try:
                if routing.decide(bucket) is HERE:
                    counts = self.stats.requests
                    try:
                        result = getattr(self._context.registry, _METHODS[word])(*args)
                    except Exception:
                        counts.error[word] += 1
                        raise
                    counts.ok[word] += 1
                    return result
            finally:
                routing.gate.leave(ticket)
        timeout = client_timeout()
        budget = None if timeout is None else inner_budget(timeout)
        return self._route(bucket, _TASKS[word], word, args, None, [], budget, None)

    def _route(
        self,
        bucket: Any,
        func: str,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        path: list[str],
        budget: float | None,
        version: int | None,
    ) -> Any:
        """:meth:`route` and :meth:`verb` once their arguments are checked; counts the
        request under ``name``."""
        if self.router is None:
            raise NoRouterError(f"node {self.node!r} has no router to route with")
        if not isinstance(bucket, (str, bytes)):
            raise TaskArgumentError("bucket must be text or bytes, func a dotted name")
        counts = self.stats.peer_requests if path else self.stats.requests
        try:
            result = self.router.forwarded(
                bucket, func, args, kwargs, path, budget, version
            )
        except Exception:
            counts.error[name] += 1
            raise
        counts.ok[name] += 1
        return result

    @_exposed
    def route_batch(
        self,
        items: Sequence[Sequence[Any]],
        path: Sequence[str] = (),
        budget: float | None = None,
        version: int | None = None,
    ) -> list[list[Any]]:
        """Route several ``[bucket, func, args]`` requests that arrived in one call.

        Returns ``[ok, value]`` per item, in the order of ``items``: the result, or
        the exception it raised (rebuilt with its own class by the caller).
        Each item is decided once (:meth:`~pyrokv.routing.Routing.decide`); the items
        for this node run here, in order, and each other owner gets its items in
        one :meth:`~pyrokv.Router.send_batch` call, so a batch costs one Pyro5 call
        per owner, not per item. Items for one bucket keep their order (they all go
        to one owner); items for different owners may run in any order. An owner
        that cannot be reached fails its own items only.
        Coalescing concurrent requests into one Pyro5 call is what lets routed
        throughput grow with clients (``PyroLanes``), and what a client's pipeline
        sends.
        """
        router = self.router
        if router is None:
            raise NoRouterError(f"node {self.node!r} has no router to route with")
        checked_path = guard.check_path(path)
        checked = guard.check_items(items)
        limit = router.routing.limit(guard.check_budget(budget))
        deadline = time.monotonic() + limit
        routed_path = router.catch_up(guard.check_version(version), checked_path)
        routing = router.routing
        results: list[list[Any]] = [_PENDING] * len(checked)
        groups: dict[Hop, list[int]] = {}  # one owner, one path: one Hop per owner
        later: list[int] = []  # items whose range is still arriving here
        held: set[int] = set()
        ticket = routing.gate.enter()  # see Router._carry_out
        try:
            for index, (bucket, func, args) in enumerate(checked):
                try:
                    if held and routing.table.slot(bucket) in held:
                        later.append(index)  # behind an item of its range
                        continue
                    decision = routing.decide(bucket, routed_path)
                    if decision is HERE or (decision is WAIT and router.ready(bucket)):
                        results[index] = [True, router.local(func, args, None)]  # type: ignore[misc]
                        continue
                    if decision is WAIT:
                        held.add(routing.table.slot(bucket))
                        later.append(index)
                        continue
                    assert isinstance(decision, Hop)
                    groups.setdefault(decision, []).append(index)
                except Exception as exc:
                    results[index] = [False, exc]
        finally:
            routing.gate.leave(ticket)
        for index in later:  # in order, each on its own, once its data is in
            bucket, func, args = checked[index]
            try:
                left = max(deadline - time.monotonic(), 0.0)
                results[index] = [
                    True,
                    router.forwarded(bucket, func, args, None, routed_path, left),
                ]
            except Exception as exc:
                results[index] = [False, exc]
        for hop, indexes in groups.items():
            for index, result in zip(
                indexes,
                _send_group(router, hop, checked, indexes, deadline),
                strict=True,
            ):
                results[index] = result
        self._count_batch(checked, results, peer=bool(checked_path))
        return results

    @_exposed
    def route_runs(
        self, runs: Sequence[Sequence[Any]], budget: float | None = None
    ) -> list[Any]:
        """A client's pipeline in a compact form: :meth:`route_batch` for calls of
        one task in a row, each with the bucket as its first argument.

        ``runs`` is a list of ``[func, width, args]``: ``args`` holds the arguments
        of consecutive calls of ``func``, ``width`` of them each, one call after
        another. Returns ``[values, errors]``: each call's result in order (None
        where it failed) and ``{index: exception}`` for the calls that failed.
        Decoding a body costs per element (see :mod:`pyrokv.guard`): a pipeline of
        100 GETs is 1.3 KB this way instead of 4.3 KB as items, and decodes about
        4x faster; its answer about 2x.
        """
        results = self.route_batch(guard.check_runs(runs), [], budget)
        values = [value if ok else None for ok, value in results]
        errors = {i: value for i, (ok, value) in enumerate(results) if not ok}
        return [values, errors]

    def _count_batch(
        self,
        items: list[tuple[Any, str, Sequence[Any]]],
        results: list[list[Any]],
        *,
        peer: bool,
    ) -> None:
        """Count a batch's items as :meth:`route` counts one request each."""
        counts = self.stats.peer_requests if peer else self.stats.requests
        for (_bucket, func, _args), (ok, _value) in zip(items, results, strict=True):
            if ok:
                counts.ok[_label(func)] += 1
            else:
                counts.error[_label(func)] += 1

    @_exposed
    def info(self) -> dict[str, Any]:
        """What this node says about itself (``INFO``, ``pyrokv status``): its name,
        routing table (text form), buckets, keys and allowlist, and what the node
        adds through :attr:`describe` (pid, uptime, counters, text address)."""
        router = self.router
        registry = self._context.registry
        info: dict[str, Any] = {
            "node": self.node,
            "table": router.table.spec() if router is not None else "",
            "table_version": router.routing.version if router is not None else 0,
            "aside": router.live.aside()
            if router is not None and router.live is not None
            else 0,
            "buckets": registry.count(),
            "keys": registry.key_count(),
            "allow": self.allow,
        }
        if self.describe is not None:
            info.update(self.describe())
        return info

    # -- live routing tables (pyrokv.changes drives these; see pyrokv.live) ------

    def _live(self) -> Live:
        live = self.router.live if self.router is not None else None
        if live is None:
            raise NoRouterError(f"node {self.node!r} has no live routing table")
        return live

    @_exposed
    def table_state(self) -> dict[str, Any]:
        """This node's table: version, text, a change prepared or in hand."""
        return self._live().describe()

    @_exposed
    def table_prepare(
        self,
        version: int,
        spec: str,
        participants: list[str],
        token: str,
        lease: float,
    ) -> dict[str, Any]:
        """Keep ``spec`` aside as the table of ``version`` (step 1 of a change)."""
        return self._live().prepare(
            guard.check_version(version) or 0,
            _text_arg(spec, "spec"),
            guard.check_path(participants),
            _text_arg(token, "token"),
            float(guard.check_budget(lease) or 0.0),
        )

    @_exposed
    def table_release(self, token: str) -> None:
        """Forget the prepared change of ``token``, or note that its coordinator
        gave up on it once applied (a change that stopped early)."""
        self._live().release(_text_arg(token, "token"))

    @_exposed
    def table_apply(self, version: int, token: str) -> dict[str, Any]:
        """Switch to the prepared table of ``version`` and hand off (step 2)."""
        return self._live().apply(
            guard.check_version(version) or 0, _text_arg(token, "token")
        )

    @_exposed
    def table_absorb(
        self,
        version: int,
        sender: str,
        chunk: list[list[Any]],
        last: bool,
        keep: bool = False,
    ) -> bool:
        """Buckets handed to this node by ``sender`` for table ``version``; True if
        this node served requests since the last such call (the sender slows down).
        ``keep``: a restarted node's old copies: keys this node has stay as they are."""
        (sender,) = guard.check_path([sender])
        if not isinstance(chunk, list) or not all(
            isinstance(item, list) and len(item) in (3, 4) and isinstance(item[0], str)
            for item in chunk
        ):
            raise TaskArgumentError(
                "a hand-off is [[bucket, [[key, value], ...], first, last part]]"
            )
        # decoded here, on this call's thread, not on the node's event loop
        chunk = [[name, unpack_pairs(part), *rest] for name, part, *rest in chunk]
        return self._live().absorb(
            guard.check_version(version) or 0, sender, chunk, bool(last), bool(keep)
        )

    @_exposed
    def tasks(self) -> list[list[str]]:
        """The tasks this node runs (``pyrokv tasks``): ``[name, signature, summary]``
        for each public function of each allowlisted module, sorted by name.

        Only allowlisted modules are imported, as :meth:`run` would import them; one
        that cannot be imported here is listed by its name, saying why.
        """
        found: list[list[str]] = []
        for module_name in self.allow:
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # allowlisted, but not installed on this node
                why = f"cannot be imported on this node: {type(exc).__name__}: {exc}"
                found.append([module_name, "", why])
                continue
            for name, function in vars(module).items():
                if (
                    _DOTTED.fullmatch(name)
                    and isinstance(function, types.FunctionType)
                    and function.__module__ == module_name
                    and function.__qualname__ == name
                ):  # what _resolve would run
                    found.append(
                        [
                            f"{module_name}.{name}",
                            _signature(function),
                            _summary(function),
                        ]
                    )
        return sorted(found)

    def _resolve(self, func: object) -> Callable[..., Any]:
        if not isinstance(func, str) or not _DOTTED.fullmatch(func) or "." not in func:
            raise TaskNotAllowedError(
                f"task {func!r} is not allowed: name a function as module.function, "
                "with no part starting with '_'"
            )
        module_name, _, name = func.rpartition(".")
        if module_name not in self._allow:
            raise TaskNotAllowedError(
                f"task {func!r} is not allowed on node {self.node!r}: module "
                f"{module_name!r} is not in its allowlist {self.allow} "
                "(add one with the node's --allow MODULE, or allow under "
                f"[node {self.node}] in the config file)"
            )
        module = importlib.import_module(module_name)
        function = getattr(module, name, None)
        if not (
            isinstance(function, types.FunctionType)
            and function.__module__ == module_name
            and function.__qualname__ == name
        ):
            raise TaskNotAllowedError(
                f"task {func!r} is not allowed: {module_name} has no function "
                f"{name!r} of its own"
            )
        self._resolved[func] = function
        return function


#: A slot of route_batch's results not filled yet (every slot is, before it returns).
_PENDING: list[Any] = [False, None]


def _send_group(
    router: Router,
    hop: Hop,
    items: list[tuple[Any, str, Sequence[Any]]],
    indexes: list[int],
    deadline: float,
) -> list[list[Any]]:
    """One owner's items of a batch, sent in one call: ``[ok, value]`` per index.

    A failure to reach the owner, or a reply that does not hold one result per item,
    is the result of each of its items. The results themselves are passed on as
    they came (the client checks each, :mod:`pyrokv.pipeline`).
    """
    try:
        replies = router.send_batch(hop, [list(items[i]) for i in indexes], deadline)
        if not isinstance(replies, list) or len(replies) != len(indexes):
            raise UndecodableReplyError(
                f"node {hop.owner!r} answered a batch of {len(indexes)} requests "
                "with something else than one result for each"
            )
    except Exception as exc:
        return [[False, exc] for _ in indexes]
    return replies


def _text_arg(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > 65536:
        raise TaskArgumentError(f"{what} must be text")
    return value


class _Shown(str):
    """An annotation kept as text (``from __future__ import annotations``), shown
    without the quotes ``inspect`` puts around a string."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def _signature(function: Callable[..., Any]) -> str:
    """``(bucket: str, key: Any) -> Any``: the signature as the source writes it."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return "(...)"

    def shown(annotation: Any) -> Any:
        return _Shown(annotation) if isinstance(annotation, str) else annotation

    parameters = [
        p.replace(annotation=shown(p.annotation)) for p in signature.parameters.values()
    ]
    return str(
        signature.replace(
            parameters=parameters,
            return_annotation=shown(signature.return_annotation),
        )
    )


def _summary(function: Callable[..., Any]) -> str:
    """The first line of the function's docstring, or nothing."""
    doc = inspect.getdoc(function) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


#: The bucket verbs of the text protocol: word -> the task that runs it, and the
#: :class:`~pyrokv.Registry` method that task calls (TaskRunner.get and the like).
_TASKS = {v.name.decode(): v.task_name for v in VERBS.values() if v.scope == BUCKET}
_METHODS = {v.name.decode(): v.method for v in VERBS.values() if v.scope == BUCKET}


def _label(func: str) -> str:
    """How requests of task ``func`` are counted: the verb (``GET``) for a task of
    pyrokv.tasks, else the dotted name."""
    module, _, name = func.rpartition(".")
    return name.upper() if module == tasks.__name__ else func


def _check_arguments(
    name: str,
    function: Callable[..., Any],
    args: Sequence[Any],
    kwargs: dict[str, Any] | None,
    exc: TypeError,
) -> None:
    """Turn a TypeError caused by the call's arguments into TaskArgumentError."""
    try:
        inspect.signature(function).bind(*args, **(kwargs or {}))
    except TypeError as bad:
        raise TaskArgumentError(
            f"wrong arguments for task {name}{inspect.signature(function)}: {bad}"
        ) from exc
