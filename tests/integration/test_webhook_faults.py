"""Webhooks delivered twice, late, or out of order, on the real stack.

livekit-server retries a webhook it could not deliver, and a proxy or a busy monitor
can delay or reorder them. A relay the test controls stands where livekit-server sends
its webhooks (the session's `monitor_port`) and forwards each one, signed as it came,
to the monitor on another port: twice, late, or after the ones that came later. Each
call must still be counted once, with the outcome the simulator's ledger says.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence

import aiohttp
import pytest
from aiohttp import web

from monitor.core.model import Outcome
from monitor.sinks.metrics import sample_totals
from stack import Stack
from stack.config import free_port
from stack.ledger import Ledger
from tests.integration.calls import PlaceCall, sim_number, unique_room
from tests.integration.monitoring import processed, running_monitor, wait_until
from tests.integration.truth import assert_matches_ledger

pytestmark = pytest.mark.integration

LATE = 3.0  # seconds a late webhook is held back
# For a webhook kind, the delays (seconds) of its deliveries: [0, 0] is twice at once.
Plan = Callable[[str], Sequence[float]]


class WebhookRelay:
    """Forwards livekit-server's webhooks to the monitor as a plan says."""

    def __init__(self, listen_port: int, target_port: int, plan: Plan) -> None:
        self.listen_port = listen_port
        self.target = f"http://127.0.0.1:{target_port}/webhook"
        self.plan = plan
        # (kind, room, HTTP status or 0 when unreachable, when it was delivered), in
        # delivery order
        self.forwarded: list[tuple[str, str, int, float]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        app = web.Application()
        app.router.add_post("/webhook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> WebhookRelay:
        self._session = aiohttp.ClientSession()
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.listen_port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.drain()
        await self._runner.cleanup()
        assert self._session is not None
        await self._session.close()

    async def drain(self) -> None:
        """Wait for every delivery still planned."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {
            "Authorization": request.headers.get("Authorization", ""),
            "Content-Type": request.headers.get("Content-Type", "application/webhook+json"),
        }
        parsed = json.loads(body)
        kind = str(parsed.get("event", ""))
        room = str(parsed.get("room", {}).get("name", ""))
        for delay in self.plan(kind):
            task = asyncio.ensure_future(self._deliver(kind, room, body, headers, delay))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.Response(text="ok")

    async def _deliver(
        self, kind: str, room: str, body: bytes, headers: dict[str, str], delay: float
    ) -> None:
        await asyncio.sleep(delay)  # the plan's delay: the fault under test
        assert self._session is not None
        sent = time.time()
        try:
            async with self._session.post(self.target, data=body, headers=headers) as answer:
                self.forwarded.append((kind, room, answer.status, sent))
        except aiohttp.ClientError:
            self.forwarded.append((kind, room, 0, sent))

    def of_rooms(self, rooms: Sequence[str]) -> list[tuple[str, int]]:
        """(kind, status) of the deliveries about `rooms`."""
        return [(kind, status) for kind, room, status, _ in self.forwarded if room in rooms]

    def sent_at(self, kind: str, room: str) -> list[float]:
        """When the deliveries of `kind` about `room` were sent to the monitor."""
        return [at for k, r, _, at in self.forwarded if (k, r) == (kind, room)]


@pytest.mark.parametrize("mode", ["setup", "whole_call"])
async def test_every_webhook_twice_counts_each_call_once(
    stack: Stack, monitor_port: int, place_call: PlaceCall, ledger: Ledger, mode: str
) -> None:
    port = free_port()
    twice: Plan = lambda kind: (0.0, 0.3)  # noqa: E731 - a plan reads best inline
    cases = [("00", Outcome.COMPLETED), ("02", Outcome.REJECTED), ("05", Outcome.UNAVAILABLE)]
    async with (
        WebhookRelay(monitor_port, port, twice) as relay,
        running_monitor(stack, port, room_mode=mode) as (monitor, recorder),
    ):
        rooms = [unique_room(f"twice{code}") for code, _ in cases]
        placed = await asyncio.gather(
            *(
                place_call(sim_number(code), room=room, ring=0.6, talk=1.0)
                for (code, _), room in zip(cases, rooms, strict=True)
            )
        )
        for room in rooms:
            await recorder.wait_ended(room)
        await relay.drain()
        # Every duplicate is in the monitor: wait for what it does to be done.
        await wait_until(
            lambda: processed(monitor, rooms), 15, "the duplicates processed, no call open"
        )
        records = {room: recorder.ended(room) for room in rooms}
        started = {room: recorder.started(room) for room in rooms}
        # Other tests' rooms may still end while this monitor runs (it lists every
        # room): theirs are taken off the metric's total, by what the log sink saw.
        exposition = monitor.metrics.exposition()[0].decode()
        total = sample_totals(exposition, "call_monitor_calls_ended_total")[""]
        others = len([r for r in recorder.ended() if r.room not in rooms])
    # Every webhook really reached the monitor twice, and was accepted both times.
    ours = relay.of_rooms(rooms)
    # Twice each: the callee's leave and the observer's (hidden, still in webhooks).
    lefts = [kind for kind, _ in ours].count("participant_left")
    assert lefts >= 2 * len(cases), ours
    assert lefts % 2 == 0, ours
    assert {status for kind, status in ours if kind.startswith("participant")} == {200}
    # The truth is the simulator's: one call in each room, each counted once, as it went.
    truth = [call for call in ledger.calls_ended() if call.room in rooms]
    assert sorted(call.room for call in truth) == sorted(rooms)
    for (_, outcome), room, call in zip(cases, rooms, placed, strict=True):
        assert len(started[room]) == 1, room
        [record] = records[room]
        assert record.outcome is outcome
        assert call.ended is not None
        assert_matches_ledger(record, call.ended)
    assert total - others == len(truth)


async def test_late_webhooks_still_give_each_call_its_outcome(
    stack: Stack, monitor_port: int, place_call: PlaceCall
) -> None:
    """Every participant_left 3 s late, in setup mode, where the end of an answered call
    comes from that webhook: the outcome is the ledger's, not `lost`."""
    port = free_port()
    late: Plan = lambda kind: (LATE,) if kind == "participant_left" else (0.0,)  # noqa: E731
    async with (
        WebhookRelay(monitor_port, port, late) as relay,
        running_monitor(stack, port, room_mode="setup", reconcile_seconds="5") as (
            _,
            recorder,
        ),
    ):
        room = unique_room("late")
        placed = await place_call(sim_number("00"), room=room, ring=0.6, talk=1.0)
        [record] = await recorder.wait_ended(room, timeout=30)
        await relay.drain()
    assert placed.ended is not None
    assert placed.ended.t_end is not None
    # The leave reached the monitor late, and the end it counted is that late one: no
    # other source had ended the call first.
    [*_, sent] = relay.sent_at("participant_left", room)
    assert sent - placed.ended.t_end >= LATE - 0.2
    assert record.timings.ended_at is not None
    assert record.timings.ended_at - placed.ended.t_end >= LATE - 0.2
    assert record.outcome is Outcome.COMPLETED
    assert record.call_id == placed.ended.call_id


async def test_webhooks_out_of_order_give_each_call_its_outcome(
    stack: Stack, monitor_port: int, place_call: PlaceCall
) -> None:
    """participant_joined held back until after participant_left (a 404 leaves at once):
    the call starts and ends once, from the leave, and the late join changes nothing."""
    port = free_port()
    joined_last: Plan = lambda kind: (  # noqa: E731
        (4.0,) if kind in ("participant_joined", "room_started") else (0.0,)
    )
    async with (
        WebhookRelay(monitor_port, port, joined_last) as relay,
        running_monitor(stack, port, room_mode="setup", settle_seconds="0.5") as (
            monitor,
            recorder,
        ),
    ):
        room = unique_room("order")
        placed = await place_call(sim_number("05"), room=room)
        [record] = await recorder.wait_ended(room, timeout=30)
        await relay.drain()
        # The late join is in the monitor: wait for what it does to be done.
        await wait_until(
            lambda: processed(monitor, [room]), 15, "the late join processed, no call open"
        )
        ended = recorder.ended(room)
        started = recorder.started(room)
    order = [kind for kind, _ in relay.of_rooms([room]) if kind.startswith("participant")]
    assert order.index("participant_left") < order.index("participant_joined")
    assert placed.ended is not None
    assert len(started) == 1
    assert ended == [record]
    assert record.outcome is Outcome.UNAVAILABLE
    assert_matches_ledger(record, placed.ended)
