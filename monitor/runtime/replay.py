"""Offline replay: a journal fed to a fresh machine, each call's story printed.

The machine is set as the journal's header says, and the clock is the events' own, so
the outcomes are those the live service reached. A later run's header is a restart
(`MonitorRestarted`), as the live machine saw it when it restored its calls. At the
end of the journal the clock moves past every settle window: calls still open are
listed as open, not ended.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from monitor.core.journal_format import CarriedCall, CarriedEnd, Counted, Header, JournalLine
from monitor.core.machine import CallBook, MachineSettings
from monitor.core.model import (
    CallEnded,
    CallRecord,
    CallStarted,
    Effect,
    MonitorRestarted,
    StateChanged,
    Tick,
)
from monitor.core.privacy import NumberMasker
from monitor.sinks.journal import BadLine, read_journal
from monitor.sinks.logs import call_summary

__all__ = ["JournalFeed", "ReplayResult", "print_replay", "replay", "replay_events"]


@dataclass
class ReplayResult:
    effects: list[Effect] = field(default_factory=list)
    ended: list[CallRecord] = field(default_factory=list)
    open_calls: list[CallRecord] = field(default_factory=list)
    bad_lines: list[BadLine] = field(default_factory=list)
    events: int = 0

    def outcome_counts(self) -> Counter[str]:
        return Counter(str(record.outcome) for record in self.ended)


def replay_events(
    items: Iterable[JournalLine], settings: MachineSettings | None = None
) -> ReplayResult:
    """Feed events to a new machine; the first header's settings win over `settings`."""
    result = ReplayResult()
    feed: JournalFeed | None = None
    for item in items:
        if feed is None:
            feed = JournalFeed(CallBook(item.settings if isinstance(item, Header) else settings))
        result.effects += feed.take(item)
    book = None if feed is None else feed.book
    if feed is not None:
        result.events = feed.events
    if book is not None:
        # Let every settle window close, as the live clock would have.
        horizon = book.now + book.settings.settle_seconds + 1e-6
        result.effects += book.step(Tick(horizon))
        result.open_calls = book.live_calls()
    result.ended = [effect.call for effect in result.effects if isinstance(effect, CallEnded)]
    return result


class JournalFeed:
    """Feeds a journal's lines to a book as the live machine lived them.

    Events are stepped. A header of a later run than the one before is a restart
    (`MonitorRestarted`); the same run's header at the top of a rotated file is not. A
    call a file carries (`open_call`, `ended_call`) is adopted when the book does not
    know it: the files that had its events are gone. `counted` lines give nothing here.
    """

    def __init__(self, book: CallBook, owns: Callable[[str], bool] = lambda room: True) -> None:
        """`owns`: the rooms whose lines are fed (a shard's own; another shard's after
        the rooms were shared anew are that shard's to count)."""
        self.book = book
        self._owns = owns
        self.events = 0
        self.restarted_at: float | None = None  # the last restart fed
        self._run: tuple[str, float] | None = None

    def take(self, item: JournalLine) -> list[Effect]:
        room = _room_of(item)
        if isinstance(item, Counted) or (room and not self._owns(room)):
            return []
        if isinstance(item, CarriedCall | CarriedEnd):
            # The book's clock first moves to when the file began: a restart after it
            # then says the monitor was away from a time the journal knows.
            effects = self.book.step(Tick(item.at))
            if isinstance(item, CarriedCall):
                self.book.adopt(item.call)
            else:
                self.book.adopt_tombstone(item.key, item.stone)
            return effects
        if isinstance(item, Header):
            run = (item.instance, item.started_at)
            restarted = self._run is not None and run != self._run
            self._run = run
            if not restarted:
                return []
            self.restarted_at = item.started_at
            return self.book.step(MonitorRestarted(item.started_at))
        self.events += 1
        return self.book.step(item)


def _room_of(item: JournalLine) -> str:
    """The room a line is about ("" for a header, a tick, a restart)."""
    if isinstance(item, CarriedCall):
        return item.call.record.room
    if isinstance(item, CarriedEnd):
        return item.stone.room
    room = getattr(item, "room", "")
    return room if isinstance(room, str) else ""


def replay(paths: Iterable[Path], settings: MachineSettings | None = None) -> ReplayResult:
    bad: list[BadLine] = []
    result = replay_events(read_journal(paths, bad), settings)
    result.bad_lines = bad
    return result


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")[:-3]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _describe(effect: Effect, masker: NumberMasker) -> str:
    if isinstance(effect, CallStarted):
        call = effect.call
        return (
            f"{_clock(effect.at)}  {call.key}  started {call.direction} {call.state}"
            f"  trunk={call.trunk_id or '-'} to={masker.number(call.phone_number) or '-'}"
            f"  room={masker.text(call.room)}"
        )
    if isinstance(effect, StateChanged):
        return (
            f"{_clock(effect.at)}  {effect.call.key}  {effect.previous} -> {effect.call.state}"
            f"  ({effect.source})"
        )
    if isinstance(effect, CallEnded):
        call = effect.call
        timings = call.timings
        line = (
            f"{_clock(effect.at)}  {call.key}  outcome={call.outcome}"
            f"  reason={call.reason or '-'}  ended_by={call.ended_by}"
            f"  statuses={','.join(call.statuses) or '-'}"
            f"  answer={_seconds(timings.time_to_answer)}"
            f"  talk={_seconds(timings.talk_duration)}"
            f"  total={_seconds(timings.total_duration)}"
        )
        if call.sip_status_code is not None:
            line += f"  sip={call.sip_status_code}"
        if call.ambiguity:
            line += f"  ambiguous: {call.ambiguity}"
        return line
    detail = masker.text(effect.detail)  # it quotes what a source sent
    return f"{_clock(effect.at)}  {effect.call_key or '-'}  anomaly {effect.kind}: {detail}"


def print_replay(
    result: ReplayResult, out: TextIO, masker: NumberMasker, as_json: bool = False
) -> None:
    """Each call's transitions and outcome, then a summary of outcomes."""
    if as_json:
        for record in result.ended:
            print(json.dumps(call_summary(record, masker)), file=out)
        return
    for effect in result.effects:
        print(_describe(effect, masker), file=out)
    print(file=out)
    print(f"{result.events} events, {len(result.ended)} calls ended", file=out)
    for outcome, count in sorted(result.outcome_counts().items()):
        print(f"  {outcome:<14} {count}", file=out)
    for record in result.open_calls:
        print(f"  still open: {record.key} ({record.state})", file=out)
    for bad in result.bad_lines:
        print(f"  skipped {bad.path}:{bad.number}: {masker.text(bad.error)}", file=out)
