"""Expected records for the machine's tests: whole `CallRecord`s, so a test compares every
field of a call, not one field with the rest assumed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from monitor.core.model import (
    CallRecord,
    CallState,
    Direction,
    EndedBy,
    Outcome,
    Reason,
    SipStatus,
    Source,
    Timings,
)
from tests.unit.script import T0


def fresh(**fields: Any) -> CallRecord:
    """The record of the scripts' call (`CallScript`'s defaults) as it starts."""
    record = CallRecord(
        key="SCL_test1",
        call_id="SCL_test1",
        room="call-test",
        room_sid="RM_1",
        participant_sid="PA_test1",
        identity="callee",
        direction=Direction.OUTBOUND,
        trunk_id="ST_trunk1",
        phone_number="+15551112222",
        trunk_phone_number="+15550000000",
        state=CallState.DIALING,
        last_status=SipStatus.DIALING,
        statuses=(SipStatus.DIALING,),
        timings=Timings(started_at=T0),
        sources=frozenset({Source.ROOM}),
    )
    return replace(record, **fields)


def times(
    started: float,
    *,
    ringing: float | None = None,
    answered: float | None = None,
    ended: float | None = None,
    ringing_approximate: bool = False,
    answer_approximate: bool = False,
) -> Timings:
    """A call's moments, in seconds after T0 as the scripts give them."""
    return Timings(
        started_at=T0 + started,
        ringing_at=None if ringing is None else T0 + ringing,
        answered_at=None if answered is None else T0 + answered,
        ended_at=None if ended is None else T0 + ended,
        ringing_approximate=ringing_approximate,
        answer_approximate=answer_approximate,
    )


def live(statuses: str, timings: Timings, **fields: Any) -> CallRecord:
    """The scripts' call, open, having shown `statuses` (space-separated, in order): in the
    state of the last one unless `fields` say otherwise."""
    shown = tuple(SipStatus(status) for status in statuses.split())
    last = shown[-1] if shown else None
    state = CallState.DIALING if last is None else CallState(last.value)
    return fresh(
        **{"state": state, "last_status": last, "statuses": shown, "timings": timings, **fields}
    )


def final(
    statuses: str,
    timings: Timings,
    *,
    outcome: Outcome,
    reason: Reason | None,
    ended_by: EndedBy,
    **fields: Any,
) -> CallRecord:
    """The scripts' call once its outcome is final (`live`'s, ended)."""
    return live(
        statuses,
        timings,
        state=CallState.ENDED,
        outcome=outcome,
        reason=reason,
        ended_by=ended_by,
        **fields,
    )
