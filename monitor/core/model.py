"""The vocabulary of the call-state machine: states, statuses, reasons, events, effects.

Pure data only: no I/O, no clock, no livekit import. Everything here is a frozen,
slotted dataclass or an enum, so events and effects can be journaled, compared and
replayed. Time is always passed in on the event (`at`, seconds since the epoch as the
monitor received it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "ATTR_CALL_ID",
    "ATTR_CALL_STATUS",
    "ATTR_PHONE_NUMBER",
    "ATTR_RULE_ID",
    "ATTR_TRUNK_ID",
    "ATTR_TRUNK_PHONE_NUMBER",
    "Anomaly",
    "AnomalyKind",
    "AttributesChanged",
    "CallEnded",
    "CallRecord",
    "CallStarted",
    "CallState",
    "DialFailed",
    "Direction",
    "Effect",
    "EndedBy",
    "Event",
    "MonitorRestarted",
    "Outcome",
    "Participant",
    "ParticipantLeft",
    "ParticipantSeen",
    "ParticipantVanished",
    "Reason",
    "RoomEnded",
    "SipStatus",
    "Source",
    "StateChanged",
    "Tick",
    "Timings",
    "parse_reason",
]

# Attribute keys livekit-sip sets on a SIP participant (protocol livekit/attrs.go).
ATTR_CALL_ID = "sip.callID"
ATTR_CALL_STATUS = "sip.callStatus"
ATTR_TRUNK_ID = "sip.trunkID"
ATTR_RULE_ID = "sip.ruleID"
ATTR_PHONE_NUMBER = "sip.phoneNumber"
ATTR_TRUNK_PHONE_NUMBER = "sip.trunkPhoneNumber"


class SipStatus(StrEnum):
    """The five values of `sip.callStatus`; failures never get a final value."""

    DIALING = "dialing"
    RINGING = "ringing"
    AUTOMATION = "automation"
    ACTIVE = "active"
    HANGUP = "hangup"


class CallState(StrEnum):
    """Where a call is, as the monitor knows it.

    ENDING: the participant has left, and the outcome waits a short settle window for
    late evidence (a dial-side SIP code, a last attribute that arrived after the leave).
    """

    DIALING = "dialing"
    RINGING = "ringing"
    AUTOMATION = "automation"
    ACTIVE = "active"
    HANGUP = "hangup"
    ENDING = "ending"
    ENDED = "ended"


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class Outcome(StrEnum):
    """How a call ended: exactly one per call (docs/outcomes.md)."""

    COMPLETED = "completed"  # answered, then hung up by either side
    DROPPED = "dropped"  # answered, then cut by a server or network failure
    BUSY = "busy"  # 486/600, known from the dial side
    DECLINED = "declined"  # 603 and other 6xx, known from the dial side
    FORBIDDEN = "forbidden"  # 401/403/407, known from the dial side
    NOT_FOUND = "not_found"  # 404/410/484/604, known from the dial side
    REJECTED = "rejected"  # refused by the far end or carrier (USER_REJECTED, other 4xx)
    UNAVAILABLE = "unavailable"  # USER_UNAVAILABLE before ringing, or 480
    NO_ANSWER = "no_answer"  # rang until a timeout
    TRUNK_FAILURE = "trunk_failure"  # 5xx, DNS or network error towards the trunk
    CANCELLED = "cancelled"  # ended before answer by our side (removed, room deleted)
    ABANDONED = "abandoned"  # inbound caller hung up before anyone answered
    FAILED = "failed"  # ended before answer for a reason that names no SIP cause
    LOST = "lost"  # the monitor could not see how it ended


class Reason(StrEnum):
    """LiveKit's DisconnectReason names (protocol livekit_models.proto)."""

    UNKNOWN_REASON = "UNKNOWN_REASON"
    CLIENT_INITIATED = "CLIENT_INITIATED"
    DUPLICATE_IDENTITY = "DUPLICATE_IDENTITY"
    SERVER_SHUTDOWN = "SERVER_SHUTDOWN"
    PARTICIPANT_REMOVED = "PARTICIPANT_REMOVED"
    ROOM_DELETED = "ROOM_DELETED"
    STATE_MISMATCH = "STATE_MISMATCH"
    JOIN_FAILURE = "JOIN_FAILURE"
    MIGRATION = "MIGRATION"
    SIGNAL_CLOSE = "SIGNAL_CLOSE"
    ROOM_CLOSED = "ROOM_CLOSED"
    USER_UNAVAILABLE = "USER_UNAVAILABLE"
    USER_REJECTED = "USER_REJECTED"
    SIP_TRUNK_FAILURE = "SIP_TRUNK_FAILURE"
    CONNECTION_TIMEOUT = "CONNECTION_TIMEOUT"
    MEDIA_FAILURE = "MEDIA_FAILURE"
    AGENT_ERROR = "AGENT_ERROR"


# The reasons a connection gets when the room itself ends.
ROOM_GONE_REASONS = frozenset({Reason.ROOM_DELETED, Reason.ROOM_CLOSED})

# The protocol's numbering, so an integer reason from any source maps to the same name.
REASON_BY_NUMBER: Mapping[int, Reason] = MappingProxyType(
    {number: reason for number, reason in enumerate(Reason)}
)


def parse_reason(value: object) -> tuple[Reason | None, str]:
    """A reason from a name or the protocol's number; (None, raw) when it is neither.

    UNKNOWN_REASON is kept as a reason of its own: it is what older servers send.
    """
    if isinstance(value, Reason):
        return value, value.value
    if isinstance(value, bool):
        return None, str(value)[:64]
    if isinstance(value, int):
        return REASON_BY_NUMBER.get(value), str(value)
    if isinstance(value, str):
        name = value.strip().upper()
        if name.isdigit():
            return REASON_BY_NUMBER.get(int(name)), value[:64]
        try:
            return Reason(name), value[:64]
        except ValueError:
            return None, value[:64]
    return None, "" if value is None else repr(value)[:64]


class Source(StrEnum):
    """Who delivered an event. All sources are equal; each fact counts once."""

    ROOM = "room"  # a room connection's events
    WEBHOOK = "webhook"  # livekit-server's webhooks
    RECONCILE = "reconcile"  # RoomService listings
    DIAL = "dial"  # the dial-side hook (SIP status of a failed CreateSIPParticipant)
    CLOCK = "clock"  # time passing


class EndedBy(StrEnum):
    FAR_END = "far_end"  # the callee or caller hung up, or the far side refused the call
    OUR_SIDE = "our_side"  # our API removed the participant or deleted the room
    SERVER = "server"  # livekit-server or the network cut it
    UNKNOWN = "unknown"


class AnomalyKind(StrEnum):
    """Something a well-behaved livekit-sip and server would not produce.

    Bounded on purpose: it is a metric label.
    """

    UNKNOWN_STATUS = "unknown_status"  # sip.callStatus has a value outside the five
    MISSING_STATUS = "missing_status"  # a SIP participant without sip.callStatus
    MISSING_CALL_ID = "missing_call_id"  # no sip.callID: keyed by participant sid
    STATUS_REGRESSED = "status_regressed"  # status moved backwards; ignored
    DIRECTION_MISMATCH = "direction_mismatch"  # e.g. dialing on an inbound call
    ACTIVE_BEFORE_ANSWER = "active_before_answer"  # active, then ended as a failed dial
    EVENT_AFTER_END = "event_after_end"  # a status change after the outcome was final
    CONFLICTING_END = "conflicting_end"  # a final end disagreeing with an earlier one
    UNKNOWN_REASON_VALUE = "unknown_reason_value"  # a reason outside the protocol's list
    LATE_DIAL_DETAIL = "late_dial_detail"  # the SIP code came after the outcome was final
    UNMATCHED_DIAL_DETAIL = "unmatched_dial_detail"  # a SIP code for no known call
    CLOCK_SKEW = "clock_skew"  # an event older than what we already know
    CALL_ID_CHANGED = "call_id_changed"  # a participant changed its sip.callID
    END_WITHOUT_EVIDENCE = "end_without_evidence"  # call gone with no reason: outcome lost
    ENDED_WHILE_AWAY = "ended_while_away"  # gone unseen after a restart: lost while down


@dataclass(frozen=True, slots=True)
class Participant:
    """A SIP participant as one source saw it at one moment."""

    sid: str
    identity: str
    attributes: Mapping[str, str]
    is_sip: bool = True
    joined_at: float | None = None  # server's join time, when the source carries it

    def __post_init__(self) -> None:
        # Freeze the mapping: events are shared between sinks and the journal.
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    @property
    def call_id(self) -> str | None:
        return self.attributes.get(ATTR_CALL_ID) or None

    @property
    def status(self) -> str | None:
        return self.attributes.get(ATTR_CALL_STATUS)


# ---- events: what the sources tell the machine -------------------------------------


@dataclass(frozen=True, slots=True)
class ParticipantSeen:
    """A snapshot of a participant: joined, seeded after connecting, or listed."""

    at: float
    source: Source
    room: str
    participant: Participant
    room_sid: str = ""


@dataclass(frozen=True, slots=True)
class AttributesChanged:
    """The participant's attributes changed; `participant` holds the full set after it."""

    at: float
    source: Source
    room: str
    participant: Participant
    changed: Mapping[str, str] = field(default_factory=dict)
    room_sid: str = ""


@dataclass(frozen=True, slots=True)
class ParticipantLeft:
    """The participant left; `participant` holds its last attributes.

    `reason` is None when the source gave none, or a value outside the protocol's list
    (`raw_reason` keeps what was received).
    """

    at: float
    source: Source
    room: str
    participant: Participant
    reason: Reason | None
    raw_reason: str = ""
    room_sid: str = ""


@dataclass(frozen=True, slots=True)
class ParticipantVanished:
    """A listing no longer shows the participant, and no source said how it left."""

    at: float
    source: Source
    room: str
    participant_sid: str


@dataclass(frozen=True, slots=True)
class RoomEnded:
    """The room is gone. `reason` is what the observer was told (ROOM_DELETED...), if any;
    `room_sid` which room of that name it was, when known."""

    at: float
    source: Source
    room: str
    reason: Reason | None = None
    room_sid: str = ""


@dataclass(frozen=True, slots=True)
class DialFailed:
    """The dial side's CreateSIPParticipant failed: the only place the SIP code exists."""

    at: float
    room: str
    participant_identity: str
    sip_status_code: int | None  # None: a timeout with no SIP response (Twirp canceled)
    sip_status: str = ""
    call_id: str = ""  # known only if the dial returned before failing
    source: Source = Source.DIAL


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes: ends whose settle window is over become final."""

    at: float
    source: Source = Source.CLOCK


@dataclass(frozen=True, slots=True)
class MonitorRestarted:
    """The monitor started again on its journal: the calls it knew open may have
    changed, or ended, unseen while it was down. Not a journal line of its own: the
    new run's header is its record."""

    at: float
    source: Source = Source.CLOCK


Event = (
    ParticipantSeen
    | AttributesChanged
    | ParticipantLeft
    | ParticipantVanished
    | RoomEnded
    | DialFailed
    | Tick
    | MonitorRestarted
)


# ---- records and effects: what the machine tells the sinks --------------------------


@dataclass(frozen=True, slots=True)
class Timings:
    """Moments of a call (epoch seconds) and the durations derived from them."""

    started_at: float
    ringing_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    # True when the moment was seen only in a snapshot (a listing, a webhook, the
    # observer arriving late): it happened at or before the time given.
    ringing_approximate: bool = False
    answer_approximate: bool = False

    @property
    def post_dial_delay(self) -> float | None:
        """From the dial (join) to the first ringing: outbound only."""
        return _span(self.started_at, self.ringing_at)

    @property
    def time_to_answer(self) -> float | None:
        return _span(self.started_at, self.answered_at)

    @property
    def talk_duration(self) -> float | None:
        return _span(self.answered_at, self.ended_at)

    @property
    def total_duration(self) -> float | None:
        return _span(self.started_at, self.ended_at)


def _span(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, end - start)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """Everything known about one call; final once its CallEnded is emitted."""

    key: str  # sip.callID, or "sid:<participant sid>" where it is missing
    call_id: str
    room: str
    room_sid: str
    participant_sid: str
    identity: str
    direction: Direction
    trunk_id: str
    phone_number: str
    trunk_phone_number: str
    state: CallState
    last_status: SipStatus | None
    statuses: tuple[SipStatus, ...]
    timings: Timings
    outcome: Outcome | None = None
    ambiguity: str = ""  # why the outcome could be another one; "" when certain
    reason: Reason | None = None
    ended_by: EndedBy | None = None
    sip_status_code: int | None = None
    sip_status: str = ""
    sources: frozenset[Source] = frozenset()

    @property
    def timings_approximate(self) -> bool:
        """Whether a setup moment (ringing, answer) was seen only after the fact."""
        return self.timings.ringing_approximate or self.timings.answer_approximate


@dataclass(frozen=True, slots=True)
class CallStarted:
    at: float
    call: CallRecord


@dataclass(frozen=True, slots=True)
class StateChanged:
    at: float
    source: Source
    previous: CallState
    call: CallRecord


@dataclass(frozen=True, slots=True)
class CallEnded:
    at: float
    call: CallRecord


@dataclass(frozen=True, slots=True)
class Anomaly:
    at: float
    kind: AnomalyKind
    detail: str
    room: str = ""
    call_key: str = ""


Effect = CallStarted | StateChanged | CallEnded | Anomaly
