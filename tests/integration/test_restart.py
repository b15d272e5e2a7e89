"""Crash-only restart on the real stack: SIGKILL with calls in every state, restart on
the same journal, and the simulator's ledger as the truth.

The first run's metrics die with it (Prometheus keeps what it scraped); the second
run's count exactly what its call log says.

Placed at t=0. Killed at about t=3, once the not-found call has ended, while one call
dials (its 18x comes at t=6), one rings, one talks; down while two calls end (hung up,
rejected busy) and the dialing one starts to ring; started again on its journal at
about t=8. Every
call ends exactly once across the two runs' call logs and the journal's `counted`
lines, starts once, with the timings the first run measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitor.core.journal_format import Counted, Header
from monitor.sinks.journal import read_journal
from monitor.sinks.metrics import sample_totals
from stack import Stack
from stack.ledger import CallEnded, Ledger
from tests.integration.calls import PlaceCall, await_call_ended, sim_number, unique_room
from tests.integration.monitoring import wait_until

# A carrier's post-dial delay: the observer, which joins on the participant_joined
# webhook, is in the room before the 18x, so the first run measures it (a simulator's
# default 18x comes within milliseconds, before the observer, and is approximate).
CARRIER_PDD = {"X-Sim-PDD": "1"}
# How far a timing the first run measured may be from the simulator's (its clock and
# the signal's trip), and a moment seen only after the fact is marked approximate.
EXACT = 0.3


def metric_total(exposition: str, name: str) -> float:
    return sample_totals(exposition, name)[""]


def ended_in(room: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("event") == "call_ended" and e.get("room") == room


def log_lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(errors="replace") if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_a_monitor_killed_with_calls_in_every_state_restores_them_from_its_journal(
    stack: Stack, monitor_port: int, place_call: PlaceCall, ledger: Ledger, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    env = {
        **os.environ,
        **stack.env(),
        "CALL_MONITOR_HTTP_PORT": str(monitor_port),
        "CALL_MONITOR_LOG_FORMAT": "json",
        "CALL_MONITOR_RECONCILE_SECONDS": "2",
        "CALL_MONITOR_JOURNAL": str(journal),
    }

    def start(log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "monitor", "run"], env=env, stdout=out, stderr=out
            )

    async def wait_log(log: Path, what: Callable[[dict[str, Any]], bool], within: float) -> None:
        try:
            await wait_until(lambda: any(what(e) for e in log_lines(log)), within)
        except pytest.fail.Exception:
            tail = "\n".join(json.dumps(e) for e in log_lines(log)[-40:])
            pytest.fail(f"{log.name} never showed it; its last lines:\n{tail}")

    def in_state(log: Path, room: str, state: str) -> Callable[[dict[str, Any]], bool]:
        return lambda e: e.get("room") == room and e.get("state") == state

    rooms = {
        name: unique_room(f"restart{name}")
        for name in ("dialing", "ringing", "talking", "endedbefore", "endsdown", "busydown")
    }
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = start(first_log)
    second: subprocess.Popen[bytes] | None = None
    try:
        await wait_log(first_log, lambda e: e.get("event") == "readiness_changed", 60)
        # Each call's far end, timed so that the kill and the restart find it where wanted.
        placing = [
            place_call(sim_number("00"), room=rooms["dialing"], headers={"X-Sim-PDD": "6"},
                       ring=3.0, talk=3.0, wait_for_end=False),
            place_call(sim_number("00"), room=rooms["ringing"], headers=CARRIER_PDD, ring=16.0,
                       talk=3.0, wait_for_end=False),
            place_call(sim_number("00"), room=rooms["talking"], headers=CARRIER_PDD, ring=1.0,
                       talk=16.0, wait_for_end=False),
            place_call(sim_number("05"), room=rooms["endedbefore"], wait_for_end=False),
            place_call(sim_number("00"), room=rooms["endsdown"], ring=1.0, talk=6.0,
                       wait_for_end=False),
            place_call(sim_number("02"), room=rooms["busydown"], ring=7.0, wait_for_end=False),
        ]  # fmt: skip
        call_ids: dict[str, str] = {}
        for name, placed in zip(rooms, await asyncio.gather(*placing), strict=True):
            assert placed.info is not None, (name, placed.error)
            call_ids[name] = placed.info.sip_call_id
        await wait_log(first_log, in_state(first_log, rooms["ringing"], "ringing"), 15)
        await wait_log(first_log, in_state(first_log, rooms["talking"], "active"), 15)
        await wait_log(first_log, in_state(first_log, rooms["endsdown"], "active"), 15)
        await wait_log(first_log, ended_in(rooms["endedbefore"]), 15)
        dialing_then = [e for e in log_lines(first_log) if e.get("room") == rooms["dialing"]]
        assert dialing_then[-1]["state"] == "dialing", dialing_then[-1]
        first.kill()
        first.wait()
        truth: dict[str, CallEnded] = {}
        for name in ("endsdown", "busydown"):  # they end while nothing watches
            truth[name] = await await_call_ended(ledger, call_id=call_ids[name], timeout=20)
        second = start(second_log)
        await wait_log(second_log, lambda e: e.get("event") == "journal_restored", 30)
        for name in rooms:
            if name not in truth:
                truth[name] = await await_call_ended(ledger, call_id=call_ids[name], timeout=60)
        for name, room in rooms.items():
            if name != "endedbefore":
                await wait_log(second_log, ended_in(room), 30)
        # The second run's metrics count what its call log says, restored calls
        # included (other tests' rooms may end meanwhile: compared until they agree).
        url = f"http://127.0.0.1:{monitor_port}/metrics"
        async with aiohttp.ClientSession() as http:

            async def agree() -> tuple[float, float, int, int]:
                async with http.get(url) as answer:
                    text = await answer.text()
                lines = log_lines(second_log)
                return (
                    metric_total(text, "call_monitor_calls_started_total"),
                    metric_total(text, "call_monitor_calls_ended_total"),
                    sum(e.get("event") == "call_started" for e in lines),
                    sum(e.get("event") == "call_ended" for e in lines),
                )

            for _ in range(50):
                started, ended_count, logged_started, logged_ended = await agree()
                if (started, ended_count) == (logged_started, logged_ended):
                    break
                await asyncio.sleep(0.1)
            assert (started, ended_count) == (logged_started, logged_ended)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=15)

    first_lines, second_lines = log_lines(first_log), log_lines(second_log)
    ours = set(call_ids.values())

    def per_call(event: str, *logs: list[dict[str, Any]]) -> Counter[str]:
        found = (e.get("call_id") for lines in logs for e in lines if e.get("event") == event)
        return Counter(call_id for call_id in found if call_id in ours)

    # Each call started and ended once across the two runs, in the call logs...
    assert per_call("call_started", first_lines, second_lines) == Counter(ours)
    assert per_call("call_ended", first_lines, second_lines) == Counter(ours)
    assert per_call("call_ended", first_lines) == Counter([call_ids["endedbefore"]])
    # ...and in the journal's `counted` lines, split by run at the second run's header.
    runs: list[list[Counted]] = []
    for item in read_journal([journal]):
        if isinstance(item, Header):
            runs.append([])
        elif isinstance(item, Counted) and item.key in ours:
            runs[-1].append(item)
    assert len(runs) == 2
    for what in ("started", "ended"):
        keys = Counter(c.key for run in runs for c in run if c.what == what)
        assert keys == Counter(ours), what
    restored = next(e for e in second_lines if e.get("event") == "journal_restored")
    assert restored["open_calls"] >= 5, restored  # all but the one that ended before

    ended = {e["call_id"]: e for e in second_lines if e.get("event") == "call_ended"}
    # The ringing call was answered after the restart: its post-dial delay is the one
    # the first run measured, exact.
    ringing, ringing_truth = ended[call_ids["ringing"]], truth["ringing"]
    assert ringing["outcome"] == "completed"
    assert ringing["post_dial_delay_approximate"] is False
    assert ringing_truth.t_start is not None
    assert ringing_truth.t_ringing is not None
    pdd = ringing_truth.t_ringing - ringing_truth.t_start
    assert abs(ringing["post_dial_delay_seconds"] - pdd) < EXACT
    # The talking call hung up after the restart: answer and talk as the ledger says.
    talking, talking_truth = ended[call_ids["talking"]], truth["talking"]
    assert talking["outcome"] == "completed"
    assert talking["timings_approximate"] is False
    assert talking_truth.t_answer is not None
    assert talking_truth.t_end is not None
    talk = talking_truth.t_end - talking_truth.t_answer
    assert abs(talking["talk_seconds"] - talk) < 2 * EXACT
    # The dialing call rang and was answered while the monitor was down: its start is
    # the first run's, its ringing seen after the fact.
    dialing, dialing_truth = ended[call_ids["dialing"]], truth["dialing"]
    assert dialing["outcome"] == "completed"
    assert dialing["post_dial_delay_approximate"] is True
    assert dialing_truth.duration is not None
    assert abs(dialing["total_seconds"] - dialing_truth.duration) < 2 * EXACT
    # The calls that ended while it was down end once: from a webhook livekit-server
    # retried, or, unseen, as lost saying the monitor was away.
    away = {
        e["call_id"]
        for e in second_lines
        if e.get("event") == "anomaly" and e.get("kind") == "ended_while_away"
    }
    for name, expected in (("endsdown", "completed"), ("busydown", "rejected")):
        call = ended[call_ids[name]]
        assert call["outcome"] in (expected, "lost"), call
        assert (call["outcome"] == "lost") == (call_ids[name] in away), (call, away)
