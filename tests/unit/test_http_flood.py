"""What unauthenticated clients can cost the monitor's HTTP server, measured from outside.

The real server (`monitor.runtime.http.serve`, in a process of its own so its memory is its
own, default settings) takes 3,000 idle connections and 300 partial 1 MiB bodies sent
slowly to /webhook and /dial without a valid token, twice. Its RSS must grow by under
20 MiB, the second round must reuse what the first took rather than add to it, and
/healthz must answer within 100 ms throughout.
Before the token was checked ahead of the body, the bodies alone took it from 49 to
435 MiB; without the connection cap, idle connections used up its file descriptors.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import resource
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit import api

ROOT = Path(__file__).parents[2]
KEY = "APIflood"
SECRET = "flood-test-secret-that-is-long-enough-0123456789"
BODY_BYTES = 2**20
IDLE_CONNECTIONS = 3000
SLOW_BODIES = 300


def forged_token() -> str:
    """Signed, but with another secret: what an attacker without our key can send."""
    digest = base64.b64encode(hashlib.sha256(b"x" * BODY_BYTES).digest()).decode()
    return (
        api.AccessToken(KEY, "not-our-secret-but-long-enough-0123456789")
        .with_sha256(digest)
        .to_jwt()
    )


class ServerProcess:
    def __init__(self) -> None:
        env = {
            **os.environ,
            "LIVEKIT_URL": "ws://127.0.0.1:1",
            "LIVEKIT_API_KEY": KEY,
            "LIVEKIT_API_SECRET": SECRET,
            "CALL_MONITOR_HTTP_PORT": "0",
            "CALL_MONITOR_LOG_LEVEL": "error",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.serve_http"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the port, once listening
        assert line.strip().isdigit(), f"the server did not start: {line!r}"
        self.port = int(line)

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        [kib] = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
        return int(kib) / 1024

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    # Client and server each hold thousands of sockets: raise the soft file limit to
    # the hard one (the server inherits it).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * (IDLE_CONNECTIONS + SLOW_BODIES) + 200
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the file limit ({hard}) is below the {needed} this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    process = ServerProcess()
    try:
        yield process
    finally:
        process.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# The prober runs in a process of its own, standard library only (it starts in tens of
# ms), so the attackers' work in this process does not delay it.
PROBER = """
import http.client, sys, time
port, count, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
for _ in range(count):
    time.sleep(interval)
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        ok = response.status == 200
    except OSError:
        ok = False
    connection.close()
    print(time.perf_counter() - started if ok else "inf", flush=True)
"""


async def probe_healthz(port: int, count: int, interval: float) -> list[float]:
    """`count` /healthz requests `interval` apart, each on a new connection as a
    prober makes them: their times (inf when one failed)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PROBER,
        str(port),
        str(count),
        str(interval),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), count * (interval + 2) + 10)
    return [float(line) for line in out.split()]


async def idle_connections(port: int, count: int) -> list[asyncio.StreamWriter]:
    writers: list[asyncio.StreamWriter] = []
    for start in range(0, count, 250):
        opened = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(min(250, count - start))),
            return_exceptions=True,
        )
        writers += [pair[1] for pair in opened if isinstance(pair, tuple)]
    return writers


async def slow_body(port: int, path: str, authorization: str | None) -> None:
    """Headers for a 1 MiB body, then the body in pieces, never the last byte."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: monitor\r\nContent-Length: {BODY_BYTES}\r\n"
    if authorization:
        head += f"Authorization: {authorization}\r\n"
    try:
        writer.write((head + "\r\n").encode())
        piece = b"x" * 2**16
        for _ in range(BODY_BYTES // len(piece) - 1):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(piece[:-1])
        await writer.drain()
        await asyncio.sleep(3600)  # and never the last byte
    except ConnectionError:
        pass  # the server answered and closed: what it should do
    finally:
        writer.close()


async def slow_bodies(port: int, path: str, authorization: str | None) -> None:
    """One attacker: a slow partial body, and another about a second after one is
    turned away (300 of them: about 300 new connections a second)."""
    while True:
        await slow_body(port, path, authorization)
        await asyncio.sleep(random.uniform(0.5, 1.5))


async def sample_rss(server: ServerProcess, samples: list[float]) -> None:
    while True:
        samples.append(server.rss_mib())
        await asyncio.sleep(0.02)


async def attack(server: ServerProcess, samples: list[float]) -> list[float]:
    """One round: 3,000 idle connections and 300 attackers sending slow partial bodies,
    again and again; once they are under way, /healthz probed every 100 ms for 3 s;
    then every client gone. The probes' times."""
    port = server.port
    sampler = asyncio.create_task(sample_rss(server, samples))
    idle = await idle_connections(port, IDLE_CONNECTIONS)
    forged = "Bearer " + forged_token()
    attackers = [
        *(slow_bodies(port, "/webhook", None) for _ in range(SLOW_BODIES // 3)),
        *(slow_bodies(port, "/webhook", forged) for _ in range(SLOW_BODIES // 3)),
        *(slow_bodies(port, "/dial", forged) for _ in range(SLOW_BODIES // 3)),
    ]
    attacks = [asyncio.create_task(attacker) for attacker in attackers]
    # Not during the first burst of 3,000 connections in a few hundred ms: there every
    # connection is too young to be closed for a newcomer, who gets a 503.
    await asyncio.sleep(0.5)
    times = await probe_healthz(port, 30, 0.1)
    for task in attacks:
        task.cancel()
    await asyncio.gather(*attacks, return_exceptions=True)
    for writer in idle:
        writer.close()
    await asyncio.sleep(1.0)
    sampler.cancel()
    return times


async def test_unauthenticated_floods_cost_little_memory_and_healthz_still_answers(
    server: ServerProcess,
) -> None:
    port = server.port
    # Warm up: the code paths an attack takes, loaded once.
    assert max(await probe_healthz(port, 5, 0.01)) < 1
    for _ in range(20):
        await asyncio.wait_for(slow_body(port, "/webhook", None), 5)
    await asyncio.sleep(0.5)
    baseline = statistics.median(server.rss_mib() for _ in range(5))
    first: list[float] = []
    probes = await attack(server, first)
    after_first = server.rss_mib()
    second: list[float] = []
    probes += await attack(server, second)
    after = server.rss_mib()
    print(
        f"\nRSS baseline {baseline:.1f} MiB; round 1 peak +{max(first) - baseline:.1f}, "
        f"after +{after_first - baseline:.1f}; round 2 peak +{max(second) - baseline:.1f}, "
        f"after +{after - baseline:.1f}; /healthz median "
        f"{statistics.median(probes) * 1000:.1f} ms, max {max(probes) * 1000:.1f} ms"
    )
    assert max(first + second) - baseline < 20
    # What the first round took is used again by the second, not kept and added to.
    assert after - after_first < 5
    assert max(probes) < 0.1
