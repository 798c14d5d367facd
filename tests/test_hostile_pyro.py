"""Hostile Pyro5 messages against real ``pyrokv node`` and ``pyrokv nameserver`` processes.

Issue 10, findings 3, 7, 8 (the name server's ``--workers``) and 9: what a daemon
refuses before it decodes a message, what it refuses as it decodes one, and how
``TaskRunner``'s remote methods check their arguments. Every attack here is one
raw Pyro5 message, or a handful, against a process of its own, with every wait
bounded by a deadline; memory is the process's peak (VmHWM, reset through
/proc/PID/clear_refs before each attack) and other clients' service is sampled
while the attack runs.
"""

from __future__ import annotations

import math
import select
import socket
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import Pyro5.errors
import pytest
import serpent
from Pyro5 import protocol, serializers
from Pyro5.api import Proxy
from Pyro5.core import URI

from pyrokv.cli import main
from pyrokv.cluster import Child, spawn_nameserver, spawn_node
from pyrokv.errors import TaskArgumentError
from pyrokv.naming import tasks_name
from pyrokv.testing import Conn
from pyrokv.wire import setup_pyro

pytestmark = pytest.mark.distributed

MIB = 1024 * 1024
#: The issue's targets for a 2 MiB hostile body: the node's peak memory grows by at
#: most this much, and another client waits at most this long for a reply.
PEAK_LIMIT_MIB = 200
STALL_LIMIT = 0.200
HOSTILE_SIZE = 2 * MIB
#: The default --max-message.
MAX_MESSAGE = 8 * MIB
#: The longest any one exchange here may take before the test calls it a hang.
DEADLINE = 10.0

# Pyro5's wire header (Pyro5/protocol.py's docstring): tag, protocol version,
# message type, serializer id, flags, sequence number, data length, annotations
# length, correlation id, reserved, magic number; 40 bytes.
HEADER = struct.Struct("!4sHBBHHII16sHH")
MAGIC = 0x4DC5
SERPENT_ID = 1
SERPENT_HEADER = b"# serpent utf-8 python3.2\n"
NS_OBJECT = "Pyro.NameServer"

#: Expressions of about 2 MiB that decode to a lot of objects (each the argument
#: of one call). The flat list is the issue's; the others build as many syntax
#: nodes with operators instead of commas.
HOSTILE = {
    "flat list": b"[" + b"0," * (HOSTILE_SIZE // 2) + b"]",
    "comparison chain": b"0" + b"<0" * (HOSTILE_SIZE // 2),
    "sum": b"0" + b"+0" * (HOSTILE_SIZE // 2),
}


# -- raw Pyro5 messages --------------------------------------------------------


def frame(
    msgtype: int,
    body: bytes,
    *,
    flags: int = 0,
    seq: int = 0,
    announced: int | None = None,
) -> bytes:
    """One Pyro5 message: the header (announcing ``announced`` bytes, else the body's) and ``body``."""
    size = len(body) if announced is None else announced
    header = HEADER.pack(
        b"PYRO",
        protocol.PROTOCOL_VERSION,
        msgtype,
        SERPENT_ID,
        flags,
        seq,
        size,
        0,
        bytes(16),
        0,
        MAGIC,
    )
    return header + body


def call_body(obj: str, method: str, args: tuple[Any, ...], raw_arg: bytes) -> bytes:
    """A serpent call body of ``obj.method(*args, RAW)`` where RAW is the serpent text ``raw_arg``."""
    marker = f"@@{uuid.uuid4().hex}@@"
    body: bytes = serpent.dumps((obj, method, (*args, marker), {}))
    quoted = repr(marker).encode()
    assert body.count(quoted) == 1
    return body.replace(quoted, raw_arg)


def recv_exactly(sock: socket.socket, size: int, deadline: float) -> bytes | None:
    """``size`` bytes from ``sock``; None if it closes (or resets) first."""
    data = b""
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no reply within {DEADLINE}s (got {len(data)} bytes)")
        sock.settimeout(left)
        try:
            chunk = sock.recv(size - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


@dataclass
class Reply:
    """A Pyro5 message the daemon sent back: its type, flags and decoded body."""

    type: int
    flags: int
    data: Any


def read_message(sock: socket.socket, deadline: float) -> Reply | None:
    """The next message the daemon sends; None once it has closed the connection."""
    header = recv_exactly(sock, HEADER.size, deadline)
    if header is None:
        return None
    fields = HEADER.unpack(header)
    msgtype, serializer, flags = fields[2], fields[3], fields[4]
    size, annotations = fields[6], fields[7]
    payload = recv_exactly(sock, size + annotations, deadline)
    if payload is None:
        return None
    # A daemon that refuses a connect before it has read the serializer id answers
    # in marshal, Pyro5's fallback.
    decode = serializers.serializers_by_id[serializer].loads
    return Reply(msgtype, flags, decode(payload[annotations:]))


def closed(sock: socket.socket, deadline: float) -> bool:
    """Whether the daemon closes ``sock`` by ``deadline`` (anything it sends is dropped)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def pyro_connect(address: tuple[str, int], obj: str) -> socket.socket:
    """A socket past Pyro5's connect handshake for ``obj``, as a proxy makes one."""
    sock = socket.create_connection(address, timeout=DEADLINE)
    try:
        hello = serpent.dumps({"handshake": "hello", "object": obj})
        sock.sendall(frame(protocol.MSG_CONNECT, hello))
        reply = read_message(sock, time.monotonic() + DEADLINE)
        assert reply is not None, "the daemon closed the connection at connect"
        assert reply.type == protocol.MSG_CONNECTOK, reply
    except BaseException:
        sock.close()
        raise
    return sock


def attack(
    address: tuple[str, int], obj: str, body: bytes, *, flags: int = 0
) -> Reply | None:
    """Send one call with ``body`` on a new connection; the reply, or None if closed."""
    with pyro_connect(address, obj) as sock:
        sock.sendall(frame(protocol.MSG_INVOKE, body, flags=flags, seq=1))
        return read_message(sock, time.monotonic() + DEADLINE)


# -- what the attacked process costs and does meanwhile -------------------------


def status_kib(pid: int, field_name: str) -> int:
    """A ``/proc/PID/status`` field in KiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field_name} for process {pid}")


class Peak:
    """The growth of a process's peak resident memory from now on, in MiB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:  # "5": reset VmHWM to the current VmRSS (Linux >= 4.0)
            with open(f"/proc/{pid}/clear_refs", "w") as refs:
                refs.write("5")
            self.base = status_kib(pid, "VmRSS")
        except OSError:
            self.base = status_kib(pid, "VmHWM")

    def growth_mib(self) -> float:
        """VmHWM now minus VmRSS at the start (or VmHWM, if it could not be reset)."""
        return (status_kib(self.pid, "VmHWM") - self.base) / 1024


@dataclass
class Prober:
    """Calls ``probe`` in a loop on a thread of its own; records each call's latency."""

    probe: Callable[[], object]
    latencies: list[float] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                self.probe()
            except BaseException as exc:
                self.errors.append(exc)
                return
            self.latencies.append(time.perf_counter() - started)

    def worst(self) -> float:
        """The longest call, in seconds; fails if the probe itself failed."""
        assert not self.errors, f"the other client failed: {self.errors[0]!r}"
        assert len(self.latencies) >= 5, self.latencies
        return max(self.latencies)


@dataclass
class During:
    """What an attack left behind: the peak growth and the other client's worst wait."""

    peak_mib: float
    worst: float
    samples: int


def during(
    pid: int, probe: Callable[[], object], hostile: Callable[[], None]
) -> During:
    """Run ``hostile`` while ``probe`` loops on another thread; measure both."""
    peak = Peak(pid)
    prober = Prober(probe)
    thread = threading.Thread(target=prober.run, daemon=True)
    thread.start()

    def sampled(count: int) -> None:
        deadline = time.monotonic() + DEADLINE
        while len(prober.latencies) < count and time.monotonic() < deadline:
            if prober.errors or not thread.is_alive():
                return
            time.sleep(0.005)

    try:
        sampled(5)  # a few samples from before the attack
        hostile()
        sampled(len(prober.latencies) + 5)  # and a few after it
    finally:
        prober.stop.set()
        thread.join(DEADLINE)
    return During(peak.growth_mib(), prober.worst(), len(prober.latencies))


# -- the processes under attack -------------------------------------------------


def proxy_for(uri: str, timeout: float = DEADLINE) -> Any:
    """A new Pyro5 proxy of ``uri`` whose calls time out after ``timeout`` seconds."""
    proxy = Proxy(uri)
    proxy._pyroTimeout = timeout
    return proxy


@dataclass
class Node:
    """A ``pyrokv node`` child: its name, its Pyro5 and text addresses."""

    name: str
    child: Child
    pyro: tuple[str, int]
    text: tuple[str, int] | None

    @property
    def uri(self) -> str:
        """Its TaskRunner's URI."""
        return f"PYRO:{tasks_name(self.name)}@{self.pyro[0]}:{self.pyro[1]}"

    def tasks(self, timeout: float = DEADLINE) -> Any:
        """A new proxy of its TaskRunner (one per call: a refused call closes it)."""
        return proxy_for(self.uri, timeout)


def start_node(
    ns: tuple[str, int], name: str, table: str, extra: tuple[str, ...] = ()
) -> Node:
    """Spawn ``pyrokv node NAME`` (the guard installed); read its addresses."""
    child = spawn_node(name, ns, table, extra=["--listen", "127.0.0.1:0", *extra])
    ready = next(line for line in child.lines if line.startswith(f"READY {name} "))
    uri = URI(ready.split()[2])
    return Node(name, child, (uri.host, uri.port), child.listen_address())


@pytest.fixture(name="node")
def _node(ns: tuple[str, int], unique: str) -> Iterator[Node]:
    """A fresh node owning every bucket, with bucket ``apple`` holding ``k=v``."""
    setup_pyro()
    name = f"hp{unique}"
    node = start_node(ns, name, f"a..z={name}")
    try:
        assert node.text is not None
        with Conn(node.text) as conn:
            assert conn.ask("CREATE apple") == b"OK"
            assert conn.ask("PUT apple k v") == b"OK"
        yield node
    finally:
        node.child.stop()


@pytest.fixture(name="pair", scope="module")
def _pair(ns: tuple[str, int]) -> Iterator[tuple[Node, Node]]:
    """Two nodes (a..m on the first, n..z on the second) for the argument checks."""
    setup_pyro()
    tag = uuid.uuid4().hex[:8]
    first, second = f"ha{tag}", f"hb{tag}"
    table = f"a..m={first}, n..z={second}"
    nodes: list[Node] = []
    try:
        nodes.append(start_node(ns, first, table))
        nodes.append(start_node(ns, second, table))
        assert nodes[0].text is not None
        with Conn(nodes[0].text) as conn:
            for bucket in ("apple", "zoo"):
                assert conn.ask(f"CREATE {bucket}") == b"OK"
                assert conn.ask(f"PUT {bucket} k v") == b"OK"
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.child.stop()


@pytest.fixture(name="nameserver")
def _nameserver() -> Iterator[tuple[Child, tuple[str, int]]]:
    """A ``pyrokv nameserver`` of this test's own (the guard installed)."""
    setup_pyro()
    child, address = spawn_nameserver()
    try:
        yield child, address
    finally:
        child.stop()


def local_get(address: tuple[str, int]) -> tuple[Conn, Callable[[], object]]:
    """A text connection and a probe that GETs ``apple k`` on it and checks the reply."""
    conn = Conn(address, timeout=DEADLINE)

    def probe() -> None:
        assert conn.ask("GET apple k") == b"v|OK"

    return conn, probe


# -- finding 3: one small message must not cost gigabytes -------------------------


def test_a_2_mib_flat_list_costs_a_node_little_and_stalls_no_one(node: Node) -> None:
    """Eight 2 MiB `[0,0,...]` calls are refused: peak +<=200 MiB, others wait <=200 ms."""
    body = call_body(
        tasks_name(node.name), "run", ("pyrokv.tasks.get",), HOSTILE["flat list"]
    )
    assert HOSTILE_SIZE <= len(body) < HOSTILE_SIZE + 1024
    replies: list[Reply | None] = []

    def hostile() -> None:
        with ThreadPoolExecutor(4) as pool:
            replies.extend(
                pool.map(
                    lambda _: attack(node.pyro, tasks_name(node.name), body), range(8)
                )
            )

    assert node.text is not None
    conn, probe = local_get(node.text)
    with conn:
        seen = during(node.child.proc.pid, probe, hostile)
        # Refused: the connection is closed, or the call answered with an error.
        assert all(r is None or r.flags & protocol.FLAGS_EXCEPTION for r in replies)
        print(
            f"flat list x8: peak +{seen.peak_mib:.1f} MiB, worst local GET "
            f"{seen.worst * 1000:.1f} ms over {seen.samples} samples"
        )
        assert seen.peak_mib <= PEAK_LIMIT_MIB
        assert seen.worst <= STALL_LIMIT
        assert node.child.alive()
        assert conn.ask("GET apple k") == b"v|OK"
    with node.tasks() as tasks:
        assert tasks.run("pyrokv.tasks.get", ["apple", "k"]) == "v"


@pytest.mark.parametrize("shape", ["comparison chain", "sum"])
def test_a_2_mib_body_of_operators_costs_a_node_little_and_stalls_no_one(
    node: Node, shape: str
) -> None:
    """A 2 MiB `0<0<0...` or `0+0+0...` call costs the node <=200 MiB and others <=200 ms."""
    body = call_body(
        tasks_name(node.name), "run", ("pyrokv.tasks.get",), HOSTILE[shape]
    )
    assert HOSTILE_SIZE <= len(body) < HOSTILE_SIZE + 1024
    replies: list[Reply | None] = []
    assert node.text is not None
    conn, probe = local_get(node.text)
    with conn:
        seen = during(
            node.child.proc.pid,
            probe,
            lambda: replies.append(attack(node.pyro, tasks_name(node.name), body)),
        )
        print(
            f"{shape}: peak +{seen.peak_mib:.1f} MiB, worst local GET "
            f"{seen.worst * 1000:.1f} ms over {seen.samples} samples"
        )
        assert replies[0] is None or replies[0].flags & protocol.FLAGS_EXCEPTION
        assert seen.peak_mib <= PEAK_LIMIT_MIB
        assert seen.worst <= STALL_LIMIT
        assert node.child.alive()
        assert conn.ask("GET apple k") == b"v|OK"


def test_a_compressed_body_is_refused_before_it_is_inflated(node: Node) -> None:
    """A 250 KiB zlib body that inflates to 240 MiB costs the node <=200 MiB, others <=200 ms."""
    inflated = call_body(
        tasks_name(node.name),
        "run",
        ("pyrokv.tasks.get",),
        b"[" + b"0," * (120 * MIB) + b"]",
    )
    body = zlib.compress(inflated, 9)
    del inflated
    assert len(body) < MAX_MESSAGE // 32  # far below --max-message on the wire
    replies: list[Reply | None] = []
    assert node.text is not None
    conn, probe = local_get(node.text)
    with conn:
        seen = during(
            node.child.proc.pid,
            probe,
            lambda: replies.append(
                attack(
                    node.pyro,
                    tasks_name(node.name),
                    body,
                    flags=protocol.FLAGS_COMPRESSED,
                )
            ),
        )
        print(
            f"compressed {len(body) // 1024} KiB -> 240 MiB: peak "
            f"+{seen.peak_mib:.1f} MiB, worst local GET {seen.worst * 1000:.1f} ms"
        )
        assert replies[0] is None or replies[0].flags & protocol.FLAGS_EXCEPTION
        assert seen.peak_mib <= PEAK_LIMIT_MIB
        assert seen.worst <= STALL_LIMIT
        assert node.child.alive()


@pytest.mark.parametrize("msgtype", [protocol.MSG_CONNECT, protocol.MSG_INVOKE])
def test_a_header_announcing_more_than_max_message_is_refused_unread(
    node: Node, msgtype: int
) -> None:
    """A header announcing 1 GiB (> 8 MiB) closes the connection with 64 KiB of it sent."""
    peak = Peak(node.child.proc.pid)
    announced = 1024 * MIB
    part = b"0," * 32768
    if msgtype == protocol.MSG_CONNECT:
        sock = socket.create_connection(node.pyro, timeout=DEADLINE)
    else:
        sock = pyro_connect(node.pyro, tasks_name(node.name))
    with sock:
        started = time.monotonic()
        sock.sendall(frame(msgtype, part, seq=1, announced=announced))
        if msgtype == protocol.MSG_CONNECT:
            # Pyro5 says why in its connect-failed reply, then closes.
            reply = read_message(sock, started + DEADLINE)
            assert reply is not None
            assert reply.type == protocol.MSG_CONNECTFAIL
            assert "too large" in str(reply.data)
        # It never waits for the rest of the announced body.
        assert closed(sock, started + 2.0)
    assert peak.growth_mib() < 16
    assert node.child.alive()
    with node.tasks() as tasks:
        assert tasks.run("pyrokv.tasks.get", ["apple", "k"]) == "v"


def test_max_message_on_a_node_refuses_a_larger_call_and_serves_smaller_ones(
    ns: tuple[str, int], unique: str
) -> None:
    """`pyrokv node --max-message 1000000`: a 1.5 MB call is refused, a 0.5 MB one runs."""
    setup_pyro()
    name = f"hm{unique}"
    node = start_node(ns, name, f"a..z={name}", ("--max-message", "1000000"))
    try:
        with node.tasks() as tasks:
            tasks.run("pyrokv.tasks.create", ["apple"])
            assert (
                tasks.run("pyrokv.tasks.put", ["apple", "small", "s" * 500_000]) is None
            )
        with node.tasks() as tasks, pytest.raises(Pyro5.errors.CommunicationError):
            tasks.run("pyrokv.tasks.put", ["apple", "big", "b" * 1_500_000])
        with node.tasks() as tasks:
            assert tasks.run("pyrokv.tasks.get", ["apple", "big"]) is None
            assert tasks.run("pyrokv.tasks.get", ["apple", "small"]) == "s" * 500_000
    finally:
        node.child.stop()


@pytest.mark.parametrize("shape", ["flat list", "comparison chain"])
def test_a_2_mib_body_costs_the_name_server_little_and_stalls_no_one(
    nameserver: tuple[Child, tuple[str, int]], shape: str
) -> None:
    """The same 2 MiB call to `pyrokv nameserver`: peak +<=200 MiB, lookups wait <=200 ms."""
    child, address = nameserver
    body = call_body(NS_OBJECT, "lookup", (), HOSTILE[shape])
    replies: list[Reply | None] = []
    with proxy_for(f"PYRO:{NS_OBJECT}@{address[0]}:{address[1]}") as other:
        other._pyroBind()

        def lookup() -> None:
            other._pyroClaimOwnership()  # the prober's thread calls it
            assert other.lookup(NS_OBJECT).object == NS_OBJECT

        seen = during(
            child.proc.pid,
            lookup,
            lambda: replies.append(attack(address, NS_OBJECT, body)),
        )
        other._pyroClaimOwnership()  # back to this thread
        print(
            f"name server, {shape}: peak +{seen.peak_mib:.1f} MiB, worst lookup "
            f"{seen.worst * 1000:.1f} ms over {seen.samples} samples"
        )
        assert replies[0] is None or replies[0].flags & protocol.FLAGS_EXCEPTION
        assert seen.peak_mib <= PEAK_LIMIT_MIB
        assert seen.worst <= STALL_LIMIT
        assert child.alive()
        assert other.lookup(NS_OBJECT).object == NS_OBJECT


def test_max_message_on_the_name_server_refuses_a_larger_call() -> None:
    """`pyrokv nameserver --max-message 65536`: a 100 kB lookup is refused, a small one runs."""
    setup_pyro()
    child, (host, port) = spawn_nameserver(extra=["--max-message", "65536"])
    try:
        uri = f"PYRO:{NS_OBJECT}@{host}:{port}"
        with proxy_for(uri) as proxy, pytest.raises(Pyro5.errors.CommunicationError):
            proxy.lookup("x" * 100_000)
        with proxy_for(uri) as proxy:
            assert proxy.lookup(NS_OBJECT).object == NS_OBJECT
    finally:
        child.stop()


def test_a_batch_of_64_values_of_60_kib_is_routed_and_reads_back(
    pair: tuple[Node, Node],
) -> None:
    """route_batch of 64 PUTs of 60 KiB (3.8 MiB of quotes and commas) runs; GETs return them."""
    first, _ = pair
    # Quotes, backslashes and separators inside the values: the guard must count
    # only what is outside string literals.
    pattern = b"0,[({:'\"\\ "
    values = {
        f"key{i}": (bytes([48 + i % 10]) + pattern * 6144)[: 60 * 1024]
        for i in range(64)
    }
    buckets = {key: ("apple", "zoo")[i % 2] for i, key in enumerate(values)}
    items = [
        [buckets[key], "pyrokv.tasks.put", [buckets[key], key, value]]
        for key, value in values.items()
    ]
    with first.tasks() as tasks:
        results = tasks.route_batch(items, [], 5.0)
        assert results == [[True, None]] * 64
        gets = [
            [buckets[key], "pyrokv.tasks.get", [buckets[key], key]] for key in values
        ]
        back = tasks.route_batch(gets, [], 5.0)
    assert [value for _, value in back] == list(values.values())
    assert first.text is not None
    with Conn(first.text) as conn:
        assert conn.exchange("GET zoo key1") == [values["key1"], b"OK"]


# -- finding 7: no Pyro5 object is built from a request ----------------------------


@pytest.fixture(name="listener")
def _listener() -> Iterator[socket.socket]:
    """A listening TCP socket on loopback that nothing should ever dial."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock


def test_proxy_and_uri_arguments_never_make_a_node_dial_out(
    pair: tuple[Node, Node], listener: socket.socket
) -> None:
    """A Proxy or URI as args, kwargs, path, items or runs of run/route/route_batch/
    route_runs fails; no dial."""
    first, _ = pair
    port = listener.getsockname()[1]
    get = "pyrokv.tasks.get"
    calls: list[tuple[str, Callable[[Any, Any], Any]]] = [
        ("run args", lambda t, b: t.run(get, ["apple", b])),
        ("run args itself", lambda t, b: t.run(get, b)),
        ("run kwargs", lambda t, b: t.run(get, [], {"bucket": b, "key": "k"})),
        ("run kwargs itself", lambda t, b: t.run(get, [], b)),
        ("route args", lambda t, b: t.route("zoo", get, ["zoo", b], None, [], 5.0)),
        ("route kwargs", lambda t, b: t.route("zoo", get, [], {"key": b}, [], 5.0)),
        ("route path", lambda t, b: t.route("zoo", get, ["zoo", "k"], None, [b], 5.0)),
        ("route path itself", lambda t, b: t.route("zoo", get, [], None, b, 5.0)),
        ("route bucket", lambda t, b: t.route(b, get, ["zoo", "k"], None, [], 5.0)),
        ("route_batch items", lambda t, b: t.route_batch(b, [], 5.0)),
        ("route_batch item", lambda t, b: t.route_batch([b], [], 5.0)),
        ("route_batch args", lambda t, b: t.route_batch([["zoo", get, [b]]], [], 5.0)),
        ("route_batch path", lambda t, b: t.route_batch([["zoo", get, []]], [b], 5.0)),
        ("route_runs runs", lambda t, b: t.route_runs(b, 5.0)),
        ("route_runs run", lambda t, b: t.route_runs([b], 5.0)),
        ("route_runs args", lambda t, b: t.route_runs([[get, 2, ["zoo", b]]], 5.0)),
    ]
    outcomes: list[str] = []
    for bait in (Proxy(f"PYRO:x@127.0.0.1:{port}"), URI(f"PYRO:x@127.0.0.1:{port}")):
        for where, call in calls:
            started = time.monotonic()
            with first.tasks(timeout=5.0) as tasks:
                try:
                    call(tasks, bait)
                except (Pyro5.errors.SecurityError, TaskArgumentError) as exc:
                    outcomes.append(f"{type(bait).__name__} {where}: {exc!r}")
                else:
                    pytest.fail(f"{type(bait).__name__} as {where} was accepted")
            took = time.monotonic() - started
            assert took < 3.0, f"{where}: {took:.1f}s"
        if isinstance(bait, Proxy):
            bait._pyroRelease()
    # The node never connected to the listener, during the calls or after them.
    readable, _, _ = select.select([listener], [], [], 0.5)
    assert readable == [], "\n".join(outcomes)
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()
    with first.tasks() as tasks:
        assert tasks.route("zoo", get, ["zoo", "k"], None, [], 5.0) == "v"


# -- finding 9: arguments are checked, with pyrokv's own errors --------------------


@pytest.mark.parametrize(
    "budget",
    [math.nan, -1, -0.001, math.inf, -math.inf, 10**400, "5", True, [5.0]],
    ids=["nan", "-1", "-0.001", "inf", "-inf", "10**400", "text", "bool", "list"],
)
def test_a_budget_that_is_not_a_finite_number_of_seconds_is_refused(
    pair: tuple[Node, Node], budget: object
) -> None:
    """route and route_batch raise TaskArgumentError for nan, negative, infinite, huge budgets."""
    first, _ = pair
    with first.tasks() as tasks, pytest.raises(TaskArgumentError, match="budget"):
        tasks.route("zoo", "pyrokv.tasks.get", ["zoo", "k"], None, [], budget)
    with first.tasks() as tasks, pytest.raises(TaskArgumentError, match="budget"):
        tasks.route_batch([["zoo", "pyrokv.tasks.get", ["zoo", "k"]]], [], budget)


def test_a_large_finite_budget_is_capped_at_the_timeout(
    pair: tuple[Node, Node],
) -> None:
    """A budget of 1e300 seconds is a valid number: the request runs, within the timeout."""
    first, _ = pair
    with first.tasks() as tasks:
        assert (
            tasks.route("zoo", "pyrokv.tasks.get", ["zoo", "k"], None, [], 1e300) == "v"
        )
        assert tasks.route_batch(
            [["apple", "pyrokv.tasks.get", ["apple", "k"]]], [], 1e300
        ) == [[True, "v"]]


@pytest.mark.parametrize(
    "path",
    ["hb", ["a b"], [1], [["x"]], ["x.y"], [""], {"x": 1}, ["n"] * 65, None],
    ids=["text", "space", "int", "nested", "dot", "empty", "dict", "65 names", "none"],
)
def test_a_path_that_is_not_a_list_of_node_names_is_refused(
    pair: tuple[Node, Node], path: object
) -> None:
    """route and route_batch raise TaskArgumentError for a path that is not node names."""
    first, _ = pair
    with first.tasks() as tasks, pytest.raises(TaskArgumentError, match="path"):
        tasks.route("zoo", "pyrokv.tasks.get", ["zoo", "k"], None, path, 5.0)
    with first.tasks() as tasks, pytest.raises(TaskArgumentError, match="path"):
        tasks.route_batch([["zoo", "pyrokv.tasks.get", ["zoo", "k"]]], path, 5.0)


@pytest.mark.parametrize(
    "items",
    [
        "abc",
        {"zoo": 1},
        [1],
        [["zoo", "pyrokv.tasks.get"]],
        [["zoo", "pyrokv.tasks.get", ["zoo", "k"], 1]],
        [[1, "pyrokv.tasks.get", ["zoo", "k"]]],
        [["zoo", 1, ["zoo", "k"]]],
        [["zoo", "pyrokv.tasks.get", "zk"]],
        [["zoo", "pyrokv.tasks.get", {"zoo": "k"}]],
    ],
    ids=[
        "text",
        "dict",
        "int",
        "pair",
        "quad",
        "int bucket",
        "int func",
        "text args",
        "dict args",
    ],
)
def test_items_that_are_not_triples_are_refused(
    pair: tuple[Node, Node], items: object
) -> None:
    """route_batch raises TaskArgumentError for items that are not [bucket, func, args]."""
    first, _ = pair
    with first.tasks() as tasks, pytest.raises(TaskArgumentError, match="item"):
        tasks.route_batch(items, [], 5.0)


def test_args_and_kwargs_of_the_wrong_type_are_refused(pair: tuple[Node, Node]) -> None:
    """run and route raise TaskArgumentError for args that are no list, kwargs keyed by non-text."""
    first, _ = pair
    get = "pyrokv.tasks.get"
    for call in (
        lambda t: t.run(get, "zoo"),
        lambda t: t.run(get, {"zoo": "k"}),
        lambda t: t.run(get, [], {1: "zoo"}),
        lambda t: t.run(get, [], ["zoo"]),
        lambda t: t.route("zoo", get, "zk", None, [], 5.0),
        lambda t: t.route("zoo", get, [], {2: "k"}, [], 5.0),
        lambda t: t.route(["zoo"], get, ["zoo", "k"], None, [], 5.0),
    ):
        with first.tasks() as tasks, pytest.raises(TaskArgumentError):
            call(tasks)


# -- the flags: --workers on the name server, --max-message on both ----------------


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("nameserver", ["--workers", "--max-message"]),
        ("node", ["--max-message", "--workers"]),
    ],
)
def test_help_lists_workers_and_max_message(
    capsys: pytest.CaptureFixture[str], command: str, flags: list[str]
) -> None:
    """`pyrokv nameserver --help` and `pyrokv node --help` list --workers and --max-message."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in flags:
        assert flag in out


def test_nameserver_workers_bounds_its_connections() -> None:
    """`pyrokv nameserver --workers 4`: a fifth connected proxy is refused, naming --workers."""
    setup_pyro()
    child, (host, port) = spawn_nameserver(extra=["--workers", "4"])
    proxies: list[Any] = []
    try:
        uri = f"PYRO:{NS_OBJECT}@{host}:{port}"
        for _ in range(4):
            proxies.append(proxy_for(uri))
            proxies[-1]._pyroBind()
        with (
            proxy_for(uri) as fifth,
            pytest.raises(Pyro5.errors.CommunicationError) as caught,
        ):
            fifth._pyroBind()
        assert "--workers" in str(caught.value)
        proxies.pop()._pyroRelease()  # a worker comes free
        wait = time.monotonic() + DEADLINE
        while True:
            with proxy_for(uri) as again:
                try:
                    assert again.lookup(NS_OBJECT).object == NS_OBJECT
                    break
                except Pyro5.errors.CommunicationError:
                    if time.monotonic() > wait:
                        raise
            time.sleep(0.05)
    finally:
        for proxy in proxies:
            proxy._pyroRelease()
        child.stop()


@pytest.mark.parametrize("command", ["nameserver", "node"])
def test_a_small_workers_count_starts_and_serves(
    ns: tuple[str, int], unique: str, command: str
) -> None:
    """`--workers 2` (fewer than Pyro5's minimum pool of 4) starts a process that serves."""
    setup_pyro()
    if command == "nameserver":
        child, (host, port) = spawn_nameserver(extra=["--workers", "2"])
        uri = f"PYRO:{NS_OBJECT}@{host}:{port}"
        check: Callable[[Any], bool] = lambda p: p.lookup(NS_OBJECT).object == NS_OBJECT
    else:
        name = f"hw{unique}"
        node = start_node(ns, name, f"a..z={name}", ("--workers", "2"))
        child, uri = node.child, node.uri
        check = lambda p: p.info()["node"] == name
    try:
        with proxy_for(uri) as proxy:
            assert check(proxy)
    finally:
        child.stop()
