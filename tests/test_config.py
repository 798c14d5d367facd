"""Settings: defaults, nameserver.conf, PYROKV_* variables and flags, in that order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyrokv import ConfigError, RoutingTable
from pyrokv.cli import main
from pyrokv.config import load_settings
from pyrokv.naming import parse_address, parse_port

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_is_valid_and_is_the_guide() -> None:
    """The repository's nameserver.conf loads: 127.0.0.1:9090, foo and bar on 4040/4041."""
    settings = load_settings(ROOT / "nameserver.conf", {})
    assert settings.ns == ("127.0.0.1", 9090)
    assert settings.table == RoutingTable.parse("a..m=foo, n..z=bar")
    assert [n.name for n in settings.nodes] == ["foo", "bar"]
    assert settings.node("foo").listen == ("127.0.0.1", 4040)
    assert settings.node("bar").listen == ("127.0.0.1", 4041)


def test_shipped_config_keeps_foo_and_bar_in_one_ignored_folder() -> None:
    """foo and bar have data dirs under data/ beside the shipped config, and git
    ignores that folder."""
    settings = load_settings(ROOT / "nameserver.conf", {})
    assert settings.node("foo").data_dir == str(ROOT / "data" / "foo")
    assert settings.node("bar").data_dir == str(ROOT / "data" / "bar")
    assert settings.node("foo").fsync == "everysec"
    assert "/data/" in (ROOT / ".gitignore").read_text().split()


def test_precedence_env_over_file_over_default(tmp_path: Path) -> None:
    """The environment overrides the file, which overrides the built-in default."""
    conf = tmp_path / "c.conf"
    conf.write_text("[nameserver]\nport = 7000\n[cluster]\ntimeout = 2\n")
    assert load_settings(None, {}).ns_port == 9090 or Path("nameserver.conf").exists()
    assert load_settings(conf, {}).ns == ("127.0.0.1", 7000)
    env = load_settings(conf, {"PYROKV_NS": "10.0.0.1:7001", "PYROKV_TIMEOUT": "3"})
    assert (env.ns, env.timeout) == (("10.0.0.1", 7001), 3.0)
    assert load_settings(None, {"PYROKV_CONFIG": str(conf)}).ns_port == 7000


def test_flag_beats_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--ns on the command line wins over PYROKV_NS and the file."""
    conf = tmp_path / "c.conf"
    conf.write_text("[nameserver]\nport = 7000\n")
    monkeypatch.setenv("PYROKV_NS", "127.0.0.1:7001")
    assert main(["config", "--config", str(conf)]) == 0
    assert "port = 7001" in capsys.readouterr().out
    assert (
        main(
            [
                "call",
                "b",
                "f",
                "--config",
                str(conf),
                "--ns",
                "127.0.0.1:1",
                "--timeout",
                "1",
            ]
        )
        == 1
    )
    assert "127.0.0.1:1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[nameserver]\nport = abc\n",
            r"bad value for port in \[nameserver\] of .*c.conf",
        ),
        ("[nameserver]\nport = 70000\n", r"port 70000 is outside"),
        ("[nameserver]\nprot = 1\n", r"unknown key 'prot' in \[nameserver\]"),
        (
            "[cluster]\ntable = a..m=foo, k..z=bar\n",
            r"bad value for table in \[cluster\].*overlaps",
        ),
        ("[cluster]\ntimeout = -1\n", r"bad value for timeout"),
        ("[node a.b]\n", r"invalid node name 'a.b'"),
        ("[node x]\nlisten = nowhere\n", r"bad value for listen in \[node x\]"),
        ("[node x]\nallow = _evil\n", r"bad value for allow"),
        ("[clutser]\n", r"unknown section \[clutser\]"),
        ("no section\n", r"cannot read config file"),
    ],
)
def test_bad_values_name_the_key_and_file(
    tmp_path: Path, text: str, message: str
) -> None:
    """A bad file raises ConfigError naming the key and the file."""
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(conf, {})


def test_bad_environment_is_named() -> None:
    """A bad PYROKV_* variable is an error naming it."""
    with pytest.raises(ConfigError, match="bad value for PYROKV_NS"):
        load_settings(None, {"PYROKV_NS": "nope"})


def test_an_unknown_variable_is_a_warning_said_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown PYROKV_* variable is named in one warning on stderr; the command runs."""
    monkeypatch.setenv("PYROKV_NSS", "x")
    monkeypatch.setenv("PYROKV_TIMEUOT", "3")
    assert main(["config", "--config", os.devnull]) == 0
    out, err = capsys.readouterr()
    assert "[nameserver]" in out
    assert err.count("warning") == 1
    assert err.startswith(
        "pyrokv: warning: ignoring unknown environment variables PYROKV_NSS, "
        "PYROKV_TIMEUOT: pyrokv reads PYROKV_CLUSTER_SECRET_FILE,"
    )


def test_config_says_where_each_value_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """pyrokv config ends each value with its origin, and the output reads back the same."""
    conf = tmp_path / "c.conf"
    conf.write_text("[cluster]\ntimeout = 2\nhop_limit = 3\n[node foo]\nport = 7\n")
    monkeypatch.setenv("PYROKV_TIMEOUT", "4")
    assert main(["config", "--config", str(conf), "--ns", "127.0.0.1:1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# config file: {conf}\n")
    lines = out.splitlines()
    for line in (
        "host = 127.0.0.1  # flag --ns",
        "port = 1  # flag --ns",
        "timeout = 4  # environment PYROKV_TIMEOUT",
        f"hop_limit = 3  # file {conf}",
        f"port = 7  # file {conf}",
        "workers = 256  # default",
    ):
        assert line in lines, line
    printed = tmp_path / "printed.conf"
    printed.write_text(out)
    again = load_settings(printed, {})
    assert (again.ns, again.timeout, again.hop_limit) == (("127.0.0.1", 1), 4.0, 3)
    assert again.node("foo").port == 7


def test_config_without_a_file_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no config file, pyrokv config says none was read."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYROKV_CONFIG", raising=False)
    assert main(["config", "--ns", "127.0.0.1:1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# config file: none (built-in defaults)\n")


def test_missing_config_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--config naming a missing file is a configuration error, exit 2."""
    assert main(["config", "--config", "/nonexistent.conf"]) == 2
    assert "config file /nonexistent.conf does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("70000", "port 70000 is outside 0..65535"),
        ("-1", "port -1 is outside 0..65535"),
        ("abc", "invalid literal for int() with base 10: 'abc'"),
    ],
)
def test_one_port_check_for_file_and_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: str, message: str
) -> None:
    """The config file and the --port flags refuse a bad port with the same words."""
    conf = tmp_path / "c.conf"
    conf.write_text(f"[nameserver]\nport = {raw}\n[node x]\nport = {raw}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(conf, {})
    assert str(info.value).endswith(f": {message}")
    for argv in (["nameserver", "--port", raw], ["node", "x", "--port", raw]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert f"argument --port: {message}\n" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="invalid --ns"):
        parse_address(f"127.0.0.1:{raw}", "--ns")
    assert parse_port("0") == 0
    assert parse_port("65535") == 65535
