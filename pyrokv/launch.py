"""``pyrokv up`` (a local cluster from the config) and ``pyrokv demo`` (the guide's scenario)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from typing import TextIO

from .client import Client
from .cluster import (
    START_TIMEOUT,
    Child,
    LocalCluster,
    spawn_nameserver,
    spawn_node,
    write_secret,
)
from .config import BUILT_IN, NodeSettings, Settings, save_settings
from .errors import ChildError, ConfigError, NothingToStartError, PyroKVError
from .flags import UP_CHILD
from .naming import parse_address
from .signals import StopSignals
from .supervisor import POLL, Supervisor, last_error
from .table import RoutingTable
from .testing import Conn

__all__ = ["run_demo", "run_up"]

log = logging.getLogger("pyrokv.up")


def _listen_address(child: Child) -> str | None:
    """``HOST:PORT`` of the node's text protocol, as it printed it; None if it has none."""
    address = child.listen_address()
    return None if address is None else f"{address[0]}:{address[1]}"


def _did_not_start(what: str, child: Child | None) -> PyroKVError:
    """The error of a child that did not start: a :class:`ConfigError` (exit 2)
    when the child exited 2, as for a usage or configuration error it found in
    the settings ``up`` handed it, else a :class:`ChildError`."""
    message = f"{what} did not start: {_child_failure(child)}"
    if child is not None and child.proc.poll() == 2:
        return ConfigError(message)
    return ChildError(message)


def _child_failure(child: Child | None) -> str:
    """The child's own error line, if it printed one, else everything it printed."""
    if child is None:
        return "(no output)"
    return last_error(child) or child.output()


#: The config file ``pyrokv up`` writes for its children, in its private directory.
CHILD_CONFIG = "cluster.conf"
#: The cluster secret ``pyrokv up`` makes when the config names none, beside it.
CLUSTER_SECRET = "cluster.secret"
#: The start of the name of the directory, in the system's temporary directory,
#: where one run of ``pyrokv up`` keeps each child's output.
LOG_DIR_PREFIX = "pyrokv-up-logs-"
#: The name server's log file in that directory; a node's is ``node-NAME.log``.
NAMESERVER_LOG = "nameserver.log"


def node_log(name: str) -> str:
    """The file name of node ``name``'s output in ``up``'s log directory."""
    return f"node-{name}.log"


def run_up(
    settings: Settings, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """Start the name server and every configured node; supervise them until a
    signal stops them all.

    The children take their settings from a config file that ``up`` writes for them
    (:func:`_start`), in a private directory removed when ``up`` exits. Each child's
    output goes to a file in a log directory of this run, which is removed after a
    stop by signal if no child ever exited, and kept (``up`` says where) otherwise.
    A child that exits is restarted by :class:`~pyrokv.supervisor.Supervisor`;
    one that keeps failing stops the cluster (:class:`ChildError`, exit 1).
    """
    if not settings.nodes:
        raise NothingToStartError(
            f"no [node NAME] sections in {settings.source}: nothing to start"
        )
    logs = tempfile.mkdtemp(prefix=LOG_DIR_PREFIX)
    supervisor = Supervisor(err)
    keep = True
    try:
        with (
            StopSignals() as signals,
            tempfile.TemporaryDirectory(prefix="pyrokv-up-") as private,
        ):
            try:
                config = os.path.join(private, CHILD_CONFIG)
                ns, rows = _start(settings, config, supervisor, logs)
                _print_up(out, settings, ns, rows, logs)
                while not signals.wait(POLL):
                    supervisor.check()
                print("stopping the cluster ...", file=out, flush=True)
                log.info("stopping the cluster")
                keep = supervisor.exits > 0
                return 0
            finally:
                supervisor.stop()
                log.info("stopped every process of the cluster")
    finally:
        if keep:
            print(
                f"pyrokv up: the output of each process it started is kept in {logs}",
                file=err,
                flush=True,
            )
        else:
            shutil.rmtree(logs, ignore_errors=True)


def _start(
    settings: Settings, config: str, supervisor: Supervisor, logs: str
) -> tuple[tuple[str, int], list[tuple[str, RoutingTable, str | None, Child]]]:
    """Start the name server, then every node at once, each supervised once it is
    ready (in the config's order).

    ``config`` gets the settings as resolved here (file, environment, flags; file
    names made absolute; mode 0600) and the name server starts as ``pyrokv
    nameserver --config CONFIG``. Once it runs, ``config`` is written again with its
    real address, and each node starts as ``pyrokv node NAME --config CONFIG
    --up-child``: the whole [node NAME] section, listen included, and nothing
    rebuilt as flags. With ``--up-child`` both also name keys of the config file in
    their hints, not flags that ``up`` lacks. A child restarted later runs the same
    command, so it reads the same file: its settings (a node's data dir among them)
    and the name server's first address.
    """
    if settings.get("cluster", "secret_file") is None:
        # A secret per cluster, beside the config: its nodes open peer links to
        # each other, and nothing else can speak to them as a node.
        secret = os.path.join(os.path.dirname(config), CLUSTER_SECRET)
        write_secret(secret)
        settings = settings.set("cluster", "secret_file", secret, "pyrokv up")
    save_settings(settings, config)
    try:
        ns_child, ns = spawn_nameserver(
            None,
            None,
            config=config,
            extra=[UP_CHILD],
            log=os.path.join(logs, NAMESERVER_LOG),
            die_with_parent=True,
        )
    except ChildError as exc:
        raise _did_not_start("the name server", exc.child) from None
    supervisor.add("the name server", ns_child, "READY ")
    ns_child.relay(sys.stderr)  # its log lines, among up's own
    log.info("started the name server at %s:%d (pid %d)", *ns, ns_child.proc.pid)
    started = "the name server pyrokv up started"
    settings = settings.set("nameserver", "host", ns[0], started)
    save_settings(settings.set("nameserver", "port", ns[1], started), config)
    # Every node starts at once (their imports and registrations overlap), and
    # each is supervised from the moment it is ready, in the config's order.
    started_nodes: list[tuple[NodeSettings, Child]] = []
    rows = []
    try:
        for node in settings.nodes:
            child = spawn_node(
                node.name,
                None,
                config=config,
                extra=[UP_CHILD],
                log=os.path.join(logs, node_log(node.name)),
                die_with_parent=True,
                wait=False,
            )
            started_nodes.append((node, child))
        for node, child in started_nodes:
            try:
                child.wait_for(f"READY {node.name} ", START_TIMEOUT)
            except ChildError:
                raise _did_not_start(f"node {node.name!r}", child) from None
            supervisor.add(f"node {node.name}", child, f"READY {node.name} ")
            child.relay(sys.stderr)
            log.info("started node %r (pid %d)", node.name, child.proc.pid)
            table = settings.table if node.table is None else node.table
            rows.append((node.name, table, _listen_address(child), child))
    except BaseException:
        supervised = supervisor.children()
        for _node, child in started_nodes:
            if child not in supervised:
                child.stop()
        raise
    return ns, rows


def _print_up(
    out: TextIO,
    settings: Settings,
    ns: tuple[str, int],
    rows: list[tuple[str, RoutingTable, str | None, Child]],
    logs: str,
) -> None:
    print(f"pyrokv cluster is up (settings: {settings.source})", file=out)
    print(f"  name server   {ns[0]}:{ns[1]}", file=out)
    for name, table, listen, child in rows:
        text = f"text protocol on {listen}" if listen else "no text protocol"
        metrics = next(
            (
                f"; metrics at http://{line.split()[2]}/metrics"
                for line in child.lines
                if line.startswith(f"METRICS {name} ")
            ),
            "",
        )
        print(f"  node {name:<8} {text}; table {table}{metrics}", file=out)
    print(
        "\nEach process's output goes to a file (kept if a process exits); "
        "one that exits is restarted:",
        file=out,
    )
    print(f"  name server   {os.path.join(logs, NAMESERVER_LOG)}", file=out)
    for name, _table, _listen, _child in rows:
        print(f"  node {name:<8} {os.path.join(logs, node_log(name))}", file=out)
    print("\nTalk to it:", file=out)
    first = next((listen for _, _, listen, _ in rows if listen), None)
    if first:
        host, port = parse_address(first)
        print(f"  nc {host} {port}          then type: CREATE shopping", file=out)
        print("                                     PUT shopping milk 1", file=out)
        print("                                     GET shopping milk", file=out)
    config = "" if settings.source == BUILT_IN else f" --config {settings.source}"
    at = f"--ns {ns[0]}:{ns[1]}{config}"
    print(f"  pyrokv create shopping {at}", file=out)
    print(f"  pyrokv put shopping milk 1 {at}", file=out)
    print(f"  pyrokv get shopping milk {at}", file=out)
    print(f"  pyrokv call hello node_name {at}", file=out)
    print(f"  pyrokv status {at}", file=out)
    print("\nCtrl-C stops every process.", file=out, flush=True)


# -- demo ---------------------------------------------------------------------

DEMO_TABLE = "a..m=foo, n..z=bar"


def _shown(reply: list[bytes]) -> str:
    """A reply as the demo prints it: a GET's value quoted, then OK."""
    if len(reply) == 2:
        value = reply[0].decode()
        return f"{value!r} OK" if value else "'' OK  (missing key: empty value)"
    return reply[0].decode()


def run_demo(out: TextIO = sys.stdout) -> int:
    """Run the guide's scenario on a fresh local cluster; stop it; return 0."""
    started = time.monotonic()
    listen = ["--listen", "127.0.0.1:0"]
    print(
        "starting a name server and nodes foo (a..m) and bar (n..z) on free ports ...",
        file=out,
        flush=True,
    )
    with LocalCluster(
        {"foo": DEMO_TABLE, "bar": DEMO_TABLE}, {"foo": listen, "bar": listen}
    ) as cluster:
        ports = {name: _listen_address(child) for name, child in cluster.nodes.items()}
        print(
            f"name server {cluster.ns[0]}:{cluster.ns[1]}; text protocol: foo {ports['foo']}, bar {ports['bar']}\n",
            file=out,
        )
        table = RoutingTable.parse(DEMO_TABLE)
        script = [
            ("foo", "CREATE shopping"),
            ("foo", "PUT shopping milk 1"),
            ("foo", "GET shopping milk"),
            ("foo", "GET shopping eggs"),
            ("foo", "CREATE zoo"),
            ("foo", "PUT zoo lion roar"),
            ("bar", "GET zoo lion"),
            ("bar", "GET shopping milk"),
            ("bar", "DELETE shopping milk"),
            ("foo", "GET shopping milk"),
            ("foo", "GET nosuch milk"),
            ("bar", "GET 1abc milk"),
            ("foo", "FOO"),
        ]
        lines = {name: Conn(address) for name, address in ports.items() if address}
        try:
            for via, request in script:
                words = request.split()
                try:
                    owner = table.owner(words[1]) if len(words) > 1 else None
                except PyroKVError:
                    owner = None
                if owner is None:
                    hop = "no owner"
                else:
                    hop = "local" if owner == via else f"routed to {owner}"
                reply = _shown(lines[via].exchange(request))
                print(f"  {via}> {request:<24} {reply:<40} [{hop}]", file=out)
        finally:
            for line in lines.values():
                line.close()
        print(
            "\nRouting a task by bucket name (pyrokv.tasks.node_name), as the guide does:",
            file=out,
        )
        with Client(cluster.ns, via="foo") as client:
            for bucket in ("hello", "world"):
                print(
                    f"  route({bucket!r}, node_name) -> {client.route(bucket, 'pyrokv.tasks.node_name')!r}",
                    file=out,
                )
            try:
                client.route(b"\x00", "pyrokv.tasks.node_name")
            except PyroKVError as exc:
                print(
                    f"  route(b'\\x00', node_name) -> {type(exc).__name__}: {exc}",
                    file=out,
                )
    print(
        f"\nstopped every process; the demo took {time.monotonic() - started:.1f}s",
        file=out,
        flush=True,
    )
    return 0
