"""What the integration tests see of a room and of the webhooks, apart from the monitor:
a hidden WebRTC observer through the LiveKit SDK (the oracle the monitor's observers
are checked against) and a recorder of livekit-server's webhooks, verified."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from aiohttp import web
from livekit import api, rtc
from livekit.protocol import models

from monitor.runtime.rooms import observer_token
from stack import Stack
from stack.participants import Answerer

T = TypeVar("T")


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
        # The monitor's own observer token: the oracle sees what the monitor may see.
        token = observer_token(stack.api_key, stack.api_secret, self.room_name, self.identity)
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
