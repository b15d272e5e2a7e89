"""The simulator's ledger, tailed while the bench runs: when each call's status changed,
when it was answered, when it left, when it ended. This is the truth the monitor's and
the poller's views are timed against.

`stack.ledger.Ledger` keeps every event of the run; a bench run writes hundreds of
thousands of lines, so this reader keeps one compact record per call instead and
wakes whoever waits for a call's answer or end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stack.ledger import LineTail

__all__ = ["CallTruth", "LedgerTail"]


@dataclass
class CallTruth:
    """What the SIP side did to one call, with the simulator's timestamps (Unix s)."""

    call_id: str
    room: str = ""
    scenario: str = ""
    started: float | None = None  # call_started line
    joined: float | None = None  # the participant joined the room
    statuses: dict[str, float] = field(default_factory=dict)  # first time set, by value
    answered: float | None = None
    left: float | None = None
    left_reason: str = ""
    ended: float | None = None  # call_ended line
    answered_event: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    ended_event: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def change_times(self) -> dict[str, float]:
        """Each change a watcher can see, by the monitor's state it maps to:
        `started` (the join), `to:ringing`, `to:active`, `to:hangup` (statuses set),
        `to:ending` and `ended_total` (the leave)."""
        times: dict[str, float] = {}
        if self.joined is not None:
            times["started"] = self.joined
        for status in ("ringing", "automation", "active", "hangup"):
            if status in self.statuses:
                times["to:" + status] = self.statuses[status]
        if self.left is not None:
            times["to:ending"] = self.left
            times["to:ended"] = self.left
            times["ended_total"] = self.left
        return times


class LedgerTail:
    """Reads the ledger file as it grows; one `CallTruth` per call id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls: dict[str, CallTruth] = {}
        self.lines = 0
        self.bad_lines = 0
        self._tail = LineTail(path)

    def call(self, call_id: str) -> CallTruth:
        found = self.calls.get(call_id)
        if found is None:
            found = self.calls[call_id] = CallTruth(call_id)
        return found

    def refresh(self) -> int:
        """Read what was appended; return the number of new lines."""
        complete, restarted = self._tail.read()
        if restarted:  # a new ledger: the calls read are not in it
            self.calls.clear()
        for line in complete:
            self._apply(line)
        self.lines += len(complete)
        return len(complete)

    def _apply(self, line: bytes) -> None:
        try:
            doc: dict[str, Any] = json.loads(line)
            ts = float(doc["ts"])
            call = self.call(str(doc["call_id"]))
            event = str(doc["event"])
        except (ValueError, KeyError, TypeError):
            self.bad_lines += 1
            return
        if event == "call_started":
            call.started = ts
            call.room = str(doc.get("room") or "")
            call.scenario = str(doc.get("scenario") or "")
        elif event == "joined":
            call.joined = ts
        elif event == "status":
            call.statuses.setdefault(str(doc.get("value")), ts)
        elif event == "answered":
            call.answered = ts
            call.answered_event.set()
        elif event == "left":
            call.left = ts
            call.left_reason = str(doc.get("reason") or "")
        elif event == "call_ended":
            call.ended = ts
            call.ended_event.set()
            call.answered_event.set()  # nobody waits for an answer that cannot come

    async def follow(self, every: float = 0.05) -> None:
        """Refresh every `every` seconds until cancelled."""
        while True:
            with contextlib.suppress(OSError):
                self.refresh()
            await asyncio.sleep(every)

    def live(self) -> int:
        """Calls started and not ended, as far as read."""
        return sum(1 for call in self.calls.values() if call.started and call.ended is None)
