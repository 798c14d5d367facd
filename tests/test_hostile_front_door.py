"""The front door can be locked: a password (AUTH) and TLS on the text port."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from pyrokv.cluster import Child, spawn_node
from pyrokv.testing import CLOSED, Conn

pytestmark = pytest.mark.distributed

PASSWORD = "s3cret-Word"


@pytest.fixture(name="password_file")
def _password_file(tmp_path: Path) -> str:
    path = tmp_path / "text.password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture(name="locked")
def _locked(
    ns: tuple[str, int], unique: str, password_file: str
) -> Iterator[tuple[Child, str]]:
    """A node whose text port needs the password; yields it and its text address."""
    name = f"lock{unique}"
    child = spawn_node(
        name,
        ns,
        f"0..255={name}",
        extra=["--listen", "127.0.0.1:0", "--password-file", password_file],
    )
    try:
        address = child.listen_address()
        assert address is not None
        yield child, f"{address[0]}:{address[1]}"
    finally:
        child.stop()


def test_before_auth_only_auth_and_quit_are_answered(locked: tuple[Child, str]) -> None:
    """Without AUTH every line is ERROR NOAUTH; QUIT is OK and closes the connection."""
    _, address = locked
    with Conn(address) as c:
        for line in ("CREATE apples", "GET apples k", "FWD 1 x GET a k", "FOO", ""):
            assert c.ask(line) == b"ERROR NOAUTH authentication required", line
        assert c.ask("QUIT") == b"OK"
        assert c.line() == CLOSED


def test_the_right_password_lets_the_connection_in(locked: tuple[Child, str]) -> None:
    """AUTH with the password is OK, and the connection then runs the verbs."""
    _, address = locked
    with Conn(address) as c:
        assert c.ask(f"AUTH {PASSWORD}") == b"OK"
        assert c.ask("CREATE apples") == b"OK"
        assert c.ask("PUT apples k v") == b"OK"
        assert c.ask("GET apples k") == b"v|OK"
    with Conn(address) as other:  # each connection authenticates on its own
        assert other.ask("GET apples k") == b"ERROR NOAUTH authentication required"


def test_a_wrong_password_is_answered_late_while_others_are_served(
    locked: tuple[Child, str],
) -> None:
    """A wrong AUTH gets ERROR invalid password after 0.2 to 1 s; meanwhile another
    connection is answered at once, and the guesser's next lines wait their turn."""
    _, address = locked
    with Conn(address) as good:
        assert good.ask(f"AUTH {PASSWORD}") == b"OK"
        assert good.ask("CREATE apples") == b"OK"
        with Conn(address) as guesser:
            started = time.monotonic()
            guesser.send(b"AUTH wrong\r\nGET apples k\r\n")
            served = []
            for _ in range(20):
                asked = time.monotonic()
                assert good.ask("GET apples k") == b"|OK"
                served.append(time.monotonic() - asked)
            assert guesser.line() == b"ERROR invalid password"
            waited = time.monotonic() - started
            assert guesser.line() == b"ERROR NOAUTH authentication required"
        assert 0.2 <= waited <= 1.5, waited
        assert max(served) < 0.1, served


def test_the_password_from_the_environment_and_never_shown(
    ns: tuple[str, int], unique: str, password_file: str
) -> None:
    """PYROKV_PASSWORD sets the password; neither it nor the file's password is
    printed by the node or by pyrokv config."""
    name = f"envpw{unique}"
    child = Child(
        [
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
        ],
        f"node {name}",
        env={"PYROKV_PASSWORD": "from-env-1"},
    )
    try:
        child.wait_for(f"READY {name} ")
        address = child.listen_address()
        assert address is not None
        with Conn(address) as c:
            assert c.ask(f"AUTH {PASSWORD}") == b"ERROR invalid password"
            assert c.ask("AUTH from-env-1") == b"OK"
            assert c.ask("CREATE apples") == b"OK"
    finally:
        child.stop()
    assert "from-env-1" not in child.output()
    config = Path(password_file).parent / "c.conf"
    config.write_text(f"[node x]\npassword_file = {password_file}\n")
    shown = subprocess.run(
        [sys.executable, "-m", "pyrokv", "config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYROKV_PASSWORD": "from-env-1"},
    )
    assert shown.returncode == 0, shown.stderr
    assert f"password_file = {password_file}" in shown.stdout
    assert PASSWORD not in shown.stdout + shown.stderr
    assert "from-env-1" not in shown.stdout + shown.stderr


@pytest.fixture(name="pki", scope="module")
def _pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and certificates for the node (127.0.0.1) and a client, as files."""
    where = tmp_path_factory.mktemp("frontpki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    files = {"ca": str(where / "ca.pem")}
    for name in ("node", "client"):
        leaf = ca.issue_cert("127.0.0.1", f"{name}.pyrokv")
        leaf.cert_chain_pems[0].write_to_path(str(where / f"{name}.pem"))
        leaf.private_key_pem.write_to_path(str(where / f"{name}.key"))
        files[name] = str(where / f"{name}.pem")
        files[f"{name}_key"] = str(where / f"{name}.key")
    return files


def _tls_node(
    ns_with_tls: tuple[str, int], name: str, pki: dict[str, str], *more: str
) -> Child:
    return spawn_node(
        name,
        ns_with_tls,
        f"0..255={name}",
        extra=[
            "--tls-cert",
            pki["node"],
            "--tls-key",
            pki["node_key"],
            "--tls-ca",
            pki["ca"],
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            *more,
        ],
    )


@pytest.fixture(name="tls_ns", scope="module")
def _tls_ns(pki: dict[str, str]) -> Iterator[tuple[str, int]]:
    from pyrokv.cluster import spawn_nameserver

    child, address = spawn_nameserver(
        extra=[
            "--tls-cert",
            pki["node"],
            "--tls-key",
            pki["node_key"],
            "--tls-ca",
            pki["ca"],
        ]
    )
    try:
        yield address
    finally:
        child.stop()


def _client_context(pki: dict[str, str], with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki["ca"])
    if with_cert:
        context.load_cert_chain(pki["client"], pki["client_key"])
    return context


def test_the_text_port_speaks_tls(
    tls_ns: tuple[str, int], pki: dict[str, str], unique: str
) -> None:
    """--listen-tls: a TLS client that trusts the CA is served; a plain client is not."""
    child = _tls_node(tls_ns, f"tls{unique}", pki)
    try:
        address = child.listen_address()
        assert address is not None
        with Conn(address, tls=_client_context(pki, with_cert=False)) as c:
            assert c.ask("CREATE apples") == b"OK"
            assert c.ask("PUT apples k v") == b"OK"
            assert c.ask("GET apples k") == b"v|OK"
        with Conn(address, timeout=3) as plain:
            plain.send(b"GET apples k\r\n")
            try:
                reply = plain.line()
            except (TimeoutError, OSError):
                reply = CLOSED
            assert not reply.startswith(b"v"), reply
    finally:
        child.stop()


def test_verify_client_needs_a_certificate_from_the_ca(
    tls_ns: tuple[str, int], pki: dict[str, str], unique: str
) -> None:
    """--listen-tls-verify-client: a client without a certificate is refused, one
    with a certificate from the CA is served."""
    child = _tls_node(tls_ns, f"tlsv{unique}", pki, "--listen-tls-verify-client")
    try:
        address = child.listen_address()
        assert address is not None
        with Conn(address, tls=_client_context(pki, with_cert=True)) as c:
            assert c.ask("CREATE apples") == b"OK"
        refused = False
        try:
            with Conn(
                address, timeout=3, tls=_client_context(pki, with_cert=False)
            ) as c:
                c.send(b"CREATE apples\r\n")
                refused = c.line() == CLOSED
        except (ssl.SSLError, OSError):
            refused = True
        assert refused
    finally:
        child.stop()


def test_listen_tls_without_a_certificate_is_a_usage_error(
    ns: tuple[str, int], unique: str
) -> None:
    """--listen-tls with no certificate: exit 2 and a message naming the options."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyrokv",
            "node",
            f"x{unique}",
            "--config",
            os.devnull,
            "--ns",
            f"{ns[0]}:{ns[1]}",
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "--listen-tls" in done.stderr and "--tls-cert" in done.stderr


def test_a_tls_handshake_that_stalls_does_not_stop_the_port(
    tls_ns: tuple[str, int], pki: dict[str, str], unique: str
) -> None:
    """Connections that never finish their TLS handshake hold nobody up."""
    child = _tls_node(tls_ns, f"tlss{unique}", pki)
    stalled = []
    try:
        address = child.listen_address()
        assert address is not None
        import socket

        for _ in range(20):
            stalled.append(socket.create_connection(address, timeout=5))
        done = threading.Event()
        with Conn(address, tls=_client_context(pki, with_cert=False)) as c:
            assert c.ask("CREATE apples") == b"OK"
            done.set()
        assert done.is_set()
    finally:
        for sock in stalled:
            sock.close()
        child.stop()
