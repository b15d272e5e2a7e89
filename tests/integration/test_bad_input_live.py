"""Real participants on the real server that send what livekit-sip never would.

A participant joins with a token of kind SIP (livekit-server takes the kind from the
token), so the monitor treats it as a call, and then sets odd attributes: an unknown
`sip.callStatus`, no `sip.callID`, a 60 kB value, and a thousand status flips as fast as
the server takes them. Another, of the standard kind, carries SIP-looking attributes.
The monitor keeps running, counts the anomalies, logs a bounded number of lines, ends
the one call once, and ignores the impostor.
"""

from __future__ import annotations

import pytest
import structlog
from livekit import api, rtc
from structlog.testing import capture_logs

from monitor.core.model import AnomalyKind
from monitor.core.privacy import NumberMasker
from monitor.sinks.logs import ANOMALY_LOG_LIMIT, CallLog
from stack import Stack
from tests.integration.calls import unique_room
from tests.integration.monitoring import running_monitor, wait_until

pytestmark = pytest.mark.integration

FLIPS = 1000


def token(stack: Stack, room: str, identity: str, kind: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room, can_update_own_metadata=True)
    return (
        api.AccessToken(stack.api_key, stack.api_secret)
        .with_identity(identity)
        .with_kind(kind)  # type: ignore[arg-type]
        .with_grants(grants)
        .to_jwt()
    )


async def join(
    stack: Stack, room: str, identity: str, kind: str, attributes: dict[str, str]
) -> rtc.Room:
    participant = rtc.Room()
    await participant.connect(
        stack.ws_url,
        token(stack, room, identity, kind),
        rtc.RoomOptions(auto_subscribe=False),
    )
    await participant.local_participant.set_attributes(attributes)
    return participant


async def test_odd_attributes_and_a_flood_of_flips_are_counted_and_survived(
    stack: Stack, monitor_port: int, lkapi: api.LiveKitAPI
) -> None:
    log = CallLog(structlog.get_logger(), NumberMasker())
    with capture_logs() as logged:
        async with running_monitor(stack, monitor_port, room_mode="whole_call", sinks=[log]) as (
            monitor,
            recorder,
        ):

            def count(kind: AnomalyKind) -> float:
                value = monitor.registry.get_sample_value(
                    "call_monitor_anomalies_total", {"kind": str(kind)}
                )
                return 0.0 if value is None else value

            room = unique_room("odd")
            await lkapi.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=10))
            fake = await join(
                stack,
                room,
                "sip_fake",
                "sip",
                {"sip.callStatus": "exploded", "sip.trunkID": "ST_fake", "sip.huge": "x" * 60_000},
            )
            impostor = await join(
                stack,
                room,
                "not_sip",
                "standard",
                {"sip.callStatus": "active", "sip.callID": "SCL_impostor"},
            )
            try:
                await wait_until(lambda: bool(recorder.started(room)), 20, "the fake call seen")
                await wait_until(lambda: count(AnomalyKind.UNKNOWN_STATUS) > 0, 20, "unknown")
                for n in range(FLIPS):
                    status = "ringing" if n % 2 == 0 else "dialing"
                    await fake.local_participant.set_attributes({"sip.callStatus": status})
                await wait_until(
                    lambda: count(AnomalyKind.STATUS_REGRESSED) >= 10, 30, "flips counted"
                )
            finally:
                await fake.disconnect()
                await impostor.disconnect()
            [record] = await recorder.wait_ended(room, timeout=30)
            ended = recorder.ended()
            started = recorder.started(room)
            regressed = count(AnomalyKind.STATUS_REGRESSED)
            missing_id = count(AnomalyKind.MISSING_CALL_ID)
    # One call (the fake SIP participant, keyed by its sid), ended once; the
    # standard-kind impostor is not a call.
    assert [call.key for call in started] == [record.key]
    assert record.key.startswith("sid:")
    assert [call.key for call in ended if call.room == room] == [record.key]
    assert missing_id >= 1
    assert regressed >= 10
    # Whatever the server let through, the logs stayed bounded per kind.
    lines = [line for line in logged if line.get("call_key") == record.key]
    regressions = [line for line in lines if line.get("kind") == "status_regressed"]
    assert len(regressions) <= ANOMALY_LOG_LIMIT + 1
    # Attributes are never labels: the 60 kB value shows nowhere in the exposition.
    exposition = monitor.metrics.exposition()[0].decode()
    assert "xxxxxxxxxx" not in exposition
