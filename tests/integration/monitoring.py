"""Running the real monitor in the test's event loop, against the session's stack.

The stack sends its webhooks to `http://127.0.0.1:<monitor_port>/webhook`; each monitor a
test starts binds that port, so one monitor runs at a time. `EffectRecorder` is a sink
that keeps every effect, so tests can wait for a call's end and read its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from monitor.core.model import Anomaly, CallEnded, CallRecord, CallStarted, Effect, StateChanged
from monitor.runtime.config import load_settings
from monitor.runtime.service import EffectSink, Monitor
from stack import Stack


@dataclass
class EffectRecorder:
    """A sink that keeps what the machine said, and wakes waiters."""

    effects: list[Effect] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def handle(self, effect: Effect) -> None:
        self.effects.append(effect)
        self._changed.set()

    async def _until(self, holds: Callable[[], bool]) -> None:
        while not holds():
            self._changed.clear()
            await self._changed.wait()

    def ended(self, room: str | None = None) -> list[CallRecord]:
        return [
            effect.call
            for effect in self.effects
            if isinstance(effect, CallEnded) and (room is None or effect.call.room == room)
        ]

    def started(self, room: str | None = None) -> list[CallRecord]:
        return [
            effect.call
            for effect in self.effects
            if isinstance(effect, CallStarted) and (room is None or effect.call.room == room)
        ]

    def states(self, key: str) -> list[str]:
        """The states a call went through, as the monitor reported them."""
        seen: list[str] = []
        for effect in self.effects:
            if isinstance(effect, CallStarted | StateChanged) and effect.call.key == key:
                seen.append(str(effect.call.state))
        return seen

    def anomalies(self, room: str | None = None) -> list[Anomaly]:
        return [
            effect
            for effect in self.effects
            if isinstance(effect, Anomaly) and (room is None or effect.room == room)
        ]

    async def wait_ended(
        self,
        room: str,
        count: int = 1,
        timeout: float = 30.0,  # noqa: ASYNC109 - a timeout here is a test failure with context
    ) -> list[CallRecord]:
        """The calls of `room` once `count` of them ended; fails the test on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._until(lambda: len(self.ended(room)) >= count)
        except TimeoutError:
            pytest.fail(
                f"the monitor ended {len(self.ended(room))} of {count} calls in {room} "
                f"within {timeout:.0f} s; started: {[c.key for c in self.started(room)]}"
            )
        return self.ended(room)

    async def wait_state(
        self,
        room: str,
        state: str,
        timeout: float = 30.0,  # noqa: ASYNC109 - a timeout here is a test failure with context
    ) -> CallRecord:
        def found() -> CallRecord | None:
            for effect in self.effects:
                if (
                    isinstance(effect, CallStarted | StateChanged)
                    and effect.call.room == room
                    and effect.call.state == state
                ):
                    return effect.call
            return None

        try:
            async with asyncio.timeout(timeout):
                await self._until(lambda: found() is not None)
        except TimeoutError:
            pytest.fail(f"no call in {room} reached {state} within {timeout:.0f} s")
        record = found()
        assert record is not None
        return record


def monitor_settings(stack: Stack, port: int, **overrides: str) -> Mapping[str, str]:
    flags = {
        "http_port": str(port),
        "settle_seconds": "1.0",
        "reconcile_seconds": "2",
        "answer_grace_seconds": "0.5",
        "log_format": "json",
        "log_level": "warning",
        **overrides,
    }
    return flags


@contextlib.asynccontextmanager
async def running_monitor(
    stack: Stack,
    port: int,
    sinks: Sequence[EffectSink] = (),
    move_after: float = 30.0,
    **overrides: str,
) -> AsyncIterator[tuple[Monitor, EffectRecorder]]:
    """A monitor on the stack, stopped (gracefully) when the block ends."""
    settings = load_settings(monitor_settings(stack, port, **overrides), stack.env())
    recorder = EffectRecorder()
    monitor = Monitor(
        settings,
        registry=CollectorRegistry(),
        sinks=[recorder, *sinks],
        observer_move_after=move_after,
    )
    stop = asyncio.Event()
    started = asyncio.Event()
    task = asyncio.create_task(monitor.run(stop, started), name="monitor-under-test")
    started_or_failed = asyncio.create_task(started.wait())
    await asyncio.wait([task, started_or_failed], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started_or_failed.cancel()
        task.result()  # raises what stopped it
    try:
        yield monitor, recorder
    finally:
        stop.set()
        await task


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 30.0,  # noqa: ASYNC109 - a timeout here is a test failure with context
    what: str = "",
    interval: float = 0.05,
) -> None:
    """Poll a condition until it holds, or fail the test after `timeout` s: a plain
    predicate reads state (the monitor's own), an async one asks a server (a listing),
    for which nothing can be awaited. Where an event can be awaited, await it instead."""

    async def holds() -> bool:
        result = predicate()
        return await result if inspect.isawaitable(result) else result

    try:
        async with asyncio.timeout(timeout):
            while not await holds():  # noqa: ASYNC110 - polled state, nothing to wait on
                await asyncio.sleep(interval)  # the polling interval
    except TimeoutError:
        pytest.fail(f"not within {timeout:.0f} s: {what}")


def processed(monitor: Monitor, rooms: Iterable[str]) -> bool:
    """The monitor has processed every event it accepted, and holds no call of `rooms`
    open (nor waiting out its settle window): whatever those events could do to the
    calls of `rooms`, a second start or end included, has been done."""
    return monitor.queue.empty() and not monitor.book.rooms() & set(rooms)


def reconcile_runs(monitor: Monitor, result: str) -> float:
    value = monitor.registry.get_sample_value(
        "call_monitor_reconcile_runs_total", {"result": result}
    )
    return value or 0.0


async def two_more_listings(monitor: Monitor) -> None:
    """Wait for two reconciliations to succeed from now: after them, a late listing
    could have neither restarted an ended call nor ended a live one unseen."""
    done = reconcile_runs(monitor, "success")
    await wait_until(
        lambda: reconcile_runs(monitor, "success") >= done + 2, 30, "two listings succeeded"
    )


def observer_in(monitor: Monitor, room: str) -> bool:
    slot = monitor.rooms.get(room)
    return slot is not None and slot.observer is not None


async def observer_placed(monitor: Monitor, room: str, mode: str) -> None:
    """Wait until the observer is where the mode puts it once a call is answered:
    gone (setup) or still in the room (whole_call)."""
    if mode == "setup":
        await wait_until(lambda: room not in monitor.rooms, 10, f"observer left {room}")
    else:
        await wait_until(lambda: observer_in(monitor, room), 10, f"observer in {room}")
