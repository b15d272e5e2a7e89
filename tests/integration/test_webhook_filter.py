"""livekit-server told to send the monitor only the webhook kinds it reads.

README "Running it next to LiveKit" suggests `webhook.filter_params.include_events` with
`monitor.sources.webhooks.WEBHOOK_EVENTS_USED` where the monitor is the only consumer of the
webhooks: about 3 of the 8 webhooks of a call are of kinds it ignores (room_started,
track_published, track_unpublished), each still verified and parsed. Here a stack of
its own runs with that filter, next to the session's stack without it: calls are
counted as the ledger says either way, and only the filtered one sends nothing the
monitor ignores.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from livekit import api

from monitor.runtime.service import Monitor
from monitor.sources.webhooks import WEBHOOK_EVENTS_USED
from stack import Stack, StackConfig
from stack.config import free_port
from tests.integration.calls import (
    SipSetup,
    create_sip_setup,
    make_place_call,
    sim_number,
    unique_room,
)
from tests.integration.monitoring import running_monitor
from tests.integration.truth import MODES, RING, TALK, assert_matches_ledger

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def filtered_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def filtered_stack(filtered_port: int) -> Iterator[Stack]:
    config = StackConfig(
        webhook_urls=[f"http://127.0.0.1:{filtered_port}/webhook"],
        webhook_events=WEBHOOK_EVENTS_USED,
    )
    with Stack.start(config) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def filtered_api(filtered_stack: Stack) -> AsyncIterator[tuple[api.LiveKitAPI, SipSetup]]:
    lkapi = api.LiveKitAPI(
        filtered_stack.http_url, filtered_stack.api_key, filtered_stack.api_secret
    )
    try:
        yield lkapi, await create_sip_setup(lkapi)
    finally:
        await lkapi.aclose()


async def count_two_calls(
    stack: Stack, port: int, lkapi: api.LiveKitAPI, sip: SipSetup, mode: str
) -> Monitor:
    """An answered call and a busy one, each counted as the ledger says; the monitor."""
    place_call = make_place_call(lkapi, sip, stack.ledger())
    async with running_monitor(stack, port, room_mode=mode) as (monitor, recorder):
        placed = []
        for code in ("00", "02"):  # answered then hung up by the callee; busy
            room = unique_room("filter")
            call = await place_call(sim_number(code), room=room, ring=RING, talk=TALK)
            placed.append((room, call))
        records = {room: (await recorder.wait_ended(room))[0] for room, _ in placed}
    for room, call in placed:
        assert call.ended is not None
        assert_matches_ledger(records[room], call.ended)
    # Each call's participant_joined and participant_left, at least.
    assert webhooks(monitor, "ok") >= 4
    return monitor


def webhooks(monitor: Monitor, result: str) -> float:
    value = monitor.registry.get_sample_value(
        "call_monitor_webhook_requests_total", {"result": result}
    )
    return value or 0.0


@pytest.mark.parametrize("mode", MODES)
async def test_with_only_the_kinds_it_reads_the_monitor_counts_calls_and_ignores_none(
    filtered_stack: Stack,
    filtered_port: int,
    filtered_api: tuple[api.LiveKitAPI, SipSetup],
    mode: str,
) -> None:
    monitor = await count_two_calls(filtered_stack, filtered_port, *filtered_api, mode)
    assert webhooks(monitor, "ignored") == 0


@pytest.mark.parametrize("mode", MODES)
async def test_with_every_kind_the_monitor_ignores_some(
    stack: Stack, monitor_port: int, lkapi: api.LiveKitAPI, sip_setup: SipSetup, mode: str
) -> None:
    monitor = await count_two_calls(stack, monitor_port, lkapi, sip_setup, mode)
    assert webhooks(monitor, "ignored") >= 2  # at least each call's room_started
