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
import contextlib
import itertools
import secrets
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from aiohttp import web
from livekit import api, rtc
from livekit.protocol import models

from stack import Stack, StackConfig
from stack.config import free_port
from stack.ledger import CallEnded, Ledger
from stack.participants import Answerer

TRUNK_NUMBER = "+15550000000"
"""Our number on both trunks (the traces in tests/fixtures/traces used it too)."""
OUTBOUND_TRUNK_ADDRESS = "127.0.0.1:5090"
"""Where the outbound trunk points; the simulator takes every call whatever it says."""
DISPATCH_ROOM_PREFIX = "call-"

T = TypeVar("T")

_numbers = itertools.count(1000)


def sim_number(code: str, suffix: str | None = None) -> str:
    """A number the simulator dials with behaviour `code` ("00" answer, "02" busy...)."""
    if len(code) != 2 or not code.isdigit():
        raise ValueError(f"simulator behaviour codes are two digits, not {code!r}")
    return f"+1555{code}{suffix if suffix is not None else f'{next(_numbers):07d}'}"


def unique_room(prefix: str) -> str:
    """A room name nobody used yet in this stack."""
    # Letters only: six digits in a row would be masked as a phone number in the logs
    # that tests search by room.
    return f"{prefix}-{''.join(secrets.choice(string.ascii_lowercase) for _ in range(8))}"


# --- the stack and the API -----------------------------------------------------------


@pytest.fixture(scope="session")
def monitor_port() -> int:
    """A free loopback port; the session's stack sends its webhooks to
    `http://127.0.0.1:<monitor_port>/webhook`, so a monitor a test runs there gets them."""
    return free_port()


@contextlib.contextmanager
def stack_sending_webhooks_to(port: int) -> Iterator[Stack]:
    """A stack (short room timeouts, for tests) whose webhooks go to 127.0.0.1:port.

    Modules that restart its parts, or count every call on it, start one of their own."""
    config = StackConfig(
        webhook_urls=[f"http://127.0.0.1:{port}/webhook"],
        empty_timeout=5,
        departure_timeout=3,
    )
    with Stack.start(config) as running:
        yield running


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


@dataclass(frozen=True, slots=True)
class SipSetup:
    """The trunks and dispatch rule created for the session."""

    outbound_trunk_id: str
    inbound_trunk_id: str
    dispatch_rule_id: str
    number: str
    outbound_address: str
    room_prefix: str


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sip_setup(lkapi: api.LiveKitAPI) -> SipSetup:
    """An outbound trunk, an inbound trunk and an individual dispatch rule (`call-`)."""
    return await create_sip_setup(lkapi)


async def create_sip_setup(lkapi: api.LiveKitAPI) -> SipSetup:
    """Create the trunks and dispatch rule of `sip_setup` on the stack `lkapi` talks to."""
    outbound = await lkapi.sip.create_outbound_trunk(
        api.CreateSIPOutboundTrunkRequest(
            trunk=api.SIPOutboundTrunkInfo(
                name="sim-outbound", address=OUTBOUND_TRUNK_ADDRESS, numbers=[TRUNK_NUMBER]
            )
        )
    )
    inbound = await lkapi.sip.create_inbound_trunk(
        api.CreateSIPInboundTrunkRequest(
            trunk=api.SIPInboundTrunkInfo(name="sim-inbound", numbers=[TRUNK_NUMBER])
        )
    )
    rule = await lkapi.sip.create_dispatch_rule(
        api.CreateSIPDispatchRuleRequest(
            name="sim-individual",
            trunk_ids=[inbound.sip_trunk_id],
            rule=api.SIPDispatchRule(
                dispatch_rule_individual=api.SIPDispatchRuleIndividual(
                    room_prefix=DISPATCH_ROOM_PREFIX
                )
            ),
        )
    )
    return SipSetup(
        outbound_trunk_id=outbound.sip_trunk_id,
        inbound_trunk_id=inbound.sip_trunk_id,
        dispatch_rule_id=rule.sip_dispatch_rule_id,
        number=TRUNK_NUMBER,
        outbound_address=OUTBOUND_TRUNK_ADDRESS,
        room_prefix=DISPATCH_ROOM_PREFIX,
    )


@pytest.fixture(scope="session")
def ledger(stack: Stack) -> Ledger:
    """The simulator's ledger of this session."""
    return stack.ledger()


# --- placing calls -------------------------------------------------------------------


@dataclass(slots=True)
class PlacedCall:
    """One `create_sip_participant` call: what was asked, what came back, how it ended."""

    request: api.CreateSIPParticipantRequest
    t_request: float
    t_return: float
    info: api.SIPParticipantInfo | None = None
    error: api.TwirpError | None = None
    ended: CallEnded | None = None

    @property
    def elapsed(self) -> float:
        """Seconds the API call took."""
        return self.t_return - self.t_request


PlaceCall = Callable[..., Awaitable[PlacedCall]]


@pytest.fixture
def place_call(lkapi: api.LiveKitAPI, sip_setup: SipSetup, ledger: Ledger) -> PlaceCall:
    """Dial through the outbound trunk and (by default) wait for the ledger's call_ended.

    See `make_place_call`.
    """
    return make_place_call(lkapi, sip_setup, ledger)


def make_place_call(lkapi: api.LiveKitAPI, sip_setup: SipSetup, ledger: Ledger) -> PlaceCall:
    """What the `place_call` fixture gives, for any stack's API, trunks and ledger.

    `await place_call(number, room=..., identity=..., wait_until_answered=...,
    ring=..., talk=..., quirks=..., ringing_timeout=..., wait_for_end=True)`.
    `ring`, `talk` and `quirks` become the simulator's X-Sim-* request headers. A
    Twirp error is kept in `.error`, not raised.
    """

    async def _place(
        number: str,
        *,
        room: str,
        identity: str = "callee",
        wait_until_answered: bool = False,
        ring: float | None = None,
        talk: float | None = None,
        quirks: Sequence[str] = (),
        ringing_timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        wait_for_end: bool = True,
        end_timeout: float = 60.0,
    ) -> PlacedCall:
        sim_headers = dict(headers or {})
        if ring is not None:
            sim_headers["X-Sim-Ring"] = _seconds(ring)
        if talk is not None:
            sim_headers["X-Sim-Talk"] = _seconds(talk)
        if quirks:
            sim_headers["X-Sim-Quirks"] = ",".join(quirks)
        request = api.CreateSIPParticipantRequest(
            sip_trunk_id=sip_setup.outbound_trunk_id,
            sip_call_to=number,
            room_name=room,
            participant_identity=identity,
            wait_until_answered=wait_until_answered,
            headers=sim_headers,
        )
        if ringing_timeout is not None:
            request.ringing_timeout.FromNanoseconds(int(ringing_timeout * 1e9))
        sent = api.CreateSIPParticipantRequest()
        sent.CopyFrom(request)
        placed = PlacedCall(request=sent, t_request=time.monotonic(), t_return=0.0)
        try:
            placed.info = await lkapi.sip.create_sip_participant(request)
        except api.TwirpError as err:
            placed.error = err
        placed.t_return = time.monotonic()
        if wait_for_end:
            placed.ended = await await_call_ended(
                ledger,
                call_id=placed.info.sip_call_id if placed.info else None,
                room=room,
                participant_identity=identity,
                timeout=end_timeout,
            )
        return placed

    return _place


def _seconds(value: float) -> str:
    return f"{value:g}"


async def await_call_ended(
    ledger: Ledger,
    *,
    call_id: str | None = None,
    room: str | None = None,
    participant_identity: str | None = None,
    timeout: float = 60.0,  # noqa: ASYNC109 - a timeout here is a test failure with context
) -> CallEnded:
    """Wait for a call's `call_ended` ledger line, failing the test after `timeout` s."""
    try:
        async with asyncio.timeout(timeout):
            return await ledger.await_call_ended(
                call_id=call_id, room=room, participant_identity=participant_identity
            )
    except TimeoutError:
        pytest.fail(
            f"no call_ended in {ledger.path} for call_id={call_id} room={room} "
            f"identity={participant_identity} within {timeout:.0f} s"
        )


SimInbound = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def sim_inbound(stack: Stack) -> SimInbound:
    """Start an inbound call (simulator POST /inbound); returns call_id, room, identity."""

    async def _inbound(**call: Any) -> dict[str, Any]:
        return await asyncio.to_thread(stack.sim_inbound, **call)

    return _inbound


# --- room participants ---------------------------------------------------------------


def kind_name(kind: int) -> str:
    """`PARTICIPANT_KIND_SIP` and so on, as the traces write participant kinds."""
    return str(rtc.ParticipantKind.Name(kind))  # type: ignore[arg-type]


def reason_name(reason: int | None) -> str | None:
    """`CLIENT_INITIATED` and so on, as the traces write disconnect reasons."""
    if reason is None:
        return None
    return str(rtc.DisconnectReason.Name(reason))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Seen:
    """One thing the observer saw, in the shape of a trace line (tests/fixtures/traces)."""

    t: float
    event: str
    identity: str | None = None
    kind: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    changed: Mapping[str, str] = field(default_factory=dict)
    disconnect_reason: str | None = None
    track_sid: str | None = None

    def as_trace_line(self) -> dict[str, Any]:
        """The same fields a trace line has (absent ones left out)."""
        line: dict[str, Any] = {"t": self.t, "event": self.event}
        if self.identity is not None:
            line.update(identity=self.identity, kind=self.kind, attributes=dict(self.attributes))
        if self.event == "participant_attributes_changed":
            line["changed"] = dict(self.changed)
        if self.disconnect_reason is not None:
            line["disconnect_reason"] = self.disconnect_reason
        if self.track_sid is not None:
            line["track_sid"] = self.track_sid
        return line


async def _first_match(
    items: list[T],
    changed: asyncio.Event,
    predicate: Callable[[T], bool],
    timeout: float,  # noqa: ASYNC109 - the callers turn None into a test failure
) -> T | None:
    """The first of `items` (a list others append to, setting `changed`) that matches,
    waiting up to `timeout` s for it; None if none came."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                for item in items:
                    if predicate(item):
                        return item
                changed.clear()
                await changed.wait()
    except TimeoutError:
        return None


class RoomObserver:
    """A hidden, non-publishing, non-subscribing participant that records room events.

    It joins with kind agent and the `agent` grant, so it does not keep the room open
    (STACK.md). `t` of each record is seconds since `t0` (monotonic; by default the
    moment `connect()` returned). Participants already in the room are recorded as
    `already_present`.
    """

    def __init__(self, room_name: str, identity: str) -> None:
        self.room_name = room_name
        self.identity = identity
        self.room = rtc.Room()
        self.seen: list[Seen] = []
        self.t0 = time.monotonic()
        self._changed = asyncio.Event()
        self._subscribe()

    def _subscribe(self) -> None:
        room = self.room

        @room.on("participant_connected")
        def _connected(p: rtc.RemoteParticipant) -> None:
            self._record("participant_connected", p)

        @room.on("participant_attributes_changed")
        def _attrs(changed: dict[str, str], p: rtc.Participant) -> None:
            if p.identity != self.identity:
                self._record("participant_attributes_changed", p, changed=changed)

        @room.on("participant_disconnected")
        def _left(p: rtc.RemoteParticipant) -> None:
            self._record("participant_disconnected", p, reason=reason_name(p.disconnect_reason))

        @room.on("track_published")
        def _published(pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
            self._record("track_published", p, track_sid=pub.sid)

        @room.on("track_unpublished")
        def _unpublished(pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
            self._record("track_unpublished", p, track_sid=pub.sid)

        @room.on("disconnected")
        def _disconnected(reason: int) -> None:
            self._append(
                Seen(t=self.now(), event="disconnected", disconnect_reason=reason_name(reason))
            )

    def now(self) -> float:
        """Seconds since t0."""
        return round(time.monotonic() - self.t0, 3)

    def _record(
        self,
        event: str,
        p: rtc.Participant,
        *,
        changed: Mapping[str, str] | None = None,
        reason: str | None = None,
        track_sid: str | None = None,
    ) -> None:
        self._append(
            Seen(
                t=self.now(),
                event=event,
                identity=p.identity,
                kind=kind_name(p.kind),
                attributes=dict(p.attributes),
                changed=dict(changed or {}),
                disconnect_reason=reason,
                track_sid=track_sid,
            )
        )

    def _append(self, seen: Seen) -> None:
        self.seen.append(seen)
        self._changed.set()

    async def connect(self, stack: Stack) -> None:
        """Join the room, then record the participants already there."""
        token = (
            api.AccessToken(stack.api_key, stack.api_secret)
            .with_identity(self.identity)
            .with_kind("agent")
            .with_grants(
                api.VideoGrants(
                    room_join=True,
                    room=self.room_name,
                    hidden=True,
                    agent=True,
                    can_subscribe=False,
                    can_publish=False,
                    can_publish_data=False,
                )
            )
            .to_jwt()
        )
        await self.room.connect(stack.ws_url, token, rtc.RoomOptions(auto_subscribe=False))
        self.t0 = time.monotonic()
        self._append(Seen(t=0.0, event="observer_connected"))
        for p in list(self.room.remote_participants.values()):
            self._record("already_present", p)

    async def wait_for(
        self,
        predicate: Callable[[Seen], bool],
        timeout: float = 30.0,  # noqa: ASYNC109 - fails the test, listing what was seen
    ) -> Seen:
        """The first record (already seen or coming) that matches, or fail the test."""
        found = await _first_match(self.seen, self._changed, predicate, timeout)
        if found is None:
            pytest.fail(
                f"observer in {self.room_name} did not see the awaited event in {timeout:.0f} s; "
                f"saw: {[s.as_trace_line() for s in self.seen]}"
            )
        return found

    async def wait_left(self, identity: str, timeout: float = 30.0) -> Seen:  # noqa: ASYNC109
        """Wait until `identity` is seen leaving (or the room closing under us)."""
        return await self.wait_for(
            lambda s: (
                (s.event == "participant_disconnected" and s.identity == identity)
                or s.event == "disconnected"
            ),
            timeout,
        )

    def of(self, identity: str) -> list[Seen]:
        """The records about one participant."""
        return [s for s in self.seen if s.identity == identity]

    def statuses(self, identity: str) -> list[str]:
        """The `sip.callStatus` values seen for a participant, repeats collapsed."""
        out: list[str] = []
        for s in self.of(identity):
            status = s.attributes.get("sip.callStatus")
            if status is not None and (not out or out[-1] != status):
                out.append(status)
        return out

    async def close(self) -> None:
        """Leave the room."""
        if self.room.isconnected():
            await self.room.disconnect()


JoinObserver = Callable[[str], Awaitable[RoomObserver]]
JoinAnswerer = Callable[[str], Awaitable[Answerer]]


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


class WebhookRecorder:
    """Receives livekit-server's webhooks, checks their signature, and records them.

    Each record has the fields of a `webhook` line of tests/fixtures/traces/webhooks_*:
    `t` (seconds since `t0`, monotonic), `webhook_event`, `id`, `createdAt`, `room`, and
    for participant events `identity`, `participant_sid`, `kind` ("SIP", "AGENT"...),
    `attributes`, `disconnect_reason`, `state`.
    """

    def __init__(self, stack: Stack, port: int) -> None:
        self.port = port
        self.t0 = time.monotonic()
        self.received: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        self._receiver = api.WebhookReceiver(api.TokenVerifier(stack.api_key, stack.api_secret))
        self._changed = asyncio.Event()
        app = web.Application()
        app.router.add_post("/webhook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        """Listen on 127.0.0.1:port."""
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop listening."""
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        try:
            event = self._receiver.receive(body, request.headers.get("Authorization", ""))
        except Exception as err:  # a bad signature must fail the test, not the server
            self.rejected.append(f"{type(err).__name__}: {err}")
            return web.Response(status=401)
        line: dict[str, Any] = {
            "t": round(time.monotonic() - self.t0, 3),
            "event": "webhook",
            "webhook_event": event.event,
            "id": event.id,
            "createdAt": event.created_at,
            "room": event.room.name,
        }
        if event.HasField("participant"):
            p = event.participant
            line.update(
                identity=p.identity,
                participant_sid=p.sid,
                kind=models.ParticipantInfo.Kind.Name(p.kind),
                attributes=dict(p.attributes),
                disconnect_reason=models.DisconnectReason.Name(p.disconnect_reason),
                state=models.ParticipantInfo.State.Name(p.state),
            )
        self.received.append(line)
        self._changed.set()
        return web.Response(text="ok")

    def of_room(self, room: str, t0: float | None = None) -> list[dict[str, Any]]:
        """The webhooks about one room, in the order they arrived; with `t0` (a
        time.monotonic() value, e.g. an observer's t0) their `t` counts from it."""
        shift = 0.0 if t0 is None else self.t0 - t0
        return [{**w, "t": round(w["t"] + shift, 3)} for w in self.received if w["room"] == room]

    async def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 30.0,  # noqa: ASYNC109 - fails the test, listing what came
    ) -> dict[str, Any]:
        """The first webhook (already received or coming) that matches, or fail the test."""
        found = await _first_match(self.received, self._changed, predicate, timeout)
        if found is None:
            pytest.fail(f"no such webhook within {timeout:.0f} s; got: {self.received}")
        return found


@pytest_asyncio.fixture
async def webhooks(stack: Stack, monitor_port: int) -> AsyncIterator[WebhookRecorder]:
    """The stack's webhooks, received on `monitor_port` for the length of one test."""
    recorder = WebhookRecorder(stack, monitor_port)
    await recorder.start()
    try:
        yield recorder
    finally:
        await recorder.stop()
