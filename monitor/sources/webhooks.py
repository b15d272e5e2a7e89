"""livekit-server's webhooks: verified, then turned into the machine's events.

They speak livekit-api's protobuf types (`livekit.protocol`), never `livekit.rtc`. A
webhook is verified with livekit-api's own `TokenVerifier` (JWT signed with the API
key) before its body is read, then by the sha256 of the body. Webhooks are an equal
source, not a fallback: livekit-server sends them at once, while it batches the joins
and leaves of participants that publish nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

# PyJWT is what livekit-api verifies tokens with; its errors are the bad signatures.
import jwt
from google.protobuf.json_format import ParseDict
from livekit import api
from livekit.protocol import models, webhook

from monitor.core.model import (
    Event,
    ParticipantLeft,
    ParticipantSeen,
    RoomEnded,
    Source,
    parse_reason,
)
from monitor.sources.protocol import participant_from_info

__all__ = [
    "WEBHOOK_EVENTS_USED",
    "WebhookIntake",
    "WebhookRejected",
    "events_of_webhook",
    "webhook_result",
]


_SIP = models.ParticipantInfo.Kind.SIP


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

    def __init__(
        self, api_key: str, api_secret: str, owns: Callable[[str], bool] = lambda room: True
    ) -> None:
        self._verifier = api.TokenVerifier(api_key, api_secret)
        self.owns = owns  # which rooms are this replica's (all, with one shard)

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
            if isinstance(data, dict):
                # Most webhooks are of kinds not read (tracks, room_started) or about
                # participants that are no call (this monitor's own observer), and with
                # shards most are about rooms another replica owns; protobuf's JSON
                # parser, pure Python, was a tenth of the main process on them.
                room = _room_name(data)
                if room is not None and not self.owns(room):
                    return webhook.WebhookEvent(room=models.Room(name=room))
                if not _may_be_a_call(data):
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
    return participant.get("kind") in ("SIP", _SIP, str(_SIP))


def _room_name(data: dict[str, Any]) -> str | None:
    room = data.get("room")
    name = room.get("name") if isinstance(room, dict) else None
    return name if isinstance(name, str) and name else None


def webhook_result(
    event: webhook.WebhookEvent, events: list[Event], owns: Callable[[str], bool] = lambda r: True
) -> str:
    """How a webhook counts in `webhook_requests_total`, once its events are known."""
    if event.room.name and not owns(event.room.name):
        return "other_shard"
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
