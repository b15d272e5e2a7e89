"""Structured logs: structlog configured once, and the call log sink.

JSON lines on stdout by default, one object per event, a readable console rendering on a
terminal. Every event name is a fixed string and everything else is a key/value field
(docs/logging.md lists them all). Two processors are a safety net for what a field
might carry by mistake: secrets are redacted by key (and JWTs or bearer tokens by
value), and phone numbers are masked in every string, so that a number in an identity,
a room name or a library's message never reaches the output whole.

`CallLog.handle(effect)` is the sink for the machine's effects: `call_started`, one
`call_state_changed` per state change, one summary `call_ended` per ended call (the
canonical log line) and `anomaly` warnings.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from monitor.core.model import (
    Anomaly,
    CallEnded,
    CallRecord,
    CallStarted,
    Direction,
    Effect,
    StateChanged,
)
from monitor.core.privacy import NumberMasker

__all__ = [
    "ANOMALY_LOG_LIMIT",
    "REDACTED",
    "AddInstance",
    "CallLog",
    "LogRateLimiter",
    "MaskNumbers",
    "add_timestamp",
    "call_identity",
    "call_summary",
    "configure_logging",
    "iso_time",
    "lead_with_time_level_event",
    "redact_secrets",
]

REDACTED: Final = "[redacted]"

# A key is secret when one of its words is one of these (`api_secret`, `X-Auth-Token`,
# `authorization`, `jwt`...) or it contains one of the longer ones (`apisecret`).
_SECRET_WORDS: Final = frozenset(
    {
        "auth",
        "authorization",
        "bearer",
        "cookie",
        "credential",
        "credentials",
        "jwt",
        "passphrase",
        "passwd",
        "password",
        "secret",
        "secrets",
        "token",
        "tokens",
    }
)
_SECRET_PARTS: Final = ("secret", "token", "password", "passwd", "credential", "authoriz")
_WORD: Final = re.compile(r"[a-z0-9]+")
# Values that are secrets whatever their key: a JWT (LiveKit access tokens and webhook
# signatures are JWTs), the credentials of an Authorization header, and the user and
# password of a URL (`https://user:pass@host`, as LIVEKIT_URL may be given).
# One pattern, so a string is scanned once (this runs on every string of every line).
_SECRET_VALUE: Final = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
    r"|(?i:(?<=\bbearer )\S+|(?<=\bbasic )[A-Za-z0-9+/=]{8,})"
    r"|(?<=://)[^\s/@]+(?=@)"
)
# Fields whose values are LiveKit-made ids or set by us, never numbers: left as they are
# so that searches by them work. `_record` and `_from_structlog` are stdlib bridge meta.
_NOT_MASKED: Final = frozenset(
    {
        "timestamp",
        "level",
        "instance",
        "call_id",
        "call_key",
        "room_sid",
        "participant_sid",
        "trunk_id",
        "_record",
        "_from_structlog",
    }
)
_LEADING: Final = ("timestamp", "level", "event")
_HANDLER_NAME: Final = "call-monitor"
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


# ---- processors ------------------------------------------------------------------------


def iso_time(at: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds: fixed width, so it sorts as text."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def add_timestamp(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """`timestamp`: now, ISO 8601 UTC with milliseconds (`2026-11-26T09:00:00.123Z`)."""
    event_dict["timestamp"] = iso_time(time.time())
    return event_dict


def lead_with_time_level_event(
    _logger: WrappedLogger, _method: str, event_dict: EventDict
) -> EventDict:
    """Put timestamp, level and event first, so a line reads well before it is parsed."""
    lead = {key: event_dict.pop(key) for key in _LEADING if key in event_dict}
    return {**lead, **event_dict}


# Keys are few (field names), and this runs for every key of every line.
@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    if any(part in lowered for part in _SECRET_PARTS):
        return True
    return any(word in _SECRET_WORDS for word in _WORD.findall(lowered))


def _scrub(value: object) -> object:
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {
            key: REDACTED if _is_secret_key(str(key)) else _scrub(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(item) for item in value]
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace the value of any secret-looking key, at any depth, and JWTs in any string."""
    return {
        key: REDACTED if _is_secret_key(key) else _scrub(value) for key, value in event_dict.items()
    }


class AddInstance:
    """Bind `instance` (this monitor's name) to every event."""

    def __init__(self, instance: str) -> None:
        self.instance = instance

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("instance", self.instance)
        return event_dict


class MaskNumbers:
    """Mask phone numbers in every string field, at any depth (the safety net).

    Values that are neither strings, numbers nor containers are turned into strings
    first, so that a repr rendered later cannot carry a number past this point.
    """

    def __init__(self, masker: NumberMasker) -> None:
        self.masker = masker

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        if not self.masker.enabled:
            return event_dict
        return {
            key: value if key in _NOT_MASKED else self._mask(value)
            for key, value in event_dict.items()
        }

    def _mask(self, value: object) -> object:
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.masker.text(value)
        if isinstance(value, Mapping):
            return {key: self._mask(item) for key, item in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._mask(item) for item in value]
        return self.masker.text(str(value))


# ---- configuration -----------------------------------------------------------------------


class LogSettings(Protocol):
    """What logging is set by (`monitor.runtime.config.Settings` has these)."""

    @property
    def log_format(self) -> str: ...
    @property
    def log_level(self) -> str: ...
    @property
    def mask_numbers(self) -> bool: ...
    @property
    def mask_keep_digits(self) -> int: ...
    @property
    def instance(self) -> str: ...


def configure_logging(settings: LogSettings, stream: TextIO | None = None) -> None:
    """Configure structlog (and the stdlib `logging` of libraries) for the whole process.

    Call once at start-up. JSON lines go to `stream` (stdout by default) when
    `log_format` is json, or auto and the stream is not a terminal; console otherwise.
    """
    out = sys.stdout if stream is None else stream
    console = settings.log_format == "console" or (settings.log_format == "auto" and out.isatty())
    level = _LEVELS[settings.log_level]
    masker = NumberMasker(settings.mask_numbers, settings.mask_keep_digits)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        AddInstance(settings.instance),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become text or data here, before the safety nets see them.
        structlog.processors.format_exc_info
        if console
        else structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
        redact_secrets,
        MaskNumbers(masker),
        add_timestamp,
    ]
    renderer: Processor
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*shared, lead_with_time_level_event, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    # Libraries (livekit, aiohttp) log through the standard library: same format, same
    # safety nets, same stream.
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(),
                *shared,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                lead_with_time_level_event,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The WebRTC SDK logs every room connection at info; below debug only its warnings
    # and errors are the operator's business.
    sdk_level = level if level <= logging.DEBUG else max(level, logging.WARNING)
    logging.getLogger("livekit").setLevel(sdk_level)


# ---- the call log sink -------------------------------------------------------------------


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# Anomalies of one kind logged per call (or room) before the rest are only counted: a
# participant flipping its status a thousand times a second must not flood the logs.
ANOMALY_LOG_LIMIT: Final = 5
# How many (call, kind) pairs are remembered for that limit; the oldest are forgotten.
_ANOMALY_KEYS_KEPT: Final = 10_000


class CallLog:
    """The log sink for the machine's effects: one event per start, state change, end
    and anomaly; numbers and identities masked as `masker` says."""

    def __init__(
        self, logger: FilteringBoundLogger | None = None, masker: NumberMasker | None = None
    ) -> None:
        self._log: FilteringBoundLogger = structlog.get_logger() if logger is None else logger
        self._masker = NumberMasker() if masker is None else masker
        self._anomalies_logged: OrderedDict[tuple[str, str], int] = OrderedDict()

    def handle(self, effect: Effect) -> None:
        """Log one effect of the machine."""
        if isinstance(effect, CallStarted):
            call = effect.call
            self._log.info(
                "call_started",
                **call_identity(call, self._masker),
                state=str(call.state),
                status=None if call.last_status is None else str(call.last_status),
                started_at=iso_time(call.timings.started_at),
                sources=sorted(str(source) for source in call.sources),
            )
        elif isinstance(effect, StateChanged):
            call = effect.call
            self._log.info(
                "call_state_changed",
                call_id=call.call_id,
                call_key=call.key,
                room=self._masker.text(call.room),
                direction=str(call.direction),
                trunk_id=call.trunk_id,
                previous_state=str(effect.previous),
                state=str(call.state),
                status=None if call.last_status is None else str(call.last_status),
                source=str(effect.source),
            )
        elif isinstance(effect, CallEnded):
            self._log.info("call_ended", **call_summary(effect.call, self._masker))
        elif isinstance(effect, Anomaly):
            self._anomaly(effect)

    def _anomaly(self, effect: Anomaly) -> None:
        key = (effect.call_key or effect.room, str(effect.kind))
        seen = self._anomalies_logged.pop(key, 0) + 1
        self._anomalies_logged[key] = seen
        if len(self._anomalies_logged) > _ANOMALY_KEYS_KEPT:
            self._anomalies_logged.popitem(last=False)
        if seen > ANOMALY_LOG_LIMIT + 1:
            return
        fields = {
            "kind": str(effect.kind),
            # The key is the sip.callID unless the call had none ("sid:<sid>").
            "call_id": "" if effect.call_key.startswith("sid:") else effect.call_key,
            "call_key": effect.call_key,
            "room": self._masker.text(effect.room),
        }
        if seen > ANOMALY_LOG_LIMIT:
            self._log.warning("anomalies_suppressed", limit=ANOMALY_LOG_LIMIT, **fields)
            return
        self._log.warning("anomaly", detail=self._masker.text(effect.detail), **fields)


# ---- a call as plain data ---------------------------------------------------------------


def call_identity(call: CallRecord, masker: NumberMasker) -> dict[str, Any]:
    """Who a call is, as plain data, numbers masked as `masker` says."""
    return {
        "call_id": call.call_id,
        "call_key": call.key,
        "room": masker.text(call.room),
        "room_sid": call.room_sid,
        "participant_sid": call.participant_sid,
        "identity": masker.text(call.identity),
        "direction": str(call.direction),
        "trunk_id": call.trunk_id,
        "phone_number": masker.number(call.phone_number),
        "trunk_phone_number": masker.number(call.trunk_phone_number),
    }


def call_summary(call: CallRecord, masker: NumberMasker) -> dict[str, Any]:
    """Everything known about a call as plain data, numbers masked as `masker` says: the
    call log's `call_ended` line, a `/calls` entry, a line of `replay --json`."""
    timings = call.timings
    outbound = call.direction is Direction.OUTBOUND
    return {
        **call_identity(call, masker),
        "state": str(call.state),
        "outcome": None if call.outcome is None else str(call.outcome),
        "ambiguous": bool(call.ambiguity),
        "ambiguity": call.ambiguity,
        "reason": None if call.reason is None else str(call.reason),
        "ended_by": None if call.ended_by is None else str(call.ended_by),
        "sip_status_code": call.sip_status_code,
        "sip_status": masker.text(call.sip_status),
        "answered": timings.answered_at is not None,
        "statuses": [str(status) for status in call.statuses],
        "post_dial_delay_seconds": _seconds(timings.post_dial_delay) if outbound else None,
        # Seen only after the fact (the observer came after the 18x): left out of
        # the post-dial delay histogram.
        "post_dial_delay_approximate": timings.ringing_approximate if outbound else None,
        "time_to_answer_seconds": _seconds(timings.time_to_answer),
        "talk_seconds": _seconds(timings.talk_duration),
        "total_seconds": _seconds(timings.total_duration),
        "timings_approximate": call.timings_approximate,
        "started_at": iso_time(timings.started_at),
        "ended_at": None if timings.ended_at is None else iso_time(timings.ended_at),
        "sources": sorted(str(source) for source in call.sources),
    }


# ---- rate limits for repeated warnings ---------------------------------------------------


class LogRateLimiter:
    """One log line per key per `interval` seconds; the rest are counted, not written.

    `admit(key)` is None when the line is to be dropped, else how many lines of that key
    were dropped since the last one written (the `suppressed` field of the next line).
    At most `max_keys` keys are remembered, the least recently seen forgotten first, so
    an attacker varying a key costs memory only up to that bound.
    """

    def __init__(
        self,
        interval: float = 10.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        # key: (when its last line was written, lines dropped since)
        self._keys: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def admit(self, key: Hashable) -> int | None:
        now = self._clock()
        last = self._keys.pop(key, None)
        if last is not None and now - last[0] < self.interval:
            self._keys[key] = (last[0], last[1] + 1)
            return None
        self._keys[key] = (now, 0)
        if len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return 0 if last is None else last[1]

    def warning(self, log: FilteringBoundLogger, event: str, key: Hashable, **fields: Any) -> None:
        """`log.warning(event, suppressed=k, **fields)` unless the limit drops it."""
        suppressed = self.admit((event, key))
        if suppressed is not None:
            log.warning(event, suppressed=suppressed, **fields)
