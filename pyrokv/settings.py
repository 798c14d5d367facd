"""Every setting, declared once: the table that drives the config file, the
environment, the command-line flags, ``pyrokv config`` and the options a node runs with.

A :class:`Setting` names its section and key in the config file, how its text is
read (``parse``) and written back (``show``), its default (from
:mod:`pyrokv.defaults`), and optionally its flag, the commands that take that flag,
and its ``PYROKV_*`` variable. :mod:`pyrokv.config` reads files and the environment
by this table, :mod:`pyrokv.flags` builds each command's flags from it, and
:meth:`pyrokv.config.Settings.node_options` turns it into ``start_node`` keywords.
Adding a node option is one :class:`Setting` here plus its use in ``start_node``.

A ``parse`` function raises ``ValueError`` (or a :class:`PyroKVError`) saying what is
wrong with the text; the caller adds which key, variable or flag it came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .defaults import (
    DEFAULT_ALLOW,
    DEFAULT_CONFIG,
    DEFAULT_EVENT_LOOP,
    DEFAULT_FSYNC,
    DEFAULT_HOP_LIMIT,
    DEFAULT_HOST,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_MESSAGE,
    DEFAULT_NS,
    DEFAULT_NS_WAIT,
    DEFAULT_PORT,
    DEFAULT_TABLE,
    DEFAULT_TIMEOUT,
    DEFAULT_WORKERS,
    EVENT_LOOPS,
    FSYNC_MODES,
)
from .logs import LEVELS
from .naming import parse_address, parse_port
from .runner import check_module_name
from .table import RoutingTable

__all__ = [
    "CLIENT_COMMANDS",
    "CONFIG_ENV",
    "CONFIG_FLAG",
    "CONFIG_HELP",
    "NS",
    "PASSWORD_ENV",
    "PYRO5_COMMANDS",
    "SECTIONS",
    "SETTINGS",
    "Section",
    "Setting",
    "Shorthand",
    "known_environment",
    "section",
    "settings_of",
]

#: The settings file: ``--config FILE`` on every command, else ``$PYROKV_CONFIG``,
#: else ./nameserver.conf when it exists.
CONFIG_FLAG = "--config"
CONFIG_ENV = "PYROKV_CONFIG"
CONFIG_HELP = (
    f"settings file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG} when present)"
)

#: The commands that send requests to a node (``--via NODE``, ``--ns``, ``--timeout``).
CLIENT_COMMANDS = ("call", "create", "put", "get", "delete", "keys", "tasks")
#: The commands that talk Pyro5, and so take the TLS flags.
PYRO5_COMMANDS = (
    "nameserver",
    "node",
    *CLIENT_COMMANDS,
    "up",
    "status",
    "table",
    "config",
)


@dataclass(frozen=True)
class Section:
    """A section of the config file; ``node`` stands for every ``[node NAME]``."""

    name: str
    #: Prefix of its settings' attribute names on Settings (``ns_port``, ``tls_ca``).
    prefix: str = ""
    #: All of its settings or none: one flag of it replaces the whole section, and
    #: ``pyrokv config`` prints every key once any is set.
    together: bool = False
    #: Title of its group in ``--help`` (none: its flags go with the others).
    help: str = ""

    @property
    def title(self) -> str:
        """How the section is written in the file: ``[cluster]``, ``[node NAME]``."""
        return "[node NAME]" if self.name == "node" else f"[{self.name}]"


@dataclass(frozen=True)
class Setting:
    """One setting: where it lives in the config file, how it is read and shown,
    its default, and the flag and environment variable that override it."""

    section: str
    key: str
    #: text -> value; ValueError (or a PyroKVError) saying what is wrong
    parse: Callable[[str], Any]
    default: Any
    #: What it is, for ``--help`` (the default is added from ``default``).
    help: str
    #: value -> text that ``parse`` reads back (for ``pyrokv config`` and the file
    #: that ``pyrokv up`` hands its children); None is never shown.
    show: Callable[[Any], str] = str
    flag: str | None = None
    #: The commands that take ``flag``.
    commands: tuple[str, ...] = ()
    env: str | None = None
    metavar: str | None = None
    #: How ``--help`` calls a default of None ("off").
    unset: str = "none"
    #: A file name: relative to the config file it is in.
    path: bool = False
    #: The flag repeats, and each one adds to the configured value (``--allow``).
    adds: bool = False
    #: A ``[node NAME]`` value that only ``pyrokv up`` serves (``listen``): a node
    #: started by hand takes its flag, else the default.
    up_only: bool = False
    #: Passed to :func:`pyrokv.start_node` as the keyword named ``key``.
    start_node: bool = False
    #: A value of None means this ``[cluster]`` key's value (a node's own table).
    fallback: str | None = None
    #: The flag takes no value and turns the setting on (``--listen-tls``).
    switch: bool = False

    @property
    def dest(self) -> str:
        """Its attribute on the parsed command line: ``node.max_line``."""
        return f"{self.section}.{self.key}"

    def shown_default(self) -> str:
        """The default as ``--help`` and docs/cli.md give it."""
        return self.unset if self.default is None else self.show(self.default)


@dataclass(frozen=True)
class Shorthand:
    """A flag and a variable that set several settings of one section at once
    (``--ns HOST:PORT`` is ``[nameserver] host`` and ``port``)."""

    section: str
    keys: tuple[str, ...]
    #: (text, how the user wrote it) -> one value per key
    parse: Callable[[str, str], tuple[Any, ...]]
    flag: str
    env: str
    commands: tuple[str, ...]
    help: str
    metavar: str
    dest: str


# -- how values are read and written ------------------------------------------------


def _host(text: str) -> str:
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"{text!r} is not a host name or address")
    return text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{value} is not a positive whole number")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a positive number of seconds")
    return value


def _seconds_or_zero(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise ValueError(f"{text!r} is not a number of seconds, 0 or more")
    return value


def _show_seconds(value: float) -> str:
    text = f"{value:g}"
    return text if float(text) == value else repr(value)


def _table(text: str) -> RoutingTable:
    return RoutingTable.parse(text)


def _table_or_none(text: str) -> RoutingTable | None:
    return RoutingTable.parse(text) if text else None


def _show_table(table: RoutingTable) -> str:
    return table.spec()


def _address_or_none(text: str) -> tuple[str, int] | None:
    return parse_address(text) if text else None


def _show_address(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def _allow(text: str) -> tuple[str, ...]:
    modules = [check_module_name(m.strip()) for m in text.split(",") if m.strip()]
    return tuple(dict.fromkeys([*DEFAULT_ALLOW, *modules]))


def _show_allow(modules: tuple[str, ...]) -> str:
    return ", ".join(modules)


def _file_or_none(text: str) -> str | None:
    return text or None


def _fsync(text: str) -> str:
    mode = text.strip().lower()
    if mode not in FSYNC_MODES:
        raise ValueError(f"{text!r} is not an fsync mode: use {', '.join(FSYNC_MODES)}")
    return mode


def _event_loop(text: str) -> str:
    choice = text.strip().lower()
    if choice not in EVENT_LOOPS:
        raise ValueError(f"{text!r} is not an event loop: use {', '.join(EVENT_LOOPS)}")
    return choice


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LEVELS:
        raise ValueError(f"{text!r} is not a log level: use one of {', '.join(LEVELS)}")
    return level


def _switch(text: str) -> bool:
    word = text.strip().lower()
    if word in ("true", "yes", "on", "1"):
        return True
    if word in ("false", "no", "off", "0", ""):
        return False
    raise ValueError(f"{text!r} is not true or false")


def _show_switch(value: bool) -> str:
    return "true" if value else "false"


# -- the table ----------------------------------------------------------------------

SECTIONS = (
    Section("nameserver", prefix="ns_"),
    Section("cluster"),
    Section(
        "tls",
        prefix="tls_",
        together=True,
        help="mutual TLS (all three, or none; default: the config's [tls] section)",
    ),
    Section("node"),
)


def _tls_file(key: str, what: str) -> Setting:
    """A [tls] file: ``--tls-KEY FILE`` on every command that talks Pyro5."""
    return Setting(
        "tls",
        key,
        _file_or_none,
        None,
        what,
        flag=f"--tls-{key}",
        commands=PYRO5_COMMANDS,
        metavar="FILE",
        unset="off",
        path=True,
    )


SETTINGS = (
    Setting(
        "nameserver",
        "host",
        _host,
        DEFAULT_NS[0],
        "address the name server binds; every node and client looks for it there",
        flag="--host",
        commands=("nameserver",),
    ),
    Setting(
        "nameserver",
        "port",
        parse_port,
        DEFAULT_NS[1],
        "its port; 0 = any free port",
        flag="--port",
        commands=("nameserver",),
    ),
    Setting(
        "nameserver",
        "workers",
        _positive,
        DEFAULT_WORKERS,
        "the name server's Pyro5 worker threads; each connection into it holds one",
        flag="--workers",
        commands=("nameserver",),
        metavar="N",
    ),
    Setting(
        "nameserver",
        "max_message",
        _positive,
        DEFAULT_MAX_MESSAGE,
        "largest Pyro5 message the name server accepts, in bytes",
        flag="--max-message",
        commands=("nameserver",),
        metavar="BYTES",
    ),
    Setting(
        "cluster",
        "table",
        _table,
        RoutingTable.parse(DEFAULT_TABLE),
        "every node's routing table unless its own [node NAME] table says otherwise",
        show=_show_table,
        env="PYROKV_TABLE",
    ),
    Setting(
        "cluster",
        "timeout",
        _seconds,
        DEFAULT_TIMEOUT,
        "longest a routed request may take, in seconds",
        show=_show_seconds,
        flag="--timeout",
        commands=("node", *CLIENT_COMMANDS),
        env="PYROKV_TIMEOUT",
        metavar="SECONDS",
        start_node=True,
    ),
    Setting(
        "cluster",
        "hop_limit",
        _positive,
        DEFAULT_HOP_LIMIT,
        "how often a request may be forwarded before it is a RoutingLoopError",
        start_node=True,
    ),
    Setting(
        "cluster",
        "secret_file",
        _file_or_none,
        None,
        "file holding the cluster's secret: nodes that share it open peer links to "
        "each other's text ports (without one, routed text requests go over Pyro5); "
        "'pyrokv up' makes one per cluster",
        flag="--cluster-secret-file",
        commands=("node", "up"),
        env="PYROKV_CLUSTER_SECRET_FILE",
        metavar="FILE",
        unset="none",
        path=True,
        start_node=True,
    ),
    Setting(
        "cluster",
        "ns_wait",
        _seconds_or_zero,
        DEFAULT_NS_WAIT,
        "how long pyrokv node waits for the name server to come up, retrying, "
        "before it gives up, in seconds; 0 = not at all",
        show=_show_seconds,
        flag="--ns-wait",
        commands=("node",),
        env="PYROKV_NS_WAIT",
        metavar="SECONDS",
    ),
    Setting(
        "cluster",
        "log_level",
        _log_level,
        "INFO",
        "how much pyrokv node, nameserver and up log to stderr: DEBUG, INFO, "
        "WARNING or ERROR",
        flag="--log-level",
        commands=("node", "nameserver", "up"),
        env="PYROKV_LOG_LEVEL",
        metavar="LEVEL",
    ),
    _tls_file("cert", "this process's certificate (PEM)"),
    _tls_file("key", "its private key (PEM, unencrypted)"),
    _tls_file("ca", "the CA that signs every peer (PEM)"),
    Setting(
        "node",
        "host",
        _host,
        DEFAULT_HOST,
        "address the node's Pyro5 daemon binds; other nodes dial it there",
        flag="--host",
        commands=("node",),
        start_node=True,
    ),
    Setting(
        "node",
        "port",
        parse_port,
        DEFAULT_PORT,
        "its port; 0 = any free port, which the name server tells the others",
        flag="--port",
        commands=("node",),
        start_node=True,
    ),
    Setting(
        "node",
        "listen",
        _address_or_none,
        None,
        "also serve the text protocol here; port 0 = any free port "
        "([node NAME] listen is for 'pyrokv up' only)",
        show=_show_address,
        flag="--listen",
        commands=("node",),
        metavar="HOST:PORT",
        unset="off",
        up_only=True,
        start_node=True,
    ),
    Setting(
        "node",
        "table",
        _table_or_none,
        None,
        "this node's routing table, e.g. 'a..m=foo, n..z=bar'",
        show=_show_table,
        flag="--table",
        commands=("node",),
        metavar="SPEC",
        unset="the [cluster] table",
        start_node=True,
        fallback="table",
    ),
    Setting(
        "node",
        "allow",
        _allow,
        DEFAULT_ALLOW,
        "also run tasks from MODULE",
        show=_show_allow,
        flag="--allow",
        commands=("node",),
        metavar="MODULE",
        adds=True,
        start_node=True,
    ),
    Setting(
        "node",
        "max_line",
        _positive,
        DEFAULT_MAX_LINE,
        "longest request line of the text protocol, in bytes",
        flag="--max-line",
        commands=("node",),
        metavar="BYTES",
        start_node=True,
    ),
    Setting(
        "node",
        "idle_timeout",
        _seconds,
        DEFAULT_IDLE_TIMEOUT,
        "close text connections idle this long, in seconds",
        show=_show_seconds,
        flag="--idle-timeout",
        commands=("node",),
        metavar="SECONDS",
        start_node=True,
    ),
    Setting(
        "node",
        "workers",
        _positive,
        DEFAULT_WORKERS,
        "Pyro5 worker threads; each connection into the node holds one",
        flag="--workers",
        commands=("node",),
        metavar="N",
        start_node=True,
    ),
    Setting(
        "node",
        "tls_cert",
        _file_or_none,
        None,
        "this node's own certificate (PEM), for Pyro5 and --listen-tls; it names "
        "the node as the DNS name NAME.pyrokv (see docs/security.md)",
        unset="[tls] cert",
        path=True,
    ),
    Setting(
        "node",
        "tls_key",
        _file_or_none,
        None,
        "the private key of tls_cert (PEM, unencrypted)",
        unset="[tls] key",
        path=True,
    ),
    Setting(
        "node",
        "listen_tls",
        _switch,
        False,
        "serve the text protocol over TLS, with the node's certificate",
        show=_show_switch,
        flag="--listen-tls",
        commands=("node",),
        switch=True,
        start_node=True,
    ),
    Setting(
        "node",
        "listen_tls_verify_client",
        _switch,
        False,
        "with --listen-tls, accept only clients showing a certificate signed by "
        "the [tls] CA",
        show=_show_switch,
        flag="--listen-tls-verify-client",
        commands=("node",),
        switch=True,
        start_node=True,
    ),
    Setting(
        "node",
        "password_file",
        _file_or_none,
        None,
        "file holding the text port's password: a client sends AUTH PASSWORD first "
        "(or set $PYROKV_PASSWORD)",
        flag="--password-file",
        commands=("node",),
        metavar="FILE",
        unset="none",
        path=True,
        start_node=True,
    ),
    Setting(
        "node",
        "metrics",
        _address_or_none,
        None,
        "serve Prometheus metrics over HTTP at http://HOST:PORT/metrics (needs "
        "pip install 'pyrokv[metrics]')",
        show=_show_address,
        flag="--metrics",
        commands=("node",),
        metavar="HOST:PORT",
        unset="off",
        start_node=True,
    ),
    Setting(
        "node",
        "data_dir",
        _file_or_none,
        None,
        "keep the node's buckets in this directory (SQLite), loaded at start; "
        "without one the node holds them in memory only",
        flag="--data-dir",
        commands=("node",),
        metavar="DIR",
        unset="none (in memory)",
        path=True,
        start_node=True,
    ),
    Setting(
        "node",
        "fsync",
        _fsync,
        DEFAULT_FSYNC,
        "with a data dir, when a write is acknowledged: always (once on disk), "
        "everysec (once applied; on disk within about a second), no (left to the OS)",
        flag="--fsync",
        commands=("node",),
        metavar="MODE",
        start_node=True,
    ),
    Setting(
        "node",
        "event_loop",
        _event_loop,
        DEFAULT_EVENT_LOOP,
        "the text server's event loop: auto (uvloop when it is installed: "
        "pip install 'pyrokv[fast]'; else asyncio's), asyncio, or uvloop",
        flag="--event-loop",
        commands=("node",),
        metavar="LOOP",
        start_node=True,
    ),
    Setting(
        "node",
        "max_message",
        _positive,
        DEFAULT_MAX_MESSAGE,
        "largest Pyro5 message the node accepts, in bytes (refused from its "
        "header); nodes split their own batches to stay under it",
        flag="--max-message",
        commands=("node",),
        metavar="BYTES",
        start_node=True,
    ),
)

#: ``--ns HOST:PORT`` and ``PYROKV_NS``: [nameserver] host and port in one.
NS = Shorthand(
    section="nameserver",
    keys=("host", "port"),
    parse=parse_address,
    flag="--ns",
    env="PYROKV_NS",
    commands=("node", *CLIENT_COMMANDS, "status", "table", "config"),
    help="the name server",
    metavar="HOST:PORT",
    dest="ns",
)


def section(name: str) -> Section:
    """The section called ``name`` (``node`` for every ``[node NAME]``)."""
    for candidate in SECTIONS:
        if candidate.name == name:
            return candidate
    raise LookupError(f"no section {name!r}")


def settings_of(section_name: str) -> tuple[Setting, ...]:
    """The settings of one section, in the order the file and ``--help`` list them."""
    return tuple(s for s in SETTINGS if s.section == section_name)


#: The text port's password itself (not a file), for ``pyrokv node``; it is never
#: printed, so it is no setting of the file (``password_file`` is).
PASSWORD_ENV = "PYROKV_PASSWORD"


def known_environment() -> tuple[str, ...]:
    """Every ``PYROKV_*`` variable pyrokv reads, sorted."""
    names = {CONFIG_ENV, NS.env, PASSWORD_ENV, *(s.env for s in SETTINGS if s.env)}
    return tuple(sorted(names))
