"""Fixtures for integration tests: a real stack and the helpers to drive SIP calls in it.

Everything here runs against the livekit-server, redis and SIP simulator that
`stack.Stack` starts for the test session (never a mock). The session's stack is
stopped at the end of the session whatever the tests did, and the observer and
answerer rooms a test opens are closed when the test ends.

Fixtures:
- `stack`: the running `stack.Stack` (session), webhooks sent to `monitor_port`.
- `monitor_port`: the loopback port the stack's webhooks go to (`/webhook`).
- `lkapi`: a `livekit.api.LiveKitAPI` for the stack, on the session event loop.
- `sip_setup`: outbound trunk, inbound trunk and dispatch rule made through the API.
- `ledger`: the simulator's ledger (`stack.ledger.Ledger`).
- `place_call`: dial a simulator number; returns a `PlacedCall` (answer or error, and
  the ledger's `call_ended` once the call is over).
- `observe`: join a room as a hidden observer that records what it sees.
- `answerer`: join a room as a participant that publishes audio (answers inbound calls).
- `sim_inbound`: start an inbound call in the simulator.
- `webhooks`: receive the stack's webhooks on `monitor_port` during one test (so no
  monitor may run in that test) and record them, verified, in the traces' shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from livekit import api

from stack import Stack
from stack.config import free_port
from stack.ledger import Ledger
from stack.participants import Answerer
from tests.integration.calls import (
    PlaceCall,
    SimInbound,
    SipSetup,
    create_sip_setup,
    make_place_call,
    stack_sending_webhooks_to,
)
from tests.integration.oracle import (
    JoinAnswerer,
    JoinObserver,
    RoomObserver,
    WebhookRecorder,
)


@pytest.fixture(scope="session")
def monitor_port() -> int:
    """A free loopback port; the session's stack sends its webhooks to
    `http://127.0.0.1:<monitor_port>/webhook`, so a monitor a test runs there gets them."""
    return free_port()


@pytest.fixture(scope="session")
def stack(monitor_port: int) -> Iterator[Stack]:
    """The stack of this test session: redis, livekit-server and the SIP simulator."""
    with stack_sending_webhooks_to(monitor_port) as running:
        yield running


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def lkapi(stack: Stack) -> AsyncIterator[api.LiveKitAPI]:
    """A LiveKit API client for the stack, made on (and closed with) the session loop."""
    client = api.LiveKitAPI(stack.http_url, stack.api_key, stack.api_secret)
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sip_setup(lkapi: api.LiveKitAPI) -> SipSetup:
    """An outbound trunk, an inbound trunk and an individual dispatch rule (`call-`)."""
    return await create_sip_setup(lkapi)


@pytest.fixture(scope="session")
def ledger(stack: Stack) -> Ledger:
    """The simulator's ledger of this session."""
    return stack.ledger()


# --- placing calls -------------------------------------------------------------------


@pytest.fixture
def place_call(lkapi: api.LiveKitAPI, sip_setup: SipSetup, ledger: Ledger) -> PlaceCall:
    """Dial through the outbound trunk and (by default) wait for the ledger's call_ended.

    See `make_place_call`.
    """
    return make_place_call(lkapi, sip_setup, ledger)


@pytest.fixture
def sim_inbound(stack: Stack) -> SimInbound:
    """Start an inbound call (simulator POST /inbound); returns call_id, room, identity."""

    async def _inbound(**call: Any) -> dict[str, Any]:
        return await asyncio.to_thread(stack.sim_inbound, **call)

    return _inbound


# --- room participants ---------------------------------------------------------------


@pytest_asyncio.fixture
async def observe(stack: Stack) -> AsyncIterator[JoinObserver]:
    """`await observe(room)` joins `room` as a recording hidden observer (left after the test)."""
    observers: list[RoomObserver] = []

    async def _join(room_name: str) -> RoomObserver:
        observer = RoomObserver(room_name, identity=f"observer-{room_name}")
        observers.append(observer)
        await observer.connect(stack)
        return observer

    try:
        yield _join
    finally:
        for observer in observers:
            await observer.close()


@pytest_asyncio.fixture
async def answerer(stack: Stack) -> AsyncIterator[JoinAnswerer]:
    """`await answerer(room)` joins `room` and publishes audio (left after the test)."""
    joined: list[Answerer] = []

    async def _join(room_name: str) -> Answerer:
        participant = Answerer(room_name)
        joined.append(participant)
        await participant.connect(stack)
        return participant

    try:
        yield _join
    finally:
        for participant in joined:
            await participant.close()


# --- webhooks ------------------------------------------------------------------------


@pytest_asyncio.fixture
async def webhooks(stack: Stack, monitor_port: int) -> AsyncIterator[WebhookRecorder]:
    """The stack's webhooks, received on `monitor_port` for the length of one test."""
    recorder = WebhookRecorder(stack, monitor_port)
    await recorder.start()
    try:
        yield recorder
    finally:
        await recorder.stop()
