"""The ``pyrokv`` command line: ``main(argv) -> exit code``.

Exit codes: 0 success; 1 a pyrokv error (printed as ``pyrokv: ClassName: text`` on
stderr, never a traceback); 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from . import __version__, logs
from .config import Settings, unknown_variables
from .errors import ConfigError, InvalidTableError, ListenError, PyroKVError
from .flags import add_setting_flags, settings_for
from .settings import CONFIG_FLAG, PASSWORD_ENV, known_environment
from .table import check_node_name

__all__ = ["main"]

TASKS_MODULE = "pyrokv.tasks"


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
    p.add_argument(
        "--via",
        metavar="NODE",
        type=_node_name,
        help="node whose router starts the route (default: any live node)",
    )
    add_setting_flags(p, "call")

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
        help="list the registered nodes: address, liveness, table, buckets",
        description="One row per node registered in the name server.",
    )
    add_setting_flags(p, "status")

    p = commands.add_parser(
        "config",
        help="print the effective settings",
        description="Print the settings after defaults, the config file and PYROKV_* "
        "variables are applied.",
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
        print(f"pyrokv: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


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
        raise ListenError(
            f"cannot start the name server on {host}:{port}: {exc.strerror or exc} "
            "(is another one running there, or a cluster of 'pyrokv up'? pick another "
            "port with --port, or as port under [nameserver] in the config file)"
        ) from None
    loop = threading.Thread(target=daemon.requestLoop, daemon=True)
    with StopSignals() as signals:
        loop.start()
        print(f"URI = {uri}", flush=True)
        print(f"READY nameserver {uri.host}:{uri.port}", flush=True)
        try:
            signals.wait()
        finally:
            daemon.shutdown()
            loop.join(timeout=5)
    return 0


def _node(args: argparse.Namespace, settings: Settings) -> int:
    from .node import serve_node

    logs.configure(settings.get("cluster", "log_level"), args.name)
    options = settings.node_options(args.name)
    _check_node_host(args.name, options["host"], settings.ns_host)
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
    return serve_node(args.name, ns=settings.ns, tls=tls, ns_wait=ns_wait, **options)


_LOOPBACK = ("127.", "localhost", "::1")


def _check_node_host(name: str, host: str, ns_host: str) -> None:
    """Refuse a bind address others cannot dial; warn when it cannot leave this host.

    A node registers the address it binds: it is what other nodes connect to.
    """
    if host in ("0.0.0.0", "::", ""):
        raise ConfigError(
            f"node {name!r} cannot register --host {host or repr(host)}: other nodes "
            "would dial that address; give the address they reach this host by"
        )
    if host.startswith(_LOOPBACK) and not ns_host.startswith(_LOOPBACK):
        print(
            f"pyrokv: warning: node {name!r} binds {host} but registers with the name "
            f"server at {ns_host}: nodes on other hosts cannot reach {host}; "
            "give --host the address they reach this host by",
            file=sys.stderr,
            flush=True,
        )


def _warn_if_exposed(
    what: str, host: str, listen: tuple[str, int] | None = None, tls: bool = False
) -> None:
    """Warn on stderr when a service binds beyond this machine without protection."""
    if not host.startswith(_LOOPBACK) and not tls:
        risk = (
            "register or replace node names and so redirect every request"
            if what == "the name server"
            else "read and change every bucket and run allowlisted tasks"
        )
        print(
            f"pyrokv: warning: {what} serves Pyro5 on {host} without TLS: anyone who "
            f"can reach that address can {risk}; use --tls-cert/--tls-key/--tls-ca, "
            "or bind 127.0.0.1",
            file=sys.stderr,
            flush=True,
        )
    if listen is not None and not listen[0].startswith(_LOOPBACK):
        print(
            f"pyrokv: warning: {what} serves the text protocol on "
            f"{listen[0]}:{listen[1]}: it has no authentication and no encryption; "
            "anyone who can reach it can read and change every bucket",
            file=sys.stderr,
            flush=True,
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


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from .client import list_nodes, node_status

    _tls(settings)
    nodes = list_nodes(settings.ns, settings.timeout)
    if not nodes:
        host, port = settings.ns
        print(f"no nodes registered in the name server at {host}:{port}")
        return 0
    rows = [("NODE", "ADDRESS", "STATE", "BUCKETS", "TABLE")]
    for node, uri in nodes.items():
        status = node_status(node, uri)
        rows.append(
            (
                node,
                status["address"],
                "alive" if status["alive"] else "down",
                str(status.get("buckets", "-")),
                status.get("table", "-") or "(empty)",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
            + "  "
            + row[4]
        )
    return 0


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
}
