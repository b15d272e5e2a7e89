"""Every dashboard panel's PromQL, evaluated by a real Prometheus over real calls.

Debian's `prometheus` scrapes the monitor every second and evaluates the project's
recording and alert rules (prometheus/rules/) while real calls of mixed outcomes run
through the real livekit-server and the SIP simulator. Then every panel query of
every dashboard (dashboards/, through `panel_queries()`) goes through Prometheus's
HTTP API, and each one that should show data after such a run must.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from dashboards.generate import panel_queries
from stack import Stack
from stack.config import free_port
from stack.ledger import parse_time
from tests.integration.calls import PlaceCall, sim_number, unique_room
from tests.integration.monitoring import running_monitor, wait_until
from tests.tools import system_tool

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
# A wave of calls of mixed outcomes: answered, busy, not found, server error.
WAVE = ["00", "00", "02", "05", "07"]


class Prometheus:
    """A real Prometheus on loopback: scrapes the monitor, evaluates the rules."""

    def __init__(self, workdir: Path, target_port: int) -> None:
        binary = system_tool("prometheus", "prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in RULE_FILES],
            "scrape_configs": [
                {
                    "job_name": "call-monitor",
                    "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                }
            ],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])

    async def get(self, session: aiohttp.ClientSession, path: str, **params: str) -> Any:
        async with session.get(self.url + path, params=params) as answer:
            body = await answer.json()
        if body.get("status") != "success":
            pytest.fail(f"Prometheus {path} {params}: {body}")
        return body["data"]

    async def value(self, session: aiohttp.ClientSession, expr: str) -> float:
        """The single value of an instant query, 0 when it returns nothing."""
        data = await self.get(session, "/api/v1/query", query=expr)
        return float(data["result"][0]["value"][1]) if data["result"] else 0.0


@pytest.fixture
def prometheus(tmp_path: Path, monitor_port: int) -> Iterator[Prometheus]:
    # The monitor under test binds another port: `monitor_port` receives the stack's
    # webhooks, and the monitor of this test binds it too (see monitoring.py).
    server = Prometheus(tmp_path, monitor_port)
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        yield client


async def wait_for(
    prometheus: Prometheus,
    session: aiohttp.ClientSession,
    expr: str,
    want: float,
    timeout: float = 60.0,  # noqa: ASYNC109 - a timeout here is a test failure with context
) -> None:
    deadline = time.monotonic() + timeout
    seen = 0.0
    while time.monotonic() < deadline:
        try:
            seen = await prometheus.value(session, expr)
        except aiohttp.ClientError:
            seen = -1.0  # not up yet
        if seen >= want:
            return
        await asyncio.sleep(0.5)  # the polling interval
    pytest.fail(f"{expr} = {seen}, wanted {want}; Prometheus log:\n{prometheus.log_tail()}")


async def evaluated_twice_since(
    prometheus: Prometheus, session: aiohttp.ClientSession, since: float
) -> bool:
    """Whether every rule group has been evaluated twice since `since` (Unix seconds):
    its last evaluation (given once done) began at least one interval after `since`."""
    rules = await prometheus.get(session, "/api/v1/rules")
    groups = rules["groups"]
    return bool(groups) and all(
        (parse_time(group["lastEvaluation"]) or 0.0) >= since + float(group["interval"])
        for group in groups
    )


def has_numbers(result: list[dict[str, Any]]) -> bool:
    """Whether a query result holds at least one real number (not NaN)."""
    for series in result:
        points = series.get("values") or [series.get("value")]
        if any(point and not math.isnan(float(point[1])) for point in points):
            return True
    return False


async def test_every_panel_query_returns_data_from_real_calls(
    stack: Stack,
    monitor_port: int,
    place_call: PlaceCall,
    prometheus: Prometheus,
    session: aiohttp.ClientSession,
) -> None:
    assert RULE_FILES, "no rule files under prometheus/rules"
    async with running_monitor(stack, monitor_port, room_mode="setup") as (_, recorder):
        started = time.time()
        await wait_for(prometheus, session, 'up{job="call-monitor"}', 1)
        # Two waves: Prometheus sees a counter's series only once it exists, and rate()
        # counts increments between samples, so the second wave makes every rate move.
        for wave in range(2):
            rooms = [unique_room(f"dash{wave}") for _ in WAVE]
            await asyncio.gather(
                *(
                    place_call(
                        sim_number(code),
                        room=room,
                        ring=1.0,
                        talk=1.5,
                        # A carrier's post-dial delay: the observer is in the room
                        # before the 18x, so the delay is measured, not approximate.
                        headers={"X-Sim-PDD": "1.0"},
                    )
                    for code, room in zip(WAVE, rooms, strict=True)
                )
            )
            for room in rooms:
                await recorder.wait_ended(room)
            ended = len(WAVE) * (wave + 1)
            await wait_for(prometheus, session, "sum(call_monitor_calls_ended_total)", ended)
        # Two more rule evaluations after the last scrape that saw every call.
        seen_all = time.time()
        await wait_until(
            lambda: evaluated_twice_since(prometheus, session, seen_all),
            30,
            "every rule group evaluated twice after the last scrape",
            interval=0.5,
        )
        finished = time.time()

        missing: list[str] = []
        checked = 0
        for query in panel_queries():
            expr = query.concrete()
            if query.instant:
                data = await prometheus.get(session, "/api/v1/query", query=expr)
            else:
                data = await prometheus.get(
                    session,
                    "/api/v1/query_range",
                    query=expr,
                    start=f"{started:.3f}",
                    end=f"{finished:.3f}",
                    step="1",
                )
            checked += 1
            if query.expect_data and not has_numbers(data["result"]):
                missing.append(
                    f"{query.dashboard_uid} / {query.panel_title} / {query.ref_id}: {expr}"
                )
        rules = await prometheus.get(session, "/api/v1/rules")
    assert checked == len(panel_queries())
    assert not missing, "panels without data after real calls:\n" + "\n".join(missing)
    # Every recording and alert rule evaluated on the real metrics without an error.
    evaluated = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(evaluated) > 10
    broken = [
        f"{rule['name']}: {rule.get('lastError')}" for rule in evaluated if rule["health"] != "ok"
    ]
    assert not broken, broken
