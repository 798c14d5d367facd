"""Every declared setting reaches the file, the environment, its flags, pyrokv config,
the docs and the node, from its one declaration."""

from __future__ import annotations

import configparser
import inspect
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from pyrokv import RoutingTable, start_node
from pyrokv.cli import build_parser, main
from pyrokv.config import (
    NodeSettings,
    Settings,
    load_settings,
    save_settings,
    unknown_variables,
)
from pyrokv.flags import settings_for
from pyrokv.settings import (
    NS,
    SECTIONS,
    SETTINGS,
    Setting,
    known_environment,
    section,
)

ROOT = Path(__file__).resolve().parent.parent

#: Three texts per setting, none its default: the file's, the environment's, the flag's.
SAMPLES: dict[str, tuple[str, str, str]] = {
    "nameserver.host": ("127.0.0.7", "127.0.0.8", "127.0.0.9"),
    "nameserver.port": ("7001", "7002", "7003"),
    "nameserver.workers": ("7", "8", "9"),
    "nameserver.max_message": ("100000", "200000", "300000"),
    "cluster.table": ("a..z=foo", "a..z=bar", "a..z=baz"),
    "cluster.timeout": ("2.5", "3", "4"),
    "cluster.hop_limit": ("3", "4", "5"),
    "cluster.secret_file": ("/etc/a.secret", "/etc/b.secret", "/etc/c.secret"),
    "cluster.log_level": ("DEBUG", "WARNING", "ERROR"),
    "cluster.ns_wait": ("10", "20", "0"),
    "tls.cert": ("/etc/a.pem", "/etc/b.pem", "/etc/c.pem"),
    "tls.key": ("/etc/a.key", "/etc/b.key", "/etc/c.key"),
    "tls.ca": ("/etc/ca-a.pem", "/etc/ca-b.pem", "/etc/ca-c.pem"),
    "node.host": ("127.0.0.5", "127.0.0.6", "127.0.0.4"),
    "node.port": ("5001", "5002", "5003"),
    "node.listen": ("127.0.0.1:4997", "127.0.0.1:4998", "127.0.0.1:4999"),
    "node.table": ("a..m=x, n..z=y", "a..z=x", "a..z=y"),
    "node.allow": ("json", "os.path", "string"),
    "node.max_line": ("100", "200", "300"),
    "node.idle_timeout": ("1.5", "2.5", "3.5"),
    "node.workers": ("4", "5", "6"),
    "node.max_message": ("400000", "500000", "600000"),
    "node.metrics": ("127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"),
    "node.tls_cert": ("/etc/n-a.pem", "/etc/n-b.pem", "/etc/n-c.pem"),
    "node.tls_key": ("/etc/n-a.key", "/etc/n-b.key", "/etc/n-c.key"),
    # switches: the flag takes no value and turns the setting on
    "node.listen_tls": ("true", "true", "true"),
    "node.listen_tls_verify_client": ("yes", "yes", "yes"),
    "node.password_file": ("/etc/a.pw", "/etc/b.pw", "/etc/c.pw"),
    "node.data_dir": ("/var/a", "/var/b", "/var/c"),
    # two values besides the default: the file's, and the flag's (no variable)
    "node.fsync": ("always", "always", "no"),
    "node.event_loop": ("asyncio", "asyncio", "uvloop"),
}


def sample_config(path: Path, which: int = 0) -> Path:
    """A config file that gives every declared setting its sample; node x and y."""
    lines: dict[str, list[str]] = {}
    for s in SETTINGS:
        titles = ["node x", "node y"] if s.section == "node" else [s.section]
        for title in titles:
            lines.setdefault(title, []).append(f"{s.key} = {SAMPLES[s.dest][which]}")
    path.write_text(
        "".join(f"[{t}]\n" + "\n".join(ls) + "\n" for t, ls in lines.items())
    )
    return path


def value(s: Setting, which: int) -> Any:
    """The sample's value, as the setting reads it."""
    return s.parse(SAMPLES[s.dest][which])


def test_every_setting_has_samples_and_none_is_its_default() -> None:
    """The samples cover exactly the declared settings and differ from the defaults."""
    assert set(SAMPLES) == {s.dest for s in SETTINGS}
    for s in SETTINGS:
        values = [value(s, i) for i in range(3)]
        assert s.default not in values, s.dest
        # a switch has one value besides its default: the one its flag sets; a
        # choice of three (fsync, event_loop) two
        choices = ("node.fsync", "node.event_loop")
        distinct = 1 if s.switch else 2 if s.dest in choices else 3
        assert len({s.show(v) for v in values}) == distinct, s.dest


def test_every_setting_is_printed_by_pyrokv_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pyrokv config prints each declared setting in its section, as the file gave it."""
    conf = sample_config(tmp_path / "c.conf")
    assert main(["config", "--config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# config file: {conf}\n")
    printed = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=("#",), default_section="\0"
    )
    printed.read_string(out)
    assert printed.sections() == ["nameserver", "cluster", "tls", "node x", "node y"]
    for s in SETTINGS:
        for title in ["node x", "node y"] if s.section == "node" else [s.section]:
            assert printed[title][s.key] == s.show(value(s, 0)), s.dest
    values = [line for line in out.splitlines() if " = " in line]
    assert values and all(line.endswith(f"  # file {conf}") for line in values)


def test_every_flag_is_in_the_help_of_its_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each declared flag, with its default, is in --help of every command that takes it."""
    commands = {c for s in SETTINGS for c in s.commands} | set(NS.commands)
    # a command with actions (table show, table set) takes its flags on each action
    actions = {"table": ["show", "set"]}
    for command, action in sorted(
        (c, a) for c in commands for a in actions.get(c, [None])
    ):
        with pytest.raises(SystemExit):
            main([command, *([action] if action else []), "--help"])
        text = " ".join(capsys.readouterr().out.split())
        here = [s for s in SETTINGS if command in s.commands]
        for s in here:
            shown = s.flag if s.switch else f"{s.flag} {s.metavar or s.key.upper()}"
            assert shown in text, s.dest
            assert s.shown_default() in text, s.dest
        own = {"--timeout"} if action == "set" else set()  # the change's own limit
        for flag in {s.flag for s in SETTINGS} - {s.flag for s in here} - own:
            assert f"{flag} " not in text, (command, flag)
        assert (f"{NS.flag} HOST:PORT" in text) == (command in NS.commands)


def test_every_variable_is_read_and_no_other() -> None:
    """Each declared PYROKV_* variable sets its setting; an unknown one is ignored."""
    assert known_environment() == (
        "PYROKV_CLUSTER_SECRET_FILE",
        "PYROKV_CONFIG",
        "PYROKV_LOG_LEVEL",
        "PYROKV_NS",
        "PYROKV_NS_WAIT",
        "PYROKV_PASSWORD",
        "PYROKV_TABLE",
        "PYROKV_TIMEOUT",
    )
    for s in SETTINGS:
        if s.env is not None:
            settings = load_settings(os.devnull, {s.env: SAMPLES[s.dest][1]})
            assert settings.get(s.section, s.key) == value(s, 1)
            assert settings.origin(s.section, s.key) == f"environment {s.env}"
    assert load_settings(os.devnull, {"PYROKV_NOPE": "1"}).values == Settings().values
    assert unknown_variables({"PYROKV_NOPE": "1", "PYROKV_NS": "h:1"}) == (
        "PYROKV_NOPE",
    )


def cell_text(cell: str) -> str:
    """A markdown table cell without its code quotes."""
    return cell.replace("`", "").strip()


def test_the_docs_table_lists_every_setting_with_its_default() -> None:
    """docs/cli.md's settings table names each setting's key, flag, variable and default."""
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text.split("## Settings and their precedence")[1].split("\n## ")[0]
    rows = [
        [cell_text(c) for c in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    assert rows[0] == ["setting", "flag", "environment", "config file", "default"]
    for s in SETTINGS:
        title = section(s.section).title
        row = next(
            (r for r in rows if title in r[3] and re.search(rf"\b{s.key}\b", r[3])),
            None,
        )
        assert row is not None, f"{title} {s.key} is not in docs/cli.md"
        if s.flag is not None:
            assert s.flag in row[1], s.dest
        if s.env is not None:
            assert s.env in row[2], s.dest
        if s.default is not None:
            assert s.shown_default() in row[4], s.dest
    assert any(NS.flag in r[1] and NS.env in r[2] for r in rows)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.dest)
def test_flag_beats_environment_beats_file_beats_default(
    tmp_path: Path, setting: Setting
) -> None:
    """For each setting: its flag, else its variable, else the file, else the default."""
    s = setting
    command = s.commands[0] if s.commands else "config"
    target = "node x" if s.section == "node" else s.section
    argv = [command, "x"] if command == "node" else [command]
    if command == "node":
        argv.append("--up-child")  # every [node x] value, listen included

    def resolve(conf: str, environ: dict[str, str], *flags: str) -> Settings:
        args = build_parser().parse_args([*argv, "--config", conf, *flags])
        return settings_for(args, environ)

    default = resolve(os.devnull, {})
    assert default.get(target, s.key) == s.default
    assert default.origin(target, s.key) == "default"
    conf = str(sample_config(tmp_path / "c.conf"))
    from_file = resolve(conf, {})
    assert from_file.get(target, s.key) == value(s, 0)
    assert from_file.origin(target, s.key) == f"file {conf}"
    environ = {s.env: SAMPLES[s.dest][1]} if s.env else {}
    if s.env:
        from_env = resolve(conf, environ)
        assert from_env.get(target, s.key) == value(s, 1)
        assert from_env.origin(target, s.key) == f"environment {s.env}"
    if s.flag:
        given = (s.flag,) if s.switch else (s.flag, SAMPLES[s.dest][2])
        from_flag = resolve(os.devnull if s.switch else conf, environ, *given)
        expected = value(s, 2)
        if s.adds:  # --allow adds to the file's modules
            expected = (*value(s, 0), *expected[1:])
        assert from_flag.get(target, s.key) == expected
        assert from_flag.origin(target, s.key) == f"flag {s.flag}"
        if section(s.section).together:  # one TLS flag replaces the whole section
            others = [o for o in SETTINGS if o.section == s.section and o is not s]
            assert all(from_flag.get(s.section, o.key) is None for o in others)


def test_ns_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    """--ns, else PYROKV_NS, else [nameserver] host and port, each remembered as the origin."""
    conf = str(sample_config(tmp_path / "c.conf"))
    args = build_parser().parse_args(["status", "--config", conf])
    assert settings_for(args, {}).ns == ("127.0.0.7", 7001)
    env = settings_for(args, {"PYROKV_NS": "10.0.0.1:9"})
    assert env.ns == ("10.0.0.1", 9)
    assert env.origin("nameserver", "port") == "environment PYROKV_NS"
    args = build_parser().parse_args(["status", "--config", conf, "--ns", "h:1"])
    flag = settings_for(args, {"PYROKV_NS": "10.0.0.1:9"})
    assert (flag.ns, flag.origin("nameserver", "host")) == (("h", 1), "flag --ns")


def test_a_node_by_hand_ignores_the_files_listen_and_up_children_take_it(
    tmp_path: Path,
) -> None:
    """pyrokv node NAME takes [node NAME] but listen; with the hidden --up-child, all of it."""
    conf = str(sample_config(tmp_path / "c.conf"))
    by_hand = settings_for(build_parser().parse_args(["node", "x", "--config", conf]))
    child = settings_for(
        build_parser().parse_args(["node", "x", "--config", conf, "--up-child"])
    )
    full = load_settings(conf, {}).node_options("x")
    assert child.node_options("x") == full
    assert by_hand.node_options("x") == {**full, "listen": None}
    assert [s.key for s in SETTINGS if s.up_only] == ["listen"]


def test_node_options_are_the_start_node_keywords(tmp_path: Path) -> None:
    """node_options holds every start_node setting; a node without a table takes the cluster's."""
    keywords = set(inspect.signature(start_node).parameters)
    settings = load_settings(sample_config(tmp_path / "c.conf"), {})
    options = settings.node_options("x")
    assert set(options) == {s.key for s in SETTINGS if s.start_node}
    assert set(options) <= keywords
    assert options["table"] == RoutingTable.parse(SAMPLES["node.table"][0])
    assert options["timeout"] == 2.5
    assert settings.node_options("nosuch")["table"] == settings.table


def test_the_file_up_hands_down_reads_back_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """save_settings writes a 0600 file that load_settings reads back to the same values,
    with relative TLS file names made absolute."""
    monkeypatch.chdir(tmp_path)
    conf = sample_config(tmp_path / "c.conf")
    text = conf.read_text().replace("/etc/a.pem", "certs/a.pem")
    Path("c.conf").write_text(text)
    settings = load_settings("c.conf", {}).replace(ns_port=40123)
    assert settings.tls_cert == "certs/a.pem"
    handed = tmp_path / "handed.conf"
    save_settings(settings, handed)
    assert stat.S_IMODE(handed.stat().st_mode) == 0o600
    again = load_settings(handed, {})
    assert again.tls_cert == str(tmp_path / "certs" / "a.pem")
    assert again.replace(tls_cert="certs/a.pem").values == settings.values
    assert again.nodes == settings.nodes
    for node in settings.nodes:
        assert again.node_options(node.name) == settings.node_options(node.name)
    defaults = Settings()
    save_settings(defaults, handed)
    assert load_settings(handed, {}).values == defaults.values
    assert load_settings(handed, {}).nodes == defaults.nodes


def test_a_table_of_every_byte_reads_back_from_the_file_up_hands_down(
    tmp_path: Path,
) -> None:
    """A table with an entry per byte (';' and '#' among them, a config file's comment
    characters) survives save_settings and load_settings whole."""
    spec = ", ".join(f"0x{b:02x}=n{b % 16:02d}" for b in range(256))
    settings = Settings().replace(table=RoutingTable.parse(spec))
    handed = tmp_path / "handed.conf"
    save_settings(settings, handed)
    again = load_settings(handed, {})
    assert again.table == settings.table
    assert again.table.owner(";") == "n11" and again.table.owner("#") == "n03"


def test_the_shipped_config_names_every_setting() -> None:
    """nameserver.conf mentions each declared key and PYROKV_* variable."""
    text = (ROOT / "nameserver.conf").read_text()
    for s in SETTINGS:
        assert re.search(rf"\b{s.key}\b", text), s.dest
    for name in known_environment():
        assert name in text, name


def test_declarations_are_consistent() -> None:
    """Every setting's section exists; flags are unique per command; only global settings have variables."""
    names = [sec.name for sec in SECTIONS]
    for s in SETTINGS:
        assert s.section in names
        assert s.env is None or s.section != "node"
        assert s.key not in ("name", "values")  # NodeSettings' own attributes
    for command in {c for s in SETTINGS for c in s.commands}:
        flags = [s.flag for s in SETTINGS if command in s.commands]
        assert len(flags) == len(set(flags)), command
    assert NodeSettings("n").listen is None
    with pytest.raises(TypeError, match="no node setting 'colour'"):
        NodeSettings("n", colour="red")
