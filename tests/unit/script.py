"""A small script language for one call's events, so scenario tests read like the traces."""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor.core.machine import CallBook, MachineSettings
from monitor.core.model import (
    AttributesChanged,
    CallEnded,
    CallRecord,
    DialFailed,
    Effect,
    Event,
    Participant,
    ParticipantLeft,
    ParticipantSeen,
    ParticipantVanished,
    Reason,
    RoomEnded,
    Source,
    Tick,
)

T0 = 1_795_619_902.0


@dataclass
class CallScript:
    """Events of one SIP participant; times are seconds after T0."""

    inbound: bool = False
    call_id: str = "SCL_test1"
    sid: str = "PA_test1"
    room: str = "call-test"
    identity: str = "callee"
    trunk: str = "ST_trunk1"
    number: str = "+15551112222"
    extra: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    status: str | None = None

    def attributes(self, status: str | None) -> dict[str, str]:
        attrs = {
            "sip.trunkID": self.trunk,
            "sip.phoneNumber": self.number,
            "sip.trunkPhoneNumber": "+15550000000",
            "sip.hostname": "127.0.0.1:5090",
        }
        if self.call_id:
            attrs["sip.callID"] = self.call_id
        if self.inbound:
            attrs["sip.ruleID"] = "SDR_rule1"
        if status is not None:
            attrs["sip.callStatus"] = status
        attrs.update(self.extra)
        return attrs

    def participant(self, joined_at: float | None = None) -> Participant:
        return Participant(self.sid, self.identity, self.attributes(self.status), True, joined_at)

    def seen(
        self,
        at: float,
        status: str | None,
        source: Source = Source.ROOM,
        joined: float | None = None,
    ) -> CallScript:
        self.status = status
        joined_at = None if joined is None else T0 + joined
        self.events.append(
            ParticipantSeen(T0 + at, source, self.room, self.participant(joined_at), "RM_1")
        )
        return self

    def to(self, at: float, status: str | None, source: Source = Source.ROOM) -> CallScript:
        self.status = status
        changed = {"sip.callStatus": status or ""}
        self.events.append(
            AttributesChanged(T0 + at, source, self.room, self.participant(), changed, "RM_1")
        )
        return self

    def left(
        self,
        at: float,
        reason: Reason | None,
        source: Source = Source.ROOM,
        status: str | None = "keep",
        raw_reason: str = "",
    ) -> CallScript:
        if status != "keep":
            self.status = status
        raw = raw_reason or ("" if reason is None else reason.value)
        self.events.append(
            ParticipantLeft(T0 + at, source, self.room, self.participant(), reason, raw, "RM_1")
        )
        return self

    def vanished(self, at: float) -> CallScript:
        self.events.append(ParticipantVanished(T0 + at, Source.RECONCILE, self.room, self.sid))
        return self

    def room_ended(
        self, at: float, reason: Reason | None, source: Source = Source.ROOM, room_sid: str = ""
    ) -> CallScript:
        self.events.append(RoomEnded(T0 + at, source, self.room, reason, room_sid))
        return self

    def dial_failed(self, at: float, code: int | None, call_id: str = "") -> CallScript:
        self.events.append(DialFailed(T0 + at, self.room, self.identity, code, "phrase", call_id))
        return self

    def tick(self, at: float) -> CallScript:
        self.events.append(Tick(T0 + at))
        return self


def run(events: list[Event], settle: float = 0.0) -> tuple[CallBook, list[Effect]]:
    book = CallBook(MachineSettings(settle_seconds=settle))
    effects: list[Effect] = []
    for event in events:
        effects += book.step(event)
    return book, effects


def ended(effects: list[Effect]) -> list[CallRecord]:
    return [effect.call for effect in effects if isinstance(effect, CallEnded)]


def only_end(effects: list[Effect]) -> CallRecord:
    records = ended(effects)
    assert len(records) == 1, records
    return records[0]


def mixed_calls(count: int, open_calls: int = 2) -> tuple[list[Event], set[str]]:
    """`count` ended calls of six kinds on three trunks, then `open_calls` still ringing.

    Every call has its own number, call id, room, participant and identity; these are
    returned too, since none of them may appear in any label.
    """
    events: list[Event] = []
    private: set[str] = set()
    trunks = ("ST_alpha", "ST_beta", "ST_gamma")
    for index in range(count + open_calls):
        number = f"+1555{index:07d}"
        script = CallScript(
            inbound=index % 6 in (4, 5),
            call_id=f"SCL_{index:06d}",
            sid=f"PA_{index:06d}",
            room=f"call-{number}-{index}",
            identity=f"sip_{number}",
            number=number,
            trunk=trunks[index % 3],
        )
        private |= {number, script.call_id, script.sid, script.room, script.identity}
        start = index * 10.0
        if index >= count:
            events += script.seen(start, "dialing").to(start + 0.2, "ringing").events
            continue
        kind = index % 6
        if kind == 0:  # answered, completed
            script.seen(start, "dialing").to(start + 0.3, "ringing")
            script.to(start + 4.0, "active").to(start + 64.0, "hangup")
            script.left(start + 64.01, Reason.CLIENT_INITIATED)
        elif kind == 1:  # busy, as the room shows it
            script.seen(start, "dialing").to(start + 0.5, "ringing")
            script.left(start + 2.0, Reason.USER_REJECTED)
        elif kind == 2:  # no answer
            script.seen(start, "dialing").to(start + 1.5, "ringing")
            script.left(start + 8.0, Reason.USER_UNAVAILABLE)
        elif kind == 3:  # trunk failure, with the dial side's SIP code
            script.seen(start, "dialing").dial_failed(start + 0.4, 503)
            script.left(start + 0.41, Reason.SIP_TRUNK_FAILURE)
        elif kind == 4:  # inbound answered, with a status regression on the way
            script.seen(start, "ringing").to(start + 3.0, "active").to(start + 3.5, "ringing")
            script.to(start + 7.0, "hangup").left(start + 7.01, Reason.CLIENT_INITIATED)
        else:  # inbound abandoned
            script.seen(start, "ringing").left(start + 6.0, Reason.CLIENT_INITIATED)
        events += script.events
    return events, private
