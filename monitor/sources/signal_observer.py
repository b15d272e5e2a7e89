"""The room observer on livekit-server's signal WebSocket alone: no WebRTC, no child process.

A hidden, agent-kind participant opens only the signal connection (`/rtc?access_token=`,
binary `SignalRequest` out and `SignalResponse` in, from livekit-protocol). livekit-server
answers with a `JoinResponse` that lists the participants already in the room, then
sends a `ParticipantUpdate` for every change of theirs: attributes, state, and the leave
with its reason. That is all the monitor reads of a room, so it never sets up a
PeerConnection: a join costs about a millisecond of CPU, against a WebRTC client's
hundred (bench/RESULTS.md).

The price is the one-minute rule: livekit-server removes a participant that has not
become ACTIVE one minute after it joined (`ParticipantCloseReasonJoinTimeout`,
pkg/rtc/room.go; the observer gets a `leave` with JOIN_FAILURE). So a link renews its
session before the minute is up: a second connection with the same identity replaces
the first (livekit-server removes the old session, which gets `leave`
DUPLICATE_IDENTITY, then joins the new one, milliseconds apart), and the new
`JoinResponse`, which shows what changed in that gap, is read as one more update.
Each session the server ends this way sends one `participant_connection_aborted`
webhook for the observer's identity.

Everything else that ends a session (the room closed, a dropped socket, a missed pong,
any other `leave`) ends the link and tells the service, which joins again with backoff
while the room matters. Message kinds the monitor does not use are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import aiohttp
import structlog
from google.protobuf.message import DecodeError
from livekit.protocol import models
from livekit.protocol import rtc as signal

from monitor.core.model import (
    ROOM_GONE_REASONS,
    AttributesChanged,
    Event,
    ParticipantLeft,
    ParticipantSeen,
    Reason,
    RoomEnded,
    Source,
    parse_reason,
)
from monitor.sources.protocol import participant_from_info
from monitor.sources.room_link import JoinFailed, LinkHooks

__all__ = ["ParticipantView", "SignalLink", "SignalObservers"]

log = structlog.get_logger("call_monitor")

# The signal protocol version the client speaks (what livekit-server 1.13 and the
# Python SDK 1.2 use).
SIGNAL_PROTOCOL = 16
# When a session is renewed, counted from its join: livekit-server removes it at 60 s.
RENEW_AFTER_SECONDS = 45.0
# A failed renewal is tried again this often; every attempt must have its JoinResponse
# by the deadline, after which the server's removal (JOIN_FAILURE) ends the link.
RENEW_RETRY_SECONDS = 3.0
RENEW_DEADLINE_SECONDS = 58.0
# Used when the JoinResponse leaves them out (livekit-server sends 5 s and 15 s).
_DEFAULT_PING_INTERVAL = 5.0
_DEFAULT_PING_TIMEOUT = 15.0
# Leaving is best effort and never holds up the monitor.
_LEAVE_SECONDS = 1.0
_MAX_MESSAGE_BYTES = 4 * 2**20

_SOCKET_ENDS = frozenset(
    {
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSING,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.ERROR,
    }
)
_SIP = models.ParticipantInfo.Kind.SIP
_DISCONNECTED = models.ParticipantInfo.State.DISCONNECTED


@functools.cache
def _client_version() -> str:
    try:
        return metadata.version("livekit-call-monitor")
    except metadata.PackageNotFoundError:
        return "0"


def _changed(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, str]:
    """Keys set or changed, and keys removed (as ""), as the SDKs report them."""
    changed = {key: value for key, value in after.items() if before.get(key) != value}
    changed.update({key: "" for key in before if key not in after})
    return changed


@dataclass
class ParticipantView:
    """What one room link knows of the room's SIP participants, and the events the
    server's snapshots of them make. Pure: no I/O; time is passed in."""

    room: str
    room_sid: str = ""
    participants: dict[str, models.ParticipantInfo] = field(default_factory=dict)
    _left: set[str] = field(default_factory=set)

    def update(self, infos: Iterable[models.ParticipantInfo], at: float) -> list[Event]:
        """The events of one `ParticipantUpdate` (or a JoinResponse's list)."""
        events: list[Event] = []
        for info in infos:
            if info.kind != _SIP or info.sid in self._left:
                continue  # not a call, or a late copy of one that left
            known = self.participants.get(info.sid)
            if known is not None and info.version < known.version:
                continue  # the server's versions order a participant's updates
            if info.state == _DISCONNECTED:
                self.participants.pop(info.sid, None)
                self._left.add(info.sid)
                reason, raw = parse_reason(info.disconnect_reason)
                events.append(
                    ParticipantLeft(
                        at,
                        Source.ROOM,
                        self.room,
                        participant_from_info(info),
                        reason,
                        raw,
                        self.room_sid,
                    )
                )
                continue
            self.participants[info.sid] = info
            if known is None:
                events.append(self._seen(info, at))
                continue
            changed = _changed(known.attributes, info.attributes)
            if changed:
                events.append(
                    AttributesChanged(
                        at,
                        Source.ROOM,
                        self.room,
                        participant_from_info(info),
                        changed,
                        self.room_sid,
                    )
                )
        return events

    def resume(self, infos: Iterable[models.ParticipantInfo], at: float) -> list[Event]:
        """The events of a new session's JoinResponse: an update for those it lists.

        One it no longer lists left while no session watched (a renewal is one step
        on the server, so this is rare): it is forgotten here, and its end comes from
        the webhook or the listing, which carry the reason.
        """
        listed = list(infos)
        present = {info.sid for info in listed}
        for sid in [sid for sid in self.participants if sid not in present]:
            del self.participants[sid]
        self._left.clear()  # a new session never sends the ones that left before it
        return self.update(listed, at)

    def snapshot(self, at: float) -> list[Event]:
        """Every SIP participant present, as ParticipantSeen."""
        return [self._seen(info, at) for info in self.participants.values()]

    def _seen(self, info: models.ParticipantInfo, at: float) -> ParticipantSeen:
        return ParticipantSeen(
            at, Source.ROOM, self.room, participant_from_info(info), self.room_sid
        )


def _describe(error: BaseException) -> str:
    """Why a connection failed, never with its URL: the token is in the query."""
    if isinstance(error, aiohttp.WSServerHandshakeError):
        return f"livekit-server refused the join: HTTP {error.status}"
    if isinstance(error, aiohttp.ClientConnectorError):
        cause = error.os_error
        return f"cannot connect: {type(cause).__name__}: {cause.strerror or cause}"
    if isinstance(error, TimeoutError):
        return "no JoinResponse in time"
    if isinstance(error, JoinFailed):
        return str(error)
    return type(error).__name__


@dataclass(eq=False)
class _Session:
    """One signal WebSocket: one participant session on the server."""

    ws: aiohttp.ClientWebSocketResponse
    join: signal.JoinResponse
    opened: float  # monotonic
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def ping_interval(self) -> float:
        return float(self.join.ping_interval) or _DEFAULT_PING_INTERVAL

    @property
    def ping_timeout(self) -> float:
        return float(self.join.ping_timeout) or _DEFAULT_PING_TIMEOUT

    async def send(self, request: signal.SignalRequest) -> None:
        if not self.ws.closed:
            await self.ws.send_bytes(request.SerializeToString())

    async def close(self, leave: bool) -> None:
        others = [task for task in self.tasks if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_LEAVE_SECONDS):
                if leave:
                    # Ends the session on the server at once, not at its timeout.
                    request = signal.SignalRequest(
                        leave=signal.LeaveRequest(
                            reason=models.DisconnectReason.CLIENT_INITIATED,
                            action=signal.LeaveRequest.Action.DISCONNECT,
                        )
                    )
                    await self.send(request)
                await self.ws.close()


def _parse(data: bytes) -> signal.SignalResponse | None:
    response = signal.SignalResponse()
    try:
        response.ParseFromString(data)
    except DecodeError:
        return None
    return response


async def _first_join(ws: aiohttp.ClientWebSocketResponse) -> signal.JoinResponse:
    """The JoinResponse, the first message that matters; raises JoinFailed."""
    async for message in ws:
        if message.type is not aiohttp.WSMsgType.BINARY:
            continue
        response = _parse(message.data)
        if response is None:
            continue
        kind = response.WhichOneof("message")
        if kind == "join":
            return response.join
        if kind == "leave":
            reason, raw = parse_reason(response.leave.reason)
            raise JoinFailed(f"livekit-server sent leave {reason or raw} before joining")
    raise JoinFailed("livekit-server closed the connection before joining")


async def _open_session(
    http: aiohttp.ClientSession, url: str, token: str, within: float
) -> _Session:
    """Connect and read up to the JoinResponse within `within` seconds; raises
    JoinFailed, leaving nothing open."""
    query = {
        "access_token": token,
        "auto_subscribe": "0",
        "protocol": str(SIGNAL_PROTOCOL),
        "sdk": "python",
        "version": _client_version(),
    }
    ws: aiohttp.ClientWebSocketResponse | None = None
    try:
        async with asyncio.timeout(within):
            ws = await http.ws_connect(
                f"{url}/rtc", params=query, max_msg_size=_MAX_MESSAGE_BYTES, autoping=True
            )
            return _Session(ws, await _first_join(ws), time.monotonic())
    except BaseException as error:
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), _LEAVE_SECONDS)
        if not isinstance(error, Exception):
            raise
        failure = _describe(error)
    # Raised outside the handler, so the original error, whose request URL holds the
    # token, is not kept as this one's context.
    raise JoinFailed(failure)


class SignalLink:
    """One room watched through the signal channel, its session renewed each minute."""

    def __init__(
        self,
        room: str,
        hooks: LinkHooks,
        emit: Callable[[Event], object],
        clock: Callable[[], float],
        open_session: Callable[[str, float], Awaitable[_Session]],
        token: str,
        within: float,
        on_closed: Callable[[SignalLink], None] = lambda link: None,
    ) -> None:
        self.room = room
        self.hooks = hooks
        self.emit = emit
        self.clock = clock
        self.lost = asyncio.Event()
        self.view = ParticipantView(room)
        self._open_session = open_session
        self._token = token  # the server's refresh_token replaces it
        self._within = within
        self._session: _Session | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._renewing = False
        # The session our own renewal replaced (DUPLICATE_IDENTITY) before the new one
        # had its JoinResponse: the renewal's result decides whether the link is lost.
        self._replaced: _Session | None = None
        self._closing = False
        self._on_closed = on_closed
        self._background: set[asyncio.Task[None]] = set()

    @property
    def room_sid(self) -> str:
        return self.view.room_sid

    @property
    def moving(self) -> bool:
        return False  # a link renews itself in place

    def reseed(self) -> None:
        if self._session is not None and not self.lost.is_set():
            self._emit_all(self.view.snapshot(self.clock()))

    async def open(self) -> None:
        """The first session; raises JoinFailed."""
        session = await self._open_session(self._token, self._within)
        self.view.room_sid = session.join.room.sid
        self._adopt(session)
        self._renewer = asyncio.get_running_loop().create_task(
            self._renew_each_minute(), name=f"renew-room-{self.room}"
        )

    async def close(self) -> None:
        """Leave the room; safe to call more than once."""
        self._closing = True
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close(leave=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        self._on_closed(self)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- sessions -------------------------------------------------------------------

    def _adopt(self, session: _Session) -> None:
        """Make `session` the one the link reads; the previous one is dropped."""
        previous, self._session = self._session, session
        loop = asyncio.get_running_loop()
        session.tasks = [
            loop.create_task(self._read(session), name=f"signal-read-{self.room}"),
            loop.create_task(self._ping(session), name=f"signal-ping-{self.room}"),
        ]
        if previous is not None:
            # Replaced on the server already (DUPLICATE_IDENTITY): nothing to leave.
            self._spawn(previous.close(leave=False))
        self._emit_all(self.view.resume(session.join.other_participants, self.clock()))

    async def _read(self, session: _Session) -> None:
        why = "socket_closed"
        try:
            while True:
                async with asyncio.timeout(session.ping_timeout):
                    message = await session.ws.receive()
                if message.type in _SOCKET_ENDS:
                    break
                if message.type is not aiohttp.WSMsgType.BINARY:
                    continue
                response = _parse(message.data)
                if response is None:
                    log.warning("signal_message_unreadable", room=self.room, size=len(message.data))
                    continue
                ended = self._on_response(session, response)
                if ended is not None:
                    why = ended
                    break
        except TimeoutError:
            why = "ping_timeout"  # no pong, nor anything else, within the server's timeout
        except aiohttp.ClientError:
            why = "socket_error"
        except Exception:  # a bug here must not leave the link dead without a word
            log.exception("signal_read_failed", room=self.room)
            why = "error"
        self._ended(session, why)

    def _on_response(self, session: _Session, response: signal.SignalResponse) -> str | None:
        """Handle one message; returns why the session ended, if it did."""
        if session is not self._session:
            return None  # a replaced session's last words
        kind = response.WhichOneof("message")
        if kind == "update":
            self._emit_all(self.view.update(response.update.participants, self.clock()))
        elif kind == "refresh_token":
            self._token = response.refresh_token
        elif kind == "leave":
            reason, raw = parse_reason(response.leave.reason)
            return str(reason) if reason is not None else f"leave_{raw}"
        return None

    async def _ping(self, session: _Session) -> None:
        while True:
            await asyncio.sleep(session.ping_interval)
            ping = signal.Ping(timestamp=int(time.time() * 1000))
            try:
                await session.send(signal.SignalRequest(ping_req=ping))
            except (aiohttp.ClientError, ConnectionError):
                return  # the reader sees the socket go

    def _ended(self, session: _Session, why: str) -> None:
        """A session ended on its own: the link is lost, unless it was replaced."""
        if session is not self._session or self._closing:
            return
        if self._renewing and why == str(Reason.DUPLICATE_IDENTITY):
            self._replaced = session  # most likely by our own renewal: it decides
            return
        self._lose(session, why)

    def _lose(self, session: _Session, why: str) -> None:
        self._session = None
        self._spawn(session.close(leave=False))
        if self._renewer is not None and self._renewer is not asyncio.current_task():
            self._renewer.cancel()
        closed = why in {str(reason) for reason in ROOM_GONE_REASONS}
        if closed:
            self.emit(RoomEnded(self.clock(), Source.ROOM, self.room, Reason(why), self.room_sid))
        if not self.lost.is_set():
            self.lost.set()
            self.hooks.lost(self.room, self.room_sid if closed else None, why)

    async def _renew_each_minute(self) -> None:
        session = self._session
        try:
            while session is not None:
                await asyncio.sleep(
                    max(0.0, session.opened + RENEW_AFTER_SECONDS - time.monotonic())
                )
                while self._session is session:
                    left = session.opened + RENEW_DEADLINE_SECONDS - time.monotonic()
                    if left <= 0:
                        return  # JOIN_FAILURE ends the link; the service joins again
                    renewed = await self._renew(session, min(self._within, left))
                    if renewed is not None:
                        self.hooks.renewed(self.room, renewed)
                    if self._session is not session:
                        break
                    await asyncio.sleep(RENEW_RETRY_SECONDS)
                session = self._session
        except Exception:  # a bug here must not leave the link to die at the minute unseen
            log.exception("signal_renew_failed", room=self.room)
            if self._session is not None:
                self._lose(self._session, "error")

    async def _renew(self, session: _Session, within: float) -> bool | None:
        """Replace `session` by a new one: True if it was, False if the attempt failed,
        None if the link no longer needed it (closed, lost, or its room closed)."""
        self._renewing, self._replaced = True, None
        try:
            fresh: _Session | None = await self._open_session(self._token, within)
        except JoinFailed as error:
            log.info("room_renew_failed", room=self.room, error=str(error))
            fresh = None
        finally:
            self._renewing = False
        replaced, self._replaced = self._replaced, None
        if self._closing or self._session is not session:
            if fresh is not None:
                self._spawn(fresh.close(leave=True))
            return None
        if fresh is None:
            if replaced is not None:  # the server ended the old session all the same
                self._lose(session, str(Reason.DUPLICATE_IDENTITY))
            return False
        if fresh.join.room.sid != self.room_sid:
            # The room closed meanwhile, and this join made a new one: leave it at once.
            self._lose(session, str(Reason.ROOM_CLOSED))
            self._spawn(fresh.close(leave=True))
            return None
        self._adopt(fresh)
        return True

    def _emit_all(self, events: list[Event]) -> None:
        for event in events:
            self.emit(event)


class SignalObservers:
    """Room links on the signal channel, all in the monitor's event loop."""

    def __init__(self, submit: Callable[[Event], object], clock: Callable[[], float] = time.time):
        self.submit = submit
        self.clock = clock
        self._http: aiohttp.ClientSession | None = None
        self._links: set[SignalLink] = set()

    async def start(self) -> None:
        if self._http is None:
            # No pooled HTTP connections to keep: each WebSocket is its own.
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def join(
        self, room: str, url: str, token: str, within: float, hooks: LinkHooks
    ) -> SignalLink:
        await self.start()
        http = self._http
        assert http is not None

        async def open_session(with_token: str, seconds: float) -> _Session:
            return await _open_session(http, url, with_token, seconds)

        link = SignalLink(
            room, hooks, self.submit, self.clock, open_session, token, within, self._links.discard
        )
        await link.open()
        self._links.add(link)
        return link

    def pids(self) -> list[int]:
        return []

    def open_links(self) -> int:
        return len(self._links)

    async def close(self) -> None:
        links, self._links = list(self._links), set()
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None
