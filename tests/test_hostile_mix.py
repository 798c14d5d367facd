"""Hostile frames interleaved with benign requests: every benign request gets its correct reply.

Issue 10, "Tests and docs": one cluster (foo a..m, bar n..z, sharing the cluster
secret) and, per example, six connections: four clients (two to each node) and two
proven peers (one to each node, claiming to be the other node), all pipelining.
Benign requests (CREATE/PUT/GET/DELETE on buckets of both nodes; FWD-wrapped on the
peer connections) are checked against a dict model; hostile frames (malformed or
forged FWD lines, huge budgets, PEER/PROVE garbage, random bytes) get the reply
the protocol gives them, and no connection is closed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from peertesting import Pair, address_of, pair, prove, secret_flag

from pyrokv import peering
from pyrokv.testing import CLOSED, Conn

pytestmark = pytest.mark.distributed

#: Connections of an example: (node index, claimed peer name index or None).
#: Node 0 is foo, node 1 is bar; a peer connection claims to be the other node.
LAYOUT = [(0, None), (0, None), (1, None), (1, None), (0, 1), (1, 0)]
# Every word a node answers other than UNKNOWN COMMAND: random junk must not start
# with one (QUIT would close the connection, AUTH asks for a password, ...).
KNOWN = {b"GET", b"PUT", b"CREATE", b"DELETE", b"FWD", b"PEER", b"PROVE"}
KNOWN |= {b"QUIT", b"AUTH", b"PING", b"INFO", b"KEYS"}
UNKNOWN = b"UNKNOWN COMMAND"
FRAMED_UNKNOWN = [b"17", UNKNOWN]
MAX_BUDGET_MS = 86_400_000


@pytest.fixture(name="cluster", scope="module")
def _cluster(ns: tuple[str, int], secret_file: str) -> Iterator[Pair]:
    """foo and bar sharing the cluster secret, for the whole module."""
    flags = secret_flag(secret_file)
    with pair(ns, uuid.uuid4().hex[:8], flags, flags) as nodes:
        yield nodes


# -- frames ---------------------------------------------------------------------

token = st.lists(st.integers(33, 255), min_size=1, max_size=10).map(bytes)
valid_path = st.lists(
    st.sampled_from([b"foo", b"bar", b"x-1", b"node_2"]), min_size=1, max_size=3
).map(b",".join)
hex32 = st.binary(min_size=16, max_size=16).map(lambda b: b.hex().encode())


@dataclass(frozen=True)
class Benign:
    """A request on one of the example's buckets; FWD-wrapped on a peer connection."""

    verb: bytes
    bucket: int
    key: bytes
    value: bytes
    budget: int  # used on peer connections only
    path: bytes


@dataclass(frozen=True)
class Forged:
    """A well-formed FWD around a benign request: a client must not get it run."""

    request: Benign


@dataclass(frozen=True)
class Hostile:
    """A line whose reply depends only on the connection's state, not the store's."""

    kind: str  # "fwd" (malformed), "peer", "prove", "junk"
    line: bytes


benign = st.builds(
    Benign,
    verb=st.sampled_from([b"CREATE", b"PUT", b"GET", b"DELETE", b"PUT", b"GET"]),
    bucket=st.integers(0, 1),
    key=st.sampled_from([b"k", b"j", b"\xff\x00x"]),
    value=token,
    budget=st.integers(0, MAX_BUDGET_MS),
    path=valid_path,
)
bad_budget = st.one_of(
    st.sampled_from(
        [b"-1", b"1.5", b"1e3", b"0x10", b"+5", b"\xd9\xa3", b"86400001", b"1" * 10]
    ),
    st.integers(10, 400).map(lambda n: b"9" * n),
    st.integers(MAX_BUDGET_MS + 1, 10**12).map(lambda n: b"%d" % n),
)
bad_path = st.sampled_from([b"a..b", b",", b"a,", b",a", b"a,,b", b"\xff", b"a/b"])
bad_inner = st.sampled_from(
    [
        *(b"FROB x", b"GET onlyone", b"PUT a b", b"CREATE a b", b"get a k"),
        *(b"FWD 1 foo", b"FWD 1 foo GET zz k", b"PEER x y", b"PROVE " + b"0" * 64),
    ]
)
budget = st.integers(0, MAX_BUDGET_MS).map(lambda n: b"%d" % n)
version = st.integers(0, 10**6).map(lambda n: b"%d" % n)
bad_version = st.sampled_from([b"-1", b"x", b"1.5", b"9" * 19, b"0x1"])
malformed_fwd = st.one_of(
    st.tuples(bad_budget, version, valid_path, st.just(b"GET zz k")),
    st.tuples(budget, bad_version, valid_path, st.just(b"GET zz k")),
    st.tuples(budget, version, bad_path, st.just(b"GET zz k")),
    st.tuples(budget, version, valid_path, bad_inner),
).map(lambda t: b"FWD " + b" ".join(t)) | st.sampled_from(
    [b"FWD", b"FWD 1", b"FWD 1 0 foo", b"FWD  1  0  foo  "]
)
peer_line = st.one_of(
    st.tuples(st.sampled_from([b"foo", b"bar", b"evil"]), hex32).map(
        lambda t: b"PEER %s %s" % t
    ),
    st.sampled_from([b"PEER", b"PEER x", b"PEER x y z w", b"PEER x " + b"A" * 32]),
    hex32.map(lambda h: b"PEER a.b " + h),
    hex32.map(lambda h: b"PEER \xff " + h),
    hex32.map(lambda h: b"PEER x " + h[:31]),
    hex32.map(lambda h: b"PEER x " + h + b" " + h + h),
)
prove_line = st.one_of(
    st.sampled_from([b"PROVE", b"PROVE a b", b"PROVE " + b"\xff" * 64]),
    st.binary(min_size=32, max_size=32).map(lambda b: b"PROVE " + b.hex().encode()),
)
junk = st.binary(max_size=80).filter(
    lambda b: b"\n" not in b and (not b.split() or b.split()[0] not in KNOWN)
)
hostile = st.one_of(
    malformed_fwd.map(lambda line: Hostile("fwd", line)),
    peer_line.map(lambda line: Hostile("peer", line)),
    prove_line.map(lambda line: Hostile("prove", line)),
    junk.map(lambda line: Hostile("junk", line)),
    benign.map(Forged),
)
steps = st.lists(
    st.tuples(
        st.integers(0, len(LAYOUT) - 1),
        # three benign frames to a hostile one (one_of would flatten hostile's
        # branches and weigh each of them like benign)
        st.tuples(st.integers(0, 3), benign, hostile).map(
            lambda t: t[2] if t[0] == 0 else t[1]
        ),
        st.sampled_from([b"\n", b"\r\n"]),
    ),
    min_size=10,
    max_size=80,
)


# -- the model ------------------------------------------------------------------

Expected = bytes | Callable[[bytes], bool]


@dataclass
class Model:
    """The buckets of an example, and each connection's pending PEER challenge."""

    uid: str
    names: tuple[str, str]
    secret: bytes
    buckets: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)
    challenged: dict[int, bool] = field(default_factory=dict)
    #: connections that sent their one PEER already
    tried: set[int] = field(default_factory=set)
    #: connections the node closes (after a wrong PROVE): nothing more is sent there
    closed: set[int] = field(default_factory=set)
    #: each connection's text address, which the node's proof names
    where: dict[int, str] = field(default_factory=dict)

    def bucket(self, conn: int, request: Benign) -> bytes:
        """The bucket a benign request names: a peer connection's are its node's own."""
        node, claimed = LAYOUT[conn]
        first = (b"a", b"n")[node if claimed is not None else request.bucket % 2]
        return first + b"%sc%db%d" % (self.uid.encode(), conn, request.bucket)

    def line(self, conn: int, frame: Benign | Forged | Hostile) -> bytes:
        """The line sent on connection ``conn`` for ``frame``."""
        if isinstance(frame, Hostile):
            return frame.line
        request = frame.request if isinstance(frame, Forged) else frame
        words = [request.verb, self.bucket(conn, request)]
        if request.verb != b"CREATE":
            words.append(request.key)
        if request.verb == b"PUT":
            words.append(request.value)
        line = b" ".join(words)
        if isinstance(frame, Forged) or LAYOUT[conn][1] is not None:
            line = b"FWD %d 0 %s %s" % (request.budget, request.path, line)
        return line

    def expect(self, conn: int, frame: Benign | Forged | Hostile) -> list[Expected]:
        """The reply lines ``frame`` gets on ``conn``; updates the model."""
        is_peer = LAYOUT[conn][1] is not None
        if isinstance(frame, Forged):
            if not is_peer:
                return [UNKNOWN]  # never run: the model is unchanged
            frame = frame.request  # from a proven peer, a forwarded request
        if isinstance(frame, Benign):
            reply = self.run(self.bucket(conn, frame), frame)
            if is_peer:
                reply = b"%d\r\n%s" % (len(reply), reply)
            return list(reply.split(b"\r\n")[:-1])
        if frame.kind == "fwd":
            return list(FRAMED_UNKNOWN) if is_peer else [UNKNOWN]
        if frame.kind == "peer":
            if is_peer or conn in self.tried:
                return [UNKNOWN]  # one PEER per connection
            self.tried.add(conn)
            return [self.peer_answer(conn, frame.line)]
        if frame.kind == "prove":
            if self.challenged.pop(conn, False):
                self.closed.add(conn)  # answered late, then the node closes it
                return [b"ERROR peer authentication failed"]
            return [UNKNOWN]
        return [UNKNOWN]

    def peer_answer(self, conn: int, line: bytes) -> Expected:
        """What a PEER line gets: the node's proof for a well-formed one, else ERROR."""
        words = line.split()
        try:
            peering.parse_hello(words, with_proof=False)
        except Exception:
            return lambda got: got.startswith(b"ERROR PEER ")
        self.challenged[conn] = True
        node = self.names[LAYOUT[conn][0]]
        secret, nonce = self.secret, words[2]

        def proves(got: bytes) -> bool:
            answer = got.split()
            return (
                len(answer) == 4
                and answer[:2] == [b"PEER", node.encode()]
                and answer[2] != nonce
                and peering.verify(
                    peering.proof(
                        secret, False, nonce, node, answer[2], self.where[conn]
                    ),
                    answer[3],
                )
            )

        return proves

    def run(self, bucket: bytes, request: Benign) -> bytes:
        """A benign request's reply bytes, as the store must give them."""
        if request.verb == b"CREATE":
            self.buckets.setdefault(bucket, {})
            return b"OK\r\n"
        if bucket not in self.buckets:
            return b"NOT FOUND\r\n"
        store = self.buckets[bucket]
        if request.verb == b"PUT":
            store[request.key] = request.value
        elif request.verb == b"DELETE":
            store.pop(request.key, None)
        else:
            return store.get(request.key, b"") + b"\r\nOK\r\n"
        return b"OK\r\n"


def matches(expected: Expected, got: bytes) -> bool:
    """Whether reply line ``got`` is the ``expected`` one (or passes its check)."""
    return expected(got) if callable(expected) else got == expected


@settings(
    max_examples=200,
    # no explain phase: its tracer makes a failing example take minutes with
    # this many threads
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(steps=steps)
def test_hostile_frames_never_change_a_benign_reply(
    cluster: Pair, secret_file: str, steps: list[tuple[int, object, bytes]]
) -> None:
    """Pipelined on six connections, hostile frames get their protocol reply and benign ones the model's."""
    secret = peering.read_secret(secret_file)
    model = Model(uuid.uuid4().hex[:8], (cluster.foo, cluster.bar), secret)
    names = (cluster.foo, cluster.bar)
    conns: list[Conn] = []
    try:
        for node, claimed in LAYOUT:
            conn = Conn(cluster.text(names[node]), timeout=10)
            model.where[len(conns)] = address_of(conn)
            conns.append(conn)
            if claimed is not None:
                prove(conn, secret, names[claimed])
        expected: list[list[tuple[bytes, Expected]]] = [[] for _ in LAYOUT]
        for i, frame, end in steps:
            assert isinstance(frame, (Benign, Forged, Hostile))
            if i in model.closed:
                continue
            line = model.line(i, frame)
            conns[i].send(line + end)
            expected[i] += [(line, e) for e in model.expect(i, frame)]
        for i, (conn, wanted) in enumerate(zip(conns, expected, strict=True)):
            for line, want in wanted:
                got = conn.line()
                assert matches(want, got), (line, want, got)
            if i in model.closed:
                assert conn.line() == CLOSED
            else:
                assert conn.ask("GET zz k") == b"NOT FOUND"  # still open, still served
    finally:
        for conn in conns:
            conn.close()
