"""The monitor's HTTP surface (aiohttp).

- `GET /metrics`: Prometheus exposition (prometheus-client's own).
- `GET /healthz`: the process is alive. `GET /readyz`: connected to livekit-server and
  reconciled at least once; 503 with the reason otherwise.
- `POST /webhook`: livekit-server's webhooks, verified with livekit-api's
  `TokenVerifier` before the body is read, then by the body's hash; with shards, those
  about another replica's rooms are dropped (200, counted).
- `POST /dial`: the dial-side hook (SIP code of a failed CreateSIPParticipant); a report
  about another replica's room gets 421 naming its owner.
- `GET /calls`: calls not yet final, numbers masked.

`/dial` and `/calls` need `Authorization: Bearer <hook token>`
(`monitor.client.hook_token`):
signed with the LiveKit API key, naming its purpose, minutes of life, no LiveKit grant
(a leaked one can place no call), and for /dial the body's sha256. A signature alone is
not enough: every room-join token a browser holds is signed with that key; a token
with a SIP grant is refused too, since livekit-server would let it dial.
Bad requests get a 4xx with a one-line JSON message (unknown paths and methods too),
are counted, and are logged at a rate limit with their reason (never the token).

It serves a `Served`: what it needs of the monitor, and nothing more.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from monitor.client.hook_token import CALLS, DIAL, HookClaims, HookTokenRefused, HookTokenVerifier
from monitor.core.model import CallRecord, DialFailed, Event
from monitor.core.privacy import NumberMasker
from monitor.core.shards import shard_of
from monitor.runtime.config import ConfigError, Settings
from monitor.runtime.http_limits import (
    CappedSite,
    ConnectionCap,
    file_limit_share,
    handler_settings,
    listening_socket,
)
from monitor.sinks.journal_sync import JournalSync
from monitor.sinks.logs import LogRateLimiter, call_summary
from monitor.sinks.metrics import MonitorMetrics
from monitor.sources.webhooks import (
    WebhookIntake,
    WebhookRejected,
    events_of_webhook,
    webhook_result,
)

__all__ = ["Served", "build_app", "serve"]


class Served(Protocol):
    """What the HTTP surface needs of the monitor (`monitor.runtime.service.Monitor`)."""

    settings: Settings
    clock: Callable[[], float]
    webhooks: WebhookIntake
    metrics: MonitorMetrics
    ready: bool
    not_ready_reason: str

    @property
    def journal_sync(self) -> JournalSync: ...
    def submit(self, event: Event) -> bool: ...
    def live_calls(self) -> list[CallRecord]: ...


log = structlog.get_logger("call_monitor")

_MONITOR: web.AppKey[Served] = web.AppKey("monitor")
# One `http_request_refused` line per endpoint, status and kind of reason every 10 s:
# a livekit-server signing with another key shows in the log, a flood does not fill it.
_REFUSALS_LOGGED: web.AppKey[LogRateLimiter] = web.AppKey("refusals_logged")
_HOOK_TOKENS: web.AppKey[HookTokenVerifier] = web.AppKey("hook_tokens")
_CONNECTION_CAP: web.AppKey[ConnectionCap] = web.AppKey("connection_cap")
# How long an acknowledgment waits for the journal's fsync (the `batch` policy) before
# the request gets 503: a disk that hangs must not hold every webhook handler.
_SYNC_SECONDS = 5.0
_ENDPOINTS = frozenset({"webhook", "dial", "calls", "metrics", "healthz", "readyz"})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _monitor(request: web.Request) -> Served:
    return request.app[_MONITOR]


def _refuse(request: web.Request, endpoint: str, status: int, message: str) -> web.Response:
    _monitor(request).metrics.bad_request(endpoint, status)
    # The text before a colon names the kind of reason; what follows may vary per
    # request (a parser's position), which would make every line a key of its own.
    kind = message.partition(":")[0]
    request.app[_REFUSALS_LOGGED].warning(
        log,
        "http_request_refused",
        (endpoint, status, kind),
        endpoint=endpoint,
        status=status,
        reason=message,
        peer=request.remote,
    )
    return _error(status, message)


def _endpoint_of(request: web.Request) -> str:
    """The route's name for labels and logs; never the raw path a client chose."""
    name = request.path.strip("/")
    return name if name in _ENDPOINTS else "unknown"


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (unknown path, method not allowed) as JSON, like ours."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = _refuse(request, _endpoint_of(request), error.status, error.reason.lower())
        if "Allow" in error.headers:
            response.headers["Allow"] = error.headers["Allow"]
        return response


async def _read_at_most(request: web.Request, limit: int) -> bytearray:
    """The body, or its first limit + 1 bytes when it is longer."""
    # read(n) returns what has arrived so far, not n bytes: read until the end. A body
    # in several TCP segments is ordinary off loopback.
    raw = bytearray()
    while len(raw) <= limit:
        chunk = await request.content.read(limit + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    return raw


async def _read_body(request: web.Request, endpoint: str) -> bytes | web.Response:
    settings = _monitor(request).settings
    limit = settings.webhook_max_bytes
    if request.content_length is not None and request.content_length > limit:
        return _refuse(request, endpoint, 413, f"body larger than {limit} bytes")
    try:
        async with asyncio.timeout(settings.http_body_timeout_seconds):
            raw = await _read_at_most(request, limit)
    except TimeoutError:
        seconds = settings.http_body_timeout_seconds
        return _refuse(request, endpoint, 408, f"body not received within {seconds:g} s")
    if len(raw) > limit:
        return _refuse(request, endpoint, 413, f"body larger than {limit} bytes")
    return bytes(raw)


def _utf8(request: web.Request, endpoint: str, raw: bytes) -> str | web.Response:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _refuse(request, endpoint, 400, "body is not UTF-8")


def _hook_claims(request: web.Request, purpose: str) -> HookClaims | web.Response:
    """The claims of a hook token for `purpose`, or the 401 refusing the request."""
    try:
        return request.app[_HOOK_TOKENS].verify(request.headers.get("Authorization", ""), purpose)
    except HookTokenRefused as refused:
        return _refuse(request, purpose, 401, str(refused))


async def metrics(request: web.Request) -> web.Response:
    body, content_type = _monitor(request).metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    monitor = _monitor(request)
    if monitor.ready:
        return web.json_response({"status": "ready"})
    return web.json_response(
        {"status": "not ready", "reason": monitor.not_ready_reason}, status=503
    )


async def _keep(request: web.Request, endpoint: str, events: list[Event]) -> web.Response | None:
    """Journal and queue a request's events, and wait until the journal holds them as
    the fsync policy promises (monitor/sinks/journal_sync.py): only then is the request
    acknowledged. None when kept; else a 503, so that the sender may try again (the
    machine takes a repeated event as the same fact)."""
    monitor = _monitor(request)
    if not events:
        return None  # nothing written: nothing to wait for
    kept = [monitor.submit(event) for event in events]
    try:
        async with asyncio.timeout(_SYNC_SECONDS):
            await monitor.journal_sync.acknowledged()
    except (OSError, TimeoutError):
        kept.append(False)
    if all(kept):
        return None
    return _refuse(request, endpoint, 503, "the journal could not keep the events")


def _refuse_webhook(request: web.Request, rejected: WebhookRejected) -> web.Response:
    _monitor(request).metrics.webhook_request(rejected.result)
    status = 401 if rejected.result == "unauthorized" else 400
    return _refuse(request, "webhook", status, str(rejected))


_WEBHOOK_RESULT_OF_STATUS = {408: "timeout", 413: "too_large"}


async def webhook(request: web.Request) -> web.Response:
    monitor = _monitor(request)
    # The token first, from the headers: a client that cannot sign with our key never
    # gets its body read (up to webhook_max_bytes each).
    try:
        sha256 = monitor.webhooks.authenticate(request.headers.get("Authorization", ""))
    except WebhookRejected as rejected:
        return _refuse_webhook(request, rejected)
    raw = await _read_body(request, "webhook")
    if isinstance(raw, web.Response):
        monitor.metrics.webhook_request(_WEBHOOK_RESULT_OF_STATUS.get(raw.status, "bad_request"))
        return raw
    try:
        hook = monitor.webhooks.parse(raw, sha256)
    except WebhookRejected as rejected:
        return _refuse_webhook(request, rejected)
    events = events_of_webhook(hook, monitor.clock())
    unkept = await _keep(request, "webhook", events)
    if unkept is not None:
        monitor.metrics.webhook_request("error")
        return unkept
    monitor.metrics.webhook_request(webhook_result(hook, events, monitor.webhooks.owns))
    # No body: livekit-server's notifier closes a response without reading it, and Go
    # reuses the connection only when there is nothing left to read. With a body,
    # every webhook came on a new connection.
    return web.Response(status=200)


def _parse_json(body: str) -> Any:
    """The body as JSON; a ValueError saying why not for any body (never another error:
    a body nested a thousand deep makes the parser raise RecursionError)."""
    try:
        return json.loads(body)
    except json.JSONDecodeError as error:
        raise ValueError(f"body is not JSON: {error.msg}") from None
    except RecursionError:
        raise ValueError("body is not JSON: nested too deeply") from None
    except ValueError as error:  # an integer of more digits than Python converts
        raise ValueError(f"body is not JSON: {str(error)[:100]}") from None


def _text(data: dict[str, Any], name: str, *, required: bool) -> str:
    value = data.get(name, "")
    if not isinstance(value, str) or (required and not value):
        raise ValueError(f"{name} must be a {'non-empty ' if required else ''}string")
    # JSON can spell a lone surrogate ("\ud800"), which no UTF-8 journal line can hold:
    # accepted, it would be lost between the answer and the journal.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode (a lone surrogate)") from None
    return value


def _dial_event(data: Any, at: float) -> DialFailed:
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    room = _text(data, "room", required=True)
    identity = _text(data, "participant_identity", required=True)
    code = data.get("sip_status_code")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        raise ValueError("sip_status_code must be an integer or null")
    if code is not None and not 100 <= code <= 699:
        raise ValueError("sip_status_code must be from 100 to 699")
    status = _text(data, "sip_status", required=False)
    call_id = _text(data, "call_id", required=False)
    return DialFailed(at, room, identity, code, status[:200], call_id[:100])


async def dial(request: web.Request) -> web.Response:
    monitor = _monitor(request)
    claims = _hook_claims(request, DIAL)
    if isinstance(claims, web.Response):
        return claims
    raw = await _read_body(request, "dial")
    if isinstance(raw, web.Response):
        return raw
    try:
        claims.check_body(raw)
    except HookTokenRefused as refused:
        return _refuse(request, "dial", 401, str(refused))
    body = _utf8(request, "dial", raw)
    if isinstance(body, web.Response):
        return body
    try:
        event = _dial_event(_parse_json(body), monitor.clock())
    except ValueError as error:
        return _refuse(request, "dial", 400, str(error))
    shard = monitor.settings.owned
    if not shard.owns(event.room):
        # The dialer's wrapper sends each report to its room's owner; this one is not.
        owner = shard_of(event.room, shard.count)
        return _refuse(request, "dial", 421, f"room belongs to shard {owner} of {shard.count}")
    unkept = await _keep(request, "dial", [event])
    if unkept is not None:
        return unkept
    return web.json_response({"accepted": 1}, status=202)


async def calls(request: web.Request) -> web.Response:
    monitor = _monitor(request)
    claims = _hook_claims(request, CALLS)
    if isinstance(claims, web.Response):
        return claims
    masker = NumberMasker(monitor.settings.mask_numbers, monitor.settings.mask_keep_digits)
    listed = [call_summary(record, masker) for record in monitor.live_calls()]
    return web.json_response({"calls": listed})


def build_app(
    monitor: Served, *, observability: bool = True, calls_api: bool = True
) -> web.Application:
    """The app: `observability` routes (/metrics, /readyz) and the `calls_api`
    (/webhook, /dial, /calls); /healthz always."""
    settings = monitor.settings
    cap = ConnectionCap(file_limit_share(settings.http_max_connections))
    app = web.Application(
        client_max_size=settings.webhook_max_bytes, middlewares=[cap.middleware, _json_errors]
    )
    app[_MONITOR] = monitor
    app[_CONNECTION_CAP] = cap
    app[_REFUSALS_LOGGED] = LogRateLimiter(interval=10.0)
    app[_HOOK_TOKENS] = HookTokenVerifier(settings.livekit_api_key, settings.livekit_api_secret)
    app.router.add_get("/healthz", healthz)
    if observability:
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/readyz", readyz)
    if calls_api:
        app.router.add_post("/webhook", webhook)
        app.router.add_post("/dial", dial)
        app.router.add_get("/calls", calls)
    return app


@asynccontextmanager
async def _listening(app: web.Application, host: str, port: int) -> AsyncIterator[int]:
    settings = app[_MONITOR].settings
    runner = web.AppRunner(
        app, access_log=None, **handler_settings(settings.http_idle_timeout_seconds)
    )
    await runner.setup()
    try:
        try:
            sock = listening_socket(host, port)
        except OSError as error:  # in use, or an address this host does not have
            why = os.strerror(error.errno) if error.errno else str(error)
            raise ConfigError(f"cannot listen on {host}:{port}: {why}") from None
        await CappedSite(runner, sock, app[_CONNECTION_CAP]).start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serve(monitor: Served) -> AsyncIterator[tuple[int, int]]:
    """Serve on the configured addresses; yields (HTTP port, metrics port).

    With `metrics_port` set, /metrics and /readyz move to a listener of their own (so
    they can stay on localhost while /webhook faces livekit-server); otherwise one
    listener serves everything and both ports are the same."""
    settings = monitor.settings
    if settings.metrics_port is None:
        async with _listening(build_app(monitor), settings.http_host, settings.http_port) as port:
            yield port, port
        return
    calls_app = build_app(monitor, observability=False)
    metrics_app = build_app(monitor, calls_api=False)
    async with (
        _listening(calls_app, settings.http_host, settings.http_port) as port,
        _listening(metrics_app, settings.metrics_host, settings.metrics_port) as metrics_port,
    ):
        yield port, metrics_port
