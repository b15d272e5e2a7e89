"""Settings, from command-line flags first, then the environment, then defaults.

LiveKit's own variable names (LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET) and the
monitor's own (CALL_MONITOR_*). One table declares them all: the CLI builds its flags
from it and the README's "Configuration" lists it (a test checks). A missing or
malformed setting is a `ConfigError` whose one-line message names the setting; a
secret's value never appears in a message or a listing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

__all__ = ["SETTINGS", "ConfigError", "Setting", "Settings", "describe", "load_settings"]


class ConfigError(ValueError):
    """A setting is missing or malformed; str() is one line naming it."""


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss", "http", "https"):
        raise ValueError("must start with ws://, wss://, http:// or https://")
    if not parts.hostname:
        raise ValueError("has no host")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value.rstrip("/")


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty")
    return value.strip()


_Number = TypeVar("_Number", int, float)


def _bounded(
    convert: Callable[[str], _Number], low: _Number, high: _Number
) -> Callable[[str], _Number]:
    """A parser for a number within [low, high]; its error says the range."""
    if convert is int:
        message = f"must be an integer from {low} to {high}"
    else:
        message = f"must be a number from {low:g} to {high:g}"

    def parse(value: str) -> _Number:
        try:
            number = convert(value)
        except ValueError:
            raise ValueError(message) from None
        if not low <= number <= high:
            raise ValueError(message)
        return number

    return parse


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    return _bounded(int, low, high)


def _bounded_float(low: float, high: float) -> Callable[[str], float]:
    return _bounded(float, low, high)


_port = _bounded_int(0, 65535)


def _choice(*options: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value.lower()

    return parse


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _optional_port(value: str) -> int | None:
    return _port(value) if value.strip() else None


def _path(value: str) -> Path | None:
    return Path(value) if value.strip() else None


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    env: str
    parse: Callable[[str], Any]
    default: str | None  # None: required
    help: str
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("livekit_url", "LIVEKIT_URL", _url, None, "livekit-server URL (ws:// or http://)"),
    Setting("livekit_api_key", "LIVEKIT_API_KEY", _text, None, "LiveKit API key"),
    Setting(
        "livekit_api_secret",
        "LIVEKIT_API_SECRET",
        _text,
        None,
        "LiveKit API secret (never printed)",
        secret=True,
    ),
    Setting(
        "http_host",
        "CALL_MONITOR_HTTP_HOST",
        _text,
        "127.0.0.1",
        "address for /metrics, health, /calls and webhooks",
    ),
    Setting("http_port", "CALL_MONITOR_HTTP_PORT", _port, "9469", "HTTP port (0: any free)"),
    Setting(
        "metrics_port",
        "CALL_MONITOR_METRICS_PORT",
        _optional_port,
        "",
        "serve /metrics, /healthz and /readyz on a listener of their own at this port "
        "(empty: on the HTTP port)",
    ),
    Setting(
        "metrics_host",
        "CALL_MONITOR_METRICS_HOST",
        _text,
        "127.0.0.1",
        "address of that listener",
    ),
    Setting(
        "settle_seconds",
        "CALL_MONITOR_SETTLE_SECONDS",
        _bounded_float(0, 60),
        "1.0",
        "how long an end waits for late evidence (dial-side SIP code, a late status)",
    ),
    Setting(
        "webhooks",
        "CALL_MONITOR_WEBHOOKS",
        _bool,
        "true",
        "livekit-server sends its webhooks to this monitor's /webhook",
    ),
    Setting(
        "room_mode",
        "CALL_MONITOR_ROOM_MODE",
        _choice("auto", "setup", "whole_call"),
        "auto",
        "setup: join rooms while calls are set up; whole_call: stay until they end; "
        "auto: setup with webhooks, whole_call without",
    ),
    Setting(
        "answer_grace_seconds",
        "CALL_MONITOR_ANSWER_GRACE_SECONDS",
        _bounded_float(0, 600),
        "2.0",
        "in setup mode, how long to stay in a room after its last call was answered",
    ),
    Setting(
        "max_concurrent_joins",
        "CALL_MONITOR_MAX_CONCURRENT_JOINS",
        _bounded_int(1, 1000),
        "16",
        "room joins in progress at once",
    ),
    Setting(
        "join_timeout_seconds",
        "CALL_MONITOR_JOIN_TIMEOUT_SECONDS",
        _bounded_float(0.5, 120),
        "10",
        "give up one attempt to join a room after this long",
    ),
    Setting(
        "observer_recycle_joins",
        "CALL_MONITOR_OBSERVER_RECYCLE_JOINS",
        _bounded_int(1, 1_000_000),
        "200",
        "room connections an observer process closes before it is replaced",
    ),
    Setting(
        "reconcile_seconds",
        "CALL_MONITOR_RECONCILE_SECONDS",
        _bounded_float(0.5, 3600),
        "30",
        "how often the RoomService listing is compared with the calls known",
    ),
    Setting(
        "webhook_max_bytes",
        "CALL_MONITOR_WEBHOOK_MAX_BYTES",
        _bounded_int(1024, 64 * 2**20),
        str(2**20),
        "larger webhook and dial-hook bodies are refused with 413",
    ),
    Setting(
        "http_max_connections",
        "CALL_MONITOR_HTTP_MAX_CONNECTIONS",
        _bounded_int(16, 1_000_000),
        "512",
        "connections a listener keeps open (at most half the file limit); past it the "
        "oldest one not being served is closed",
    ),
    Setting(
        "http_idle_timeout_seconds",
        "CALL_MONITOR_HTTP_IDLE_TIMEOUT_SECONDS",
        _bounded_float(1, 3600),
        "15",
        "close a connection that has sent no whole request headers for this long, from "
        "its start or its last response",
    ),
    Setting(
        "http_body_timeout_seconds",
        "CALL_MONITOR_HTTP_BODY_TIMEOUT_SECONDS",
        _bounded_float(0.5, 600),
        "10",
        "a webhook or dial-hook body not received whole within this long is refused with 408",
    ),
    Setting(
        "journal_path",
        "CALL_MONITOR_JOURNAL",
        _path,
        "",
        "event journal file (JSON lines) for replay; empty: no journal",
    ),
    Setting(
        "journal_max_bytes",
        "CALL_MONITOR_JOURNAL_MAX_BYTES",
        _bounded_int(4096, 2**40),
        str(100 * 2**20),
        "rotate the journal at this size",
    ),
    Setting(
        "journal_backups",
        "CALL_MONITOR_JOURNAL_BACKUPS",
        _bounded_int(0, 1000),
        "5",
        "rotated journal files to keep",
    ),
    Setting(
        "log_format",
        "CALL_MONITOR_LOG_FORMAT",
        _choice("auto", "json", "console"),
        "auto",
        "json, console, or auto (console on a terminal)",
    ),
    Setting(
        "log_level",
        "CALL_MONITOR_LOG_LEVEL",
        _choice("debug", "info", "warning", "error"),
        "info",
        "lowest log level written",
    ),
    Setting(
        "mask_numbers",
        "CALL_MONITOR_MASK_NUMBERS",
        _bool,
        "true",
        "mask phone numbers in logs and listings",
    ),
    Setting(
        "mask_keep_digits",
        "CALL_MONITOR_MASK_KEEP_DIGITS",
        _bounded_int(0, 6),
        "4",
        "last digits left visible in masked numbers",
    ),
    Setting(
        "instance",
        "CALL_MONITOR_INSTANCE",
        str.strip,
        "",
        "this monitor's name in logs (default: the host name)",
    ),
)


@dataclass(frozen=True, slots=True)
class Settings:
    livekit_url: str
    livekit_api_key: str
    livekit_api_secret: str
    http_host: str
    http_port: int
    metrics_port: int | None
    metrics_host: str
    settle_seconds: float
    webhooks: bool
    room_mode: str
    answer_grace_seconds: float
    max_concurrent_joins: int
    join_timeout_seconds: float
    observer_recycle_joins: int
    reconcile_seconds: float
    webhook_max_bytes: int
    http_max_connections: int
    http_idle_timeout_seconds: float
    http_body_timeout_seconds: float
    journal_path: Path | None
    journal_max_bytes: int
    journal_backups: int
    log_format: str
    log_level: str
    mask_numbers: bool
    mask_keep_digits: int
    instance: str

    @property
    def stays_whole_call(self) -> bool:
        """Whether the observer stays in a room until its calls end."""
        if self.room_mode == "auto":
            return not self.webhooks
        return self.room_mode == "whole_call"

    def __repr__(self) -> str:
        # Secrets stay out of tracebacks and debug output too.
        shown = ", ".join(f"{key}={value!r}" for key, value in describe(self).items())
        return f"Settings({shown})"


def load_settings(
    flags: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
    required: bool = True,
) -> Settings:
    """Resolve every setting: flag, then environment, then default.

    With `required=False` the LiveKit connection settings may be missing (they are
    then empty), for commands that do not connect.
    """
    flags = flags or {}
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = flags.get(setting.name)
        origin = setting.flag
        if raw is None:
            raw = environ.get(setting.env)
            origin = setting.env
        if raw is None:
            if setting.default is None:
                if required:
                    raise ConfigError(f"{setting.env} is not set (or pass {setting.flag})")
                values[setting.name] = ""
                continue
            raw = setting.default
            origin = f"{setting.env} (default)"
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as error:
            shown = "" if setting.secret else f", got {raw[:80]!r}"
            raise ConfigError(f"{origin} {error}{shown}") from None
    if not values["instance"]:
        values["instance"] = socket.gethostname()
    return Settings(**values)


def describe(settings: Settings) -> dict[str, str]:
    """Every setting for display, secrets replaced by whether they are set."""
    secret = {setting.name for setting in SETTINGS if setting.secret}
    shown: dict[str, str] = {}
    for field in fields(settings):
        value = getattr(settings, field.name)
        if field.name in secret:
            shown[field.name] = "(set)" if value else "(not set)"
        else:
            shown[field.name] = "" if value is None else str(value)
    return shown
