"""The HTTP surface: webhooks, the dial hook, /calls, health, and bad requests refused.

Webhooks are signed here with livekit-api's own AccessToken, exactly as livekit-server
signs them (a JWT with the body's sha256), and verified by its WebhookReceiver.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf.json_format import MessageToJson, Parse
from livekit import api
from livekit.protocol import models, webhook

from monitor.client.dial import report_dial_failure
from monitor.client.hook_token import CALLS, DIAL
from monitor.core.model import (
    DialFailed,
    ParticipantLeft,
    ParticipantSeen,
    Reason,
    RoomEnded,
)
from monitor.core.privacy import NumberMasker
from monitor.runtime.config import load_settings
from monitor.runtime.service import Monitor
from monitor.sinks.logs import call_summary
from monitor.sources.webhooks import (
    WEBHOOK_EVENTS_USED,
    WebhookIntake,
    events_of_webhook,
    webhook_result,
)
from stack.config import free_port
from tests.unit.http_support import (
    KEY,
    SECRET,
    Client,
    hook_headers,
    participant_left_body,
    post_dial,
    queued,
    room_join_token,
    sample,
    signed,
)


async def test_a_signed_webhook_becomes_events(served: tuple[Monitor, Client]) -> None:
    monitor, client = served
    body = participant_left_body()
    response = await client.post("/webhook", data=body, headers={"Authorization": signed(body)})
    assert response.status == 200
    # Nothing to read: livekit-server's notifier closes the response unread, and Go
    # keeps the connection for the next webhook only then.
    assert response.content_length == 0
    assert await response.read() == b""
    [event] = queued(monitor)
    assert isinstance(event, ParticipantLeft)
    assert event.reason is Reason.USER_UNAVAILABLE
    assert event.participant.attributes["sip.callStatus"] == "dialing"
    assert event.participant.joined_at == pytest.approx(1_795_619_902.402)
    assert sample(monitor, "call_monitor_webhook_requests_total", {"result": "ok"}) == 1


async def test_a_webhook_arriving_in_pieces_is_read_whole(served: tuple[Monitor, Client]) -> None:
    """Off loopback a body often comes in several TCP segments."""
    monitor, client = served
    body = participant_left_body()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100].encode()
            await asyncio.sleep(0.01)

    response = await client.post("/webhook", data=pieces(), headers={"Authorization": signed(body)})
    assert response.status == 200
    [event] = queued(monitor)
    assert isinstance(event, ParticipantLeft)


def test_the_webhook_kinds_named_for_livekit_servers_filter_are_the_ones_read() -> None:
    """A filter built from WEBHOOK_EVENTS_USED (README) must not drop a kind the
    monitor reads, nor let one through that it ignores."""
    others = ("room_started", "track_published", "track_unpublished", "egress_started")
    kinds = {*WEBHOOK_EVENTS_USED, *others}
    sip = models.ParticipantInfo(sid="PA_1", kind=models.ParticipantInfo.Kind.SIP)
    read = {
        kind
        for kind in kinds
        if events_of_webhook(
            webhook.WebhookEvent(event=kind, room=models.Room(name="r"), participant=sip), 0.0
        )
    }
    assert read == set(WEBHOOK_EVENTS_USED)


async def test_a_webhook_about_a_participant_that_is_no_call_counts_as_such(
    served: tuple[Monitor, Client],
) -> None:
    monitor, client = served
    agent = models.ParticipantInfo(sid="PA_obs", identity="call-monitor-x-1", kind="AGENT")
    hook = webhook.WebhookEvent(
        event="participant_connection_aborted", room=models.Room(name="r"), participant=agent
    )
    body = MessageToJson(hook)
    response = await client.post("/webhook", data=body, headers={"Authorization": signed(body)})
    assert response.status == 200
    assert queued(monitor) == []
    assert sample(monitor, "call_monitor_webhook_requests_total", {"result": "not_a_call"}) == 1
    assert sample(monitor, "call_monitor_webhook_requests_total", {"result": "ignored"}) == 0


def test_webhooks_about_participants_that_are_not_calls_give_no_event() -> None:
    """Agents, browsers, and the monitor's own observer (each renewed session of it ends
    with a participant_connection_aborted webhook) are not calls: nothing to journal."""
    kinds = ("participant_joined", "participant_left", "participant_connection_aborted")
    for kind, _ in models.ParticipantInfo.Kind.items():
        if kind == "SIP":
            continue
        for event in kinds:
            participant = models.ParticipantInfo(sid="PA_1", identity="call-monitor-x-1", kind=kind)
            hook = webhook.WebhookEvent(
                event=event, room=models.Room(name="r"), participant=participant
            )
            assert events_of_webhook(hook, 0.0) == [], (event, kind)


def test_webhooks_skipped_unparsed_give_what_the_full_parse_would() -> None:
    """The intake reads a webhook's kind and participant kind from plain JSON and leaves
    protobuf's slow parser to the ones that may be calls: for every kind of webhook and
    participant, with enums spelled by name or by number, it gives what parsing all
    would."""
    intake = WebhookIntake(KEY, SECRET)
    participant_kinds = [name for name, _ in models.ParticipantInfo.Kind.items()]
    webhook_kinds = ("room_started", "track_published", "egress_ended", *WEBHOOK_EVENTS_USED)
    for event in webhook_kinds:
        for kind in participant_kinds:
            participant = models.ParticipantInfo(
                sid="PA_1", identity="x", kind=kind, attributes={"sip.callStatus": "dialing"}
            )
            hook = webhook.WebhookEvent(
                event=event, room=models.Room(name="r", sid="RM_1"), participant=participant
            )
            for by_number in (False, True):
                body = MessageToJson(hook, use_integers_for_enums=by_number).encode()
                sha256 = intake.authenticate(signed(body))
                expected = events_of_webhook(
                    Parse(body, webhook.WebhookEvent(), ignore_unknown_fields=True), 1.0
                )
                assert intake.events(body, sha256, 1.0) == expected, (event, kind, by_number)
                assert webhook_result(intake.parse(body, sha256), expected) == webhook_result(
                    hook, expected
                )


async def test_joined_and_room_finished_webhooks(served: tuple[Monitor, Client]) -> None:
    monitor, client = served
    joined = json.loads(participant_left_body())
    joined["event"] = "participant_joined"
    finished = {"event": "room_finished", "room": {"name": "call-e"}}
    for payload in (joined, finished, {"event": "track_published"}):
        body = json.dumps(payload)
        response = await client.post("/webhook", data=body, headers={"Authorization": signed(body)})
        assert response.status == 200
    kinds = [type(event) for event in queued(monitor)]
    assert kinds == [ParticipantSeen, RoomEnded]
    assert sample(monitor, "call_monitor_webhook_requests_total", {"result": "ignored"}) == 1


@pytest.mark.parametrize(
    ("headers", "result"),
    [
        ({}, "missing Authorization"),
        ({"Authorization": "Bearer not-a-jwt"}, "bad token"),
        ({"Authorization": "wrong-secret"}, "bad token"),
        ({"Authorization": "no-hash"}, "no body hash"),
        ({"Authorization": "other-body"}, "hash mismatch"),
    ],
)
async def test_webhooks_not_signed_by_us_get_401_and_are_counted(
    served: tuple[Monitor, Client], headers: dict[str, str], result: str
) -> None:
    monitor, client = served
    body = participant_left_body()
    if headers.get("Authorization") == "wrong-secret":
        headers = {"Authorization": signed(body, "another-secret-that-is-long-enough-000000")}
    elif headers.get("Authorization") == "no-hash":
        headers = {"Authorization": api.AccessToken(KEY, SECRET).to_jwt()}
    elif headers.get("Authorization") == "other-body":
        headers = {"Authorization": signed(body + " ")}
    response = await client.post("/webhook", data=body, headers=headers)
    assert response.status == 401
    assert result in (await response.json())["error"]
    assert queued(monitor) == []
    assert sample(monitor, "call_monitor_webhook_requests_total", {"result": "unauthorized"}) == 1
    assert (
        sample(
            monitor, "call_monitor_http_bad_requests_total", {"endpoint": "webhook", "code": "401"}
        )
        == 1
    )


async def test_malformed_and_oversized_webhooks(served: tuple[Monitor, Client]) -> None:
    monitor, client = served
    body = "{this is not json"
    response = await client.post("/webhook", data=body, headers={"Authorization": signed(body)})
    assert response.status == 400
    big = "x" * 5000
    response = await client.post("/webhook", data=big, headers={"Authorization": signed(big)})
    assert response.status == 413
    raw = b"\xff\xfe"
    response = await client.post("/webhook", data=raw, headers={"Authorization": signed(raw)})
    assert response.status == 400
    assert (await response.json())["error"] == "body is not UTF-8"
    assert sample(monitor, "call_monitor_webhook_requests_total", {"result": "bad_request"}) == 2
    assert sample(monitor, "call_monitor_webhook_requests_total", {"result": "too_large"}) == 1
    assert queued(monitor) == []


async def test_dial_hook_needs_our_token_and_a_valid_body(
    served: tuple[Monitor, Client],
) -> None:
    monitor, client = served
    good = {"room": "call-b", "participant_identity": "callee", "sip_status_code": 486}
    assert (await post_dial(client, good, {})).status == 401
    wrong_key = hook_headers(DIAL, json.dumps(good).encode(), "x" * 40)
    assert (await post_dial(client, good, wrong_key)).status == 401
    assert (await post_dial(client, good, room_join_token())).status == 401
    bad_bodies: list[object] = [
        [],
        {"participant_identity": "callee"},
        {"room": "r"},
        {"room": "r", "participant_identity": "c", "sip_status_code": "486"},
        {"room": "r", "participant_identity": "c", "sip_status_code": 999},
        {"room": "r", "participant_identity": "c", "sip_status_code": True},
        {"room": "r", "participant_identity": "c", "sip_status": 5},
    ]
    for bad in bad_bodies:
        response = await post_dial(client, bad)
        assert response.status == 400, bad
    response = await post_dial(client, b"{")
    assert response.status == 400
    assert queued(monitor) == []
    response = await post_dial(client, good)
    assert response.status == 202
    [event] = queued(monitor)
    assert isinstance(event, DialFailed)
    assert (event.room, event.participant_identity, event.sip_status_code) == (
        "call-b",
        "callee",
        486,
    )
    assert (
        sample(monitor, "call_monitor_http_bad_requests_total", {"endpoint": "dial", "code": "400"})
        == 8
    )


async def test_the_dial_hook_reports_to_the_monitor_and_never_waits_long(
    served: tuple[Monitor, Client], caplog: pytest.LogCaptureFixture
) -> None:
    """`report_dial_failure` reaches the monitor's /dial; a monitor that is down or too
    slow costs the dialing code at most the report timeout, with a warning that says
    which."""
    monitor, client = served

    async def report(url: str, wait: float = 2.0) -> bool:
        return await report_dial_failure(
            monitor_url=url,
            api_key=KEY,
            api_secret=SECRET,
            room="call-h",
            participant_identity="callee",
            sip_status_code=603,
            sip_status="Decline",
            report_timeout=wait,
        )

    assert await report(str(client.make_url("/")))
    [event] = queued(monitor)
    assert isinstance(event, DialFailed)
    assert (event.room, event.sip_status_code, event.sip_status) == ("call-h", 603, "Decline")

    async def never_answers(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(status=202)

    slow_app = web.Application()
    slow_app.router.add_post("/dial", never_answers)
    slow: Client = TestClient(TestServer(slow_app))
    await slow.start_server()
    try:
        with caplog.at_level(logging.WARNING, logger="call_monitor.dial"):
            async with asyncio.timeout(5):
                reported = await report(str(slow.make_url("/")), wait=0.3)
    finally:
        await slow.close()
    assert not reported
    assert "did not answer within 0.3 s" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="call_monitor.dial"):
        reported = await report(f"http://127.0.0.1:{free_port()}")
    assert not reported
    assert "call monitor unreachable" in caplog.text


async def test_calls_lists_live_calls_masked_and_needs_our_token(
    served: tuple[Monitor, Client],
) -> None:
    monitor, client = served
    joined = json.loads(participant_left_body("+447911123456"))
    joined["event"] = "participant_joined"
    body = json.dumps(joined)
    await client.post("/webhook", data=body, headers={"Authorization": signed(body)})
    for event in queued(monitor):
        monitor.process(event)
    assert (await client.get("/calls")).status == 401
    assert (await client.get("/calls", headers=room_join_token())).status == 401
    response = await client.get("/calls", headers=hook_headers(CALLS))
    assert response.status == 200
    text = await response.text()
    assert "+447911123456" not in text
    [call] = json.loads(text)["calls"]
    assert (call["call_id"], call["state"], call["phone_number"]) == (
        "SCL_1",
        "dialing",
        "+44******3456",
    )
    # The same plain-data call as the call log's line and replay's.
    [record] = monitor.live_calls()
    assert call == json.loads(json.dumps(call_summary(record, NumberMasker())))


async def test_health_readiness_and_metrics(served: tuple[Monitor, Client]) -> None:
    monitor, client = served
    assert (await client.get("/healthz")).status == 200
    response = await client.get("/readyz")
    assert response.status == 503
    assert "reconciled" in (await response.json())["reason"]
    monitor._set_ready(True, "")
    assert (await client.get("/readyz")).status == 200
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "call_monitor_ready 1.0" in await response.text()


async def test_metrics_and_readiness_can_have_a_listener_of_their_own() -> None:
    """With CALL_MONITOR_METRICS_PORT, /metrics and /readyz leave the listener that
    faces livekit-server (webhooks) and the dialers, and can stay on localhost."""
    from monitor.runtime.http import serve

    settings = load_settings(
        {"http_port": "0", "metrics_port": "0"},
        {"LIVEKIT_URL": "ws://127.0.0.1:1", "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET},
    )
    monitor = Monitor(settings)
    async with serve(monitor) as (port, metrics_port), aiohttp.ClientSession() as session:
        assert port != metrics_port

        async def status(at: int, method: str, path: str) -> int:
            async with session.request(method, f"http://127.0.0.1:{at}{path}") as answer:
                return answer.status

        assert await status(metrics_port, "GET", "/metrics") == 200
        assert await status(metrics_port, "GET", "/readyz") == 503  # not reconciled yet
        assert await status(metrics_port, "GET", "/healthz") == 200
        assert await status(metrics_port, "POST", "/webhook") == 404
        assert await status(metrics_port, "GET", "/calls") == 404
        assert await status(port, "GET", "/metrics") == 404
        assert await status(port, "GET", "/readyz") == 404
        assert await status(port, "GET", "/healthz") == 200
        assert await status(port, "POST", "/webhook") == 401  # there, and unsigned
        assert await status(port, "GET", "/calls") == 401
