"""pyrokv up supervises its children: restarts, restart intensity, death with up.

Each test runs ``pyrokv up`` on a config of its own with free ports, its logs under
the test's own temporary directory (``TMPDIR``), and kills children with SIGKILL.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from netns import poll
from test_cli import free_port
from test_launch import children_of, pyrokv_args

from pyrokv import ChildError, NodeUnavailableError
from pyrokv.client import Client, list_nodes
from pyrokv.cluster import Child
from pyrokv.supervisor import Supervisor
from pyrokv.testing import Conn

pytestmark = pytest.mark.distributed

PYROKV = [sys.executable, "-m", "pyrokv"]
EXIT_LINE = "pyrokv up: node bar exited (signal SIGKILL); restarting ({} of 3 in 10 s)"


class Up:
    """``pyrokv up`` on its own config with free ports, output and stderr merged."""

    def __init__(self, tmp_path: Path) -> None:
        self.ports = {"ns": free_port(), "foo": free_port(), "bar": free_port()}
        self.ns = ("127.0.0.1", self.ports["ns"])
        self.text = {name: f"127.0.0.1:{self.ports[name]}" for name in ("foo", "bar")}
        conf = tmp_path / "up.conf"
        conf.write_text(
            f"[nameserver]\nhost = 127.0.0.1\nport = {self.ports['ns']}\n"
            "[cluster]\ntable = a..m=foo, n..z=bar\n"
            f"[node foo]\nport = 0\nlisten = {self.text['foo']}\n"
            f"[node bar]\nport = 0\nlisten = {self.text['bar']}\n"
        )
        self.up = Child(
            ["up", "--config", str(conf)], "pyrokv up", env={"TMPDIR": str(tmp_path)}
        )
        self.up.wait_for("Ctrl-C stops")
        self.logs = {
            words[-2]: Path(words[-1])  # "  node bar      /tmp/.../node-bar.log"
            for words in (line.split() for line in self.up.lines)
            if len(words) == 3 and words[0] == "node" and words[-1].endswith(".log")
        }
        self.logs["ns"] = Path(
            next(x for x in self.up.lines if x.endswith("nameserver.log")).split()[-1]
        )

    def pid(self, name: str) -> int | None:
        """The running process of node ``name`` (``ns``: the name server), if any."""
        command = ["nameserver"] if name == "ns" else ["node", name]
        for pid in children_of(self.up.proc.pid):
            try:
                if not stopped(pid) and pyrokv_args(pid)[: len(command)] == command:
                    return pid
            except OSError:
                continue
        return None

    def ready(self, name: str, times: int) -> int | None:
        """Node ``name``'s pid once its log shows its ``times``-th READY line."""
        label = "READY " if name == "ns" else f"READY {name} "
        text = self.logs[name].read_text()
        started = sum(line.startswith(label) for line in text.splitlines())
        return self.pid(name) if started >= times else None

    def kill(self, name: str, how: signal.Signals = signal.SIGKILL) -> int:
        """Send ``how`` to the child; wait until it has stopped; its pid."""
        pid = self.pid(name)
        assert pid is not None, f"no {name} running under pyrokv up"
        os.kill(pid, how)
        poll(f"{name} (pid {pid}) stopping", lambda: stopped(pid), 20)
        return pid

    def stop(self) -> None:
        self.up.stop()


@contextmanager
def running_up(tmp_path: Path) -> Iterator[Up]:
    up = Up(tmp_path)
    try:
        yield up
    finally:
        up.stop()


def stopped(pid: int) -> bool:
    """Whether process ``pid`` has ended: gone, or a zombie not reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` again (as pyrokv's do)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def back_within(since: float, limit: float, cluster: Up, foo: Conn, ready: int) -> None:
    """Within ``limit`` s of ``since``, bar has registered (its ``ready``-th READY)
    and serves its buckets through foo's text port."""
    poll("bar registered again", lambda: cluster.ready("bar", ready), limit)
    left = since + limit - time.monotonic()
    poll(
        "bar's bucket served through foo", lambda: foo.ask("CREATE zoo") == b"OK", left
    )
    assert time.monotonic() - since < limit


def test_a_killed_node_is_back_within_3_s_and_serves_its_buckets(
    tmp_path: Path,
) -> None:
    """SIGKILL of node bar under pyrokv up: one line on stderr, bar back within 3 s,
    its buckets served again through foo's text port and through Clients made
    before (via foo, and via bar itself), with no reconnection by hand; while it
    is down, its buckets are NodeUnavailableError and foo's are served."""
    with running_up(tmp_path) as cluster:
        up = cluster.up
        assert cluster.logs["bar"].parent == cluster.logs["ns"].parent
        assert cluster.logs["bar"].name == "node-bar.log"
        assert cluster.logs["bar"].parent.parent == tmp_path
        with (
            Conn(cluster.text["foo"]) as foo,
            Client(cluster.ns, via="foo") as via_foo,
            Client(cluster.ns, via="bar") as via_bar,
        ):
            assert foo.ask("CREATE apple") == b"OK"  # foo's
            assert foo.ask("CREATE zoo") == b"OK"  # bar's
            via_bar.put("zoo", "k", 1)
            first = cluster.pid("bar")
            killed = time.monotonic()
            cluster.kill("bar")
            back_within(killed, 3, cluster, foo, 2)
            assert up.wait_for("pyrokv up: ", 1) == EXIT_LINE.format(1)
            second = cluster.pid("bar")
            assert second not in (None, first)
            assert foo.ask("PUT zoo k 2") == b"OK"
            assert foo.ask("GET zoo k") == b"2|OK"
            assert via_foo.get("zoo", "k") == "2"
            assert via_bar.get("zoo", "k") == "2"
            status = subprocess.run(
                [*PYROKV, "status", "--ns", f"{cluster.ns[0]}:{cluster.ns[1]}"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert status.returncode == 0, status.stdout + status.stderr
            rows = {row.split()[0]: row.split() for row in status.stdout.splitlines()}
            assert rows["NODE"][4] == "PID"
            assert rows["bar"][3:5] == ["alive", str(second)]

            # Down, and up held back from restarting it: bar's buckets fail, foo's work.
            os.kill(up.proc.pid, signal.SIGSTOP)
            try:
                cluster.kill("bar")
                for request in ("GET zoo k", "PUT zoo k 3", "CREATE zoo"):
                    assert foo.ask(request).startswith(b"ERROR node 'bar' "), request
                assert foo.ask("PUT apple k 1") == b"OK"
                assert foo.ask("GET apple k") == b"1|OK"
                with pytest.raises(NodeUnavailableError, match="node 'bar'"):
                    via_foo.get("zoo", "k")
                via_foo.put("apple", "k", 2)
                assert via_foo.get("apple", "k") == 2
            finally:
                os.kill(up.proc.pid, signal.SIGCONT)
            back_within(time.monotonic(), 3, cluster, foo, 3)
            assert re.fullmatch(
                re.escape(EXIT_LINE).replace(r"\{\}", "[12]"),
                up.wait_for("pyrokv up: ", 1),
            )
            via_bar.put("zoo", "k", 4)
            assert foo.ask("GET zoo k") == b"4|OK"
            assert via_foo.get("zoo", "k") == 4
        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(timeout=20) == 0
        up.stop()
    kept = f"pyrokv up: the output of each process it started is kept in {cluster.logs['bar'].parent}"
    assert kept in up.lines
    log = cluster.logs["bar"].read_text()
    assert log.count("=== node bar ended: signal SIGKILL ===") == 2
    assert len(re.findall(r"^READY bar ", log, re.MULTILINE)) == 3


def test_a_node_killed_four_times_in_10_s_stops_the_cluster(tmp_path: Path) -> None:
    """Four SIGKILLs of bar within 10 s (each as soon as its process runs): three
    restarts, then pyrokv up stops every process and exits 1 saying which child
    keeps failing and where its output is (kept after the exit)."""
    with running_up(tmp_path) as cluster:
        up = cluster.up
        seen = children_of(up.proc.pid)
        killed: list[int] = []
        first = time.monotonic()
        for n in range(1, 5):
            pid = poll(
                f"bar running ({n})",
                lambda: (pid := cluster.pid("bar")) not in (None, *killed) and pid,
                20,
            )
            seen |= children_of(up.proc.pid)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        assert time.monotonic() - first < 10, "the test was too slow to kill 4 times"
        assert up.proc.wait(timeout=20) == 1
        up.stop()
    log = cluster.logs["bar"]
    said = [line for line in up.lines if line.startswith(("pyrokv up: ", "pyrokv: "))]
    assert said[:3] == [EXIT_LINE.format(n) for n in (1, 2, 3)]
    assert said[3:] == [
        "pyrokv up: node bar exited (signal SIGKILL); not restarting it: "
        "3 restarts in 10 s already",
        f"pyrokv up: the output of each process it started is kept in {log.parent}",
        "pyrokv: ChildError: node bar keeps failing: it stopped 4 times within 10 s, "
        "more than the 3 restarts allowed in 10 s, so pyrokv up stopped the cluster "
        f"(the last time: signal SIGKILL); its output is in {log}",
    ]
    assert log.read_text().count("started node bar, pid") == 4
    assert all(stopped(pid) for pid in seen)
    assert all(port_free(port) for port in cluster.ports.values())


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGUSR1], ids=["KILL", "USR1"])
def test_killing_up_stops_every_child_within_2_s(
    tmp_path: Path, how: signal.Signals
) -> None:
    """pyrokv up killed by a signal it cannot handle (SIGKILL; SIGUSR1's default
    action): each child, a restarted one too, stops within 2 s; the ports are free."""
    with running_up(tmp_path) as cluster:
        cluster.kill("bar")
        poll("bar restarted", lambda: cluster.ready("bar", 2), 20)
        kids = {pid for pid in children_of(cluster.up.proc.pid) if not stopped(pid)}
        assert len(kids) == 3
        ports = list(cluster.ports.values())
        os.kill(cluster.up.proc.pid, how)
        killed = time.monotonic()
        poll(
            "every child stopped, its ports free",
            lambda: all(map(stopped, kids)) and all(map(port_free, ports)),
            2,
        )
        assert time.monotonic() - killed < 2


def test_a_killed_name_server_is_restarted_and_the_nodes_register_again(
    tmp_path: Path,
) -> None:
    """SIGKILL of the name server: up restarts it on its port, both nodes register
    again, and routing by name works again (a new client; foo finding bar's new
    address after bar restarts too). A node that exits by itself shows its code."""
    with running_up(tmp_path) as cluster:
        up = cluster.up
        cluster.kill("ns")
        assert up.wait_for("pyrokv up: ", 20) == (
            "pyrokv up: the name server exited (signal SIGKILL); "
            "restarting (1 of 3 in 10 s)"
        )
        poll(
            "both nodes registered again",
            lambda: sorted(list_nodes(cluster.ns, 1)) == ["bar", "foo"],
            20,
        )
        with Client(cluster.ns) as kv:
            assert kv.route("zoo", "pyrokv.tasks.node_name") == "bar"
            assert kv.route("apple", "pyrokv.tasks.node_name") == "foo"
        # bar comes back at a new Pyro5 address, found through the new name server
        with Client(cluster.ns, via="foo") as via_foo:
            via_foo.create("zoo")
            cluster.kill("bar")
            assert up.wait_for("pyrokv up: ", 20) == EXIT_LINE.format(1)
            poll("bar ready again", lambda: cluster.ready("bar", 2), 20)
            poll("zoo served through foo", lambda: via_foo.create("zoo") is None, 20)
            via_foo.put("zoo", "k", "v")
            assert via_foo.get("zoo", "k") == "v"
        cluster.kill("foo", signal.SIGTERM)  # it stops cleanly, by itself: code 0
        assert up.wait_for("pyrokv up: ", 20) == (
            "pyrokv up: node foo exited (exit code 0); restarting (1 of 3 in 10 s)"
        )
        poll("foo ready again", lambda: cluster.ready("foo", 2), 20)


def script(text: str) -> list[str]:
    return [sys.executable, "-c", text]


def test_supervisor_counts_restarts_over_a_sliding_window_one_child_at_a_time(
    tmp_path: Path,
) -> None:
    """The Supervisor on plain processes, its clock in the test's hands: restarts
    older than 10 s are forgotten; a fourth within 10 s gives up with a ChildError
    naming the log; the other child is never touched; a restart that prints no
    READY in time is killed, and other restarts wait for it (one at a time)."""
    now = [0.0]
    err = io.StringIO()
    sup = Supervisor(err, start_timeout=20, clock=lambda: now[0])
    log = tmp_path / "crash.log"
    crash = Child(
        script("print('READY crash', flush=True); raise SystemExit(3)"),
        "crash",
        pyrokv=False,
        log=str(log),
    )
    steady = Child(
        script("import sys; print('READY steady', flush=True); sys.stdin.read()"),
        "steady",
        pyrokv=False,
        stdin=True,
    )
    try:
        crash.wait_for("READY crash")
        steady.wait_for("READY steady")
        sup.add("crash", crash, "READY crash")
        sup.add("steady", steady, "READY steady")

        def said() -> list[str]:
            return err.getvalue().splitlines()

        def exits(count: int) -> bool:
            sup.check()
            return len(said()) >= count

        for count, at in enumerate((0.0, 4.0, 8.0, 12.0), 1):
            now[0] = at
            poll(f"exit {count} of crash", lambda count=count: exits(count), 20)
        assert said() == [
            f"pyrokv up: crash exited (exit code 3); restarting ({n} of 3 in 10 s)"
            for n in (1, 2, 3, 3)  # the exit at 0 s is forgotten at 12 s
        ]
        now[0] = 13.0

        def given_up() -> ChildError | None:
            try:
                sup.check()
            except ChildError as exc:
                return exc
            return None

        error = poll("crash given up on", given_up, 20)
        assert str(error) == (
            "crash keeps failing: it stopped 4 times within 10 s, more than the 3 "
            "restarts allowed in 10 s, so pyrokv up stopped the cluster (the last "
            f"time: exit code 3); its output is in {log}"
        )
        assert said()[-1] == (
            "pyrokv up: crash exited (exit code 3); not restarting it: 3 restarts "
            "in 10 s already"
        )
        assert log.read_text().count("started crash, pid") == 5
        assert sup.children()[1] is steady and steady.alive()
    finally:
        sup.stop()

    # A restart that never prints READY is killed at start_timeout; meanwhile the
    # other child's restart waits for its turn.
    now[0] = 0.0
    err = io.StringIO()
    sup = Supervisor(err, start_timeout=20, clock=lambda: now[0])
    marker = tmp_path / "started-once"
    stuck = Child(
        [
            *script(
                "import os, sys; p = sys.argv[1]; again = os.path.exists(p)\n"
                "open(p, 'a').close(); print('late' if again else 'READY stuck', "
                "flush=True); sys.stdin.read() if again else sys.exit(1)"
            ),
            str(marker),
        ],
        "stuck",
        pyrokv=False,
        stdin=True,
    )
    steady = Child(
        script("import sys; print('READY steady', flush=True); sys.stdin.read()"),
        "steady",
        pyrokv=False,
        stdin=True,
    )
    try:
        stuck.wait_for("READY stuck")
        steady.wait_for("READY steady")
        sup.add("steady", steady, "READY steady")  # first: its turn comes first
        sup.add("stuck", stuck, "READY stuck")
        poll("stuck restarted", lambda: exits(1) and sup.children()[1] is not stuck, 20)
        sup.children()[1].wait_for("late")
        steady.kill()
        poll("steady's exit seen", lambda: exits(2), 20)
        assert sup.children()[0] is steady  # not restarted: stuck is starting
        now[0] = 21.0
        poll(
            "steady restarted", lambda: exits(3) and sup.children()[0] is not steady, 20
        )
        assert said() == [
            "pyrokv up: stuck exited (exit code 1); restarting (1 of 3 in 10 s)",
            "pyrokv up: steady exited (signal SIGKILL); restarting (1 of 3 in 10 s)",
            "pyrokv up: stuck did not start (no READY stuck within 20 s: killed); "
            "restarting (1 of 3 in 10 s)",
        ]
    finally:
        sup.stop()


#: A child that, on SIGTERM, says so (file ARGV[1]) and, once the other child has
#: said so too (file ARGV[2]), that it ends (ARGV[1].ended) and exits 0; 1 if the
#: other's word does not come within 10 s.
STOPS_WITH_THE_OTHER = """
import os, signal, sys, time
me, other = sys.argv[1], sys.argv[2]
def stop(*_):
    open(me, "w").close()
    deadline = time.monotonic() + 10
    while not os.path.exists(other):
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.01)
    open(me + ".ended", "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("READY", flush=True)
while True:
    signal.pause()
"""
#: A child that, on SIGTERM, exits 0 if both others have ended (files ARGV[1:]).
STOPS_LAST = """
import os, signal, sys
def stop(*_):
    sys.exit(0 if all(os.path.exists(f + ".ended") for f in sys.argv[1:]) else 1)
signal.signal(signal.SIGTERM, stop)
print("READY", flush=True)
while True:
    signal.pause()
"""


def test_supervisor_stops_the_nodes_together_and_the_first_child_last(
    tmp_path: Path,
) -> None:
    """Supervisor.stop signals every child but the first at once (each of the two
    waits, on SIGTERM, for the other's), then stops the first (the name server)
    once they have ended."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    sup = Supervisor(io.StringIO())
    first = Child([sys.executable, "-c", STOPS_LAST, a, b], "first", pyrokv=False)
    nodes = [
        Child([sys.executable, "-c", STOPS_WITH_THE_OTHER, me, other], me, pyrokv=False)
        for me, other in ((a, b), (b, a))
    ]
    try:
        for label, child in (("first", first), ("a", nodes[0]), ("b", nodes[1])):
            child.wait_for("READY")
            sup.add(label, child, "READY")
        sup.stop()
        assert [child.proc.returncode for child in nodes] == [0, 0]
        assert first.proc.returncode == 0
    finally:
        for child in (first, *nodes):
            child.kill()


#: A child that, on SIGTERM, says so (file ARGV[1]), puts the default action back
#: (as a pyrokv process does once it has unregistered) and exits 0 half a second
#: later: a second SIGTERM in that half second would kill it.
DEFAULT_AFTER_THE_FIRST = """
import signal, sys, time
def stop(*_):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    open(sys.argv[1], "w").close()
    time.sleep(0.5)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("READY", flush=True)
while True:
    signal.pause()
"""


def test_a_child_is_sent_sigterm_once_by_terminate_then_stop(tmp_path: Path) -> None:
    """Child.stop after Child.terminate (as Supervisor.stop does) waits for the
    child's clean exit and sends no second SIGTERM into it."""
    said = tmp_path / "got-sigterm"
    child = Child([*script(DEFAULT_AFTER_THE_FIRST), str(said)], "once", pyrokv=False)
    try:
        child.wait_for("READY")
        child.terminate()
        poll("the child handled SIGTERM", said.exists, 10)
        child.terminate()  # no effect either
        assert child.stop() == 0
    finally:
        child.kill()
