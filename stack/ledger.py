"""Read the SIP simulator's ledger: one JSON object a line, one `call_ended` per call.

The simulator appends a line for each thing that happens to a call (`ts`, `call_id`,
`event`, more fields by event) and one final `call_ended` line with the whole story of
the call. `Ledger` reads the file incrementally (a line still being written is left
for the next read) and turns the lines into frozen records; `wait_call_ended` and
`await_call_ended` poll until the line for a given call appears.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "CallEnded",
    "Ledger",
    "LedgerError",
    "LedgerEvent",
    "LedgerTimeout",
    "LineTail",
    "parse_line",
    "parse_time",
]


class LedgerError(ValueError):
    """A complete ledger line that is not what the simulator documents."""


class LedgerTimeout(TimeoutError):
    """The awaited ledger line did not appear in time."""


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: Any) -> float | None:
    """A ledger timestamp as Unix seconds: a number, or an RFC 3339 string; None stays."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise LedgerError(f"not a timestamp: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = _FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00")
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError as err:
            raise LedgerError(f"not a timestamp: {value!r}") from err
    raise LedgerError(f"not a timestamp: {value!r}")


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """One ledger line: when, which call, what happened, and the line's other fields."""

    ts: float
    call_id: str
    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The final `call_ended` line of a call: how it went, from the simulator's side."""

    ts: float
    call_id: str
    direction: str
    scenario: str
    quirks: tuple[str, ...]
    room: str
    participant_identity: str
    participant_sid: str
    trunk_id: str
    answered: bool
    sip_status_code: int | None
    statuses: tuple[str, ...]
    leave_reason: str
    ended_by: str
    t_start: float | None
    t_ringing: float | None
    t_answer: float | None
    t_end: float | None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_event(cls, event: LedgerEvent) -> CallEnded:
        """Build the record from a parsed `call_ended` line; LedgerError if it is not one."""
        if event.event != "call_ended":
            raise LedgerError(f"not a call_ended line: {event.event!r}")
        f = event.fields
        try:
            code = f.get("sip_status_code")
            return cls(
                ts=event.ts,
                call_id=event.call_id,
                direction=str(f["direction"]),
                scenario=str(f.get("scenario") or ""),
                quirks=_strings(f.get("quirks")),
                room=str(f.get("room") or ""),
                participant_identity=str(f.get("participant_identity") or ""),
                participant_sid=str(f.get("participant_sid") or ""),
                trunk_id=str(f.get("trunk_id") or ""),
                answered=bool(f.get("answered", False)),
                sip_status_code=int(code) if code not in (None, "") else None,
                statuses=_strings(f.get("statuses")),
                leave_reason=str(f.get("leave_reason") or ""),
                ended_by=str(f.get("ended_by") or ""),
                t_start=parse_time(f.get("t_start")),
                t_ringing=parse_time(f.get("t_ringing")),
                t_answer=parse_time(f.get("t_answer")),
                t_end=parse_time(f.get("t_end")),
                raw=dict(f),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise LedgerError(f"bad call_ended line for {event.call_id}: {err}") from err

    @property
    def duration(self) -> float | None:
        """Seconds from the start of the call to its end, when both are known."""
        if self.t_start is None or self.t_end is None:
            return None
        return self.t_end - self.t_start


def _strings(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(part for part in value.split(",") if part)
    if isinstance(value, Sequence):
        return tuple(str(v) for v in value)
    raise LedgerError(f"expected a list of strings, got {value!r}")


def parse_line(line: str | bytes) -> LedgerEvent:
    """Parse one ledger line (LedgerError when it lacks `ts`, `call_id` or `event`)."""
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as err:
        raise LedgerError(f"not JSON: {line!r:.200}") from err
    if not isinstance(doc, dict):
        raise LedgerError(f"not a JSON object: {line!r:.200}")
    try:
        ts = parse_time(doc.pop("ts"))
        call_id = doc.pop("call_id")
        event = doc.pop("event")
    except KeyError as err:
        raise LedgerError(f"ledger line without {err}: {line!r:.200}") from err
    if ts is None or not isinstance(call_id, str) or not isinstance(event, str):
        raise LedgerError(f"bad ts, call_id or event: {line!r:.200}")
    return LedgerEvent(ts=ts, call_id=call_id, event=event, fields=doc)


class LineTail:
    """The complete lines appended to a file since the last read (it may not exist yet);
    a line still being written waits for the next read. A file found shorter than what
    was read (truncated or replaced) is read again from its start, and `read` says so."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._offset = 0
        self._partial = b""

    def read(self) -> tuple[list[bytes], bool]:
        """(the new complete lines, whether the file started over)."""
        restarted = False
        try:
            size = self.path.stat().st_size
            if size == self._offset:
                return [], False
            if size < self._offset:
                self._offset, self._partial, restarted = 0, b"", True
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return [], False
        self._offset += len(chunk)
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        return [line for line in complete if line.strip()], restarted


class Ledger:
    """An incremental reader of one ledger file (it may not exist yet).

    Each line is parsed once; `call_ended` records are kept and indexed by call id
    and by room, so many coroutines can poll one `Ledger` cheaply (a poll that finds
    nothing new costs one `stat`).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._tail = LineTail(self.path)
        self._reset()

    def _reset(self) -> None:
        self._events: list[LedgerEvent] = []
        self._ended: list[CallEnded] = []
        self._ended_by_call: dict[str, CallEnded] = {}
        self._ended_by_room: dict[str, list[CallEnded]] = {}

    def refresh(self) -> list[LedgerEvent]:
        """Read the lines appended since the last read; return the new events."""
        lines, restarted = self._tail.read()
        if restarted:  # truncated or replaced: what was read is gone
            self._reset()
        new = [parse_line(line) for line in lines]
        self._events.extend(new)
        for event in new:
            if event.event == "call_ended":
                ended = CallEnded.from_event(event)
                self._ended.append(ended)
                self._ended_by_call[ended.call_id] = ended
                self._ended_by_room.setdefault(ended.room, []).append(ended)
        return new

    def events(self, call_id: str | None = None) -> list[LedgerEvent]:
        """All events in the file so far, optionally of one call."""
        self.refresh()
        return [e for e in self._events if call_id is None or e.call_id == call_id]

    def calls_ended(self) -> list[CallEnded]:
        """Every `call_ended` record in the file so far, in order."""
        self.refresh()
        return list(self._ended)

    def find_call_ended(
        self,
        *,
        call_id: str | None = None,
        room: str | None = None,
        participant_identity: str | None = None,
    ) -> CallEnded | None:
        """The last `call_ended` matching every given field, or None."""
        self.refresh()
        if call_id is not None:
            found = self._ended_by_call.get(call_id)
            candidates = [found] if found is not None else []
        elif room is not None:
            candidates = self._ended_by_room.get(room, [])
        else:
            candidates = self._ended
        for ended in reversed(candidates):
            if (room is None or ended.room == room) and (
                participant_identity is None or ended.participant_identity == participant_identity
            ):
                return ended
        return None

    def wait_call_ended(
        self,
        *,
        call_id: str | None = None,
        room: str | None = None,
        participant_identity: str | None = None,
        timeout: float = 30.0,
        poll: float = 0.05,
    ) -> CallEnded:
        """Block until a matching `call_ended` line is there (LedgerTimeout otherwise)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find_call_ended(
                call_id=call_id, room=room, participant_identity=participant_identity
            )
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise LedgerTimeout(
                    f"no call_ended for call_id={call_id} room={room} "
                    f"identity={participant_identity} in {self.path} after {timeout:.1f} s"
                )
            time.sleep(poll)

    async def await_call_ended(
        self,
        *,
        call_id: str | None = None,
        room: str | None = None,
        participant_identity: str | None = None,
        poll: float = 0.05,
    ) -> CallEnded:
        """Like `wait_call_ended`, for coroutines; bound it with `asyncio.timeout`."""
        while True:
            found = self.find_call_ended(
                call_id=call_id, room=room, participant_identity=participant_identity
            )
            if found is not None:
                return found
            await asyncio.sleep(poll)
