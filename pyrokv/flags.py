"""The command-line flags of the settings, built from their declarations, and applied.

:func:`add_setting_flags` gives a command ``--config`` and every flag that
:mod:`pyrokv.settings` declares for it, with help and defaults from the declaration;
:func:`settings_for` reads the config file and the environment and applies the
flags given, last. A flag's text is read by the same ``parse`` as the file's: a bad
value (a bad table or module name included) is a usage error naming the flag, and a
bad ``--ns`` a :class:`ConfigError`; both exit 2, as the same value in a config file
does.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .config import Settings, load_settings
from .errors import PyroKVError
from .settings import (
    CONFIG_FLAG,
    CONFIG_HELP,
    NS,
    SECTIONS,
    SETTINGS,
    Setting,
    Shorthand,
    section,
    settings_of,
)

__all__ = ["UP_CHILD", "add_setting_flags", "settings_for"]

#: Hidden flag of ``pyrokv node`` and ``pyrokv nameserver``: ``pyrokv up`` started
#: this process, with the config file it wrote for it. A node then takes every
#: [node NAME] setting from --config, those that serve ``pyrokv up`` only (listen)
#: included; and hints name keys of the config file, not flags ``up`` lacks.
UP_CHILD = "--up-child"
#: The commands that take it.
UP_CHILD_COMMANDS = ("node", "nameserver")


def _parse(
    parser: argparse.ArgumentParser,
    parse: Callable[[str], Any],
    text: str,
    flag: str | None,
) -> Any:
    try:
        return parse(text)
    except (PyroKVError, ValueError) as exc:
        # a bad table (InvalidTableError) or module name (TaskNotAllowedError) too:
        # a usage error (exit 2), as the same value in a config file is a ConfigError
        parser.error(f"argument {flag}: {exc}")


def _help(setting: Setting | Shorthand) -> str:
    """A flag's ``--help``: what it sets, then where the value comes from without it."""
    if isinstance(setting, Shorthand):
        keys = " and ".join(setting.keys)
        defaults = {s.key: s for s in settings_of(setting.section)}
        shown = ":".join(defaults[key].shown_default() for key in setting.keys)
        chain = [f"${setting.env}", f"{section(setting.section).title} {keys}", shown]
        return f"{setting.help} (default: {', else '.join(chain)})"
    at = f"{section(setting.section).title} {setting.key}"
    if setting.adds:
        return (
            f"{setting.help} (repeatable; adds to {at}; "
            f"{setting.shown_default()} always)"
        )
    chain = [f"${setting.env}"] if setting.env else []
    if not setting.up_only:
        chain.append(at)
    chain.append(setting.shown_default())
    return f"{setting.help} (default: {', else '.join(chain)})"


class _SettingFlag(argparse.Action):
    """Reads the flag of a :class:`Setting` with its ``parse``, as it is met."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        self.setting: Setting = kwargs.pop("setting")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if self.setting.switch:  # a flag without a value: it turns the setting on
            value: Any = True
        else:
            value = _parse(parser, self.setting.parse, values, option_string)
        if self.setting.adds:
            value = [*(getattr(namespace, self.dest) or []), value]
        setattr(namespace, self.dest, value)


class _ShorthandFlag(argparse.Action):
    """Reads ``--ns HOST:PORT``; a bad one is a ConfigError naming the flag."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        self.shorthand: Shorthand = kwargs.pop("shorthand")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, self.shorthand.parse(values, str(option_string)))


def add_setting_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Give ``command``'s parser ``--config`` and every setting flag declared for it."""
    parser.add_argument(CONFIG_FLAG, metavar="FILE", help=CONFIG_HELP)
    if command in NS.commands:
        parser.add_argument(
            NS.flag,
            metavar=NS.metavar,
            dest=NS.dest,
            action=_ShorthandFlag,
            shorthand=NS,
            help=_help(NS),
        )
    groups: dict[str, Any] = {}
    for s in SETTINGS:
        if s.flag is None or command not in s.commands:
            continue
        target: Any = parser
        title = section(s.section).help
        if title:
            if s.section not in groups:
                groups[s.section] = parser.add_argument_group(title)
            target = groups[s.section]
        if s.switch:
            target.add_argument(
                s.flag,
                nargs=0,
                dest=s.dest,
                action=_SettingFlag,
                setting=s,
                help=_help(s),
            )
            continue
        target.add_argument(
            s.flag,
            metavar=s.metavar or s.key.upper(),
            dest=s.dest,
            action=_SettingFlag,
            setting=s,
            help=_help(s),
        )
    if command in UP_CHILD_COMMANDS:
        parser.add_argument(UP_CHILD, action="store_true", help=argparse.SUPPRESS)


def settings_for(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Settings:
    """The settings ``args.command`` runs with: defaults, then the config file, then
    the ``PYROKV_*`` variables (``environ``, default ``os.environ``), then its flags.

    For ``pyrokv node NAME`` the node flags set ``[node NAME]``; without the hidden
    ``--up-child`` its section's ``listen`` is not used (see
    :meth:`Settings.for_node_by_hand`).
    """
    settings = load_settings(args.config, environ)
    name = getattr(args, "name", None)  # pyrokv node NAME
    if name is not None and not args.up_child:
        settings = settings.for_node_by_hand(name)
    given = getattr(args, NS.dest, None)
    if given is not None:
        for key, value in zip(NS.keys, given, strict=True):
            settings = settings.set(NS.section, key, value, f"flag {NS.flag}")
    for sec in SECTIONS:
        flags = [s for s in settings_of(sec.name) if args.command in s.commands]
        set_by = [s for s in flags if getattr(args, s.dest, None) is not None]
        if not set_by:
            continue
        target = f"node {name}" if sec.name == "node" else sec.name
        for s in flags if sec.together else set_by:
            # one flag of a section that goes together (tls) replaces all of it
            value = getattr(args, s.dest, None)
            if s.adds and value is not None:
                value = tuple(
                    dict.fromkeys(itertools.chain(settings.get(target, s.key), *value))
                )
            origin = f"flag {(s if s in set_by else set_by[0]).flag}"
            settings = settings.set(target, s.key, value, origin)
    return settings
