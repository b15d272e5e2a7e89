"""Observer processes: where the SDK's native log records go.

livekit 1.2.1 hands every native log record, trace included, to Python (about 1,300 a
join), which spent half the CPU of a join. Below debug level the observer process
switches that off: the records go to its stderr, filtered by RUST_LOG, and the monitor
logs what comes through. These tests hold the switch to account: a newer SDK that moves
the private names it needs makes them fail, rather than quietly bring the cost back.
"""

from __future__ import annotations

import logging

import pytest

from monitor.runtime.config import load_settings
from monitor.runtime.rooms import observer_token
from monitor.sources.room_link import JoinFailed, LinkHooks
from monitor.sources.rtc_observers import ObserverPool
from stack import Stack
from stack.config import free_port
from tests.integration.calls import unique_room
from tests.integration.monitoring import wait_until


async def native_logs_of(pool: ObserverPool) -> str:
    """Start the pool's first process; where it says the SDK's native records go."""
    await pool.start()
    worker = pool.current
    assert worker is not None
    assert worker.ready.is_set()
    return worker.native_logs


async def test_native_records_go_to_stderr_and_reach_the_log_as_the_sdk_s(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings({}, stack.env())
    pool = ObserverPool(lambda event: None, recycle_joins=200)
    try:
        assert await native_logs_of(pool) == "stderr"

        # A join still works with the capture off.
        room = unique_room("quiet")
        link = await pool.join(
            room,
            stack.ws_url,
            observer_token(settings.livekit_api_key, settings.livekit_api_secret, room, "observer"),
            20,
            LinkHooks(),
        )
        assert link.room_sid.startswith("RM_")
        await link.close()

        # A server that refuses: the native library warns as it retries, on stderr.
        with caplog.at_level(logging.WARNING, logger="livekit"):
            with pytest.raises(JoinFailed, match="ConnectError"):
                await pool.join(
                    room,
                    f"ws://127.0.0.1:{free_port()}",
                    observer_token(
                        settings.livekit_api_key, settings.livekit_api_secret, room, "observer"
                    ),
                    20,
                    LinkHooks(),
                )
            # stderr is read apart from the replies: its lines may come just after.
            await wait_until(
                lambda: any(
                    "livekit::rtc_engine - failed to connect" in m for m in caplog.messages
                ),
                timeout=10,
                what="the native library's warning in the log",
            )
        native = [r for r in caplog.records if r.name == "livekit"]
        assert native
        assert all(r.levelno >= logging.WARNING for r in native)
    finally:
        await pool.close()


async def test_at_debug_level_the_sdk_keeps_sending_its_records_to_python() -> None:
    pool = ObserverPool(lambda event: None, recycle_joins=200, sdk_log_level=logging.DEBUG)
    try:
        assert await native_logs_of(pool) == "python"
    finally:
        await pool.close()
