"""Start and stop pyrokv processes: a name server and nodes, as children of this one.

Used by the tests, and by ``pyrokv up`` and ``pyrokv demo``. Every child runs with
this interpreter, unbuffered, binds port 0 unless told otherwise, and reports its
real address on stdout (``READY ...``); every wait has a deadline and says what the
child printed when it fails; :meth:`Child.stop` always leaves no process behind.
``pyrokv up`` also copies each child's output to a log file (``log=``), and has each
child die with it (``die_with_parent=True``, Linux's ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from .errors import ChildError
from .naming import parse_address

__all__ = [
    "Child",
    "ChildError",
    "LocalCluster",
    "describe_exit",
    "spawn_nameserver",
    "spawn_node",
    "write_secret",
]

START_TIMEOUT = 20.0

#: Linux's prctl(2) option that has the kernel signal a process when its parent dies.
PR_SET_PDEATHSIG = 1
#: The signal a child of ``pyrokv up`` gets when ``up`` dies, however it died.
#: SIGKILL, not SIGTERM: the child is gone at once however loaded the machine is
#: (a graceful stop takes a Python process tenths of a second, seconds under load),
#: and a dying parent sends it once per thread, which a handler must survive.
PARENT_DEATH_SIGNAL = signal.SIGKILL


def describe_exit(returncode: int) -> str:
    """How a child ended, in words: ``signal SIGKILL`` or ``exit code 1``."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def _die_with_parent() -> Callable[[], None] | None:
    """What a child runs between fork and exec so that it dies with this process.

    Linux only (``prctl(PR_SET_PDEATHSIG)``, which exec keeps); None elsewhere. The
    kernel sends the signal when the *thread* that forked the child ends, so fork
    from a thread that lives as long as the process (``pyrokv up`` forks from its
    main thread only). If this process died before the child set it, the child's
    parent is already another process: the child kills itself.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()
    death_signal = int(PARENT_DEATH_SIGNAL)

    def preexec() -> None:  # in the child, after fork: keep it trivial
        prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), death_signal)

    return preexec


class Child:
    """A child process whose output lines can be awaited: ``python -m pyrokv ARGS``.

    ``pyrokv=False`` runs ``args`` as a command of its own; ``prefix`` goes before
    either (``["ip", "netns", "exec", NS]`` runs it in a network namespace).
    Children get this environment without ``PYROKV_*`` (they take their settings from
    flags and the config file they are given only), plus ``env``. With ``stdin=True`` :meth:`send` writes lines to the child's input.
    With ``log``, every line the child prints (stdout and stderr) is also appended
    to that file, after a line saying when and as which pid it started. With
    ``die_with_parent``, the child gets SIGKILL when this process dies, however it
    died (Linux; see :func:`_die_with_parent`).
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
        log: str | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.name = name
        self._again: dict[str, Any] = {
            "args": list(args),
            "name": name,
            "pyrokv": pyrokv,
            "prefix": list(prefix),
            "cwd": cwd,
            "env": None if env is None else dict(env),
            "stdin": stdin,
            "log": log,
            "die_with_parent": die_with_parent,
        }
        command = [sys.executable, "-u", "-m", "pyrokv", *args] if pyrokv else [*args]
        self.args = [*prefix, *command]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PYROKV_")}
        self.log = log
        #: Whether SIGTERM was sent: never twice (see :meth:`stop`).
        self._terminated = False
        self._log_lock = threading.Lock()
        self._log: TextIO | None = None
        if log is not None:  # opened first: a log that cannot be opened starts nothing
            self._log = open(log, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # Ctrl-C in a terminal reaches only the parent
                preexec_fn=_die_with_parent() if die_with_parent else None,
            )
        except BaseException:
            if self._log is not None:
                self._log.close()
            raise
        if log is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            self.note(f"{stamp} started {name}, pid {self.proc.pid}")
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._echo: TextIO | None = None
        self._echo_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self._echo_lock:
                self.lines.append(line)
                if self._echo is not None:
                    _echo(self._echo, line)
            self._queue.put(line)
            if self._log is not None:
                with self._log_lock:
                    self._log.write(line + "\n")
                    self._log.flush()
        self._queue.put(None)

    def relay(self, stream: TextIO) -> None:
        """Write the child's log and warning lines to ``stream``: those it printed
        so far, then each as it comes (``pyrokv up`` shows its children's logs).
        The lines meant for the parent (``READY``, ``LISTEN`` ...) are not relayed."""
        with self._echo_lock:
            self._echo = stream
            for line in self.lines:
                _echo(stream, line)

    def note(self, text: str) -> None:
        """Append ``=== TEXT ===`` to the child's log file (a no-op without one)."""
        with self._log_lock:
            if self._log is not None and not self._log.closed:
                self._log.write(f"=== {text} ===\n")
                self._log.flush()

    def again(self) -> Child:
        """A new process started as this one was: same command, options and log
        (and relayed to the same stream)."""
        child = Child(**self._again)
        if self._echo is not None:
            child.relay(self._echo)
        return child

    def printed(self, prefix: str) -> str | None:
        """The first output line so far that starts with ``prefix``, or None; no wait."""
        return next((line for line in self.lines if line.startswith(prefix)), None)

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

    def terminate(self) -> None:
        """Send SIGTERM if the process still runs and was not sent it yet; no wait
        (:meth:`stop` waits)."""
        if self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM (unless :meth:`terminate` sent it), wait up to ``timeout``, then
        SIGKILL; return the exit code.

        SIGTERM goes once: a process that has handled it may already have put the
        default action back (a pyrokv process does, once it has unregistered, and
        Python does as it exits), so a second one would kill it mid-way through its
        clean exit.
        """
        if self.proc.poll() is None:
            self.terminate()
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
        if self._log is not None and not self._reader.is_alive():
            self.note(f"{self.name} ended: {describe_exit(self.proc.returncode)}")
            with self._log_lock:
                self._log.close()


#: The first words of the lines a child prints for its parent, not for a person.
_FOR_THE_PARENT = ("READY ", "LISTEN ", "METRICS ", "URI = ", "STOPPED ")


def _echo(stream: TextIO, line: str) -> None:
    if not line.startswith(_FOR_THE_PARENT):
        with contextlib.suppress(OSError, ValueError):  # the stream closed: no echo
            stream.write(line + "\n")
            stream.flush()


def spawn_nameserver(
    host: str | None = "127.0.0.1",
    port: int | None = 0,
    timeout: float = START_TIMEOUT,
    extra: Sequence[str] = (),
    *,
    config: str = os.devnull,
    log: str | None = None,
    die_with_parent: bool = False,
) -> tuple[Child, tuple[str, int]]:
    """Start ``pyrokv nameserver``; return it and its real (host, port).

    It reads ``config``; ``host`` or ``port`` None leaves that one to the config.
    ``log`` and ``die_with_parent`` are :class:`Child`'s.
    """
    args = ["nameserver", "--config", config]
    if host is not None:
        args += ["--host", host]
    if port is not None:
        args += ["--port", str(port)]
    child = Child(
        [*args, *extra], "name server", log=log, die_with_parent=die_with_parent
    )
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
    log: str | None = None,
    die_with_parent: bool = False,
    wait: bool = True,
) -> Child:
    """Start ``pyrokv node NAME`` and wait until it has registered.

    It reads ``config``; ``ns`` None leaves the name server to the config.
    ``log`` and ``die_with_parent`` are :class:`Child`'s. With ``wait=False`` it
    returns at once: the caller waits for ``READY NAME`` (and stops the child if
    that fails), so that several nodes start at the same time.
    """
    args = ["node", name, "--config", config]
    if ns is not None:
        args += ["--ns", f"{ns[0]}:{ns[1]}"]
    if table is not None:
        args += ["--table", table]
    child = Child(
        [*args, *extra], f"node {name}", log=log, die_with_parent=die_with_parent
    )
    if not wait:
        return child
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
