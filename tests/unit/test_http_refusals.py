"""Refused requests: JSON for every 4xx (unknown paths and methods too), each counted
and logged at a rate limit with its reason, never with the token that was refused."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from monitor.runtime.service import Monitor
from tests.unit.http_support import participant_left_body, sample, signed

Client = TestClient[web.Request, web.Application]


async def test_unknown_paths_and_methods_get_json_like_every_other_refusal(
    served: tuple[Monitor, Client],
) -> None:
    monitor, client = served
    response = await client.get("/no/such/path")
    assert response.status == 404
    assert response.content_type == "application/json"
    assert await response.json() == {"error": "not found"}
    response = await client.get("/webhook")
    assert response.status == 405
    assert response.content_type == "application/json"
    assert await response.json() == {"error": "method not allowed"}
    assert response.headers["Allow"] == "POST"
    refused = "call_monitor_http_bad_requests_total"
    assert sample(monitor, refused, {"endpoint": "unknown", "code": "404"}) == 1
    assert sample(monitor, refused, {"endpoint": "webhook", "code": "405"}) == 1


async def test_a_refused_webhook_is_logged_with_its_reason_and_never_its_token(
    served: tuple[Monitor, Client],
) -> None:
    """A livekit-server signing with another key must show in the log, once in a
    while, not once per webhook."""
    _, client = served
    body = participant_left_body()
    token = signed(body, "another-secret-that-is-long-enough-000000")
    with capture_logs() as logged:
        for _ in range(50):
            response = await client.post("/webhook", data=body, headers={"Authorization": token})
            assert response.status == 401
        response = await client.post("/webhook", data=body)
        assert response.status == 401
    refusals = [line for line in logged if line["event"] == "http_request_refused"]
    assert [(line["reason"], line["suppressed"]) for line in refusals] == [
        ("bad token: InvalidSignatureError", 0),
        ("missing Authorization header", 0),
    ]
    assert refusals[0]["endpoint"] == "webhook"
    assert refusals[0]["status"] == 401
    assert refusals[0]["log_level"] == "warning"
    assert token not in repr(logged)
    assert token.split(".")[2] not in repr(logged)
