"""The service's pieces that need no LiveKit: the observer's token, room watching's
policy, the pipeline's resilience, the listing tokens."""

from __future__ import annotations

from dataclasses import replace

import aiohttp
from livekit import api

from monitor.core.model import Effect, Event, ParticipantSeen, Reason, Source
from monitor.runtime.config import load_settings
from monitor.runtime.rooms import observer_token
from monitor.runtime.service import Monitor
from monitor.sources.listings import RoomListings
from tests.unit.script import CallScript

KEY = "APIunit"
SECRET = "unit-test-secret-that-is-long-enough-0123456789"
ENV = {"LIVEKIT_URL": "ws://127.0.0.1:1", "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET}


def test_the_observer_token_carries_the_least_grants_that_work() -> None:
    claims = api.TokenVerifier(KEY, SECRET).verify(observer_token(KEY, SECRET, "call-1", "obs"))
    grants = claims.video
    assert grants is not None
    assert claims.identity == "obs"
    assert claims.kind == "agent"
    assert (grants.room_join, grants.room, grants.hidden, grants.agent) == (
        True,
        "call-1",
        True,
        True,
    )
    assert grants.can_publish is False
    assert grants.can_publish_data is False
    assert grants.can_subscribe is False
    assert grants.can_update_own_metadata is False
    assert not grants.room_admin
    assert not grants.room_create
    assert not grants.room_list
    assert not grants.recorder


def feed(monitor: Monitor, script: CallScript) -> None:
    for event in script.events:
        monitor.process(event)


def test_setup_mode_watches_a_room_only_while_a_call_is_set_up() -> None:
    monitor = Monitor(load_settings({"room_mode": "setup"}, ENV))
    script = CallScript().seen(0.0, "dialing")
    feed(monitor, script)
    assert monitor.room_needs_observer("call-test")
    feed(monitor, CallScript().to(1.0, "ringing"))
    assert monitor.room_needs_observer("call-test")
    feed(monitor, CallScript().to(2.0, "active"))
    assert not monitor.room_needs_observer("call-test")


def test_whole_call_mode_watches_until_the_call_ends() -> None:
    monitor = Monitor(load_settings({"room_mode": "whole_call", "settle_seconds": "0"}, ENV))
    feed(monitor, CallScript().seen(0.0, "dialing").to(2.0, "active"))
    assert monitor.room_needs_observer("call-test")
    feed(monitor, CallScript().left(9.0, Reason.CLIENT_INITIATED, status="hangup"))
    assert not monitor.room_needs_observer("call-test")


def test_without_webhooks_the_default_mode_stays_for_the_whole_call() -> None:
    assert load_settings({"webhooks": "false"}, ENV).stays_whole_call
    assert not load_settings({}, ENV).stays_whole_call
    assert load_settings({"room_mode": "whole_call"}, ENV).stays_whole_call


def test_livekit_url_works_in_either_scheme_for_rooms_and_the_api() -> None:
    from monitor.runtime.config import http_url as _http_url
    from monitor.runtime.config import ws_url as _ws_url

    assert (_ws_url("https://lk.example.com"), _http_url("wss://lk.example.com")) == (
        "wss://lk.example.com",
        "https://lk.example.com",
    )
    assert (_ws_url("ws://127.0.0.1:7880"), _http_url("http://127.0.0.1:7880")) == (
        "ws://127.0.0.1:7880",
        "http://127.0.0.1:7880",
    )
    assert _http_url("ws://127.0.0.1:7880") == "http://127.0.0.1:7880"


async def test_an_event_the_service_fails_on_costs_that_event_alone() -> None:
    """A bug that raises while processing one event is logged; the events after it are
    processed."""
    import asyncio

    import structlog

    monitor = Monitor(load_settings({"room_mode": "setup"}, ENV))
    events = CallScript().seen(0.0, "dialing").to(1.0, "ringing").events
    step = monitor.book.step
    calls = 0

    def fails_once(event: Event) -> list[Effect]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return step(event)

    monitor.book.step = fails_once  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        consumer = asyncio.create_task(monitor.pipeline.consume())
        for event in events:
            monitor.submit(event)
        for _ in range(100):  # the queue drains in milliseconds, or never
            await asyncio.sleep(0.01)
            if monitor.queue.empty():
                break
        await asyncio.sleep(0.01)
        consumer.cancel()
    [failed] = [line for line in logs if line["event"] == "event_processing_failed"]
    assert failed["event_type"] == "ParticipantSeen"
    assert calls == 2
    [call] = monitor.live_calls()
    assert str(call.state) == "ringing"


def test_a_join_webhook_after_its_rooms_room_finished_does_not_send_an_observer() -> None:
    """Joining a room livekit-server has closed would open it anew; a join webhook of
    that room delivered late (retried) must not send an observer there. One of a new
    room of the same name (another sid) does."""
    monitor = Monitor(load_settings({"room_mode": "setup"}, ENV))
    script = CallScript().room_ended(0.0, None, Source.WEBHOOK, room_sid="RM_1")
    script.seen(0.5, "dialing", Source.WEBHOOK)  # the script's calls are in RM_1
    feed(monitor, script)
    assert [call.state for call in monitor.live_calls()] == ["dialing"]
    assert not monitor.room_needs_observer("call-test")
    later = CallScript(call_id="SCL_test2", sid="PA_test2").seen(9.0, "dialing", Source.WEBHOOK)
    event = later.events[0]
    assert isinstance(event, ParticipantSeen)
    monitor.process(replace(event, room_sid="RM_2"))
    assert monitor.room_needs_observer("call-test")


async def test_a_rooms_listing_token_is_signed_once_and_renewed_at_half_its_life() -> None:
    """livekit-api signs a JWT per request; a room's listing client keeps its token."""
    now = [0.0]
    session = aiohttp.ClientSession()
    try:
        listings = RoomListings(
            "http://127.0.0.1:1", KEY, SECRET, session, lifetime=600.0, clock=lambda: now[0]
        )
        first = listings._client("call-a")
        now[0] = 299.0
        assert listings._client("call-a") is first
        assert listings._client("call-b") is not first
        now[0] = 301.0
        renewed = listings._client("call-a")
        assert renewed is not first
        listings.keep_only(["call-b"])
        assert listings._client("call-a") is not renewed  # forgotten, signed anew
    finally:
        await session.close()
