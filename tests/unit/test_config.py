"""Settings: flags over environment over defaults; one-line errors naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.runtime.config import ConfigError, describe, load_settings, redacted_url

BASE = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "APIkey",
    "LIVEKIT_API_SECRET": "a-very-secret-secret-of-32-chars!",
}


def test_defaults_fill_what_is_not_given() -> None:
    settings = load_settings({}, BASE)
    assert settings.http_host == "127.0.0.1"
    assert settings.http_port == 9469
    assert settings.settle_seconds == 1.0
    assert settings.journal_path is None
    assert settings.mask_numbers is True
    assert settings.instance  # the host name


def test_flags_win_over_the_environment() -> None:
    env = {**BASE, "CALL_MONITOR_HTTP_PORT": "8000", "CALL_MONITOR_JOURNAL": "/tmp/j"}
    settings = load_settings({"http_port": "9000"}, env)
    assert settings.http_port == 9000
    assert settings.journal_path == Path("/tmp/j")


@pytest.mark.parametrize(
    ("env", "flags", "message"),
    [
        ({}, {}, "LIVEKIT_URL is not set (or pass --livekit-url)"),
        ({**BASE, "LIVEKIT_URL": "ftp://x"}, {}, "LIVEKIT_URL must start with ws://"),
        ({**BASE, "LIVEKIT_URL": "ws://"}, {}, "LIVEKIT_URL has no host"),
        ({**BASE, "LIVEKIT_URL": "ws://h:99999"}, {}, "LIVEKIT_URL has an invalid port"),
        ({**BASE, "LIVEKIT_API_KEY": " "}, {}, "LIVEKIT_API_KEY is empty"),
        (BASE, {"http_port": "http"}, "--http-port must be an integer from 0 to 65535"),
        (BASE, {"http_port": "70000"}, "--http-port must be an integer"),
        ({**BASE, "CALL_MONITOR_SETTLE_SECONDS": "x"}, {}, "CALL_MONITOR_SETTLE_SECONDS must"),
        ({**BASE, "CALL_MONITOR_SETTLE_SECONDS": "-1"}, {}, "from 0 to 60"),
        ({**BASE, "CALL_MONITOR_JOURNAL_BACKUPS": "many"}, {}, "must be an integer from 0"),
        ({**BASE, "CALL_MONITOR_JOURNAL_BACKUPS": "5000"}, {}, "must be an integer from 0"),
        ({**BASE, "CALL_MONITOR_LOG_FORMAT": "xml"}, {}, "must be one of auto, json, console"),
        ({**BASE, "CALL_MONITOR_MASK_NUMBERS": "maybe"}, {}, "must be true or false"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    env: dict[str, str], flags: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(flags, env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("raw", "value"), [("yes", True), ("0", False), ("OFF", False)])
def test_booleans_read_the_usual_spellings(raw: str, value: bool) -> None:
    env = {**BASE, "CALL_MONITOR_MASK_NUMBERS": raw}
    assert load_settings({}, env).mask_numbers is value


def test_secret_never_appears_in_errors_descriptions_or_repr() -> None:
    secret = BASE["LIVEKIT_API_SECRET"]
    settings = load_settings({}, BASE)
    assert secret not in repr(settings)
    assert secret not in str(describe(settings))
    assert describe(settings)["livekit_api_secret"] == "(set)"

    def failing(value: str) -> str:
        raise ValueError("is malformed")

    from monitor.runtime import config

    secret_setting = next(s for s in config.SETTINGS if s.secret)
    patched = config.Setting(
        secret_setting.name, secret_setting.env, failing, None, "", secret=True
    )
    original = config.SETTINGS
    config.SETTINGS = tuple(patched if s is secret_setting else s for s in original)
    try:
        with pytest.raises(ConfigError) as caught:
            load_settings({}, BASE)
    finally:
        config.SETTINGS = original
    assert secret not in str(caught.value)
    assert "LIVEKIT_API_SECRET is malformed" in str(caught.value)


def test_connection_settings_may_be_absent_when_not_required() -> None:
    settings = load_settings({}, {}, required=False)
    assert settings.livekit_url == ""
    assert describe(settings)["livekit_api_secret"] == "(not set)"


def test_readme_lists_every_setting() -> None:
    from monitor.runtime.config import SETTINGS

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for setting in SETTINGS:
        assert f"| `{setting.env}` | `{setting.flag}` |" in readme


@pytest.mark.parametrize(
    ("env", "flags", "origin"),
    [
        (
            {**BASE, "LIVEKIT_API_SECRET": "short-secret-of-31-characters.."},
            {},
            "LIVEKIT_API_SECRET",
        ),
        (BASE, {"livekit_api_secret": "secret"}, "--livekit-api-secret"),
    ],
)
def test_a_secret_shorter_than_livekit_server_takes_is_refused(
    env: dict[str, str], flags: dict[str, str], origin: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(flags, env)
    assert str(caught.value) == (
        f"{origin} must be at least 32 characters, as livekit-server requires"
    )
    assert load_settings({}, {**BASE, "LIVEKIT_API_SECRET": "x" * 32}).livekit_api_secret


SECRET = BASE["LIVEKIT_API_SECRET"]
WITHOUT_SECRET = {k: v for k, v in BASE.items() if k != "LIVEKIT_API_SECRET"}


def test_the_secret_can_be_read_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(f"{SECRET}\n")  # as `echo` and editors leave it
    env = {**WITHOUT_SECRET, "LIVEKIT_API_SECRET_FILE": str(secret_file)}
    settings = load_settings({}, env)
    assert settings.livekit_api_secret == SECRET
    assert describe(settings)["livekit_api_secret_file"] == str(secret_file)
    flagged = load_settings({"livekit_api_secret_file": str(secret_file)}, WITHOUT_SECRET)
    assert flagged.livekit_api_secret == SECRET


def test_a_flag_wins_over_the_environment_between_secret_and_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("f" * 40)
    by_file = load_settings({"livekit_api_secret_file": str(secret_file)}, BASE)
    assert by_file.livekit_api_secret == "f" * 40
    env = {**BASE, "LIVEKIT_API_SECRET_FILE": str(secret_file)}
    assert load_settings({"livekit_api_secret": "g" * 40}, env).livekit_api_secret == "g" * 40
    with pytest.raises(ConfigError, match=r"^LIVEKIT_API_SECRET and LIVEKIT_API_SECRET_FILE are"):
        load_settings({}, env)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "{path} cannot be read: No such file or directory"),
        ("dir", "{path} cannot be read: Is a directory"),
        ("", "{path} is empty"),
        (" \n", "{path} is empty"),
        (b"\xff\xfe" * 20, "{path} is not UTF-8 text"),
        ("short\n", "({path}) must be at least 32 characters, as livekit-server requires"),
    ],
)
def test_a_secret_file_that_cannot_give_a_secret_is_one_line_naming_it(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / "secret"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    env = {**WITHOUT_SECRET, "LIVEKIT_API_SECRET_FILE": str(path)}
    with pytest.raises(ConfigError) as caught:
        load_settings({}, env)
    assert str(caught.value).startswith("LIVEKIT_API_SECRET_FILE ")
    assert str(caught.value).endswith(message.format(path=path))
    assert "\n" not in str(caught.value)


def test_without_secret_or_file_the_error_names_both() -> None:
    with pytest.raises(ConfigError, match="or LIVEKIT_API_SECRET_FILE"):
        load_settings({}, WITHOUT_SECRET)


CREDENTIALS = "monitor:hunter2-p@ss"


def test_credentials_in_the_url_are_refused_and_never_shown() -> None:
    for bad in (
        f"https://{CREDENTIALS}@x",
        f"ftp://{CREDENTIALS}@x",
        f"https://{CREDENTIALS}@x:port",
        f"{CREDENTIALS}@x",
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings({}, {**BASE, "LIVEKIT_URL": bad})
        assert "hunter2" not in str(caught.value)
        assert "***@x" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_settings({}, {**BASE, "LIVEKIT_URL": "wss://monitor@lk.example.com"})
    assert str(caught.value) == (
        "LIVEKIT_URL must not hold a user or password (the API key and secret are used),"
        " got 'wss://***@lk.example.com'"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("wss://lk.example.com", "wss://lk.example.com"),
        ("https://user:pass@host:443/x", "https://***@host:443/x"),
        ("https://user@host", "https://***@host"),
        ("https://us/er:p@ss@host", "https://***@host"),
        ("user:pass@host", "***@host"),
    ],
)
def test_redacted_url_drops_user_and_password(url: str, shown: str) -> None:
    assert redacted_url(url) == shown
