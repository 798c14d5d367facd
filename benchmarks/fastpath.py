"""The warm in-process cost of one local ``GET apple k`` through the text server's
``data_received``, beside an echo protocol's ``data_received`` in the same run.

No sockets: a stand-in transport takes the writes, so this measures pyrokv's own
work per request (split the line, decide the route, run the verb, format the
reply). ``python -m benchmarks.fastpath [--rounds N] [--number N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import timeit
from collections.abc import Callable
from typing import Any

from pyrokv.protocol import handlers
from pyrokv.registry import Registry
from pyrokv.router import Router
from pyrokv.runner import TaskRunner
from pyrokv.server import TextServer, _Connection
from pyrokv.table import RoutingTable

REQUEST = b"GET apple k\n"
REPLY = b"v\r\nOK\r\n"


class _Sink(asyncio.Transport):
    """A transport that takes writes and does nothing."""

    def write(self, data: Any) -> None:
        pass

    def set_write_buffer_limits(
        self, high: int | None = None, low: int | None = None
    ) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _Echo(asyncio.Protocol):
    """The baseline: split lines, answer each with a fixed reply."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        lines = (self.buffer + data).split(b"\n")
        self.buffer = lines.pop()
        self.transport.write(REPLY * len(lines))


def _per_call(call: Callable[[], None], number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=3)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    """Print the cost of both, per request, and their ratio, for each round."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fastpath")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args(argv)
    registry = Registry()
    registry.create("apple")
    registry.put("apple", "k", "v")
    assert handlers(registry)[b"GET"][1](REQUEST.split()) == REPLY
    runner = TaskRunner("foo", registry)
    router = Router(
        RoutingTable.parse("a..m=foo, n..z=bar"), "foo", local=runner.execute
    )
    server = TextServer(router, registry=registry)
    try:
        conn = _Connection(server)
        conn.connection_made(_Sink())
        echo = _Echo()
        echo.connection_made(_Sink())
        pyrokv_us, echo_us = [], []
        for i in range(args.rounds):
            pyrokv_us.append(
                _per_call(lambda: conn.data_received(REQUEST), args.number)
            )
            echo_us.append(_per_call(lambda: echo.data_received(REQUEST), args.number))
            print(
                f"round {i + 1}: pyrokv {pyrokv_us[-1]:.3f} us, echo {echo_us[-1]:.3f} us, "
                f"ratio {pyrokv_us[-1] / echo_us[-1]:.2f}x"
            )
        print(
            f"median: pyrokv {statistics.median(pyrokv_us):.3f} us per local GET, "
            f"echo {statistics.median(echo_us):.3f} us; best {min(pyrokv_us):.3f} us"
        )
    finally:
        server.stop()
        router.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
