"""What the unit tests of the HTTP surface share: a monitor to serve, tokens signed as
livekit-server and the hook sign them, a webhook body, and a look at what was queued."""

from __future__ import annotations

import base64
import hashlib
import json

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient
from google.protobuf.json_format import MessageToJson
from livekit import api
from livekit.protocol import models, webhook

from monitor.client.hook_token import DIAL, mint_hook_token
from monitor.core.model import (
    Event,
)
from monitor.runtime.config import load_settings
from monitor.runtime.service import Monitor

Client = TestClient[web.Request, web.Application]
KEY = "APIunit"
SECRET = "unit-test-secret-that-is-long-enough-0123456789"


def make_monitor() -> Monitor:
    settings = load_settings(
        {"http_port": "0", "webhook_max_bytes": "4096"},
        {"LIVEKIT_URL": "ws://127.0.0.1:1", "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET},
    )
    return Monitor(settings)


def signed(body: str | bytes, secret: str = SECRET) -> str:
    raw = body.encode() if isinstance(body, str) else body
    digest = base64.b64encode(hashlib.sha256(raw).digest()).decode()
    return api.AccessToken(KEY, secret).with_sha256(digest).to_jwt()


def bearer(secret: str = SECRET, sip: api.SIPGrants | None = None) -> dict[str, str]:
    """A dialer's own token: signed with the key, with the grant to place SIP calls
    (which the hook refuses: livekit-server would let a leaked one dial)."""
    token = api.AccessToken(KEY, secret).with_sip_grants(sip or api.SIPGrants(call=True))
    return {"Authorization": "Bearer " + token.to_jwt()}


def hook_headers(purpose: str, body: bytes | None = None, secret: str = SECRET) -> dict[str, str]:
    """The hook's own credential for `purpose` (bound to `body` for /dial)."""
    return {"Authorization": "Bearer " + mint_hook_token(KEY, secret, purpose, body)}


async def post_dial(
    client: Client, payload: object, headers: dict[str, str] | None = None
) -> aiohttp.ClientResponse:
    """POST `payload` (bytes as they are, anything else as JSON) to /dial, with a hook
    token for exactly that body unless `headers` says otherwise."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    if headers is None:
        headers = hook_headers(DIAL, body)
    return await client.post("/dial", data=body, headers=headers)


def room_join_token() -> dict[str, str]:
    """What a browser participant holds: signed with the same key, no SIP grant."""
    grants = api.VideoGrants(room_join=True, room="call-b")
    token = api.AccessToken(KEY, SECRET).with_identity("browser").with_grants(grants)
    return {"Authorization": "Bearer " + token.to_jwt()}


def participant_left_body(number: str = "+15551112222") -> str:
    event = webhook.WebhookEvent(
        event="participant_left",
        id="EV_1",
        created_at=1_795_619_902,
        room=models.Room(name="call-e", sid="RM_1"),
        participant=models.ParticipantInfo(
            sid="PA_1",
            identity="callee",
            kind=models.ParticipantInfo.Kind.SIP,
            attributes={
                "sip.callID": "SCL_1",
                "sip.callStatus": "dialing",
                "sip.phoneNumber": number,
                "sip.trunkID": "ST_1",
            },
            disconnect_reason=models.DisconnectReason.USER_UNAVAILABLE,
            joined_at_ms=1_795_619_902_402,
        ),
    )
    return MessageToJson(event)


def sample(monitor: Monitor, name: str, labels: dict[str, str]) -> float:
    value = monitor.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def queued(monitor: Monitor) -> list[Event]:
    items: list[Event] = []
    while not monitor.queue.empty():
        items.append(monitor.queue.get_nowait())
    return items
