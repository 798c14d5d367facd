"""Settings: every default in one place, then nameserver.conf, then PYROKV_* variables.

The command line applies its flags last, so the precedence is: flag, environment,
config file, built-in default. A bad value raises :class:`ConfigError` naming the key
and where it came from.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .defaults import (
    DEFAULT_ALLOW,
    DEFAULT_CONFIG,
    DEFAULT_HOP_LIMIT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_LINE,
    DEFAULT_TABLE,
    DEFAULT_TIMEOUT,
    DEFAULT_WORKERS,
)
from .errors import ConfigError, PyroKVError
from .naming import parse_address, parse_port
from .runner import check_module_name
from .table import RoutingTable, check_node_name

__all__ = ["DEFAULT_CONFIG", "NodeSettings", "Settings", "load_settings"]


_ENV = {
    "PYROKV_CONFIG": "config file to read instead of ./nameserver.conf",
    "PYROKV_NS": "name server as HOST:PORT",
    "PYROKV_TABLE": "default routing table, text form",
    "PYROKV_TIMEOUT": "seconds a routed request may take",
}


@dataclasses.dataclass(frozen=True)
class NodeSettings:
    """One ``[node NAME]`` section: how ``pyrokv up`` starts that node.

    ``pyrokv node NAME`` reads host, port, table, allow, max_line and idle_timeout
    from it too; ``listen`` only from its own flag, so a node started by hand
    serves the text protocol only when asked to.
    """

    name: str
    host: str = "127.0.0.1"
    port: int = 0
    listen: tuple[str, int] | None = None
    table: RoutingTable | None = None
    allow: tuple[str, ...] = DEFAULT_ALLOW
    max_line: int = DEFAULT_MAX_LINE
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    workers: int = DEFAULT_WORKERS


@dataclasses.dataclass(frozen=True)
class Settings:
    """The effective settings of one pyrokv command."""

    ns_host: str = "127.0.0.1"
    ns_port: int = 9090
    table: RoutingTable = dataclasses.field(
        default_factory=lambda: RoutingTable.parse(DEFAULT_TABLE)
    )
    timeout: float = DEFAULT_TIMEOUT
    hop_limit: int = DEFAULT_HOP_LIMIT
    nodes: tuple[NodeSettings, ...] = (
        NodeSettings("foo", listen=("127.0.0.1", 4040)),
        NodeSettings("bar", listen=("127.0.0.1", 4041)),
    )
    source: str = "built-in defaults"
    #: [tls] cert, key, ca: this process's certificate, key and the cluster's CA
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None

    @property
    def ns(self) -> tuple[str, int]:
        """The name server as (host, port)."""
        return self.ns_host, self.ns_port

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (how flags are applied)."""
        return dataclasses.replace(self, **changes)

    def node(self, name: str) -> NodeSettings:
        """The ``[node NAME]`` settings, or the defaults for a node not in the file."""
        for node in self.nodes:
            if node.name == name:
                return node
        return NodeSettings(name)

    def describe(self) -> str:
        """The effective settings as ``pyrokv config`` prints them."""
        lines = [
            f"# from: {self.source}",
            "[nameserver]",
            f"host = {self.ns_host}",
            f"port = {self.ns_port}",
            "",
            "[cluster]",
            f"table = {self.table.spec()}",
            f"timeout = {self.timeout:g}",
            f"hop_limit = {self.hop_limit}",
        ]
        if self.tls_cert or self.tls_key or self.tls_ca:
            lines += [
                "",
                "[tls]",
                f"cert = {self.tls_cert or ''}",
                f"key = {self.tls_key or ''}",
                f"ca = {self.tls_ca or ''}",
            ]
        for node in self.nodes:
            lines += [
                "",
                f"[node {node.name}]",
                f"host = {node.host}",
                f"port = {node.port}",
            ]
            if node.listen:
                lines.append(f"listen = {node.listen[0]}:{node.listen[1]}")
            if node.table is not None:
                lines.append(f"table = {node.table.spec()}")
            lines.append(f"allow = {', '.join(node.allow)}")
            lines.append(f"max_line = {node.max_line}")
            lines.append(f"idle_timeout = {node.idle_timeout:g}")
            lines.append(f"workers = {node.workers}")
        return "\n".join(lines)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read the config file (``path``, else ``$PYROKV_CONFIG``, else ./nameserver.conf
    if present), then the ``PYROKV_*`` environment variables."""
    environ = os.environ if environ is None else environ
    for key in environ:
        if key.startswith("PYROKV_") and key not in _ENV:
            known = ", ".join(sorted(_ENV))
            raise ConfigError(
                f"unknown environment variable {key}: pyrokv reads {known}"
            )
    settings = Settings()
    if path is None:
        path = environ.get("PYROKV_CONFIG") or None
        if path is None and Path(DEFAULT_CONFIG).is_file():
            path = DEFAULT_CONFIG
    if path is not None:
        settings = _read_file(Path(path), settings)
    if "PYROKV_NS" in environ:
        host, port = _value(
            "PYROKV_NS", "the environment", environ["PYROKV_NS"], _address
        )
        settings = settings.replace(ns_host=host, ns_port=port)
    if "PYROKV_TABLE" in environ:
        table = _value(
            "PYROKV_TABLE",
            "the environment",
            environ["PYROKV_TABLE"],
            RoutingTable.parse,
        )
        settings = settings.replace(table=table)
    if "PYROKV_TIMEOUT" in environ:
        timeout = _value(
            "PYROKV_TIMEOUT", "the environment", environ["PYROKV_TIMEOUT"], _seconds
        )
        settings = settings.replace(timeout=timeout)
    return settings


def _read_file(path: Path, settings: Settings) -> Settings:
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=("#", ";"), default_section="\0"
    )
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    where = str(path)
    changes: dict[str, Any] = {"source": where}
    nodes = []
    for section in parser.sections():
        items = dict(parser.items(section))
        if section == "nameserver":
            _known(items, {"host", "port"}, section, where)
            if "host" in items:
                changes["ns_host"] = _value(
                    "host", f"[{section}] of {where}", items["host"], _host
                )
            if "port" in items:
                changes["ns_port"] = _value(
                    "port", f"[{section}] of {where}", items["port"], parse_port
                )
        elif section == "cluster":
            _known(items, {"table", "timeout", "hop_limit"}, section, where)
            at = f"[{section}] of {where}"
            if "table" in items:
                changes["table"] = _value(
                    "table", at, items["table"], RoutingTable.parse
                )
            if "timeout" in items:
                changes["timeout"] = _value("timeout", at, items["timeout"], _seconds)
            if "hop_limit" in items:
                changes["hop_limit"] = _value(
                    "hop_limit", at, items["hop_limit"], _positive
                )
        elif section == "tls":
            _known(items, {"cert", "key", "ca"}, section, where)
            base = path.parent
            for key in ("cert", "key", "ca"):
                if items.get(key, "").strip():
                    # relative to the config file, so one file works from anywhere
                    changes[f"tls_{key}"] = str(base / items[key].strip())
        elif section.startswith("node ") or section == "node":
            nodes.append(_node(section, items, where))
        else:
            raise ConfigError(
                f"unknown section [{section}] in {where}: use [nameserver], [cluster], "
                "[tls] or [node NAME]"
            )
    if nodes:  # a file without [node NAME] sections keeps the default nodes
        changes["nodes"] = tuple(nodes)
    return settings.replace(**changes)


def _node(section: str, items: dict[str, str], where: str) -> NodeSettings:
    at = f"[{section}] of {where}"
    name = _value("section name", at, section[len("node") :].strip(), check_node_name)
    _known(
        items,
        {
            "host",
            "port",
            "listen",
            "table",
            "allow",
            "max_line",
            "idle_timeout",
            "workers",
        },
        section,
        where,
    )
    fields: dict[str, Any] = {"name": name}
    if "host" in items:
        fields["host"] = _value("host", at, items["host"], _host)
    if "port" in items:
        fields["port"] = _value("port", at, items["port"], parse_port)
    if items.get("listen", "").strip():
        fields["listen"] = _value("listen", at, items["listen"], _address)
    if items.get("table", "").strip():
        fields["table"] = _value("table", at, items["table"], RoutingTable.parse)
    if "max_line" in items:
        fields["max_line"] = _value("max_line", at, items["max_line"], _positive)
    if "idle_timeout" in items:
        fields["idle_timeout"] = _value(
            "idle_timeout", at, items["idle_timeout"], _seconds
        )
    if "workers" in items:
        fields["workers"] = _value("workers", at, items["workers"], _positive)
    if "allow" in items:
        modules = [m.strip() for m in items["allow"].split(",") if m.strip()]
        fields["allow"] = tuple(
            _value("allow", at, m, check_module_name)
            for m in [*DEFAULT_ALLOW, *modules]
        )
    return NodeSettings(**fields)


def _known(items: dict[str, str], known: set[str], section: str, where: str) -> None:
    for key in items:
        if key not in known:
            raise ConfigError(
                f"unknown key {key!r} in [{section}] of {where}: known keys are "
                f"{', '.join(sorted(known))}"
            )


def _value(key: str, where: str, raw: str, convert: Any) -> Any:
    try:
        return convert(raw.strip())
    except (PyroKVError, ValueError) as exc:
        raise ConfigError(f"bad value for {key} in {where}: {exc}") from None


def _host(raw: str) -> str:
    if not raw or any(c.isspace() for c in raw):
        raise ValueError(f"{raw!r} is not a host name or address")
    return raw


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError(f"{value} is not a positive whole number")
    return value


def _seconds(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{raw!r} is not a positive number of seconds")
    return value


def _address(raw: str) -> tuple[str, int]:
    return parse_address(raw)
