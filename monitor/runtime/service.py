"""The live monitor: the lifetime of everything, and the wiring.

One `Monitor` builds the machine, the pipeline that feeds it (`monitor.runtime.pipeline`),
room watching (`monitor.runtime.rooms`), reconciliation (`monitor.runtime.reconcile`) and
the HTTP server (`monitor.runtime.http`), starts them in order, says whether it is ready,
and stops them in the reverse order: intake first, then the queue drained and the journal
closed, so that nothing accepted is left unprocessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterable

import aiohttp
import structlog
from livekit import api
from prometheus_client import CollectorRegistry

from monitor.core.journal_format import Header
from monitor.core.machine import CallBook, MachineSettings
from monitor.core.model import CallRecord, Effect, Event
from monitor.runtime.config import Settings, http_url, redacted_url
from monitor.runtime.pipeline import EffectSink, Pipeline
from monitor.runtime.reconcile import Reconciler
from monitor.runtime.rooms import RoomSlot, RoomWatch, describe
from monitor.sinks.journal_sync import JournalSync
from monitor.sinks.logs import LogRateLimiter
from monitor.sinks.metrics import MonitorMetrics
from monitor.sources.listings import RoomListings
from monitor.sources.room_link import Observers
from monitor.sources.rtc_observers import ObserverPool
from monitor.sources.signal_observer import SignalObservers
from monitor.sources.webhooks import WebhookIntake

__all__ = ["EffectSink", "Monitor", "run_until_signalled"]

log = structlog.get_logger("call_monitor")


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
        journal_header: Header | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.book = CallBook(MachineSettings(settle_seconds=settings.settle_seconds))
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = MonitorMetrics(
            self.registry, book_view=self.book.live_calls, shard=settings.owned
        )
        self.webhooks = WebhookIntake(
            settings.livekit_api_key, settings.livekit_api_secret, owns=settings.owned.owns
        )
        self.ready = False
        self.not_ready_reason = "not reconciled with livekit-server yet"
        self._warnings = LogRateLimiter()
        # The journal is read back (a restart) before any source can be heard.
        self.pipeline = Pipeline(
            settings, self.book, self.metrics, sinks, clock, header=journal_header
        )
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
        self.room_watch = RoomWatch(settings, self.book, self.observers, self.metrics, clock)
        self.pipeline.watch(self.room_watch)

    # ---- what the sources and HTTP use --------------------------------------------------

    @property
    def queue(self) -> asyncio.Queue[Event]:
        return self.pipeline.queue

    @property
    def journal_sync(self) -> JournalSync:
        return self.pipeline.journal_sync

    @property
    def rooms(self) -> dict[str, RoomSlot]:
        return self.room_watch.rooms

    def submit(self, event: Event) -> bool:
        """Journal an event from any source and queue it (`Pipeline.submit`)."""
        return self.pipeline.submit(event)

    def process(self, event: Event) -> list[Effect]:
        """Step the machine with one event now (`Pipeline.process`)."""
        return self.pipeline.process(event)

    def room_needs_observer(self, room: str) -> bool:
        return self.room_watch.needs_observer(room)

    def live_calls(self) -> list[CallRecord]:
        return self.book.live_calls()

    # ---- reconciliation and readiness ---------------------------------------------------

    async def reconcile_once(self, reconciler: Reconciler) -> None:
        """One pass of reconciliation, and what the runtime makes of it."""
        started = time.monotonic()
        found = await reconciler.once(self.room_watch.room_seen)
        self.room_watch.listed({name: room.sid for name, room in found.listed.items()})
        for event in found.verdict.vanished:
            self.submit(event)
        self.room_watch.suspect(found.verdict.suspect_rooms)
        self.metrics.reconcile_run(True, time.monotonic() - started)
        self.room_watch.forget_sightings(call.participant_sid for call in self.book.live_calls())

    def reconciler(self, lkapi: api.LiveKitAPI, listings: RoomListings) -> Reconciler:
        return Reconciler(
            lkapi,
            listings,
            self.book,
            webhooks=self.settings.webhooks,
            owns=self.settings.owned.owns,
            timeout=self.settings.api_timeout_seconds,
            clock=self.clock,
            submit=self.submit,
            counted=self.metrics.reconcile_request,
        )

    async def _reconcile(self, reconciler: Reconciler) -> None:
        failures = 0
        while True:
            try:
                await self.reconcile_once(reconciler)
            except Exception as error:
                failures += 1
                self.metrics.reconcile_run(False, 0.0)
                self._set_ready(False, f"livekit-server API failed: {type(error).__name__}")
                self._warnings.warning(
                    log, "reconcile_failed", type(error).__name__, error=describe(error)
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

    async def run(self, stop: asyncio.Event, started: asyncio.Event | None = None) -> None:
        """Run until `stop` is set; then stop intake, drain, close everything."""
        from monitor.runtime.http import serve

        api_url = http_url(self.settings.livekit_url)
        async with contextlib.AsyncExitStack() as stack:
            lkapi = api.LiveKitAPI(
                api_url, self.settings.livekit_api_key, self.settings.livekit_api_secret
            )
            stack.push_async_callback(lkapi.aclose)
            listing_session = aiohttp.ClientSession()
            stack.push_async_callback(listing_session.close)
            listings = RoomListings(
                api_url,
                self.settings.livekit_api_key,
                self.settings.livekit_api_secret,
                listing_session,
            )
            consumer = asyncio.create_task(self.pipeline.consume(), name="consume-events")
            # Registered before the HTTP server, so it runs after the server has stopped:
            # nothing is accepted once the queue is drained and the journal closed.
            stack.push_async_callback(self._drain, consumer)
            self.http_port, self.metrics_port = await stack.enter_async_context(serve(self))
            stack.push_async_callback(self.observers.close)
            await self.observers.start()
            tasks = [
                asyncio.create_task(self.pipeline.tick(), name="clock"),
                asyncio.create_task(
                    self._reconcile(self.reconciler(lkapi, listings)), name="reconcile"
                ),
                asyncio.create_task(self.journal_sync.run(), name="journal-fsync"),
            ]
            log.info(
                "monitor_started",
                http=f"{self.settings.http_host}:{self.http_port}",
                metrics=f"{self.settings.metrics_host}:{self.metrics_port}"
                if self.settings.metrics_port is not None
                else "on the http port",
                livekit=redacted_url(api_url),
                room_mode="whole_call" if self.settings.stays_whole_call else "setup",
                webhooks=self.settings.webhooks,
            )
            self.room_watch.start()
            if started is not None:
                started.set()
            try:
                await stop.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self.room_watch.stop()

    async def _drain(self, consumer: asyncio.Task[None]) -> None:
        await self.pipeline.drain(consumer)
        log.info("monitor_stopped", calls_open=len(self.book.live_calls()))


async def run_until_signalled(monitor: Monitor) -> None:
    """Run the monitor until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await monitor.run(stop)
