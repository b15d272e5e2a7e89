"""The stack is real: livekit-server, redis and the SIP simulator answer as the real ones.

These tests drive the stack started by the `stack` fixture (and a few stacks of their
own) with the real LiveKit API and a plain `livekit.rtc` observer.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import astuple
from pathlib import Path

import pytest
from livekit import api

from stack import Stack, StackConfig, StackStartError
from stack._paths import REPO_ROOT
from stack.ledger import CallEnded, Ledger, LedgerError, parse_line
from tests.integration.calls import PlaceCall, SimInbound, SipSetup, sim_number, unique_room
from tests.integration.oracle import JoinAnswerer, JoinObserver


def _processes() -> Iterator[tuple[int, int, int, str]]:
    """(pid, parent pid, process group, state) of every process, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        yield int(entry.name), int(ppid), int(pgrp), state


def _processes_in_groups(pgids: set[int]) -> list[int]:
    """Pids of live processes whose process group is one of `pgids`."""
    return [pid for pid, _, pgrp, state in _processes() if pgrp in pgids and state != "Z"]


def _child_pgids(parent: int) -> set[int]:
    """Process groups of the direct children of `parent`."""
    return {pgrp for _, ppid, pgrp, _ in _processes() if ppid == parent}


def _http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


# --- the stack itself ----------------------------------------------------------------


@pytest.mark.integration
def test_every_part_answers_its_health_check_on_loopback(stack: Stack) -> None:
    assert _http_get(stack.http_url + "/") == (200, b"OK")
    status, metrics = _http_get(stack.livekit_prometheus_url)
    assert status == 200
    assert b"go_goroutines" in metrics
    assert _http_get(stack.sim_control_url + "/healthz")[0] == 200
    assert stack.healthy("redis")
    assert stack.ws_url.startswith("ws://127.0.0.1:")
    assert stack.env() == {
        "LIVEKIT_URL": stack.ws_url,
        "LIVEKIT_API_KEY": stack.api_key,
        "LIVEKIT_API_SECRET": stack.api_secret,
    }
    assert len(stack.api_secret) >= 32
    for name in ("livekit-server.log", "redis.log", "sipsim.log", "livekit.yaml", "redis.conf"):
        assert (stack.logs_dir / name).is_file(), name


@pytest.mark.integration
async def test_two_stacks_run_side_by_side(stack: Stack, lkapi: api.LiveKitAPI) -> None:
    with await asyncio.to_thread(Stack.start, StackConfig()) as other:
        mine = set(astuple(stack.ports))
        theirs = set(astuple(other.ports))
        assert not mine & theirs, "the two stacks share a port"
        assert other.api_key != stack.api_key
        room = unique_room("side-by-side")
        async with api.LiveKitAPI(other.http_url, other.api_key, other.api_secret) as other_api:
            await other_api.room.create_room(api.CreateRoomRequest(name=room))
            listed = await other_api.room.list_rooms(api.ListRoomsRequest(names=[room]))
            assert [r.name for r in listed.rooms] == [room]
        ours = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[room]))
        assert list(ours.rooms) == []
        assert _http_get(other.sim_control_url + "/healthz")[0] == 200
    assert _http_get(stack.http_url + "/") == (200, b"OK")


@pytest.mark.integration
def test_stopping_the_stack_leaves_no_process_behind() -> None:
    started = Stack.start(StackConfig())
    pgids = set(started.pids().values())
    assert len(pgids) == 3
    assert _processes_in_groups(pgids)
    started.stop()
    assert _processes_in_groups(pgids) == []
    assert started.stopped


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_cli_stops_everything_on_ctrl_c_or_sigterm(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "stack", "up"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        env: dict[str, str] = {}
        for line in proc.stdout:
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").strip().partition("=")
                env[key] = value
            if line.startswith("# logs:"):
                logs_dir = Path(line.split(":", 1)[1].strip())
                break
        assert set(env) == {"LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"}
        described = json.loads((logs_dir / "stack.json").read_text())
        assert described["ws_url"] == env["LIVEKIT_URL"]
        pgids = {int(p) for p in _child_pgids(proc.pid)}
        assert len(pgids) == 3, f"expected redis, livekit-server and sipsim, got {pgids}"
        proc.send_signal(sig)
        assert proc.wait(timeout=30) in (0, 128 + sig)
        assert _processes_in_groups(pgids) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.integration
def test_single_parts_can_be_killed_and_restarted() -> None:
    with Stack.start(StackConfig()) as own:
        old = own.pids()
        own.kill("sipsim", signal.SIGKILL)
        assert own.wait_exited("sipsim") == -signal.SIGKILL
        assert not own.healthy("sipsim")
        own.start_part("sipsim")
        assert own.healthy("sipsim")
        own.restart("livekit")
        own.restart("redis")
        new = own.pids()
        assert all(new[part] != old[part] for part in ("sipsim", "livekit", "redis"))
        assert _http_get(own.http_url + "/") == (200, b"OK")
        assert own.healthy("redis")
        assert _processes_in_groups(set(old.values())) == []


@pytest.mark.integration
def test_a_part_that_cannot_start_is_named_with_its_log(stack: Stack) -> None:
    taken = StackConfig(sip_simulator=False, extra_livekit_config={"port": stack.ports.redis})
    with pytest.raises(StackStartError) as caught:
        Stack.start(taken)
    assert caught.value.part == "livekit"
    assert caught.value.log_path.name == "livekit-server.log"
    assert str(caught.value.log_path) in str(caught.value)
    assert "address already in use" in str(caught.value)


# --- calls through the simulator -----------------------------------------------------


@pytest.mark.integration
async def test_answered_outbound_call_goes_dialing_ringing_active_hangup(
    place_call: PlaceCall, observe: JoinObserver
) -> None:
    room = unique_room("stack-answered")
    observer = await observe(room)
    placed = await place_call(sim_number("00"), room=room, identity="callee", ring=1, talk=1)
    assert placed.error is None
    left = await observer.wait_left("callee")
    assert observer.statuses("callee") == ["dialing", "ringing", "active", "hangup"]
    assert left.kind == "PARTICIPANT_KIND_SIP"
    assert left.disconnect_reason == "CLIENT_INITIATED"


@pytest.mark.integration
async def test_busy_callee_raises_sip_call_error_486(place_call: PlaceCall) -> None:
    room = unique_room("stack-busy")
    placed = await place_call(
        sim_number("02"), room=room, wait_until_answered=True, ring=0.5, wait_for_end=False
    )
    assert isinstance(placed.error, api.SipCallError)
    assert placed.error.sip_status_code == 486


@pytest.mark.integration
async def test_inbound_call_lands_in_the_room_its_dispatch_rule_names(
    sim_inbound: SimInbound,
    sip_setup: SipSetup,
    observe: JoinObserver,
    answerer: JoinAnswerer,
    ledger: Ledger,
    lkapi: api.LiveKitAPI,
) -> None:
    caller = sim_number("00")
    call = await sim_inbound(
        **{"from": caller, "to": sip_setup.number, "scenario": "answer_caller_hangup", "talk": 1}
    )
    room = call["room"]
    assert room.startswith(f"{sip_setup.room_prefix}_{caller}_")
    observer = await observe(room)
    seen = await observer.wait_for(lambda s: s.identity == call["participant_identity"])
    assert seen.attributes["sip.ruleID"] == sip_setup.dispatch_rule_id
    assert seen.attributes["sip.trunkID"] == sip_setup.inbound_trunk_id
    listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    assert call["participant_identity"] in [p.identity for p in listed.participants]
    await answerer(room)
    await observer.wait_left(call["participant_identity"])
    assert observer.statuses(call["participant_identity"]) == ["ringing", "active", "hangup"]
    ended = await asyncio.wait_for(ledger.await_call_ended(call_id=call["call_id"]), 30)
    assert ended.direction == "inbound"
    assert ended.room == room
    assert ended.answered


@pytest.mark.integration
async def test_ledger_matches_what_the_room_showed(
    place_call: PlaceCall, observe: JoinObserver, sip_setup: SipSetup
) -> None:
    room = unique_room("stack-ledger")
    observer = await observe(room)
    placed = await place_call(sim_number("00"), room=room, identity="ledgered", ring=1, talk=1)
    assert placed.info is not None
    ended = placed.ended
    assert ended is not None
    left = await observer.wait_left("ledgered")
    assert ended.call_id == placed.info.sip_call_id
    assert ended.direction == "outbound"
    assert ended.room == room
    assert ended.participant_identity == "ledgered"
    assert ended.participant_sid == placed.info.participant_id
    assert ended.trunk_id == sip_setup.outbound_trunk_id
    assert ended.answered
    assert ended.sip_status_code == 200
    assert list(ended.statuses) == observer.statuses("ledgered")
    assert ended.ended_by == "callee"
    assert ended.t_start is not None
    assert ended.t_answer is not None
    assert ended.t_end is not None
    assert ended.t_start <= ended.t_answer <= ended.t_end
    assert ended.duration is not None
    assert 1.5 < ended.duration < 5
    assert left.disconnect_reason is not None


# --- the ledger reader (no stack needed) ---------------------------------------------


def test_ledger_reader_keeps_a_half_written_line_for_later(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    assert ledger.events() == []
    line = {
        "ts": 1795619902.5,
        "call_id": "SCL_x",
        "event": "call_ended",
        "direction": "outbound",
        "scenario": "busy",
        "quirks": [],
        "room": "r",
        "participant_identity": "callee",
        "participant_sid": "PA_1",
        "trunk_id": "ST_1",
        "answered": False,
        "sip_status_code": 486,
        "statuses": ["dialing", "ringing"],
        "leave_reason": "USER_REJECTED",
        "ended_by": "callee",
        "t_start": 1795619901.0,
        "t_ringing": 1795619901.1,
        "t_answer": None,
        "t_end": "2026-11-25T15:58:22.500000000Z",
    }
    text = json.dumps(line)
    path.write_text(text[:40])
    assert ledger.events() == []
    with path.open("a") as fh:
        fh.write(text[40:] + "\n")
    [ended] = ledger.calls_ended()
    assert isinstance(ended, CallEnded)
    assert ended.sip_status_code == 486
    assert ended.statuses == ("dialing", "ringing")
    assert ended.t_answer is None
    assert ended.t_end == pytest.approx(1795622302.5)
    assert ledger.wait_call_ended(call_id="SCL_x", timeout=0.1) == ended


def test_ledger_reader_rejects_a_line_without_call_id() -> None:
    with pytest.raises(LedgerError):
        parse_line('{"ts": 1.0, "event": "status"}')


def test_ledger_wait_times_out_with_the_file_named(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "none.jsonl")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"none\.jsonl"):
        ledger.wait_call_ended(call_id="SCL_missing", timeout=0.2)
    assert time.monotonic() - started < 2
    assert not os.path.exists(tmp_path / "none.jsonl")
