"""The polling alternative users have today: ListParticipants on every room, every T.

A dialer that does not run the monitor learns a call's progress by asking
livekit-server for the room's participants (livekit-api `RoomService.list_participants`)
and reading `sip.callStatus`. The poller here does that for every room the bench
placed a call in, every `interval` seconds (all rooms at once, at most `concurrency`
requests in flight), from the moment the call was placed until it sees the SIP
participant gone. What it saw, and when the answer arrived, is compared with the
ledger by `analyze`: how late it sees each status and the leave, and what it never
sees (a status shorter than the interval, a call that ended between two polls).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from livekit import api
from livekit.protocol import models

from bench.ledger import CallTruth
from bench.stats import summarize

__all__ = ["PolledCall", "Poller", "analyze"]

STATUSES = ("dialing", "ringing", "active", "hangup")


@dataclass
class PolledCall:
    """One call as the poller saw it (times: when the listing's answer arrived)."""

    call_id: str
    room: str
    added: float  # when the call was placed (or polling began, for calls already up)
    first_seen: dict[str, float] = field(default_factory=dict)  # status -> time
    seen_at: float | None = None
    gone_at: float | None = None
    done: bool = False


class Poller:
    """Polls the rooms given to `add`, every `interval` seconds, until stopped."""

    def __init__(
        self,
        lkapi: api.LiveKitAPI,
        interval: float,
        ended_at: Callable[[str], float | None],
        concurrency: int = 64,
    ) -> None:
        self.lkapi = lkapi
        self.interval = interval
        self.ended_at = ended_at
        self.concurrency = concurrency
        self.calls: dict[str, PolledCall] = {}
        self.requests = 0
        self.errors = 0
        self.rounds = 0
        self.round_seconds: list[float] = []
        self._gate = asyncio.Semaphore(concurrency)

    def add(self, call_id: str, room: str, placed_at: float) -> None:
        """Poll `room` for `call_id` from now on; `placed_at`: when the call was asked
        for (changes before it are not the poller's to see)."""
        if call_id not in self.calls:
            self.calls[call_id] = PolledCall(call_id, room, placed_at)

    async def run(self) -> None:
        next_at = time.monotonic()
        while True:
            started = time.monotonic()
            active = [call for call in self.calls.values() if not call.done]
            await asyncio.gather(*(self._poll(call) for call in active))
            self.rounds += 1
            self.round_seconds.append(time.monotonic() - started)
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:  # the round took longer than the interval
                next_at = now
            await asyncio.sleep(next_at - now)

    async def _poll(self, call: PolledCall) -> None:
        async with self._gate:
            self.requests += 1
            try:
                answer = await self.lkapi.room.list_participants(
                    api.ListParticipantsRequest(room=call.room)
                )
                participants = list(answer.participants)
            except api.TwirpError as error:
                if error.code != "not_found":
                    self.errors += 1
                    return
                participants = []  # the room is gone
            except (TimeoutError, OSError):
                self.errors += 1
                return
        now = time.time()
        sip = [
            p
            for p in participants
            if p.kind == models.ParticipantInfo.Kind.SIP
            and p.attributes.get("sip.callID") == call.call_id
        ]
        if sip:
            status = sip[0].attributes.get("sip.callStatus", "")
            if call.seen_at is None:
                call.seen_at = now
            call.first_seen.setdefault(status, now)
            return
        if call.seen_at is not None:
            call.gone_at = now
            call.done = True
            return
        ended = self.ended_at(call.call_id)
        if ended is not None and now > ended + 2 * self.interval + 1.0:
            call.done = True  # it came and went between two polls

    def load(self, seconds: float) -> dict[str, object]:
        return {
            "interval_s": self.interval,
            "requests": self.requests,
            "requests_per_s": round(self.requests / seconds, 1) if seconds > 0 else None,
            "errors": self.errors,
            "rounds": self.rounds,
            "round_ms": summarize(self.round_seconds, 1000.0),
            "kept_interval": bool(
                self.round_seconds
                and sorted(self.round_seconds)[len(self.round_seconds) // 2] <= self.interval
            ),
        }


def analyze(
    polled: Mapping[str, PolledCall],
    truths: Mapping[str, CallTruth],
    window: tuple[float, float],
    interval: float,
) -> dict[str, object]:
    """How late the poller saw each change the ledger recorded in `window`, and what it
    never saw. A change within one interval plus a second of the window's end is left
    out (the poller had no fair chance to see it yet)."""
    start, end = window
    last = end - interval - 1.0
    latency: dict[str, list[float]] = {status: [] for status in (*STATUSES, "left")}
    missed: dict[str, int] = {status: 0 for status in (*STATUSES, "left")}
    expected: dict[str, int] = {status: 0 for status in (*STATUSES, "left")}
    never_seen = 0
    calls_in_window = 0
    for call_id, seen in polled.items():
        truth = truths.get(call_id)
        if truth is None:
            continue
        whole_call = (
            truth.joined is not None
            and truth.left is not None
            and start <= truth.joined
            and truth.left <= last
            and seen.added <= truth.joined + 0.5
        )
        if whole_call:
            calls_in_window += 1
            if seen.seen_at is None:
                never_seen += 1
        for status in STATUSES:
            at = truth.statuses.get(status)
            if at is None or not start <= at <= last or seen.added > at:
                continue
            expected[status] += 1
            found = seen.first_seen.get(status)
            if found is None:
                missed[status] += 1
            else:
                latency[status].append(found - at)
        if truth.left is not None and start <= truth.left <= last and seen.added <= truth.left:
            expected["left"] += 1
            if seen.gone_at is None:
                missed["left"] += 1  # never seen at all: it left between two polls
            else:
                latency["left"].append(seen.gone_at - truth.left)
    return {
        "latency_ms": {name: summarize(values, 1000.0) for name, values in latency.items()},
        "expected": expected,
        "missed": missed,
        "missed_ratio": {
            name: round(missed[name] / expected[name], 3) if expected[name] else None
            for name in expected
        },
        "whole_calls_in_window": calls_in_window,
        "calls_never_seen": never_seen,
        "leave_reason_visible": False,
    }
