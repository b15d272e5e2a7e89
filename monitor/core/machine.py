"""The call-state machine: one state per SIP call, driven by typed events.

Contract: everything that decides a call's state and outcome lives here and in
`monitor.core.outcome`. No I/O, no asyncio, no livekit import, no clock: time comes in on
each event. `CallBook.step(event)` returns the effects for the runtime to perform, and
never raises on odd input: what a well-behaved server would not send becomes an
`Anomaly` effect and the state stays as it was.

Sources are equal and can be late, duplicated or out of order, so:
- a call is keyed by `sip.callID` (the participant sid where it is missing), and every
  source's event for it lands on the same call;
- status only moves forward (`TRANSITIONS`); a backward move is an anomaly;
- an end waits `settle_seconds` (state ENDING) for late evidence, such as the dial side's
  SIP code or the last attribute change arriving after the leave, then becomes final;
- a final call leaves a tombstone, so late events never start it again or end it twice;
- a call open across a restart of the monitor (`MonitorRestarted`) that then ends with
  no source having seen it again ended while the monitor was away, and says so.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from monitor.core.model import (
    ATTR_CALL_STATUS,
    ATTR_PHONE_NUMBER,
    ATTR_RULE_ID,
    ATTR_TRUNK_ID,
    ATTR_TRUNK_PHONE_NUMBER,
    Anomaly,
    AnomalyKind,
    AttributesChanged,
    CallEnded,
    CallRecord,
    CallStarted,
    CallState,
    DialFailed,
    Direction,
    Effect,
    Event,
    MonitorRestarted,
    Outcome,
    Participant,
    ParticipantLeft,
    ParticipantSeen,
    ParticipantVanished,
    Reason,
    RoomEnded,
    SipStatus,
    Source,
    StateChanged,
    Tick,
    Timings,
)
from monitor.core.outcome import decide

__all__ = [
    "END_TRANSITIONS",
    "TRANSITIONS",
    "Away",
    "CallBook",
    "MachineSettings",
    "OpenCall",
    "PendingEnd",
    "Tombstone",
    "state_diagram",
]

# Status-driven moves: the state a call may go to from each state. Anything else a
# status asks for is a regression (anomaly, ignored). Skips are allowed: a call may go
# from dialing straight to active (no 18x seen, or the observer saw only the result).
TRANSITIONS: Mapping[CallState, frozenset[CallState]] = MappingProxyType(
    {
        CallState.DIALING: frozenset(
            {CallState.RINGING, CallState.AUTOMATION, CallState.ACTIVE, CallState.HANGUP}
        ),
        CallState.RINGING: frozenset({CallState.AUTOMATION, CallState.ACTIVE, CallState.HANGUP}),
        CallState.AUTOMATION: frozenset({CallState.ACTIVE, CallState.HANGUP}),
        CallState.ACTIVE: frozenset({CallState.HANGUP}),
        CallState.HANGUP: frozenset(),
        CallState.ENDING: frozenset(),
        CallState.ENDED: frozenset(),
    }
)
# Moves made by a leave, not a status: every live state goes to ENDING (or straight to
# ENDED when there is no settle window), and ENDING goes to ENDED once it settles.
END_TRANSITIONS: Mapping[CallState, frozenset[CallState]] = MappingProxyType(
    {
        **{
            state: frozenset({CallState.ENDING, CallState.ENDED})
            for state in (
                CallState.DIALING,
                CallState.RINGING,
                CallState.AUTOMATION,
                CallState.ACTIVE,
                CallState.HANGUP,
            )
        },
        CallState.ENDING: frozenset({CallState.ENDED}),
    }
)


def state_diagram() -> str:
    """The machine's states and moves as a Mermaid state diagram, drawn from the tables
    (docs/outcomes.md shows it; a test keeps the two the same)."""
    lines = ["stateDiagram-v2"]
    joins = {
        (Direction.OUTBOUND, SipStatus.DIALING): "outbound call dials",
        (Direction.INBOUND, SipStatus.RINGING): "inbound call rings",
        (Direction.INBOUND, SipStatus.ACTIVE): "inbound call, a PIN asked",
    }
    for direction, statuses in _INITIAL_STATUS.items():
        for status in sorted(statuses, key=list(SipStatus).index):
            lines.append(f"    [*] --> {status.value}: {joins[(direction, status)]}")
    order = list(CallState)
    for state in order:
        for target in sorted(TRANSITIONS[state], key=order.index):
            lines.append(f"    {state.value} --> {target.value}: status {target.value}")
    for state in order:
        for target in sorted(END_TRANSITIONS.get(state, frozenset()), key=order.index):
            how = {
                (True, CallState.ENDING): "left, room ended or gone",
                (True, CallState.ENDED): "the same, with no settle window",
                (False, CallState.ENDED): "settle window over: one outcome",
            }[(state is not CallState.ENDING, target)]
            lines.append(f"    {state.value} --> {target.value}: {how}")
    lines.append(f"    {CallState.ENDED.value} --> [*]")
    return "\n".join(lines) + "\n"


_STATE_OF_STATUS: Mapping[SipStatus, CallState] = MappingProxyType(
    {status: CallState(status.value) for status in SipStatus}
)
_ANSWERED = frozenset({SipStatus.AUTOMATION, SipStatus.ACTIVE})
# The status a call starts with in each direction; first seen later than this, the
# setup timings are approximate.
_INITIAL_STATUS: Mapping[Direction, frozenset[SipStatus]] = MappingProxyType(
    {
        Direction.OUTBOUND: frozenset({SipStatus.DIALING}),
        # inbound joins ringing, or active when the dispatch rule asks for a PIN
        Direction.INBOUND: frozenset({SipStatus.RINGING, SipStatus.ACTIVE}),
    }
)
_NOT_FOR_INBOUND = frozenset({SipStatus.DIALING, SipStatus.AUTOMATION})
# A join time further than this ahead of our clock means the clocks disagree.
_CLOCK_SKEW_SECONDS = 2.0
# First seen this long after its join, a participant's status may have changed unseen.
_LATE_FIRST_SIGHT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class MachineSettings:
    # How long an end waits for late evidence before its outcome is final.
    settle_seconds: float = 0.0
    # How long a final call's key is remembered, so late events do not restart it.
    tombstone_seconds: float = 3600.0
    # How long a dial-side SIP code waits for its call to appear.
    orphan_dial_seconds: float = 30.0


# Strength of the evidence for how a call ended: a stronger one seen during the settle
# window replaces a weaker one.
_NO_EVIDENCE = 0  # gone from a listing, or its room vanished: nobody said how
_ROOM_REASON = 1  # the room ended with a reason (ROOM_DELETED...)
_PARTICIPANT_REASON = 2  # the participant's own leave, with or without a reason


@dataclass(frozen=True, slots=True)
class PendingEnd:
    """An end waiting `settle_seconds` for late evidence; `strength` ranks its evidence."""

    at: float
    reason: Reason | None
    strength: int
    deadline: float


@dataclass(frozen=True, slots=True)
class Away:
    """The monitor was down from `since` (its last event) to `until` (its restart)."""

    since: float
    until: float


@dataclass(frozen=True, slots=True)
class OpenCall:
    """A call not yet final as the book holds it: what `open_calls` gives and `adopt`
    takes back, so that a journal file can carry the calls open when it began."""

    record: CallRecord
    pending: PendingEnd | None = None
    dial_failed: bool = False
    # Set for a call open across a restart, until a source shows it again.
    away: Away | None = None


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What the book keeps of a final call for `tombstone_seconds`, so that late events
    never start it again or end it twice; kept under its key and `sid:<sid>`."""

    expires_at: float
    reason: Reason | None
    room: str
    identity: str
    lost: bool = False  # ended as `lost`: no source had said how
    participant_sid: str = ""


@dataclass(frozen=True, slots=True)
class _OrphanDial:
    event: DialFailed
    expires_at: float


class CallBook:
    """Every call the monitor knows, fed one event at a time.

    The book owns its calls; `step` is the way in for events and returns the effects.
    Two books fed the same events give the same effects, which is what replay relies
    on. `adopt` and `adopt_tombstone` take back what `open_calls` and `tombstones`
    gave, the calls a journal file carries (a restart reads the newest file alone).
    """

    def __init__(self, settings: MachineSettings | None = None) -> None:
        self.settings = settings or MachineSettings()
        self._calls: dict[str, OpenCall] = {}
        self._key_of_sid: dict[str, str] = {}
        self._keys_of_room: dict[str, set[str]] = {}
        self._pending: dict[str, float] = {}  # key -> settle deadline
        self._tombstones: OrderedDict[str, Tombstone] = OrderedDict()
        self._orphans: dict[tuple[str, str], _OrphanDial] = {}
        # (room, identity) -> (key, when it ended) of the latest final call there, for
        # late dial details
        self._ended_slots: dict[tuple[str, str], tuple[str, float]] = {}
        self._clock = float("-inf")
        self._clock_before = self._clock  # before the event being stepped moved it

    # ---- reading ----------------------------------------------------------------

    @property
    def now(self) -> float:
        return self._clock

    def live_calls(self) -> list[CallRecord]:
        """Calls not yet final (ENDING included), in the order they started."""
        return [call.record for call in self._calls.values()]

    def call(self, key: str) -> CallRecord | None:
        found = self._calls.get(key)
        return found.record if found else None

    def is_ended(self, key: str) -> bool:
        return key in self._tombstones

    def calls_in_room(self, room: str) -> list[CallRecord]:
        """Calls in one room not yet final, in key order."""
        return [self._calls[key].record for key in sorted(self._keys_of_room.get(room, ()))]

    def rooms(self) -> set[str]:
        """Rooms with at least one call not yet final."""
        return set(self._keys_of_room)

    def open_calls(self) -> list[OpenCall]:
        """The calls not yet final with their pending ends, for `adopt` to take back."""
        return list(self._calls.values())

    def tombstones(self, ended_since: float) -> list[tuple[str, Tombstone]]:
        """The final calls still remembered that ended at `ended_since` or later, oldest
        first and each once (not again under its `sid:` name), for `adopt_tombstone`."""
        found: list[tuple[str, Tombstone]] = []
        given: set[int] = set()
        newest_expiry = ended_since + self.settings.tombstone_seconds
        for key, stone in self._tombstones.items():
            if stone.expires_at >= newest_expiry and id(stone) not in given:
                given.add(id(stone))
                found.append((key, stone))
        return found

    # ---- the way back in after a restart ------------------------------------------

    def adopt(self, call: OpenCall) -> bool:
        """Take back a call `open_calls` gave (from a journal file whose earlier files
        are gone); False, and nothing changes, if the book knows the call already,
        open or final, or the call is not open. No effect: its start was counted."""
        record = call.record
        key = record.key
        if key in self._calls or key in self._tombstones or record.state is CallState.ENDED:
            return False
        if record.participant_sid in self._key_of_sid:
            return False  # the participant is another call here
        self._calls[key] = call
        self._key_of_sid[record.participant_sid] = key
        self._keys_of_room.setdefault(record.room, set()).add(key)
        if call.pending is not None:
            self._pending[key] = call.pending.deadline
        return True

    def adopt_tombstone(self, key: str, stone: Tombstone) -> bool:
        """Take back a final call `tombstones` gave; False if the book knows `key`."""
        if key in self._calls or key in self._tombstones or stone.expires_at <= self._clock:
            return False
        self._tombstones[key] = stone
        if stone.participant_sid:
            self._tombstones.setdefault(f"sid:{stone.participant_sid}", stone)
        if not key.startswith("sid:"):
            ended_at = stone.expires_at - self.settings.tombstone_seconds
            slot = (stone.room, stone.identity)
            if self._ended_slots.get(slot, ("", float("-inf")))[1] <= ended_at:
                self._ended_slots[slot] = (key, ended_at)
        return True

    # ---- the one way in ---------------------------------------------------------

    def step(self, event: Event) -> list[Effect]:
        """Apply one event; return what happened, in order.

        Time first (ends whose settle window is over become final), then the event's
        own handler, found by its kind in `_HANDLERS`.
        """
        self._clock_before = self._clock
        effects = self._advance_clock(event.at)
        return effects + _HANDLERS[type(event)](self, event)

    def _on_time(self, event: Tick) -> list[Effect]:
        return []  # time alone moved the calls, in `_advance_clock`

    def _on_restart(self, event: MonitorRestarted) -> list[Effect]:
        # Ends already settled are final; what is open now may have ended while the
        # monitor was down, from its last event until now.
        away = Away(self._clock_before, event.at)
        for open_key, call in self._calls.items():
            self._calls[open_key] = replace(call, away=away)
        return []

    def _on_vanished(self, event: ParticipantVanished) -> list[Effect]:
        key = self._key_of_sid.get(event.participant_sid)
        if key is None or key not in self._calls:
            return []
        return self._begin_end(key, event.at, event.source, None, _NO_EVIDENCE)

    def _on_room_ended(self, event: RoomEnded) -> list[Effect]:
        # A room closes (ROOM_CLOSED) only once every participant has left: a call still
        # live in it left unheard, so the close says nothing of how it ended.
        unheard = event.reason is None or event.reason is Reason.ROOM_CLOSED
        strength = _NO_EVIDENCE if unheard else _ROOM_REASON
        effects: list[Effect] = []
        for key in sorted(self._keys_of_room.get(event.room, ())):
            known_sid = self._calls[key].record.room_sid
            if event.room_sid and known_sid and known_sid != event.room_sid:
                continue  # an earlier room of that name (a late room_finished)
            effects += self._begin_end(key, event.at, event.source, event.reason, strength)
        return effects

    # ---- participants -------------------------------------------------------------

    def _on_participant(
        self, event: ParticipantSeen | AttributesChanged | ParticipantLeft
    ) -> list[Effect]:
        participant = event.participant
        if not participant.is_sip:
            return []
        effects: list[Effect] = []
        key = self._key_for(participant, event, effects)
        if key in self._tombstones:
            return effects + self._after_end(key, event)
        if key not in self._calls:
            effects += self._start(key, event)
        else:
            if self._calls[key].away is not None:
                self._calls[key] = replace(self._calls[key], away=None)  # seen again
            self._fill_room_sid(key, event.room_sid)
            effects += self._apply_status(key, event)
        if isinstance(event, ParticipantLeft):
            if event.reason is None and event.raw_reason:
                effects.append(
                    _anomaly(
                        event,
                        AnomalyKind.UNKNOWN_REASON_VALUE,
                        f"disconnect reason {event.raw_reason[:64]!r}",
                        key,
                    )
                )
            effects += self._begin_end(
                key, event.at, event.source, event.reason, _PARTICIPANT_REASON
            )
        return effects

    def _key_for(
        self,
        participant: Participant,
        event: ParticipantSeen | AttributesChanged | ParticipantLeft,
        effects: list[Effect],
    ) -> str:
        known = self._key_of_sid.get(participant.sid)
        call_id = participant.call_id
        if known is not None:
            if call_id and call_id != known and not known.startswith("sid:"):
                effects.append(
                    _anomaly(
                        event,
                        AnomalyKind.CALL_ID_CHANGED,
                        f"participant changed sip.callID from {known} to {call_id}",
                        known,
                    )
                )
            return known
        by_sid = f"sid:{participant.sid}"
        if call_id and call_id not in self._tombstones and by_sid in self._tombstones:
            # The participant's call is over: a call id that shows up only now (a late
            # event, a participant changing it) must not start a second call.
            return by_sid
        return call_id if call_id else by_sid

    def _start(
        self, key: str, event: ParticipantSeen | AttributesChanged | ParticipantLeft
    ) -> list[Effect]:
        participant = event.participant
        attrs = participant.attributes
        direction = Direction.INBOUND if attrs.get(ATTR_RULE_ID) else Direction.OUTBOUND
        started_at = event.at
        skewed = False
        if participant.joined_at is not None:
            started_at = min(started_at, participant.joined_at)
            skewed = participant.joined_at > event.at + _CLOCK_SKEW_SECONDS
        record = CallRecord(
            key=key,
            call_id=participant.call_id or "",
            room=event.room,
            room_sid=event.room_sid,
            participant_sid=participant.sid,
            identity=participant.identity,
            direction=direction,
            trunk_id=attrs.get(ATTR_TRUNK_ID, ""),
            phone_number=attrs.get(ATTR_PHONE_NUMBER, ""),
            trunk_phone_number=attrs.get(ATTR_TRUNK_PHONE_NUMBER, ""),
            state=CallState.DIALING if direction is Direction.OUTBOUND else CallState.RINGING,
            last_status=None,
            statuses=(),
            timings=Timings(started_at=started_at),
            sources=frozenset({event.source}),
        )
        self._calls[key] = OpenCall(record)
        self._key_of_sid[participant.sid] = key
        self._keys_of_room.setdefault(event.room, set()).add(key)
        effects: list[Effect] = []
        if skewed:
            effects.append(
                _anomaly(
                    event,
                    AnomalyKind.CLOCK_SKEW,
                    "the server's join time is ahead of this monitor's clock",
                    key,
                )
            )
        if not participant.call_id:
            effects.append(_anomaly(event, AnomalyKind.MISSING_CALL_ID, "no sip.callID", key))
        status = self._parse_status(key, event, effects)
        if status is not None:
            # First seen in the status it joined with, soon after joining: as it happened.
            seen_late = (
                participant.joined_at is not None
                and event.at - participant.joined_at > _LATE_FIRST_SIGHT_SECONDS
            )
            exact = status in _INITIAL_STATUS[direction] and not seen_late
            record = self._record_status(record, status, event.at, approximate=not exact)
            record = replace(record, state=_STATE_OF_STATUS[status])
            if direction is Direction.INBOUND and status in _NOT_FOR_INBOUND:
                effects.append(self._direction_mismatch(event, key, status))
        self._calls[key] = OpenCall(record, dial_failed=False)
        self._claim_orphan_dial(key)
        return [CallStarted(event.at, self._calls[key].record), *effects]

    def _fill_room_sid(self, key: str, room_sid: str) -> None:
        call = self._calls[key]
        if room_sid and not call.record.room_sid:
            self._calls[key] = replace(call, record=replace(call.record, room_sid=room_sid))

    def _parse_status(
        self,
        key: str,
        event: ParticipantSeen | AttributesChanged | ParticipantLeft,
        effects: list[Effect],
    ) -> SipStatus | None:
        raw = event.participant.status
        if raw is None:
            effects.append(_anomaly(event, AnomalyKind.MISSING_STATUS, "no sip.callStatus", key))
            return None
        try:
            return SipStatus(raw)
        except ValueError:
            effects.append(
                _anomaly(event, AnomalyKind.UNKNOWN_STATUS, f"sip.callStatus={raw[:64]!r}", key)
            )
            return None

    def _apply_status(
        self, key: str, event: ParticipantSeen | AttributesChanged | ParticipantLeft
    ) -> list[Effect]:
        effects: list[Effect] = []
        call = self._calls[key]
        record = replace(call.record, sources=call.record.sources | {event.source})
        status = self._parse_status(key, event, effects)
        if status is None:
            if event.participant.status is None:
                # Seen without a status: a room event still says the room was watched
                # (`watched` of the outcome rules). An unknown status word is not
                # counted: it may be an answer the room showed in words we cannot read.
                self._calls[key] = replace(call, record=record)
            return effects
        left_at = call.pending.at if call.pending is not None else None
        seen_after_leave = left_at is not None and event.at > left_at
        if status is record.last_status:
            if (
                isinstance(event, AttributesChanged)
                and _status_changed(event)
                and not seen_after_leave
            ):
                # First seen in a snapshot (a listing read before the observer
                # process's pipe delivered the room's event of the same change): the
                # live change says it was seen as it happened. Not after the leave:
                # then its moment is a bound still.
                record = replace(record, timings=_timed_live(record.timings, status, event.at))
            self._calls[key] = replace(call, record=record)
            return effects
        current = record.state
        target = _STATE_OF_STATUS[status]
        if current is CallState.ENDING:
            # The leave came first (sip PR #725): record a forward status, stay ENDING.
            if _is_forward(record.last_status, status):
                # Set before the leave, seen after it: timed at the leave at the latest,
                # a bound; so is any snapshot's time.
                assert left_at is not None  # ENDING always has a pending end
                record = self._record_status(
                    record,
                    status,
                    min(event.at, left_at),
                    approximate=seen_after_leave or not isinstance(event, AttributesChanged),
                )
            elif isinstance(event, AttributesChanged):
                effects.append(self._regression(event, key, record.last_status, status))
            self._calls[key] = replace(call, record=record)
            return effects
        if target not in TRANSITIONS[current]:
            # A snapshot (a join webhook delivered late, a listing taken before the last
            # change) may well be older than what we know: only a live change going
            # backwards is an anomaly.
            if isinstance(event, AttributesChanged):
                effects.append(self._regression(event, key, record.last_status, status))
            self._calls[key] = replace(call, record=record)
            return effects
        if record.direction is Direction.INBOUND and status in _NOT_FOR_INBOUND:
            effects.append(self._direction_mismatch(event, key, status))
        # Seen in a snapshot, not as it happened: when it rang or answered is a bound.
        snapshot = not isinstance(event, AttributesChanged)
        record = self._record_status(record, status, event.at, approximate=snapshot)
        record = replace(record, state=target)
        self._calls[key] = replace(call, record=record)
        effects.append(StateChanged(event.at, event.source, current, record))
        return effects

    @staticmethod
    def _record_status(
        record: CallRecord, status: SipStatus, at: float, approximate: bool = False
    ) -> CallRecord:
        timings = record.timings
        if status is SipStatus.RINGING and timings.ringing_at is None:
            timings = replace(timings, ringing_at=at, ringing_approximate=approximate)
        if status in _ANSWERED and timings.answered_at is None:
            timings = replace(timings, answered_at=at, answer_approximate=approximate)
        return replace(
            record,
            last_status=status,
            statuses=(*record.statuses, status),
            timings=timings,
        )

    def _regression(
        self,
        event: AttributesChanged,
        key: str,
        previous: SipStatus | None,
        status: SipStatus,
    ) -> Anomaly:
        return _anomaly(
            event, AnomalyKind.STATUS_REGRESSED, f"status {status} after {previous}; ignored", key
        )

    @staticmethod
    def _direction_mismatch(
        event: ParticipantSeen | AttributesChanged | ParticipantLeft, key: str, status: SipStatus
    ) -> Anomaly:
        return _anomaly(
            event, AnomalyKind.DIRECTION_MISMATCH, f"status {status} on an inbound call", key
        )

    # ---- ends ---------------------------------------------------------------------

    def _begin_end(
        self, key: str, at: float, source: Source, reason: Reason | None, strength: int
    ) -> list[Effect]:
        call = self._calls[key]
        record = replace(call.record, sources=call.record.sources | {source})
        pending = call.pending
        if pending is not None:
            if strength > pending.strength:
                pending = PendingEnd(at, reason, strength, pending.deadline)
            self._calls[key] = replace(call, record=record, pending=pending)
            return []
        pending = PendingEnd(at, reason, strength, at + self.settings.settle_seconds)
        previous = record.state
        record = replace(record, state=CallState.ENDING)
        self._calls[key] = replace(call, record=record, pending=pending)
        if self.settings.settle_seconds <= 0:
            return self._finalize(key, at, source, previous)
        self._pending[key] = pending.deadline
        return [StateChanged(at, source, previous, record)]

    def _finalize(self, key: str, at: float, source: Source, previous: CallState) -> list[Effect]:
        call = self._calls.pop(key)
        self._pending.pop(key, None)
        pending = call.pending
        assert pending is not None  # only calls with a pending end are finalized
        record = call.record
        answered = any(status in _ANSWERED for status in record.statuses)
        verdict = decide(
            direction=record.direction,
            answered=answered,
            last_status=record.last_status,
            reason=pending.reason,
            sip_status_code=record.sip_status_code,
            dial_failed=call.dial_failed,
            evidence=pending.strength > _NO_EVIDENCE,
            watched=Source.ROOM in record.sources,
        )
        # Never before a moment the call was seen at: sources' clocks and delays differ.
        seen = (record.timings.ringing_at, record.timings.answered_at)
        ended_at = max(pending.at, record.timings.started_at, *(t for t in seen if t is not None))
        timings = replace(record.timings, ended_at=ended_at)
        if verdict.active_before_answer:
            timings = replace(timings, answered_at=None)
        final = replace(
            record,
            state=CallState.ENDED,
            outcome=verdict.outcome,
            ambiguity=verdict.ambiguity,
            reason=pending.reason,
            ended_by=verdict.ended_by,
            timings=timings,
        )
        effects: list[Effect] = [
            StateChanged(at, source, previous, final),
            CallEnded(at, final),
        ]
        if verdict.active_before_answer:
            effects.append(
                Anomaly(
                    at,
                    AnomalyKind.ACTIVE_BEFORE_ANSWER,
                    f"reached active, then ended as a failed dial ({verdict.outcome})",
                    record.room,
                    key,
                )
            )
        if verdict.outcome is Outcome.LOST and call.away is not None:
            effects.append(
                Anomaly(
                    at,
                    AnomalyKind.ENDED_WHILE_AWAY,
                    "the call is gone, unseen since the monitor was down "
                    f"({_utc(call.away.since)} to {_utc(call.away.until)}): it ended then "
                    "or after, and no source said how",
                    record.room,
                    key,
                )
            )
        elif verdict.outcome is Outcome.LOST:
            effects.append(
                Anomaly(
                    at,
                    AnomalyKind.END_WITHOUT_EVIDENCE,
                    "the call is gone and no source said how it ended",
                    record.room,
                    key,
                )
            )
        self._forget(final, pending.reason, lost=verdict.outcome is Outcome.LOST)
        return effects

    def _forget(self, record: CallRecord, reason: Reason | None, lost: bool) -> None:
        self._key_of_sid.pop(record.participant_sid, None)
        keys = self._keys_of_room[record.room]
        keys.discard(record.key)
        if not keys:
            del self._keys_of_room[record.room]
        self._tombstones[record.key] = Tombstone(
            self._clock + self.settings.tombstone_seconds,
            reason,
            record.room,
            record.identity,
            lost,
            record.participant_sid,
        )
        # The sid maps to the tombstone too, so keyless late events find it.
        self._tombstones[f"sid:{record.participant_sid}"] = self._tombstones[record.key]
        self._ended_slots[(record.room, record.identity)] = (record.key, self._clock)

    def _after_end(
        self, key: str, event: ParticipantSeen | AttributesChanged | ParticipantLeft
    ) -> list[Effect]:
        """A late event for a final call: never restarts or re-ends it; says so if it differs."""
        stone = self._tombstones[key]
        if isinstance(event, ParticipantLeft) and stone.lost:
            # It was counted `lost`, and a source now says how it ended: the count
            # stands (nothing is counted twice), the anomaly makes the miss visible.
            return [
                _anomaly(
                    event,
                    AnomalyKind.CONFLICTING_END,
                    f"ended as lost, later told it left with {event.reason}",
                    key,
                )
            ]
        if isinstance(event, ParticipantLeft):
            known = (event.reason, stone.reason)
            if None not in known and event.reason != stone.reason:
                return [
                    _anomaly(
                        event,
                        AnomalyKind.CONFLICTING_END,
                        f"ended with {stone.reason}, later told {event.reason}",
                        key,
                    )
                ]
            return []
        if isinstance(event, AttributesChanged) and _status_changed(event):
            return [
                _anomaly(
                    event,
                    AnomalyKind.EVENT_AFTER_END,
                    f"sip.callStatus={str(event.participant.status)[:64]!r} after the end",
                    key,
                )
            ]
        return []

    # ---- the dial side --------------------------------------------------------------

    def _on_dial_failed(self, event: DialFailed) -> list[Effect]:
        key = self._find_dialed_call(event)
        if key is not None:
            return self._attach_dial(key, event)
        ended = self._find_ended_dial(event)
        if ended is not None:
            return [
                _anomaly(
                    event,
                    AnomalyKind.LATE_DIAL_DETAIL,
                    f"SIP {event.sip_status_code} arrived after the outcome was final",
                    ended,
                )
            ]
        self._orphans[(event.room, event.participant_identity)] = _OrphanDial(
            event, event.at + self.settings.orphan_dial_seconds
        )
        return []

    def _find_dialed_call(self, event: DialFailed) -> str | None:
        if event.call_id and event.call_id in self._calls:
            return event.call_id
        for key in sorted(self._keys_of_room.get(event.room, ())):
            call = self._calls[key]
            if (
                call.record.identity == event.participant_identity
                and call.record.direction is Direction.OUTBOUND
                and not call.dial_failed
            ):
                return key
        return None

    def _find_ended_dial(self, event: DialFailed) -> str | None:
        if event.call_id and event.call_id in self._tombstones:
            return event.call_id
        slot = self._ended_slots.get((event.room, event.participant_identity))
        if slot is None:
            return None
        key, ended_at = slot
        # Later than a dial detail comes, it is a new dial's, to the same number in the
        # same room, whose call the room has not shown yet.
        return key if event.at - ended_at <= self.settings.orphan_dial_seconds else None

    def _attach_dial(self, key: str, event: DialFailed) -> list[Effect]:
        call = self._calls[key]
        record = replace(
            call.record,
            sip_status_code=event.sip_status_code,
            sip_status=event.sip_status[:200],
            sources=call.record.sources | {Source.DIAL},
        )
        self._calls[key] = replace(call, record=record, dial_failed=True)
        return []

    def _claim_orphan_dial(self, key: str) -> None:
        record = self._calls[key].record
        orphan = self._orphans.pop((record.room, record.identity), None)
        if orphan is not None:
            self._attach_dial(key, orphan.event)

    # ---- time -----------------------------------------------------------------------

    def _advance_clock(self, at: float) -> list[Effect]:
        if at <= self._clock:
            return []
        self._clock = at
        effects: list[Effect] = []
        due = sorted((deadline, key) for key, deadline in self._pending.items() if deadline <= at)
        for _, key in due:
            effects += self._finalize(key, at, Source.CLOCK, CallState.ENDING)
        while self._tombstones:
            oldest_key, oldest = next(iter(self._tombstones.items()))
            if oldest.expires_at > at:
                break
            del self._tombstones[oldest_key]
            slot = (oldest.room, oldest.identity)
            if self._ended_slots.get(slot, ("", 0.0))[0] == oldest_key:
                del self._ended_slots[slot]
        for slot, orphan in list(self._orphans.items()):
            if orphan.expires_at <= at:
                del self._orphans[slot]
                effects.append(
                    Anomaly(
                        at,
                        AnomalyKind.UNMATCHED_DIAL_DETAIL,
                        f"SIP {orphan.event.sip_status_code} for a call never seen",
                        orphan.event.room,
                        "",
                    )
                )
        return effects


# Each kind of event's handler: the machine's dispatch is this table.
_HANDLERS: Mapping[type, Callable[[CallBook, Any], list[Effect]]] = MappingProxyType(
    {
        ParticipantSeen: CallBook._on_participant,
        AttributesChanged: CallBook._on_participant,
        ParticipantLeft: CallBook._on_participant,
        ParticipantVanished: CallBook._on_vanished,
        RoomEnded: CallBook._on_room_ended,
        DialFailed: CallBook._on_dial_failed,
        Tick: CallBook._on_time,
        MonitorRestarted: CallBook._on_restart,
    }
)


def _anomaly(
    event: ParticipantSeen | AttributesChanged | ParticipantLeft | DialFailed,
    kind: AnomalyKind,
    detail: str,
    key: str,
) -> Anomaly:
    """What an event about a call showed that a well-behaved source would not send."""
    return Anomaly(event.at, kind, detail, event.room, key)


def _utc(at: float) -> str:
    if not math.isfinite(at) or not 0 <= at < 32_503_680_000:
        return "?"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_forward(previous: SipStatus | None, status: SipStatus) -> bool:
    if previous is None:
        return True
    return _STATE_OF_STATUS[status] in TRANSITIONS[_STATE_OF_STATUS[previous]]


def _status_changed(event: AttributesChanged) -> bool:
    return ATTR_CALL_STATUS in event.changed


def _timed_live(timings: Timings, status: SipStatus, at: float) -> Timings:
    """`timings` once the live change to `status` arrived after a snapshot had shown it:
    the change was seen as it happened after all, so its moment is known; the earlier
    of the two times, as either may have been delivered late."""
    if status is SipStatus.RINGING and timings.ringing_approximate:
        moment = min(at, timings.ringing_at or at)
        return replace(timings, ringing_at=moment, ringing_approximate=False)
    if status in _ANSWERED and timings.answer_approximate:
        moment = min(at, timings.answered_at or at)
        return replace(timings, answered_at=moment, answer_approximate=False)
    return timings
