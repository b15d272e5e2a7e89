"""The two API sources besides the room: webhooks and RoomService listings.

Both speak livekit-api's protobuf types (`livekit.protocol`), never `livekit.rtc`.
Webhooks are verified with livekit-api's own `TokenVerifier` (JWT signed with the API
key) before their body is read, then by the sha256 of the body; they are an equal
source, not a fallback: livekit-server sends them at once, while it batches the joins
and leaves of participants that publish nothing. A listing gives snapshots, and tells
which known calls are gone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import aiohttp

# PyJWT is what livekit-api verifies tokens with; its errors are the bad signatures.
import jwt
from google.protobuf.json_format import ParseDict
from livekit import api
from livekit.protocol import models, webhook

from monitor.model import (
    Event,
    Participant,
    ParticipantLeft,
    ParticipantSeen,
    RoomEnded,
    Source,
    parse_reason,
)

__all__ = [
    "WEBHOOK_EVENTS_USED",
    "RoomListings",
    "WebhookIntake",
    "WebhookRejected",
    "events_of_webhook",
    "listing_events",
    "participant_from_info",
    "webhook_result",
]


_SIP = models.ParticipantInfo.Kind.SIP


def participant_from_info(info: models.ParticipantInfo) -> Participant:
    joined_ms = info.joined_at_ms or info.joined_at * 1000
    return Participant(
        sid=info.sid,
        identity=info.identity,
        attributes=dict(info.attributes),
        is_sip=info.kind == models.ParticipantInfo.Kind.SIP,
        joined_at=joined_ms / 1000.0 if joined_ms else None,
    )


class WebhookRejected(Exception):
    """A webhook that is not ours or not readable; `result` is its metric label."""

    def __init__(self, result: str, message: str) -> None:
        super().__init__(message)
        self.result = result


class WebhookIntake:
    """Verifies webhooks signed with our API key and turns them into events.

    In two steps, so that a request's body is read only once its token is known to be
    ours: `authenticate` checks the Authorization header (livekit-api's TokenVerifier:
    HS256 signature with our secret, expiry, issuer our key) and returns the body hash
    the token signs; `events` checks the body against it and parses it (what livekit-api's
    WebhookReceiver does after the same verification, which it cannot be asked to skip).
    """

    def __init__(self, api_key: str, api_secret: str) -> None:
        self._verifier = api.TokenVerifier(api_key, api_secret)

    def authenticate(self, authorization: str) -> bytes:
        """The sha256 of the body that the webhook's token signs; WebhookRejected if
        the token is not ours."""
        if not authorization:
            raise WebhookRejected("unauthorized", "missing Authorization header")
        token = authorization.removeprefix("Bearer ").strip()
        try:
            claims = self._verifier.verify(token)
        except jwt.PyJWTError as error:  # jwt raises many kinds; all mean "not signed by us"
            raise WebhookRejected("unauthorized", f"bad token: {type(error).__name__}") from None
        except Exception as error:  # livekit-api reading grants of an odd shape
            raise WebhookRejected("unauthorized", f"bad token: {type(error).__name__}") from None
        if not claims.sha256:
            raise WebhookRejected("unauthorized", "token carries no body hash")
        try:
            return base64.b64decode(claims.sha256, validate=True)
        except (ValueError, TypeError):
            raise WebhookRejected("unauthorized", "token's body hash is not base64") from None

    def events(self, body: bytes, sha256: bytes, at: float) -> list[Event]:
        """The events of a webhook whose token `authenticate` accepted, if `body` is
        the one it signs ([] for kinds we do not use)."""
        return events_of_webhook(self.parse(body, sha256), at)

    def parse(self, body: bytes, sha256: bytes) -> webhook.WebhookEvent:
        """The webhook whose token `authenticate` accepted, if `body` is the one it
        signs; raises WebhookRejected."""
        if not hmac.compare_digest(hashlib.sha256(body).digest(), sha256):
            raise WebhookRejected("unauthorized", "body hash mismatch")
        try:
            data = json.loads(body.decode("utf-8"))
            if isinstance(data, dict) and not _may_be_a_call(data):
                # Most webhooks are of kinds not read (tracks, room_started) or about
                # participants that are no call (this monitor's own observer); protobuf's
                # JSON parser, pure Python, was a tenth of the main process on them.
                return webhook.WebhookEvent(event=data["event"])
            return ParseDict(data, webhook.WebhookEvent(), ignore_unknown_fields=True)
        except UnicodeDecodeError:
            raise WebhookRejected("bad_request", "body is not UTF-8") from None
        except Exception as error:  # signed by us, but not a WebhookEvent
            text = str(error)[:200]
            raise WebhookRejected("bad_request", f"{type(error).__name__}: {text}") from None

    def receive(self, body: str, authorization: str, at: float) -> list[Event]:
        """Both steps at once, for a body already read."""
        return self.events(body.encode(), self.authenticate(authorization), at)


# The webhook kinds the monitor reads; livekit-server can be told to send only these
# (`webhook.filter_params.include_events`, README "Running it next to LiveKit").
WEBHOOK_EVENTS_USED = (
    "participant_joined",
    "participant_left",
    "participant_connection_aborted",
    "room_finished",
)


def _may_be_a_call(data: dict[str, Any]) -> bool:
    """Whether a webhook's JSON may give events: a kind read, and for a participant's,
    a SIP one (protobuf JSON spells the enum by name or by number)."""
    kind = data.get("event")
    if not isinstance(kind, str) or kind not in WEBHOOK_EVENTS_USED:
        return not isinstance(kind, str)  # not a string: let the parser say what is wrong
    if not kind.startswith("participant_"):
        return True
    participant = data.get("participant")
    if not isinstance(participant, dict):
        return participant is not None
    return participant.get("kind") in ("SIP", _SIP)


def webhook_result(event: webhook.WebhookEvent, events: list[Event]) -> str:
    """How a webhook counts in `webhook_requests_total`, once its events are known."""
    if events:
        return "ok"
    return "not_a_call" if event.event in WEBHOOK_EVENTS_USED else "ignored"


def events_of_webhook(event: webhook.WebhookEvent, at: float) -> list[Event]:
    room = event.room.name
    room_sid = event.room.sid
    if event.event.startswith("participant_") and event.participant.kind != _SIP:
        # Not a call: agents, browsers, and this monitor's own observer, whose every
        # renewed session ends with a participant_connection_aborted webhook.
        return []
    if event.event == "participant_joined":
        return [
            ParticipantSeen(
                at, Source.WEBHOOK, room, participant_from_info(event.participant), room_sid
            )
        ]
    if event.event in ("participant_left", "participant_connection_aborted"):
        info = event.participant
        reason, raw = parse_reason(info.disconnect_reason)
        return [
            ParticipantLeft(
                at, Source.WEBHOOK, room, participant_from_info(info), reason, raw, room_sid
            )
        ]
    if event.event == "room_finished":
        return [RoomEnded(at, Source.WEBHOOK, room, None, room_sid)]
    return []


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
