"""Settings, from command-line flags first, then the environment, then defaults.

LiveKit's own variable names (LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET) and the
monitor's own (CALL_MONITOR_*). One table declares them all: the CLI builds its flags
from it and the README's "Configuration" lists it (a test checks). A missing or
malformed setting is a `ConfigError` whose one-line message names the setting; a
secret's value never appears in a message or a listing, nor does a user or password
in a URL (which is refused). The API secret can come from a file
(LIVEKIT_API_SECRET_FILE), as container platforms hand secrets over.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from monitor.core.shards import Shard

__all__ = [
    "MIN_SECRET_LENGTH",
    "SETTINGS",
    "ConfigError",
    "Setting",
    "Settings",
    "describe",
    "http_url",
    "load_settings",
    "redacted_url",
    "ws_url",
]

# livekit-server refuses API secrets shorter than this (HS256 wants 256 bits of key).
MIN_SECRET_LENGTH = 32
# A secret file larger than this is the wrong file.
_MAX_SECRET_FILE_BYTES = 64 * 1024


class ConfigError(ValueError):
    """A setting is missing or malformed; str() is one line naming it."""


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss", "http", "https"):
        raise ValueError("must start with ws://, wss://, http:// or https://")
    if not parts.hostname:
        raise ValueError("has no host")
    if "@" in parts.netloc:
        # The API's HTTP client refuses them next to its own Authorization header, and
        # livekit-server authenticates by the API key alone.
        raise ValueError("must not hold a user or password (the API key and secret are used)")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value.rstrip("/")


def _with_scheme(url: str, schemes: Mapping[str, str]) -> str:
    """`url` with its scheme swapped as `schemes` says (LIVEKIT_URL may be either)."""
    scheme, sep, rest = url.partition("://")
    return schemes.get(scheme, scheme) + sep + rest


def ws_url(url: str) -> str:
    """LIVEKIT_URL as the signal WebSocket's."""
    return _with_scheme(url, {"http": "ws", "https": "wss"})


def http_url(url: str) -> str:
    """LIVEKIT_URL as the HTTP API's."""
    return _with_scheme(url, {"ws": "http", "wss": "https"})


def redacted_url(url: str) -> str:
    """The URL for display, without the user and password it may carry.

    Everything between the scheme and the last `@` goes, so a malformed URL (an `@` or
    `/` in the password) loses its credentials too.
    """
    before, at, host_and_path = url.rpartition("@")
    if not at:
        return url
    scheme, slashes, _ = before.partition("://")
    return f"{scheme}://***@{host_and_path}" if slashes else f"***@{host_and_path}"


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty")
    return value.strip()


def _secret(value: str) -> str:
    secret = _text(value)
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"must be at least {MIN_SECRET_LENGTH} characters, as livekit-server requires"
        )
    return secret


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


def _optional_shard(value: str) -> int | None:
    return None if not value.strip() else _bounded_int(0, 1023)(value)


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
    # How a value is shown in errors and listings (a URL without its credentials).
    display: Callable[[str], str] = str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "livekit_url",
        "LIVEKIT_URL",
        _url,
        None,
        "livekit-server URL (ws:// or http://)",
        display=redacted_url,
    ),
    Setting("livekit_api_key", "LIVEKIT_API_KEY", _text, None, "LiveKit API key"),
    Setting(
        "livekit_api_secret",
        "LIVEKIT_API_SECRET",
        _secret,
        None,
        f"LiveKit API secret, {MIN_SECRET_LENGTH} characters or more (never printed; "
        "a flag shows in ps to every user: prefer the variable or the file)",
        secret=True,
    ),
    Setting(
        "livekit_api_secret_file",
        "LIVEKIT_API_SECRET_FILE",
        _path,
        "",
        "a file holding the LiveKit API secret (a Docker or Kubernetes secret), instead "
        "of LIVEKIT_API_SECRET",
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
        "observer",
        "CALL_MONITOR_OBSERVER",
        _choice("signal", "rtc"),
        "signal",
        "signal: watch rooms on livekit-server's signal WebSocket alone (no WebRTC); "
        "rtc: through the WebRTC SDK in observer processes, the fallback",
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
        "rtc observer only: room connections an observer process closes before it is replaced",
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
        str(32 * 2**20),
        "rotate the journal at this size (a restart reads back at most one file)",
    ),
    Setting(
        "journal_backups",
        "CALL_MONITOR_JOURNAL_BACKUPS",
        _bounded_int(0, 1000),
        "15",
        "rotated journal files to keep",
    ),
    Setting(
        "journal_fsync",
        "CALL_MONITOR_JOURNAL_FSYNC",
        _choice("interval", "batch", "off"),
        "interval",
        "when journal writes reach the disk (every write reaches the OS before an "
        "answer): interval: within a second; batch: before a webhook or dial report "
        "is answered; off: when the OS decides",
    ),
    Setting(
        "api_timeout_seconds",
        "CALL_MONITOR_API_TIMEOUT_SECONDS",
        _bounded_float(0.5, 120),
        "10",
        "give up one LiveKit API request (a listing) after this long",
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
    Setting(
        "shards",
        "CALL_MONITOR_SHARDS",
        _bounded_int(1, 1024),
        "1",
        "replicas sharing the rooms: each owns the rooms whose name hashes (Prometheus's "
        "hashmod) to its shard",
    ),
    Setting(
        "shard",
        "CALL_MONITOR_SHARD",
        _optional_shard,
        "",
        "this replica's shard, 0 to CALL_MONITOR_SHARDS - 1 (default: the ordinal that "
        "ends a StatefulSet pod's host name, as in call-monitor-2)",
    ),
)


@dataclass(frozen=True, slots=True)
class Settings:
    livekit_url: str
    livekit_api_key: str
    livekit_api_secret: str
    livekit_api_secret_file: Path | None
    http_host: str
    http_port: int
    metrics_port: int | None
    metrics_host: str
    settle_seconds: float
    webhooks: bool
    room_mode: str
    observer: str
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
    journal_fsync: str
    api_timeout_seconds: float
    log_format: str
    log_level: str
    mask_numbers: bool
    mask_keep_digits: int
    instance: str
    shards: int
    shard: int

    @property
    def owned(self) -> Shard:
        """The rooms this replica owns (all of them with one shard)."""
        return Shard(self.shard, self.shards)

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
        given = _given(setting, flags, environ)
        if setting.name == "livekit_api_secret":
            given = _api_secret(given, flags, environ)
        if given is None:
            if setting.default is None:
                if required:
                    raise ConfigError(_missing(setting))
                values[setting.name] = ""
                continue
            given = (setting.default, f"{setting.env} (default)")
        raw, origin = given
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as error:
            shown = "" if setting.secret else f", got {setting.display(raw)[:80]!r}"
            raise ConfigError(f"{origin} {error}{shown}") from None
    if not values["instance"]:
        values["instance"] = socket.gethostname()
    values["shard"] = _resolve_shard(values["shard"], values["shards"], flags, environ)
    return Settings(**values)


def _resolve_shard(
    shard: int | None, shards: int, flags: Mapping[str, str | None], environ: Mapping[str, str]
) -> int:
    """This replica's shard: as given, else the StatefulSet ordinal of its host name."""
    if shard is None:
        if shards == 1:
            return 0
        host = environ.get("HOSTNAME") or socket.gethostname()
        stem, _, ordinal = host.rpartition("-")
        if not (stem and ordinal.isdigit()):
            raise ConfigError(
                f"CALL_MONITOR_SHARD is not set (or pass --shard), and the host name "
                f"{host[:60]!r} ends in no StatefulSet ordinal"
            )
        shard = int(ordinal)
        origin = f"the host name {host[:60]!r}"
    else:
        origin = "--shard" if flags.get("shard") is not None else "CALL_MONITOR_SHARD"
    if shard >= shards:
        raise ConfigError(f"{origin} gives shard {shard}, not one of 0 to {shards - 1}")
    return shard


def _missing(setting: Setting) -> str:
    message = f"{setting.env} is not set (or pass {setting.flag}"
    if setting.name == "livekit_api_secret":
        message += ", or LIVEKIT_API_SECRET_FILE"
    return message + ")"


def _given(
    setting: Setting, flags: Mapping[str, str | None], environ: Mapping[str, str]
) -> tuple[str, str] | None:
    """A setting's raw value and where it came from (its flag or variable), if given."""
    raw = flags.get(setting.name)
    if raw is not None:
        return raw, setting.flag
    raw = environ.get(setting.env)
    if raw is not None:
        return raw, setting.env
    return None


def _api_secret(
    given: tuple[str, str] | None,
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
) -> tuple[str, str] | None:
    """The API secret, given as such or in a file: a flag wins over the environment, and
    one place giving both is an error (which one was meant?)."""
    file_setting = next(s for s in SETTINGS if s.name == "livekit_api_secret_file")
    in_file = _given(file_setting, flags, environ)
    if in_file is None or not in_file[0].strip():
        return given
    if given is not None:
        secret_by_flag, file_by_flag = given[1].startswith("--"), in_file[1].startswith("--")
        if secret_by_flag == file_by_flag:
            raise ConfigError(f"{given[1]} and {in_file[1]} are both set: give one of them")
        if secret_by_flag:
            return given
    path = Path(in_file[0].strip())
    return _read_secret_file(path, in_file[1]), f"{in_file[1]} ({path})"


def _read_secret_file(path: Path, origin: str) -> str:
    try:
        with path.open("rb") as stream:
            data = stream.read(_MAX_SECRET_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{origin} {path} cannot be read: {error.strerror or error}") from None
    if len(data) > _MAX_SECRET_FILE_BYTES:
        raise ConfigError(f"{origin} {path} is larger than 64 KiB: not a secret")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{origin} {path} is not UTF-8 text") from None
    if not text.strip():
        raise ConfigError(f"{origin} {path} is empty")
    return text  # its trailing newline goes with the secret's parse


def describe(settings: Settings) -> dict[str, str]:
    """Every setting for display, secrets replaced by whether they are set, URLs without
    their credentials."""
    declared = {setting.name: setting for setting in SETTINGS}
    shown: dict[str, str] = {}
    for field in fields(settings):
        value = getattr(settings, field.name)
        setting = declared[field.name]
        if setting.secret:
            shown[field.name] = "(set)" if value else "(not set)"
        else:
            shown[field.name] = "" if value is None else setting.display(str(value))
    return shown
