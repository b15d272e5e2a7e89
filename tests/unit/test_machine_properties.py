"""Properties over random event sequences: whatever the sources send, the machine holds."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.journal_format import Header, decode_line, encode_event, encode_header
from monitor.core.machine import END_TRANSITIONS, TRANSITIONS, CallBook, MachineSettings
from monitor.core.model import (
    AttributesChanged,
    CallEnded,
    CallStarted,
    CallState,
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
    StateChanged,
    Tick,
)
from monitor.runtime.replay import replay_events

T0 = 1_800_000_000.0
STATUSES = st.sampled_from(
    ["dialing", "ringing", "automation", "active", "hangup", "", "bogus", None]
)
REASONS = st.one_of(st.none(), st.sampled_from(list(Reason)))
SOURCES = st.sampled_from([Source.ROOM, Source.WEBHOOK, Source.RECONCILE])
ROOMS = st.sampled_from(["room-a", "room-b"])
# (sid, call id, identity): one without a call id, two sharing a room's identity.
PEOPLE = st.sampled_from(
    [("PA_1", "SCL_1", "callee"), ("PA_2", "SCL_2", "callee"), ("PA_3", "", "x")]
)


@st.composite
def participants(draw: st.DrawFn) -> Participant:
    sid, call_id, identity = draw(PEOPLE)
    attrs: dict[str, str] = {"sip.trunkID": "ST_1", "sip.phoneNumber": "+15551112222"}
    if call_id:
        attrs["sip.callID"] = call_id
    if draw(st.booleans()):
        attrs["sip.ruleID"] = "SDR_1"
    status = draw(STATUSES)
    if status is not None:
        attrs["sip.callStatus"] = status
    joined = draw(st.one_of(st.none(), st.floats(-5, 5)))
    return Participant(
        sid,
        identity,
        attrs,
        draw(st.sampled_from([True, True, False])),
        None if joined is None else T0 + joined,
    )


@st.composite
def events(draw: st.DrawFn) -> list[Event]:
    clock = T0
    out: list[Event] = []
    for _ in range(draw(st.integers(1, 40))):
        clock += draw(st.sampled_from([0.0, 0.001, 0.5, 1.0, 3.0, -0.5]))
        kind = draw(st.integers(0, 7))
        room = draw(ROOMS)
        source = draw(SOURCES)
        if kind in (0, 1):
            out.append(ParticipantSeen(clock, source, room, draw(participants())))
        elif kind in (2, 3):
            person = draw(participants())
            out.append(
                AttributesChanged(
                    clock, source, room, person, {"sip.callStatus": person.status or ""}
                )
            )
        elif kind == 4:
            reason = draw(REASONS)
            raw = draw(st.sampled_from(["", "UNKNOWN", "99"])) if reason is None else reason.value
            out.append(ParticipantLeft(clock, source, room, draw(participants()), reason, raw))
        elif kind == 5:
            out.append(ParticipantVanished(clock, Source.RECONCILE, room, draw(PEOPLE)[0]))
        elif kind == 6:
            out.append(RoomEnded(clock, source, room, draw(REASONS)))
        else:
            code = draw(st.one_of(st.none(), st.sampled_from([404, 480, 486, 503, 603, 403])))
            call_id = draw(st.sampled_from(["", "SCL_1", "SCL_9"]))
            out.append(DialFailed(clock, room, draw(PEOPLE)[2], code, "x", call_id))
    return out


def run_all(sequence: list[Event], settle: float) -> list[Effect]:
    book = CallBook(MachineSettings(settle_seconds=settle))
    effects: list[Effect] = []
    for event in sequence:
        effects += book.step(event)
    effects += book.step(Tick(book.now + settle + 1))
    return effects


SETTLE = st.sampled_from([0.0, 0.5, 2.0])


@settings(max_examples=200, deadline=None)
@given(events(), SETTLE)
def test_each_call_starts_once_ends_at_most_once_and_nothing_moves_after_its_end(
    sequence: list[Event], settle: float
) -> None:
    effects = run_all(sequence, settle)
    started = Counter(e.call.key for e in effects if isinstance(e, CallStarted))
    ended = Counter(e.call.key for e in effects if isinstance(e, CallEnded))
    assert all(count == 1 for count in started.values())
    assert all(count == 1 for count in ended.values())
    assert set(ended) <= set(started)
    finished: set[str] = set()
    for effect in effects:
        if isinstance(effect, StateChanged | CallStarted | CallEnded):
            key = effect.call.key
            assert key not in finished or isinstance(effect, CallEnded)
            if isinstance(effect, CallEnded):
                finished.add(key)


@settings(max_examples=200, deadline=None)
@given(events(), SETTLE)
def test_ended_calls_have_one_outcome_no_negative_duration_and_nothing_after_the_end(
    sequence: list[Event], settle: float
) -> None:
    for effect in run_all(sequence, settle):
        if isinstance(effect, CallEnded):
            record = effect.call
            assert record.state is CallState.ENDED
            assert record.outcome is not None
            timings = record.timings
            for span in (
                timings.post_dial_delay,
                timings.time_to_answer,
                timings.talk_duration,
                timings.total_duration,
            ):
                assert span is None or span >= 0
            assert timings.total_duration is not None
            # No moment of the call after its end (a status seen after the leave).
            assert timings.ended_at is not None
            for moment in (timings.ringing_at, timings.answered_at):
                assert moment is None or moment <= timings.ended_at


@settings(max_examples=200, deadline=None)
@given(events(), SETTLE)
def test_every_leave_of_a_known_call_ends_it(sequence: list[Event], settle: float) -> None:
    effects = run_all(sequence, settle)
    started = {e.call.key for e in effects if isinstance(e, CallStarted)}
    ended = {e.call.key for e in effects if isinstance(e, CallEnded)}
    left_sids = {
        e.participant.sid
        for e in sequence
        if isinstance(e, ParticipantLeft) and e.participant.is_sip
    }
    for key in started - ended:
        record = next(e.call for e in effects if isinstance(e, CallStarted) and e.call.key == key)
        assert record.participant_sid not in left_sids


@settings(max_examples=200, deadline=None)
@given(events(), SETTLE)
def test_a_journal_replays_to_the_same_outcomes(sequence: list[Event], settle: float) -> None:
    live = run_all(sequence, settle)
    lines = [encode_header(Header(MachineSettings(settle_seconds=settle)))]
    lines += [encode_event(event) for event in sequence]
    replayed = replay_events(decode_line(line) for line in lines)

    def outcomes(effects: list[Effect]) -> list[tuple[str, str | None, float | None]]:
        return [
            (e.call.key, e.call.outcome, e.call.timings.total_duration)
            for e in effects
            if isinstance(e, CallEnded)
        ]

    assert outcomes(replayed.effects) == outcomes(live)


@settings(max_examples=200, deadline=None)
@given(events(), SETTLE)
def test_every_state_change_is_a_move_of_the_transition_table(
    sequence: list[Event], settle: float
) -> None:
    """The tables are the machine's rules, not its documentation: a status moves a call
    along `TRANSITIONS`, an end along `END_TRANSITIONS`, and nothing else happens."""
    for effect in run_all(sequence, settle):
        if isinstance(effect, StateChanged):
            moves = TRANSITIONS[effect.previous] | END_TRANSITIONS.get(effect.previous, frozenset())
            assert effect.call.state in moves, (effect.previous, effect.call.state)
