"""RoomService listings: each room's participants, asked with a token signed once.

A listing gives snapshots, and tells which known calls are gone (the runtime's
reconciliation decides what to make of a miss).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import timedelta

import aiohttp
from livekit import api
from livekit.protocol import models

from monitor.core.model import Event, ParticipantSeen, Source
from monitor.sources.protocol import participant_from_info

__all__ = ["RoomListings", "listing_events"]

_SIP = models.ParticipantInfo.Kind.SIP


class RoomListings:
    """ListParticipants of any room, each room's token signed once and reused.

    livekit-server wants `room_admin` for that very room, and livekit-api signs a new
    JWT for every request: at 1,000 rooms listed every 30 s that signing was a sixth of
    the monitor's main process (bench/notes.md). Here a room's token lives
    `lifetime` seconds and is used for the first half of it, through livekit-api's
    token mode; every room shares one HTTP session.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        api_secret: str,
        session: aiohttp.ClientSession,
        lifetime: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url, self._key, self._secret = url, api_key, api_secret
        self._session = session
        self._lifetime = lifetime
        self._clock = clock
        self._clients: dict[str, tuple[float, api.LiveKitAPI]] = {}

    async def participants(self, room: str) -> api.ListParticipantsResponse:
        client = self._client(room)
        return await client.room.list_participants(api.ListParticipantsRequest(room=room))

    def keep_only(self, rooms: Iterable[str]) -> None:
        """Forget the tokens of rooms no longer listed."""
        wanted = set(rooms)
        self._clients = {room: c for room, c in self._clients.items() if room in wanted}

    def _client(self, room: str) -> api.LiveKitAPI:
        now = self._clock()
        cached = self._clients.get(room)
        if cached is not None and cached[0] > now:
            return cached[1]
        token = (
            api.AccessToken(self._key, self._secret)
            .with_grants(api.VideoGrants(room_admin=True, room=room))
            .with_ttl(timedelta(seconds=self._lifetime))
            .to_jwt()
        )
        client = api.LiveKitAPI.with_token(token, self._url, session=self._session)
        self._clients[room] = (now + self._lifetime / 2, client)
        return client


def listing_events(
    at: float,
    room: str,
    room_sid: str,
    listed: Iterable[models.ParticipantInfo],
) -> tuple[list[Event], set[str]]:
    """Snapshots of the SIP participants a listing shows, and the sids it shows."""
    events: list[Event] = []
    sids: set[str] = set()
    for info in listed:
        sids.add(info.sid)
        if info.kind == models.ParticipantInfo.Kind.SIP:
            events.append(
                ParticipantSeen(at, Source.RECONCILE, room, participant_from_info(info), room_sid)
            )
    return events, sids
