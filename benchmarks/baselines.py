"""The benchmarks' baseline servers, each run in its own process (standalone: stdlib + Pyro5).

``python baselines.py echo REPLY [LOOP]``
    A minimal asyncio server (one event loop, a Protocol, as in pyrokv/server.py) that
    answers every line it receives with REPLY (e.g. ``v\\r\\nOK\\r\\n``), doing no other
    work: the ceiling for any text-protocol server in Python on this machine.
    LOOP ``uvloop`` runs it on uvloop's event loop (default ``asyncio``).
    Prints ``READY HOST:PORT``.

``python baselines.py pyro BUCKET KEY VALUE``
    A bare Pyro5 daemon (thread-pool server, serpent, TCP_NODELAY as pyrokv sets it)
    exposing ``get(bucket, key)`` that returns VALUE from a dict-of-dict.
    Prints ``READY URI``.

Both run until stdin closes or SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from typing import cast


def _wait_for_end() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not stop.wait(1.0):
        pass


class Echo(asyncio.Protocol):
    """Answer each received line with the fixed reply; nothing else."""

    reply = b""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's are not asyncio.Transport subclasses)
        transport = cast(asyncio.Transport, transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        lines = buffer.count(b"\n")
        if lines:
            self.buffer = buffer[buffer.rindex(b"\n") + 1 :]
            assert self.transport is not None
            self.transport.write(self.reply * lines)
        else:
            self.buffer = buffer


def echo(reply: bytes, kind: str = "asyncio") -> None:
    Echo.reply = reply
    if kind == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    server = loop.run_until_complete(
        loop.create_server(Echo, "127.0.0.1", 0, backlog=1024)
    )
    host, port = server.sockets[0].getsockname()[:2]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    print(f"READY {host}:{port}", flush=True)
    _wait_for_end()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)


def pyro(bucket: str, key: str, value: str) -> None:
    from Pyro5.api import Daemon, config, expose

    config.SERIALIZER = "serpent"
    config.SOCK_NODELAY = True

    @expose
    class Bare:
        def __init__(self) -> None:
            self.data = {bucket: {key: value}}

        def get(self, bucket: str, key: str) -> str | None:
            return self.data[bucket].get(key)

    daemon = Daemon(host="127.0.0.1", port=0)
    uri = daemon.register(Bare(), "bench.bare")
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    print(f"READY {uri}", flush=True)
    _wait_for_end()
    daemon.shutdown()
    thread.join(timeout=5)


def main(argv: list[str]) -> int:
    kind = argv[0]
    if kind == "echo":
        reply = argv[1].encode("latin-1").decode("unicode_escape").encode("latin-1")
        echo(reply, *argv[2:3])
    elif kind == "pyro":
        pyro(argv[1], argv[2], argv[3])
    else:
        print(f"unknown baseline {kind!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
