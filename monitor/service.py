"""The live monitor: sources in, one machine, effects out.

One `Monitor` owns the lifetime of everything: the HTTP server (metrics, health,
webhooks, dial hook, /calls), the room observers, the reconciliation with the
RoomService API, the clock and the journal. Every source puts typed events on one queue;
one consumer journals each event, steps the machine and hands the effects to the sinks,
so the order the machine sees is the order the journal keeps, and replay matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import aiohttp
import structlog
from livekit import api
from prometheus_client import CollectorRegistry

from monitor.config import Settings, redacted_url
from monitor.journal import (
    Counted,
    Header,
    JournalWriter,
    encode_ended_call,
    encode_open_call,
)
from monitor.journal_sync import JournalSync
from monitor.logs import LogRateLimiter
from monitor.machine import CallBook, MachineSettings
from monitor.metrics import MonitorMetrics
from monitor.model import (
    Anomaly,
    AttributesChanged,
    CallEnded,
    CallRecord,
    CallStarted,
    CallState,
    Effect,
    Event,
    ParticipantSeen,
    ParticipantVanished,
    RoomEnded,
    Source,
    Tick,
)
from monitor.restore import restore_from_file
from monitor.room_link import LinkHooks, Observers, RoomLink
from monitor.rtc_observers import ObserverPool
from monitor.signal_observer import SignalObservers
from monitor.sources import RoomListings, WebhookIntake, listing_events

__all__ = ["Monitor", "observer_token", "run_until_signalled"]

log = structlog.get_logger("call_monitor")

_Answer = TypeVar("_Answer")

# How long ago a call may have ended to be carried into a new journal file: late events
# come within seconds or minutes (webhook retries), and at 10,000 calls an hour's worth
# would fill a file of the default size.
_CARRIED_ENDS_SECONDS = 900.0
# A journal with many bad lines is named by its count; only the first few are logged.
_BAD_LINES_LOGGED = 5
_SETUP_STATES = frozenset({CallState.DIALING, CallState.RINGING, CallState.AUTOMATION})
_LIVE_STATES = _SETUP_STATES | {CallState.ACTIVE, CallState.HANGUP}
_TICK_SECONDS = 0.2
_RECONCILE_CONCURRENCY = 4
# How long a new participant's join webhook has before a listing may introduce the call.
_WEBHOOK_HEADSTART_SECONDS = 5.0


class EffectSink(Protocol):
    def handle(self, effect: Effect) -> None: ...


def observer_token(settings: Settings, room: str, identity: str) -> str:
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
        api.AccessToken(settings.livekit_api_key, settings.livekit_api_secret)
        .with_identity(identity)
        .with_kind("agent")
        .with_grants(grants)
        .to_jwt()
    )


def _describe(error: BaseException) -> str:
    """An error for the log: its kind, and its message when it has one (a timeout has
    none)."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _with_scheme(url: str, schemes: Mapping[str, str]) -> str:
    """`url` with its scheme swapped as `schemes` says (LIVEKIT_URL may be either)."""
    scheme, sep, rest = url.partition("://")
    return schemes.get(scheme, scheme) + sep + rest


def _ws_url(url: str) -> str:
    return _with_scheme(url, {"http": "ws", "https": "wss"})


def _http_url(url: str) -> str:
    return _with_scheme(url, {"ws": "http", "wss": "https"})


@dataclass
class _RoomSlot:
    """One room's connection and the task that keeps it joined while it matters."""

    task: asyncio.Task[None]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    observer: RoomLink | None = None


class Monitor:
    """The process users deploy next to livekit-server."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        sinks: Iterable[EffectSink] = (),
        clock: Callable[[], float] = time.time,
        observer_move_after: float = 30.0,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.book = CallBook(MachineSettings(settle_seconds=settings.settle_seconds))
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = MonitorMetrics(self.registry, book_view=self.book.live_calls)
        self.sinks: list[EffectSink] = [self.metrics, *sinks]
        self.webhooks = WebhookIntake(settings.livekit_api_key, settings.livekit_api_secret)
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.ready = False
        self.not_ready_reason = "not reconciled with livekit-server yet"
        self.rooms: dict[str, _RoomSlot] = {}
        self._running = False  # rooms are joined only while run() runs
        self._join_slots = asyncio.Semaphore(settings.max_concurrent_joins)
        # "room\0sid" -> when a listing first missed a call; sid -> when a room
        # connection last showed it. A listing can be wrong (redis lost its rooms):
        # the room has the last word before a call is declared gone.
        self._suspects: dict[str, float] = {}
        self._suspect_rooms: set[str] = set()
        self._room_seen: dict[str, float] = {}
        self._listed_every_room = False  # until the first pass has asked every room
        # room -> sid of a room not to join: one that ended (its room_finished, or with
        # an observer in it), or one an observer's join created after the calls' room
        # closed (livekit-server creates a missing room for anyone who joins). Such a
        # room is joined again only once a webhook or a listing shows a room of that
        # name with another sid.
        self._rooms_closed: dict[str, str] = {}
        self._journal: JournalWriter | None = None
        self._counted_unseen: set[str] = set()  # see monitor.restore.Restored
        self._journal_failing = False
        self._warnings = LogRateLimiter()
        self._observer_serial = 0
        self.observers: Observers
        if settings.observer == "rtc":
            self.observers = ObserverPool(
                self.submit,
                settings.observer_recycle_joins,
                move_after=observer_move_after,
                sdk_log_level=logging.DEBUG if settings.log_level == "debug" else logging.WARNING,
            )
        else:
            self.observers = SignalObservers(self.submit, clock)
        if settings.journal_path is not None:
            started_at = clock()
            header = Header(self.book.settings, settings.instance, started_at)
            self._journal = JournalWriter(
                settings.journal_path,
                header,
                settings.journal_max_bytes,
                settings.journal_backups,
                carried=self._carried_calls,
            )
            # A last line cut by a crash is set aside now, and counted.
            self.metrics.journal_partial_lines(self._journal.open())
        journal = self._journal
        self.journal_sync = JournalSync(
            settings.journal_fsync, lambda: None if journal is None else journal.sync_handle()
        )
        if settings.journal_path is not None:
            self._restore(settings.journal_path, header.started_at)

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
        if event.source is Source.ROOM and isinstance(event, ParticipantSeen | AttributesChanged):
            self._room_seen[event.participant.sid] = self.clock()
        elif isinstance(event, ParticipantSeen):
            self._room_opened(event.room, event.room_sid)
        elif isinstance(event, RoomEnded) and event.room_sid:
            self._rooms_closed[event.room] = event.room_sid  # a late join webhook may follow
        effects = self.book.step(event)
        self._give(effects)
        if not isinstance(event, Tick):
            self.metrics.event_processed(
                str(event.source), type(event).__name__, max(0.0, self.clock() - event.at)
            )
        if self._running:
            self._rooms_touched(effects)
        return effects

    def _give(self, effects: Iterable[Effect]) -> None:
        """Hand effects to the sinks; a call's start or end is journaled as counted
        first, so that a restart gives the sinks only what they never had."""
        for effect in effects:
            if isinstance(effect, CallStarted) and effect.call.key in self._counted_unseen:
                self._counted_unseen.discard(effect.call.key)
                continue  # counted by the last run; its journal lines are gone
            if isinstance(effect, CallStarted | CallEnded):
                what = "started" if isinstance(effect, CallStarted) else "ended"
                self._write_journal(Counted(what, effect.call.key, effect.at))
            for sink in self.sinks:
                try:
                    sink.handle(effect)
                except Exception:  # a broken sink must not stop the others or the machine
                    log.exception("sink_failed", sink=type(sink).__name__)
            if isinstance(effect, CallEnded):
                self._room_seen.pop(effect.call.participant_sid, None)

    def _carried_calls(self) -> list[str]:
        """The calls the machine knows now, as the top of each new journal file carries
        them: the final ones it still remembers, then the open ones."""
        at = self.book.now
        recent = self.book.tombstones(ended_since=at - _CARRIED_ENDS_SECONDS)
        ended = [encode_ended_call(at, key, stone) for key, stone in recent]
        return ended + [encode_open_call(at, call) for call in self.book.open_calls()]

    def _restore(self, path: Path, started_at: float) -> None:
        """Bring back the calls the journal has open, and give the sinks what they are
        owed (monitor.restore), before any source is heard."""
        restored = restore_from_file(self.book, path, started_at)
        self._give(restored.owed)
        self._counted_unseen = restored.counted_unseen
        open_calls = self.book.live_calls()
        self.metrics.calls_restored(len(open_calls))
        if restored.events:
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

    async def _consume(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                self.process(event)
            except Exception:  # a bug must cost one event, logged, not every later one
                log.exception("event_processing_failed", event_type=type(event).__name__)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK_SECONDS)
            self.submit(Tick(self.clock()))

    # ---- rooms: join while it matters -------------------------------------------------

    def room_needs_observer(self, room: str) -> bool:
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

    def _room_opened(self, room: str, room_sid: str) -> None:
        """A webhook or a listing showed `room`: joining it is safe unless it is the
        room that closed (a listing read just before it closed)."""
        closed_sid = self._rooms_closed.get(room)
        if closed_sid is not None and room_sid and room_sid != closed_sid:
            del self._rooms_closed[room]

    def _rooms_touched(self, effects: list[Effect]) -> None:
        rooms = {effect.call.room for effect in effects if not isinstance(effect, Anomaly)}
        for room in rooms:
            slot = self.rooms.get(room)
            if slot is not None:
                slot.wake.set()
            elif self.room_needs_observer(room):
                self._start_watching(room)

    def _count_rooms_watched(self) -> None:
        self.metrics.rooms_watched(sum(1 for slot in self.rooms.values() if slot.observer))

    def _start_watching(self, room: str) -> None:
        slot = _RoomSlot(asyncio.get_running_loop().create_task(self._watch(room)))
        slot.task.set_name(f"watch-room-{room}")
        self.rooms[room] = slot
        slot.task.add_done_callback(lambda _: self._slot_done(room, slot))

    def _slot_done(self, room: str, slot: _RoomSlot) -> None:
        if self.rooms.get(room) is slot:
            del self.rooms[room]
        self._count_rooms_watched()
        # A call may have started in the room while the task was on its way out.
        if self._running and self.room_needs_observer(room) and room not in self.rooms:
            self._start_watching(room)

    async def _watch(self, room: str) -> None:
        slot = self.rooms[room]
        attempt = 0
        try:
            while self.room_needs_observer(room):
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
                await self._sleep_or_wake(slot, min(0.25 * 2**attempt, 10.0))
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
            if not self.room_needs_observer(room):
                return None
            try:
                link = await self.observers.join(
                    room,
                    _ws_url(self.settings.livekit_url),
                    observer_token(self.settings, room, identity),
                    self.settings.join_timeout_seconds,
                    hooks,
                )
            except Exception as error:
                self.metrics.room_connect(False)
                # One line per kind of failure at a time: with livekit-server down,
                # every room being set up fails to join, again and again.
                self._warnings.warning(
                    log, "room_join_failed", type(error).__name__, room=room, error=_describe(error)
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

    async def _stay(self, room: str, slot: _RoomSlot, held: RoomLink) -> bool:
        """Wait while the room needs the observer; True once it may leave, False when the
        connection was lost or must move."""

        def interrupted() -> bool:
            return held.lost.is_set() or held.moving

        while not interrupted():
            if self.room_needs_observer(room):
                slot.wake.clear()
                await slot.wake.wait()
                continue
            # Stay a short grace: a second call may start, or a late change arrive.
            leave_at = time.monotonic() + self.settings.answer_grace_seconds
            while not interrupted() and not self.room_needs_observer(room):
                left = leave_at - time.monotonic()
                if left <= 0:
                    return True
                await self._sleep_or_wake(slot, left)
        return False

    @staticmethod
    async def _sleep_or_wake(slot: _RoomSlot, seconds: float) -> None:
        slot.wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await slot.wake.wait()

    # ---- reconciliation -------------------------------------------------------------

    async def reconcile_once(self, lkapi: api.LiveKitAPI, listings: RoomListings) -> None:
        """Compare livekit-server's rooms and participants with the calls known.

        Every SIP participant listed is a snapshot event (a call started while the
        monitor was away is picked up in its current state). A known call missing from
        two listings in a row is declared gone: one miss may be a listing racing a join.
        """
        started = time.monotonic()
        self.metrics.reconcile_request()
        listing = await self._api(lkapi.room.list_rooms(api.ListRoomsRequest()))
        now = self.clock()
        listed = {room.name: room for room in listing.rooms}
        known_rooms = self.book.rooms()
        to_list = [room for room in listed.values() if self._worth_listing(room, known_rooms)]
        gate = asyncio.Semaphore(_RECONCILE_CONCURRENCY)
        missing: set[tuple[str, str]] = set()

        async def list_one(name: str, room_sid: str) -> None:
            async with gate:
                self.metrics.reconcile_request()
                answer = await self._api(listings.participants(name))
            now = self.clock()
            events, sids = listing_events(now, name, room_sid, answer.participants)
            known = {call.participant_sid for call in self.book.calls_in_room(name)}
            for event in events:
                if self._awaits_join_webhook(event, known, now):
                    continue
                self.submit(event)
            for call in self.book.calls_in_room(name):
                if call.participant_sid not in sids and call.state is not CallState.ENDING:
                    missing.add((name, call.participant_sid))

        # A TaskGroup: one listing that fails cancels the others, so that no request of
        # a failed pass is left running on a livekit-server already struggling.
        try:
            async with asyncio.TaskGroup() as requests:
                for listed_room in to_list:
                    requests.create_task(list_one(listed_room.name, listed_room.sid))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        listings.keep_only(listed)
        self._listed_every_room = True
        for info in listed.values():
            self._room_opened(info.name, info.sid)
        # A closed room whose calls have all ended needs no marker any more.
        for room in list(self._rooms_closed):
            if room not in listed and not self.book.calls_in_room(room):
                del self._rooms_closed[room]
        for room in known_rooms - set(listed):
            for call in self.book.calls_in_room(room):
                if call.state is not CallState.ENDING:
                    missing.add((room, call.participant_sid))
        suspects: dict[str, float] = {}
        for room, sid in sorted(missing):
            key = f"{room}\0{sid}"
            since = self._suspects.get(key)
            if since is None:
                suspects[key] = now
            elif self._room_seen.get(sid, float("-inf")) >= since:
                # The room showed it after the listing first missed it: the listing
                # is what is wrong. Keep asking the room; it says when the call ends.
                suspects[key] = now
            else:
                self.submit(ParticipantVanished(now, Source.RECONCILE, room, sid))
        cleared = self._suspect_rooms
        self._suspects = suspects
        # A room the listing does not show is asked too: with its room list lost (redis
        # restarted) livekit-server still holds the room. If it really closed, the join
        # opens a new one, which `_join` leaves at once.
        self._suspect_rooms = {key.split("\0", 1)[0] for key in suspects}
        for room in sorted(self._suspect_rooms):
            self._ask_room(room)
        for room in cleared - self._suspect_rooms:
            slot = self.rooms.get(room)
            if slot is not None:
                slot.wake.set()  # it may leave now
        self.metrics.reconcile_run(True, time.monotonic() - started)
        # Only live calls' sightings matter; a late room event can add an ended one's.
        live = {call.participant_sid for call in self.book.live_calls()}
        self._room_seen = {sid: at for sid, at in self._room_seen.items() if sid in live}

    def _worth_listing(self, room: api.Room, known_rooms: set[str]) -> bool:
        """Whether to ask a listed room who is in it.

        Rooms that calls have left, lingering to their empty timeout, were most of the
        requests (bench/notes.md); ListRooms says they are empty. Its count lags a join
        by up to 5 s (livekit-server updates it on a 5 s timer), but with webhooks on, a
        call that joined meanwhile has its `participant_joined` on the way, and if that
        is lost the count shows the call at the next pass. The first pass asks every
        room: the webhooks sent before the monitor started reached no one. Without
        webhooks the listing is how calls are found: every room is asked.
        """
        if not self.settings.webhooks or not self._listed_every_room:
            return True
        return room.num_participants > 0 or room.name in known_rooms

    async def _api(self, request: Awaitable[_Answer]) -> _Answer:
        """One LiveKit API request, bounded: livekit-api sets no timeout of its own (it
        hands aiohttp `timeout=None`, which means none), so a livekit-server that
        accepts connections and never answers would hold reconciliation forever."""
        async with asyncio.timeout(self.settings.api_timeout_seconds):
            return await request

    def _ask_room(self, room: str) -> None:
        """Have the room say who is in it: its connection reseeds, or one is made."""
        slot = self.rooms.get(room)
        if slot is not None and slot.observer is not None and not slot.observer.lost.is_set():
            slot.observer.reseed()
        elif slot is None and self._running:
            self._start_watching(room)

    def _awaits_join_webhook(self, event: Event, known: set[str], now: float) -> bool:
        """Whether a listing's snapshot of a call not yet known should wait a pass.

        A participant who joined moments ago has its `participant_joined` webhook on the
        way, carrying the status it joined with; a snapshot taken meanwhile shows a later
        one (ringing, even active), and a call started from it would miss its dialing
        and its post-dial delay. Without webhooks the listing is how calls are found.
        """
        if not self.settings.webhooks or not isinstance(event, ParticipantSeen):
            return False
        joined = event.participant.joined_at
        fresh = joined is not None and now - joined < _WEBHOOK_HEADSTART_SECONDS
        return fresh and event.participant.sid not in known

    async def _reconcile(self, lkapi: api.LiveKitAPI, listings: RoomListings) -> None:
        failures = 0
        while True:
            try:
                await self.reconcile_once(lkapi, listings)
            except Exception as error:
                failures += 1
                self.metrics.reconcile_run(False, 0.0)
                self._set_ready(False, f"livekit-server API failed: {type(error).__name__}")
                self._warnings.warning(
                    log, "reconcile_failed", type(error).__name__, error=_describe(error)
                )
                # Back off while it keeps failing, never a hot loop.
                await asyncio.sleep(min(self.settings.reconcile_seconds, 2.0 * 2**failures))
                continue
            failures = 0
            self._set_ready(True, "")
            await asyncio.sleep(self.settings.reconcile_seconds)

    def _set_ready(self, ready: bool, reason: str) -> None:
        if ready != self.ready:
            log.info("readiness_changed", ready=ready, reason=reason)
        self.ready = ready
        self.not_ready_reason = reason
        self.metrics.ready(ready)

    # ---- lifetime -------------------------------------------------------------------

    def live_calls(self) -> list[CallRecord]:
        return self.book.live_calls()

    async def run(self, stop: asyncio.Event, started: asyncio.Event | None = None) -> None:
        """Run until `stop` is set; then stop intake, drain, close everything."""
        from monitor.http import serve

        http_url = _http_url(self.settings.livekit_url)
        async with contextlib.AsyncExitStack() as stack:
            lkapi = api.LiveKitAPI(
                http_url, self.settings.livekit_api_key, self.settings.livekit_api_secret
            )
            stack.push_async_callback(lkapi.aclose)
            listing_session = aiohttp.ClientSession()
            stack.push_async_callback(listing_session.close)
            listings = RoomListings(
                http_url,
                self.settings.livekit_api_key,
                self.settings.livekit_api_secret,
                listing_session,
            )
            consumer = asyncio.create_task(self._consume(), name="consume-events")
            # Registered before the HTTP server, so it runs after the server has stopped:
            # nothing is accepted once the queue is drained and the journal closed.
            stack.push_async_callback(self._drain, consumer)
            self.http_port, self.metrics_port = await stack.enter_async_context(serve(self))
            stack.push_async_callback(self.observers.close)
            await self.observers.start()
            tasks = [
                asyncio.create_task(self._tick(), name="clock"),
                asyncio.create_task(self._reconcile(lkapi, listings), name="reconcile"),
                asyncio.create_task(self.journal_sync.run(), name="journal-fsync"),
            ]
            log.info(
                "monitor_started",
                http=f"{self.settings.http_host}:{self.http_port}",
                metrics=f"{self.settings.metrics_host}:{self.metrics_port}"
                if self.settings.metrics_port is not None
                else "on the http port",
                livekit=redacted_url(http_url),
                room_mode="whole_call" if self.settings.stays_whole_call else "setup",
                webhooks=self.settings.webhooks,
            )
            self._running = True
            for room in sorted(self.book.rooms()):  # restored calls being set up
                if room not in self.rooms and self.room_needs_observer(room):
                    self._start_watching(room)
            if started is not None:
                started.set()
            try:
                await stop.wait()
            finally:
                self._running = False
                await self._stop_sources(tasks)

    async def _stop_sources(self, tasks: list[asyncio.Task[None]]) -> None:
        """Stop the clock, reconciliation and the room connections."""
        slots = list(self.rooms.values())
        for task in [*tasks, *(slot.task for slot in slots)]:
            task.cancel()
        await asyncio.gather(*tasks, *(slot.task for slot in slots), return_exceptions=True)
        await self.observers.close()

    async def _drain(self, consumer: asyncio.Task[None]) -> None:
        """Process what the sources delivered, then stop the consumer and close the
        journal (to disk, unless its fsync policy is off)."""
        while not self.queue.empty():
            self.process(self.queue.get_nowait())
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        if self._journal is not None:
            self._journal.close(sync=self.settings.journal_fsync != "off")
        log.info("monitor_stopped", calls_open=len(self.book.live_calls()))


async def run_until_signalled(monitor: Monitor) -> None:
    """Run the monitor until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await monitor.run(stop)
