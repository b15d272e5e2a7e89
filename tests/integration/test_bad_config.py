"""Wrong keys and an unreachable server: the monitor stays up, says why it is not
ready, and retries with backoff, never in a hot loop. (A malformed setting stops it at
start-up with one line: tests/unit/test_config.py.)"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from stack import Stack
from stack.config import free_port
from tests.integration.calls import PlaceCall, sim_number, unique_room
from tests.integration.monitoring import running_monitor, wait_until

pytestmark = pytest.mark.integration

WRONG_SECRET = "not-the-secret-livekit-server-knows-0123456789"
# The windows in which the failed reconciliations are counted: their number over a
# known time is what tells a backoff from a hot loop, so the windows are waited out.
WRONG_KEYS_WINDOW = 8.0
UNREACHABLE_WINDOW = 10.0


def failures(registry_value: float | None) -> float:
    return 0.0 if registry_value is None else registry_value


async def readyz(port: int) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as answer,
    ):
        return answer.status, await answer.text()


async def test_wrong_keys_leave_the_monitor_up_not_ready_and_backing_off(
    stack: Stack, monitor_port: int, place_call: PlaceCall
) -> None:
    async with running_monitor(
        stack, monitor_port, livekit_api_secret=WRONG_SECRET, reconcile_seconds="2"
    ) as (monitor, recorder):
        await asyncio.sleep(WRONG_KEYS_WINDOW)  # the window the retries are counted in
        status, body = await readyz(monitor.http_port)
        failed = failures(
            monitor.registry.get_sample_value(
                "call_monitor_reconcile_runs_total", {"result": "failure"}
            )
        )
        # A real call: livekit-server signs its webhooks with the real key, which the
        # monitor refuses and counts; the call is not counted from a forged source.
        room = unique_room("wrongkey")
        await place_call(sim_number("05"), room=room)
        await wait_until(
            lambda: (
                failures(
                    monitor.registry.get_sample_value(
                        "call_monitor_webhook_requests_total", {"result": "unauthorized"}
                    )
                )
                > 0
            ),
            timeout=15,
            what="webhooks refused",
        )
        assert recorder.started(room) == []
    assert not monitor.ready
    assert status == 503
    assert "livekit-server API failed" in body
    # Every 2 s at most (the backoff, capped by the reconcile interval): 8 s gives a
    # handful, a hot loop thousands.
    assert 2 <= failed <= 6, failed


async def test_an_unreachable_server_is_retried_with_backoff(
    stack: Stack, monitor_port: int
) -> None:
    """LIVEKIT_URL points at a port nobody listens on: not ready, retried with a
    growing delay; the process neither crashes nor spins."""
    dead = f"http://127.0.0.1:{free_port()}"
    async with running_monitor(stack, monitor_port, livekit_url=dead, reconcile_seconds="30") as (
        monitor,
        _,
    ):
        await asyncio.sleep(UNREACHABLE_WINDOW)  # the window the retries are counted in
        status, body = await readyz(monitor.http_port)
        failed = failures(
            monitor.registry.get_sample_value(
                "call_monitor_reconcile_runs_total", {"result": "failure"}
            )
        )
    assert status == 503
    assert "livekit-server API failed" in body
    # Backoff 4 s, 8 s, ...: at most 3 tries in 10 s.
    assert 1 <= failed <= 3, failed
