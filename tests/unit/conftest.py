"""Fixtures shared by the unit tests of the HTTP surface."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from monitor.runtime.http import build_app
from monitor.runtime.service import Monitor
from tests.unit.http_support import Client, make_monitor


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[Monitor, Client]]:
    monitor = make_monitor()
    client: Client = TestClient(TestServer(build_app(monitor)))
    await client.start_server()
    try:
        yield monitor, client
    finally:
        await client.close()
