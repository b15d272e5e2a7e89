"""The journal format, its writer's rotation, and replay of journals and recorded traces."""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from monitor.core.journal_format import (
    CarriedCall,
    Header,
    JournalError,
    decode_line,
    encode_event,
    encode_open_call,
)
from monitor.core.machine import CallBook, MachineSettings
from monitor.core.model import (
    CallState,
    DialFailed,
    MonitorRestarted,
    Participant,
    ParticipantLeft,
    ParticipantSeen,
    Reason,
    RoomEnded,
    Source,
    parse_reason,
)
from monitor.core.privacy import NumberMasker
from monitor.runtime.replay import print_replay, replay, replay_events
from monitor.sinks.journal import JournalWriter, read_journal
from monitor.sinks.logs import call_summary
from tests import trace_journal
from tests.unit.script import T0, CallScript


def busy_call() -> CallScript:
    script = CallScript().seen(0.04, "dialing").to(0.05, "ringing")
    return script.dial_failed(1.0, 486).left(1.01, Reason.USER_REJECTED)


def test_every_event_type_survives_the_journal_unchanged() -> None:
    script = busy_call().vanished(2.0).room_ended(3.0, Reason.ROOM_DELETED).tick(4.0)
    script.seen(5.0, "ringing", Source.RECONCILE, joined=4.5)
    for event in script.events:
        assert decode_line(encode_event(event)) == event


def test_an_open_call_survives_the_journal_unchanged_in_every_state() -> None:
    """What a rotated file carries is the book's own state: record, pending end, a
    failed dial, the monitor's absence."""
    inbound = CallScript(inbound=True, call_id="SCL_in", sid="PA_in", room="call-in")
    scripts = [
        CallScript(call_id="SCL_d", sid="PA_d", room="call-d").seen(0.0, "dialing"),
        CallScript(call_id="SCL_a", sid="PA_a", room="call-a")
        .seen(0.0, "dialing", joined=-0.5)
        .to(1.0, "ringing")
        .to(3.0, "active", Source.WEBHOOK),
        CallScript(call_id="SCL_f", sid="PA_f", room="call-f")
        .seen(0.0, "dialing")
        .dial_failed(1.0, 486)
        .left(1.5, Reason.USER_REJECTED),
        inbound.seen(0.0, "ringing", Source.RECONCILE, joined=-3.0),
    ]
    book = CallBook(MachineSettings(settle_seconds=5.0))
    for event in sorted((e for s in scripts for e in s.events), key=lambda e: e.at):
        book.step(event)
    book.step(MonitorRestarted(T0 + 4.0))  # the failed dial still settling
    calls = book.open_calls()
    assert {call.record.state for call in calls} >= {CallState.DIALING, CallState.ENDING}
    assert any(call.pending and call.dial_failed for call in calls)
    assert all(call.away for call in calls)
    for call in calls:
        line = decode_line(encode_open_call(T0 + 5.0, call))
        assert line == CarriedCall(T0 + 5.0, call)


def test_unknown_reason_keeps_what_was_received() -> None:
    participant = Participant("PA_1", "x", {"sip.callID": "SCL_1"})
    event = ParticipantLeft(T0, Source.WEBHOOK, "r", participant, None, "BANANA")
    decoded = decode_line(encode_event(event))
    assert isinstance(decoded, ParticipantLeft)
    assert (decoded.reason, decoded.raw_reason) == (None, "BANANA")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("USER_REJECTED", Reason.USER_REJECTED),
        ("user_rejected", Reason.USER_REJECTED),
        (12, Reason.USER_REJECTED),
        ("13", Reason.SIP_TRUNK_FAILURE),
        (Reason.ROOM_DELETED, Reason.ROOM_DELETED),
        ("UNKNOWN_REASON", Reason.UNKNOWN_REASON),
        (99, None),
        ("nope", None),
        (True, None),
        (None, None),
        (1.5, None),
    ],
)
def test_reasons_parse_from_names_and_numbers(value: object, reason: Reason | None) -> None:
    assert parse_reason(value)[0] is reason


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"v": 7, "type": "tick", "at": 1}', "unsupported journal version"),
        ('{"v": 1, "type": "tick"}', "bad 'tick' event"),
        ('{"v": 1, "type": "tick", "at": "soon"}', "expected a number"),
        ('{"v": 1, "type": "warp", "at": 1, "source": "room"}', "unknown event type"),
        ('{"v": 1, "type": "room_ended", "at": 1, "source": "moon", "room": "r"}', "bad"),
        ('{"v": 1, "type": "room_ended", "at": 1, "source": "room", "room": 5}', "string"),
        (
            '{"v": 1, "type": "participant_seen", "at": 1, "source": "room", "room": "r",'
            ' "participant": []}',
            "participant is not an object",
        ),
        (
            '{"v": 1, "type": "participant_seen", "at": 1, "source": "room", "room": "r",'
            ' "participant": {"sid": "PA", "attributes": [1]}}',
            "attributes are not an object",
        ),
    ],
)
def test_a_bad_line_is_an_error_that_says_why(line: str, message: str) -> None:
    with pytest.raises(JournalError, match=message):
        decode_line(line)


HEADER_WITH = '{{"v": 1, "type": "header", {}}}'
TICK_AT = '{{"v": 1, "type": "tick", "at": {}}}'
DIAL = '{{"v": 1, "type": "dial_failed", "at": 1, "source": "dial", "room": "r", '
DIAL += '"participant_identity": "p", "sip_status_code": {}}}'
# Another call's start, at a time given as TIME.
SEEN_AT = json.dumps(
    {
        "v": 1,
        "type": "participant_seen",
        "at": "TIME",
        "source": "webhook",
        "room": "r2",
        "participant": {"sid": "PA_2", "attributes": {"sip.callID": "SCL_2"}},
    }
).replace('"TIME"', "TIME")


@pytest.mark.parametrize(
    ("line", "kind", "message"),
    [
        (HEADER_WITH.format('"settings": [1, 2]'), "bad_field", "settings are not an object"),
        (HEADER_WITH.format('"settings": {"settle_seconds": NaN}'), "not_json", "NaN"),
        (HEADER_WITH.format('"settings": {"settle_seconds": 1e400}'), "bad_field", "finite"),
        (HEADER_WITH.format('"settings": {"settle_seconds": -1}'), "bad_field", "from 0"),
        (HEADER_WITH.format('"settings": {"settle_seconds": "1"}'), "bad_field", "a number"),
        (HEADER_WITH.format('"started_at": Infinity'), "not_json", "Infinity"),
        (TICK_AT.format("NaN"), "not_json", "NaN is not a JSON value"),
        (SEEN_AT.replace("TIME", "NaN"), "not_json", "NaN is not a JSON value"),
        (SEEN_AT.replace("TIME", "Infinity"), "not_json", "Infinity"),
        (SEEN_AT.replace("TIME", "1e300"), "bad_field", "from 1970 to 3000"),
        (TICK_AT.format("-Infinity"), "not_json", "-Infinity"),
        (TICK_AT.format("1e400"), "bad_field", "finite"),
        (TICK_AT.format("1" + "0" * 400), "bad_field", "OverflowError"),
        (TICK_AT.format("1" * 5000), "not_json", "not JSON"),
        (TICK_AT.format("1e15"), "bad_field", "from 1970 to 3000"),
        (TICK_AT.format("-1"), "bad_field", "from 1970 to 3000"),
        (DIAL.format("1e400"), "bad_field", "finite|integer"),
        (DIAL.format("486.5"), "bad_field", "integer"),
        (DIAL.format("100000"), "bad_field", "0 to 999"),
        ("[" * 100_000, "not_json", "not JSON"),
        ('{"v": "+15551112222", "type": "tick", "at": 1}', "unsupported_version", "version"),
        ('{"v": 1, "type": "' + "x" * 500 + '"}', "unknown_type", "unknown event type"),
        (TICK_AT.format(1).replace("tick", "room_ended"), "bad_field", "KeyError: 'source'"),
        (
            '{"v": 1, "type": "room_ended", "at": 1, "room": "r", "source": "' + "y" * 9000 + '"}',
            "bad_field",
            "is not a valid Source",
        ),
    ],
)
def test_a_line_that_would_break_replay_is_a_bad_line_of_its_kind(
    tmp_path: Path, line: str, kind: str, message: str
) -> None:
    with pytest.raises(JournalError, match=message) as caught:
        decode_line(line)
    assert caught.value.kind == kind
    assert len(str(caught.value)) < 200  # one readable line, not the input echoed back
    journal = tmp_path / "j.jsonl"
    lines = [encode_event(event) for event in busy_call().events]
    journal.write_text("\n".join([*lines[:2], line, *lines[2:]]) + "\n")
    result = replay([journal])
    assert [(bad.number, bad.kind) for bad in result.bad_lines] == [(3, kind)]
    assert [record.outcome for record in result.ended] == ["busy"]
    print_replay(result, io.StringIO(), NumberMasker())


def test_a_file_that_cannot_be_read_is_reported_and_the_next_is_replayed(tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    journal.write_text("\n".join(encode_event(event) for event in busy_call().events) + "\n")
    result = replay([tmp_path, journal])
    assert [(bad.path, bad.number, bad.kind) for bad in result.bad_lines] == [
        (str(tmp_path), 1, "unreadable")
    ]
    assert "Is a directory" in result.bad_lines[0].error
    assert [record.outcome for record in result.ended] == ["busy"]


def test_non_string_attribute_values_are_kept_as_json_text() -> None:
    line = json.dumps(
        {
            "v": 1,
            "type": "participant_seen",
            "at": 1.0,
            "source": "webhook",
            "room": "r",
            "participant": {"sid": "PA", "attributes": {"sip.callID": 5, "x": None}},
        }
    )
    event = decode_line(line)
    assert isinstance(event, ParticipantSeen)
    assert event.participant.attributes == {"sip.callID": "5", "x": "null"}


def test_replay_skips_bad_lines_reports_them_and_keeps_the_rest(tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    lines = [encode_event(event) for event in busy_call().events]
    lines.insert(2, "garbage")
    journal.write_text("\n".join(lines) + "\n\n")
    result = replay([journal])
    assert [record.outcome for record in result.ended] == ["busy"]
    assert [(bad.number, bad.error[:8]) for bad in result.bad_lines] == [(3, "not JSON")]


def test_replay_uses_the_settings_of_the_journal_header(tmp_path: Path) -> None:
    # The hangup arrives after the leave: absorbed with the header's 1 s settle window,
    # an anomaly without it.
    script = CallScript().seen(0.0, "ringing").to(1.0, "active")
    script.left(5.0, Reason.CLIENT_INITIATED).to(5.01, "hangup")
    body = [encode_event(event) for event in script.events]
    with_header = tmp_path / "with.jsonl"
    writer = JournalWriter(with_header, Header(MachineSettings(settle_seconds=1.0)), 10**6, 1)
    for event in script.events:
        writer.write(event)
    writer.close()
    without = tmp_path / "without.jsonl"
    without.write_text("\n".join(body) + "\n")
    assert replay([with_header]).ended[0].ambiguity == ""
    assert replay([without]).ended[0].ambiguity != ""


def test_writer_rotates_and_every_file_starts_with_the_header(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    writer = JournalWriter(path, Header(MachineSettings(), "m1", T0), max_bytes=2000, backups=2)
    events = busy_call().events * 10
    for event in events:
        writer.write(event)
    writer.close()
    files = sorted(tmp_path.iterdir())
    assert [file.name for file in files] == ["journal.jsonl", "journal.jsonl.1", "journal.jsonl.2"]
    for file in files:
        assert file.stat().st_size <= 2000
        assert file.stat().st_mode & 0o777 == 0o600  # numbers in clear: owner only
        first = decode_line(file.read_text().splitlines()[0])
        assert isinstance(first, Header)
        assert first.instance == "m1"
    kept = [item for item in read_journal(reversed(files)) if not isinstance(item, Header)]
    assert kept == events[len(events) - len(kept) :]


def test_writer_without_backups_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    writer = JournalWriter(path, Header(MachineSettings()), max_bytes=1500, backups=0)
    for event in busy_call().events * 5:
        writer.write(event)
    writer.close()
    assert [file.name for file in tmp_path.iterdir()] == ["journal.jsonl"]


def headers_in(path: Path) -> list[Header]:
    return [item for item in read_journal([path]) if isinstance(item, Header)]


def test_each_run_writes_its_header_when_it_opens_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    for run in ("first", "second"):
        writer = JournalWriter(path, Header(MachineSettings(), run, T0), 10**6, 1)
        writer.write(RoomEnded(T0, Source.WEBHOOK, "r"))
        writer.close()
    assert [header.instance for header in headers_in(path)] == ["first", "second"]
    assert len(path.read_text().splitlines()) == 4


def test_a_header_with_no_event_after_it_is_not_written_twice(tmp_path: Path) -> None:
    """The start-up check opens the journal before the monitor's own writer does."""
    path = tmp_path / "journal.jsonl"
    for _ in range(2):
        JournalWriter(path, Header(MachineSettings(), "m1", T0), 10**6, 1).open()
    writer = JournalWriter(path, Header(MachineSettings(), "m1", T0 + 1), 10**6, 1)
    writer.write(RoomEnded(T0, Source.WEBHOOK, "r"))
    writer.close()
    assert len(headers_in(path)) == 1
    # Other settings are another run's: their header is written.
    other = JournalWriter(path, Header(MachineSettings(settle_seconds=2.0), "m1", T0), 10**6, 1)
    other.open()
    other.close()
    assert [header.settings.settle_seconds for header in headers_in(path)] == [0.0, 2.0]


@pytest.mark.parametrize("fragment", ['{"v":1,"type":"room_ended","at":18', '{"v":1,"ty'])
def test_a_last_line_cut_by_a_crash_is_set_aside_and_the_next_event_replays(
    tmp_path: Path, fragment: str
) -> None:
    path = tmp_path / "journal.jsonl"
    events = busy_call().events
    writer = JournalWriter(path, Header(MachineSettings(), "m1", T0), 10**6, 1)
    for event in events[:2]:
        writer.write(event)
    writer.close()
    with path.open("a", encoding="utf-8") as journal:
        journal.write(fragment)  # SIGKILL in the middle of a write
    writer = JournalWriter(path, Header(MachineSettings(), "m1", T0 + 5), 10**6, 1)
    assert writer.open() == 1
    for event in events[2:]:
        writer.write(event)
    writer.close()
    result = replay([path])
    assert result.bad_lines == []
    assert [record.outcome for record in result.ended] == ["busy"]
    assert len(headers_in(path)) == 2
    [aside] = tmp_path.glob("journal.jsonl.partial-*")
    assert aside.read_text() == fragment
    assert aside.stat().st_mode & 0o777 == 0o600  # it may hold a number in clear


def test_a_journal_cut_inside_its_first_line_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_text('{"v":1,"type":"head')
    writer = JournalWriter(path, Header(MachineSettings(), "m1", T0), 10**6, 1)
    assert writer.open() == 1
    assert writer.partial_lines_set_aside == 1
    writer.write(RoomEnded(T0, Source.WEBHOOK, "r"))
    writer.close()
    assert [type(item).__name__ for item in read_journal([path])] == ["Header", "RoomEnded"]


def test_a_journal_that_ends_its_last_line_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_text("not json, but a whole line\n")
    assert JournalWriter(path, Header(MachineSettings()), 10**6, 1).open() == 0
    assert path.read_text().startswith("not json, but a whole line\n")
    assert list(tmp_path.glob("*.partial-*")) == []


def test_rotation_counts_bytes_not_characters(tmp_path: Path) -> None:
    """Non-ASCII text takes up to four bytes a character."""
    path = tmp_path / "journal.jsonl"
    writer = JournalWriter(path, Header(MachineSettings()), max_bytes=4096, backups=3)
    for index in range(80):
        writer.write(RoomEnded(T0 + index, Source.WEBHOOK, "通話-☎-" * 12))
    writer.close()
    files = sorted(tmp_path.iterdir())
    assert len(files) == 4
    assert all(file.stat().st_size <= 4096 for file in files), [f.stat().st_size for f in files]


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda tmp: tmp, "Is a directory"),
        (lambda tmp: tmp / "file" / "journal.jsonl", "Not a directory|File exists"),
        (lambda tmp: Path("/dev/full"), "not a regular file"),
    ],
)
def test_a_path_that_cannot_hold_a_journal_fails_to_open(
    tmp_path: Path, make: Callable[[Path], Path], why: str
) -> None:
    (tmp_path / "file").write_text("")
    writer = JournalWriter(make(tmp_path), Header(MachineSettings()), 10**6, 1)
    with pytest.raises(OSError, match=why):
        writer.open()


def test_a_header_that_cannot_be_written_fails_the_open_and_a_later_write_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.jsonl"
    writer = JournalWriter(path, Header(MachineSettings()), 10**6, 1)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "write", full)
        with pytest.raises(OSError, match="No space left"):
            writer.open()
    writer.write(RoomEnded(T0, Source.WEBHOOK, "r"))
    writer.close()
    assert [type(item).__name__ for item in read_journal([path])] == ["Header", "RoomEnded"]


def test_printed_replay_shows_transitions_outcome_and_masks_numbers(tmp_path: Path) -> None:
    import io

    script = busy_call()
    result = replay_events(script.events)
    out = io.StringIO()
    print_replay(result, out, NumberMasker())
    text = out.getvalue()
    assert "dialing -> ringing" in text
    assert "outcome=busy" in text
    assert "sip=486" in text
    assert "+15551112222" not in text
    assert "+1******2222" in text
    out = io.StringIO()
    print_replay(result, out, NumberMasker(enabled=False), as_json=True)
    record = json.loads(out.getvalue())
    assert record["phone_number"] == "+15551112222"
    assert record["outcome"] == "busy"
    assert record["post_dial_delay_seconds"] == pytest.approx(0.01, abs=1e-6)
    # The same plain-data call as the call log's `call_ended` line.
    [ended] = result.ended
    assert record == json.loads(json.dumps(call_summary(ended, NumberMasker(enabled=False))))


def test_open_calls_and_anomalies_are_printed() -> None:
    import io

    script = CallScript().seen(0.0, "dialing").to(1.0, "bogus")
    script.events.append(DialFailed(T0 + 2, "elsewhere", "x", 486))
    out = io.StringIO()
    print_replay(replay_events(script.events), out, NumberMasker())
    assert "anomaly unknown_status" in out.getvalue()
    assert "still open: SCL_test1 (dialing)" in out.getvalue()


@pytest.mark.parametrize("as_json", [False, True])
def test_a_number_in_the_room_name_is_masked(as_json: bool) -> None:
    """Dispatch rules often name the room after the caller (docs/logging.md)."""
    import io

    script = CallScript(room="call-+447911123456").seen(0.0, "dialing")
    script.left(1.0, Reason.USER_REJECTED)
    script.tick(5.0)
    out = io.StringIO()
    print_replay(replay_events(script.events), out, NumberMasker(), as_json=as_json)
    assert "call-+44******3456" in out.getvalue()
    assert "447911123456" not in out.getvalue()


def test_numbers_in_bad_lines_and_anomalies_are_masked_in_replay(tmp_path: Path) -> None:
    """A reason quotes what a source or a line held, numbers and all."""
    script = CallScript(room="call-+1 (555) 123-4567").seen(0.0, "dialing")
    script.to(0.5, "tel:+15559876543").left(1.0, Reason.USER_REJECTED).tick(5.0)
    journal = tmp_path / "j.jsonl"
    bad = '{"v": "555-867-5309", "type": "tick", "at": 1}'
    journal.write_text("\n".join([bad, *(encode_event(e) for e in script.events)]) + "\n")
    result = replay([journal])
    out = io.StringIO()
    print_replay(result, out, NumberMasker())
    text = out.getvalue()
    assert "room=call-+1 (***) ***-4567" in text
    assert "anomaly unknown_status: sip.callStatus='tel:+1******6543'" in text
    assert "unsupported journal version '***-***-5309'" in text
    for hidden in ("(555) 123", "555987", "555-867"):
        assert hidden not in text
    out = io.StringIO()
    print_replay(result, out, NumberMasker(enabled=False))
    assert "'555-867-5309'" in out.getvalue()
    assert "tel:+15559876543" in out.getvalue()


def test_an_empty_journal_replays_to_nothing(tmp_path: Path) -> None:
    journal = tmp_path / "empty.jsonl"
    journal.write_text("")
    result = replay([journal])
    assert (result.events, result.ended, result.open_calls) == (0, [], [])


@pytest.mark.parametrize("run", sorted(trace_journal.EXPECTED_OUTCOMES))
def test_recorded_traces_of_the_real_livekit_sip_replay_to_their_stated_outcome(run: str) -> None:
    result = replay_events(trace_journal.trace_events(run, T0), trace_journal.SAMPLE_SETTINGS)
    expected = trace_journal.EXPECTED_OUTCOMES[run]
    if expected is None:
        assert result.ended == []
        assert len(result.open_calls) == 1
    else:
        assert [str(record.outcome) for record in result.ended] == [expected]
    assert [e for e in result.effects if type(e).__name__ == "Anomaly"] == []


def test_shipped_sample_journal_is_current() -> None:
    assert trace_journal.SAMPLE.read_text() == "\n".join(trace_journal.sample_lines()) + "\n"


def test_calls_carried_beyond_the_limit_do_not_rotate_at_every_line(tmp_path: Path) -> None:
    """The limit is on what a file holds beyond the calls it began with."""
    path = tmp_path / "journal.jsonl"
    carried = ['{"v":1,"type":"counted","what":"started","key":"SCL_x","at":1.0}'] * 200
    writer = JournalWriter(
        path, Header(MachineSettings(), "m1", T0), 4096, 3, carried=lambda: carried
    )
    events = busy_call().events * 8  # about 3 files' worth without the carried lines
    for event in events:
        writer.write(event)
    writer.close()
    rotated = [p for p in tmp_path.iterdir() if p.name != "journal.jsonl"]
    assert 1 <= len(rotated) <= 3
    assert path.stat().st_size > 4096  # it holds the carried lines and events after them


def test_a_rotation_that_fails_keeps_writing_the_current_file(tmp_path: Path) -> None:
    """A new file that cannot be made (here its name is taken by a folder) leaves the
    journal as it was; the rotation is tried again at the next event, and succeeds once
    it can. Nothing is lost meanwhile."""
    path = tmp_path / "journal.jsonl"
    blocker = tmp_path / "journal.jsonl.rotating"
    blocker.mkdir()
    writer = JournalWriter(path, Header(MachineSettings(), "m1", T0), 2000, 9)
    events = busy_call().events * 6
    with structlog.testing.capture_logs() as logs:
        for event in events[:12]:
            writer.write(event)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.jsonl", blocker.name]
        blocker.rmdir()
        for event in events[12:]:
            writer.write(event)
        writer.close()
    said = [line["event"] for line in logs if line["event"].startswith("journal_rotation")]
    assert said == ["journal_rotation_failed", "journal_rotation_recovered"]
    files = [*sorted(tmp_path.glob("journal.jsonl.*"), key=lambda p: -int(p.suffix[1:])), path]
    assert len(files) >= 2
    kept = [item for item in read_journal(files) if not isinstance(item, Header)]
    assert kept == events
