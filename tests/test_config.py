"""Config loading: TOML, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Config, ConfigError, load_config


def test_defaults_without_file() -> None:
    config = load_config(None, environ={})
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.server.api_keys == ()
    assert config == Config()


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[server]\nport = 9000\napi_keys = ["a", "b"]\n'
        '[upstream]\nbase_urls = ["http://x"]\nmodel_fallbacks = { "m1" = "m2" }\n'
        '[accounts]\nselection = "round-robin"\n'
    )
    config = load_config(path, environ={"GATEWAY_PORT": "9100", "GATEWAY_SERVER_HOST": "::1"})
    assert config.server.port == 9100
    assert config.server.host == "::1"
    assert config.server.api_keys == ("a", "b")
    assert config.upstream.base_urls == ("http://x",)
    assert config.upstream.model_fallbacks == {"m1": "m2"}
    assert config.accounts.selection == "round-robin"


def test_config_from_environment_variable(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 1234\n")
    assert load_config(None, environ={"GATEWAY_CONFIG": str(path)}).server.port == 1234


def test_env_lists_and_bools() -> None:
    config = load_config(
        None,
        environ={"GATEWAY_API_KEYS": "k1, k2", "GATEWAY_SERVER_INSECURE_NO_AUTH": "yes",
                 "GATEWAY_UPSTREAM_MODEL_FALLBACKS": "a=b,c=d"},
    )
    assert config.server.api_keys == ("k1", "k2")
    assert config.server.insecure_no_auth is True
    assert config.upstream.model_fallbacks == {"a": "b", "c": "d"}


@pytest.mark.parametrize(
    ("toml", "env", "key"),
    [
        ("[server]\nport = 'x'\n", {}, "server.port"),
        ("[server]\nport = 70000\n", {}, "server.port"),
        ("[server]\nbogus = 1\n", {}, "server.bogus"),
        ("[nope]\n", {}, "nope"),
        ("", {"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT"),
        ("[accounts]\nselection = 'random'\n", {}, "accounts.selection"),
        ("[server]\nmax_body_bytes = 0\n", {}, "server.max_body_bytes"),
        ("[upstream]\nbase_urls = []\n", {}, "upstream.base_urls"),
        ("[server]\ninsecure_no_auth = 'maybe'\n", {}, "server.insecure_no_auth"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, toml: str, env: dict[str, str], key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path, environ=env)


def test_missing_and_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})


def test_secrets_never_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"GATEWAY_OAUTH_CLIENT_SECRET": "s3cr3t", "GATEWAY_PORT": "0"})
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    "toml",
    [
        '[server]\napi_keys = [1, "MY-SECRET"]\n',
        '[server]\napi_keys = {x = "MY-SECRET"}\n',
        '[oauth]\nclient_secret = ["MY-SECRET"]\n',
        '[oauth]\nclient_secret = 12345\n',
    ],
)
def test_malformed_secrets_are_named_never_shown(tmp_path: Path, toml: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert "MY-SECRET" not in message and "12345" not in message
    assert "api_keys" in message or "client_secret" in message
    assert "value not shown" in message


@pytest.mark.parametrize(
    "toml",
    [
        '[upstream]\nextra_headers = { Authorization = "Bearer sk-MY-SECRET", X-Version = 3 }\n',
        '[upstream]\nbase_urls = ["https://user:MY-SECRET@proxy.example", 1]\n',
    ],
)
def test_tables_lists_and_urls_are_never_shown(tmp_path: Path, toml: str) -> None:
    """They can hold credentials (a header's token, a URL's password)."""
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "MY-SECRET" not in str(info.value) and "upstream." in str(info.value)


def test_a_malformed_header_table_in_the_environment_is_not_shown() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={
            "GATEWAY_UPSTREAM_EXTRA_HEADERS": "X-Goog-Api-Key=MY-SECRET,Authorization: Bearer x"})
    assert "MY-SECRET" not in str(info.value)
    assert "GATEWAY_UPSTREAM_EXTRA_HEADERS" in str(info.value)


def test_the_command_line_does_not_print_a_malformed_secret(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "b.toml"
    path.write_text('[server]\napi_keys=[1,"MY-SECRET"]\n')
    result = subprocess.run([sys.executable, "-m", "gateway", "accounts", "--config", str(path),
                             "list"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "MY-SECRET" not in result.stdout + result.stderr
    assert "server.api_keys" in result.stderr
