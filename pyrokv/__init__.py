"""pyrokv: a routed, distributed, in-memory key-value store on Pyro5.

Buckets live on nodes; a :class:`Router` sends each operation to the node that owns
the bucket, chosen by the first byte of the bucket's name in a :class:`RoutingTable`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pyrokv")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from .changes import Cluster
from .client import Client
from .errors import (
    BucketNotFoundError,
    ChildError,
    ClientClosedError,
    ConfigError,
    CorruptDataError,
    DataDirError,
    DataDirInUseError,
    DataFormatError,
    DiskError,
    HandOffPendingError,
    IncompatiblePyroError,
    InvalidTableError,
    ListenError,
    NameServerUnavailableError,
    NameTakenError,
    NodeIdentityError,
    NodeNotRegisteredError,
    NodeTimeoutError,
    NodeUnavailableError,
    NodeUnreachableError,
    NoRouteError,
    NoRouterError,
    NothingToStartError,
    NotInTaskError,
    ProtocolError,
    PyroKVError,
    RoutingLoopError,
    TableChangeError,
    TableVersionError,
    TaskArgumentError,
    TaskNotAllowedError,
    UndecodableReplyError,
)
from .node import NodeHandle, start_node
from .registry import Registry
from .router import Router
from .runner import TaskRunner
from .table import RoutingTable

__all__ = [
    "BucketNotFoundError",
    "ChildError",
    "Client",
    "ClientClosedError",
    "Cluster",
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
    "NodeHandle",
    "NodeIdentityError",
    "NodeNotRegisteredError",
    "NodeTimeoutError",
    "NodeUnavailableError",
    "NodeUnreachableError",
    "NotInTaskError",
    "NothingToStartError",
    "ProtocolError",
    "PyroKVError",
    "Registry",
    "Router",
    "RoutingLoopError",
    "RoutingTable",
    "TableChangeError",
    "TableVersionError",
    "TaskArgumentError",
    "TaskNotAllowedError",
    "TaskRunner",
    "UndecodableReplyError",
    "__version__",
    "start_node",
]
