"""The two API sources besides the room: webhooks and RoomService listings.

Both speak livekit-api's protobuf types (`livekit.protocol`), never `livekit.rtc`.
Webhooks are verified with livekit-api's own `WebhookReceiver` (JWT signed with the API
key, sha256 of the body); they are an equal source, not a fallback: livekit-server
sends them at once, while it batches the joins and leaves of participants that publish
nothing. A listing gives snapshots, and tells which known calls are gone.
"""

from __future__ import annotations

from collections.abc import Iterable

# PyJWT is what livekit-api verifies tokens with; its errors are the bad signatures.
import jwt
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
    "WebhookIntake",
    "WebhookRejected",
    "events_of_webhook",
    "listing_events",
    "participant_from_info",
]


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


# livekit-api's WebhookReceiver raises plain Exceptions for the body-hash checks.
_HASH_ERRORS = {
    "sha256 was not found in the token": "token carries no body hash",
    "hash mismatch": "Exception: hash mismatch",
}


class WebhookIntake:
    """Verifies webhooks signed with our API key and turns them into events."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        self._verifier = api.TokenVerifier(api_key, api_secret)
        self._receiver = api.WebhookReceiver(self._verifier)

    def receive(self, body: str, authorization: str, at: float) -> list[Event]:
        """Verify a webhook and turn it into events ([] for kinds we do not use)."""
        if not authorization:
            raise WebhookRejected("unauthorized", "missing Authorization header")
        token = authorization.removeprefix("Bearer ").strip()
        try:
            # One verification: the receiver checks the JWT, then the body's hash, then
            # parses the body (verifying first on our own as well cost a third of the
            # monitor's webhook time, bench/notes.md); its errors tell the steps apart.
            event = self._receiver.receive(body, token)
        except jwt.PyJWTError as error:  # jwt raises many kinds; all mean "not signed by us"
            raise WebhookRejected("unauthorized", f"bad token: {type(error).__name__}") from None
        except Exception as error:
            text = str(error)
            if text in _HASH_ERRORS:
                raise WebhookRejected("unauthorized", _HASH_ERRORS[text]) from None
            # Signed by us, but not a WebhookEvent.
            raise WebhookRejected("bad_request", f"{type(error).__name__}: {text[:200]}") from None
        return events_of_webhook(event, at)


# The webhook kinds the monitor reads; livekit-server can be told to send only these
# (`webhook.filter_params.include_events`, README "Running it next to LiveKit").
WEBHOOK_EVENTS_USED = (
    "participant_joined",
    "participant_left",
    "participant_connection_aborted",
    "room_finished",
)


def events_of_webhook(event: webhook.WebhookEvent, at: float) -> list[Event]:
    room = event.room.name
    room_sid = event.room.sid
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
