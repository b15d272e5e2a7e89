"""The journal's format: each line one JSON object, and what a line can hold.

An event as the sources delivered it; a header (how the machine that wrote the file was
set, which run); a `counted` line (the sinks were given a call's start or end); and,
at the top of a file a rotation begins, the calls the machine knew then (`open_call`,
`ended_call`). Pure: text in, typed values out. A line that cannot be read raises
`JournalError` naming the kind of fault; nothing else escapes `decode_line`.

The rtc fallback's observer processes send their events in the same lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any, TypeVar

from monitor.core.machine import Away, MachineSettings, OpenCall, PendingEnd, Tombstone
from monitor.core.model import (
    AttributesChanged,
    CallRecord,
    CallState,
    DialFailed,
    Direction,
    EndedBy,
    Event,
    Outcome,
    Participant,
    ParticipantLeft,
    ParticipantSeen,
    ParticipantVanished,
    Reason,
    RoomEnded,
    SipStatus,
    Source,
    Tick,
    Timings,
    parse_reason,
)

__all__ = [
    "FORMAT_VERSION",
    "BadLineKind",
    "CarriedCall",
    "CarriedEnd",
    "Counted",
    "Header",
    "JournalError",
    "JournalLine",
    "decode_event",
    "decode_line",
    "encode_counted",
    "encode_ended_call",
    "encode_event",
    "encode_header",
    "encode_open_call",
]

FORMAT_VERSION = 1

_Parsed = TypeVar("_Parsed")


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


@dataclass(frozen=True, slots=True)
class Counted:
    """The sinks were given call `key`'s start (`started`) or end (`ended`) at `at`."""

    what: str
    key: str
    at: float


COUNTED_WHAT = ("started", "ended")


def encode_counted(counted: Counted) -> str:
    return json.dumps(
        {
            "v": FORMAT_VERSION,
            "type": "counted",
            "what": counted.what,
            "key": counted.key,
            "at": counted.at,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


@dataclass(frozen=True, slots=True)
class CarriedCall:
    """An `open_call` line: a call open when its journal file began, as the book held it."""

    at: float
    call: OpenCall


@dataclass(frozen=True, slots=True)
class CarriedEnd:
    """An `ended_call` line: a final call still remembered when its file began."""

    at: float
    key: str
    stone: Tombstone


def encode_ended_call(at: float, key: str, stone: Tombstone) -> str:
    body = {"v": FORMAT_VERSION, "type": "ended_call", "at": at, "key": key, **asdict(stone)}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def encode_open_call(at: float, call: OpenCall) -> str:
    record = call.record
    body: dict[str, Any] = {"v": FORMAT_VERSION, "type": "open_call", "at": at}
    fields_of = {name: getattr(record, name) for name in record.__slots__}
    fields_of["statuses"] = list(record.statuses)
    fields_of["sources"] = sorted(record.sources)
    fields_of["timings"] = asdict(record.timings)
    body["record"] = fields_of
    body["pending"] = None if call.pending is None else asdict(call.pending)
    body["dial_failed"] = call.dial_failed
    away = call.away
    # Away since no event the book saw (-inf): null, as JSON has no infinity.
    body["away"] = (
        None
        if away is None
        else {"since": away.since if math.isfinite(away.since) else None, "until": away.until}
    )
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


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


JournalLine = Event | Header | Counted | CarriedCall | CarriedEnd


def decode_line(line: str) -> JournalLine:
    """Parse one journal line; raises JournalError (and only that) naming what is wrong."""
    data = _json_object(line)
    if data.get("v") != FORMAT_VERSION:
        raise JournalError(
            BadLineKind.UNSUPPORTED_VERSION, f"unsupported journal version {data.get('v')!r:.40}"
        )
    kind = data.get("type")
    if not isinstance(kind, str) or (kind not in _OTHER_TYPES and kind not in _TYPE_OF.values()):
        raise JournalError(BadLineKind.UNKNOWN_TYPE, f"unknown event type {kind!r:.40}")
    try:
        return _decode(kind, data)
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        reason = _shortened(f"{type(error).__name__}: {error}")
        raise JournalError(BadLineKind.BAD_FIELD, f"bad {kind!r} event: {reason}") from None


def decode_event(line: str) -> Event:
    """Parse a line that must be an event (an observer process's); raises JournalError."""
    found = decode_line(line)
    if isinstance(found, Header | Counted | CarriedCall | CarriedEnd):
        raise JournalError(BadLineKind.UNKNOWN_TYPE, f"a {type(found).__name__}, not an event")
    return found


def _shortened(reason: str) -> str:
    """A reason may quote a field, and a field may be 60 kB: its middle goes."""
    return reason if len(reason) <= 160 else f"{reason[:100]}...{reason[-50:]}"


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


def _decode(kind: object, data: dict[str, Any]) -> JournalLine:
    if kind == "header":
        return _header(data)
    at = _time(data["at"])
    if kind == "open_call":
        return CarriedCall(at, _open_call(data))
    if kind == "ended_call":
        stone = Tombstone(
            _time(data["expires_at"]),
            _maybe(data.get("reason"), Reason),
            _text(data["room"]),
            _text(data["identity"]),
            _flag(data.get("lost", False)),
            _text(data.get("participant_sid", "")),
        )
        return CarriedEnd(at, _text(data["key"]), stone)
    if kind == "counted":
        what = data["what"]
        if what not in COUNTED_WHAT:
            raise ValueError(f"counted {what!r:.40} is neither started nor ended")
        return Counted(what, _text(data["key"]), at)
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
_OTHER_TYPES = frozenset({"header", "counted", "open_call", "ended_call"})


def _open_call(data: dict[str, Any]) -> OpenCall:
    raw = _object(data["record"], "record")
    times = _object(raw["timings"], "timings")
    timings = Timings(
        started_at=_time(times["started_at"]),
        ringing_at=_maybe(times.get("ringing_at"), _time),
        answered_at=_maybe(times.get("answered_at"), _time),
        ended_at=_maybe(times.get("ended_at"), _time),
        ringing_approximate=_flag(times.get("ringing_approximate", False)),
        answer_approximate=_flag(times.get("answer_approximate", False)),
    )
    statuses = raw.get("statuses", [])
    sources = raw.get("sources", [])
    if not isinstance(statuses, list) or not isinstance(sources, list):
        raise TypeError("statuses and sources are lists")
    record = CallRecord(
        key=_text(raw["key"]),
        call_id=_text(raw["call_id"]),
        room=_text(raw["room"]),
        room_sid=_text(raw["room_sid"]),
        participant_sid=_text(raw["participant_sid"]),
        identity=_text(raw["identity"]),
        direction=Direction(raw["direction"]),
        trunk_id=_text(raw["trunk_id"]),
        phone_number=_text(raw["phone_number"]),
        trunk_phone_number=_text(raw["trunk_phone_number"]),
        state=CallState(raw["state"]),
        last_status=_maybe(raw.get("last_status"), SipStatus),
        statuses=tuple(SipStatus(status) for status in statuses),
        timings=timings,
        outcome=_maybe(raw.get("outcome"), Outcome),
        ambiguity=_text(raw.get("ambiguity", "")),
        reason=_maybe(raw.get("reason"), Reason),
        ended_by=_maybe(raw.get("ended_by"), EndedBy),
        sip_status_code=_maybe(raw.get("sip_status_code"), _sip_code),
        sip_status=_text(raw.get("sip_status", "")),
        sources=frozenset(Source(source) for source in sources),
    )
    pending = _maybe(data.get("pending"), lambda p: _object(p, "pending"))
    away = _maybe(data.get("away"), lambda a: _object(a, "away"))
    return OpenCall(
        record,
        None
        if pending is None
        else PendingEnd(
            _time(pending["at"]),
            _maybe(pending.get("reason"), Reason),
            int(_number(pending["strength"])),
            _time(pending["deadline"]),
        ),
        _flag(data.get("dial_failed", False)),
        None if away is None else Away(_since(away.get("since")), _time(away["until"])),
    )


def _since(value: Any) -> float:
    return float("-inf") if value is None else _number(value)


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{name} is not an object")
    return value


def _maybe(value: Any, parse: Callable[[Any], _Parsed]) -> _Parsed | None:
    return None if value is None else parse(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


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
