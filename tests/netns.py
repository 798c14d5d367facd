"""Several "hosts" on one machine: Linux network namespaces on a private switch.

A :class:`Lab` makes one *switch* namespace holding a Linux bridge, and one
namespace per host, joined to the bridge by a veth pair (``eth0`` in the host,
``sw-NAME`` in the switch). Every namespace, link and address lives inside
namespaces the lab creates; nothing is added to or changed in the machine's own
namespace, and :meth:`Lab.close` deletes every namespace it made (which removes
the veth pairs and addresses with them). Namespace names carry a random tag, so
parallel runs and ones left over by a killed run do not collide.

Taking a host's switch-side veth down is pulling its cable at the switch:
:meth:`Lab.link`.

Processes run in a host with ``ip netns exec NS ...``, which execs the command,
so a :class:`NsProcess`'s pid is the program's own and signals reach it.

Needs root (``ip netns add``); :func:`unavailable_reason` says why not, for a skip.

A run killed with SIGKILL cannot clean up: its namespaces (``pkvXXXXXX-*``) and the
processes in them stay. Remove them by hand::

    for n in $(ip netns list | grep -o '^pkv[0-9a-f]*-[a-z0-9]*'); do
        ip netns pids "$n" | xargs -r kill; ip netns del "$n"; done
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from pyrokv.cluster import Child

__all__ = [
    "TEST_NETS",
    "Host",
    "Lab",
    "LabError",
    "NsProcess",
    "TextReply",
    "free_subnet",
    "ip",
    "poll",
    "root_networks",
    "unavailable_reason",
]

#: The documentation address blocks (RFC 5737), in the order they are tried.
TEST_NETS = ("198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24")

IP_TIMEOUT = 15.0
START_TIMEOUT = 20.0
BRIDGE = "br0"
HOST_IF = "eth0"

_T = TypeVar("_T")


class LabError(RuntimeError):
    """An ``ip`` command failed, or a process did not do what was awaited."""


def _env() -> dict[str, str]:
    """This process's environment without PYROKV_* (children take flags only)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYROKV_")}


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; raise :class:`LabError` with its stderr when it fails."""
    done = subprocess.run(
        ["ip", *args],
        capture_output=True,
        text=True,
        timeout=IP_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    if check and done.returncode != 0:
        raise LabError(
            f"'ip {' '.join(args)}' failed ({done.returncode}): "
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    return done


def poll(
    what: str,
    check: Callable[[], _T | None],
    timeout: float,
    interval: float = 0.05,
) -> _T:
    """Call ``check`` until it returns something other than None/False; its value.

    Raises :class:`LabError` naming ``what`` (and the last exception ``check``
    raised, if any) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
        except Exception as exc:
            last, value = exc, None
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            why = f"; last error: {last!r}" if last is not None else ""
            raise LabError(f"{what} did not happen within {timeout:.1f}s{why}")
        time.sleep(interval)  # the polling interval, not a synchronisation


# -- the machine's own networks ---------------------------------------------------

_ROUTE_TYPES = {
    "unicast",
    "local",
    "broadcast",
    "multicast",
    "anycast",
    "unreachable",
    "blackhole",
    "prohibit",
    "throw",
    "nat",
}


def root_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the machine's own namespace has an address in or a route to.

    Read from ``ip -4 -o addr show`` and ``ip -4 route show table all``; the
    default route (0.0.0.0/0) is left out, since it overlaps everything.
    """
    networks: list[ipaddress.IPv4Network] = []
    for line in ip("-4", "-o", "addr", "show").stdout.splitlines():
        match = re.search(r"\binet (\S+)", line)
        if match:
            networks.append(ipaddress.IPv4Network(match.group(1), strict=False))
    for line in ip("-4", "route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        if not words:
            continue
        dest = words[1] if words[0] in _ROUTE_TYPES and len(words) > 1 else words[0]
        if dest == "default":
            continue
        try:
            network = ipaddress.IPv4Network(dest, strict=False)
        except ValueError:
            continue
        if network.prefixlen > 0:
            networks.append(network)
    return networks


def free_subnet(
    used: Iterable[ipaddress.IPv4Network], candidates: Sequence[str] = TEST_NETS
) -> ipaddress.IPv4Network | None:
    """The first candidate that overlaps none of ``used``; None if all do."""
    used = list(used)
    for text in candidates:
        subnet = ipaddress.IPv4Network(text)
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    return None


# -- can this machine make namespaces? ---------------------------------------------

_reason_cache: list[str | None] = []


def unavailable_reason() -> str | None:
    """Why namespaces with a bridge and veth pairs cannot be made here; None if they can.

    Checked once per process: Linux, root, ``ip`` on PATH, and a probe that makes
    a namespace with a bridge and a veth pair in it, then deletes it.
    """
    if _reason_cache:
        return _reason_cache[0]
    reason = _probe()
    _reason_cache.append(reason)
    return reason


def _probe() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "creating network namespaces (ip netns add) needs root"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    name = f"pkv{secrets.token_hex(3)}-probe"
    try:
        ip("netns", "add", name)
    except (LabError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        ip("-n", name, "link", "add", BRIDGE, "type", "bridge")
        ip("-n", name, "link", "add", "pa", "type", "veth", "peer", "name", "pb")
        ip("-n", name, "link", "set", "pa", "master", BRIDGE)
        done = subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-c", "pass"],
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT,
        )
        if done.returncode != 0:
            return f"cannot run a process in a network namespace: {done.stderr.strip()}"
    except (LabError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot make a bridge and veth pair in a network namespace: {exc}"
    finally:
        ip("netns", "del", name, check=False)
    return None


# -- processes in a namespace -----------------------------------------------------


class NsProcess(Child):
    """A long-running process in a namespace, whose output lines can be awaited.

    :class:`pyrokv.cluster.Child` run through ``ip netns exec NS``, from ``/`` (no
    nameserver.conf around); :meth:`stop` sends SIGTERM, then SIGKILL.
    """

    def __init__(self, netns: str, argv: Sequence[str], label: str) -> None:
        super().__init__(
            argv, label, pyrokv=False, prefix=["ip", "netns", "exec", netns], cwd="/"
        )
        self.label = label


# Run in a client namespace: send each request line to a text port, print one JSON
# object per reply, with the seconds it took.
_TEXT_CLIENT = """
import json, sys, time
from pyrokv.testing import Conn
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with Conn((host, port), timeout=timeout) as conn:
    for request in sys.argv[4:]:
        started = time.monotonic()
        reply = conn.ask(request).decode("utf-8", "backslashreplace")
        print(json.dumps({"request": request, "reply": reply,
                          "seconds": time.monotonic() - started}), flush=True)
"""


class TextReply(dict[str, Any]):
    """One reply of :meth:`Host.text`: ``request``, ``reply`` and ``seconds``."""

    @property
    def reply(self) -> str:
        return str(self["reply"])

    @property
    def seconds(self) -> float:
        return float(self["seconds"])


class Host:
    """One host of a :class:`Lab`: a namespace with ``eth0`` at ``address``."""

    def __init__(self, lab: Lab, name: str, netns: str, address: str) -> None:
        self.lab = lab
        self.name = name
        self.netns = netns
        self.address = address
        self.switch_port = f"sw-{name}"
        self.processes: list[NsProcess] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, netns={self.netns!r}, address={self.address!r})"

    def spawn(self, argv: Sequence[str], label: str | None = None) -> NsProcess:
        """Start ``argv`` in this host; the lab stops it on close."""
        process = NsProcess(self.netns, argv, label or f"{argv[0]} on {self.name}")
        self.processes.append(process)
        return process

    def spawn_pyrokv(self, *args: str, label: str | None = None) -> NsProcess:
        """Start ``python -u -m pyrokv ARGS`` in this host."""
        return self.spawn(
            [sys.executable, "-u", "-m", "pyrokv", *args],
            label or f"pyrokv {args[0]} on {self.name}",
        )

    def run(
        self, argv: Sequence[str], timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in this host to completion; stdout and stderr captured."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_env(),
            cwd="/",
            stdin=subprocess.DEVNULL,
        )

    def pyrokv(
        self, *args: str, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -m pyrokv ARGS`` in this host to completion."""
        return self.run([sys.executable, "-m", "pyrokv", *args], timeout)

    def text(
        self, address: tuple[str, int], *requests: str, timeout: float = 10.0
    ) -> list[TextReply]:
        """Send ``requests`` over one text-protocol connection from this host.

        Each socket read is bounded by ``timeout``; returns one :class:`TextReply`
        per request (a GET that found a value reads ``value|OK``).
        """
        done = self.run(
            [
                sys.executable,
                "-c",
                _TEXT_CLIENT,
                address[0],
                str(address[1]),
                str(timeout),
                *requests,
            ],
            timeout=timeout * (len(requests) + 1) + 10,
        )
        if done.returncode != 0:
            raise LabError(
                f"the text client in {self.name} failed ({done.returncode}): "
                f"{done.stderr.strip()}"
            )
        return [TextReply(json.loads(line)) for line in done.stdout.splitlines()]

    def can_reach(self, address: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from this host to address:port is accepted."""
        code = (
            "import socket, sys\n"
            "try:\n"
            "    socket.create_connection((sys.argv[1], int(sys.argv[2])), "
            "timeout=float(sys.argv[3])).close()\n"
            "except OSError:\n"
            "    sys.exit(1)\n"
        )
        done = self.run(
            [sys.executable, "-c", code, address, str(port), str(timeout)],
            timeout=timeout + 20,
        )
        return done.returncode == 0


class Lab:
    """A switch namespace with a bridge, and host namespaces cabled to it.

    >>> with Lab(ipaddress.IPv4Network("198.51.100.0/24")) as lab:  # doctest: +SKIP
    ...     foo = lab.add_host("foo")          # pkvXXXXXX-foo, eth0 198.51.100.2/24
    ...     lab.link("foo", up=False)          # cable pulled at the switch
    """

    def __init__(self, subnet: ipaddress.IPv4Network) -> None:
        self.subnet = subnet
        self.tag = f"pkv{secrets.token_hex(3)}"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._addresses = subnet.hosts()
        next(self._addresses)  # .1 is left for a gateway that does not exist
        self._namespaces: list[str] = []

    # -- building -------------------------------------------------------------

    def start(self) -> Lab:
        """Make the switch namespace and its bridge."""
        try:
            self._add_namespace(self.switch)
            ip("-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
            ip("-n", self.switch, "link", "set", BRIDGE, "up")
        except BaseException:
            self.close()
            raise
        return self

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """Make host ``name``: its namespace, ``eth0`` with the next address, cabled up."""
        port = f"sw-{name}"
        if len(port) > 15 or not re.fullmatch(r"[a-z0-9]+", name):
            raise ValueError(f"host name {name!r}: use at most 12 letters or digits")
        netns = f"{self.tag}-{name}"
        address = str(next(self._addresses))
        self._add_namespace(netns)
        ip(
            "-n", self.switch, "link", "add", port, "type", "veth",
            "peer", "name", HOST_IF, "netns", netns,
        )  # fmt: skip
        ip("-n", self.switch, "link", "set", port, "master", BRIDGE)
        ip("-n", self.switch, "link", "set", port, "up")
        cidr = f"{address}/{self.subnet.prefixlen}"
        ip("-n", netns, "addr", "add", cidr, "dev", HOST_IF)
        ip("-n", netns, "link", "set", HOST_IF, "up")
        host = Host(self, name, netns, address)
        self.hosts[name] = host
        self.wait_link(name, up=True)
        return host

    # -- cables ---------------------------------------------------------------

    def link(self, name: str, up: bool) -> None:
        """Plug (``up``) or pull host ``name``'s cable at the switch, and wait for it."""
        ip("-n", self.switch, "link", "set", f"sw-{name}", "up" if up else "down")
        self.wait_link(name, up)

    def link_state(self, name: str) -> tuple[str, str, str]:
        """(bridge port state, switch-side and host-side operstate).

        ('forwarding', 'UP', 'UP') when the cable carries traffic; the bridge port
        state reads 'down' while the switch-side veth is set down.
        """
        host = self.hosts[name]
        [port] = json.loads(
            ip("-n", self.switch, "-d", "-j", "link", "show", f"sw-{name}").stdout
        )
        [eth] = json.loads(ip("-n", host.netns, "-j", "link", "show", HOST_IF).stdout)
        slave = port.get("linkinfo", {}).get("info_slave_data", {})
        state = slave.get("state", "?") if "UP" in port.get("flags", []) else "down"
        return state, str(port.get("operstate", "?")), str(eth.get("operstate", "?"))

    def wait_link(self, name: str, up: bool, timeout: float = 10.0) -> None:
        """Wait until host ``name``'s cable carries traffic both ways, or is down.

        Up means the bridge port forwards and both veth ends report operstate UP
        (the kernel's link watcher has run, so their queues pass packets).
        """

        def ready() -> bool:
            state = self.link_state(name)
            if up:
                return state == ("forwarding", "UP", "UP")
            return state[0] == "down" and "UP" not in state[1:]

        poll(f"the link of {name} going {'up' if up else 'down'}", ready, timeout)

    # -- tearing down ---------------------------------------------------------

    def close(self) -> None:
        """Stop every process, then delete every namespace made; safe to call twice."""
        for host in self.hosts.values():
            for process in reversed(host.processes):
                process.stop()
            host.processes.clear()
        errors = []
        for name in reversed(self._namespaces):
            done = ip("netns", "del", name, check=False)
            if done.returncode != 0 and name in self.namespaces():
                errors.append(f"{name}: {done.stderr.strip()}")
        self._namespaces.clear()
        if errors:
            raise LabError(f"could not delete namespaces: {'; '.join(errors)}")

    @staticmethod
    def namespaces() -> list[str]:
        """The names ``ip netns list`` shows."""
        return [
            line.split()[0]
            for line in ip("netns", "list").stdout.splitlines()
            if line.strip()
        ]

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
