"""A small blocking client of the text protocol, for tests, benchmarks and the demo.

:class:`Conn` sends raw bytes or request lines and reads reply lines; every read
has a deadline, so a server that stops answering fails the caller within
``timeout`` seconds instead of hanging it. It is not a production client (it
neither reconnects nor pipelines for you); :class:`pyrokv.Client` is the Python
API. The protocol itself is described in ``docs/protocol.md``.

>>> with Conn("127.0.0.1:4040") as c:  # doctest: +SKIP
...     c.ask("CREATE shopping"), c.ask("PUT shopping milk 1"), c.ask("GET shopping milk")
(b'OK', b'OK', b'1|OK')
"""

from __future__ import annotations

import socket
import ssl
import time

from .naming import parse_address

__all__ = ["CLOSED", "Conn", "UnexpectedReplyError"]

#: What :meth:`Conn.line` returns once the server has closed the connection.
CLOSED = b"<closed>"

#: First lines of a GET reply that are the whole reply: no value and no ``OK``
#: follow. An ``ERROR ...`` line is one too (see :meth:`Conn.exchange`).
_ONE_LINE_REPLIES = (b"NOT FOUND", b"UNKNOWN COMMAND", CLOSED)


class UnexpectedReplyError(AssertionError):
    """The server answered, but not with what the protocol or the caller expected.

    Raised by :meth:`Conn.expect` when the bytes differ, and by :meth:`Conn.exchange`
    when a GET's value is not followed by ``OK``. A server that does not answer in
    time raises :class:`TimeoutError` instead; one that resets the connection, an
    :class:`OSError`. It is an :class:`AssertionError`, so pytest reports it as a
    failed check.
    """


class Conn:
    """One text-protocol connection; each read waits at most ``timeout`` seconds.

    ``address`` is ``"HOST:PORT"`` or ``(host, port)``. Replies are read as lines
    without their ``\\r\\n``; bytes read past a line are kept for the next read.
    With ``tls`` (a client context) the connection speaks TLS.
    """

    def __init__(
        self,
        address: str | tuple[str, int],
        timeout: float = 10.0,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        host, port = parse_address(address) if isinstance(address, str) else address
        self.timeout = timeout
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:  # a text port served with --listen-tls
            sock = tls.wrap_socket(sock, server_hostname=server_hostname or host)
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        """Send ``data`` as it is: any bytes, several lines, or part of one."""
        self.sock.sendall(data)

    def _recv(self, deadline: float) -> bytes:
        """The next bytes the server sends, b"" once it has closed; by ``deadline``.

        Raises :class:`TimeoutError` when nothing arrives in time.
        """
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no reply within {self.timeout:g}s")
        self.sock.settimeout(left)
        return self.sock.recv(1 << 20)

    def line(self) -> bytes:
        """The next reply line, without its ``\\r\\n``; :data:`CLOSED` once the server closed.

        A last line the server closed without ending is returned as it is.
        Raises :class:`TimeoutError` if no whole line arrives within ``timeout``.
        """
        deadline = time.monotonic() + self.timeout
        while b"\r\n" not in self.buffer:
            chunk = self._recv(deadline)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest if rest else CLOSED
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def exchange(self, request: bytes | str) -> list[bytes]:
        """Send one request line; return its reply's lines.

        That is ``[value, b"OK"]`` for a GET that found its bucket (the value is
        b"" for a missing key), else the one line the reply has (``OK``,
        ``NOT FOUND``, ``ERROR ...``, ...).
        """
        if isinstance(request, str):
            request = request.encode()
        self.send(request + b"\r\n")
        first = self.line()
        if (
            not request.startswith(b"GET ")
            or first in _ONE_LINE_REPLIES
            or first.startswith(b"ERROR ")
        ):
            return [first]
        second = self.line()
        if second != b"OK":
            raise UnexpectedReplyError(
                f"{request!r}: expected the value {first!r} then OK, got {second!r}"
            )
        return [first, second]

    def ask(self, request: bytes | str) -> bytes:
        """Send one request line; return its reply on one line (``value|OK`` for a GET)."""
        return b"|".join(self.exchange(request))

    def expect(self, requests: bytes, reply: bytes) -> None:
        """Send ``requests`` at once and read exactly ``len(reply)`` bytes back.

        Raises :class:`UnexpectedReplyError` if they are not ``reply``, and
        :class:`TimeoutError` if they have not all arrived within ``timeout``.
        Used to load data fast: thousands of lines in one send, one check.
        """
        self.send(requests)
        deadline = time.monotonic() + self.timeout
        got = self.buffer
        while len(got) < len(reply):
            chunk = self._recv(deadline)
            if not chunk:
                break
            got += chunk
        self.buffer = got[len(reply) :]
        if got[: len(reply)] != reply:
            raise UnexpectedReplyError(f"expected {reply[:80]!r}..., got {got[:200]!r}")

    def closed(self, timeout: float) -> bool:
        """Whether the server closes this connection within ``timeout`` seconds.

        Anything the server sends meanwhile is read and dropped.
        """
        deadline = time.monotonic() + timeout
        self.buffer = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(1 << 20):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True

    def close(self) -> None:
        """Close the connection; the object cannot be used again."""
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
