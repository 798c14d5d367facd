"""The task functions every node runs by default (the allowlisted module).

Each acts on the node that runs it: :class:`pyrokv.TaskRunner` sets a context
variable for the duration of a task, so two nodes can live in one process (as they
do in tests) without a module-level singleton. Call them through
``Router.route(bucket, "pyrokv.tasks.get", [bucket, key])`` or ``TaskRunner.run``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import NotInTaskError

if TYPE_CHECKING:
    from .registry import Registry

__all__ = [
    "TaskContext",
    "buckets",
    "create",
    "delete",
    "get",
    "info",
    "keys",
    "lookup",
    "node_name",
    "ping",
    "put",
]


class TaskContext(NamedTuple):
    """What a task may touch: the name and registry of the node running it, and
    what the node says about itself (``info``)."""

    node: str
    registry: Registry
    info: Callable[[], dict[str, Any]]


_current: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("pyrokv_task")


def _context() -> TaskContext:
    """The node running the current task; an error outside a task."""
    try:
        return _current.get()
    except LookupError:
        raise NotInTaskError(
            "pyrokv tasks run on a node: call them through Router.route or "
            "TaskRunner.run, not directly"
        ) from None


def node_name() -> str:
    """The name of the node running this task (the guide's ``Kernel.node/0``)."""
    return _context().node


def create(bucket: str) -> None:
    """Create ``bucket`` on this node (no change if it exists)."""
    _context().registry.create(bucket)


def lookup(bucket: str) -> bool:
    """Whether ``bucket`` exists on this node."""
    return _context().registry.lookup(bucket)


def get(bucket: str, key: Any) -> Any:
    """The value of ``key`` in ``bucket`` on this node, or None."""
    return _context().registry.get(bucket, key)


def put(bucket: str, key: Any, value: Any) -> None:
    """Set ``key`` to ``value`` in ``bucket`` on this node."""
    _context().registry.put(bucket, key, value)


def delete(bucket: str, key: Any) -> Any:
    """Remove ``key`` from ``bucket`` on this node; return the old value or None."""
    return _context().registry.delete(bucket, key)


def keys(bucket: str) -> list[Any]:
    """The keys of ``bucket`` on this node, sorted."""
    return _context().registry.keys(bucket)


def ping() -> str:
    """``PONG``: the node is there and answering."""
    return "PONG"


def info() -> dict[str, Any]:
    """What this node says about itself: the fields of the text protocol's INFO."""
    return _context().info()


def buckets() -> list[str]:
    """The names of the buckets on this node."""
    return _context().registry.buckets()
