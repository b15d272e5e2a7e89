"""The event pipeline: sources in, one machine, effects out.

Every source hands typed events to `submit`, which journals each one and queues it; one
consumer steps the machine with them in that order and hands the effects to the sinks,
so the order the machine sees is the order the journal keeps, and replay matches. A
call's start or end is journaled as `counted` before the sinks get it, and a pipeline
started on an existing journal restores the machine from it first
(`monitor.runtime.restore`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import structlog

from monitor.core.journal_format import Counted, Header, encode_ended_call, encode_open_call
from monitor.core.machine import CallBook
from monitor.core.model import CallEnded, CallStarted, Effect, Event, Tick
from monitor.runtime.config import Settings
from monitor.runtime.restore import restore_from_file
from monitor.sinks.journal import JournalWriter
from monitor.sinks.journal_sync import JournalSync
from monitor.sinks.metrics import MonitorMetrics

__all__ = ["EffectSink", "EventWatcher", "Pipeline"]

log = structlog.get_logger("call_monitor")

# How long ago a call may have ended to be carried into a new journal file: late events
# come within seconds or minutes (webhook retries), and at 10,000 calls an hour's worth
# would fill a file of the default size.
_CARRIED_ENDS_SECONDS = 900.0
# A journal with many bad lines is named by its count; only the first few are logged.
_BAD_LINES_LOGGED = 5
_TICK_SECONDS = 0.2


class EffectSink(Protocol):
    def handle(self, effect: Effect) -> None: ...


class EventWatcher(Protocol):
    """A sink that also sees each event before the machine does (room watching)."""

    def notice(self, event: Event) -> None: ...
    def handle(self, effect: Effect) -> None: ...


class Pipeline:
    """The journal, the queue, the machine and the sinks, in that order."""

    def __init__(
        self,
        settings: Settings,
        book: CallBook,
        metrics: MonitorMetrics,
        sinks: Iterable[EffectSink],
        clock: Callable[[], float],
        header: Header | None = None,
    ) -> None:
        """`header`: this run's journal header, when the start-up check wrote it."""
        self.settings = settings
        self.book = book
        self.metrics = metrics
        self.clock = clock
        self.sinks: list[EffectSink] = [metrics, *sinks]
        self.watchers: list[EventWatcher] = []
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self._journal: JournalWriter | None = None
        self._journal_failing = False
        # What the last run counted and the restore did not give: see Restored.
        self._counted_unseen: set[tuple[str, str]] = set()
        if settings.journal_path is not None:
            header = header or Header(book.settings, settings.instance, clock())
            self._journal = JournalWriter(
                settings.journal_path,
                header,
                settings.journal_max_bytes,
                settings.journal_backups,
                carried=self._carried_calls,
                before_rotation=self._process_queued,
            )
            # A last line cut by a crash is set aside now, and counted.
            metrics.journal_partial_lines(self._journal.open())
        journal = self._journal
        self.journal_sync = JournalSync(
            settings.journal_fsync, lambda: None if journal is None else journal.sync_handle()
        )
        if settings.journal_path is not None and header is not None:
            self._restore(settings.journal_path, header.started_at)

    def _process_queued(self) -> None:
        """Before the journal begins a new file: every event the old one holds reaches
        the machine, so that the calls the new file carries are after all of them (a
        restart reads the new file alone)."""
        while not self.queue.empty():
            self._process_guarded(self.queue.get_nowait())

    def _process_guarded(self, event: Event) -> None:
        try:
            self.process(event)
        except Exception:  # a bug must cost one event, logged, not every later one
            log.exception("event_processing_failed", event_type=type(event).__name__)

    def watch(self, watcher: EventWatcher) -> None:
        """Show `watcher` every event before the machine, and every effect after."""
        self.watchers.append(watcher)
        self.sinks.append(watcher)

    # ---- intake ---------------------------------------------------------------------

    def submit(self, event: Event) -> bool:
        """Journal an event from any source, then queue it; never blocks, never raises.

        Journaled here, not when it is processed: a source may be answered as soon as
        this returns (a killed monitor then loses nothing it acknowledged), and the
        journal keeps the order the machine will see. False when the journal did not
        take it: the event is still processed, but must not be acknowledged as kept.
        """
        journaled = isinstance(event, Tick) or self._write_journal(event)
        self.queue.put_nowait(event)
        return journaled

    def process(self, event: Event) -> list[Effect]:
        """Step the machine with one (journaled) event, and hand the effects to the sinks."""
        for watcher in self.watchers:
            watcher.notice(event)
        effects = self.book.step(event)
        self.give(effects)
        if not isinstance(event, Tick):
            self.metrics.event_processed(
                str(event.source), type(event).__name__, max(0.0, self.clock() - event.at)
            )
        return effects

    def give(self, effects: Iterable[Effect]) -> None:
        """Hand effects to the sinks; a call's start or end is journaled as counted
        first, so that a restart gives the sinks only what they never had."""
        for effect in effects:
            sinks: list[EffectSink] = self.sinks
            if isinstance(effect, CallStarted | CallEnded):
                mark = ("started" if isinstance(effect, CallStarted) else "ended", effect.call.key)
                if mark in self._counted_unseen:
                    # Counted by the last run: only room watching hears of it now.
                    self._counted_unseen.discard(mark)
                    sinks = list(self.watchers)
                else:
                    self._write_journal(Counted(mark[0], mark[1], effect.at))
            for sink in sinks:
                try:
                    sink.handle(effect)
                except Exception:  # a broken sink must not stop the others or the machine
                    log.exception("sink_failed", sink=type(sink).__name__)

    async def consume(self) -> None:
        """Process queued events, one at a time, for ever."""
        while True:
            self._process_guarded(await self.queue.get())

    async def tick(self) -> None:
        """Time passes for the machine: settle windows close, tombstones expire."""
        while True:
            await asyncio.sleep(_TICK_SECONDS)
            self.submit(Tick(self.clock()))

    async def drain(self, consumer: asyncio.Task[None]) -> None:
        """Process what the sources delivered, then stop the consumer and close the
        journal (to disk, unless its fsync policy is off)."""
        while not self.queue.empty():
            self.process(self.queue.get_nowait())
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        if self._journal is not None:
            self._journal.close(sync=self.settings.journal_fsync != "off")

    # ---- the journal ----------------------------------------------------------------

    def _write_journal(self, line: Event | Counted) -> bool:
        if self._journal is None:
            return True
        try:
            if isinstance(line, Counted):
                self._journal.write_counted(line)
            else:
                self._journal.write(line)
        except (OSError, UnicodeError) as error:
            self.metrics.journal_write_error()
            if not self._journal_failing:
                log.error("journal_write_failed", error=str(error), path=str(self._journal.path))
            self._journal_failing = True
            return False
        if self._journal_failing:
            log.info("journal_write_recovered", path=str(self._journal.path))
        self._journal_failing = False
        self.journal_sync.wrote()
        return True

    def _carried_calls(self) -> list[str]:
        """The calls the machine knows now, as the top of each new journal file carries
        them: the final ones it still remembers, then the open ones."""
        # The machine's time (no event yet: the wall clock); never a non-finite number,
        # which no JSON line can hold.
        at = self.book.now if math.isfinite(self.book.now) else self.clock()
        recent = self.book.tombstones(ended_since=at - _CARRIED_ENDS_SECONDS)
        ended = [encode_ended_call(at, key, stone) for key, stone in recent]
        return ended + [encode_open_call(at, call) for call in self.book.open_calls()]

    def _restore(self, path: Path, started_at: float) -> None:
        """Bring back the calls the journal has open, and give the sinks what they are
        owed (monitor.runtime.restore), before any source is heard."""
        restored = restore_from_file(self.book, path, started_at, self.settings.owned.owns)
        self.give(restored.owed)
        self._counted_unseen = restored.counted_unseen
        open_calls = self.book.live_calls()
        self.metrics.calls_restored(len(open_calls))
        if restored.events or restored.bad_lines or open_calls:
            log.info(
                "journal_restored",
                files=restored.files,
                events=restored.events,
                open_calls=len(open_calls),
                starts_owed=sum(isinstance(e, CallStarted) for e in restored.owed),
                ends_owed=sum(isinstance(e, CallEnded) for e in restored.owed),
                bad_lines=len(restored.bad_lines),
                seconds=round(restored.seconds, 3),
            )
        for bad in restored.bad_lines[:_BAD_LINES_LOGGED]:
            log.warning(
                "journal_line_skipped",
                path=bad.path,
                line=bad.number,
                kind=str(bad.kind),
                error=bad.error,
            )
