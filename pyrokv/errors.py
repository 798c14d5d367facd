"""Every error pyrokv raises, and their registration with Pyro5's serializer.

All classes derive from :class:`PyroKVError`. Each keeps the plain ``cls(*args)``
constructor, because that is how Pyro5 rebuilds an exception that crossed the wire;
:func:`register_with_pyro` teaches Pyro5 to rebuild them as their own class, so an
error raised on a remote node arrives at the caller with the same class and text,
across one hop or several.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BucketNotFoundError",
    "ConfigError",
    "InvalidTableError",
    "NoRouteError",
    "NodeUnavailableError",
    "ProtocolError",
    "PyroKVError",
    "RoutingLoopError",
    "TaskArgumentError",
    "TaskNotAllowedError",
    "register_with_pyro",
]


class PyroKVError(Exception):
    """Base of every error pyrokv raises on purpose.

    ``exit_code`` is what the ``pyrokv`` command exits with when this error ends it.
    """

    exit_code: ClassVar[int] = 1


class NoRouteError(PyroKVError, LookupError):
    """The routing table has no entry for the first byte of a bucket name.

    Raised by :meth:`pyrokv.RoutingTable.owner`, on whichever node looked the bucket
    up; compare :class:`NodeUnavailableError`, where an entry exists but its node
    cannot be reached.
    """


class InvalidTableError(PyroKVError, ValueError):
    """A routing table could not be built; the message names the offending entry."""


class ConfigError(PyroKVError, ValueError):
    """A setting has a bad value; the message names the key and where it came from."""

    exit_code: ClassVar[int] = 2


class RoutingLoopError(PyroKVError):
    """A routed request came back to a node it had visited, or passed the hop limit.

    Raised when the nodes' tables point in a circle; the message names the path.
    """


class NodeUnavailableError(PyroKVError):
    """The node that should run a task is not registered, not reachable, or timed out.

    Raised by the router with the underlying Pyro5 error as ``__cause__``.
    """


class TaskNotAllowedError(PyroKVError):
    """A task names a function outside the node's allowlist; nothing was imported or run."""


class TaskArgumentError(PyroKVError, TypeError):
    """A task's arguments do not fit the function's signature; nothing ran."""


class BucketNotFoundError(PyroKVError, LookupError):
    """get, put or delete named a bucket that was never created on its owner."""


class ProtocolError(PyroKVError):
    """A client of the text protocol sent something the server cannot accept."""


_ALL_ERRORS: tuple[type[PyroKVError], ...] = (
    PyroKVError,
    NoRouteError,
    InvalidTableError,
    ConfigError,
    RoutingLoopError,
    NodeUnavailableError,
    TaskNotAllowedError,
    TaskArgumentError,
    BucketNotFoundError,
    ProtocolError,
)


def _rebuild(cls: type[PyroKVError]) -> Any:
    from Pyro5.serializers import SerializerBase

    def convert(_classname: str, data: dict[str, Any]) -> PyroKVError:
        return SerializerBase.make_exception(cls, data)  # type: ignore[no-any-return]

    return convert


def register_with_pyro() -> None:
    """Let Pyro5 rebuild every pyrokv error as its own class when it arrives.

    Without this, Pyro5 turns an unknown exception into ``SerializeError``.
    Idempotent; node, router and client all call it at start-up.
    """
    from Pyro5.api import register_dict_to_class

    for cls in _ALL_ERRORS:
        register_dict_to_class(f"{cls.__module__}.{cls.__qualname__}", _rebuild(cls))
