"""A tiny blocking client of the text protocol for tests, with deadlines on every read."""

from __future__ import annotations

import socket
import time

from pyrokv.naming import parse_address


class Conn:
    """One connection: send raw bytes, read reply lines, each read bounded by ``timeout``."""

    def __init__(self, address: str | tuple[str, int], timeout: float = 10.0) -> None:
        host, port = parse_address(address) if isinstance(address, str) else address
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """The next reply line, without its \\r\\n; b"<closed>" if the server closed."""
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest if rest else b"<closed>"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def ask(self, request: bytes | str) -> bytes:
        """Send one request line; return its reply (``value|OK`` for a GET that found one)."""
        if isinstance(request, str):
            request = request.encode()
        self.send(request + b"\r\n")
        first = self.line()
        if (
            request.startswith(b"GET ")
            and first not in (b"NOT FOUND", b"<closed>", b"UNKNOWN COMMAND")
            and not first.startswith(b"ERROR")
        ):
            second = self.line()
            assert second == b"OK", (first, second)
            return first + b"|OK"
        return first

    def closed(self, timeout: float) -> bool:
        """Whether the server closes this connection within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.2)
        try:
            while time.monotonic() < deadline:
                try:
                    if not self.sock.recv(65536):
                        return True
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    return True
            return False
        finally:
            self.sock.settimeout(10.0)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
