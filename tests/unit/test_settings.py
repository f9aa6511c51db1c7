"""load_settings and resolve_credentials: sources, precedence, and messages that name the key."""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from factorflow.errors import ConfigError
from factorflow.logs import JsonFormatter, TextFormatter
from factorflow.secrets_source import GENERATED_SECRET_FILE, keep_generated, resolve_credentials
from factorflow.settings import Settings, load_settings

FILE_SECRET = "file-secret-value-7f3a9c"
ENV_SECRET = "env-secret-value-0b1d2e"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No FACTORFLOW_* variable of the surrounding shell may leak into these tests."""
    for name in list(os.environ):
        if name.startswith("FACTORFLOW_"):
            monkeypatch.delenv(name)
    yield


def write_config(tmp_path: Path, text: str, name: str = "factorflow.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(config: Path | None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    return str(caught.value)


# -- sources and precedence --------------------------------------------------------------------


def test_without_file_or_environment_the_defaults_apply() -> None:
    settings = load_settings(None)
    assert settings.data_dir == Path("factorflow-data")
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.hook.path == "/hooks/okta"
    assert settings.hook.auth_header == "Authorization"
    assert settings.hook.secret is None
    assert settings.hook.max_body_bytes == 1_048_576
    assert settings.store.url is None
    assert settings.store_url() == "sqlite:///factorflow-data/factorflow.db"


def test_values_come_from_the_toml_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"""
data_dir = "{tmp_path / 'data'}"

[server]
host = "0.0.0.0"
port = 9000
graceful_timeout_seconds = 2.5

[hook]
path = "/okta/events/"
org = "acme"
auth_header = "X-Okta-Secret"
secret = "{FILE_SECRET}"
max_body_bytes = 4096

[store]
url = "sqlite:///{tmp_path / 'x.db'}"
max_batch = 8

[log]
format = "text"
level = "DEBUG"
""")
    settings = load_settings(config)
    assert settings.data_dir == tmp_path / "data"
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9000)
    assert settings.server.graceful_timeout_seconds == 2.5
    assert settings.hook.path == "/okta/events"  # trailing slash dropped
    assert settings.hook.org == "acme"
    assert settings.hook.auth_header == "X-Okta-Secret"
    assert settings.hook.secret is not None
    assert settings.hook.secret.get_secret_value() == FILE_SECRET
    assert settings.hook.max_body_bytes == 4096
    assert settings.store_url() == f"sqlite:///{tmp_path / 'x.db'}"
    assert settings.store.max_batch == 8
    assert (settings.log.format, settings.log.level) == ("text", "DEBUG")


def test_the_bundled_example_config_is_valid() -> None:
    from importlib import resources

    example = resources.files("factorflow").joinpath("examples/factorflow.example.toml")
    settings = load_settings(Path(str(example)))
    assert settings.hook.path == "/hooks/okta"
    assert settings.server.port == 8080


def test_environment_overrides_the_file_key_by_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, f"""
[server]
host = "0.0.0.0"
port = 9000

[hook]
path = "/from-file"
auth_header = "Authorization"
secret = "{FILE_SECRET}"
""")
    monkeypatch.setenv("FACTORFLOW_HOOK__AUTH_HEADER", "X-Okta-Secret")
    monkeypatch.setenv("FACTORFLOW_SERVER__PORT", "9100")
    monkeypatch.setenv("FACTORFLOW_HOOK__SECRET", ENV_SECRET)
    monkeypatch.setenv("FACTORFLOW_DATA_DIR", str(tmp_path / "env-data"))

    settings = load_settings(config)
    assert settings.hook.auth_header == "X-Okta-Secret"  # env wins
    assert settings.server.port == 9100  # env wins
    assert settings.hook.secret is not None
    assert settings.hook.secret.get_secret_value() == ENV_SECRET  # env wins
    assert settings.data_dir == tmp_path / "env-data"
    # Keys only the file sets survive next to the overridden ones of the same section.
    assert settings.server.host == "0.0.0.0"
    assert settings.hook.path == "/from-file"


def test_environment_alone_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTORFLOW_HOOK__AUTH_HEADER", "X-Okta-Secret")
    monkeypatch.setenv("FACTORFLOW_SERVER__PORT", "8181")
    settings = load_settings(None)
    assert settings.hook.auth_header == "X-Okta-Secret"
    assert settings.server.port == 8181


# -- what is refused, and how it is named ------------------------------------------------------


def test_an_unknown_key_in_the_file_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[hook]\npath = "/hooks/okta"\nsecrett = "typo"\n')
    message = config_error(config)
    assert message.startswith("invalid configuration:")
    assert "hook.secrett" in message
    assert str(config) in message
    assert "typo" not in message  # the value is never echoed


def test_an_unknown_top_level_key_or_section_is_named(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, 'datadir = "x"\n'))
    assert "datadir" in message and "Extra inputs are not permitted" in message
    message = config_error(write_config(tmp_path, '[hooks]\npath = "/x"\n', "two.toml"))
    assert "hooks" in message and "two.toml" in message


def test_an_unknown_key_in_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FACTORFLOW_HOOK__AUTH_HEADR", "X-Okta-Secret")
    message = config_error(None)
    assert "hook.auth_headr" in message
    assert "environment variable FACTORFLOW_HOOK__AUTH_HEADR" in message


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("FACTORFLOW_HOOK_SECRET", "FACTORFLOW_HOOK__SECRET"),  # one underscore
        ("FACTORFLOW_HOOKS__SECRET", "FACTORFLOW_HOOK__SECRET"),  # an unknown section
        ("FACTORFLOW_STORE_URL", "FACTORFLOW_STORE__URL"),
        ("FACTORFLOW_UI_OIDC__ISSUER", "FACTORFLOW_UI__OIDC__ISSUER"),  # a nested section
        ("FACTORFLOW_DATADIR", "FACTORFLOW_DATA_DIR"),
    ],
)
def test_an_unknown_environment_variable_is_refused_with_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, suggestion: str
) -> None:
    monkeypatch.setenv(variable, "value-that-must-not-show")
    message = config_error(None)
    assert message == (
        f"unknown environment variable(s): {variable} (did you mean {suggestion}?) "
        "(settings are FACTORFLOW_<SECTION>__<KEY>, with two underscores)"
    )


def test_unknown_variables_are_each_named_and_only_close_ones_get_a_suggestion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FACTORFLOW_HOOK_SECRET", ENV_SECRET)
    monkeypatch.setenv("FACTORFLOW_NOTHING_LIKE_IT", "1")
    message = config_error(None)
    assert message.startswith(
        "unknown environment variable(s): FACTORFLOW_HOOK_SECRET (did you mean "
        "FACTORFLOW_HOOK__SECRET?), FACTORFLOW_NOTHING_LIKE_IT (settings are ")
    assert ENV_SECRET not in message


@pytest.mark.parametrize(("variable", "value", "path"), [
    ("FACTORFLOW_STORE__URL", "sqlite:///elsewhere.db", ("store", "url")),
    ("FACTORFLOW_SERVER__PORT", "9123", ("server", "port")),
    ("FACTORFLOW_UI__OIDC__CLIENT_ID", "client-0a", ("ui", "oidc", "client_id")),
])
def test_suggested_names_are_settings_the_loader_reads(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, path: tuple[str, ...]
) -> None:
    monkeypatch.setenv(variable.replace("__", "_"), value)
    assert f"(did you mean {variable}?)" in config_error(None)
    monkeypatch.delenv(variable.replace("__", "_"))
    monkeypatch.setenv(variable, value)
    found: object = load_settings(None)
    for part in path:
        found = getattr(found, part)
    assert str(found) == value


def test_a_section_check_names_the_variables_it_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTORFLOW_WORKFLOWS__HEARTBEAT_SECONDS", "100")
    message = config_error(None)
    assert message == (
        "invalid configuration:\n"
        "  workflows: Value error, dead_after_seconds must be at least twice heartbeat_seconds, "
        "or a worker that misses one heartbeat is taken for dead "
        "(from environment variable FACTORFLOW_WORKFLOWS__HEARTBEAT_SECONDS)"
    )
    assert "defaults" not in message


def test_a_section_check_names_the_file_and_the_variables_when_both_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, "[workflows]\nheartbeat_seconds = 50\n")
    monkeypatch.setenv("FACTORFLOW_WORKFLOWS__DEAD_AFTER_SECONDS", "60")
    message = config_error(config)
    assert message.endswith(
        "(from environment variable FACTORFLOW_WORKFLOWS__DEAD_AFTER_SECONDS and "
        f"{config})")


def test_a_section_check_names_the_file_when_only_the_file_set_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[workflows]\nheartbeat_seconds = 50\n")
    message = config_error(config)
    assert message.startswith("invalid configuration:\n  workflows: Value error, ")
    assert message.endswith(f"(from {config})")


def test_a_missing_key_is_blamed_on_what_set_its_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACTORFLOW_OKTA__API_TOKEN", ENV_SECRET)
    message = config_error(None)
    assert message == (
        "invalid configuration:\n  okta.org_url: Field required "
        "(from environment variable FACTORFLOW_OKTA__API_TOKEN)")
    monkeypatch.delenv("FACTORFLOW_OKTA__API_TOKEN")
    config = write_config(tmp_path, '[campaigns.mfa]\ndescription = "phishing-resistant"\n')
    assert config_error(config) == (
        "invalid configuration:\n  campaigns.mfa.population_group: Field required "
        f"(from {config})")


def test_a_check_across_sections_names_no_single_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTORFLOW_ORGS__A__HOOK__PATH", "/hooks/x")
    monkeypatch.setenv("FACTORFLOW_ORGS__B__HOOK__PATH", "/hooks/x")
    assert config_error(None) == (
        "invalid configuration:\n  Value error, orgs 'a' and 'b' share the hook path /hooks/x")


@pytest.mark.parametrize(
    ("toml", "key", "reason"),
    [
        ("[server]\nport = 0\n", "server.port", "greater than or equal to 1"),
        ("[server]\nport = 70000\n", "server.port", "less than or equal to 65535"),
        ('[server]\nport = "eighty"\n', "server.port", "valid integer"),
        ('[hook]\npath = "hooks/okta"\n', "hook.path", "absolute URL path"),
        ('[hook]\npath = "/hooks?x=1"\n', "hook.path", "absolute URL path"),
        ('[hook]\nauth_header = "X Okta Secret"\n', "hook.auth_header", "valid HTTP header name"),
        ('[hook]\nauth_header = "X-Okta:Secret"\n', "hook.auth_header",
         "valid HTTP header name"),
        ("[hook]\nmax_body_bytes = 0\n", "hook.max_body_bytes", "greater than 0"),
        ("[hook]\nmax_body_bytes = -5\n", "hook.max_body_bytes", "greater than 0"),
        ('[hook]\norg = ""\n', "hook.org", "at least 1 character"),
        ("[store]\nmax_batch = 0\n", "store.max_batch", "greater than or equal to 1"),
        ('[log]\nlevel = "LOUD"\n', "log.level", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("[server]\ngraceful_timeout_seconds = 0\n", "server.graceful_timeout_seconds",
         "greater than 0"),
    ],
)
def test_a_bad_value_in_the_file_names_the_key_and_the_file(
    tmp_path: Path, toml: str, key: str, reason: str
) -> None:
    config = write_config(tmp_path, toml)
    message = config_error(config)
    assert f"  {key}: " in message
    assert reason in message
    assert f"(from {config})" in message


@pytest.mark.parametrize(
    ("variable", "value", "key", "reason"),
    [
        ("FACTORFLOW_SERVER__PORT", "0", "server.port", "greater than or equal to 1"),
        ("FACTORFLOW_SERVER__PORT", "http", "server.port", "valid integer"),
        ("FACTORFLOW_HOOK__PATH", "hooks", "hook.path", "absolute URL path"),
        ("FACTORFLOW_HOOK__AUTH_HEADER", "Bad Header", "hook.auth_header",
         "valid HTTP header name"),
        ("FACTORFLOW_HOOK__MAX_BODY_BYTES", "0", "hook.max_body_bytes", "greater than 0"),
    ],
)
def test_a_bad_value_in_the_environment_names_the_key_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    variable: str, value: str, key: str, reason: str,
) -> None:
    # The file is valid; only the environment variable is wrong.
    config = write_config(tmp_path, "[server]\nport = 9000\n")
    monkeypatch.setenv(variable, value)
    message = config_error(config)
    assert f"  {key}: " in message
    assert reason in message
    assert f"(from environment variable {variable})" in message


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[server]\nport = 0\n[hook]\npath = "x"\nmax_body_bytes = 0\n')
    message = config_error(config)
    for key in ("server.port", "hook.path", "hook.max_body_bytes"):
        assert f"  {key}: " in message


def test_invalid_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[server\nport = 80\n")
    message = config_error(config)
    assert message.startswith(f"{config}: not valid TOML: ")
    assert "line 1" in message


def test_a_missing_config_file_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert config_error(missing) == f"config file {missing} does not exist"


def test_an_unreadable_config_path_is_reported(tmp_path: Path) -> None:
    message = config_error(tmp_path)  # a directory, not a file
    assert message.startswith(f"{tmp_path}: cannot read: ")


# -- secrets -----------------------------------------------------------------------------------


def test_secrets_are_secret_strings_and_never_print(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, f'[hook]\nsecret = "{FILE_SECRET}"\n')
    monkeypatch.setenv("FACTORFLOW_HOOK__PREVIOUS_SECRET", ENV_SECRET)
    settings = load_settings(config)

    assert isinstance(settings.hook.secret, SecretStr)
    assert isinstance(settings.hook.previous_secret, SecretStr)
    shown = [
        repr(settings), str(settings), repr(settings.hook), str(settings.hook),
        settings.model_dump_json(), repr(settings.model_dump()), f"{settings}",
        str(settings.hook.secret), repr(settings.hook.previous_secret),
    ]
    for text in shown:
        assert FILE_SECRET not in text
        assert ENV_SECRET not in text
    assert "**********" in repr(settings)


def test_a_bad_secret_value_is_named_without_showing_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[hook]\nsecret = 987654321987\n")
    message = config_error(config)
    assert "hook.secret" in message
    assert "987654321987" not in message


def test_credentials_repr_hides_the_values(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, hook={"secret": FILE_SECRET,
                                                 "previous_secret": ENV_SECRET})
    credentials = resolve_credentials(settings)
    assert credentials.accepted == (FILE_SECRET.encode(), ENV_SECRET.encode())
    for text in (repr(credentials), str(credentials)):
        assert FILE_SECRET not in text and ENV_SECRET not in text
        assert "<2 hidden>" in text


def test_secret_and_secret_file_both_set_is_a_config_error(tmp_path: Path) -> None:
    secret_file = tmp_path / "okta-hook"
    secret_file.write_text(FILE_SECRET + "\n", encoding="utf-8")
    config = write_config(
        tmp_path, f'[hook]\nsecret = "{ENV_SECRET}"\nsecret_file = "{secret_file}"\n'
    )
    settings = load_settings(config)
    with pytest.raises(ConfigError) as caught:
        resolve_credentials(settings)
    assert str(caught.value) == "hook.secret and hook.secret_file are both set; set one of them"
    assert not (settings.data_dir / GENERATED_SECRET_FILE).exists()


def test_previous_secret_and_its_file_both_set_is_a_config_error(tmp_path: Path) -> None:
    previous_file = tmp_path / "old"
    previous_file.write_text("old\n", encoding="utf-8")
    settings = Settings(data_dir=tmp_path, hook={
        "secret": FILE_SECRET, "previous_secret": "old", "previous_secret_file": previous_file,
    })
    with pytest.raises(ConfigError, match=re.escape(
        "hook.previous_secret and hook.previous_secret_file"
    )):
        resolve_credentials(settings)


def test_secret_file_is_read_and_stripped(tmp_path: Path) -> None:
    secret_file = tmp_path / "okta-hook"
    secret_file.write_text(f"  {FILE_SECRET}\n", encoding="utf-8")
    settings = Settings(data_dir=tmp_path / "data", hook={"secret_file": secret_file})
    credentials = resolve_credentials(settings)
    assert credentials.accepted == (FILE_SECRET.encode(),)
    assert credentials.generated_at is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "cannot read"), ("", "is empty"), ("  \n", "is empty")],
)
def test_an_unusable_secret_file_is_a_config_error(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    secret_file = tmp_path / "okta-hook"
    if content is not None:
        secret_file.write_text(content, encoding="utf-8")
    settings = Settings(data_dir=tmp_path / "data", hook={"secret_file": secret_file})
    with pytest.raises(ConfigError) as caught:
        resolve_credentials(settings)
    assert str(caught.value).startswith(f"hook.secret_file {secret_file}")
    assert expected in str(caught.value)


def test_a_blank_secret_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, hook={"secret": "   "})
    with pytest.raises(ConfigError, match=re.escape("hook.secret is empty")):
        resolve_credentials(settings)


def test_a_previous_secret_without_a_current_one_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, hook={"previous_secret": "old"})
    with pytest.raises(ConfigError, match=re.escape(
        "hook.previous_secret is set but hook.secret is not"
    )):
        resolve_credentials(settings)
    assert not (tmp_path / GENERATED_SECRET_FILE).exists()


def _render(records: list[logging.LogRecord]) -> str:
    lines = []
    for record in records:
        lines.append(JsonFormatter().format(record))
        lines.append(TextFormatter().format(record))
        lines.append(repr(record.__dict__))
    return "\n".join(lines)


def test_a_generated_secret_is_kept_owner_only_reused_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir)
    caplog.set_level(logging.DEBUG)

    first = resolve_credentials(settings)
    path = data_dir / GENERATED_SECRET_FILE
    assert first.generated_at == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    value = path.read_text(encoding="utf-8").strip()
    assert len(value) >= 32
    assert first.accepted == (value.encode(),)
    assert first.header == "Authorization"

    generated = [r for r in caplog.records if r.getMessage() == "hook.secret_generated"]
    assert len(generated) == 1
    assert str(path) in _render(generated)  # the log says where, ...
    assert value not in _render(caplog.records)  # ... never what
    assert value not in caplog.text

    caplog.clear()
    second = resolve_credentials(settings)
    assert second.accepted == first.accepted
    assert second.generated_at == path
    assert path.read_text(encoding="utf-8").strip() == value
    assert not [r for r in caplog.records if r.getMessage() == "hook.secret_generated"]
    assert value not in _render(caplog.records)


def test_processes_generating_one_secret_at_once_all_get_the_whole_value(tmp_path: Path) -> None:
    """Two receivers starting on one data directory: each must read the value the other
    kept, never the file half-made (empty), whoever wins the race."""
    for round_ in range(40):
        path = tmp_path / f"round-{round_}" / GENERATED_SECRET_FILE
        start = threading.Barrier(8)
        results: list[tuple[str, bool]] = []

        def generate(
            n: int, path: Path = path, start: threading.Barrier = start,
            results: list[tuple[str, bool]] = results,
        ) -> None:
            start.wait()
            results.append(keep_generated(path, f"value-{n}-" + "x" * 40))

        threads = [threading.Thread(target=generate, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        kept = path.read_text(encoding="utf-8").strip()
        assert kept.startswith("value-") and kept.endswith("x" * 40)
        assert [value for value, _ in results] == [kept] * 8
        assert sum(created for _, created in results) == 1
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert sorted(p.name for p in path.parent.iterdir()) == [GENERATED_SECRET_FILE]


def test_an_empty_generated_secret_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / GENERATED_SECRET_FILE
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(
        f"{path} is empty: delete it to generate a new hook secret"
    )):
        resolve_credentials(Settings(data_dir=tmp_path))
    assert path.read_text(encoding="utf-8") == "\n"  # left for the operator to look at


def test_no_secret_is_generated_when_generation_is_off(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with pytest.raises(ConfigError, match=re.escape(
        "no hook secret is configured and none was generated"
    )):
        resolve_credentials(settings, generate=False)
    assert not (tmp_path / "data" / GENERATED_SECRET_FILE).exists()
    generated = resolve_credentials(settings)
    assert resolve_credentials(settings, generate=False).accepted == generated.accepted


def test_a_configured_secret_takes_precedence_over_a_generated_one(tmp_path: Path) -> None:
    resolve_credentials(Settings(data_dir=tmp_path))
    configured = resolve_credentials(Settings(data_dir=tmp_path, hook={"secret": FILE_SECRET}))
    assert configured.accepted == (FILE_SECRET.encode(),)
    assert configured.generated_at is None
