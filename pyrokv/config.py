"""Settings: the built-in defaults, then nameserver.conf, then PYROKV_* variables.

What there is to set is declared once, in :mod:`pyrokv.settings`; this module reads
a config file and the environment by that table and holds the result. The command
line applies its flags last, so the precedence is: flag, environment, config file,
built-in default. A bad value raises :class:`ConfigError` naming the key and where
it came from; every value remembers where it came from (:meth:`Settings.origin`).
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .defaults import DEFAULT_CONFIG, DEFAULT_NODES
from .errors import ConfigError, PyroKVError
from .settings import (
    CONFIG_ENV,
    NS,
    SECTIONS,
    SETTINGS,
    Setting,
    known_environment,
    section,
    settings_of,
)
from .table import check_node_name

__all__ = [
    "DEFAULT_CONFIG",
    "NodeSettings",
    "Settings",
    "load_settings",
    "save_settings",
    "unknown_variables",
]

#: Where a value not set anywhere comes from.
DEFAULT_ORIGIN = "default"
#: The ``source`` of settings read from no config file.
BUILT_IN = "built-in defaults"

_NODE_SETTINGS = {s.key: s for s in settings_of("node")}
#: Settings attribute -> (section, key): ns_host, table, tls_cert ...
_ATTRIBUTES = {
    f"{section(s.section).prefix}{s.key}": (s.section, s.key)
    for s in SETTINGS
    if s.section != "node"
}


class NodeSettings:
    """One ``[node NAME]`` section: every node setting, defaults filled in.

    Read values as attributes (``node.listen``, ``node.workers``) or from
    ``node.values``. ``pyrokv node NAME`` takes all of them but ``listen`` from its
    section (see :meth:`Settings.for_node_by_hand`); ``pyrokv up`` takes them all.
    """

    __slots__ = ("name", "values")
    name: str
    values: Mapping[str, Any]

    def __init__(self, name: str, **values: Any) -> None:
        unknown = sorted(set(values) - set(_NODE_SETTINGS))
        if unknown:
            raise TypeError(f"no node setting {unknown[0]!r}")
        object.__setattr__(self, "name", name)
        full = {key: values.get(key, s.default) for key, s in _NODE_SETTINGS.items()}
        object.__setattr__(self, "values", MappingProxyType(full))

    def __getattr__(self, key: str) -> Any:
        if key in _NODE_SETTINGS and key not in NodeSettings.__slots__:
            return self.values[key]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    def __setattr__(self, key: str, value: object) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {key!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeSettings):
            return NotImplemented
        return (self.name, dict(self.values)) == (other.name, dict(other.values))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"NodeSettings({self.name!r}, {values})"

    def replace(self, **values: Any) -> NodeSettings:
        """A copy with some values changed."""
        return NodeSettings(self.name, **{**self.values, **values})


def _default_values() -> Mapping[tuple[str, str], Any]:
    return MappingProxyType(
        {(s.section, s.key): s.default for s in SETTINGS if s.section != "node"}
    )


def _default_nodes() -> tuple[NodeSettings, ...]:
    return tuple(NodeSettings(name, listen=listen) for name, listen in DEFAULT_NODES)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The effective settings of one pyrokv command.

    ``values`` holds every setting of [nameserver], [cluster] and [tls] by
    (section, key); ``nodes`` the [node NAME] sections (the file's, else the
    built-in foo and bar). Read them as ``settings.get("cluster", "timeout")`` or
    as attributes: ``ns_host``, ``ns_port``, ``table``, ``timeout``, ``hop_limit``,
    ``tls_cert``, ``tls_key``, ``tls_ca``.
    """

    values: Mapping[tuple[str, str], Any] = dataclasses.field(
        default_factory=_default_values
    )
    nodes: tuple[NodeSettings, ...] = dataclasses.field(default_factory=_default_nodes)
    #: The config file read, or "built-in defaults".
    source: str = BUILT_IN
    #: "[section] key" -> where its value came from; absent: the default.
    origins: Mapping[str, str] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )

    def __getattr__(self, name: str) -> Any:
        if name in _ATTRIBUTES:
            return self.values[_ATTRIBUTES[name]]
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}"
        )

    @property
    def ns(self) -> tuple[str, int]:
        """The name server as (host, port)."""
        return self.get("nameserver", "host"), self.get("nameserver", "port")

    def get(self, section_name: str, key: str) -> Any:
        """One value; ``section_name`` is ``nameserver``, ``cluster``, ``tls`` or
        ``node NAME``."""
        if section_name.startswith("node "):
            return self.node(section_name[len("node ") :]).values[key]
        return self.values[(section_name, key)]

    def origin(self, section_name: str, key: str) -> str:
        """Where a value came from: ``default``, ``file PATH``,
        ``environment PYROKV_NS`` or ``flag --ns``."""
        return self.origins.get(f"[{section_name}] {key}", DEFAULT_ORIGIN)

    def set(self, section_name: str, key: str, value: Any, origin: str) -> Settings:
        """A copy with one value changed, remembering where it came from."""
        origins = {**self.origins, f"[{section_name}] {key}": origin}
        if not section_name.startswith("node "):
            if (section_name, key) not in self.values:
                raise KeyError(f"no setting {key!r} in [{section_name}]")
            values = MappingProxyType({**self.values, (section_name, key): value})
            return dataclasses.replace(self, values=values, origins=origins)
        name = section_name[len("node ") :]
        node = self.node(name).replace(**{key: value})
        nodes = [node if n.name == name else n for n in self.nodes]
        if all(n.name != name for n in self.nodes):  # a node the file does not name
            nodes.append(node)
        return dataclasses.replace(self, nodes=tuple(nodes), origins=origins)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed, by attribute name (``timeout=2``),
        or ``nodes`` or ``source``."""
        settings = self
        for name, value in changes.items():
            if name in _ATTRIBUTES:
                settings = settings.set(*_ATTRIBUTES[name], value, "replace()")
            else:
                settings = dataclasses.replace(settings, **{name: value})
        return settings

    def node(self, name: str) -> NodeSettings:
        """The ``[node NAME]`` settings, or the defaults for a node not in the file."""
        for node in self.nodes:
            if node.name == name:
                return node
        return NodeSettings(name)

    def for_node_by_hand(self, name: str) -> Settings:
        """The settings as ``pyrokv node NAME`` run by hand sees them: the values of
        its section that serve ``pyrokv up`` only (``listen``) back at their defaults.
        """
        settings = self
        for s in _NODE_SETTINGS.values():
            if s.up_only:
                settings = settings.set(
                    f"node {name}", s.key, s.default, DEFAULT_ORIGIN
                )
        return settings

    def node_options(self, name: str) -> dict[str, Any]:
        """The keyword arguments of :func:`pyrokv.start_node` for node ``name``:
        every setting declared ``start_node``, a node's table falling back to the
        [cluster] table."""
        node = self.node(name)
        options = {}
        for s in SETTINGS:
            if not s.start_node:
                continue
            value = (
                node.values[s.key]
                if s.section == "node"
                else self.get(s.section, s.key)
            )
            if value is None and s.fallback is not None:
                value = self.get("cluster", s.fallback)
            options[s.key] = value
        return options

    def describe(self, absolute_paths: bool = False) -> str:
        """The effective settings as ``pyrokv config`` prints them: a config file
        that :func:`load_settings` reads back to the same values (with
        ``absolute_paths``, wherever the file is put), each value followed by a
        comment saying where it came from (:meth:`origin`)."""
        blocks = []
        for sec in SECTIONS:
            if sec.name == "node":
                continue
            values = {
                s: (self.values[(s.section, s.key)], self.origin(s.section, s.key))
                for s in settings_of(sec.name)
            }
            if sec.together and all(v is None for v, _ in values.values()):
                continue
            blocks.append(_block(f"[{sec.name}]", values, sec.together, absolute_paths))
        for node in self.nodes:
            at = f"node {node.name}"
            values = {
                s: (node.values[key], self.origin(at, key))
                for key, s in _NODE_SETTINGS.items()
            }
            blocks.append(_block(f"[{at}]", values, False, absolute_paths))
        source = f"none ({BUILT_IN})" if self.source == BUILT_IN else self.source
        head = (
            f"# config file: {source}\n"
            "# after each value: where it came from (flag, environment, file, default)\n"
        )
        return head + "\n\n".join(blocks)


def _block(
    title: str,
    values: Mapping[Setting, tuple[Any, str]],
    together: bool,
    absolute: bool,
) -> str:
    lines = [title]
    for s, (value, origin) in values.items():
        if value is None:
            if together:
                lines.append(f"{s.key} =   # {origin}")
            continue
        text = s.show(value)
        if s.path and absolute:
            text = os.path.abspath(text)
        lines.append(f"{s.key} = {text}  # {origin}")
    return "\n".join(lines)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read the config file (``path``, else ``$PYROKV_CONFIG``, else ./nameserver.conf
    if present), then the ``PYROKV_*`` environment variables (an unknown one is
    ignored: see :func:`unknown_variables`)."""
    environ = os.environ if environ is None else environ
    settings = Settings()
    from_environment = False
    if path is None:
        path = environ.get(CONFIG_ENV) or None
        from_environment = path is not None
        if path is None and Path(DEFAULT_CONFIG).is_file():
            path = DEFAULT_CONFIG
    if path is not None:
        try:
            settings = _read_file(Path(path), settings)
        except ConfigError as exc:
            if not from_environment:
                raise
            # say where the name came from: the variable may be long forgotten
            raise ConfigError(
                f"{exc} (the file named by ${CONFIG_ENV}; fix it, or unset "
                f"{CONFIG_ENV})"
            ) from None
    if NS.env in environ:
        raw = environ[NS.env]
        values = _value(
            NS.env, "the environment", raw, lambda t: NS.parse(t, "address")
        )
        for key, value in zip(NS.keys, values, strict=True):
            settings = settings.set(NS.section, key, value, f"environment {NS.env}")
    for s in SETTINGS:
        if s.env is not None and s.env in environ:
            value = _value(s.env, "the environment", environ[s.env], s.parse)
            settings = settings.set(s.section, s.key, value, f"environment {s.env}")
    return settings


def unknown_variables(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The ``PYROKV_*`` variables in ``environ`` (default ``os.environ``) that pyrokv
    does not read, sorted: :func:`load_settings` ignores them, and the command line
    warns about them once (a typo, or a variable of a newer pyrokv)."""
    environ = os.environ if environ is None else environ
    known = known_environment()
    return tuple(
        sorted(k for k in environ if k.startswith("PYROKV_") and k not in known)
    )


def save_settings(settings: Settings, path: str | os.PathLike[str]) -> None:
    """Write ``settings`` to ``path`` as a config file that :func:`load_settings`
    reads back to the same values (file names made absolute), readable and
    writable by this user only (mode 0600), replacing any file there at once."""
    text = settings.describe(absolute_paths=True) + "\n"
    partial = f"{os.fspath(path)}.partial"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(text)
    os.replace(partial, path)


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
    origin = f"file {where}"
    settings = dataclasses.replace(settings, source=where)
    nodes: list[NodeSettings] = []
    node_origins: dict[str, str] = {}
    for title in parser.sections():
        kind = "node" if title.startswith("node ") or title == "node" else title
        if kind not in {sec.name for sec in SECTIONS}:
            known = ", ".join(sec.title for sec in SECTIONS)
            known = " or ".join(known.rsplit(", ", 1))
            raise ConfigError(f"unknown section [{title}] in {where}: use {known}")
        at = f"[{title}] of {where}"
        declared = {s.key: s for s in settings_of(kind)}
        items = dict(parser.items(title))
        for key in items:
            if key not in declared:
                raise ConfigError(
                    f"unknown key {key!r} in [{title}] of {where}: known keys are "
                    f"{', '.join(sorted(declared))}"
                )
        values = {
            key: _value(key, at, raw, declared[key].parse) for key, raw in items.items()
        }
        for key, value in values.items():
            if declared[key].path and value is not None:
                # relative to the config file, so one file works from anywhere
                values[key] = str(path.parent / value)
        if kind == "node":
            name = _value("section name", at, title[len("node") :], check_node_name)
            nodes.append(NodeSettings(name, **values))
            node_origins.update({f"[node {name}] {key}": origin for key in values})
        else:
            for key, value in values.items():
                settings = settings.set(kind, key, value, origin)
    if nodes:  # a file without [node NAME] sections keeps the default nodes
        origins = {**settings.origins, **node_origins}
        settings = dataclasses.replace(settings, nodes=tuple(nodes), origins=origins)
    return settings


def _value(key: str, where: str, raw: str, convert: Callable[[str], Any]) -> Any:
    try:
        return convert(raw.strip())
    except (PyroKVError, ValueError) as exc:
        raise ConfigError(f"bad value for {key} in {where}: {exc}") from None
