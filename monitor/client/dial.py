"""The dial-side hook, for code that places outbound calls.

The SIP status code of a failed dial exists in one place only: the error of
`CreateSIPParticipant` (livekit/sip issue #295). In the room, busy and declined both
look like USER_REJECTED. `create_sip_participant` wraps livekit-api's call and, when the
dial fails, sends the code to the monitor's `/dial` endpoint so the call's outcome can
say busy, declined or not found. The monitor being down never breaks a dial: the report
is best effort, bounded by a short timeout, and the original error is re-raised.

Each report carries a token of its own (`monitor.hook_token`): signed with the API key,
bound to the report's body, valid two minutes, and granting nothing on livekit-server,
so one seen on the wire cannot place a call: it can only repeat its own report for two
minutes. Keep the monitor on a private network or behind TLS all the same.

    from monitor.client.dial import create_sip_participant
    await create_sip_participant(lkapi, request, monitor_url="http://monitor:9469",
                                 api_key=KEY, api_secret=SECRET)

With the monitor in shards (CALL_MONITOR_SHARDS), each report goes to the replica that
owns the call's room: give `shards` and a `monitor_url` with `{shard}` in it, such as
"http://call-monitor-{shard}.call-monitor:9469" (a StatefulSet's pods behind a
headless Service).
"""

from __future__ import annotations

import json
import logging

import aiohttp
from livekit import api
from livekit.protocol.sip import CreateSIPParticipantRequest, SIPParticipantInfo

from monitor.client.hook_token import DIAL, mint_hook_token
from monitor.core.shards import shard_of

__all__ = ["create_sip_participant", "owner_url", "report_dial_failure"]

_log = logging.getLogger("call_monitor.dial")
# Twirp's code when the callee never answered before the ringing timeout: no SIP code.
_TIMEOUT_CODES = frozenset({"canceled", "deadline_exceeded"})


def owner_url(monitor_url: str, room: str, shards: int = 1) -> str:
    """The URL of the monitor replica that owns `room`: `monitor_url` with `{shard}`
    filled in. ValueError when there are shards and the URL cannot name one."""
    if shards < 1:
        raise ValueError(f"shards must be 1 or more, not {shards}")
    if shards > 1 and "{shard}" not in monitor_url:
        raise ValueError(f"with {shards} shards, monitor_url must hold {{shard}}")
    return monitor_url.replace("{shard}", str(shard_of(room, shards))).rstrip("/")


async def report_dial_failure(
    *,
    monitor_url: str,
    api_key: str,
    api_secret: str,
    room: str,
    participant_identity: str,
    sip_status_code: int | None,
    sip_status: str = "",
    report_timeout: float = 2.0,
    session: aiohttp.ClientSession | None = None,
    shards: int = 1,
) -> bool:
    """POST one dial failure to the monitor (the replica owning `room`); True if it was
    accepted."""
    try:
        url = owner_url(monitor_url, room, shards) + "/dial"
    except ValueError as error:  # never break the dial: the report is best effort
        _log.warning("dial failure not reported: %s", error)
        return False
    body = json.dumps(
        {
            "room": room,
            "participant_identity": participant_identity,
            "sip_status_code": sip_status_code,
            "sip_status": sip_status,
        }
    ).encode()
    # Bound to this body, minutes of life, no LiveKit grant: a leaked one places no call.
    token = mint_hook_token(api_key, api_secret, DIAL, body)
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        async with client.post(
            url,
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=report_timeout),
        ) as response:
            return response.status == 202
    except TimeoutError:
        # str() of a TimeoutError is empty: say what timed out.
        _log.warning(
            "call monitor did not answer within %.1f s, dial failure not reported", report_timeout
        )
        return False
    except aiohttp.ClientError as error:
        _log.warning("call monitor unreachable, dial failure not reported: %s", error)
        return False
    finally:
        if own:
            await client.close()


async def create_sip_participant(
    lkapi: api.LiveKitAPI,
    request: CreateSIPParticipantRequest,
    *,
    monitor_url: str,
    api_key: str,
    api_secret: str,
    report_timeout: float = 2.0,
    request_timeout: float | None = None,
    shards: int = 1,
) -> SIPParticipantInfo:
    """`lkapi.sip.create_sip_participant`, reporting a failed dial to the monitor.

    Only a dial with `wait_until_answered=True` can fail with a SIP code; without it
    the API returns once the participant joined, and the room tells the rest.
    `request_timeout` is the API request's (livekit-api allows the ringing timeout plus
    2 s by default, which a dial that takes long to set up can outlast).
    """
    identity = request.participant_identity or f"sip_{request.sip_call_to}"
    try:
        return await lkapi.sip.create_sip_participant(request, timeout=request_timeout)
    except api.TwirpError as error:
        if isinstance(error, api.SipCallError):
            code, phrase = error.sip_status_code, error.sip_status or ""
        elif error.code in _TIMEOUT_CODES:
            # No answer before the ringing timeout comes back without SIP metadata.
            code, phrase = None, ""
        else:
            raise
        await report_dial_failure(
            monitor_url=monitor_url,
            api_key=api_key,
            api_secret=api_secret,
            room=request.room_name,
            participant_identity=identity,
            sip_status_code=code,
            sip_status=phrase,
            report_timeout=report_timeout,
            shards=shards,
        )
        raise
