"""The event journal: every event the sources delivered, one JSON object a line.

The live service appends each event before the machine sees it; `call-monitor replay`
feeds the same lines to a fresh machine, with the settings from the journal's header,
and gets the same outcomes. A line that cannot be read is reported with its number and
the kind of fault, and skipped: one bad line never hides the rest of an incident.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

from monitor.machine import MachineSettings
from monitor.model import (
    AttributesChanged,
    DialFailed,
    Event,
    Participant,
    ParticipantLeft,
    ParticipantSeen,
    ParticipantVanished,
    RoomEnded,
    Source,
    Tick,
    parse_reason,
)

__all__ = [
    "FORMAT_VERSION",
    "BadLine",
    "BadLineKind",
    "Header",
    "JournalError",
    "JournalWriter",
    "decode_line",
    "encode_event",
    "encode_header",
    "read_journal",
]

FORMAT_VERSION = 1

# Event times are epoch seconds; anything outside these years is not a time a source
# gave (and would overflow the clock that replay prints).
_EARLIEST = 0.0
_LATEST = 32_503_680_000.0  # 3000-01-01
# A machine setting is a duration; longer than this is no setting anyone made.
_LONGEST_SETTING = 1_000_000.0

_TYPE_OF: Mapping[type, str] = {
    ParticipantSeen: "participant_seen",
    AttributesChanged: "attributes_changed",
    ParticipantLeft: "participant_left",
    ParticipantVanished: "participant_vanished",
    RoomEnded: "room_ended",
    DialFailed: "dial_failed",
    Tick: "tick",
}


class BadLineKind(StrEnum):
    """What is wrong with a journal line that cannot be read."""

    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_TYPE = "unknown_type"
    BAD_FIELD = "bad_field"  # a known type with a missing or malformed field
    UNREADABLE = "unreadable"  # the file itself could not be read from this line on


class JournalError(ValueError):
    """A journal line that is not a valid event; `kind` says what is wrong, str() why."""

    def __init__(self, kind: BadLineKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Header:
    """The first line of each journal file: how the machine that wrote it was set."""

    settings: MachineSettings
    instance: str = ""
    started_at: float = 0.0


def encode_header(header: Header) -> str:
    return json.dumps(
        {
            "v": FORMAT_VERSION,
            "type": "header",
            "settings": asdict(header.settings),
            "instance": header.instance,
            "started_at": header.started_at,
        },
        separators=(",", ":"),
    )


def encode_event(event: Event) -> str:
    """One journal line (without the newline) for an event."""
    body: dict[str, Any] = {"v": FORMAT_VERSION, "type": _TYPE_OF[type(event)]}
    for name in event.__slots__:
        value = getattr(event, name)
        if isinstance(value, Participant):
            value = {
                "sid": value.sid,
                "identity": value.identity,
                "attributes": dict(value.attributes),
                "is_sip": value.is_sip,
                "joined_at": value.joined_at,
            }
        elif isinstance(value, Mapping):
            value = dict(value)
        body[name] = value
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def decode_line(line: str) -> Event | Header:
    """Parse one journal line; raises JournalError (and only that) naming what is wrong."""
    data = _json_object(line)
    if data.get("v") != FORMAT_VERSION:
        raise JournalError(
            BadLineKind.UNSUPPORTED_VERSION, f"unsupported journal version {data.get('v')!r:.40}"
        )
    kind = data.get("type")
    if kind != "header" and kind not in _TYPE_OF.values():
        raise JournalError(BadLineKind.UNKNOWN_TYPE, f"unknown event type {kind!r:.40}")
    try:
        return _decode(kind, data)
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        raise JournalError(
            BadLineKind.BAD_FIELD, f"bad {kind!r} event: {type(error).__name__}: {error}"
        ) from None


def _json_object(line: str) -> dict[str, Any]:
    try:
        # NaN and Infinity are not JSON, though Python's parser takes them.
        data = json.loads(line, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise JournalError(
            BadLineKind.NOT_JSON, f"not JSON: {error.msg} at column {error.colno}"
        ) from None
    except (ValueError, RecursionError) as error:  # a 5,000-digit number, [[[[...
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise JournalError(BadLineKind.NOT_JSON, f"not JSON: {reason}") from None
    if not isinstance(data, dict):
        raise JournalError(BadLineKind.NOT_AN_OBJECT, "not a JSON object")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _decode(kind: object, data: dict[str, Any]) -> Event | Header:
    if kind == "header":
        return _header(data)
    at = _time(data["at"])
    if kind == "tick":
        return Tick(at)
    source = Source(data["source"])
    if kind == "dial_failed":
        code = data.get("sip_status_code")
        return DialFailed(
            at,
            _text(data["room"]),
            _text(data["participant_identity"]),
            None if code is None else _sip_code(code),
            _text(data.get("sip_status", "")),
            _text(data.get("call_id", "")),
            source,
        )
    if kind == "room_ended":
        reason, _ = parse_reason(data.get("reason"))
        return RoomEnded(at, source, _text(data["room"]), reason, _text(data.get("room_sid", "")))
    if kind == "participant_vanished":
        return ParticipantVanished(at, source, _text(data["room"]), _text(data["participant_sid"]))
    participant = _participant(data["participant"])
    room = _text(data["room"])
    room_sid = _text(data.get("room_sid", ""))
    if kind == "participant_seen":
        return ParticipantSeen(at, source, room, participant, room_sid)
    if kind == "participant_left":
        reason, raw = parse_reason(data.get("reason"))
        raw = _text(data.get("raw_reason", raw))
        return ParticipantLeft(at, source, room, participant, reason, raw, room_sid)
    changed = _attributes(data.get("changed") or {})
    return AttributesChanged(at, source, room, participant, changed, room_sid)


_SETTING_NAMES = frozenset(field.name for field in fields(MachineSettings))


def _header(data: dict[str, Any]) -> Header:
    raw = data.get("settings") or {}
    if not isinstance(raw, dict):
        raise TypeError("settings are not an object")
    known = {name: _setting(name, value) for name, value in raw.items() if name in _SETTING_NAMES}
    started_at = data.get("started_at", 0.0)
    return Header(MachineSettings(**known), str(data.get("instance", "")), _time(started_at))


def _setting(name: str, value: Any) -> float:
    seconds = _number(value)
    if not 0.0 <= seconds <= _LONGEST_SETTING:
        raise ValueError(f"setting {name} is not from 0 to {_LONGEST_SETTING:g} seconds")
    return seconds


def _participant(data: Any) -> Participant:
    if not isinstance(data, dict):
        raise TypeError("participant is not an object")
    joined = data.get("joined_at")
    return Participant(
        sid=_text(data["sid"]),
        identity=_text(data.get("identity", "")),
        attributes=_attributes(data.get("attributes") or {}),
        is_sip=bool(data.get("is_sip", True)),
        # A webhook's joined_at_ms is any int64: kept as it came, for replay to match.
        joined_at=None if joined is None else _number(joined),
    )


def _attributes(data: Any) -> dict[str, str]:
    if not isinstance(data, dict):
        raise TypeError("attributes are not an object")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    number = float(value)  # OverflowError for an int too large for a float
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {number}")
    return number


def _time(value: Any) -> float:
    at = _number(value)
    if not _EARLIEST <= at <= _LATEST:
        raise ValueError(f"time {at:g} is not epoch seconds from 1970 to 3000")
    return at


def _sip_code(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer SIP code, got {type(value).__name__}")
    if not 0 <= value <= 999:
        raise ValueError("SIP code is not from 0 to 999")
    return value


@dataclass(frozen=True, slots=True)
class BadLine:
    path: str
    number: int
    error: str
    kind: BadLineKind = BadLineKind.BAD_FIELD


def read_journal(
    paths: Iterable[Path], bad_lines: list[BadLine] | None = None
) -> Iterator[Event | Header]:
    """Events and headers of journal files in order; bad lines go to `bad_lines`.

    Never raises for what a file holds: a file that cannot be read (from some line on)
    is one bad line, and the next file is read.
    """
    found = [] if bad_lines is None else bad_lines
    for path in paths:
        number = 0
        try:
            with path.open(encoding="utf-8", errors="replace") as stream:
                for number, line in enumerate(stream, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield decode_line(line)
                    except JournalError as error:
                        found.append(BadLine(str(path), number, str(error), error.kind))
        except OSError as error:
            reason = f"cannot read: {error.strerror or error}"
            found.append(BadLine(str(path), number + 1, reason, BadLineKind.UNREADABLE))


class JournalWriter:
    """Appends events to a file, rotating it at `max_bytes` and keeping `backups` old files.

    Each file starts with the header, so any one of them replays on its own.
    """

    def __init__(self, path: Path, header: Header, max_bytes: int, backups: int) -> None:
        self.path = path
        self._header_line = encode_header(header) + "\n"
        self._max_bytes = max_bytes
        self._backups = backups
        self._stream: TextIO | None = None
        self._size = 0

    def write(self, event: Event) -> None:
        """Append one event; raises OSError for the caller to count."""
        line = encode_event(event) + "\n"
        if self._stream is None:
            self._open()
        elif self._size + len(line) > self._max_bytes:
            self._rotate()
        assert self._stream is not None
        self._stream.write(line)
        self._stream.flush()
        self._size += len(line)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Owner only: it holds phone numbers, identities and room names in clear.
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._stream = open(descriptor, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        self._size = self.path.stat().st_size
        if self._size == 0:
            self._stream.write(self._header_line)
            self._size = len(self._header_line)

    def _rotate(self) -> None:
        self.close()
        for index in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self._backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._open()
