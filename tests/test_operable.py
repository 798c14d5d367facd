"""Issue 13 ("Operable and pleasant"), sentence by sentence, where the tests of each
part left a gap: configuration errors told at once (exit 2) wherever they are
given, the name server and ``pyrokv up`` logging their start and stop, ``up``
showing its children's logs, a full text port logged, hints naming where a
setting came from, and the project's URLs.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import pyrokv.server as server_module
from pyrokv import ConfigError, RoutingTable
from pyrokv.cluster import spawn_nameserver
from pyrokv.config import load_settings
from pyrokv.logs import RateLimited
from pyrokv.metrics import check_available
from pyrokv.registry import Registry
from pyrokv.router import Router
from pyrokv.server import TextServer
from pyrokv.testing import Conn
from pyrokv.tls import TLSSettings

REPOSITORY = "https://github.com/pyrokv/pyrokv"


def free_port() -> int:
    """A port nothing listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def run_pyrokv(
    *args: str, timeout: float = 20, code: str | None = None
) -> tuple[int, str]:
    """Run ``pyrokv ARGS`` (or ``python -c CODE ARGS``) with no PYROKV_* variable;
    its exit code and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYROKV_")}
    command = ["-c", code] if code is not None else ["-m", "pyrokv"]
    done = subprocess.run(
        [sys.executable, *command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return done.returncode, done.stderr


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--cluster-secret-file", "no-such-secret"], "cluster secret file"),
        (["--password-file", "no-such-password"], "password file"),
        (["--listen-tls"], "--listen-tls"),
        (["--metrics", "127.0.0.1:0"], "pip install 'pyrokv[metrics]'"),
    ],
)
def test_a_node_tells_a_configuration_error_at_once_while_its_name_server_is_away(
    args: list[str], says: str
) -> None:
    """A bad setting is a ConfigError (exit 2) at once, not after --ns-wait's 30 s
    of waiting for a name server that is not there (and then exit 1)."""
    code = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "from pyrokv.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    started = time.monotonic()
    rc, err = run_pyrokv(
        "node",
        "early",
        "--config",
        os.devnull,
        "--ns",
        f"127.0.0.1:{free_port()}",
        *args,
        code=code,
    )
    assert (rc, time.monotonic() - started < 15) == (2, True), err
    assert "pyrokv: ConfigError: " in err and says in err, err
    assert "waiting" not in err, err


def test_metrics_without_the_library_names_the_flag_the_key_and_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Metrics asked for in the config file are not only --metrics: the error names
    both, and the extra that brings the library."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigError) as caught:
        check_available()
    text = str(caught.value)
    assert "--metrics" in text and "metrics under [node NAME]" in text, text
    assert "pip install 'pyrokv[metrics]'" in text, text


def test_some_tls_options_without_the_rest_names_the_flags_and_the_keys() -> None:
    """TLS half given (on the command line or in the file) names what is missing,
    as a flag and as a key of the config file."""
    with pytest.raises(ConfigError) as caught:
        TLSSettings.from_options("cert.pem", None, None)
    text = str(caught.value)
    assert "missing --tls-key, --tls-ca" in text and "under [tls]" in text, text


def test_a_missing_config_file_named_by_the_environment_says_so(
    tmp_path: Path,
) -> None:
    """A file named by PYROKV_CONFIG that is not there names the variable, which may
    have been set long before the command failed."""
    missing = str(tmp_path / "gone.conf")
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"PYROKV_CONFIG": missing})
    assert missing in str(caught.value) and "PYROKV_CONFIG" in str(caught.value)
    with pytest.raises(ConfigError) as given:
        load_settings(missing, environ={})
    assert "PYROKV_CONFIG" not in str(given.value)


@pytest.mark.distributed
def test_the_name_server_logs_its_start_and_stop() -> None:
    """pyrokv nameserver logs where it serves, and that it stopped, as a node does:
    time, level, who, logger."""
    child, (host, port) = spawn_nameserver()
    child.stop()
    started = [x for x in child.lines if "name server serving at" in x]
    assert started and started[0].split()[1:3] == ["INFO", "nameserver"], child.lines
    assert started[0].endswith(f"{host}:{port}"), started
    assert any(
        "INFO nameserver pyrokv.nameserver: name server stopped" in x
        for x in child.lines
    ), child.lines


def write_up_config(path: Path, node: str = "") -> Path:
    """A config for pyrokv up on free ports; ``node`` adds to [node foo]."""
    path.write_text(
        "[nameserver]\nhost = 127.0.0.1\nport = 0\n"
        "[cluster]\ntable = a..m=foo, n..z=bar\n"
        f"[node foo]\nlisten = 127.0.0.1:0\n{node}"
        "[node bar]\nlisten = 127.0.0.1:0\n"
    )
    return path


@pytest.mark.distributed
def test_up_logs_its_children_and_itself_on_stderr(tmp_path: Path) -> None:
    """pyrokv up shows the log lines of the processes it started on its stderr (each
    naming its process), logs their start and its stop, and keeps the lines meant
    for itself (READY, LISTEN) off it; it says where a node's metrics are."""
    conf = write_up_config(tmp_path / "c.conf", "metrics = 127.0.0.1:0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYROKV_")}
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "pyrokv", "up", "--config", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        out = []
        while not any("Ctrl-C stops" in x for x in out):
            assert time.monotonic() < deadline, out
            line = proc.stdout.readline()
            assert line, out  # exited early
            out.append(line)
        foo = next(x for x in out if x.startswith("  node foo "))
        scrape = foo.split("; metrics at ")[1].strip()
        with urllib.request.urlopen(scrape, timeout=10) as got:
            assert b"pyrokv_keys" in got.read()
        proc.send_signal(signal.SIGINT)
        _rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = err.splitlines()
    for who, what in (
        ("nameserver", "pyrokv.nameserver: name server serving at"),
        ("foo", "pyrokv.node: node 'foo' serving Pyro5"),
        ("bar", "pyrokv.node: node 'bar' serving Pyro5"),
        ("up", "pyrokv.up: started the name server at"),
        ("up", "pyrokv.up: started node 'foo'"),
        ("foo", "pyrokv.node: node 'foo' stopping"),
        ("up", "pyrokv.up: stopped every process of the cluster"),
    ):
        assert any(f"INFO {who} {what}" in x for x in lines), (who, what, err)
    assert not any(x.startswith(("READY ", "LISTEN ")) for x in lines), err


@pytest.mark.distributed
def test_up_exits_2_when_a_child_finds_a_configuration_error(tmp_path: Path) -> None:
    """A setting of the config file that only the node can judge (here a TLS text
    port without TLS) stops pyrokv up with the node's ConfigError, exit 2, as every
    configuration error; nothing is left running."""
    conf = write_up_config(tmp_path / "c.conf", "listen_tls = true\n")
    rc, err = run_pyrokv("up", "--config", str(conf), timeout=60)
    assert rc == 2, err
    assert "pyrokv: ConfigError: node 'foo' did not start: " in err, err
    assert "listen_tls" in err, err


def test_a_full_text_port_logs_its_refusals_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overload is logged: connections past the limit are refused with a warning
    that says why, once however many are refused meanwhile."""
    monkeypatch.setattr(
        server_module, "_overloaded", RateLimited(logging.getLogger("pyrokv.server"))
    )
    registry = Registry()
    router = Router(
        RoutingTable.parse("a..z=solo"),
        "solo",
        local=lambda *args: None,
        ns=("127.0.0.1", free_port()),
    )
    caplog.set_level(logging.WARNING, logger="pyrokv.server")
    with (
        TextServer(router, registry=registry, max_connections=1) as server,
        Conn(server.address) as first,
    ):
        assert first.ask("CREATE apple") == b"OK"
        for _ in range(5):
            with Conn(server.address) as extra:
                assert extra.line() == b"ERROR too many connections, try again later"
        assert first.ask("CREATE apple") == b"OK"
    refused = [r.getMessage() for r in caplog.records if "too many" in r.getMessage()]
    assert refused == [
        "refused a text connection: the node serves its limit of 1 (too many "
        "connections)"
    ]
    router.close()


def test_the_package_names_its_project_urls() -> None:
    """The installed metadata carries the project's addresses (pyproject's
    [project.urls]), and its licence file."""
    meta = importlib.metadata.metadata("pyrokv")
    urls = dict(x.split(", ", 1) for x in meta.get_all("Project-URL") or [])
    assert set(urls) >= {"Homepage", "Documentation", "Source", "Issues"}, urls
    assert all(url.startswith(REPOSITORY) for url in urls.values()), urls
    assert "LICENSE" in (meta.get_all("License-File") or []), meta.get_all(
        "License-File"
    )


@pytest.mark.slow
def test_the_wheel_holds_py_typed_the_licence_and_the_urls(tmp_path: Path) -> None:
    """A wheel built from this tree ships py.typed and LICENSE, and names the
    project's URLs (a fresh user installs this, not the tree)."""
    import zipfile

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("pyrokv-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    assert "pyrokv/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    for key in ("Homepage", "Documentation", "Source", "Issues"):
        assert f"Project-URL: {key}, {REPOSITORY}" in text, text


def test_the_architecture_names_every_module() -> None:
    """docs/architecture.md's module table holds a row for every module of pyrokv/
    (the ones issue 13 added among them)."""
    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "architecture.md").read_text()
    modules = sorted(p.name for p in (root / "pyrokv").glob("*.py"))
    missing = [
        m for m in modules if not m.startswith("__") and f"| `{m}` |" not in text
    ]
    assert missing == [], missing
