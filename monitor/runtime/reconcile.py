"""Reconciliation: livekit-server's listings against the calls the machine knows.

The decisions are plain functions over plain data, tested without LiveKit: which rooms
to ask, what a room's listing says (snapshots of its SIP participants, known calls it
does not show), and, once a pass has every room's answer, which calls are gone. A
known call missing from two listings in a row is declared gone, unless a room
connection showed it after the first miss: one miss may be a listing racing a join,
and a listing can be wrong (redis lost its rooms), so the room has the last word.

`Reconciler` is the thin part that asks livekit-server (ListRooms, then
ListParticipants for the rooms worth asking, a few at a time, each bounded by the API
timeout) and hands what it found to the runtime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from livekit import api

from monitor.core.model import (
    CallRecord,
    CallState,
    Event,
    ParticipantSeen,
    ParticipantVanished,
    Source,
)
from monitor.sources.listings import RoomListings, listing_events

__all__ = [
    "Reconciler",
    "RoomFindings",
    "Verdict",
    "awaits_join_webhook",
    "owned_rooms",
    "room_findings",
    "verdict",
    "worth_listing",
]

_Answer = TypeVar("_Answer")
# How long a new participant's join webhook has before a listing may introduce the call.
WEBHOOK_HEADSTART_SECONDS = 5.0
_CONCURRENCY = 4


def owned_rooms(rooms: Iterable[api.Room], owns: Callable[[str], bool]) -> dict[str, api.Room]:
    """The listed rooms this replica owns, by name: ListRooms is every replica's, the
    rest of a pass (ListParticipants, what is missing) only its own."""
    return {room.name: room for room in rooms if owns(room.name)}


def worth_listing(room: api.Room, known_rooms: set[str], webhooks: bool, first_pass: bool) -> bool:
    """Whether to ask a listed room who is in it.

    Rooms that calls have left, lingering to their empty timeout, were most of the
    requests (bench/notes.md); ListRooms says they are empty. Its count lags a join by
    up to 5 s (livekit-server updates it on a 5 s timer), but with webhooks on, a call
    that joined meanwhile has its `participant_joined` on the way, and if that is lost
    the count shows the call at the next pass. The first pass asks every room: the
    webhooks sent before the monitor started reached no one. Without webhooks the
    listing is how calls are found: every room is asked.
    """
    if not webhooks or first_pass:
        return True
    return room.num_participants > 0 or room.name in known_rooms


def awaits_join_webhook(event: Event, known: set[str], now: float, webhooks: bool) -> bool:
    """Whether a listing's snapshot of a call not yet known should wait a pass.

    A participant who joined moments ago has its `participant_joined` webhook on the
    way, carrying the status it joined with; a snapshot taken meanwhile shows a later
    one (ringing, even active), and a call started from it would miss its dialing and
    its post-dial delay. Without webhooks the listing is how calls are found.
    """
    if not webhooks or not isinstance(event, ParticipantSeen):
        return False
    joined = event.participant.joined_at
    fresh = joined is not None and now - joined < WEBHOOK_HEADSTART_SECONDS
    return fresh and event.participant.sid not in known


@dataclass(frozen=True, slots=True)
class RoomFindings:
    """What one room's listing says: snapshots to submit, known calls it does not show."""

    snapshots: list[Event]
    missing: set[tuple[str, str]]  # (room, participant sid)


def room_findings(
    at: float,
    room: str,
    room_sid: str,
    listed: Iterable[api.ParticipantInfo],
    known_calls: Iterable[CallRecord],
    webhooks: bool,
) -> RoomFindings:
    """One room's listing against the calls known in that room when it came back."""
    calls = list(known_calls)
    events, sids = listing_events(at, room, room_sid, listed)
    known = {call.participant_sid for call in calls}
    snapshots = [e for e in events if not awaits_join_webhook(e, known, at, webhooks)]
    # An ending call is already on its way out: a listing that no longer shows it says
    # nothing new.
    missing = {
        (room, call.participant_sid)
        for call in calls
        if call.participant_sid not in sids and call.state is not CallState.ENDING
    }
    return RoomFindings(snapshots, missing)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A whole pass's conclusion."""

    vanished: list[ParticipantVanished]
    # "room\0sid" -> when a listing first missed the call, for the next pass
    suspects: dict[str, float]
    # rooms to ask: a listing missed a call there
    suspect_rooms: set[str] = field(default_factory=set)


def verdict(
    now: float,
    missing: set[tuple[str, str]],
    suspects_before: Mapping[str, float],
    room_seen: Mapping[str, float],
) -> Verdict:
    """Calls missed twice, with no room sighting since the first miss, are gone."""
    suspects: dict[str, float] = {}
    vanished: list[ParticipantVanished] = []
    for room, sid in sorted(missing):
        key = f"{room}\0{sid}"
        since = suspects_before.get(key)
        if since is None:
            suspects[key] = now
        elif room_seen.get(sid, float("-inf")) >= since:
            # The room showed it after the listing first missed it: the listing is what
            # is wrong. Keep asking the room; it says when the call ends.
            suspects[key] = now
        else:
            vanished.append(ParticipantVanished(now, Source.RECONCILE, room, sid))
    return Verdict(vanished, suspects, {key.split("\0", 1)[0] for key in suspects})


class KnownCalls(Protocol):
    """What reconciliation reads of the machine."""

    def rooms(self) -> set[str]: ...
    def calls_in_room(self, room: str) -> list[CallRecord]: ...


@dataclass
class Pass:
    """What one pass found, for the runtime to act on."""

    listed: dict[str, api.Room]
    verdict: Verdict


class Reconciler:
    """Asks livekit-server for its rooms and their participants, one pass at a time."""

    def __init__(
        self,
        lkapi: api.LiveKitAPI,
        listings: RoomListings,
        book: KnownCalls,
        *,
        webhooks: bool,
        owns: Callable[[str], bool] = lambda room: True,
        timeout: float,
        clock: Callable[[], float],
        submit: Callable[[Event], object],
        counted: Callable[[], None],
    ) -> None:
        self._lkapi, self._listings, self._book = lkapi, listings, book
        self._webhooks, self._timeout, self._clock = webhooks, timeout, clock
        self._owns = owns
        self._submit, self._counted = submit, counted
        self._suspects: dict[str, float] = {}
        self._first_pass = True

    async def once(self, room_seen: Mapping[str, float]) -> Pass:
        """One pass: every snapshot is submitted as its room answers; the verdict on the
        calls missed comes when every room has answered. Raises what a request raised."""
        self._counted()
        listing = await self._api(self._lkapi.room.list_rooms(api.ListRoomsRequest()))
        now = self._clock()
        listed = owned_rooms(listing.rooms, self._owns)
        known_rooms = self._book.rooms()
        gate = asyncio.Semaphore(_CONCURRENCY)
        missing: set[tuple[str, str]] = set()

        async def ask(room: api.Room) -> None:
            async with gate:
                self._counted()
                answer = await self._api(self._listings.participants(room.name))
            found = room_findings(
                self._clock(),
                room.name,
                room.sid,
                answer.participants,
                self._book.calls_in_room(room.name),
                self._webhooks,
            )
            for event in found.snapshots:
                self._submit(event)
            missing.update(found.missing)

        # A TaskGroup: one listing that fails cancels the others, so that no request of
        # a failed pass is left running on a livekit-server already struggling.
        try:
            async with asyncio.TaskGroup() as requests:
                for room in listed.values():
                    if worth_listing(room, known_rooms, self._webhooks, self._first_pass):
                        requests.create_task(ask(room))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        self._listings.keep_only(listed)
        self._first_pass = False
        # Calls of rooms no longer listed are missed too.
        for name in known_rooms - set(listed):
            missing.update(
                (name, call.participant_sid)
                for call in self._book.calls_in_room(name)
                if call.state is not CallState.ENDING
            )
        found = verdict(now, missing, self._suspects, room_seen)
        self._suspects = found.suspects
        return Pass(listed, found)

    async def _api(self, request: Awaitable[_Answer]) -> _Answer:
        """One LiveKit API request, bounded: livekit-api sets no timeout of its own (it
        hands aiohttp `timeout=None`, which means none), so a livekit-server that
        accepts connections and never answers would hold reconciliation forever."""
        async with asyncio.timeout(self._timeout):
            return await request
