"""Nothing acknowledged is lost, and no wait on LiveKit's API is unbounded.

- A webhook is answered 200 only once its events are in the journal: a monitor killed
  with SIGKILL in the middle of a stream of webhooks has every acknowledged event in its
  journal, which replays (the monitor runs as its own process, as deployed; no LiveKit
  is needed for its webhook endpoint).
- A webhook whose events the journal cannot hold gets 503, not 200.
- A livekit-server that accepts connections and never answers turns readiness off
  within the API timeout, with the reason (a real TCP server that never answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf.json_format import MessageToJson
from livekit import api
from livekit.protocol import models, webhook

from bench.monitor_proc import MonitorProcess
from monitor.core.model import ParticipantSeen
from monitor.runtime.config import load_settings
from monitor.runtime.http import build_app
from monitor.runtime.service import Monitor
from monitor.sinks.journal import BadLine, read_journal
from monitor.sinks.journal_sync import JournalSync
from monitor.sources.listings import RoomListings
from stack.config import free_port
from tests.unit.http_support import KEY, SECRET, signed

ENV = {"LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET}


def joined_body(n: int, phone: str = "+15551112222") -> str:
    event = webhook.WebhookEvent(
        event="participant_joined",
        id=f"EV_{n}",
        room=models.Room(name=f"call-ack-{n}", sid=f"RM_ack{n}"),
        participant=models.ParticipantInfo(
            sid=f"PA_ack{n}",
            identity=f"sip-{n}",
            kind=models.ParticipantInfo.Kind.SIP,
            attributes={
                "sip.callID": f"SCL_ack{n}",
                "sip.callStatus": "dialing",
                "sip.phoneNumber": phone,
            },
        ),
    )
    return MessageToJson(event)


@contextlib.asynccontextmanager
async def monitor_process(journal: Path, fsync: str) -> AsyncIterator[MonitorProcess]:
    """The monitor as deployed, its own process; no LiveKit behind it (listings and
    joins fail fast: its webhook endpoint is what is tested)."""
    port = free_port()
    env = {
        **os.environ,
        **ENV,
        "LIVEKIT_URL": f"http://127.0.0.1:{free_port()}",
        "CALL_MONITOR_HTTP_PORT": str(port),
        "CALL_MONITOR_JOURNAL": str(journal),
        "CALL_MONITOR_JOURNAL_FSYNC": fsync,
        "CALL_MONITOR_LOG_LEVEL": "error",
        "CALL_MONITOR_LOG_FORMAT": "json",
    }
    monitor = MonitorProcess(env, port, journal.with_name("monitor.log"))
    monitor.start()
    try:
        await asyncio.to_thread(monitor.wait_serving, 30)
        yield monitor
    finally:
        await asyncio.to_thread(monitor.kill)


async def test_every_acknowledged_webhook_survives_a_sigkill(tmp_path: Path) -> None:
    """A SIGKILL leaves what the kernel has: every event is written there before its
    answer, whatever the fsync policy (which matters for a power loss only)."""
    journal = tmp_path / "journal.jsonl"
    acknowledged: set[str] = set()
    enough = asyncio.Event()
    async with monitor_process(journal, "off") as monitor:
        url = f"{monitor.url}/webhook"
        bodies = [joined_body(n) for n in range(2000)]

        async def sender(session: aiohttp.ClientSession, share: list[tuple[int, str]]) -> None:
            for n, body in share:
                headers = {
                    "Authorization": signed(body),
                    "Content-Type": "application/webhook+json",
                }
                try:
                    async with session.post(url, data=body, headers=headers) as answer:
                        if answer.status == 200:
                            acknowledged.add(f"PA_ack{n}")
                            if len(acknowledged) >= 300:
                                enough.set()
                except aiohttp.ClientError:
                    return  # killed

        async def kill_midway() -> None:
            await enough.wait()
            await asyncio.to_thread(monitor.kill)

        numbered = list(enumerate(bodies))
        async with aiohttp.ClientSession() as session:
            await asyncio.wait_for(
                asyncio.gather(
                    kill_midway(),
                    *(sender(session, numbered[i::20]) for i in range(20)),
                ),
                60,
            )
    assert monitor.returncode() == -signal.SIGKILL
    assert 300 <= len(acknowledged) < len(bodies), "the kill came after the stream"
    bad: list[BadLine] = []
    kept = {
        event.participant.sid
        for event in read_journal([journal], bad)
        if isinstance(event, ParticipantSeen)
    }
    assert acknowledged - kept == set()
    assert bad == []


@contextlib.contextmanager
def files_limited_to(size: int) -> Iterator[None]:
    """Writes past `size` bytes fail (EFBIG) in this process, as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


async def test_a_webhook_the_journal_cannot_hold_gets_503_not_200(tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    settings = load_settings(
        {"http_port": "0", "journal_path": str(journal), "journal_fsync": "batch"},
        {"LIVEKIT_URL": "ws://127.0.0.1:1", **ENV},
    )
    monitor = Monitor(settings)
    client = TestClient(TestServer(build_app(monitor)))
    await client.start_server()

    async def post(n: int) -> int:
        body = joined_body(n)
        answer = await client.post("/webhook", data=body, headers={"Authorization": signed(body)})
        return answer.status

    try:
        assert await post(1) == 200
        # Room for part of a line only: what was written of it must not stay behind.
        with files_limited_to(journal.stat().st_size + 20):
            assert await post(2) == 503
        assert await post(3) == 200
    finally:
        await client.close()
    errors = monitor.registry.get_sample_value("call_monitor_journal_write_errors_total")
    assert errors == 1
    bad: list[BadLine] = []
    journaled = read_journal([journal], bad)
    kept = [e.participant.sid for e in journaled if isinstance(e, ParticipantSeen)]
    assert kept == ["PA_ack1", "PA_ack3"]
    assert bad == []


async def test_a_livekit_that_never_answers_turns_readiness_off_within_the_timeout() -> None:
    """livekit-api sets no timeout of its own (aiohttp's `timeout=None`)."""
    connections: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = load_settings(
        {"api_timeout_seconds": "0.5", "reconcile_seconds": "5"},
        {"LIVEKIT_URL": f"http://127.0.0.1:{port}", **ENV},
    )
    monitor = Monitor(settings)
    monitor._set_ready(True, "")
    lkapi = api.LiveKitAPI(settings.livekit_url, KEY, SECRET)
    session = aiohttp.ClientSession()
    listings = RoomListings(settings.livekit_url, KEY, SECRET, session)
    reconciling = asyncio.create_task(monitor._reconcile(monitor.reconciler(lkapi, listings)))
    began = time.monotonic()
    try:
        async with asyncio.timeout(10):
            while monitor.ready:  # noqa: ASYNC110 - plain state, nothing to wait on
                await asyncio.sleep(0.02)
        took = time.monotonic() - began
    finally:
        reconciling.cancel()
        await asyncio.gather(reconciling, return_exceptions=True)
        await lkapi.aclose()
        await session.close()
        server.close()
        for writer in connections:
            writer.close()
    assert connections, "the monitor never asked"
    assert took < 0.5 + 1.0
    assert monitor.not_ready_reason == "livekit-server API failed: TimeoutError"


async def test_an_acknowledgment_waits_for_an_fsync_that_began_after_its_write(
    tmp_path: Path,
) -> None:
    """`batch`: requests waiting together share one fsync, but one that began before a
    write does not cover it."""
    opened: list[int] = []
    target = tmp_path / "journal"
    target.write_bytes(b"")

    def handle() -> int:
        fd = os.open(target, os.O_WRONLY)
        opened.append(fd)
        return fd

    sync = JournalSync("batch", handle)
    sync.wrote()
    first = asyncio.create_task(sync.acknowledged())
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first fsync has begun
    assert len(opened) == 1
    sync.wrote()
    second, third = sync.acknowledged(), sync.acknowledged()
    await asyncio.gather(first, second, third)
    # One fsync for the first write, one more for the second (shared by the two that
    # waited for it); none left pending.
    assert len(opened) == 2
    await sync.acknowledged()
    assert len(opened) == 2


async def test_no_policy_but_batch_makes_an_acknowledgment_wait() -> None:
    def handle() -> int:
        raise AssertionError("no fsync expected")

    for policy in ("interval", "off"):
        sync = JournalSync(policy, handle)
        sync.wrote()
        await sync.acknowledged()
