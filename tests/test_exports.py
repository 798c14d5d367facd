"""The public API is exactly what __all__ says."""

from pathlib import Path

from Pyro5 import serializers

import pyrokv
import pyrokv.testing
from pyrokv.errors import all_errors, register_with_pyro


def test_exports() -> None:
    """pyrokv exports these names, sorted, and each exists."""
    assert pyrokv.__all__ == sorted(pyrokv.__all__)
    assert set(pyrokv.__all__) == {
        "BucketNotFoundError",
        "ChildError",
        "Client",
        "Cluster",
        "ClientClosedError",
        "ConfigError",
        "HandOffPendingError",
        "CorruptDataError",
        "DataDirError",
        "DataDirInUseError",
        "DataFormatError",
        "DiskError",
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
    }
    for name in pyrokv.__all__:
        assert hasattr(pyrokv, name)


def test_errors_share_one_base() -> None:
    """Every error class derives from PyroKVError; lookups are LookupErrors."""
    for name in pyrokv.__all__:
        obj = getattr(pyrokv, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, pyrokv.PyroKVError)
    assert issubclass(pyrokv.NoRouteError, LookupError)
    assert issubclass(pyrokv.BucketNotFoundError, LookupError)


def test_every_error_class_is_exported_registered_and_documented() -> None:
    """Each class of pyrokv.errors is exported, rebuilt as itself by Pyro5 and listed
    with its exit code in docs/cli.md."""
    serializer = serializers.serializers["serpent"]
    cli_md = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    register_with_pyro()
    for cls in all_errors()[1:]:
        assert getattr(pyrokv, cls.__name__) is cls
        assert f"`{cls.__name__}` | {cls.exit_code} |" in cli_md, cls.__name__
        back = serializer.loads(serializer.dumps(cls("some text")))
        assert type(back) is cls and str(back) == "some text"


def test_testing_exports() -> None:
    """pyrokv.testing, the text client that tests and benchmarks share, exports these."""
    assert pyrokv.testing.__all__ == ["CLOSED", "Conn", "UnexpectedReplyError"]
    for name in pyrokv.testing.__all__:
        assert hasattr(pyrokv.testing, name)
