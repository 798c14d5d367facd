"""The ``pyrokv`` command line: ``main(argv) -> exit code``.

Exit codes: 0 success; 1 a pyrokv error (printed as ``pyrokv: ClassName: text`` on
stderr, never a traceback); 2 a usage or configuration error, wherever it is given
(flag, config file, environment); 3 ``pyrokv status`` only, when the name server
cannot be reached (docs/cli.md).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from . import __version__, logs
from .config import Settings, unknown_variables
from .defaults import DEFAULT_CHANGE_TIMEOUT
from .errors import (
    BucketNotFoundError,
    ConfigError,
    InvalidTableError,
    ListenError,
    NameServerUnavailableError,
    PyroKVError,
)
from .flags import add_setting_flags, settings_for
from .protocol import VERBS
from .settings import CONFIG_FLAG, PASSWORD_ENV, SETTINGS, known_environment
from .table import RoutingTable, check_node_name

__all__ = ["main"]

TASKS_MODULE = "pyrokv.tasks"

#: What the long-running commands log at their start (logs.configure ran first).
_log = logging.getLogger("pyrokv.cli")


def _node_name(text: str) -> str:
    """A node name on the command line; a bad one is a usage error (exit 2)."""
    try:
        return check_node_name(text)
    except InvalidTableError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _NoConfig(argparse.Action):
    """``--config`` of a command that reads no config file: a usage error saying so."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"argument {option_string}: pyrokv demo runs its own throw-away cluster "
            "with fixed settings and reads no config file; run a cluster from a "
            "config file with 'pyrokv up --config FILE'"
        )


#: The commands that run one verb of the text protocol on a bucket's owner, and
#: their help. Each takes the verb's words (protocol.VERBS) as its arguments.
DIRECT = {
    "create": "create a bucket",
    "put": "set a key of a bucket to a value (stored as the text given)",
    "get": "print the value of a key of a bucket",
    "delete": "remove a key from a bucket",
    "keys": "print the keys of a bucket, one per line, sorted",
}
DIRECT_OUTPUT = {
    "create": "Prints OK.",
    "put": "Prints OK. VALUE is stored as the text given (pyrokv call reads literals).",
    "get": "Prints the value; a missing key or bucket prints nothing and exits 1.",
    "delete": "Prints OK, whether the key was there or not.",
    "keys": "Prints each key on a line of its own, sorted.",
}


PARAM_HELP = {
    "BUCKET": "the bucket; its first byte picks the node that owns it",
    "KEY": "the key",
    "VALUE": "the value, stored as this text",
}


def _via(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--via",
        metavar="NODE",
        type=_node_name,
        help="node whose router starts the route (default: the first live node)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``pyrokv`` command."""
    parser = argparse.ArgumentParser(
        prog="pyrokv",
        description="A routed, distributed, in-memory key-value store on Pyro5.",
    )
    parser.add_argument("--version", action="version", version=f"pyrokv {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "nameserver",
        help="run Pyro5's name server in the foreground",
        description="Run Pyro5's own name server (no broadcast) until SIGTERM, SIGHUP or Ctrl-C.",
    )
    add_setting_flags(p, "nameserver")

    p = commands.add_parser(
        "node",
        help="run one node (Registry and TaskRunner) in the foreground",
        description="Run node NAME: serve its buckets and tasks, registered in the name "
        "server as pyrokv.NAME.registry and pyrokv.NAME.tasks. Prints 'READY NAME URI' "
        "once registered; SIGTERM, SIGHUP or Ctrl-C unregisters it and exits 0.",
    )
    p.add_argument(
        "name",
        metavar="NAME",
        type=_node_name,
        help="node name (letters, digits, '_', '-')",
    )
    add_setting_flags(p, "node")

    p = commands.add_parser(
        "call",
        help="route a task by bucket name and print its result",
        description="Route FUNC(*ARGS) to the node that owns BUCKET and print the result. "
        "FUNC is a dotted name; a bare name means pyrokv.tasks.NAME. Each ARG is read "
        "as a Python literal where it parses (1, 'x', [1, 2], None), else as a string. "
        "Example: pyrokv call hello node_name",
    )
    p.add_argument("bucket", metavar="BUCKET", help="routes the call by its first byte")
    p.add_argument("func", metavar="FUNC", help="the task: pyrokv.tasks.get, or get")
    # default=[]: else argparse names ARG among the missing arguments
    p.add_argument("args", metavar="ARG", nargs="*", default=[], help="its arguments")
    _via(p)
    add_setting_flags(p, "call")

    for command, summary in DIRECT.items():
        verb = VERBS[command.upper().encode()]
        p = commands.add_parser(
            command,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}: {verb.task_name} on the "
            "node that owns BUCKET (routed by its first byte, as the text protocol's "
            f"{verb.usage}). {DIRECT_OUTPUT[command]}",
        )
        for param in verb.params:
            p.add_argument(param.lower(), metavar=param, help=PARAM_HELP[param])
        _via(p)
        add_setting_flags(p, command)

    p = commands.add_parser(
        "tasks",
        help="list the tasks a node runs, with their signatures",
        description="List the tasks a node allows (the public functions of its "
        "allowlisted modules), one per line: the dotted name with its signature, "
        "then the first line of its docstring.",
    )
    p.add_argument(
        "--via",
        metavar="NODE",
        type=_node_name,
        help="the node to ask (default: the first live node by name)",
    )
    add_setting_flags(p, "tasks")

    p = commands.add_parser(
        "up",
        help="start the name server and every configured node; Ctrl-C stops all",
        description="Start Pyro5's name server and one node per [node NAME] section of "
        "the config (default: foo a..m on text port 4040, bar n..z on 4041), print "
        "where each runs, and keep them running until SIGTERM, SIGHUP or Ctrl-C.",
    )
    add_setting_flags(p, "up")

    p = commands.add_parser(
        "demo",
        help="run the guide's scenario on a throw-away local cluster",
        description="Start a name server and nodes foo (a..m) and bar (n..z) on free "
        "ports, run create/put/get/delete through the text protocol on a local and a "
        "routed bucket, route hello and world, show a bucket with no entry, stop "
        "everything. It reads no config file and no PYROKV_* variable.",
    )
    p.add_argument(
        CONFIG_FLAG,
        metavar="FILE",
        action=_NoConfig,
        help="refused: the demo's cluster has fixed settings (use 'pyrokv up')",
    )

    p = commands.add_parser(
        "status",
        help="list the registered nodes and whether each answers (a health check)",
        description="One row per node registered in the name server: its Pyro5 and "
        "text addresses, alive or down, pid, buckets, keys, table version and table, "
        "then the reason each node that is down gave. Exits 0 when every registered "
        "node answers, 1 when any is down or none is registered, 2 for a usage "
        "error, 3 when the name server cannot be reached.",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list instead: one object per node, with name, address, "
        "text, state, reason, pid, buckets, keys, table, table_version, uptime_s",
    )
    p.add_argument(
        "--prune",
        action="store_true",
        help="look again at each node that is down, and remove the registrations "
        "of those still down from the name server (saying which)",
    )
    add_setting_flags(p, "status")

    p = commands.add_parser(
        "table",
        help="show or change the cluster's routing table while it runs",
        description="Show the cluster's routing table and version (table show), or "
        "make a new table the table of every live node and move the buckets whose "
        "owner changes (table set). See docs/routing.md.",
    )
    tables = p.add_subparsers(dest="table_command", metavar="ACTION", required=True)
    q = tables.add_parser(
        "show",
        help="the version, the table, and the version each live node routes by",
        description="Print the cluster's table version and table, and for each live "
        "node the version it routes by. At version 0 (before the first 'table set') "
        "each node routes by its own table: the table is shown when they all share "
        "one. Exits 0, or 1 when a node is down or a change did not complete.",
    )
    q.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"version": N, "table": SPEC or null, '
        '"nodes": {NODE: VERSION}}',
    )
    add_setting_flags(q, "table")
    q = tables.add_parser(
        "set",
        help="make SPEC the table of every live node, moving buckets to new owners",
        description="Make SPEC the routing table of every live node (the next "
        "version) and move every bucket whose owner changes to its new owner, "
        "then print what moved, the new version and the time it took. Requests go "
        "on being served meanwhile. SPEC is a table such as 'a..f=foo, g..z=bar', "
        "or 'hash: 0x00..0x7f=foo, 0x80..0xff=bar' to route by a hash of the name.",
    )
    q.add_argument("spec", metavar="SPEC", help="the new table")
    q.add_argument(
        "--expect-version",
        metavar="N",
        type=_version,
        help="refuse (TableVersionError, nothing applied) unless the table is at "
        "version N now",
    )
    q.add_argument(
        "--drop-dead",
        action="store_true",
        help="give the ranges of nodes that are down to their new owners empty "
        "(their buckets there are lost); without it such a change is refused",
    )
    q.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"version": N, "seconds": S, "moved": [{"range", '
        '"from", "to", "buckets", "keys"}], "lost": [...]}',
    )
    q.add_argument(
        "--timeout",
        metavar="S",
        type=_seconds,
        default=DEFAULT_CHANGE_TIMEOUT,
        help=f"longest the change may take, in seconds (default "
        f"{DEFAULT_CHANGE_TIMEOUT:g})",
    )
    add_setting_flags(q, "table")

    p = commands.add_parser(
        "config",
        help="print the effective settings, each with where it came from",
        description="Print the settings after defaults, the config file, PYROKV_* "
        "variables and flags are applied, as a config file; each value is followed "
        "by where it came from (flag, environment, file or default).",
    )
    add_setting_flags(p, "config")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pyrokv`` command line; return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "demo":  # its own cluster, with fixed settings
            return int(COMMANDS[args.command](args, Settings()))
        _warn_unknown_variables()
        settings = settings_for(args)
        return int(COMMANDS[args.command](args, settings))
    except PyroKVError as exc:
        _report(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _report(exc: BaseException) -> None:
    """Print an error as every command does: ``pyrokv: ClassName: text`` on stderr."""
    print(f"pyrokv: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def _warn_unknown_variables() -> None:
    """Say once, on stderr, which ``PYROKV_*`` variables are ignored (a typo?)."""
    unknown = unknown_variables()
    if unknown:
        print(
            f"pyrokv: warning: ignoring unknown environment variable"
            f"{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: pyrokv reads "
            f"{', '.join(known_environment())}",
            file=sys.stderr,
            flush=True,
        )


def _nameserver(args: argparse.Namespace, settings: Settings) -> int:
    from .daemon import make_nameserver
    from .guard import guard_daemons
    from .signals import StopSignals
    from .wire import set_workers, setup_pyro

    setup_pyro()
    logs.configure(settings.get("cluster", "log_level"), "nameserver")
    guard_daemons(settings.get("nameserver", "max_message"), refuse_uris=False)
    set_workers(settings.get("nameserver", "workers"))
    tls = _tls(settings)
    host, port = settings.ns
    _warn_if_exposed("the name server", host, tls=tls is not None)
    try:
        uri, daemon = make_nameserver(host, port, tls)
    except OSError as exc:
        how = _how_to_set("nameserver", "port", args.up_child)
        raise ListenError(
            f"cannot start the name server on {host}:{port}: {exc.strerror or exc} "
            "(is another one running there, or a cluster of 'pyrokv up'? pick another "
            f"port: {how})"
        ) from None
    loop = threading.Thread(target=daemon.requestLoop, daemon=True)
    log = logging.getLogger("pyrokv.nameserver")
    with StopSignals() as signals:
        loop.start()
        print(f"URI = {uri}", flush=True)
        print(f"READY nameserver {uri.host}:{uri.port}", flush=True)
        log.info(
            "name server serving at %s:%d%s",
            uri.host,
            uri.port,
            " over mutual TLS" if tls is not None else "",
        )
        try:
            signals.wait()
        finally:
            log.info("name server stopping")
            daemon.shutdown()
            loop.join(timeout=5)
            log.info("name server stopped")
    return 0


def _node(args: argparse.Namespace, settings: Settings) -> int:
    from .node import serve_node

    logs.configure(settings.get("cluster", "log_level"), args.name)
    options = settings.node_options(args.name)
    _check_node_host(args.name, options["host"], settings.ns_host, args.up_child)
    password = os.environ.get(PASSWORD_ENV)
    origin = settings.origin(f"node {args.name}", "password_file")
    if password is not None and not origin.startswith("flag"):
        # the variable beats the config file, as every variable does; a flag beats it
        if not password or any(c.isspace() for c in password):
            raise ConfigError(f"${PASSWORD_ENV} must be one word: no spaces, not empty")
        options["password_file"] = None
        options["password"] = password
    tls = _tls(settings, args.name)
    _warn_if_exposed(
        f"node {args.name!r}", options["host"], options["listen"], tls=tls is not None
    )
    ns_wait = settings.get("cluster", "ns_wait")
    try:
        return serve_node(
            args.name, ns=settings.ns, tls=tls, ns_wait=ns_wait, **options
        )
    except ListenError as exc:
        if exc.setting is None:
            raise
        how = _how_to_set("node", exc.setting, args.up_child, args.name)
        why = "is another process using it? " if exc.setting == "listen" else ""
        free = "; 0 takes any free port" if exc.setting == "port" else ""
        raise ListenError(f"{exc} ({why}pick another: {how}{free})") from None


def _how_to_set(
    section_name: str, key: str, up_child: bool, node: str | None = None
) -> str:
    """How the user changes a setting from where they stand: its flag, or its key
    in the config file, whichever the command they ran takes (a process that
    ``pyrokv up`` started reads the config file only; ``pyrokv node`` by hand takes
    no up-only key from it)."""
    setting = next(s for s in SETTINGS if (s.section, s.key) == (section_name, key))
    title = f"[node {node}]" if section_name == "node" else f"[{section_name}]"
    in_file = f"{key} under {title} in the config file"
    if up_child or setting.flag is None:
        return in_file
    if setting.up_only:
        return str(setting.flag)
    return f"{setting.flag}, or {in_file}"


_LOOPBACK = ("127.", "localhost", "::1")


def _check_node_host(name: str, host: str, ns_host: str, up_child: bool) -> None:
    """Refuse a bind address others cannot dial; warn when it cannot leave this host.

    A node registers the address it binds: it is what other nodes connect to.
    """
    how = _how_to_set("node", "host", up_child, name)
    if host in ("0.0.0.0", "::", ""):
        raise ConfigError(
            f"node {name!r} cannot register host {host or repr(host)}: other nodes "
            f"would dial that address; give the address they reach this host by "
            f"({how})"
        )
    if host.startswith(_LOOPBACK) and not ns_host.startswith(_LOOPBACK):
        _log.warning(
            "node %r binds %s but registers with the name server at %s: nodes on "
            "other hosts cannot reach %s; give the address they reach this host by "
            "(%s)",
            name,
            host,
            ns_host,
            host,
            how,
        )


def _warn_if_exposed(
    what: str, host: str, listen: tuple[str, int] | None = None, tls: bool = False
) -> None:
    """Warn (a log line) when a service binds beyond this machine without protection."""
    if not host.startswith(_LOOPBACK) and not tls:
        risk = (
            "register or replace node names and so redirect every request"
            if what == "the name server"
            else "read and change every bucket and run allowlisted tasks"
        )
        _log.warning(
            "%s serves Pyro5 on %s without TLS: anyone who can reach that address "
            "can %s; use --tls-cert/--tls-key/--tls-ca, or bind 127.0.0.1",
            what,
            host,
            risk,
        )
    if listen is not None and not listen[0].startswith(_LOOPBACK):
        _log.warning(
            "%s serves the text protocol on %s:%d: it has no authentication and no "
            "encryption; anyone who can reach it can read and change every bucket",
            what,
            listen[0],
            listen[1],
        )


def _tls(settings: Settings, node: str | None = None) -> Any:
    """This process's TLS settings (None: plain), applied to Pyro5 before any proxy.

    A node takes its own ``[node NAME] tls_cert``/``tls_key`` when the file gives
    them, unless ``--tls-cert``/``--tls-key`` were given on its command line.
    """
    from .tls import TLSSettings
    from .wire import configure_tls

    cert, key = settings.tls_cert, settings.tls_key
    if node is not None:
        own = settings.node(node)
        if own.tls_cert and not settings.origin("tls", "cert").startswith("flag"):
            cert = own.tls_cert
        if own.tls_key and not settings.origin("tls", "key").startswith("flag"):
            key = own.tls_key
    tls = TLSSettings.from_options(cert, key, settings.tls_ca)
    configure_tls(tls)
    return tls


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _call(args: argparse.Namespace, settings: Settings) -> int:
    from .client import Client

    func = args.func if "." in args.func else f"{TASKS_MODULE}.{args.func}"
    _tls(settings)
    with Client(settings.ns, via=args.via, timeout=settings.timeout) as client:
        try:
            result = client.route(args.bucket, func, [_literal(a) for a in args.args])
        except PyroKVError:
            raise
        except Exception as exc:  # raised by the task on its node: report, no traceback
            print(f"pyrokv: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    print(result if isinstance(result, str) else repr(result))
    return 0


def _direct(args: argparse.Namespace, settings: Settings) -> int:
    """``pyrokv create|put|get|delete|keys``: the verb's task, routed by its bucket."""
    from .client import Client

    verb = VERBS[args.command.upper().encode()]
    words = [getattr(args, param.lower()) for param in verb.params]
    _tls(settings)
    with Client(settings.ns, via=args.via, timeout=settings.timeout) as client:
        try:
            result = client.route(words[0], verb.task_name, words)
        except BucketNotFoundError:
            if args.command == "get":
                return 1  # as a missing key: nothing on stdout or stderr
            raise
        except PyroKVError:
            raise
        except Exception as exc:  # raised by the task on its node: report, no traceback
            _report(exc)
            return 1
    if args.command == "get":
        if result is None:
            return 1
        _print(_shown(result))
    elif args.command == "keys":
        for key in result:
            _print(_shown(key))
    else:
        _print("OK")
    return 0


def _shown(value: Any) -> str:
    """A value as the command line prints it: text as it is, anything else (stored
    by the Python client) as its repr."""
    return value if isinstance(value, str) else repr(value)


def _print(text: str) -> None:
    """Print a line of text holding any bytes the text protocol stored (words are
    decoded with surrogateescape), whatever stdout's encoding."""
    try:
        print(text)
    except UnicodeEncodeError:
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape") + b"\n")
        sys.stdout.buffer.flush()


def _tasks(args: argparse.Namespace, settings: Settings) -> int:
    """``pyrokv tasks``: what a node runs, with signatures."""
    from .client import Client, node_tasks

    _tls(settings)
    node = args.via
    if node is None:
        with Client(settings.ns, timeout=settings.timeout) as client:
            node = client.node
    found = node_tasks(settings.ns, node, settings.timeout)
    width = max((len(name) + len(signature) for name, signature, _ in found), default=0)
    width = min(width, 48)  # a long signature pushes its own summary only
    for name, signature, summary in found:
        called = f"{name}{signature}"
        _print(f"{called.ljust(width)}  {summary}".rstrip())
    return 0


#: What ``pyrokv status`` exits with when the name server cannot be reached (a
#: NameServerUnavailableError exits 1 from every other command, as documented).
STATUS_NO_NAMESERVER = 3
#: The fields of each object ``pyrokv status --json`` prints, in order.
STATUS_FIELDS = (
    "name",
    "address",
    "text",
    "state",
    "reason",
    "pid",
    "buckets",
    "keys",
    "table",
    "table_version",
    "uptime_s",
)


def _version(text: str) -> int:
    """A table version on the command line: 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a table version (0, 1, ...)")
    return int(text)


def _seconds(text: str) -> float:
    """A positive number of seconds on the command line."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _table(args: argparse.Namespace, settings: Settings) -> int:
    """``pyrokv table show`` and ``pyrokv table set``."""
    from .changes import Cluster

    _tls(settings)
    cluster = Cluster(settings.ns, timeout=settings.timeout)
    if args.table_command == "show":
        shown = cluster.table()
        if args.json:
            print(
                json.dumps(
                    {k: shown[k] for k in ("version", "table", "nodes")}, indent=2
                )
            )
        else:
            table = shown["table"]
            if table is None:
                table = "(differs between nodes: each routes by its own)"
            print(f"version {shown['version']}: {table or '(empty)'}")
            for node, version in shown["nodes"].items():
                print(f"  {node}  version {version}")
            for node, why in shown["down"].items():
                print(f"  {node}  down: {why}")
            if not shown["complete"]:
                print(
                    "a change did not complete (or is running): run the same "
                    "'pyrokv table set' again to finish it, or set the previous "
                    "table to undo it"
                )
        return 0 if shown["complete"] and not shown["down"] else 1
    try:
        table = RoutingTable.parse(args.spec)
    except InvalidTableError as exc:
        raise ConfigError(f"SPEC: {exc}") from None
    result = cluster.set_table(
        table,
        expect_version=args.expect_version,
        drop_dead=args.drop_dead,
        timeout=args.timeout,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for move in result["moved"]:
        print(
            f"moved {move['range']}: {move['from']} -> {move['to']}, "
            f"{move['buckets']} buckets, {move['keys']} keys"
        )
    for lost in result["lost"]:
        print(
            f"dropped {lost['range']}: {lost['from']} is down, so its buckets there "
            f"are lost; {lost['to']} owns the range now, empty"
        )
    print(f"table version {result['version']} in {result['seconds']:.2f} s")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    """One row per registered node; exit 0 when all answer, 1 when any is down or
    none is registered, 3 when the name server cannot be reached."""
    from .client import list_nodes

    _tls(settings)
    host, port = settings.ns
    try:
        nodes = list_nodes(settings.ns, settings.timeout)
    except NameServerUnavailableError as exc:
        _report(exc)
        return STATUS_NO_NAMESERVER
    rows = _node_rows(nodes, settings)
    down = [row for row in rows if row["state"] != "alive"]
    pruned: dict[str, bool] = {}
    if args.prune and down:
        try:
            pruned = _prune(down, nodes, settings)
        except NameServerUnavailableError as exc:
            _report(exc)
            return STATUS_NO_NAMESERVER
    if args.json:
        if args.prune:
            for row in rows:
                row["pruned"] = pruned.get(row["name"], False)
        print(
            json.dumps(
                [{k: v for k, v in row.items() if k != "aside"} for row in rows],
                indent=2,
            )
        )
    elif not rows:
        print(f"no nodes registered in the name server at {host}:{port}")
    else:
        _print_status(rows)
        for row in down:
            print(f"{row['name']} is down: {row['reason']}")
        for row in rows:
            if row.get("aside"):
                print(
                    f"{row['name']} keeps {row['aside']} buckets aside that another "
                    "node owns (not served): their owner could not be reached when "
                    f"{row['name']} started; they move at the next table change"
                )
        for row in down:
            if row["name"] not in pruned:
                continue
            if pruned[row["name"]]:
                print(
                    f"pruned {row['name']}: removed its registrations (at "
                    f"{row['address']}) from the name server"
                )
            else:
                print(f"kept {row['name']}: it answers again, or registered anew")
    return 0 if rows and not down else 1


def _node_rows(nodes: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """Ask every node how it is, at once; a row per node (STATUS_FIELDS), by name."""
    from concurrent.futures import ThreadPoolExecutor

    from .client import node_status
    from .directory import Directory

    directory = Directory(settings.ns, settings.timeout)

    def row(item: tuple[str, Any]) -> dict[str, Any]:
        node, uri = item
        status = node_status(node, uri)
        alive = bool(status["alive"])
        text = status.get("text")
        if not alive:  # where it said it serves the text protocol, when it registered
            try:
                found = directory.lookup(node, time.monotonic() + settings.timeout)
            except PyroKVError:
                found = None
            if found is not None and found.text is not None:
                text = f"{found.text[0]}:{found.text[1]}"
        return {
            "name": node,
            "address": status["address"],
            "text": text,
            "state": "alive" if alive else "down",
            "reason": None if alive else status.get("error", "no answer"),
            **{key: status.get(key) if alive else None for key in STATUS_FIELDS[5:]},
            "aside": status.get("aside") if alive else None,  # printed, not in JSON
        }

    if not nodes:
        return []
    with ThreadPoolExecutor(min(len(nodes), 16)) as pool:
        return list(pool.map(row, nodes.items()))


def _prune(
    down: list[dict[str, Any]], nodes: dict[str, Any], settings: Settings
) -> dict[str, bool]:
    """Look again at each node found down; remove the registrations of those still
    down. Returns {node: whether its registrations were removed}."""
    from .naming import remove_node

    again = {
        row["name"]: row
        for row in _node_rows(
            {row["name"]: nodes[row["name"]] for row in down}, settings
        )
    }
    pruned = {}
    for name, row in again.items():
        pruned[name] = row["state"] != "alive" and remove_node(
            *settings.ns, name, nodes[name], settings.timeout
        )
    return pruned


#: The columns of ``pyrokv status``: heading, and the row's field (TABLE last).
_COLUMNS = (
    ("NODE", "name"),
    ("ADDRESS", "address"),
    ("TEXT", "text"),
    ("STATE", "state"),
    ("PID", "pid"),
    ("BUCKETS", "buckets"),
    ("KEYS", "keys"),
    ("TABLE_VERSION", "table_version"),
)


def _print_status(rows: list[dict[str, Any]]) -> None:
    lines: list[list[str]] = [[heading for heading, _ in _COLUMNS]]
    for row in rows:
        lines.append(["-" if row[k] is None else str(row[k]) for _, k in _COLUMNS])
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS))]
    tables = ["TABLE"]
    tables += ["-" if r["table"] is None else r["table"] or "(empty)" for r in rows]
    for line, table in zip(lines, tables, strict=True):
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
        print("  ".join([*cells, table]))


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from .launch import run_up

    logs.configure(settings.get("cluster", "log_level"), "up")
    return run_up(settings)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from .launch import run_demo

    return run_demo()


def _config(args: argparse.Namespace, settings: Settings) -> int:
    print(settings.describe())
    return 0


COMMANDS = {
    "nameserver": _nameserver,
    "node": _node,
    "call": _call,
    "up": _up,
    "demo": _demo,
    "status": _status,
    "config": _config,
    **dict.fromkeys(DIRECT, _direct),
    "tasks": _tasks,
    "table": _table,
}
