"""Crash-only restart: a monitor started on the journal of one that died mid-stream.

The first monitor is abandoned, never closed, as SIGKILL would leave it: what it
journaled is on disk (each line is one write), what it only queued was never
processed. The second one, on the same journal, must bring back every open call with
its timings, give the sinks each start and end exactly once across the two runs, and
say so when a call it restored ends unseen.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from monitor.core.journal_format import CarriedCall, Counted, Header
from monitor.core.machine import CallBook, MachineSettings, Tombstone
from monitor.core.model import (
    Anomaly,
    AnomalyKind,
    CallEnded,
    CallRecord,
    CallStarted,
    CallState,
    DialFailed,
    Effect,
    Event,
    MonitorRestarted,
    Outcome,
    Reason,
    Source,
    Tick,
)
from monitor.runtime.config import load_settings
from monitor.runtime.replay import replay
from monitor.runtime.service import Monitor
from monitor.sinks.journal import read_journal
from tests.unit.script import T0, CallScript, run

KEY = "APIunit"
SECRET = "unit-test-secret-that-is-long-enough-0123456789"
ENV = {"LIVEKIT_URL": "ws://127.0.0.1:1", "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET}
SETTLE = 2.0


class Clock:
    def __init__(self, at: float) -> None:
        self.at = T0 + at

    def __call__(self) -> float:
        return self.at


class Seen:
    """What a sink was given."""

    def __init__(self) -> None:
        self.effects: list[Effect] = []

    def handle(self, effect: Effect) -> None:
        self.effects.append(effect)

    def starts(self) -> list[str]:
        return [e.call.key for e in self.effects if isinstance(e, CallStarted)]

    def ends(self) -> dict[str, CallRecord]:
        return {e.call.key: e.call for e in self.effects if isinstance(e, CallEnded)}

    def anomalies(self) -> list[tuple[AnomalyKind, str]]:
        return [(e.kind, e.call_key) for e in self.effects if isinstance(e, Anomaly)]


def monitor_on(journal: Path, clock: Clock, seen: Seen, **settings: str) -> Monitor:
    values = {"journal_path": str(journal), "settle_seconds": str(SETTLE), **settings}
    return Monitor(
        load_settings(values, ENV), registry=CollectorRegistry(), clock=clock, sinks=[seen]
    )


def take(monitor: Monitor, events: list[Event], processed: bool = True) -> None:
    """Submit (journal) each event; process it too, unless it stays queued at the crash."""
    for event in events:
        assert monitor.submit(event)
        if processed:
            monitor.process(monitor.queue.get_nowait())


def total(monitor: Monitor, name: str) -> float:
    return sum(
        sample.value
        for family in monitor.registry.collect()
        for sample in family.samples
        if sample.name == f"call_monitor_{name}"
    )


def journal_files(path: Path, backups: int) -> list[Path]:
    """The journal's files that exist, oldest first (rotation keeps `.1` newest)."""
    older = [path.with_name(f"{path.name}.{index}") for index in range(backups, 0, -1)]
    return [candidate for candidate in (*older, path) if candidate.is_file()]


def script(n: int) -> CallScript:
    return CallScript(call_id=f"SCL_{n}", sid=f"PA_{n}", room=f"call-{n}")


def test_a_restart_restores_open_calls_and_gives_each_start_and_end_once(
    tmp_path: Path,
) -> None:
    journal, clock = tmp_path / "journal.jsonl", Clock(0.0)
    first_seen, second_seen = Seen(), Seen()
    first = monitor_on(journal, clock, first_seen)
    ringing = script(1).seen(0.0, "dialing").to(1.5, "ringing")
    active = script(2).seen(0.0, "dialing").to(1.0, "ringing").to(4.0, "active")
    ended = script(3).seen(0.0, "dialing").to(1.0, "ringing").to(3.0, "active")
    ended.left(5.0, Reason.CLIENT_INITIATED, status="hangup").tick(8.0)
    settling = script(4).seen(0.0, "dialing").to(1.0, "ringing").to(2.0, "active")
    settling.left(9.5, Reason.CLIENT_INITIATED, status="hangup")
    queued_end = script(6).seen(0.0, "dialing").to(1.0, "ringing").to(2.0, "active")
    calls = (ringing, active, ended, settling, queued_end)
    take(first, sorted((e for call in calls for e in call.events), key=lambda e: e.at))
    # Journaled, acknowledged, still queued when the monitor dies: a new call's join,
    # and another's leave.
    take(first, script(5).seen(9.6, "dialing").events, processed=False)
    take(first, queued_end.left(9.7, Reason.USER_UNAVAILABLE, status="hangup").events[-1:], False)
    assert sorted(first_seen.starts()) == ["SCL_1", "SCL_2", "SCL_3", "SCL_4", "SCL_6"]
    assert list(first_seen.ends()) == ["SCL_3"]  # call 4 is settling

    # SIGKILL: nothing closed, the queue lost. Started again 30 s later.
    clock.at = T0 + 40.0
    second = monitor_on(journal, clock, second_seen)
    # Owed and given now: the queued join and leave, and call 4's end (its settle
    # window closed while the monitor was down). Nothing the first run had given.
    assert second_seen.starts() == ["SCL_5"]
    assert sorted(second_seen.ends()) == ["SCL_4", "SCL_6"]
    assert second_seen.ends()["SCL_4"].timings.ended_at == T0 + 9.5  # when it left
    assert total(second, "calls_started_total") == 1
    assert total(second, "calls_ended_total") == 2
    # The open calls are back, with the timings the first run measured.
    back = {call.key: call for call in second.live_calls()}
    assert sorted(back) == ["SCL_1", "SCL_2", "SCL_5"]
    assert total(second, "restored_calls") == 3
    assert back["SCL_1"].state is CallState.RINGING
    assert back["SCL_1"].timings.post_dial_delay == 1.5
    assert back["SCL_2"].state is CallState.ACTIVE
    assert back["SCL_2"].timings.time_to_answer == 4.0
    assert not any(call.timings_approximate for call in back.values())

    # After the restart: call 1 is answered and hangs up, seen live; call 2 is missed
    # by two listings (it ended while the monitor was down); call 5 rings on.
    ringing.to(45.0, "active").left(50.0, Reason.CLIENT_INITIATED, status="hangup")
    clock.at = T0 + 60.0
    take(second, [*ringing.events[-2:], *script(2).vanished(55.0).tick(60.0).events])
    call_1, call_2 = second_seen.ends()["SCL_1"], second_seen.ends()["SCL_2"]
    assert call_1.outcome is Outcome.COMPLETED
    assert (call_1.timings.post_dial_delay, call_1.timings.time_to_answer) == (1.5, 45.0)
    assert call_2.outcome is Outcome.LOST
    assert second_seen.anomalies() == [(AnomalyKind.ENDED_WHILE_AWAY, "SCL_2")]

    # Across both runs, each call started once and each ended call ended once: in the
    # sinks, and in the journal's `counted` lines, which a third start would read.
    starts = first_seen.starts() + second_seen.starts()
    ends = list(first_seen.ends()) + list(second_seen.ends())
    assert sorted(starts) == ["SCL_1", "SCL_2", "SCL_3", "SCL_4", "SCL_5", "SCL_6"]
    assert sorted(ends) == ["SCL_1", "SCL_2", "SCL_3", "SCL_4", "SCL_6"]
    marks = [item for item in read_journal([journal]) if isinstance(item, Counted)]
    assert sorted(m.key for m in marks if m.what == "started") == sorted(starts)
    assert sorted(m.key for m in marks if m.what == "ended") == sorted(ends)

    # A third run on the same journal owes nothing, and has call 5 open.
    third_seen = Seen()
    third = monitor_on(journal, Clock(70.0), third_seen)
    assert third_seen.effects == []
    assert [call.key for call in third.live_calls()] == ["SCL_5"]
    # Offline replay reads the restarts from the headers and tells the same story.
    replayed = replay(journal_files(journal, 5))
    assert sorted(r.key for r in replayed.ended) == sorted(ends)
    assert {r.key: r.outcome for r in replayed.ended}["SCL_2"] is Outcome.LOST
    assert [c.key for c in replayed.open_calls] == ["SCL_5"]


def test_calls_whose_start_was_rotated_away_are_restored_and_not_started_again(
    tmp_path: Path,
) -> None:
    """Rotation drops the oldest file; each new one carries the calls open when it began
    and the ended ones still remembered, and a restart reads only the newest."""
    journal, clock = tmp_path / "journal.jsonl", Clock(0.0)
    first_seen, second_seen = Seen(), Seen()
    first = monitor_on(journal, clock, first_seen, journal_max_bytes="4096", journal_backups="1")
    long_call = script(1).seen(0.0, "dialing").to(1.0, "ringing").to(2.0, "active")
    take(first, long_call.events)
    for n in range(100, 140):  # enough short calls to rotate the long one's start away
        short = script(n).seen(n, "dialing").to(n + 0.5, "ringing")
        take(first, short.left(n + 1.0, Reason.USER_REJECTED, status="hangup").events)
    take(first, [Tick(T0 + 145.0)])  # the last ones' settle windows close
    files = journal_files(journal, 1)
    assert len(files) == 2
    lines = list(read_journal(files))
    sids = {getattr(getattr(line, "participant", None), "sid", None) for line in lines}
    assert "PA_1" not in sids  # its events went with the older files
    assert any(isinstance(line, CarriedCall) and line.call.record.key == "SCL_1" for line in lines)
    clock.at = T0 + 200.0
    second = monitor_on(journal, clock, second_seen, journal_max_bytes="4096", journal_backups="1")
    assert second_seen.effects == []
    [back] = second.live_calls()
    assert back.key == "SCL_1"
    assert (back.timings.post_dial_delay, back.timings.time_to_answer) == (1.0, 2.0)
    # A call that ended in a file long gone is remembered too: a late webhook for it
    # starts nothing.
    late = script(100).seen(100.0, "dialing").to(100.5, "ringing")
    take(second, late.left(205.0, Reason.USER_REJECTED, Source.WEBHOOK, "hangup").events[-1:])
    assert second.book.is_ended("SCL_100")
    assert second.book.is_ended("sid:PA_100")
    assert second_seen.effects == []
    # Its end, seen after the restart, counts once; it never starts again.
    take(second, long_call.left(210.0, Reason.CLIENT_INITIATED, status="hangup").events[-1:])
    take(second, [Tick(T0 + 213.0)])
    assert second_seen.starts() == []
    [(key, record)] = second_seen.ends().items()
    assert (key, record.outcome, record.timings.talk_duration) == (
        "SCL_1",
        Outcome.COMPLETED,
        208.0,
    )


def test_a_call_seen_again_after_the_restart_is_not_said_to_have_ended_while_away() -> None:
    call = script(1).seen(0.0, "dialing").to(1.0, "ringing")
    events: list[Event] = [*call.events, MonitorRestarted(T0 + 30.0)]
    _, effects = run([*events, *script(1).vanished(40.0).events], settle=0.0)
    away = [e for e in effects if isinstance(e, Anomaly)]
    assert [(a.kind, a.call_key) for a in away] == [(AnomalyKind.ENDED_WHILE_AWAY, "SCL_1")]
    assert "monitor was down" in away[0].detail
    # Seen by a source after the restart, then gone: an ordinary end without evidence.
    seen_again = script(1)
    seen_again.status = "ringing"
    seen_again.seen(35.0, "ringing").vanished(40.0)
    _, effects = run([*events, *seen_again.events], settle=0.0)
    kinds = [e.kind for e in effects if isinstance(e, Anomaly)]
    assert kinds == [AnomalyKind.END_WITHOUT_EVIDENCE]


def test_the_book_takes_back_only_calls_it_does_not_know() -> None:
    """What a journal file carries is adopted unless the book already has the call (its
    events were read), or it is final, or its participant is another call's."""
    settle = CallBook(MachineSettings(settle_seconds=2.0))
    for event in script(1).seen(0.0, "ringing").left(1.0, Reason.USER_REJECTED).events:
        settle.step(event)
    [ending] = settle.open_calls()
    assert ending.pending is not None
    book = CallBook(MachineSettings(settle_seconds=2.0))
    for event in script(2).seen(0.0, "dialing").events:
        book.step(event)
    [known] = book.open_calls()
    assert not book.adopt(known)  # the same call, known from its events
    assert not book.adopt(replace(ending, record=replace(ending.record, state=CallState.ENDED)))
    same_participant = replace(ending.record, key="SCL_other", participant_sid="PA_2")
    assert not book.adopt(replace(ending, record=same_participant))
    assert book.adopt(ending)
    assert not book.adopt(ending)  # once
    # Its pending end is the book's now: the settle window closes on the book's clock.
    [ended] = [e for e in book.step(Tick(T0 + 3.5)) if isinstance(e, CallEnded)]
    assert (ended.call.key, ended.call.outcome) == ("SCL_1", Outcome.REJECTED)
    assert not book.adopt(ending)  # final now


def test_the_book_takes_back_recent_ends_under_both_names() -> None:
    ended = CallBook(MachineSettings(tombstone_seconds=600.0))
    for n in (1, 2):
        for event in script(n).seen(0.0, "ringing").left(1.0, Reason.USER_REJECTED).events:
            ended.step(event)
    stones = ended.tombstones(ended_since=T0)
    assert [key for key, _ in stones] == ["SCL_1", "SCL_2"]  # each once, not by sid too
    assert ended.tombstones(ended_since=T0 + 2.0) == []
    book = CallBook(MachineSettings(tombstone_seconds=600.0))
    for key, stone in stones:
        assert book.adopt_tombstone(key, stone)
        assert not book.adopt_tombstone(key, stone)
    assert book.is_ended("SCL_1")
    assert book.is_ended("sid:PA_1")
    # A late event of an adopted end starts nothing.
    late = script(1).seen(0.0, "ringing").left(5.0, Reason.USER_REJECTED, Source.WEBHOOK)
    assert not [e for e in book.step(late.events[-1]) if isinstance(e, CallStarted)]
    # A call keyed by its sid (no sip.callID) is remembered under that one name; an end
    # already expired on the book's clock is not taken.
    keyless = Tombstone(T0 + 601.0, None, "call-9", "callee", participant_sid="PA_9")
    assert book.adopt_tombstone("sid:PA_9", keyless)
    assert book.is_ended("sid:PA_9")
    book.step(Tick(T0 + 700.0))
    assert not book.adopt_tombstone("SCL_old", replace(keyless, expires_at=T0 + 650.0))
    # The newest end in a slot names the slot's call, for a late dial detail.
    older = replace(keyless, room="call-1", identity="callee", expires_at=T0 + 900.0)
    assert book.adopt_tombstone("SCL_older", older)
    newer = replace(older, expires_at=T0 + 1000.0)
    assert book.adopt_tombstone("SCL_newer", newer)
    # An end older than the slot's, and one of a call whose sid was never known.
    assert book.adopt_tombstone("SCL_oldest", replace(older, expires_at=T0 + 800.0))
    assert book.adopt_tombstone("SCL_nosid", replace(older, participant_sid=""))
    # A dial detail just after the newest end is that call's, late.
    late_dial = DialFailed(T0 + 405.0, "call-1", "callee", 486, "Busy Here")
    effects = book.step(late_dial)
    assert [(e.kind, e.call_key) for e in effects if isinstance(e, Anomaly)] == [
        (AnomalyKind.LATE_DIAL_DETAIL, "SCL_newer")
    ]


def test_a_call_carried_into_a_journal_with_no_event_before_its_restart() -> None:
    """A file with only carried calls and a restart: the monitor was away since a time
    no line says, and the anomaly says so rather than printing a bogus date."""
    source = CallBook()
    for event in script(1).seen(0.0, "ringing").events:
        source.step(event)
    [carried] = source.open_calls()
    book = CallBook()
    assert book.adopt(carried)
    book.step(MonitorRestarted(T0 + 30.0))
    effects = book.step(script(1).vanished(40.0).events[0])
    [away] = [e for e in effects if isinstance(e, Anomaly)]
    assert away.kind is AnomalyKind.ENDED_WHILE_AWAY
    assert "(? to " in away.detail


def test_a_rotation_while_events_wait_in_the_queue_carries_the_machine_after_them(
    tmp_path: Path,
) -> None:
    """The journal writes an event when it is submitted, the machine sees it later. A
    new file begun meanwhile must carry the calls as they are after every event the
    old file holds, since a restart reads the new file alone."""
    journal, clock = tmp_path / "journal.jsonl", Clock(0.0)
    first_seen, second_seen = Seen(), Seen()
    first = monitor_on(journal, clock, first_seen, journal_max_bytes="4096", journal_backups="1")
    calls = [script(n) for n in range(1, 9)]
    for n, call in enumerate(calls):
        call.seen(n * 0.1, "dialing").to(n * 0.1 + 1.0, "ringing")
    # Every join and ringing submitted and queued, none processed yet: the file fills
    # up and begins anew while they wait.
    for event in sorted((e for c in calls for e in c.events), key=lambda e: e.at):
        assert first.submit(event)
    for call in calls[:4]:  # these hang up, queued too
        call.left(5.0, Reason.CLIENT_INITIATED, status="hangup")
        assert first.submit(call.events[-1])
    assert len(journal_files(journal, 1)) == 2, "the journal should have rotated"
    # Killed before the queue drained. Started again on the newest file alone.
    clock.at = T0 + 30.0
    monitor_on(journal, clock, second_seen, journal_max_bytes="4096", journal_backups="1")
    starts = first_seen.starts() + second_seen.starts()
    ends = list(first_seen.ends()) + list(second_seen.ends())
    assert sorted(starts) == sorted(c.call_id for c in calls)
    assert sorted(ends) == sorted(c.call_id for c in calls[:4])


def test_the_run_header_is_one_for_the_whole_run_and_rotation_is_no_restart(
    tmp_path: Path,
) -> None:
    """`call-monitor run` writes its header at start (to fail fast on a bad path) and
    gives it to the monitor: rotated files carry the same run, not a restart."""
    from monitor.cli import open_journal, run_header

    journal, clock = tmp_path / "journal.jsonl", Clock(0.0)
    settings = load_settings(
        {"journal_path": str(journal), "journal_max_bytes": "4096", "settle_seconds": "0"}, ENV
    )
    header = run_header(settings)
    open_journal(settings, header)
    monitor = Monitor(settings, registry=CollectorRegistry(), clock=clock, journal_header=header)
    lasting = script(1).seen(0.0, "ringing")
    take(monitor, lasting.events)
    for n in range(100, 130):
        take(monitor, script(n).seen(n, "dialing").left(n + 1, Reason.USER_REJECTED).events)
    take(monitor, script(1).vanished(200.0).events)
    runs = {
        item.started_at
        for item in read_journal(journal_files(journal, 5))
        if isinstance(item, Header)
    }
    assert runs == {header.started_at}
    kinds = [e.kind for e in replay(journal_files(journal, 5)).effects if isinstance(e, Anomaly)]
    assert AnomalyKind.ENDED_WHILE_AWAY not in kinds
    assert AnomalyKind.END_WITHOUT_EVIDENCE in kinds


def test_calls_carried_since_no_event_survive_two_restarts(tmp_path: Path) -> None:
    """A file holding only carried calls, then a restart, then a rotation: the calls
    away since a time no line says are written so that the next restart reads them."""
    journal, clock = tmp_path / "journal.jsonl", Clock(0.0)
    first = monitor_on(journal, clock, Seen(), journal_max_bytes="4096", journal_backups="1")
    take(first, script(1).seen(0.0, "ringing").events)
    for n in range(100, 130):  # rotate: the newest file begins with call 1 carried
        take(first, script(n).seen(n, "dialing").left(n + 1, Reason.USER_REJECTED).events)
    for restart in (2, 3, 4):
        clock.at = T0 + 200.0 * restart
        again = monitor_on(journal, clock, Seen(), journal_max_bytes="4096", journal_backups="1")
        assert [call.key for call in again.live_calls()] == ["SCL_1"], restart
        for n in range(1000 * restart, 1000 * restart + 30):  # and rotate again
            at = 200.0 * restart + (n % 1000) * 0.1
            take(again, script(n).seen(at, "dialing").left(at, Reason.USER_REJECTED).events)
    assert not [bad for bad in replay(journal_files(journal, 1)).bad_lines]


def test_a_replica_restores_only_the_calls_of_rooms_it_owns(tmp_path: Path) -> None:
    """After the rooms are shared anew, another replica counts the rooms it now owns."""
    from monitor.core.shards import Shard

    journal, clock = tmp_path / "journal.jsonl", Clock(0.0)
    first = monitor_on(journal, clock, Seen())
    for n in range(1, 11):
        take(first, script(n).seen(0.0, "ringing").events)
    clock.at = T0 + 30.0
    again = monitor_on(journal, clock, Seen(), shards="2", shard="0")
    kept = {call.room for call in again.live_calls()}
    assert kept == {f"call-{n}" for n in range(1, 11) if Shard(0, 2).owns(f"call-{n}")}
    assert 0 < len(kept) < 10
