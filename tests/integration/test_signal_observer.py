"""The signal-channel observer against the real livekit-server, with the WebRTC SDK's
observer (`monitor/sources/rtc_adapter.py`) as its oracle.

Both observers sit in the same rooms while the simulator places the outbound and inbound
scenarios; what each reports of the SIP participant must agree: the statuses in order,
who left, and with which reason. Then what only the signal client has to handle: the
one-minute rule (its session is renewed before livekit-server removes it), the room
deleted under it, and a refused join.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import pytest_asyncio
from livekit import api

from monitor.core.model import (
    AttributesChanged,
    Event,
    ParticipantLeft,
    ParticipantSeen,
    Reason,
    RoomEnded,
)
from monitor.runtime.config import Settings, load_settings
from monitor.runtime.rooms import observer_token
from monitor.sources.room_link import JoinFailed, LinkHooks
from monitor.sources.rtc_adapter import RoomObserver as RtcObserver
from monitor.sources.signal_observer import SignalLink, SignalObservers
from stack import Stack
from tests.integration.calls import PlaceCall, SimInbound, SipSetup, sim_number, unique_room
from tests.integration.oracle import JoinAnswerer

pytestmark = pytest.mark.integration


@dataclass
class Recorded:
    """The events one observer emitted, and a way to wait on them."""

    events: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def emit(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()

    def about(self, identity: str) -> list[ParticipantSeen | AttributesChanged | ParticipantLeft]:
        return [
            event
            for event in self.events
            if isinstance(event, ParticipantSeen | AttributesChanged | ParticipantLeft)
            and event.participant.identity == identity
        ]

    def statuses(self, identity: str) -> list[str]:
        """The participant's sip.callStatus values in order, repeats folded."""
        seen: list[str] = []
        for event in self.about(identity):
            status = event.participant.status or ""
            if not seen or seen[-1] != status:
                seen.append(status)
        return seen

    def left(self, identity: str) -> list[Reason | None]:
        return [e.reason for e in self.about(identity) if isinstance(e, ParticipantLeft)]

    async def wait(self, holds: Callable[[], object], timeout: float, what: str) -> None:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                while not holds():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            pytest.fail(f"not within {timeout:g} s: {what}; events: {self.events}")


@pytest.fixture(scope="module")
def settings(stack: Stack) -> Settings:
    return load_settings({}, stack.env())


@dataclass
class Watch:
    signal: Recorded
    rtc: Recorded
    link: SignalLink


WatchRoom = Callable[[str], Awaitable[Watch]]


@pytest_asyncio.fixture
async def watch_both(stack: Stack, settings: Settings) -> AsyncIterator[WatchRoom]:
    """`await watch_both(room)`: the signal and the rtc observer in `room`."""
    backends: list[SignalObservers] = []
    rtc_observers: list[RtcObserver] = []

    async def _watch(room: str) -> Watch:
        signal_seen, rtc_seen = Recorded(), Recorded()
        backend = SignalObservers(signal_seen.emit)
        backends.append(backend)
        token = observer_token(
            settings.livekit_api_key, settings.livekit_api_secret, room, f"signal-{room}"
        )
        link = await backend.join(room, stack.ws_url, token, 10.0, LinkHooks())
        rtc_observer = RtcObserver(
            room,
            stack.ws_url,
            observer_token(
                settings.livekit_api_key, settings.livekit_api_secret, room, f"rtc-{room}"
            ),
            rtc_seen.emit,
        )
        rtc_observers.append(rtc_observer)
        await rtc_observer.connect(20.0)
        return Watch(signal_seen, rtc_seen, link)

    try:
        yield _watch
    finally:
        for backend in backends:
            await backend.close()
        for observer in rtc_observers:
            await observer.close()


async def _both_saw_the_end(watch: Watch, identity: str) -> None:
    for recorded in (watch.signal, watch.rtc):
        await recorded.wait(partial(recorded.left, identity), 40, f"{identity} left")


def _assert_agree(watch: Watch, identity: str) -> tuple[list[str], list[Reason | None]]:
    statuses = watch.signal.statuses(identity)
    left = watch.signal.left(identity)
    assert (statuses, left) == (watch.rtc.statuses(identity), watch.rtc.left(identity))
    assert len(left) == 1
    return statuses, left


# (code, place_call options, statuses, leave reason) as docs/simulator.md lists them.
OUTBOUND: list[tuple[str, dict[str, Any], list[str], Reason]] = [
    (
        "00",
        {"ring": 0.5, "talk": 1},
        ["dialing", "ringing", "active", "hangup"],
        Reason.CLIENT_INITIATED,
    ),
    ("02", {"ring": 0.5}, ["dialing", "ringing"], Reason.USER_REJECTED),
    ("04", {}, ["dialing"], Reason.USER_REJECTED),
    ("05", {}, ["dialing"], Reason.USER_UNAVAILABLE),
    ("07", {"ring": 0.5}, ["dialing", "ringing"], Reason.CLIENT_INITIATED),
    ("09", {"ringing_timeout": 2}, ["dialing", "ringing"], Reason.USER_UNAVAILABLE),
]


async def test_the_signal_observer_sees_what_the_rtc_observer_sees_of_outbound_calls(
    watch_both: WatchRoom, place_call: PlaceCall, lkapi: api.LiveKitAPI
) -> None:
    async def one(code: str, options: dict[str, Any]) -> tuple[list[str], list[Reason | None]]:
        room = unique_room(f"agree-out-{code}")
        # livekit-server sends the leave of a participant that published nothing (404
        # at once) up to 3 s late, and drops it if the room closes first: the room is
        # kept open longer than the test stack's 3 s, for the leave to be compared.
        await lkapi.room.create_room(
            api.CreateRoomRequest(name=room, empty_timeout=10, departure_timeout=10)
        )
        watch = await watch_both(room)
        await place_call(sim_number(code), room=room, identity="callee", **options)
        await _both_saw_the_end(watch, "callee")
        return _assert_agree(watch, "callee")

    results = await asyncio.gather(*(one(code, options) for code, options, _, _ in OUTBOUND))
    for (code, _, statuses, reason), seen in zip(OUTBOUND, results, strict=True):
        assert seen == (statuses, [reason]), code


async def test_the_signal_observer_sees_what_the_rtc_observer_sees_of_inbound_calls(
    watch_both: WatchRoom,
    sim_inbound: SimInbound,
    sip_setup: SipSetup,
    answerer: JoinAnswerer,
) -> None:
    async def one(scenario: str, answered: bool) -> tuple[list[str], list[Reason | None]]:
        call = await sim_inbound(
            **{
                "from": sim_number("00"),
                "to": sip_setup.number,
                "scenario": scenario,
                "talk": 1,
                "give_up_after": 1.5,
            }
        )
        watch = await watch_both(call["room"])
        if answered:
            await answerer(call["room"])
        identity = call["participant_identity"]
        await _both_saw_the_end(watch, identity)
        return _assert_agree(watch, identity)

    answered, gave_up = await asyncio.gather(
        one("answer_caller_hangup", True), one("caller_gives_up", False)
    )
    assert answered == (["ringing", "active", "hangup"], [Reason.CLIENT_INITIATED])
    assert gave_up[0] == ["ringing", "hangup"]


@dataclass
class Held:
    """A signal link in a room whose answered call stays up until our side ends it."""

    link: SignalLink
    seen: Recorded = field(default_factory=Recorded)
    renewals: list[bool] = field(default_factory=list)
    lost: list[tuple[str | None, str]] = field(default_factory=list)


HoldCall = Callable[[str], Awaitable[Held]]


@pytest_asyncio.fixture
async def hold_call(
    stack: Stack, settings: Settings, place_call: PlaceCall
) -> AsyncIterator[HoldCall]:
    """`await hold_call(room)`: a signal link joins `room`, then a call (identity
    `held`) is placed there and answered."""
    backends: list[SignalObservers] = []

    async def _hold(room: str) -> Held:
        seen = Recorded()
        backend = SignalObservers(seen.emit)
        backends.append(backend)
        renewals: list[bool] = []
        lost: list[tuple[str | None, str]] = []
        hooks = LinkHooks(
            lost=lambda room, closed_sid, why: lost.append((closed_sid, why)),
            renewed=lambda room, ok: renewals.append(ok),
        )
        token = observer_token(
            settings.livekit_api_key, settings.livekit_api_secret, room, "holder"
        )
        link = await backend.join(room, stack.ws_url, token, 10, hooks)
        await place_call(sim_number("01"), room=room, identity="held", ring=0.2, wait_for_end=False)
        await seen.wait(lambda: "active" in seen.statuses("held"), 20, "the call answered")
        return Held(link, seen, renewals, lost)

    try:
        yield _hold
    finally:
        for backend in backends:
            await backend.close()


async def test_a_session_is_renewed_before_the_minute_and_the_link_keeps_reporting(
    hold_call: HoldCall, lkapi: api.LiveKitAPI
) -> None:
    """livekit-server removes a participant that never became ACTIVE 60 s after its
    join (JOIN_FAILURE). The link replaces its session before that, and the call's
    later changes still arrive, through the new session."""
    room = unique_room("signal-minute")
    held = await hold_call(room)
    # Past the server's minute: without renewal the link would be gone by now.
    await asyncio.sleep(65)
    assert held.lost == []
    assert not held.link.lost.is_set()
    assert held.renewals, "no renewal in 65 s"
    assert all(held.renewals), held.renewals
    await lkapi.room.remove_participant(api.RoomParticipantIdentity(room=room, identity="held"))
    seen = held.seen
    await seen.wait(lambda: bool(seen.left("held")), 20, "the removal seen")
    assert seen.left("held") == [Reason.PARTICIPANT_REMOVED]
    # A renewal reports only what changed: the call was seen once, when it joined.
    assert sum(isinstance(event, ParticipantSeen) for event in seen.events) == 1


async def test_a_deleted_room_ends_the_link_with_the_room(
    hold_call: HoldCall, lkapi: api.LiveKitAPI
) -> None:
    held = await hold_call(unique_room("signal-deleted"))
    link = held.link
    await lkapi.room.delete_room(api.DeleteRoomRequest(room=link.room))
    await asyncio.wait_for(link.lost.wait(), 10)
    assert held.lost == [(link.room_sid, "ROOM_DELETED")]
    ended = [e for e in held.seen.events if isinstance(e, RoomEnded)]
    assert [(e.reason, e.room_sid) for e in ended] == [(Reason.ROOM_DELETED, link.room_sid)]


async def test_a_refused_join_says_why_without_the_token(stack: Stack, settings: Settings) -> None:
    room = unique_room("signal-refused")
    wrong = api.AccessToken(settings.livekit_api_key, "x" * 40)
    token = wrong.with_identity("refused").with_grants(api.VideoGrants(room_join=True, room=room))
    jwt = token.to_jwt()
    backend = SignalObservers(lambda event: None)
    try:
        with pytest.raises(JoinFailed, match="HTTP 401") as refused:
            await backend.join(room, stack.ws_url, jwt, 10, LinkHooks())
        assert jwt not in str(refused.value)
    finally:
        await backend.close()
