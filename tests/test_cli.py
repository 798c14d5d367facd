"""The pyrokv command line, in-process through main(argv) and as real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyrokv.cli import main
from pyrokv.client import list_nodes
from pyrokv.cluster import Child, spawn_nameserver

GUIDE = "a..m=foo, n..z=bar"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pyrokv`` as a user would, with no config file around."""
    return subprocess.run(
        [sys.executable, "-m", "pyrokv", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """pyrokv --help names each command with a line of help."""
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("nameserver", "node", "call", "status", "config", "up", "demo"):
        assert f"    {command}" in out
    for command in ("create", "put", "get", "delete", "keys", "tasks"):
        assert f"    {command}" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing argument or a bad option is a usage error (exit 2), no traceback."""
    for argv in (
        ["call"],
        ["node"],
        ["frobnicate"],
        ["call", "b", "f", "--timeout", "x"],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["node", "a.b"],
        ["node", "foo", "--table", "a..m="],
        ["node", "foo", "--table", "a..m=foo, k..z=bar"],
        ["node", "foo", "--allow", "_evil"],
        ["node", "foo", "--port", "70000"],
        ["call", "b", "f", "--via", "no.such"],
        ["status", "--json", "--frobnicate"],
        ["get", "b"],
        ["put", "b", "k"],
        ["create"],
        ["keys", "b", "extra"],
        ["delete", "b", "k", "--via", ""],
        ["tasks", "--via", "a b"],
        ["demo", "--config", "x.conf"],
        ["up", "--listen", "127.0.0.1:1"],
    ],
    ids=" ".join,
)
def test_every_usage_error_exits_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A usage error on the command line exits 2 with the reason, whatever its kind."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: " in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "argv"),
    [
        ("[cluster]\ntable = a..m=\n", ["node", "foo"]),
        ("[node foo]\nallow = _evil\n", ["node", "foo"]),
        ("[nameserver]\nport = x\n", ["status"]),
        ("[clutser]\n", ["call", "b", "f"]),
        ("[cluster]\ntimeout = 0\n", ["get", "b", "k"]),
        ("[node x]\nlisten = nowhere\n", ["tasks"]),
    ],
)
def test_every_configuration_error_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, argv: list[str]
) -> None:
    """A bad config file exits 2 with a ConfigError naming the key, as a bad flag does."""
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    assert main([*argv, "--config", str(conf)]) == 2
    assert capsys.readouterr().err.startswith("pyrokv: ConfigError: ")


def test_bad_ns_and_timeout_values_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--ns without a port, or a non-positive timeout, is refused with the reason."""
    assert main(["status", "--ns", "localhost"]) == 2
    assert "invalid --ns 'localhost': expected HOST:PORT" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["call", "b", "f", "--timeout", "-1"])
    assert info.value.code == 2


def test_no_name_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    """call with no name server: exit 1 and a message naming the address (status: 3)."""
    assert main(["call", "hello", "node_name", "--ns", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "pyrokv: NameServerUnavailableError: cannot reach the name server at 127.0.0.1:1"
    )
    assert main(["status", "--ns", "127.0.0.1:1"]) == 3


@pytest.mark.distributed
def test_call_prints_results_and_errors(guide: tuple[str, int], unique: str) -> None:
    """pyrokv call routes through the nodes: results on stdout, errors on stderr, exit codes."""
    ns = f"{guide[0]}:{guide[1]}"
    assert run("call", "hello", "pyrokv.tasks.node_name", "--ns", ns).stdout == "foo\n"
    done = run("call", "world", "node_name", "--via", "foo", "--ns", ns)
    assert (done.returncode, done.stdout) == (0, "bar\n")
    bucket = f"s{unique}"
    assert run("call", bucket, "create", bucket, "--ns", ns).returncode == 0
    assert (
        run("call", bucket, "put", bucket, "milk", "[1, 'two']", "--ns", ns).returncode
        == 0
    )
    assert (
        run(
            "call", bucket, "put", bucket, "eggs", "not a literal", "--ns", ns
        ).returncode
        == 0
    )
    assert (
        run("call", bucket, "get", bucket, "milk", "--ns", ns, "--via", "foo").stdout
        == "[1, 'two']\n"
    )
    assert (
        run("call", bucket, "get", bucket, "eggs", "--ns", ns).stdout
        == "not a literal\n"
    )
    failed = run("call", "1abc", "node_name", "--ns", ns)
    assert failed.returncode == 1
    assert failed.stderr == (
        "pyrokv: NoRouteError: could not find entry for '1abc' in table "
        "[a..m -> foo, n..z -> bar]: start the bucket name with a byte the table "
        "covers, or add an entry for it\n"
    )
    refused = run("call", "x", "os.system", "touch /tmp/pwned", "--ns", ns)
    assert refused.returncode == 1
    assert refused.stderr.startswith("pyrokv: TaskNotAllowedError:")
    missing = run("call", "a", "get", "a-nosuch", "k", "--ns", ns, "--via", "nosuch")
    assert missing.returncode == 1
    assert "node 'nosuch' is not registered" in missing.stderr
    for done in (failed, refused, missing):
        assert "Traceback" not in done.stderr


@pytest.mark.distributed
def test_status_lists_nodes(guide: tuple[str, int]) -> None:
    """pyrokv status shows each node, its address, liveness and table."""
    done = run("status", "--ns", f"{guide[0]}:{guide[1]}")
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["NODE", "ADDRESS", "TEXT", "STATE"]
    table = [line.split() for line in lines[1:] if " is down: " not in line]
    rows = {row[0]: row for row in table}
    assert rows["foo"][3] == "alive" and " ".join(rows["foo"][8:]) == GUIDE
    assert rows["bar"][3] == "alive"
    # the session's name server may hold nodes other tests killed: exit 1 then
    assert done.returncode == (0 if all(row[3] == "alive" for row in table) else 1)


@pytest.mark.distributed
def test_nameserver_refuses_a_port_in_use() -> None:
    """A second name server on a taken port exits 1 with a clear message."""
    child, (host, port) = spawn_nameserver()
    try:
        done = run("nameserver", "--host", host, "--port", str(port))
        assert done.returncode == 1
        assert f"cannot start the name server on {host}:{port}" in done.stderr
        assert (
            "pick another port: --port, or port under [nameserver] in the config "
            "file)\n"
        ) in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        assert child.stop() == 0


@pytest.mark.distributed
def test_node_without_a_name_server_exits_1() -> None:
    """A node whose name server is not there says so and exits 1, after --ns-wait."""
    done = run("node", "foo", "--ns", "127.0.0.1:1", "--ns-wait", "0")
    assert done.returncode == 1
    assert "cannot reach the name server at 127.0.0.1:1" in done.stderr
    waited = run("node", "foo", "--ns", "127.0.0.1:1", "--ns-wait", "0.5")
    assert waited.returncode == 1
    assert "cannot reach the name server at 127.0.0.1:1" in waited.stderr
    assert "waited 0.5s for it" in waited.stderr
    assert "waiting up to 0.5s for it" in waited.stderr  # the log line
    assert "Traceback" not in waited.stderr


@pytest.mark.distributed
def test_a_node_by_hand_is_told_the_flags_it_takes(
    guide: tuple[str, int], unique: str
) -> None:
    """A node's port or text port in use: the hint names its own flags (and the
    config key where pyrokv node reads one)."""
    ns = f"{guide[0]}:{guide[1]}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        name = f"busy{unique}"
        port = run("node", name, "--ns", ns, "--port", busy, "--config", os.devnull)
        listen = run(
            "node",
            name,
            "--ns",
            ns,
            "--listen",
            f"127.0.0.1:{busy}",
            "--config",
            os.devnull,
        )
    assert port.returncode == 1
    assert port.stderr.endswith(
        f"(pick another: --port, or port under [node {name}] in the config file; "
        "0 takes any free port)\n"
    )
    assert listen.returncode == 1
    assert listen.stderr.endswith(
        "(is another process using it? pick another: --listen)\n"
    )
    wild = run("node", name, "--ns", ns, "--host", "0.0.0.0", "--config", os.devnull)
    assert wild.returncode == 2
    assert wild.stderr.endswith(
        f"(--host, or host under [node {name}] in the config file)\n"
    )


def free_port() -> int:
    """A port free just now (racy, but the test needs the name server's port first)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.distributed
def test_a_node_started_before_its_name_server_registers_once_it_is_up(
    unique: str,
) -> None:
    """pyrokv node waits for a name server that is not up yet, then registers in it."""
    port = free_port()
    name = f"early{unique}"
    node = Child(
        [
            "node",
            name,
            "--config",
            os.devnull,
            "--ns",
            f"127.0.0.1:{port}",
            "--table",
            f"a..z={name}",
            "--ns-wait",
            "60",
        ],
        f"node {name}",
    )
    nameserver = None
    try:
        while "waiting up to 60s for it" not in node.wait_for(""):
            pass  # each line the node prints, until it says it waits
        nameserver, ns = spawn_nameserver(port=port)
        node.wait_for(f"READY {name} ")
        assert name in list_nodes(ns)
        assert any(
            "the name server at" in line and "answers" in line for line in node.lines
        )
    finally:
        assert node.stop() == 0
        if nameserver is not None:
            nameserver.stop()


@pytest.mark.distributed
def test_a_waiting_node_stops_at_once_on_sigterm(unique: str) -> None:
    """SIGTERM ends a node's wait for its name server: it exits 0 without waiting on."""
    node = Child(
        ["node", f"w{unique}", "--config", os.devnull, "--ns", "127.0.0.1:1"],
        "waiting node",
    )
    try:
        while "waiting up to 30s for it" not in node.wait_for(""):
            pass
        started = time.monotonic()
        assert node.stop(timeout=20) == 0
        assert time.monotonic() - started < 5
        assert f"STOPPED w{unique}" in node.lines
    finally:
        node.kill()
