"""Per-connection limits of the real server (`monitor.runtime.http.serve`): the token before the
body, a deadline for the body, and room made at the connection cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from monitor.client.hook_token import DIAL, mint_hook_token
from monitor.runtime.config import load_settings
from monitor.runtime.http import serve
from monitor.runtime.http_limits import MIN_AGE
from monitor.runtime.service import Monitor
from tests.unit.http_support import KEY, SECRET

ENV = {"LIVEKIT_URL": "ws://127.0.0.1:1", "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET}


@pytest_asyncio.fixture
async def port() -> AsyncIterator[int]:
    flags = {"http_port": "0", "http_max_connections": "16", "http_body_timeout_seconds": "0.5"}
    async with serve(Monitor(load_settings(flags, ENV))) as (http_port, _):
        yield http_port


async def answer_to(port: int, head: str) -> bytes:
    """Send a request's headers (and no body); the status line of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + b"\r\n")
        async with asyncio.timeout(3):
            return await reader.readline()
    finally:
        writer.close()


async def test_an_unsigned_webhook_is_refused_before_its_body_is_read(port: int) -> None:
    head = "POST /webhook HTTP/1.1\r\nHost: m\r\nContent-Length: 100000\r\n"
    assert (await answer_to(port, head)).startswith(b"HTTP/1.1 401")
    forged = "Authorization: Bearer not.a.token\r\n"
    assert (await answer_to(port, head + forged)).startswith(b"HTTP/1.1 401")


async def test_a_body_that_does_not_arrive_in_time_gets_408(port: int) -> None:
    token = mint_hook_token(KEY, SECRET, DIAL, b"{}")
    head = (
        f"POST /dial HTTP/1.1\r\nHost: m\r\nContent-Length: 2\r\nAuthorization: Bearer {token}\r\n"
    )
    assert (await answer_to(port, head)).startswith(b"HTTP/1.1 408")


async def test_at_the_cap_the_oldest_idle_connection_makes_room(port: int) -> None:
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(16)]
    await asyncio.sleep(MIN_AGE + 0.1)
    head = "GET /healthz HTTP/1.1\r\nHost: m\r\n"
    assert (await answer_to(port, head)).startswith(b"HTTP/1.1 200")
    oldest_reader, _ = idle[0]
    async with asyncio.timeout(2):
        assert await oldest_reader.read() == b""  # closed by the server
    for _, writer in idle:
        writer.close()
