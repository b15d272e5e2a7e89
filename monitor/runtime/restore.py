"""Crash-only restart: the calls open in the journal come back before the first listing.

The monitor journals each event before its machine sees it, and a `counted` line each
time the sinks are given a call's start or end. Started again on the same journal, it
feeds the journal to its fresh machine, as replay does, so the calls still open come
back with their evidence and timings; then the starts and ends those events imply and
no `counted` line says were given (the events still queued when it died, ends whose
settle window closed while it was down) are given to the sinks, and only those. A
call neither started nor ended twice across the runs, none lost.

The restart itself is an event (`MonitorRestarted`): a call open across it that then
ends with no source having seen it again ended while the monitor was away, and says
so. Transitions and anomalies of the events queued at the crash are not given again.
Only the newest file is read (see `restore_from_file`): the work is bounded by
`journal_max_bytes`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from monitor.core.journal_format import Counted, JournalLine
from monitor.core.machine import CallBook
from monitor.core.model import CallEnded, CallStarted, MonitorRestarted
from monitor.runtime.replay import JournalFeed
from monitor.sinks.journal import BadLine, read_journal

__all__ = ["Restored", "restore", "restore_from_file"]


@dataclass
class Restored:
    events: int = 0
    # Starts and ends the journal's events imply that no sink was given, in order.
    owed: list[CallStarted | CallEnded] = field(default_factory=list)
    # Starts and ends the journal says were counted that the replay did not give
    # (their events are gone, or the replay's clock has not reached the end the live
    # one had): the next such effect must not reach the sinks again.
    counted_unseen: set[tuple[str, str]] = field(default_factory=set)
    bad_lines: list[BadLine] = field(default_factory=list)
    files: int = 0
    seconds: float = 0.0


def restore(
    book: CallBook,
    items: Iterable[JournalLine],
    restarted_at: float,
    owns: Callable[[str], bool] = lambda room: True,
) -> Restored:
    """Feed a journal's lines to `book` and say what the sinks are owed.

    A `counted` line may come before the effect it counts: the live machine ended a
    call on its clock, the replay ends it at the next event. So a mark waits for its
    effect, and an effect for its mark, whichever comes first.
    """
    result = Restored()
    owed: dict[tuple[str, str], CallStarted | CallEnded] = {}
    marks: set[tuple[str, str]] = set()
    feed = JournalFeed(book, owns)
    for item in items:
        if isinstance(item, Counted):
            mark = (item.what, item.key)
            if owed.pop(mark, None) is None:
                marks.add(mark)
            continue
        for effect in feed.take(item):
            if isinstance(effect, CallStarted | CallEnded):
                mark = ("started" if isinstance(effect, CallStarted) else "ended", effect.call.key)
                if mark in marks:
                    marks.discard(mark)
                else:
                    owed[mark] = effect
    result.events = feed.events
    if (feed.events or book.open_calls()) and feed.restarted_at != restarted_at:
        # This run's header is not in the journal (the last run wrote one and no event).
        for effect in book.step(MonitorRestarted(restarted_at)):
            if isinstance(effect, CallEnded) and ("ended", effect.call.key) not in marks:
                owed[("ended", effect.call.key)] = effect
    result.owed = list(owed.values())
    result.counted_unseen = {
        (what, key)
        for what, key in marks
        if (what == "started" and book.call(key) is None and not book.is_ended(key))
        or (what == "ended" and book.call(key) is not None)
    }
    return result


def restore_from_file(
    book: CallBook, path: Path, restarted_at: float, owns: Callable[[str], bool] = lambda r: True
) -> Restored:
    """`restore` from the journal file being written at `path`; never raises for what
    it holds (bad lines are skipped and listed).

    The older, rotated files are not read: each file a rotation begins carries the
    calls open then and the final ones still remembered, so the newest holds all a
    restart needs, and the restart takes at most one file's worth of replay.
    """
    started = time.monotonic()
    files = [path] if path.is_file() else []
    bad: list[BadLine] = []
    result = restore(book, read_journal(files, bad), restarted_at, owns)
    result.bad_lines = bad
    result.files = len(files)
    result.seconds = time.monotonic() - started
    return result
