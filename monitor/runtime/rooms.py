"""Room watching: the observer is in a room while what happens there matters.

An effect sink that owns the room state. It sees every event before the machine does
(which rooms opened, which closed, when a room last showed a participant) and every
effect after (a call that started, changed or ended wakes its room's watch, or starts
one). While a room needs an observer, a task keeps one joined there: it joins again
when the connection drops, moves it when its process retires (the rtc fallback), and
leaves when the room no longer needs it, after a short grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import structlog
from livekit import api

from monitor.core.machine import CallBook
from monitor.core.model import (
    Anomaly,
    AttributesChanged,
    CallEnded,
    CallState,
    Effect,
    Event,
    ParticipantSeen,
    RoomEnded,
    Source,
)
from monitor.runtime.config import Settings, ws_url
from monitor.sinks.logs import LogRateLimiter
from monitor.sinks.metrics import MonitorMetrics
from monitor.sources.room_link import LinkHooks, Observers, RoomLink

__all__ = ["RoomWatch", "observer_token"]

log = structlog.get_logger("call_monitor")

_SETUP_STATES = frozenset({CallState.DIALING, CallState.RINGING, CallState.AUTOMATION})
_LIVE_STATES = _SETUP_STATES | {CallState.ACTIVE, CallState.HANGUP}


def observer_token(api_key: str, api_secret: str, room: str, identity: str) -> str:
    """The observer's token: the least grants that work.

    Kind agent, so the room still closes on its own timeout with the observer inside;
    hidden, so nobody sees it; no publish, no data, no subscribe: it only listens to
    participant events, which need none of those.
    """
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        hidden=True,
        agent=True,
        can_publish=False,
        can_publish_data=False,
        can_subscribe=False,
        can_update_own_metadata=False,
    )
    return (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_kind("agent")
        .with_grants(grants)
        .to_jwt()
    )


def describe(error: BaseException) -> str:
    """An error for the log: its kind, and its message when it has one (a timeout has
    none)."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass
class RoomSlot:
    """One room's connection and the task that keeps it joined while it matters."""

    task: asyncio.Task[None]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    observer: RoomLink | None = None


class RoomWatch:
    """Which rooms the observer is in, and why."""

    def __init__(
        self,
        settings: Settings,
        book: CallBook,
        observers: Observers,
        metrics: MonitorMetrics,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.book = book
        self.observers = observers
        self.metrics = metrics
        self.clock = clock
        self.rooms: dict[str, RoomSlot] = {}
        self.running = False  # rooms are joined only while the monitor runs
        self._join_slots = asyncio.Semaphore(settings.max_concurrent_joins)
        self._warnings = LogRateLimiter()
        self._observer_serial = 0
        # sid -> when a room connection last showed that participant: a listing can be
        # wrong (redis lost its rooms), and the room has the last word before a call
        # is declared gone.
        self.room_seen: dict[str, float] = {}
        # Rooms where a listing missed a call: the room is asked.
        self._suspect_rooms: set[str] = set()
        # room -> sid of a room not to join: one that ended (its room_finished, or with
        # an observer in it), or one an observer's join created after the calls' room
        # closed (livekit-server creates a missing room for anyone who joins). Such a
        # room is joined again only once a webhook or a listing shows a room of that
        # name with another sid.
        self._rooms_closed: dict[str, str] = {}

    # ---- what the pipeline shows it -----------------------------------------------------

    def notice(self, event: Event) -> None:
        """An event, before the machine sees it."""
        if event.source is Source.ROOM and isinstance(event, ParticipantSeen | AttributesChanged):
            self.room_seen[event.participant.sid] = self.clock()
        elif isinstance(event, ParticipantSeen):
            self.opened(event.room, event.room_sid)
        elif isinstance(event, RoomEnded) and event.room_sid:
            self._rooms_closed[event.room] = event.room_sid  # a late join webhook may follow

    def handle(self, effect: Effect) -> None:
        """An effect of the machine: its room's watch wakes, or starts."""
        if isinstance(effect, CallEnded):
            self.room_seen.pop(effect.call.participant_sid, None)
        if isinstance(effect, Anomaly) or not self.running:
            return
        room = effect.call.room
        slot = self.rooms.get(room)
        if slot is not None:
            slot.wake.set()
        elif self.needs_observer(room):
            self._start_watching(room)

    # ---- what reconciliation tells it ---------------------------------------------------

    def opened(self, room: str, room_sid: str) -> None:
        """A webhook or a listing showed `room`: joining it is safe unless it is the
        room that closed (a listing read just before it closed)."""
        closed_sid = self._rooms_closed.get(room)
        if closed_sid is not None and room_sid and room_sid != closed_sid:
            del self._rooms_closed[room]

    def listed(self, rooms: Mapping[str, str]) -> None:
        """A listing showed these rooms (name -> sid)."""
        for name, sid in rooms.items():
            self.opened(name, sid)
        # A closed room whose calls have all ended needs no marker any more.
        for room in list(self._rooms_closed):
            if room not in rooms and not self.book.calls_in_room(room):
                del self._rooms_closed[room]

    def suspect(self, rooms: set[str]) -> None:
        """Ask these rooms who is in them; the rooms suspected before may be left."""
        cleared = self._suspect_rooms
        self._suspect_rooms = set(rooms)
        for room in sorted(rooms):
            slot = self.rooms.get(room)
            if slot is not None and slot.observer is not None and not slot.observer.lost.is_set():
                slot.observer.reseed()
            elif slot is None and self.running:
                self._start_watching(room)
        for room in cleared - self._suspect_rooms:
            slot = self.rooms.get(room)
            if slot is not None:
                slot.wake.set()  # it may leave now

    def forget_sightings(self, live_sids: Iterable[str]) -> None:
        """Only live calls' sightings matter; a late room event can add an ended one's."""
        live = set(live_sids)
        self.room_seen = {sid: at for sid, at in self.room_seen.items() if sid in live}

    # ---- policy ---------------------------------------------------------------------

    def needs_observer(self, room: str) -> bool:
        """Whether the observer should be in `room` now.

        Always while a call there is being set up (dialing, ringing, automation): that
        is when the room shows what webhooks cannot. For the whole call only in
        whole-call mode; in setup mode the end then comes from the `participant_left`
        webhook and reconciliation.
        """
        if room in self._rooms_closed:
            return False  # joining would open it again
        if room in self._suspect_rooms:
            return True  # a listing missed a call there: the room is asked
        wanted = _LIVE_STATES if self.settings.stays_whole_call else _SETUP_STATES
        return any(call.state in wanted for call in self.book.calls_in_room(room))

    # ---- lifetime -------------------------------------------------------------------

    def start(self) -> None:
        """Start watching: the rooms of calls already known (restored from the journal)
        that need an observer are joined now."""
        self.running = True
        for room in sorted(self.book.rooms()):
            if room not in self.rooms and self.needs_observer(room):
                self._start_watching(room)

    async def stop(self) -> None:
        """Leave every room and close the observers."""
        self.running = False
        slots = list(self.rooms.values())
        for slot in slots:
            slot.task.cancel()
        await asyncio.gather(*(slot.task for slot in slots), return_exceptions=True)
        await self.observers.close()

    # ---- one room's watch -----------------------------------------------------------

    def _count_rooms_watched(self) -> None:
        self.metrics.rooms_watched(sum(1 for slot in self.rooms.values() if slot.observer))

    def _start_watching(self, room: str) -> None:
        slot = RoomSlot(asyncio.get_running_loop().create_task(self._watch(room)))
        slot.task.set_name(f"watch-room-{room}")
        self.rooms[room] = slot
        slot.task.add_done_callback(lambda _: self._slot_done(room, slot))

    def _slot_done(self, room: str, slot: RoomSlot) -> None:
        if self.rooms.get(room) is slot:
            del self.rooms[room]
        self._count_rooms_watched()
        # A call may have started in the room while the task was on its way out.
        if self.running and self.needs_observer(room) and room not in self.rooms:
            self._start_watching(room)

    async def _watch(self, room: str) -> None:
        slot = self.rooms[room]
        attempt = 0
        try:
            while self.needs_observer(room):
                held = slot.observer
                if held is not None and not held.lost.is_set() and not held.moving:
                    if await self._stay(room, slot, held):
                        return
                    continue
                # First join, a lost connection, or a move to a fresh observer process:
                # the new connection is made before the old one is closed.
                joined = await self._join(room)
                if joined is not None:
                    attempt = 0
                    if held is not None and held.lost.is_set():
                        self.metrics.room_reconnect()
                    slot.observer = joined
                    if held is not None:
                        await held.close()
                    self._count_rooms_watched()
                    continue
                if held is not None and held.lost.is_set():
                    slot.observer = None
                    await held.close()
                    self._count_rooms_watched()
                attempt += 1
                await _sleep_or_wake(slot, min(0.25 * 2**attempt, 10.0))
        finally:
            held, slot.observer = slot.observer, None
            if held is not None:
                await held.close()
                self._count_rooms_watched()
                log.debug("room_left", room=room)

    async def _join(self, room: str) -> RoomLink | None:
        self._observer_serial += 1
        identity = f"call-monitor-{self.settings.instance}-{self._observer_serial}"

        def wake(name: str) -> None:
            slot = self.rooms.get(name)
            if slot is not None:
                slot.wake.set()

        def lost(name: str, closed_sid: str | None, why: str) -> None:
            log.info("room_connection_lost", room=name, room_closed=closed_sid is not None, why=why)
            self.metrics.room_connection_lost(why)
            if closed_sid is not None:
                self._rooms_closed[name] = closed_sid
            wake(name)

        hooks = LinkHooks(
            lost=lost,
            reconnecting=lambda name: log.info("room_reconnecting", room=name),
            reconnected=lambda name: self.metrics.room_reconnect(),
            moving=wake,
            renewed=lambda name, ok: self.metrics.room_renewal(ok),
        )
        async with self._join_slots:
            if not self.needs_observer(room):
                return None
            try:
                link = await self.observers.join(
                    room,
                    ws_url(self.settings.livekit_url),
                    observer_token(
                        self.settings.livekit_api_key,
                        self.settings.livekit_api_secret,
                        room,
                        identity,
                    ),
                    self.settings.join_timeout_seconds,
                    hooks,
                )
            except Exception as error:
                self.metrics.room_connect(False)
                # One line per kind of failure at a time: with livekit-server down,
                # every room being set up fails to join, again and again.
                self._warnings.warning(
                    log, "room_join_failed", type(error).__name__, room=room, error=describe(error)
                )
                return None
        self.metrics.room_connect(True)
        known = {call.room_sid for call in self.book.calls_in_room(room) if call.room_sid}
        if known and link.room_sid and link.room_sid not in known:
            # The room its calls were in has closed, and livekit-server created a new
            # one for this join: leave it at once, and never join it again.
            self._rooms_closed[room] = link.room_sid
            log.info("room_reopened_left", room=room, room_sid=link.room_sid)
            await link.close()
            return None
        log.debug("room_joined", room=room)
        return link

    async def _stay(self, room: str, slot: RoomSlot, held: RoomLink) -> bool:
        """Wait while the room needs the observer; True once it may leave, False when the
        connection was lost or must move."""

        def interrupted() -> bool:
            return held.lost.is_set() or held.moving

        while not interrupted():
            if self.needs_observer(room):
                slot.wake.clear()
                await slot.wake.wait()
                continue
            # Stay a short grace: a second call may start, or a late change arrive.
            leave_at = time.monotonic() + self.settings.answer_grace_seconds
            while not interrupted() and not self.needs_observer(room):
                left = leave_at - time.monotonic()
                if left <= 0:
                    return True
                await _sleep_or_wake(slot, left)
        return False


async def _sleep_or_wake(slot: RoomSlot, seconds: float) -> None:
    slot.wake.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await slot.wake.wait()
