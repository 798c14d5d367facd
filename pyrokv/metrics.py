"""A node's metrics in Prometheus' text format, over HTTP (``pyrokv node --metrics``).

The request path only bumps plain integers (:mod:`pyrokv.stats`); this module turns
them into metric families when the endpoint is scraped, through a custom collector
on a registry of the node's own, so two nodes in one process keep theirs apart.
It needs ``prometheus-client``: ``pip install 'pyrokv[metrics]'``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ListenError
from .stats import LATENCY_BOUNDS, Stats

if TYPE_CHECKING:
    import threading

__all__ = ["MetricsServer", "check_available", "serve_metrics"]

_EXTRA = "pip install 'pyrokv[metrics]'"


class _Collector:
    """Reads one node's counters when scraped."""

    def __init__(self, stats: Stats, info: Callable[[], dict[str, Any]]) -> None:
        self.stats = stats
        self.info = info

    def describe(self) -> list[Any]:
        return []  # no samples at registration: collect() reads live values

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        stats = self.stats
        for name, counts, what in (
            ("pyrokv_requests", stats.client_requests(), "from clients"),
            (
                "pyrokv_peer_requests",
                stats.peer_requests,
                "served as the owner for another node",
            ),
        ):
            family = CounterMetricFamily(
                name,
                f"Requests {what}, by verb and outcome",
                labels=["verb", "outcome"],
            )
            for outcome, counter in (("ok", counts.ok), ("error", counts.error)):
                for verb, value in sorted(counter.items()):
                    family.add_metric([verb, outcome], value)
            yield family
        routed = CounterMetricFamily(
            "pyrokv_routed", "Requests sent on to their owner", labels=["owner"]
        )
        for owner, value in sorted(stats.routed.items()):
            routed.add_metric([owner], value)
        yield routed
        buckets = []
        cumulative = 0
        for bound, count in zip(
            (*LATENCY_BOUNDS, float("inf")), stats.latency, strict=True
        ):
            cumulative += count
            buckets.append(
                ("+Inf" if bound == float("inf") else repr(bound), cumulative)
            )
        latency = HistogramMetricFamily(
            "pyrokv_request_seconds",
            "Time from a request's arrival to its reply (one local request in 64 is timed)",
        )
        latency.add_metric([], buckets, sum_value=stats.latency_sum)
        yield latency
        info = self.info()
        for name, key, what in (
            ("pyrokv_keys", "keys", "Keys held by this node"),
            ("pyrokv_buckets", "buckets", "Buckets held by this node"),
            ("pyrokv_connections", "connections", "Open text connections"),
            ("pyrokv_table_version", "table_version", "Version of the routing table"),
        ):
            yield GaugeMetricFamily(name, what, value=float(info.get(key) or 0))


class MetricsServer:
    """The HTTP endpoint of one node's metrics; :meth:`stop` closes it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.address: tuple[str, int] = server.server_address[:2]

    def stop(self) -> None:
        """Stop serving and close the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def check_available() -> None:
    """Raise :class:`ConfigError` naming the extra when prometheus-client is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(
            "serving metrics (--metrics, or metrics under [node NAME] in the config "
            f"file) needs the prometheus-client library, which is not installed: {_EXTRA}"
        ) from None


def serve_metrics(
    address: tuple[str, int], stats: Stats, info: Callable[[], dict[str, Any]]
) -> MetricsServer:
    """Serve ``stats`` (and the gauges of ``info()``) at ``http://HOST:PORT/metrics``.

    Raises :class:`ConfigError` when prometheus-client is not installed, and
    :class:`ListenError` when the address cannot be bound.
    """
    check_available()
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats, info))
    host, port = address
    try:
        server, thread = start_http_server(port, host, registry=registry)
    except OSError as exc:
        raise ListenError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} (pick "
            "another with --metrics HOST:PORT, or metrics under [node NAME])"
        ) from None
    return MetricsServer(server, thread)
