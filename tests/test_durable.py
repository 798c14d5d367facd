"""Durable buckets end to end: real node processes with a data dir, killed with
SIGKILL, stopped by signals, restarted; bad data dirs; a full disk (a small tmpfs
in a mount namespace of the node's own); ``pyrokv up`` keeping its data.

The kill tests record their seeds: a failure names the seed that reproduces it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tlstesting import wait_until

from pyrokv import Client, start_node
from pyrokv.cluster import Child, spawn_node
from pyrokv.naming import parse_address
from pyrokv.store import DB_FILE, Store
from pyrokv.table import RoutingTable
from pyrokv.testing import CLOSED, Conn

pytestmark = pytest.mark.distributed

#: Seeds of the kill points the default run tries, one per fsync mode; the slow
#: variant tries these and more.
SEEDS = {"always": 11, "everysec": 12, "no": 13}
SLOW_SEEDS = range(100, 110)
#: What ``everysec`` may lose on a process crash, in seconds of acknowledged writes
#: (it promises every write acknowledged 2 s before a crash).
EVERYSEC_WINDOW = 1.0


def node_args(
    name: str, ns: tuple[str, int], data: Path, fsync: str, *extra: str
) -> list[str]:
    """``pyrokv node NAME`` with a text port, its own table and data dir ``data``."""
    return [
        "node",
        name,
        "--config",
        os.devnull,
        "--ns",
        f"{ns[0]}:{ns[1]}",
        "--table",
        f"0..255={name}",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data),
        "--fsync",
        fsync,
        *extra,
    ]


def durable_node(
    name: str, ns: tuple[str, int], data: Path, fsync: str = "everysec"
) -> Child:
    """A node owning every bucket, with a text port and data dir ``data``."""
    return spawn_node(
        name,
        ns,
        f"0..255={name}",
        extra=["--listen", "127.0.0.1:0", "--data-dir", str(data), "--fsync", fsync],
    )


def text_port(child: Child) -> tuple[str, int]:
    """Where the node serves the text protocol."""
    address = child.listen_address()
    assert address is not None, child.output()
    return address


def run_node(*args: str) -> subprocess.CompletedProcess[str]:
    """``pyrokv ARGS`` run to its end, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "pyrokv", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


def read_values(conn: Conn, bucket: str, keys: list[str]) -> dict[str, bytes]:
    """Each key's value (b"" when missing), by pipelined GETs."""
    found: dict[str, bytes] = {}
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        conn.send(b"".join(f"GET {bucket} {k}\r\n".encode() for k in chunk))
        for key in chunk:
            value = conn.line()
            assert conn.line() == b"OK", (key, value)
            found[key] = value
    return found


@pytest.fixture(name="nodes")
def _nodes() -> Iterator[list[Child]]:
    """Node processes a test starts; each is stopped at its end."""
    children: list[Child] = []
    yield children
    for child in children:
        child.stop()


# -- kill -9 -------------------------------------------------------------------------


class Stream:
    """A writer over one text connection: PUT k{i} v{i}, and after every second
    PUT the DELETE of the one before it, 8 lines in flight; each acknowledgement's
    time is recorded."""

    DEPTH = 8

    def __init__(self) -> None:
        self.ops: list[tuple[str, int]] = []  # ("PUT" | "DELETE", key index)
        self.acked: dict[int, float] = {}  # index in ops -> when its OK arrived
        self.put_of: dict[int, int] = {}  # key index -> index of its PUT in ops
        self.delete_of: dict[int, int] = {}

    def _next(self, n: int) -> tuple[str, int]:
        if n % 3 == 2:
            return ("DELETE", n - 2)
        return ("PUT", n)

    @staticmethod
    def _line(verb: str, key: int) -> bytes:
        if verb == "PUT":
            return b"PUT crash k%d v%d\r\n" % (key, key)
        return b"DELETE crash k%d\r\n" % key

    def run(self, conn: Conn) -> None:
        """Write until the connection drops (the node was killed)."""
        n = 0
        while True:
            batch = []
            for _ in range(self.DEPTH):
                verb, key = self._next(n)
                n += 1
                index = len(self.ops)
                self.ops.append((verb, key))
                (self.put_of if verb == "PUT" else self.delete_of)[key] = index
                batch.append(index)
            lines = b"".join(self._line(*self.ops[i]) for i in batch)
            try:
                conn.send(lines)
                for index in batch:
                    reply = conn.line()
                    if reply == CLOSED:
                        return
                    assert reply == b"OK", reply
                    self.acked[index] = time.monotonic()
            except (ConnectionError, TimeoutError):
                return


def check_after_crash(
    stream: Stream, found: dict[str, bytes], killed: float, window: float, seed: int
) -> int:
    """Every write acknowledged ``window`` seconds or more before ``killed`` is
    there (a DELETE: its key gone); no key holds anything but what was written.
    Returns how many acknowledged writes were lost."""
    old = killed - window
    lost = 0
    for key, put in stream.put_of.items():
        value = found[f"k{key}"]
        assert value in (b"", b"v%d" % key), (seed, key, value)
        delete = stream.delete_of.get(key)
        if delete is not None and delete in stream.acked:
            if value:  # an acknowledged DELETE undone
                lost += 1
                assert stream.acked[delete] > old, (seed, f"DELETE k{key} undone")
        elif delete is None and put in stream.acked and not value:
            lost += 1  # an acknowledged PUT lost
            assert stream.acked[put] > old, (seed, f"PUT k{key} lost")
    return lost


def crash_and_check(
    ns: tuple[str, int], unique: str, data: Path, fsync: str, seed: int
) -> None:
    """Stream writes to a node; SIGKILL it at a random moment (``seed``); restart
    it on its data dir; check what ``fsync`` promises."""
    rng = random.Random(seed)
    name = f"crash{unique}"
    delay = rng.uniform(0.3, 1.2) if fsync == "always" else rng.uniform(1.3, 2.2)
    node = durable_node(name, ns, data, fsync)
    stream = Stream()
    killed: list[float] = []

    def kill() -> None:
        killed.append(time.monotonic())
        node.kill()

    try:
        with Conn(text_port(node), timeout=10) as conn:
            assert conn.ask("CREATE crash") == b"OK"
            timer = threading.Timer(delay, kill)
            timer.start()
            stream.run(conn)
            timer.join()
    finally:
        node.kill()
    assert stream.acked, f"seed {seed}: nothing was acknowledged"
    again = durable_node(name, ns, data, fsync)
    try:
        with Conn(text_port(again), timeout=30) as conn:
            keys = [f"k{key}" for key in stream.put_of]
            found = read_values(conn, "crash", keys)
    finally:
        again.stop()
    window = 0.0 if fsync == "always" else EVERYSEC_WINDOW
    lost = check_after_crash(stream, found, killed[0], window, seed)
    print(
        f"fsync {fsync}, seed {seed}: {len(stream.acked)} writes acknowledged in "
        f"{delay:.2f}s, {lost} of them lost by kill -9"
    )
    if fsync == "always":
        assert lost == 0


@pytest.mark.parametrize("fsync", sorted(SEEDS))
def test_kill_9_loses_no_more_than_the_fsync_mode_allows(
    ns: tuple[str, int], unique: str, tmp_path: Path, fsync: str
) -> None:
    """SIGKILL while a writer streams PUTs and DELETEs: with always every
    acknowledged write is there after a restart (and every acknowledged DELETE
    gone); with everysec and no (a process crash: the OS keeps what was written),
    at most the last second is missing, nothing older."""
    crash_and_check(ns, unique, tmp_path / "data", fsync, SEEDS[fsync])


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
@pytest.mark.parametrize("fsync", sorted(SEEDS))
def test_kill_9_at_many_random_moments(
    ns: tuple[str, int], unique: str, tmp_path: Path, fsync: str, seed: int
) -> None:
    """The kill -9 test at ten more recorded kill points per mode."""
    crash_and_check(ns, unique, tmp_path / "data", fsync, seed)


# -- graceful stops, types, status ---------------------------------------------------


@pytest.mark.parametrize(
    ("fsync", "stop"),
    [("everysec", signal.SIGTERM), ("no", signal.SIGINT), ("everysec", signal.SIGHUP)],
)
def test_a_graceful_stop_commits_every_pending_write(
    ns: tuple[str, int],
    unique: str,
    tmp_path: Path,
    fsync: str,
    stop: signal.Signals,
) -> None:
    """5,000 PUTs acknowledged as fast as they come, then at once a stop signal:
    every one of them is there after a restart."""
    name = f"stop{unique}"
    data = tmp_path / "data"
    node = durable_node(name, ns, data, fsync)
    try:
        with Conn(text_port(node), timeout=30) as conn:
            lines = b"CREATE b\r\n" + b"".join(
                b"PUT b k%d v%d\r\n" % (i, i) for i in range(5000)
            )
            conn.expect(lines, b"OK\r\n" * 5001)
        node.proc.send_signal(stop)
        assert node.proc.wait(timeout=30) == 0
    finally:
        node.stop()
    again = durable_node(name, ns, data, fsync)
    try:
        with Conn(text_port(again), timeout=30) as conn:
            found = read_values(conn, "b", [f"k{i}" for i in range(5000)])
    finally:
        again.stop()
    assert found == {f"k{i}": b"v%d" % i for i in range(5000)}


def test_types_survive_a_restart_and_status_shows_the_keys_loaded(
    ns: tuple[str, int], unique: str, tmp_path: Path
) -> None:
    """An int put by the Python client reads back as an int after a restart, a
    tuple key as a tuple; a text value as the same bytes; READY comes after the
    load, and pyrokv status counts the keys loaded."""
    name = f"types{unique}"
    bucket = f"t{unique}"
    data = tmp_path / "data"
    node = durable_node(name, ns, data)
    try:
        with Client(ns, via=name) as client:
            client.create(bucket)
            client.put(bucket, "n", 42)
            client.put(bucket, (1, "x"), [1.5, None, True])
        with Conn(text_port(node)) as conn:
            assert conn.ask(b"PUT " + bucket.encode() + b" raw \xff\xfe-\x01") == b"OK"
    finally:
        node.stop()
    again = durable_node(name, ns, data)
    try:
        with Client(ns, via=name) as client:
            assert client.get(bucket, "n") == 42
            assert type(client.get(bucket, "n")) is int
            assert client.get(bucket, (1, "x")) == [1.5, None, True]
            assert set(client.keys(bucket)) == {"n", (1, "x"), "raw"}
        with Conn(text_port(again)) as conn:
            assert conn.exchange(f"GET {bucket} raw") == [b"\xff\xfe-\x01", b"OK"]
            assert conn.exchange(f"GET {bucket} n") == [b"42", b"OK"]
        done = run_node("status", "--json", "--ns", f"{ns[0]}:{ns[1]}")
        rows = {row["name"]: row for row in json.loads(done.stdout)}
        assert rows[name]["keys"] == 3
        assert rows[name]["buckets"] == 1
    finally:
        again.stop()


def info(conn: Conn) -> dict[str, str]:
    """The node's INFO fields."""
    conn.send(b"INFO\r\n")
    fields = {}
    while (line := conn.line()) != b"OK":
        name, _, value = line.decode().partition(" ")
        fields[name] = value
    return fields


def test_an_idle_node_folds_its_log_and_a_restart_after_a_kill_replays_it(
    ns: tuple[str, int], unique: str, tmp_path: Path
) -> None:
    """INFO counts the writes in the log; a second after the last write the node
    folds them into its tables (log_writes 0); writes after that stay in the log,
    and a node killed then comes back with both parts, deletes included."""
    name = f"fold{unique}"
    data = tmp_path / "data"
    node = durable_node(name, ns, data, "always")
    try:
        with Conn(text_port(node), timeout=30) as conn:
            lines = b"CREATE b\r\n" + b"".join(
                b"PUT b k%d v%d\r\n" % (i, i) for i in range(100)
            )
            conn.expect(lines, b"OK\r\n" * 101)
            assert int(info(conn)["log_writes"]) > 0
            wait_until(lambda: info(conn)["log_writes"] == "0", "the fold", 20)
            assert int(info(conn)["folds"]) >= 1
            conn.expect(b"DELETE b k0\r\nPUT b k1 new\r\n", b"OK\r\n" * 2)
            assert info(conn)["log_writes"] == "2"
    finally:
        node.kill()
    again = durable_node(name, ns, data, "always")
    try:
        with Conn(text_port(again), timeout=30) as conn:
            found = read_values(conn, "b", [f"k{i}" for i in range(100)])
            assert info(conn)["log_writes"] == "2"
    finally:
        again.stop()
    assert found == {"k0": b"", "k1": b"new"} | {
        f"k{i}": b"v%d" % i for i in range(2, 100)
    }


# -- bad data dirs -------------------------------------------------------------------


def test_a_second_node_on_a_data_dir_in_use_refuses_to_start(
    ns: tuple[str, int], unique: str, tmp_path: Path, nodes: list[Child]
) -> None:
    """The second node exits 1 naming the dir and the pid that holds it."""
    data = tmp_path / "data"
    first = durable_node(f"one{unique}", ns, data)
    nodes.append(first)
    done = run_node(*node_args(f"two{unique}", ns, data, "everysec"))
    assert done.returncode == 1
    assert (
        f"pyrokv: DataDirInUseError: the data dir {data} is in use by process "
        f"{first.proc.pid}" in done.stderr
    )


def test_a_corrupt_database_stops_the_start_and_is_left_as_is(
    ns: tuple[str, int], unique: str, tmp_path: Path
) -> None:
    """Garbage in the database file: exit 1 with a message naming it; the file is
    unchanged; the node never registered."""
    data = tmp_path / "data"
    data.mkdir()
    db = data / DB_FILE
    garbage = b"\x13garbage, not SQLite " * 300
    db.write_bytes(garbage)
    done = run_node(*node_args(f"bad{unique}", ns, data, "always"))
    assert done.returncode == 1
    assert f"pyrokv: CorruptDataError: {db} cannot be read" in done.stderr
    assert "READY" not in done.stdout
    assert db.read_bytes() == garbage


def test_a_database_of_a_newer_format_stops_the_start(
    ns: tuple[str, int], unique: str, tmp_path: Path
) -> None:
    """A database a newer pyrokv wrote: exit 1, naming the file and both formats."""
    data = tmp_path / "data"
    Store.open(str(data)).close()
    with sqlite3.connect(data / DB_FILE) as conn:
        conn.execute("PRAGMA user_version=99")
    conn.close()
    done = run_node(*node_args(f"new{unique}", ns, data, "everysec"))
    assert done.returncode == 1
    assert f"pyrokv: DataFormatError: {data / DB_FILE} has format 99" in done.stderr


def test_a_data_dir_that_cannot_be_created_stops_the_start(
    ns: tuple[str, int], unique: str, tmp_path: Path
) -> None:
    """A data dir under a regular file: exit 1, naming it."""
    (tmp_path / "file").write_text("")
    data = tmp_path / "file" / "data"
    done = run_node(*node_args(f"nodir{unique}", ns, data, "everysec"))
    assert done.returncode == 1
    assert f"pyrokv: DataDirError: cannot create the data dir {data}" in done.stderr


# -- a disk of its own: read-only, full ---------------------------------------------


def in_own_tmpfs(mount: Path, setup: str) -> list[str]:
    """A command prefix: run in a mount namespace of its own where ``mount`` is a
    small fresh tmpfs, after the shell commands ``setup`` ($0 is the mount)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root for a tmpfs of the node's own")
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"unshare -m is not allowed here: {probe.stderr.decode()}")
    mount.mkdir()
    script = f'mount -t tmpfs -o size=16m tmpfs "$0" && {setup} && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(mount)]


def test_a_data_dir_that_cannot_be_written_stops_the_start(
    ns: tuple[str, int], unique: str, tmp_path: Path
) -> None:
    """An existing data dir on a file system mounted read-only: exit 1, naming it."""
    mount = tmp_path / "disk"
    prefix = in_own_tmpfs(mount, 'mkdir "$0/data" && mount -o remount,ro "$0"')
    data = mount / "data"
    name = f"ro{unique}"
    child = Child(node_args(name, ns, data, "everysec"), name, prefix=prefix)
    assert child.proc.wait(timeout=60) == 1
    child.stop()
    assert f"DataDirError: cannot write in the data dir {data}: Read-only" in (
        child.output()
    )


def full_disk_node(
    ns: tuple[str, int], name: str, tmp_path: Path, fsync: str
) -> tuple[Child, Path]:
    """A node whose data dir is on a 16 MiB tmpfs of its own; a file filling all but
    about 100 KiB of it, which the test removes (seen from outside through
    /proc/PID/root)."""
    mount = tmp_path / "disk"
    prefix = in_own_tmpfs(mount, "true")
    child = Child(node_args(name, ns, mount / "data", fsync), name, prefix=prefix)
    child.wait_for(f"READY {name} ")
    inside = Path(f"/proc/{child.proc.pid}/root") / str(mount).lstrip("/")
    free = shutil.disk_usage(inside).free
    filler = inside / "filler"
    with open(filler, "wb") as file:
        file.write(b"\0" * (free - 100 * 1024))
    return child, filler


def put_until_refused(conn: Conn, bucket: str) -> tuple[int, bytes]:
    """PUT 8 KiB values until a reply is not OK: how many were OK, and that reply."""
    value = b"x" * 8192
    for i in range(1000):
        reply = conn.ask(b"PUT %s k%d %s" % (bucket.encode(), i, value))
        if reply != b"OK":
            return i, reply
    raise AssertionError("the disk never filled up")


def test_always_a_write_on_a_full_disk_is_refused_and_not_applied(
    ns: tuple[str, int], unique: str, tmp_path: Path, nodes: list[Child]
) -> None:
    """fsync always on a full disk: ERROR disk, the write not applied; other
    connections are served and reads work; freed space takes writes again."""
    name = f"full{unique}"
    node, filler = full_disk_node(ns, name, tmp_path, "always")
    nodes.append(node)
    with Conn(text_port(node)) as conn, Conn(text_port(node)) as other:
        assert conn.ask("CREATE b") == b"OK"
        ok, reply = put_until_refused(conn, "b")
        assert ok > 0
        assert reply.startswith(b"ERROR disk: database or disk is full"), reply
        assert conn.exchange(f"GET b k{ok}") == [b"", b"OK"]  # not applied
        assert conn.exchange("GET b k0") == [b"x" * 8192, b"OK"]
        assert other.ask("PING") == b"PONG"
        assert other.ask(b"PUT b other " + b"y" * 8192).startswith(b"ERROR disk: ")
        assert other.exchange("GET b other") == [b"", b"OK"]
        filler.unlink()
        assert conn.ask(f"PUT b k{ok} again") == b"OK"
        assert conn.exchange(f"GET b k{ok}") == [b"again", b"OK"]


def test_everysec_a_full_disk_refuses_writes_until_a_commit_succeeds(
    ns: tuple[str, int], unique: str, tmp_path: Path, nodes: list[Child]
) -> None:
    """fsync everysec on a full disk: once a commit fails, writes get ERROR disk
    while reads go on, and the log says how many acknowledged writes may be lost;
    once space is freed the held-back writes are committed and writes go on."""
    name = f"fulls{unique}"
    node, filler = full_disk_node(ns, name, tmp_path, "everysec")
    nodes.append(node)
    with Conn(text_port(node)) as conn:
        assert conn.ask("CREATE b") == b"OK"
        ok, reply = put_until_refused(conn, "b")
        assert reply.startswith(b"ERROR disk: database or disk is full"), reply
        assert conn.exchange(f"GET b k{ok - 1}") == [b"x" * 8192, b"OK"]
        assert conn.ask("PUT b small v").startswith(b"ERROR disk: ")
        wait_until(
            lambda: (
                "acknowledged writes are not on disk and may be lost" in node.output()
            ),
            "the log line",
        )
        filler.unlink()
        # (every write acknowledged before the failure is committed first)
        wait_until(
            lambda: conn.ask("PUT b small v") == b"OK", "writes to be taken again", 10
        )
        wait_until(lambda: "succeed again" in node.output(), "the log line")


# -- the writes of fsync always do not stop the loop ----------------------------------


def test_always_a_connection_waiting_for_the_disk_holds_only_itself(
    ns: tuple[str, int], unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a PUT's commit is held back, its connection's next line waits (replies
    stay in order) and another connection is answered at once."""
    from pyrokv import store as store_module

    gate = threading.Event()
    commit = store_module.Store._commit

    def held(self: Store, ops: list[tuple[Any, ...]]) -> Any:
        gate.wait(30)
        return commit(self, ops)

    name = f"gate{unique}"
    handle = start_node(
        name,
        RoutingTable.parse(f"0..255={name}"),
        ns,
        listen=("127.0.0.1", 0),
        data_dir=str(tmp_path / "data"),
        fsync="always",
    )
    try:
        assert handle.text is not None
        address = handle.text.address
        with Conn(address) as conn, Conn(address) as other:
            assert conn.ask("CREATE b") == b"OK"
            assert conn.ask("PUT b k old") == b"OK"
            monkeypatch.setattr(store_module.Store, "_commit", held)
            conn.send(b"PUT b k new\r\nGET b k\r\n")
            assert other.exchange("GET b k") == [b"old", b"OK"]
            assert other.ask("PING") == b"PONG"
            conn.timeout = 0.3
            with pytest.raises(TimeoutError):
                conn.line()  # nothing: the PUT waits, and the GET after it
            conn.timeout = 10
            gate.set()
            assert [conn.line(), conn.line(), conn.line()] == [b"OK", b"new", b"OK"]
    finally:
        gate.set()
        handle.stop()


# -- pyrokv up ----------------------------------------------------------------------


def up_until_ready(conf: Path, cwd: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``pyrokv up --config CONF``; return it and foo's text address."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "pyrokv", "up", "--config", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"pyrokv up exited early: {lines}"
        lines.append(line)
        if "Ctrl-C stops" in line:
            foo = next(x for x in lines if "node foo" in x)
            return proc, foo.split("text protocol on ")[1].split(";")[0]
    raise AssertionError(f"pyrokv up did not come up: {lines}")


def test_up_ctrl_c_up_keeps_the_data_where_the_config_says(tmp_path: Path) -> None:
    """data_dir relative to the config file: pyrokv up, PUT, Ctrl-C, pyrokv up
    again from elsewhere, GET: the value is there, in a dir beside the config."""
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    conf = conf_dir / "c.conf"
    conf.write_text(
        "[nameserver]\nport = 0\n[cluster]\ntable = a..m=foo, n..z=bar\n"
        "[node foo]\nlisten = 127.0.0.1:0\ndata_dir = data/foo\n"
        "[node bar]\nlisten = 127.0.0.1:0\ndata_dir = data/bar\nfsync = always\n"
    )
    for run, cwd in enumerate((tmp_path, Path("/"))):
        proc, foo = up_until_ready(conf, cwd)
        try:
            with Conn(parse_address(foo)) as conn:
                if run == 0:
                    assert conn.ask("CREATE shopping") == b"OK"
                    assert conn.ask("PUT shopping milk 1") == b"OK"
                    assert conn.ask("CREATE zoo") == b"OK"  # bar's
                    assert conn.ask("PUT zoo lion roar") == b"OK"
                else:
                    assert conn.ask("GET shopping milk") == b"1|OK"
                    assert conn.ask("GET zoo lion") == b"roar|OK"
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
    assert (conf_dir / "data" / "foo" / DB_FILE).is_file()
    assert (conf_dir / "data" / "bar" / DB_FILE).is_file()
    assert not (tmp_path / "data").exists()


def test_a_node_keeps_its_meta_values_in_its_data_dir(
    ns: tuple[str, int], unique: str, tmp_path: Path
) -> None:
    """NodeHandle.meta_set is on disk when it returns and meta_get reads it after a
    restart; INFO shows the store's mode and counts. Without a data dir the values
    live in memory."""
    name = f"meta{unique}"
    table = RoutingTable.parse(f"0..255={name}")
    data = str(tmp_path / "data")
    with start_node(name, table, ns, data_dir=data, fsync="no") as handle:
        handle.meta_set("table_version", 7)
        handle.meta_set("table", table.spec())
        info = handle.runner.info()
        assert (info["fsync"], info["data_dir"]) == ("no", data)
        assert info["commits"] >= 1
        assert info["writes_committed"] >= 2
    with start_node(name, table, ns, data_dir=data) as handle:
        assert handle.meta_get("table_version") == 7
        assert handle.meta_get("table") == table.spec()
    with start_node(name, table, ns) as handle:
        assert handle.store is None
        assert handle.meta_get("table_version", 0) == 0
        handle.meta_set("table_version", 1)
        assert handle.meta_get("table_version") == 1
        assert "fsync" not in handle.runner.info()
