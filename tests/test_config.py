"""The gateway config: examples in the docs load, errors name file and key path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from firewall.config import (
    ConfigError,
    HttpServer,
    StdioServer,
    default_config,
    load_config,
    parse_config,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def doc_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOCS.read_text(), re.S)


def test_documented_example_loads(tmp_path: Path) -> None:
    (block,) = doc_blocks("toml")
    path = tmp_path / "mcpwall.toml"
    path.write_text(block)
    config = load_config(path)
    vm = config.servers["virtualization"]
    assert isinstance(vm, StdioServer) and vm.args == ["-m", "firewall.demo"]
    assert vm.policy == [str(tmp_path / "rules" / "virtualization.json")]  # resolved
    git = config.servers["remote-git"]
    assert isinstance(git, HttpServer) and git.headers["Authorization"].startswith("Bearer")
    assert config.auth.tokens[0].principal == "build-agent"
    assert config.audit.path == str(tmp_path / "mcpwall-audit.db")
    assert (config.limits.backend, config.limits.on_error) == ("redis", "deny")
    assert config.limits.password_env == "MCPWALL_REDIS_PASSWORD"


@pytest.mark.parametrize(("text", "message"), [
    ("[listen]\nprot = 1\n", "x.toml: listen: Object contains unknown field `prot`"),
    ("[listen]\nport = 'x'\n", "x.toml: listen.port: Expected `int`, got `str`"),
    ("[servers.vm]\ntransport = 'stdio'\ncommand = 'x'\nargs = 'y'\n",
     "x.toml: servers.vm.args: Expected `array`, got `str`"),
    ("[servers.vm]\ntransport = 'pigeon'\n",
     "x.toml: servers.vm.transport: Invalid value 'pigeon'"),
    ("[servers.vm]\ntransport = 'stdio'\n", "x.toml: servers.vm: Object missing required field "
     "`command`"),
    ("[servers.vm]\ntransport = 'http'\nurl = 'ftp://x'\n", "x.toml: servers.vm.url: expected an "
     "http:// or https:// URL"),
    ("[servers.'a/b']\ntransport = 'http'\nurl = 'http://x'\n", "x.toml: servers.a/b: expected a "
     "name"),
    ("[listen]\nport = 70000\n", "x.toml: listen.port: expected 1..65535"),
    ("[policy]\ndry_run = 'yes'\n", "x.toml: policy.dry_run: Expected `bool`, got `str`"),
    ("[audit]\nmode = 'sloppy'\n", "x.toml: audit.mode: Invalid enum value 'sloppy'"),
    ("[http]\nparser = 'fast'\n", "x.toml: http.parser: Invalid enum value 'fast'"),
    ("[[auth.tokens]]\nprincipal = 'a'\n", "x.toml: auth.tokens[0]: Object missing required "
     "field `sha256`"),
    ("[limits]\nbackend = 'redis'\n", "x.toml: limits.url: required with backend"),
    ("[limits]\non_error = 'shrug'\n", "x.toml: limits.on_error: Invalid enum value 'shrug'"),
    ("listen = [\n", "x.toml: not valid TOML"),
])
def test_errors_name_file_key_and_expectation(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.toml")
    assert str(info.value).startswith(message), str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.toml: cannot read: No such file"):
        load_config(tmp_path / "nope.toml")


def test_default_config_is_the_demo_fleet(tmp_path: Path) -> None:
    config = default_config(tmp_path)
    (name,) = config.servers
    server = config.servers[name]
    assert isinstance(server, StdioServer) and server.args == ["-m", "firewall.demo"]
    assert Path(config.policy.files[0]).name == "virtualization.json"
    assert config.audit.path == str(tmp_path / "mcpwall-audit.db")
    assert config.listen.host == "127.0.0.1"


def test_policy_regex_timeout_defaults_to_20_ms_and_must_be_1_to_10000() -> None:
    assert parse_config("", "x.toml").policy.regex_timeout_ms == 20
    assert parse_config("[policy]\nregex_timeout_ms = 50\n", "x.toml").policy.regex_timeout_ms == 50
    for bad in (0, -1, 10_001):
        with pytest.raises(ConfigError,
                           match=r"x.toml: policy.regex_timeout_ms: expected 1..10000"):
            parse_config(f"[policy]\nregex_timeout_ms = {bad}\n", "x.toml")


def test_listen_stream_bounds_default_and_must_be_positive() -> None:
    listen = parse_config("", "x.toml").listen
    assert (listen.max_listen_streams_per_principal, listen.listen_stream_max_seconds) == (
        16, 3600.0)
    for key in ("max_listen_streams_per_principal", "listen_stream_max_seconds"):
        with pytest.raises(ConfigError, match=rf"x.toml: listen.{key}: expected a positive"):
            parse_config(f"[listen]\n{key} = 0\n", "x.toml")
