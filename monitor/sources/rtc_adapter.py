"""The one module that imports `livekit.rtc`: a hidden observer in one room.

It turns the room's events into the machine's typed events and hands them to `emit`.
Handlers are tiny and synchronous; every `on` has its `off` in `close()`. After
connecting it seeds the calls from the participants already present, which get no
`participant_connected` event (Python SDK rtc/room.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from livekit import rtc

from monitor.core.model import (
    ROOM_GONE_REASONS,
    AttributesChanged,
    Event,
    Participant,
    ParticipantLeft,
    ParticipantSeen,
    Reason,
    RoomEnded,
    Source,
    parse_reason,
)

__all__ = ["ObserverHooks", "RoomObserver", "native_logs_to_stderr", "participant_of"]

_SIP = rtc.ParticipantKind.PARTICIPANT_KIND_SIP
_CONNECTED = rtc.ConnectionState.CONN_CONNECTED

# Disconnects of abandoned connects, kept referenced until they are done.
_leaving: set[asyncio.Task[None]] = set()


def _leave_once_connected(room: rtc.Room, connecting: asyncio.Future[None]) -> None:
    if connecting.cancelled() or connecting.exception() is not None:
        return
    task = asyncio.ensure_future(room.disconnect())
    _leaving.add(task)
    task.add_done_callback(_leaving.discard)


def native_logs_to_stderr() -> bool:
    """Have the SDK's native library log to stderr (filtered by `RUST_LOG`) instead of
    handing every record to Python; True if it could be switched.

    livekit 1.2.1 initializes its native library with `capture_logs=true`, and its
    logger then forwards every record at every level, trace included: about 1,300
    per join and 30 to 60 a second per joined room, formatted, sent across the FFI,
    parsed in Python and dropped there (bench/notes.md). That was half the CPU of a
    join. The library takes a second initialization as a new configuration (livekit-ffi
    `FfiServer::setup` replaces it), so it is initialized again with capture off; the
    SDK has no public switch for it, hence the private names, checked here so that an
    SDK that moved them keeps its logging as it was.
    """
    try:
        from livekit.rtc import _ffi_client
        from livekit.rtc.version import __version__

        library = _ffi_client.FfiClient.instance._ffi_lib
        library.livekit_ffi_initialize(
            _ffi_client.ffi_event_callback, False, b"python", __version__.encode("ascii")
        )
    except (ImportError, AttributeError, TypeError):
        return False
    return True


def participant_of(remote: rtc.Participant) -> Participant:
    """Our snapshot of an rtc participant."""
    joined = remote.joined_at
    return Participant(
        sid=remote.sid,
        identity=remote.identity,
        attributes=dict(remote.attributes),
        is_sip=remote.kind == _SIP,
        joined_at=None if joined is None else joined.timestamp(),
    )


@dataclass
class ObserverHooks:
    """What the observer tells its owner, besides the events."""

    # The connection ended without the room ending (network, server restart, kicked).
    lost: Callable[[str, Reason | None], None] = lambda room, reason: None
    reconnecting: Callable[[str], None] = lambda room: None
    reconnected: Callable[[str], None] = lambda room: None


@dataclass
class RoomObserver:
    room_name: str
    url: str
    token: str
    emit: Callable[[Event], None]
    hooks: ObserverHooks = field(default_factory=ObserverHooks)
    clock: Callable[[], float] = time.time
    room: rtc.Room | None = None
    room_sid: str = ""
    _handlers: list[tuple[str, Callable[..., Any]]] = field(default_factory=list)
    _closing: bool = False

    async def connect(self, within: float) -> None:
        """Join the room hidden within `within` seconds; raises on failure or timeout,
        leaving nothing behind."""
        room = rtc.Room()
        self.room = room
        self._subscribe(room)
        options = rtc.RoomOptions(auto_subscribe=False)
        connecting = asyncio.ensure_future(room.connect(self.url, self.token, options))
        try:
            # Shielded: cancelling the SDK's connect midway leaves its FFI server waiting
            # for a request that never comes; it then panics, and the SDK SIGTERMs the
            # whole process (livekit 1.2.1, rtc/_ffi_client.py). A connect that is late
            # or abandoned runs to its end and is then left (_leave_once_connected).
            await asyncio.wait_for(asyncio.shield(connecting), within)
            self.room_sid = await asyncio.wait_for(room.sid, within)
        except BaseException:
            connecting.add_done_callback(partial(_leave_once_connected, room))
            await self.close()
            raise
        self._seed(Source.ROOM)

    def reseed(self) -> None:
        """Report the SIP participants in the room now (ParticipantSeen), if connected."""
        if self.room is not None and self.room.connection_state == _CONNECTED:
            self._seed(Source.ROOM)

    def _seed(self, source: Source) -> None:
        assert self.room is not None
        now = self.clock()
        for remote in list(self.room.remote_participants.values()):
            if remote.kind == _SIP:
                self.emit(
                    ParticipantSeen(
                        now, source, self.room_name, participant_of(remote), self.room_sid
                    )
                )

    def _subscribe(self, room: rtc.Room) -> None:
        def connected(remote: rtc.RemoteParticipant) -> None:
            if remote.kind == _SIP:
                self.emit(
                    ParticipantSeen(
                        self.clock(),
                        Source.ROOM,
                        self.room_name,
                        participant_of(remote),
                        self.room_sid,
                    )
                )

        def attributes_changed(changed: dict[str, str], remote: rtc.Participant) -> None:
            if isinstance(remote, rtc.RemoteParticipant) and remote.kind == _SIP:
                self.emit(
                    AttributesChanged(
                        self.clock(),
                        Source.ROOM,
                        self.room_name,
                        participant_of(remote),
                        dict(changed),
                        self.room_sid,
                    )
                )

        def disconnected_participant(remote: rtc.RemoteParticipant) -> None:
            # While our own connection is being restored the SDK reports everyone as
            # gone, with no reason, and as connected again once it is back (livekit
            # 1.2.1). Only a connected room's word counts; a real leave during the gap
            # still comes by webhook or by reconciliation.
            if room.connection_state != _CONNECTED:
                return
            if remote.kind == _SIP:
                reason, raw = parse_reason(remote.disconnect_reason)
                self.emit(
                    ParticipantLeft(
                        self.clock(),
                        Source.ROOM,
                        self.room_name,
                        participant_of(remote),
                        reason,
                        raw,
                        self.room_sid,
                    )
                )

        def disconnected(reason: int) -> None:
            if self._closing:
                return
            parsed, _ = parse_reason(reason)
            # The observer's own end means the room is gone only for these reasons.
            if parsed in ROOM_GONE_REASONS:
                self.emit(
                    RoomEnded(self.clock(), Source.ROOM, self.room_name, parsed, self.room_sid)
                )
            self.hooks.lost(self.room_name, parsed)

        def reconnecting() -> None:
            self.hooks.reconnecting(self.room_name)

        def reconnected() -> None:
            # Changes made while the signal connection was down come back only as state.
            self._seed(Source.ROOM)
            self.hooks.reconnected(self.room_name)

        self._handlers = [
            ("participant_connected", connected),
            ("participant_attributes_changed", attributes_changed),
            ("participant_disconnected", disconnected_participant),
            ("disconnected", disconnected),
            ("reconnecting", reconnecting),
            ("reconnected", reconnected),
        ]
        for name, handler in self._handlers:
            room.on(name, handler)  # type: ignore[arg-type]

    async def close(self) -> None:
        """Leave the room and drop every handler; safe to call more than once."""
        self._closing = True
        room, self.room = self.room, None
        if room is None:
            return
        for name, handler in self._handlers:
            room.off(name, handler)  # type: ignore[arg-type]
        self._handlers = []
        if room.isconnected():
            await room.disconnect()
