"""What the integration tests compare the monitor with: the simulator's ledger, the
truth of what the SIP side did; and the call timings the modules share."""

from __future__ import annotations

from monitor.core.model import CallRecord
from stack.ledger import CallEnded

MODES = ["setup", "whole_call"]
RING = 0.6  # seconds the simulated callee rings before it answers or refuses
TALK = 1.5  # seconds an answered callee talks before it hangs up


# livekit-server 1.13.5 keeps only these of the reasons a client leaves with; any other
# becomes CLIENT_INITIATED (pkg/rtc/signalling/signalhandler.go in its source).
KEPT_CLIENT_REASONS = {"USER_UNAVAILABLE", "USER_REJECTED", "AGENT_ERROR"}
# Reasons the server itself gives: the ledger records them as the server reported them.
SERVER_REASONS = {"PARTICIPANT_REMOVED", "ROOM_DELETED", "ROOM_CLOSED", "SERVER_SHUTDOWN"}


def reason_seen_in_the_room(sent: str) -> str:
    """The disconnect reason others see for the reason the SIP side left with."""
    if sent in KEPT_CLIENT_REASONS or sent in SERVER_REASONS:
        return sent
    return "CLIENT_INITIATED"


def assert_matches_ledger(record: CallRecord, truth: CallEnded) -> None:
    """What the monitor concluded agrees with what the SIP side did."""
    assert record.call_id == truth.call_id
    assert record.participant_sid == truth.participant_sid
    assert record.trunk_id == truth.trunk_id
    assert str(record.direction) == truth.direction
    assert list(record.statuses) == list(truth.statuses), "status sequence"
    answered = record.timings.answered_at is not None
    assert answered is truth.answered
    assert record.reason is not None
    expected_reason = reason_seen_in_the_room(truth.leave_reason)
    # livekit-server sometimes loses a leave sent just before the socket closes
    # ("error writing to websocket: broken pipe" in its log) and times the participant
    # out 20 s later: the monitor reports the server's CONNECTION_TIMEOUT, and the end
    # when the server gave it.
    timed_out = record.reason.value == "CONNECTION_TIMEOUT" != expected_reason
    if not timed_out:
        assert record.reason.value == expected_reason
    # Timings: the monitor sees each change within a fraction of a second.
    assert truth.t_start is not None
    assert truth.t_end is not None
    assert abs(record.timings.started_at - truth.t_start) < 0.5
    assert record.timings.ended_at is not None
    if timed_out:
        assert record.timings.ended_at >= truth.t_end
    else:
        assert abs(record.timings.ended_at - truth.t_end) < 0.5
    timings = record.timings
    if truth.answered:
        assert truth.t_answer is not None
        assert timings.answered_at is not None
        assert_seen_in_time(timings.answered_at, truth.t_answer, timings.answer_approximate)
    if truth.t_ringing is not None and timings.ringing_at is not None:
        assert_seen_in_time(timings.ringing_at, truth.t_ringing, timings.ringing_approximate)


def assert_seen_in_time(seen: float, truth: float, approximate: bool) -> None:
    """A moment seen live is within 0.5 s of the truth. One marked approximate was seen
    only after the fact (the observer joined later): it may be late, never early."""
    if approximate:
        assert seen >= truth - 0.05, (seen, truth)
    else:
        assert abs(seen - truth) < 0.5, (seen, truth)
