"""Scenario walks: every outcome and every livekit-sip quirk, in both directions.

Times and statuses follow the recordings of the real livekit-sip (tests/fixtures/traces,
and its README.md): e.g. run `a` rings at 0.045 s, answers at 2.08 s and hangs up
at 5.08 s. Where a walk checks a call, it checks the whole record, every field of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from monitor.core.machine import CallBook, MachineSettings
from monitor.core.model import (
    Anomaly,
    AnomalyKind,
    AttributesChanged,
    CallEnded,
    CallStarted,
    CallState,
    Direction,
    EndedBy,
    Outcome,
    Participant,
    ParticipantLeft,
    ParticipantSeen,
    Reason,
    Source,
    StateChanged,
)
from monitor.core.outcome import (
    AMBIGUOUS_480,
    AMBIGUOUS_ANSWER_UNSEEN,
    AMBIGUOUS_CLIENT_INITIATED_DIAL,
    AMBIGUOUS_INBOUND_RINGING,
    AMBIGUOUS_INBOUND_UNWATCHED,
    AMBIGUOUS_NO_HANGUP,
    AMBIGUOUS_NO_REASON,
    AMBIGUOUS_UNAVAILABLE_DIALING,
    AMBIGUOUS_UNAVAILABLE_RINGING,
)
from tests.unit.records import final, live, times
from tests.unit.script import T0, CallScript, ended, only_end, run

R = Reason
CALLER = "sip_+15551230000"  # the identity of `inbound()`'s caller
ROOM, WEBHOOK, RECONCILE, DIAL = Source.ROOM, Source.WEBHOOK, Source.RECONCILE, Source.DIAL
FAR, OURS, SERVER, UNSURE = EndedBy.FAR_END, EndedBy.OUR_SIDE, EndedBy.SERVER, EndedBy.UNKNOWN


def approx(value: float) -> object:
    return pytest.approx(value, abs=1e-6)


def case(value: object) -> str | None:
    """A test id names an expected ambiguity by whether there is one, not by its text."""
    if type(value) is str:
        return "ambiguous" if value else "certain"
    return None


def anomalies(effects: Sequence[object]) -> list[AnomalyKind]:
    return [effect.kind for effect in effects if isinstance(effect, Anomaly)]


def outbound() -> CallScript:
    return CallScript().seen(0.041, "dialing")


def inbound() -> CallScript:
    return CallScript(inbound=True, identity=CALLER).seen(0.2, "ringing")


# ---- outbound -------------------------------------------------------------------------


def test_answered_call_hung_up_by_callee_completes_with_its_timings() -> None:
    script = outbound().to(0.045, "ringing").to(2.08, "active").to(5.081, "hangup")
    script.left(5.083, R.CLIENT_INITIATED)
    _, effects = run(script.events)
    record = only_end(effects)
    assert record == final(
        "dialing ringing active hangup",
        times(0.041, ringing=0.045, answered=2.08, ended=5.083),
        outcome=Outcome.COMPLETED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.FAR_END,
    )
    timings = record.timings
    assert timings.post_dial_delay == approx(0.004)
    assert timings.time_to_answer == approx(2.039)
    assert timings.talk_duration == approx(3.003)
    assert timings.total_duration == approx(5.042)
    assert not record.timings_approximate
    assert anomalies(effects) == []


def test_answered_call_removed_by_us_completes_ended_by_our_side() -> None:
    # trace i: 200 at once (no ringing), participant removed after 3 s
    script = outbound().to(0.05, "active").left(3.05, R.PARTICIPANT_REMOVED)
    record = only_end(run(script.events)[1])
    assert record == final(
        "dialing active",
        times(0.041, answered=0.05, ended=3.05),
        outcome=Outcome.COMPLETED,
        reason=R.PARTICIPANT_REMOVED,
        ended_by=EndedBy.OUR_SIDE,
    )
    assert record.timings.post_dial_delay is None


def test_room_deleted_after_answer_completes_from_the_observers_own_disconnect() -> None:
    # trace j: the observer gets `disconnected` ROOM_DELETED and no event for the callee
    script = outbound().to(0.05, "ringing").to(1.1, "active").room_ended(4.1, R.ROOM_DELETED)
    assert only_end(run(script.events)[1]) == final(
        "dialing ringing active",
        times(0.041, ringing=0.05, answered=1.1, ended=4.1),
        outcome=Outcome.COMPLETED,
        reason=R.ROOM_DELETED,
        ended_by=EndedBy.OUR_SIDE,
    )


@pytest.mark.parametrize(
    ("statuses", "reason", "outcome", "ended_by", "ambiguity"),
    [
        # 486, 603, 403 (b, d)
        (["ringing"], R.USER_REJECTED, Outcome.REJECTED, FAR, ""),
        # 404, 480 (e, f)
        ([], R.USER_UNAVAILABLE, Outcome.UNAVAILABLE, FAR, AMBIGUOUS_UNAVAILABLE_DIALING),
        # ringing timeout (h)
        (["ringing"], R.USER_UNAVAILABLE, Outcome.NO_ANSWER, FAR, AMBIGUOUS_UNAVAILABLE_RINGING),
        # 503 (g)
        (
            ["ringing"],
            R.CLIENT_INITIATED,
            Outcome.TRUNK_FAILURE,
            UNSURE,
            AMBIGUOUS_CLIENT_INITIATED_DIAL,
        ),
        # newer livekit-sip
        (["ringing"], R.SIP_TRUNK_FAILURE, Outcome.TRUNK_FAILURE, FAR, ""),
        (["ringing"], R.PARTICIPANT_REMOVED, Outcome.CANCELLED, OURS, ""),
        ([], R.ROOM_DELETED, Outcome.CANCELLED, OURS, ""),
        (["ringing"], R.SERVER_SHUTDOWN, Outcome.FAILED, SERVER, ""),
        (["ringing"], R.UNKNOWN_REASON, Outcome.FAILED, UNSURE, AMBIGUOUS_NO_REASON),
        (["ringing"], None, Outcome.FAILED, UNSURE, AMBIGUOUS_NO_REASON),
        # a BYE exists only after an answer: answered while nobody watched
        (
            ["ringing", "hangup"],
            R.CLIENT_INITIATED,
            Outcome.COMPLETED,
            FAR,
            AMBIGUOUS_ANSWER_UNSEEN,
        ),
    ],
    ids=case,
)
def test_unanswered_outbound_outcome_comes_from_reason_and_last_status(
    statuses: list[str],
    reason: Reason | None,
    outcome: Outcome,
    ended_by: EndedBy,
    ambiguity: str,
) -> None:
    script = outbound()
    for offset, status in enumerate(statuses):
        script.to(0.05 + offset, status)
    script.left(5.0, reason)
    record = only_end(run(script.events)[1])
    ringing = 0.05 if statuses else None
    assert record == final(
        " ".join(["dialing", *statuses]),
        times(0.041, ringing=ringing, ended=5.0),
        outcome=outcome,
        reason=reason,
        ended_by=ended_by,
        ambiguity=ambiguity,
    )
    assert record.timings.time_to_answer is None
    assert record.timings.talk_duration is None


@pytest.mark.parametrize(
    ("code", "reason", "outcome", "ended_by", "ambiguity"),
    [
        (486, R.USER_REJECTED, Outcome.BUSY, FAR, ""),
        (600, R.USER_REJECTED, Outcome.BUSY, FAR, ""),
        (603, R.USER_REJECTED, Outcome.DECLINED, FAR, ""),
        (607, R.USER_REJECTED, Outcome.DECLINED, FAR, ""),
        (403, R.USER_REJECTED, Outcome.FORBIDDEN, FAR, ""),
        (488, R.USER_REJECTED, Outcome.REJECTED, FAR, ""),
        (404, R.USER_UNAVAILABLE, Outcome.NOT_FOUND, FAR, ""),
        (480, R.USER_UNAVAILABLE, Outcome.UNAVAILABLE, FAR, AMBIGUOUS_480),
        (408, R.USER_UNAVAILABLE, Outcome.NO_ANSWER, FAR, ""),
        (None, R.USER_UNAVAILABLE, Outcome.NO_ANSWER, FAR, ""),  # Twirp canceled, no SIP code
        # Twirp canceled too when our side ends the dial while it rings, or the server
        # does: the room's reason says who, and no SIP response was ever given.
        (None, R.PARTICIPANT_REMOVED, Outcome.CANCELLED, OURS, ""),
        (None, R.ROOM_DELETED, Outcome.CANCELLED, OURS, ""),
        (None, R.SERVER_SHUTDOWN, Outcome.FAILED, SERVER, ""),
        (503, R.CLIENT_INITIATED, Outcome.TRUNK_FAILURE, FAR, ""),
        (500, R.CLIENT_INITIATED, Outcome.TRUNK_FAILURE, FAR, ""),
    ],
    ids=case,
)
@pytest.mark.parametrize("detail_first", [True, False])
def test_dial_side_sip_code_names_the_failure_the_room_cannot(
    code: int | None,
    reason: Reason,
    outcome: Outcome,
    ended_by: EndedBy,
    ambiguity: str,
    detail_first: bool,
) -> None:
    script = outbound().to(0.05, "ringing")
    if detail_first:
        script.dial_failed(1.0, code).left(1.01, reason)
    else:
        script.left(1.0, reason).dial_failed(1.05, code)
    script.tick(3.0)
    book, effects = run(script.events, settle=1.0)
    assert only_end(effects) == final(
        "dialing ringing",
        times(0.041, ringing=0.05, ended=1.01 if detail_first else 1.0),
        outcome=outcome,
        reason=reason,
        ended_by=ended_by,
        ambiguity=ambiguity,
        sip_status_code=code,
        sip_status="phrase",
        sources=frozenset({ROOM, DIAL}),
    )
    assert book.live_calls() == []


def test_dial_detail_before_the_call_is_seen_waits_for_it() -> None:
    script = CallScript().dial_failed(0.0, 486)
    script.seen(0.03, "dialing").to(0.04, "ringing").left(1.0, R.USER_REJECTED)
    assert only_end(run(script.events)[1]) == final(
        "dialing ringing",
        times(0.03, ringing=0.04, ended=1.0),
        outcome=Outcome.BUSY,
        reason=R.USER_REJECTED,
        ended_by=EndedBy.FAR_END,
        sip_status_code=486,
        sip_status="phrase",
        sources=frozenset({ROOM, DIAL}),
    )


def test_dial_detail_matched_by_call_id_when_the_dial_returned_one() -> None:
    script = outbound().dial_failed(0.5, 603, call_id="SCL_test1").left(1.0, R.USER_REJECTED)
    assert only_end(run(script.events)[1]) == final(
        "dialing",
        times(0.041, ended=1.0),
        outcome=Outcome.DECLINED,
        reason=R.USER_REJECTED,
        ended_by=EndedBy.FAR_END,
        sip_status_code=603,
        sip_status="phrase",
        sources=frozenset({ROOM, DIAL}),
    )


def test_dial_detail_for_no_call_is_counted_once_it_expires() -> None:
    script = CallScript(room="other").dial_failed(0.0, 486).tick(29.0)
    _, effects = run(script.events)
    assert anomalies(effects) == []
    _, effects = run(script.tick(31.0).events)
    assert anomalies(effects) == [AnomalyKind.UNMATCHED_DIAL_DETAIL]


def test_dial_detail_after_the_outcome_is_final_does_not_change_it() -> None:
    script = outbound().to(0.05, "ringing").left(1.0, R.USER_REJECTED).dial_failed(1.2, 486)
    _, effects = run(script.events)
    assert only_end(effects) == final(
        "dialing ringing",
        times(0.041, ringing=0.05, ended=1.0),
        outcome=Outcome.REJECTED,
        reason=R.USER_REJECTED,
        ended_by=EndedBy.FAR_END,
    )
    assert anomalies(effects) == [AnomalyKind.LATE_DIAL_DETAIL]


def test_automation_counts_as_the_answer() -> None:
    script = outbound().to(0.05, "ringing").to(2.0, "automation").to(2.5, "active")
    script.to(6.0, "hangup").left(6.01, R.CLIENT_INITIATED)
    assert only_end(run(script.events)[1]) == final(
        "dialing ringing automation active hangup",
        times(0.041, ringing=0.05, answered=2.0, ended=6.01),
        outcome=Outcome.COMPLETED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.FAR_END,
    )


@pytest.mark.parametrize(
    ("reason", "outcome", "ended_by"),
    [
        (R.CONNECTION_TIMEOUT, Outcome.DROPPED, EndedBy.SERVER),
        (R.SERVER_SHUTDOWN, Outcome.DROPPED, EndedBy.SERVER),
        (R.ROOM_CLOSED, Outcome.COMPLETED, EndedBy.SERVER),
        (R.ROOM_DELETED, Outcome.COMPLETED, EndedBy.OUR_SIDE),
    ],
)
def test_answered_call_cut_by_the_server(
    reason: Reason, outcome: Outcome, ended_by: EndedBy
) -> None:
    script = outbound().to(0.05, "ringing").to(1.0, "active").left(9.0, reason)
    record = only_end(run(script.events)[1])
    assert record == final(
        "dialing ringing active",
        times(0.041, ringing=0.05, answered=1.0, ended=9.0),
        outcome=outcome,
        reason=reason,
        ended_by=ended_by,
    )
    assert record.timings.talk_duration == approx(8.0)


# ---- inbound --------------------------------------------------------------------------


def test_inbound_call_answered_then_caller_hangs_up() -> None:
    script = inbound().to(1.0, "active").to(4.0, "hangup").left(4.002, R.CLIENT_INITIATED)
    record = only_end(run(script.events)[1])
    assert record == final(
        "ringing active hangup",
        # An inbound call joins ringing: it rings from its start.
        times(0.2, ringing=0.2, answered=1.0, ended=4.002),
        outcome=Outcome.COMPLETED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.FAR_END,
        direction=Direction.INBOUND,
        identity=CALLER,
    )
    assert record.timings.time_to_answer == approx(0.8)
    assert not record.timings_approximate


@pytest.mark.parametrize(
    ("statuses", "reason", "outcome", "ended_by", "ambiguity"),
    [
        (["hangup"], R.CLIENT_INITIATED, Outcome.ABANDONED, FAR, ""),  # caller CANCEL
        # or ringing timeout
        ([], R.CLIENT_INITIATED, Outcome.ABANDONED, UNSURE, AMBIGUOUS_INBOUND_RINGING),
        ([], None, Outcome.ABANDONED, UNSURE, AMBIGUOUS_INBOUND_RINGING),
        ([], R.PARTICIPANT_REMOVED, Outcome.CANCELLED, OURS, ""),
        ([], R.SERVER_SHUTDOWN, Outcome.FAILED, SERVER, ""),
        ([], R.USER_REJECTED, Outcome.FAILED, UNSURE, ""),
    ],
    ids=case,
)
def test_unanswered_inbound_outcomes(
    statuses: list[str],
    reason: Reason | None,
    outcome: Outcome,
    ended_by: EndedBy,
    ambiguity: str,
) -> None:
    script = inbound()
    for offset, status in enumerate(statuses):
        script.to(1.0 + offset, status)
    script.left(5.0, reason)
    assert only_end(run(script.events)[1]) == final(
        " ".join(["ringing", *statuses]),
        times(0.2, ringing=0.2, ended=5.0),
        outcome=outcome,
        reason=reason,
        ended_by=ended_by,
        ambiguity=ambiguity,
        direction=Direction.INBOUND,
        identity=CALLER,
    )


def test_inbound_hangup_seen_only_by_webhooks_may_hide_an_answer() -> None:
    """No room connection saw the call (joins slow, or webhooks only): its join showed
    ringing and its leave hangup, as a caller giving up does, and as a call answered
    and then hung up does. Abandoned, but saying it could be the other."""
    script = CallScript(inbound=True).seen(0.2, "ringing", source=Source.WEBHOOK)
    script.left(6.0, R.CLIENT_INITIATED, source=Source.WEBHOOK, status="hangup")
    record = only_end(run(script.events)[1])
    assert record == final(
        "ringing hangup",
        times(0.2, ringing=0.2, ended=6.0),
        outcome=Outcome.ABANDONED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.FAR_END,
        ambiguity=AMBIGUOUS_INBOUND_UNWATCHED,
        direction=Direction.INBOUND,
        sources=frozenset({WEBHOOK}),
    )
    assert "after an answer" in record.ambiguity


def test_inbound_call_with_pin_joins_active_and_is_not_approximate() -> None:
    script = CallScript(inbound=True).seen(0.0, "active").to(3.0, "hangup")
    record = only_end(run(script.left(3.01, R.CLIENT_INITIATED).events)[1])
    assert record == final(
        "active hangup",
        times(0.0, answered=0.0, ended=3.01),
        outcome=Outcome.COMPLETED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.FAR_END,
        direction=Direction.INBOUND,
    )
    assert not record.timings_approximate


def test_inbound_call_showing_dialing_is_an_anomaly_but_still_tracked() -> None:
    script = CallScript(inbound=True).seen(0.0, "dialing")
    script.to(0.5, "automation").left(3.0, R.CLIENT_INITIATED)
    _, effects = run(script.events)
    assert anomalies(effects) == [AnomalyKind.DIRECTION_MISMATCH] * 2
    assert only_end(effects) == final(
        "dialing automation",
        times(0.0, answered=0.5, ended=3.0),
        outcome=Outcome.COMPLETED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.UNKNOWN,
        ambiguity=AMBIGUOUS_NO_HANGUP,
        direction=Direction.INBOUND,
    )


# ---- the known livekit-sip quirks -----------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "code", "outcome", "ambiguity"),
    [
        (R.USER_REJECTED, None, Outcome.REJECTED, ""),
        (R.USER_UNAVAILABLE, None, Outcome.NO_ANSWER, AMBIGUOUS_UNAVAILABLE_RINGING),
        (R.SIP_TRUNK_FAILURE, None, Outcome.TRUNK_FAILURE, ""),
        (R.USER_REJECTED, 486, Outcome.BUSY, ""),
    ],
    ids=case,
)
def test_quirk_active_before_answer_is_judged_by_how_it_ended(
    reason: Reason, code: int | None, outcome: Outcome, ambiguity: str
) -> None:
    # livekit issue #3841: active at early media; the callee then refuses or never answers
    script = outbound().to(0.05, "ringing").to(0.5, "active")
    if code is not None:
        script.dial_failed(9.0, code)
    script.left(9.0, reason)
    _, effects = run(script.events)
    record = only_end(effects)
    dial = {} if code is None else {"sip_status": "phrase", "sources": frozenset({ROOM, DIAL})}
    assert record == final(
        "dialing ringing active",
        times(0.041, ringing=0.05, ended=9.0),  # its active was no answer
        outcome=outcome,
        reason=reason,
        ended_by=EndedBy.FAR_END,
        ambiguity=ambiguity,
        sip_status_code=code,
        **dial,
    )
    assert record.timings.talk_duration is None
    assert AnomalyKind.ACTIVE_BEFORE_ANSWER in anomalies(effects)


@pytest.mark.parametrize("direction", list(Direction))
def test_quirk_ringing_skipped_goes_straight_to_active(direction: Direction) -> None:
    # agents issue #3518
    script = CallScript(inbound=direction is Direction.INBOUND).seen(0.0, "dialing")
    script.to(1.0, "active").to(4.0, "hangup").left(4.01, R.CLIENT_INITIATED)
    _, effects = run(script.events)
    record = only_end(effects)
    assert record == final(
        "dialing active hangup",
        times(0.0, answered=1.0, ended=4.01),
        outcome=Outcome.COMPLETED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.FAR_END,
        direction=direction,
    )
    assert record.timings.time_to_answer == approx(1.0)
    assert [e.call.state for e in effects if isinstance(e, StateChanged)] == [
        CallState.ACTIVE,
        CallState.HANGUP,
        CallState.ENDED,
    ]


@pytest.mark.parametrize("direction", list(Direction))
def test_quirk_status_stuck_at_active_after_the_end(direction: Direction) -> None:
    # sip issue #366: BYE, but no hangup status; the end is real, the cause unsure
    script = CallScript(inbound=direction is Direction.INBOUND).seen(0.0, "ringing")
    script.to(1.0, "active").left(8.0, R.CLIENT_INITIATED)
    record = only_end(run(script.events)[1])
    assert record == final(
        "ringing active",
        # An outbound call first seen ringing rang at or before then.
        times(
            0.0,
            ringing=0.0,
            answered=1.0,
            ended=8.0,
            ringing_approximate=direction is Direction.OUTBOUND,
        ),
        outcome=Outcome.COMPLETED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.UNKNOWN,
        ambiguity=AMBIGUOUS_NO_HANGUP,
        direction=direction,
    )
    assert "hangup" in record.ambiguity
    assert record.timings.talk_duration == approx(7.0)


@pytest.mark.parametrize("direction", list(Direction))
def test_quirk_hangup_status_after_the_leave_is_absorbed_by_the_settle_window(
    direction: Direction,
) -> None:
    # sip PR #725: the last attribute change and the disconnect arrive in either order
    script = CallScript(inbound=direction is Direction.INBOUND).seen(0.0, "ringing")
    script.to(1.0, "active").left(8.0, R.CLIENT_INITIATED).to(8.002, "hangup").tick(9.5)
    _, effects = run(script.events, settle=1.0)
    assert only_end(effects) == final(
        "ringing active hangup",
        times(
            0.0,
            ringing=0.0,
            answered=1.0,
            ended=8.0,
            ringing_approximate=direction is Direction.OUTBOUND,
        ),
        outcome=Outcome.COMPLETED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.FAR_END,
        direction=direction,
    )
    assert anomalies(effects) == []


def test_quirk_hangup_after_the_final_outcome_is_an_anomaly_not_a_second_end() -> None:
    script = outbound().to(1.0, "active").left(8.0, R.CLIENT_INITIATED).to(8.002, "hangup")
    _, effects = run(script.events, settle=0.0)
    assert len(ended(effects)) == 1
    assert anomalies(effects) == [AnomalyKind.EVENT_AFTER_END]


@pytest.mark.parametrize(
    ("direction", "answered", "outcome", "ended_by", "ambiguity"),
    [
        (Direction.OUTBOUND, True, Outcome.COMPLETED, UNSURE, AMBIGUOUS_NO_REASON),
        (Direction.INBOUND, True, Outcome.COMPLETED, UNSURE, AMBIGUOUS_NO_REASON),
        (Direction.OUTBOUND, False, Outcome.FAILED, UNSURE, AMBIGUOUS_NO_REASON),
        (Direction.INBOUND, False, Outcome.ABANDONED, UNSURE, AMBIGUOUS_INBOUND_RINGING),
    ],
    ids=case,
)
def test_quirk_missing_reason_gives_an_ambiguous_outcome(
    direction: Direction, answered: bool, outcome: Outcome, ended_by: EndedBy, ambiguity: str
) -> None:
    # sip #294, python-sdks #398: no reason, or one outside the protocol's list
    script = CallScript(inbound=direction is Direction.INBOUND).seen(0.0, "ringing")
    if answered:
        script.to(1.0, "active")
    script.left(5.0, None, raw_reason="42")
    _, effects = run(script.events)
    assert only_end(effects) == final(
        "ringing active" if answered else "ringing",
        times(
            0.0,
            ringing=0.0,
            answered=1.0 if answered else None,
            ended=5.0,
            ringing_approximate=direction is Direction.OUTBOUND,
        ),
        outcome=outcome,
        reason=None,
        ended_by=ended_by,
        ambiguity=ambiguity,
        direction=direction,
    )
    assert AnomalyKind.UNKNOWN_REASON_VALUE in anomalies(effects)


def test_quirk_480_is_ambiguous_even_with_the_sip_code() -> None:
    # sip #468: busy, unreachable or no answer depending on the carrier
    script = outbound().dial_failed(0.08, 480).left(0.1, R.USER_UNAVAILABLE)
    record = only_end(run(script.events)[1])
    assert record == final(
        "dialing",
        times(0.041, ended=0.1),
        outcome=Outcome.UNAVAILABLE,
        reason=R.USER_UNAVAILABLE,
        ended_by=EndedBy.FAR_END,
        ambiguity=AMBIGUOUS_480,
        sip_status_code=480,
        sip_status="phrase",
        sources=frozenset({ROOM, DIAL}),
    )
    assert "480" in record.ambiguity


def test_quirk_carrier_cps_limit_is_a_rejection_in_the_room_and_a_trunk_failure_by_code() -> None:
    # sip #481: carrier CPS limits come back as 5xx and livekit-sip calls them rejected
    room_only = outbound().to(0.05, "ringing").left(0.3, R.USER_REJECTED)
    rejected = final(
        "dialing ringing",
        times(0.041, ringing=0.05, ended=0.3),
        outcome=Outcome.REJECTED,
        reason=R.USER_REJECTED,
        ended_by=EndedBy.FAR_END,
    )
    assert only_end(run(room_only.events)[1]) == rejected
    with_code = outbound().to(0.05, "ringing").dial_failed(0.3, 503).left(0.3, R.USER_REJECTED)
    assert only_end(run(with_code.events)[1]) == replace(
        rejected,
        outcome=Outcome.TRUNK_FAILURE,
        sip_status_code=503,
        sip_status="phrase",
        sources=frozenset({ROOM, DIAL}),
    )


# ---- several sources, late and duplicate events ---------------------------------------


def test_webhook_and_room_leave_count_once() -> None:
    # trace webhooks_e: participant_left webhook 2.8 s before the room's own leave
    script = CallScript().seen(0.031, "dialing", Source.WEBHOOK).seen(0.036, "dialing")
    script.left(0.053, R.USER_UNAVAILABLE, Source.WEBHOOK).left(2.874, R.USER_UNAVAILABLE)
    book, effects = run(script.events, settle=1.0)
    assert len(ended(effects)) == 1
    assert [e for e in effects if isinstance(e, CallStarted)].__len__() == 1
    assert anomalies(effects) == []
    assert book.live_calls() == []


def test_a_leave_with_another_reason_after_the_end_is_a_conflict_not_a_second_end() -> None:
    script = outbound().left(1.0, R.USER_REJECTED).left(1.5, R.CLIENT_INITIATED)
    _, effects = run(script.events)
    assert len(ended(effects)) == 1
    assert anomalies(effects) == [AnomalyKind.CONFLICTING_END]


def test_room_finished_before_participant_left_is_overruled_within_the_settle_window() -> None:
    script = outbound().to(0.05, "ringing").room_ended(1.0, None, Source.WEBHOOK)
    script.left(1.2, R.USER_REJECTED, Source.WEBHOOK).tick(3.0)
    _, effects = run(script.events, settle=1.0)
    assert only_end(effects) == final(
        "dialing ringing",
        times(0.041, ringing=0.05, ended=1.2),
        outcome=Outcome.REJECTED,
        reason=R.USER_REJECTED,
        ended_by=EndedBy.FAR_END,
        sources=frozenset({ROOM, WEBHOOK}),
    )


def test_a_late_room_finished_of_an_earlier_room_of_that_name_ends_no_new_call() -> None:
    """Room names are reused; a room_finished retried or delayed past the next room's
    start names the earlier room's sid, and leaves the new room's call alone."""
    script = outbound().to(0.05, "ringing").room_ended(1.0, None, Source.WEBHOOK, "RM_old")
    script.tick(5.0)
    book, effects = run(script.events, settle=1.0)
    assert ended(effects) == []
    ringing = live("dialing ringing", times(0.041, ringing=0.05))
    assert book.live_calls() == [ringing]
    # The room's own sid ends it as before.
    script.room_ended(6.0, None, Source.WEBHOOK, "RM_1").tick(9.0)
    _, effects = run(script.events, settle=1.0)
    assert only_end(effects) == final(
        "dialing ringing",
        times(0.041, ringing=0.05, ended=6.0),
        outcome=Outcome.LOST,
        reason=None,
        ended_by=EndedBy.UNKNOWN,
        sources=frozenset({ROOM, WEBHOOK}),
    )


def test_room_gone_with_no_word_on_the_call_is_lost_and_said_so() -> None:
    script = outbound().to(0.05, "active").room_ended(5.0, None, Source.WEBHOOK)
    _, effects = run(script.events)
    assert only_end(effects) == final(
        "dialing active",
        times(0.041, answered=0.05, ended=5.0),
        outcome=Outcome.LOST,
        reason=None,
        ended_by=EndedBy.UNKNOWN,
        sources=frozenset({ROOM, WEBHOOK}),
    )
    assert anomalies(effects) == [AnomalyKind.END_WITHOUT_EVIDENCE]


def test_vanished_from_a_listing_is_lost_unless_the_hangup_was_seen() -> None:
    lost = outbound().to(0.05, "active").vanished(30.0)
    assert only_end(run(lost.events)[1]) == final(
        "dialing active",
        times(0.041, answered=0.05, ended=30.0),
        outcome=Outcome.LOST,
        reason=None,
        ended_by=EndedBy.UNKNOWN,
        sources=frozenset({ROOM, RECONCILE}),
    )
    hung_up = outbound().to(0.05, "active").to(5.0, "hangup").vanished(30.0)
    assert only_end(run(hung_up.events)[1]) == final(
        "dialing active hangup",
        times(0.041, answered=0.05, ended=30.0),
        outcome=Outcome.COMPLETED,
        reason=None,
        ended_by=EndedBy.FAR_END,
        sources=frozenset({ROOM, RECONCILE}),
    )
    inbound_cancel = inbound().to(5.0, "hangup").vanished(30.0)
    assert only_end(run(inbound_cancel.events)[1]) == final(
        "ringing hangup",
        times(0.2, ringing=0.2, ended=30.0),
        outcome=Outcome.ABANDONED,
        reason=None,
        ended_by=EndedBy.FAR_END,
        direction=Direction.INBOUND,
        identity=CALLER,
        sources=frozenset({ROOM, RECONCILE}),
    )


def test_a_leave_told_after_a_call_was_counted_lost_is_an_anomaly_not_a_second_end() -> None:
    """Listings lost the call (redis lost its rooms) and it was counted lost; its real
    leave comes later. Counted once still; the anomaly says the lost was wrong."""
    script = outbound().to(0.05, "active").vanished(30.0).tick(32.0)
    script.left(40.0, R.CLIENT_INITIATED, source=Source.WEBHOOK, status="hangup")
    _, effects = run(script.events)
    assert only_end(effects) == final(
        "dialing active",
        times(0.041, answered=0.05, ended=30.0),
        outcome=Outcome.LOST,
        reason=None,
        ended_by=EndedBy.UNKNOWN,
        sources=frozenset({ROOM, RECONCILE}),
    )
    assert anomalies(effects) == [AnomalyKind.END_WITHOUT_EVIDENCE, AnomalyKind.CONFLICTING_END]


def test_a_room_that_closed_with_a_call_still_live_says_nothing_of_its_end() -> None:
    """ROOM_CLOSED comes only once everyone left: the call's own leave went unheard
    (seen when load delayed every source). Lost, unless its hangup was seen."""
    unheard = outbound().to(0.05, "ringing").room_ended(9.0, R.ROOM_CLOSED).tick(11.0)
    _, effects = run(unheard.events)
    assert only_end(effects) == final(
        "dialing ringing",
        times(0.041, ringing=0.05, ended=9.0),
        outcome=Outcome.LOST,
        reason=R.ROOM_CLOSED,
        ended_by=EndedBy.UNKNOWN,
    )
    assert anomalies(effects) == [AnomalyKind.END_WITHOUT_EVIDENCE]
    hung_up = outbound().to(0.05, "active").to(5.0, "hangup").room_ended(9.0, R.ROOM_CLOSED)
    assert only_end(run(hung_up.events)[1]) == final(
        "dialing active hangup",
        times(0.041, answered=0.05, ended=9.0),
        outcome=Outcome.COMPLETED,
        reason=R.ROOM_CLOSED,
        ended_by=EndedBy.FAR_END,
    )


def test_vanished_for_an_unknown_participant_does_nothing() -> None:
    _, effects = run(CallScript().vanished(1.0).events)
    assert effects == []


def test_a_weaker_end_within_the_settle_window_does_not_replace_a_stronger_one() -> None:
    script = outbound().to(0.05, "ringing").left(1.0, R.USER_REJECTED)
    script.room_ended(1.1, None).vanished(1.2).tick(5.0)
    assert only_end(run(script.events, settle=1.0)[1]) == final(
        "dialing ringing",
        times(0.041, ringing=0.05, ended=1.0),
        outcome=Outcome.REJECTED,
        reason=R.USER_REJECTED,
        ended_by=EndedBy.FAR_END,
        sources=frozenset({ROOM, RECONCILE}),
    )


def test_first_seen_in_a_later_state_uses_the_join_time_and_says_timings_are_approximate() -> None:
    # STACK.md: a participant that joined dialing may first be seen ringing
    script = CallScript().seen(0.5, "ringing", joined=0.03).to(2.0, "active")
    script.to(5.0, "hangup").left(5.01, R.CLIENT_INITIATED)
    record = only_end(run(script.events)[1])
    assert record == final(
        "ringing active hangup",
        times(0.03, ringing=0.5, answered=2.0, ended=5.01, ringing_approximate=True),
        outcome=Outcome.COMPLETED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.FAR_END,
    )
    assert record.timings_approximate


def test_answer_seen_only_in_a_snapshot_makes_timings_approximate() -> None:
    script = outbound().seen(3.0, "active", Source.RECONCILE).left(9.0, R.PARTICIPANT_REMOVED)
    record = only_end(run(script.events)[1])
    assert record == final(
        "dialing active",
        times(0.041, answered=3.0, ended=9.0, answer_approximate=True),
        outcome=Outcome.COMPLETED,
        reason=R.PARTICIPANT_REMOVED,
        ended_by=EndedBy.OUR_SIDE,
        sources=frozenset({ROOM, RECONCILE}),
    )
    assert record.timings_approximate


def test_a_live_change_delivered_after_a_snapshot_of_it_says_when_it_happened() -> None:
    # A listing read just after the answer can be processed before the room's own
    # event of it, which comes through an observer process's pipe, and either can be
    # the later one; ringing likewise.
    script = outbound().seen(1.2, "ringing", Source.RECONCILE).to(1.1, "ringing")
    script.seen(3.0, "active", Source.RECONCILE).to(3.02, "active")
    record = only_end(run(script.left(9.0, R.CLIENT_INITIATED, status="hangup").events)[1])
    assert record == final(
        "dialing ringing active hangup",
        times(0.041, ringing=1.1, answered=3.0, ended=9.0),
        outcome=Outcome.COMPLETED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.FAR_END,
        sources=frozenset({ROOM, RECONCILE}),
    )
    assert not record.timings_approximate


def test_an_event_about_other_attributes_is_not_the_change_a_snapshot_showed() -> None:
    script = outbound().seen(3.0, "active", Source.RECONCILE)
    participant = script.participant()
    script.events.append(
        AttributesChanged(T0 + 2.5, Source.ROOM, script.room, participant, {"sip.x": "1"}, "RM_1")
    )
    record = only_end(run(script.left(9.0, R.CLIENT_INITIATED, status="hangup").events)[1])
    assert record == final(
        "dialing active hangup",
        times(0.041, answered=3.0, ended=9.0, answer_approximate=True),
        outcome=Outcome.COMPLETED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.FAR_END,
        sources=frozenset({ROOM, RECONCILE}),
    )


def test_leave_of_a_call_never_seen_starts_and_ends_it_at_once() -> None:
    # a 404 leaves before it publishes: the webhook may be all there is
    script = CallScript().left(0.05, R.USER_UNAVAILABLE, Source.WEBHOOK, status="dialing")
    _, effects = run(script.events)
    assert [type(e) for e in effects] == [CallStarted, StateChanged, CallEnded]
    assert only_end(effects) == final(
        "dialing",
        times(0.05, ended=0.05),
        outcome=Outcome.UNAVAILABLE,
        reason=R.USER_UNAVAILABLE,
        ended_by=EndedBy.FAR_END,
        ambiguity=AMBIGUOUS_UNAVAILABLE_DIALING,
        sources=frozenset({WEBHOOK}),
    )


def test_status_moving_backwards_is_ignored_and_counted() -> None:
    script = outbound().to(0.05, "ringing").to(1.0, "active").to(1.5, "ringing")
    book, effects = run(script.events)
    assert anomalies(effects) == [AnomalyKind.STATUS_REGRESSED]
    assert book.call("SCL_test1") == live(
        "dialing ringing active", times(0.041, ringing=0.05, answered=1.0)
    )


def test_same_status_again_is_no_change() -> None:
    # livekit-sip re-sets the same attributes right after joining
    script = outbound().to(0.01, "dialing").to(0.05, "ringing").to(0.06, "ringing")
    _, effects = run(script.events)
    assert [e.call.state for e in effects if isinstance(e, StateChanged)] == [CallState.RINGING]


def test_unknown_and_missing_status_values_are_anomalies() -> None:
    script = CallScript().seen(0.0, None).to(0.5, "connecting").to(1.0, "ringing")
    book, effects = run(script.events)
    assert anomalies(effects) == [AnomalyKind.MISSING_STATUS, AnomalyKind.UNKNOWN_STATUS]
    assert book.call("SCL_test1") == live("ringing", times(0.0, ringing=1.0))


def test_status_moving_backwards_while_ending_is_ignored() -> None:
    script = outbound().to(1.0, "active").left(5.0, R.CLIENT_INITIATED).to(5.1, "ringing")
    script.tick(7.0)
    _, effects = run(script.events, settle=1.0)
    assert anomalies(effects) == [AnomalyKind.STATUS_REGRESSED]
    assert only_end(effects) == final(
        "dialing active",
        times(0.041, answered=1.0, ended=5.0),
        outcome=Outcome.COMPLETED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.UNKNOWN,
        ambiguity=AMBIGUOUS_NO_HANGUP,
    )


def test_missing_call_id_keys_the_call_by_participant_sid() -> None:
    script = CallScript(call_id="").seen(0.0, "dialing").to(1.0, "active")
    script.left(3.0, R.PARTICIPANT_REMOVED).to(3.1, "hangup")
    _, effects = run(script.events)
    assert only_end(effects) == final(
        "dialing active",
        times(0.0, answered=1.0, ended=3.0),
        outcome=Outcome.COMPLETED,
        reason=R.PARTICIPANT_REMOVED,
        ended_by=EndedBy.OUR_SIDE,
        key="sid:PA_test1",
        call_id="",
    )
    assert anomalies(effects) == [AnomalyKind.MISSING_CALL_ID, AnomalyKind.EVENT_AFTER_END]


def test_a_changed_call_id_stays_on_the_first_key() -> None:
    script = outbound()
    script.call_id = "SCL_other"
    script.to(1.0, "ringing")
    book, effects = run(script.events)
    assert anomalies(effects) == [AnomalyKind.CALL_ID_CHANGED]
    assert book.call("SCL_test1") == live("dialing ringing", times(0.041, ringing=1.0))
    assert book.call("SCL_other") is None


def test_participant_without_call_id_later_gaining_one_stays_on_its_sid_key() -> None:
    script = CallScript(call_id="").seen(0.0, "dialing")
    script.call_id = "SCL_late"
    script.to(1.0, "ringing")
    book, effects = run(script.events)
    assert anomalies(effects) == [AnomalyKind.MISSING_CALL_ID]
    assert book.call("sid:PA_test1") == live(
        "dialing ringing", times(0.0, ringing=1.0), key="sid:PA_test1", call_id=""
    )


def test_non_sip_participants_are_not_calls() -> None:
    agent = Participant("PA_agent", "agent", {"sip.callStatus": "active"}, is_sip=False)
    book = CallBook()
    assert book.step(ParticipantSeen(T0, Source.ROOM, "r", agent)) == []
    assert book.step(ParticipantLeft(T0 + 1, Source.ROOM, "r", agent, R.CLIENT_INITIATED)) == []
    assert book.live_calls() == []


def test_room_ending_ends_every_call_in_it_and_no_other() -> None:
    first = CallScript(call_id="SCL_a", sid="PA_a").seen(0.0, "dialing").to(1.0, "active")
    second = CallScript(call_id="SCL_b", sid="PA_b", identity="b").seen(0.1, "dialing")
    elsewhere = CallScript(call_id="SCL_c", sid="PA_c", room="other").seen(0.2, "dialing")
    events = first.events + second.events + elsewhere.events
    events += CallScript().room_ended(5.0, R.ROOM_DELETED).events
    book, effects = run(events)
    assert ended(effects) == [
        final(
            "dialing active",
            times(0.0, answered=1.0, ended=5.0),
            outcome=Outcome.COMPLETED,
            reason=R.ROOM_DELETED,
            ended_by=EndedBy.OUR_SIDE,
            key="SCL_a",
            call_id="SCL_a",
            participant_sid="PA_a",
        ),
        final(
            "dialing",
            times(0.1, ended=5.0),
            outcome=Outcome.CANCELLED,
            reason=R.ROOM_DELETED,
            ended_by=EndedBy.OUR_SIDE,
            key="SCL_b",
            call_id="SCL_b",
            participant_sid="PA_b",
            identity="b",
        ),
    ]
    still_dialing = live(
        "dialing",
        times(0.2),
        key="SCL_c",
        call_id="SCL_c",
        participant_sid="PA_c",
        room="other",
    )
    assert book.live_calls() == [still_dialing]
    assert book.rooms() == {"other"}
    assert book.calls_in_room("other") == [still_dialing]
    assert book.calls_in_room("call-test") == []


def test_events_after_the_end_never_restart_the_call() -> None:
    script = outbound().left(1.0, R.USER_REJECTED)
    script.seen(2.0, "dialing", Source.RECONCILE).left(2.5, R.USER_REJECTED)
    book, effects = run(script.events)
    assert len([e for e in effects if isinstance(e, CallStarted)]) == 1
    assert len(ended(effects)) == 1
    assert book.is_ended("SCL_test1")


def test_tombstones_expire_after_their_time() -> None:
    settings = MachineSettings(tombstone_seconds=10.0)
    book = CallBook(settings)
    for event in outbound().left(1.0, R.USER_REJECTED).dial_failed(1.1, 486).tick(20.0).events:
        book.step(event)
    assert not book.is_ended("SCL_test1")


def test_settle_window_shows_the_call_as_ending_until_the_clock_passes_it() -> None:
    script = outbound().to(1.0, "active").to(5.0, "hangup").left(5.0, R.CLIENT_INITIATED)
    book, effects = run(script.events, settle=2.0)
    assert ended(effects) == []
    assert book.live_calls() == [
        live("dialing active hangup", times(0.041, answered=1.0), state=CallState.ENDING)
    ]
    assert book.step(script.tick(6.9).events[-1]) == []
    final_effects = book.step(script.tick(7.0).events[-1])
    assert [type(effect) for effect in final_effects] == [StateChanged, CallEnded]
    assert book.live_calls() == []


def test_clock_never_goes_backwards() -> None:
    script = outbound().to(1.0, "active").left(5.0, R.CLIENT_INITIATED).tick(4.0)
    book, effects = run(script.events, settle=2.0)
    assert ended(effects) == []
    assert book.now == approx(T0 + 5.0)


def test_a_redial_into_the_same_room_keeps_its_own_sip_code() -> None:
    """The same number dialled into the same room ten minutes after a call there ended:
    its dial failure, reported before the room shows the new call, is the new call's,
    not a late detail of the old one."""
    first = outbound().to(0.05, "ringing").to(2.0, "active").left(30.0, R.CLIENT_INITIATED)
    first.tick(35.0)
    second = CallScript(call_id="SCL_test2", sid="PA_test2").dial_failed(600.0, 486)
    second.seen(602.8, "ringing").left(602.9, R.USER_REJECTED).tick(605.0)
    _, effects = run(first.events + second.events)
    records = {record.key: record for record in ended(effects)}
    assert records["SCL_test2"] == final(
        "ringing",
        times(602.8, ringing=602.8, ended=602.9, ringing_approximate=True),
        outcome=Outcome.BUSY,
        reason=R.USER_REJECTED,
        ended_by=EndedBy.FAR_END,
        key="SCL_test2",
        call_id="SCL_test2",
        participant_sid="PA_test2",
        sip_status_code=486,
        sip_status="phrase",
        sources=frozenset({ROOM, DIAL}),
    )
    assert anomalies(effects) == []


def test_room_sid_learned_later_is_kept() -> None:
    book = CallBook()
    script = CallScript()
    first = ParticipantSeen(T0, Source.WEBHOOK, "call-test", script.participant(), "")
    book.step(first)
    book.step(ParticipantSeen(T0 + 1, Source.ROOM, "call-test", script.participant(), "RM_9"))
    # Neither showed a status: the call is where it started, and the room saw it.
    assert book.call("SCL_test1") == live(
        "", times(0.0), room_sid="RM_9", sources=frozenset({WEBHOOK, ROOM})
    )


def test_dial_detail_finds_its_call_among_several_in_the_room() -> None:
    first = CallScript(call_id="SCL_a", sid="PA_a", identity="a").seen(0.0, "dialing")
    second = CallScript(call_id="SCL_b", sid="PA_b", identity="b").seen(0.1, "dialing")
    second.dial_failed(0.5, 486).left(0.6, R.USER_REJECTED)
    first.left(0.7, R.USER_REJECTED)
    _, effects = run(first.events[:1] + second.events + first.events[1:])
    assert ended(effects) == [
        final(
            "dialing",
            times(0.1, ended=0.6),
            outcome=Outcome.BUSY,
            reason=R.USER_REJECTED,
            ended_by=EndedBy.FAR_END,
            key="SCL_b",
            call_id="SCL_b",
            participant_sid="PA_b",
            identity="b",
            sip_status_code=486,
            sip_status="phrase",
            sources=frozenset({ROOM, DIAL}),
        ),
        final(
            "dialing",
            times(0.0, ended=0.7),
            outcome=Outcome.REJECTED,
            reason=R.USER_REJECTED,
            ended_by=EndedBy.FAR_END,
            key="SCL_a",
            call_id="SCL_a",
            participant_sid="PA_a",
            identity="a",
        ),
    ]


def test_late_dial_detail_found_by_call_id() -> None:
    script = outbound().left(1.0, R.USER_REJECTED)
    script.identity = "renamed"
    script.dial_failed(1.5, 486, call_id="SCL_test1")
    _, effects = run(script.events)
    assert anomalies(effects) == [AnomalyKind.LATE_DIAL_DETAIL]


def test_first_status_arriving_after_the_leave_is_recorded() -> None:
    script = CallScript().seen(0.0, None).left(1.0, R.USER_REJECTED, status=None)
    script.to(1.1, "ringing").tick(3.0)
    _, effects = run(script.events, settle=1.0)
    # Set before the leave, seen after it: timed at the leave, and said to be approximate.
    assert only_end(effects) == final(
        "ringing",
        times(0.0, ringing=1.0, ended=1.0, ringing_approximate=True),
        outcome=Outcome.REJECTED,
        reason=R.USER_REJECTED,
        ended_by=EndedBy.FAR_END,
    )


def test_a_status_seen_after_the_leave_stays_a_bound_when_its_live_change_follows() -> None:
    script = CallScript().seen(0.0, None).left(1.0, R.USER_REJECTED, status=None)
    script.seen(1.1, "ringing")  # a snapshot read after the leave
    script.to(1.2, "ringing").tick(3.0)  # then the live change, later still
    _, effects = run(script.events, settle=1.0)
    assert only_end(effects) == final(
        "ringing",
        times(0.0, ringing=1.0, ended=1.0, ringing_approximate=True),
        outcome=Outcome.REJECTED,
        reason=R.USER_REJECTED,
        ended_by=EndedBy.FAR_END,
    )


def test_a_snapshot_from_before_the_leave_read_after_it_is_a_bound() -> None:
    script = CallScript().seen(0.0, None).left(1.0, R.USER_REJECTED, status=None)
    script.seen(0.9, "ringing").tick(3.0)  # a listing taken before the leave, read after
    _, effects = run(script.events, settle=1.0)
    assert only_end(effects) == final(
        "ringing",
        times(0.0, ringing=0.9, ended=1.0, ringing_approximate=True),
        outcome=Outcome.REJECTED,
        reason=R.USER_REJECTED,
        ended_by=EndedBy.FAR_END,
    )


def test_a_room_event_with_an_unknown_status_does_not_count_as_watched() -> None:
    # The unknown word may be an answer: the room did not show us the call was not one.
    script = CallScript().seen(0.0, "dialing", Source.WEBHOOK).to(0.5, "connecting")
    book, effects = run(script.events)
    assert anomalies(effects) == [AnomalyKind.UNKNOWN_STATUS]
    assert book.call("SCL_test1") == live("dialing", times(0.0), sources=frozenset({WEBHOOK}))


def test_a_join_time_ahead_of_our_clock_is_clock_skew() -> None:
    script = CallScript().seen(1.0, "dialing", Source.WEBHOOK, joined=10.0)
    _, effects = run(script.left(2.0, R.USER_REJECTED).events)
    assert anomalies(effects) == [AnomalyKind.CLOCK_SKEW]
    # started when first seen, not at the join time from the future
    assert only_end(effects) == final(
        "dialing",
        times(1.0, ended=2.0),
        outcome=Outcome.REJECTED,
        reason=R.USER_REJECTED,
        ended_by=EndedBy.FAR_END,
        sources=frozenset({WEBHOOK, ROOM}),
    )


def test_a_stale_snapshot_is_ignored_without_an_anomaly() -> None:
    # the participant_joined webhook (dialing) delivered after the room saw ringing,
    # and a listing taken before the answer
    script = CallScript().seen(0.03, "ringing").seen(0.05, "dialing", Source.WEBHOOK)
    script.to(1.0, "active").seen(1.1, "ringing", Source.RECONCILE)
    script.left(2.0, R.PARTICIPANT_REMOVED, status="ringing").to(2.001, "dialing")
    script.seen(2.002, "ringing", Source.RECONCILE).tick(4.0)
    _, effects = run(script.events, settle=1.0)
    assert anomalies(effects) == [AnomalyKind.STATUS_REGRESSED]  # only the live change
    assert only_end(effects) == final(
        "ringing active",
        times(0.03, ringing=0.03, answered=1.0, ended=2.0, ringing_approximate=True),
        outcome=Outcome.COMPLETED,
        reason=R.PARTICIPANT_REMOVED,
        ended_by=EndedBy.OUR_SIDE,
        sources=frozenset({ROOM, WEBHOOK, RECONCILE}),
    )


def test_only_the_moment_seen_late_is_approximate() -> None:
    # the observer joined after the 180 (seeded at ringing), then saw the answer live
    script = CallScript().seen(0.03, "dialing", Source.WEBHOOK, joined=0.03)
    script.seen(0.4, "ringing").to(2.0, "active").to(5.0, "hangup")
    record = only_end(run(script.left(5.01, R.CLIENT_INITIATED).events)[1])
    assert record == final(
        "dialing ringing active hangup",
        times(0.03, ringing=0.4, answered=2.0, ended=5.01, ringing_approximate=True),
        outcome=Outcome.COMPLETED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.FAR_END,
        sources=frozenset({WEBHOOK, ROOM}),
    )
    assert record.timings_approximate


def test_an_inbound_call_first_seen_long_after_its_join_has_an_approximate_answer() -> None:
    # a monitor restarted mid-call finds an answered inbound call in a listing
    script = CallScript(inbound=True).seen(60.0, "active", Source.RECONCILE, joined=0.0)
    record = only_end(run(script.left(70.0, R.CLIENT_INITIATED).events)[1])
    assert record == final(
        "active",
        times(0.0, answered=60.0, ended=70.0, answer_approximate=True),
        outcome=Outcome.COMPLETED,
        reason=R.CLIENT_INITIATED,
        ended_by=EndedBy.UNKNOWN,
        ambiguity=AMBIGUOUS_NO_HANGUP,
        direction=Direction.INBOUND,
        sources=frozenset({RECONCILE, ROOM}),
    )
