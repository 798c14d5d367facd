"""Every error pyrokv raises, and their registration with Pyro5's serializer.

All classes derive from :class:`PyroKVError`, one class per failure a caller may
want to handle. A class added for a failure that used to raise a broader class
subclasses that class, so ``except`` clauses written against the broader one still
catch it (a name server that cannot be reached is a :class:`NodeUnavailableError`).

Each keeps the plain ``cls(*args)`` constructor, because that is how Pyro5 rebuilds
an exception that crossed the wire; messages that several places raise are built by
a classmethod (:meth:`NodeTimeoutError.after`), so each is written once.
:func:`register_with_pyro` teaches Pyro5 to rebuild every class here as itself, so
an error raised on a remote node arrives at the caller with the same class and text,
across one hop or several.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BucketNotFoundError",
    "ChildError",
    "ClientClosedError",
    "ConfigError",
    "CorruptDataError",
    "DataDirError",
    "DataDirInUseError",
    "DataFormatError",
    "DiskError",
    "HandOffPendingError",
    "IncompatiblePyroError",
    "InvalidTableError",
    "ListenError",
    "NameServerUnavailableError",
    "NameTakenError",
    "NoRouteError",
    "NoRouterError",
    "NodeIdentityError",
    "NodeNotRegisteredError",
    "NodeTimeoutError",
    "NodeUnavailableError",
    "NodeUnreachableError",
    "NotInTaskError",
    "NothingToStartError",
    "ProtocolError",
    "PyroKVError",
    "RoutingLoopError",
    "TableChangeError",
    "TableVersionError",
    "TaskArgumentError",
    "TaskNotAllowedError",
    "UndecodableReplyError",
    "all_errors",
    "register_with_pyro",
]

_REGISTERED: list[type[PyroKVError]] = []


class PyroKVError(Exception):
    """Base of every error pyrokv raises on purpose; never raised itself.

    ``exit_code`` is what the ``pyrokv`` command exits with when this error ends it.
    """

    exit_code: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTERED.append(cls)


# -- routing ------------------------------------------------------------------


class NoRouteError(PyroKVError, LookupError):
    """The routing table has no entry for the first byte of a bucket name.

    Raised by :meth:`pyrokv.RoutingTable.owner`, on whichever node looked the bucket
    up; compare :class:`NodeUnavailableError`, where an entry exists but its node
    cannot be reached.
    """


class InvalidTableError(PyroKVError, ValueError):
    """A routing table could not be built; the message names the offending entry."""


class RoutingLoopError(PyroKVError):
    """A routed request came back to a node it had visited, or passed the hop limit.

    Raised when the nodes' tables point in a circle; the message names the path.
    """


# -- reaching nodes -------------------------------------------------------------


class NodeUnavailableError(PyroKVError):
    """The node that should run a task is not registered, not reachable, or timed out.

    Raised by the router with the underlying Pyro5 error as ``__cause__``. Its
    subclasses say which of these happened; catch this class for all of them.
    """


class NodeNotRegisteredError(NodeUnavailableError):
    """The name server has no registration for the node (it never started, or it
    stopped and unregistered); compare :class:`NodeUnreachableError`."""


class NodeUnreachableError(NodeUnavailableError):
    """The node is registered, but its address refused or dropped the connection."""


class NodeIdentityError(NodeUnavailableError):
    """The process at a node's registered address is not that node: it answers
    under another name, or its TLS certificate names another node."""


class NodeTimeoutError(NodeUnavailableError):
    """The node (or the name server, on the node's behalf) did not answer in time.

    The request may have run on the node: a timed-out write may or may not be applied.
    """

    @classmethod
    def after(
        cls, owner: str, seconds: float, connecting_to: str | None = None
    ) -> NodeTimeoutError:
        """``node 'bar' did not answer within 5.0s`` (``connecting_to``: the address)."""
        where = f" (connecting to {connecting_to})" if connecting_to else ""
        return cls(f"node {owner!r} did not answer within {seconds:.1f}s{where}")

    @classmethod
    def no_time_left(cls, owner: str, path: str = "-") -> NodeTimeoutError:
        """The request's time ran out before it could be sent to ``owner``."""
        return cls(
            f"node {owner!r} was not reached in time: the request's time ran out "
            f"before it could be sent (path {path})"
        )


class NameServerUnavailableError(NodeUnavailableError):
    """The name server cannot be reached (not running, wrong ``--ns``, or too slow)."""

    @classmethod
    def at(cls, host: str, port: int, why: object) -> NameServerUnavailableError:
        """The message every command prints when the name server cannot be reached."""
        return cls(
            f"cannot reach the name server at {host}:{port}: {why} (is it running? "
            "start one with 'pyrokv nameserver', or point --ns at it)"
        )

    @classmethod
    def not_a_name_server(
        cls, host: str, port: int, why: object
    ) -> NameServerUnavailableError:
        """Something answers at host:port, but not as a Pyro5 name server (a node's
        text or Pyro5 port, say): starting one there would not help."""
        return cls(
            f"{host}:{port} answers, but it is not a Pyro5 name server ({why}): "
            "point --ns at the name server's address (a node's text or Pyro5 port "
            "will not do)"
        )


class HandOffPendingError(NodeUnavailableError):
    """A request for a bucket whose range is moving to this node, and whose data did
    not arrive within the request's time (a node of the change is down or hung)."""


class TableChangeError(PyroKVError):
    """A routing-table change (``pyrokv table set``) was refused before it began, or
    did not complete: the message says which nodes and ranges, and how to finish or
    undo it."""


class TableVersionError(TableChangeError):
    """The cluster's table is not at the version a change expected (``--expect-version``),
    or another change is running: nothing of this change was applied."""


class UndecodableReplyError(PyroKVError):
    """A node answered with something this process cannot rebuild (a value of a
    class serpent does not carry, or a reply out of protocol)."""


# -- tasks --------------------------------------------------------------------


class TaskNotAllowedError(PyroKVError):
    """A task names a function outside the node's allowlist; nothing was imported or run."""


class NoRouterError(TaskNotAllowedError):
    """A task runner was asked to route but belongs to no node's router (built alone)."""


class TaskArgumentError(PyroKVError, TypeError):
    """A task's arguments do not fit the function's signature, or a call of a
    pipeline is too large for any message a node takes; nothing ran."""


class NotInTaskError(PyroKVError):
    """A task function (``pyrokv.tasks.get`` ...) was called directly, not as a task on
    a node: it has no node to act on."""


class BucketNotFoundError(PyroKVError, LookupError):
    """get, put or delete named a bucket that was never created on its owner."""


# -- the Python client ----------------------------------------------------------


class ClientClosedError(PyroKVError):
    """A :class:`pyrokv.Client` (or one of its pipelines) was used after its
    :meth:`~pyrokv.Client.close`, or after its ``with`` block ended. Nothing was sent.

    Closed by this program, on purpose; compare :class:`NodeUnavailableError`,
    where the node cannot be reached.
    """


# -- the text protocol -----------------------------------------------------------


class ProtocolError(PyroKVError):
    """A peer of the text protocol sent something the server cannot accept: a ``FWD``
    frame with a malformed field. The server answers that frame alone with an error."""


# -- data dirs and disks ----------------------------------------------------------


class DiskError(PyroKVError):
    """A write could not be committed to the node's data dir (disk full, I/O error).

    Its text starts with ``disk:`` (the text protocol answers ``ERROR disk: ...``).
    With ``fsync = always`` the write was not applied; with ``everysec`` or ``no``
    the node refuses writes with it until a commit succeeds again. Reads go on.
    """


class DataDirError(PyroKVError):
    """A node's data dir cannot be created, written or read; the node does not start.

    The message names the path; nothing in the dir was changed.
    """


class DataDirInUseError(DataDirError):
    """Another process (another node) holds the data dir; the message names its pid."""


class CorruptDataError(DataDirError):
    """The data dir's database is damaged, or not a pyrokv database."""


class DataFormatError(DataDirError):
    """The data dir's database was written by a newer pyrokv, in a format this one
    does not know."""


# -- processes and settings ----------------------------------------------------


class ConfigError(PyroKVError, ValueError):
    """A setting has a bad value; the message names the key and where it came from."""

    exit_code: ClassVar[int] = 2


class NameTakenError(PyroKVError):
    """A node was started under a name that a live node holds."""


class ListenError(PyroKVError):
    """A node or name server cannot listen on its address (taken, or not this host's)."""

    #: The setting that names the address (``port`` or ``listen`` of
    #: ``[node NAME]``), where :func:`pyrokv.start_node` raised it: the command
    #: line adds how to change it from where the user is (None once rebuilt from
    #: the wire).
    setting: str | None = None

    @classmethod
    def of(cls, setting: str, message: str) -> ListenError:
        """The error for the address that ``[node NAME] setting`` names."""
        error = cls(message)
        error.setting = setting
        return error


class NothingToStartError(PyroKVError):
    """``pyrokv up`` found no ``[node NAME]`` section to start (a configuration
    error, so it exits 2)."""

    exit_code: ClassVar[int] = 2


class ChildError(PyroKVError):
    """A child process (name server or node started by ``pyrokv up``, ``demo`` or the
    tests) failed to start, stopped, or said something unexpected.

    ``child`` is the :class:`pyrokv.cluster.Child` (None once rebuilt from the wire).
    """

    child: Any = None


class IncompatiblePyroError(PyroKVError):
    """The installed Pyro5 lacks an internal that pyrokv relies on (its SSL context
    cache); the message names it."""


def all_errors() -> list[type[PyroKVError]]:
    """Every pyrokv error class, the base first."""
    return [PyroKVError, *_REGISTERED]


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

    for cls in all_errors():
        register_dict_to_class(f"{cls.__module__}.{cls.__qualname__}", _rebuild(cls))
