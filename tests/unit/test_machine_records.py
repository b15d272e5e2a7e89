"""Whole records, step by step: after each event of a walk, the call's record is the one
expected in every field, not one field checked and the rest assumed."""

from __future__ import annotations

from dataclasses import replace

from monitor.core.machine import CallBook, MachineSettings
from monitor.core.model import (
    CallEnded,
    CallRecord,
    CallState,
    Direction,
    EndedBy,
    Event,
    Outcome,
    Reason,
    SipStatus,
    Source,
    Timings,
)
from tests.unit.records import fresh
from tests.unit.script import T0, CallScript


def walk(book: CallBook, events: list[Event], key: str) -> list[CallRecord]:
    """The call's record after each event (its final record once it ended)."""
    records: list[CallRecord] = []
    for event in events:
        ended = [e.call for e in book.step(event) if isinstance(e, CallEnded)]
        record = ended[0] if ended else book.call(key)
        assert record is not None, event
        records.append(record)
    return records


def test_an_answered_outbound_call_record_by_record() -> None:
    script = CallScript().seen(0.041, "dialing").to(0.045, "ringing").to(2.08, "active")
    script.to(5.081, "hangup").left(5.083, Reason.CLIENT_INITIATED)
    book = CallBook(MachineSettings(settle_seconds=1.0))
    records = walk(book, [*script.events, *CallScript().tick(6.2).events], "SCL_test1")
    dialing = fresh(timings=Timings(started_at=T0 + 0.041))
    ringing = replace(
        dialing,
        state=CallState.RINGING,
        last_status=SipStatus.RINGING,
        statuses=(SipStatus.DIALING, SipStatus.RINGING),
        timings=replace(dialing.timings, ringing_at=T0 + 0.045),
    )
    active = replace(
        ringing,
        state=CallState.ACTIVE,
        last_status=SipStatus.ACTIVE,
        statuses=(*ringing.statuses, SipStatus.ACTIVE),
        timings=replace(ringing.timings, answered_at=T0 + 2.08),
    )
    hangup = replace(
        active,
        state=CallState.HANGUP,
        last_status=SipStatus.HANGUP,
        statuses=(*active.statuses, SipStatus.HANGUP),
    )
    ending = replace(hangup, state=CallState.ENDING)
    ended = replace(
        ending,
        state=CallState.ENDED,
        outcome=Outcome.COMPLETED,
        reason=Reason.CLIENT_INITIATED,
        ended_by=EndedBy.FAR_END,
        timings=replace(hangup.timings, ended_at=T0 + 5.083),
    )
    assert records == [dialing, ringing, active, hangup, ending, ended]


def test_a_busy_outbound_call_with_its_dial_detail_record_by_record() -> None:
    script = CallScript().seen(0.04, "dialing").to(0.05, "ringing")
    script.dial_failed(1.0, 486).left(1.01, Reason.USER_REJECTED)
    book = CallBook(MachineSettings(settle_seconds=1.0))
    records = walk(book, [*script.events, *CallScript().tick(2.5).events], "SCL_test1")
    ringing = records[1]
    assert records[0] == replace(
        ringing,
        state=CallState.DIALING,
        last_status=SipStatus.DIALING,
        statuses=(SipStatus.DIALING,),
        timings=Timings(started_at=T0 + 0.04),
    )
    with_code = replace(
        ringing,
        sip_status_code=486,
        sip_status="phrase",
        sources=ringing.sources | {Source.DIAL},
    )
    assert records[2] == with_code
    assert records[3] == replace(with_code, state=CallState.ENDING)
    assert records[4] == replace(
        with_code,
        state=CallState.ENDED,
        outcome=Outcome.BUSY,
        reason=Reason.USER_REJECTED,
        ended_by=EndedBy.FAR_END,
        timings=replace(with_code.timings, ended_at=T0 + 1.01),
    )


def test_an_inbound_caller_who_gives_up_record_by_record() -> None:
    script = CallScript(inbound=True, identity="sip_+15551230000").seen(0.2, "ringing")
    script.to(4.0, "hangup").left(4.01, Reason.CLIENT_INITIATED)
    book = CallBook(MachineSettings(settle_seconds=0.0))
    ringing, hangup, ended = walk(book, script.events, "SCL_test1")
    assert ringing == fresh(
        identity="sip_+15551230000",
        direction=Direction.INBOUND,
        state=CallState.RINGING,
        last_status=SipStatus.RINGING,
        statuses=(SipStatus.RINGING,),
        # An inbound call joins ringing: it rings from its start.
        timings=Timings(started_at=T0 + 0.2, ringing_at=T0 + 0.2),
    )
    assert hangup == replace(
        ringing,
        state=CallState.HANGUP,
        last_status=SipStatus.HANGUP,
        statuses=(SipStatus.RINGING, SipStatus.HANGUP),
    )
    assert ended == replace(
        hangup,
        state=CallState.ENDED,
        outcome=Outcome.ABANDONED,
        reason=Reason.CLIENT_INITIATED,
        ended_by=EndedBy.FAR_END,
        timings=replace(hangup.timings, ended_at=T0 + 4.01),
    )
