"""The public API is exactly what __all__ says."""

import pyrokv
import pyrokv.testing


def test_exports() -> None:
    """pyrokv exports these names, sorted, and each exists."""
    assert pyrokv.__all__ == sorted(pyrokv.__all__)
    assert set(pyrokv.__all__) == {
        "BucketNotFoundError",
        "Client",
        "ConfigError",
        "InvalidTableError",
        "NoRouteError",
        "NodeHandle",
        "NodeUnavailableError",
        "ProtocolError",
        "PyroKVError",
        "Registry",
        "RoutingLoopError",
        "RoutingTable",
        "Router",
        "TaskArgumentError",
        "TaskNotAllowedError",
        "TaskRunner",
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


def test_testing_exports() -> None:
    """pyrokv.testing, the text client that tests and benchmarks share, exports these."""
    assert pyrokv.testing.__all__ == ["CLOSED", "Conn", "UnexpectedReplyError"]
    for name in pyrokv.testing.__all__:
        assert hasattr(pyrokv.testing, name)
