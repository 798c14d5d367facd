"""Start and stop pyrokv processes: a name server and nodes, as children of this one.

Used by the tests, and by ``pyrokv up`` and ``pyrokv demo``. Every child runs with
this interpreter, unbuffered, binds port 0 unless told otherwise, and reports its
real address on stdout (``READY ...``); every wait has a deadline and says what the
child printed when it fails; :meth:`Child.stop` always leaves no process behind.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence

from .errors import ChildError
from .naming import parse_address

__all__ = [
    "Child",
    "ChildError",
    "LocalCluster",
    "spawn_nameserver",
    "spawn_node",
    "write_secret",
]

START_TIMEOUT = 20.0


class Child:
    """A child process whose output lines can be awaited: ``python -m pyrokv ARGS``.

    ``pyrokv=False`` runs ``args`` as a command of its own; ``prefix`` goes before
    either (``["ip", "netns", "exec", NS]`` runs it in a network namespace).
    Children get this environment without ``PYROKV_*`` (they take their settings from
    flags and the config file they are given only), plus ``env``. With ``stdin=True`` :meth:`send` writes lines to the child's input.
    """

    def __init__(
        self,
        args: Sequence[str],
        name: str,
        *,
        pyrokv: bool = True,
        prefix: Sequence[str] = (),
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
    ) -> None:
        self.name = name
        command = [sys.executable, "-u", "-m", "pyrokv", *args] if pyrokv else [*args]
        self.args = [*prefix, *command]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PYROKV_")}
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,  # Ctrl-C in a terminal reaches only the parent
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, prefix: str, timeout: float = START_TIMEOUT) -> str:
        """Wait for an output line starting with ``prefix``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(left, 0))
            except queue.Empty:
                raise self._error(
                    f"{self.name} did not print {prefix!r} within {timeout:.0f}s; "
                    f"it printed: {self.output()}"
                ) from None
            if line is None:
                self._queue.put(None)  # stays at the end for later waits
                self.proc.wait()
                raise self._error(
                    f"{self.name} exited with code {self.proc.returncode} before "
                    f"printing {prefix!r}; it printed: {self.output()}"
                )
            if line.startswith(prefix):
                return line

    def _error(self, message: str) -> ChildError:
        error = ChildError(message)
        error.child = self
        return error

    def output(self) -> str:
        """Everything the child printed so far, on one line."""
        return " | ".join(self.lines) or "(nothing)"

    def listen_address(self) -> tuple[str, int] | None:
        """Where this node serves the text protocol, from its ``LISTEN NAME HOST:PORT`` line.

        ``pyrokv node`` prints that line before ``READY``, so once :func:`spawn_node`
        has returned, None means the node serves no text protocol (no ``--listen``).
        """
        for line in self.lines:
            words = line.split()
            if len(words) == 3 and words[0] == "LISTEN":
                return parse_address(words[2])
        return None

    def send(self, line: str) -> None:
        """Write ``line`` and a newline to the child's input (made with ``stdin=True``)."""
        if self.proc.stdin is None:
            raise ValueError(f"{self.name} was started without stdin=True")
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=timeout)
        self._close_pipes()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the process dies without unregistering (a crash)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=5)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # stdin: the child is gone
                    pipe.close()


def spawn_nameserver(
    host: str | None = "127.0.0.1",
    port: int | None = 0,
    timeout: float = START_TIMEOUT,
    extra: Sequence[str] = (),
    *,
    config: str = os.devnull,
) -> tuple[Child, tuple[str, int]]:
    """Start ``pyrokv nameserver``; return it and its real (host, port).

    It reads ``config``; ``host`` or ``port`` None leaves that one to the config.
    """
    args = ["nameserver", "--config", config]
    if host is not None:
        args += ["--host", host]
    if port is not None:
        args += ["--port", str(port)]
    child = Child([*args, *extra], "name server")
    try:
        line = child.wait_for("READY ", timeout)
    except BaseException:
        child.stop()
        raise
    return child, parse_address(line.split()[2])


def spawn_node(
    name: str,
    ns: tuple[str, int] | None,
    table: str | None = None,
    *,
    extra: Sequence[str] = (),
    config: str = os.devnull,
    timeout: float = START_TIMEOUT,
) -> Child:
    """Start ``pyrokv node NAME`` and wait until it has registered.

    It reads ``config``; ``ns`` None leaves the name server to the config.
    """
    args = ["node", name, "--config", config]
    if ns is not None:
        args += ["--ns", f"{ns[0]}:{ns[1]}"]
    if table is not None:
        args += ["--table", table]
    child = Child([*args, *extra], f"node {name}")
    try:
        child.wait_for(f"READY {name} ", timeout)
    except BaseException:
        child.stop()
        raise
    return child


def write_secret(path: str) -> str:
    """Write a new random cluster secret to ``path`` (mode 0600); return ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_hex(32) + "\n")
    return path


class LocalCluster:
    """A name server and nodes on this machine, stopped together.

    Its nodes share a cluster secret made for it (``secret_file``, removed by
    :meth:`stop`), so they open peer links to each other as ``pyrokv up``'s do.
    With ``secret=False`` they get none (``secret_file`` stays None), so text
    requests for other nodes' buckets go over Pyro5.

    >>> with LocalCluster({"foo": "a..m=foo, n..z=bar", "bar": "a..m=foo, n..z=bar"}) as c:  # doctest: +SKIP
    ...     c.ns
    ('127.0.0.1', 40123)
    """

    def __init__(
        self,
        nodes: dict[str, str | None],
        extra: dict[str, Sequence[str]] | None = None,
        *,
        secret: bool = True,
    ) -> None:
        self.spec = nodes
        self.extra = extra or {}
        self.secret = secret
        self.nameserver: Child | None = None
        self.nodes: dict[str, Child] = {}
        self.ns: tuple[str, int] = ("127.0.0.1", 0)
        self._private: tempfile.TemporaryDirectory[str] | None = None
        self.secret_file: str | None = None

    def start(self) -> LocalCluster:
        """Start the name server, then every node (in parallel); stop all on failure."""
        try:
            secret: list[str] = []
            if self.secret:
                self._private = tempfile.TemporaryDirectory(prefix="pyrokv-cluster-")
                self.secret_file = write_secret(
                    os.path.join(self._private.name, "cluster.secret")
                )
                secret = ["--cluster-secret-file", self.secret_file]
            self.nameserver, self.ns = spawn_nameserver()
            errors: list[BaseException] = []

            def one(name: str, table: str | None) -> None:
                try:
                    self.nodes[name] = spawn_node(
                        name, self.ns, table, extra=[*secret, *self.extra.get(name, ())]
                    )
                except BaseException as exc:
                    errors.append(exc)

            threads = [
                threading.Thread(target=one, args=item) for item in self.spec.items()
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node, then the name server."""
        for child in list(self.nodes.values()):
            child.stop()
        self.nodes.clear()
        if self.nameserver is not None:
            self.nameserver.stop()
            self.nameserver = None
        if self._private is not None:
            self._private.cleanup()
            self._private = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
