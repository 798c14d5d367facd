"""pyrokv up and pyrokv demo, end to end, leaving no process behind."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyrokv import RoutingLoopError
from pyrokv.client import Client
from pyrokv.cluster import spawn_node
from pyrokv.config import load_settings
from pyrokv.testing import Conn

pytestmark = pytest.mark.distributed


def children_of(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def gone(pids: set[int], timeout: float = 10) -> bool:
    """Whether every pid has exited (and been reaped) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return True
        time.sleep(0.05)
    return False


def read_until(
    proc: subprocess.Popen[str], marker: str, timeout: float = 30
) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"exited early: {lines}")
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} in {lines}")


def run_watching_children(
    *args: str, timeout: float = 60
) -> tuple[int, str, str, set[int]]:
    """Run ``pyrokv ARGS`` to its end; its exit code, output, and every child seen."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyrokv", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= children_of(proc.pid)
            time.sleep(0.02)  # sampling the children, not waiting for them
        out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err, seen


def write_config(path: Path, ns_port: int = 0) -> Path:
    path.write_text(
        f"[nameserver]\nhost = 127.0.0.1\nport = {ns_port}\n"
        "[cluster]\ntable = a..m=foo, n..z=bar\n"
        "[node foo]\nlisten = 127.0.0.1:0\n"
        "[node bar]\nlisten = 127.0.0.1:0\n"
    )
    return path


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP])
def test_up_starts_the_cluster_and_ctrl_c_stops_every_child(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """pyrokv up prints where everything runs; it serves; SIGINT (Ctrl-C) or SIGHUP
    (its terminal closed) stops it all, exit 0."""
    conf = write_config(tmp_path / "c.conf")
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "pyrokv", "up", "--config", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        lines = read_until(proc, "Ctrl-C stops")
        text = "\n".join(lines)
        ns_line = next(line for line in lines if line.startswith("  name server "))
        host, port = ns_line.split()[-1].rsplit(":", 1)
        foo = next(line for line in lines if line.startswith("  node foo "))
        listen = foo.split("text protocol on ")[1].split(";")[0]
        assert "pyrokv call hello node_name" in text
        for word, printed in (("create", "OK\n"), ("put", "OK\n"), ("get", "1\n")):
            told = next(x for x in lines if x.startswith(f"  pyrokv {word} "))
            done = subprocess.run(
                [sys.executable, "-m", *shlex.split(told)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert (done.returncode, done.stdout) == (0, printed), done.stderr
        kids = children_of(proc.pid)
        assert len(kids) == 3  # name server, foo, bar
        with Conn(listen) as c:
            assert c.ask("CREATE zoo") == b"OK"
            assert c.ask("PUT zoo k v") == b"OK"
            assert c.ask("GET zoo k") == b"v|OK"
        with Client((host, int(port))) as kv:
            assert kv.route("hello", "pyrokv.tasks.node_name") == "foo"
        proc.send_signal(stop)
        assert proc.wait(timeout=20) == 0
        assert gone(kids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def pyrokv_args(pid: int) -> list[str]:
    """A child's command line after ``python -u -m pyrokv``."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    return args[args.index("pyrokv") + 1 :]


def test_up_hands_its_children_the_config(tmp_path: Path) -> None:
    """pyrokv up starts each child with --config of a private 0600 file holding the
    resolved settings (the real name-server port; hop_limit, tables, allow, max_line
    all reach the nodes), no per-setting flags, and removes it on exit."""
    conf = tmp_path / "c.conf"
    conf.write_text(
        "[nameserver]\nport = 0\n[cluster]\nhop_limit = 1\n"
        "[node foo]\nlisten = 127.0.0.1:0\ntable = a..z=bar\nmax_line = 64\n"
        "[node bar]\ntable = a..z=baz\n"
        "[node baz]\ntable = a..z=baz\nallow = json\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "pyrokv", "up", "--config", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        lines = read_until(proc, "Ctrl-C stops")
        host, port = (
            next(x for x in lines if x.startswith("  name server "))
            .split()[-1]
            .split(":")
        )
        ns = (host, int(port))
        listen = (
            next(x for x in lines if x.startswith("  node foo "))
            .split(" on ")[1]
            .split(";")[0]
        )
        kids = children_of(proc.pid)
        commands = sorted(pyrokv_args(pid) for pid in kids)
        handed = Path(commands[0][2])
        assert commands == [
            ["nameserver", "--config", str(handed), "--up-child"],
            *(
                ["node", name, "--config", str(handed), "--up-child"]
                for name in ("bar", "baz", "foo")
            ),
        ]
        assert stat.S_IMODE(handed.stat().st_mode) == 0o600
        assert stat.S_IMODE(handed.parent.stat().st_mode) == 0o700
        assert load_settings(handed, {}).ns == ns
        with Client(ns, via="baz") as kv:  # baz's allow
            assert kv.route("x", "json.dumps", [[1]]) == "[1]"
        with Client(ns, via="bar") as kv:  # bar's table
            assert kv.route("x", "pyrokv.tasks.node_name") == "baz"
        # foo -> bar -> baz is two hops; the limit is 1
        with (
            Client(ns, via="foo") as kv,
            pytest.raises(RoutingLoopError, match="hop limit of 1"),
        ):
            kv.route("x", "pyrokv.tasks.node_name")
        with Conn(listen) as c:  # foo's max_line
            assert c.ask("PUT " + "k" * 80) == b"ERROR line too long"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert gone(kids)
        assert not handed.parent.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_node_by_hand_takes_no_text_port_from_the_file(
    tmp_path: Path, ns: tuple[str, int], unique: str
) -> None:
    """pyrokv node NAME ignores [node NAME] listen; with up's --up-child it serves it."""
    name = f"hand{unique}"
    conf = tmp_path / "c.conf"
    conf.write_text(f"[node {name}]\nlisten = 127.0.0.1:0\nmax_line = 64\n")
    by_hand = spawn_node(name, ns, f"a..z={name}", config=str(conf))
    try:
        assert not any(line.startswith("LISTEN ") for line in by_hand.lines)
    finally:
        assert by_hand.stop() == 0
    child = spawn_node(name, ns, f"a..z={name}", config=str(conf), extra=["--up-child"])
    try:
        listen = next(x for x in child.lines if x.startswith(f"LISTEN {name} "))
        with Conn(listen.split()[2]) as c:
            assert c.ask("PUT " + "k" * 80) == b"ERROR line too long"
    finally:
        assert child.stop() == 0


def test_up_with_a_port_in_use_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    """A taken name-server port: a clear message, exit 1, no child left."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        conf = write_config(tmp_path / "c.conf", taken.getsockname()[1])
        done = subprocess.run(
            [sys.executable, "-m", "pyrokv", "up", "--config", str(conf)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert (
        "the name server did not start: cannot start the name server on 127.0.0.1:"
        in done.stderr
    )
    assert "Address already in use" in done.stderr
    # the hint names what up takes: the config file, not nameserver's --port
    assert "pick another port: port under [nameserver] in the config file)" in (
        done.stderr
    )
    assert "--port" not in done.stderr
    assert "Traceback" not in done.stderr


def test_up_with_a_text_port_in_use_stops_the_rest(tmp_path: Path) -> None:
    """A node that cannot bind its text port: exit 1 naming it; the name server and
    the node started beside it (nodes start at once) are stopped."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        conf = tmp_path / "c.conf"
        conf.write_text(
            "[nameserver]\nport = 0\n[node foo]\n"
            f"listen = 127.0.0.1:{taken.getsockname()[1]}\n"
            "[node bar]\nlisten = 127.0.0.1:0\n"
        )
        code, _out, err, seen = run_watching_children("up", "--config", str(conf))
    assert code == 1
    assert "node 'foo' did not start: node 'foo' cannot serve the text protocol" in err
    assert "pick another: listen under [node foo] in the config file)" in err
    assert "--listen" not in err  # up has no such flag
    assert gone(seen)
    kept = re.search(r"the output of each process it started is kept in (\S+)", err)
    assert kept, err
    # bar was stopped by up (its log closed with how it ended), not left to die
    # with up
    assert "=== node bar ended: " in (Path(kept[1]) / "node-bar.log").read_text()
    shutil.rmtree(kept[1])


def test_demo_runs_the_scenario_and_stops_everything() -> None:
    """pyrokv demo prints the guide's scenario and exits 0 with no process left."""
    code, out, err, seen = run_watching_children("demo")
    assert code == 0, err
    assert "route('hello', node_name) -> 'foo'" in out
    assert "route('world', node_name) -> 'bar'" in out
    assert re.search(r"bar> GET zoo lion +'roar' OK +\[local\]", out)
    assert re.search(r"foo> CREATE zoo +OK +\[routed to bar\]", out)
    assert (
        "ERROR could not find entry for '1abc' in table [a..m -> foo, n..z -> bar]"
        in out
    )
    assert "NoRouteError: could not find entry for b'\\x00'" in out
    assert seen and gone(seen)
