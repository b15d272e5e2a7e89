"""The SIP simulator shows a room what the real livekit-sip showed in the recorded traces.

For every recording in tests/fixtures/traces/ (real livekit-sip with sipp, see the
README there) this places the same call through the simulator and compares what a
plain hidden observer sees with what the recording's observer saw: the SIP
participant's kind, its attribute keys and the order of its attribute changes, the
`sip.callStatus` sequence, whether it published a track, its leave reason, the
observer's own end when the server caused it, and for `_wait` runs the API error
(type, Twirp code, HTTP status, message, metadata). Timings are compared loosely.

Nothing expected is written here: the far end's behaviour comes from the sipp
scenario the recording used (tests/fixtures/traces/sipp/), the request from the
recording's result file, and every expectation from the recording's events.
"""

from __future__ import annotations

import asyncio
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from livekit import api

from stack import Stack
from tests.integration.calls import (
    OUTBOUND_TRUNK_ADDRESS,
    TRUNK_NUMBER,
    PlaceCall,
    SimInbound,
    SipSetup,
    sim_number,
    unique_room,
)
from tests.integration.oracle import JoinAnswerer, JoinObserver, RoomObserver, WebhookRecorder

TRACES = Path(__file__).resolve().parent.parent / "fixtures" / "traces"
SIP_KIND = "PARTICIPANT_KIND_SIP"
NOANSWER_WINDOW = 10.0
"""Seconds an unanswered inbound call is watched (the recording watched it for 27 s)."""
TAIL = 2.0
"""Seconds the observer stays after the SIP participant left, to catch late events."""

# The simulator's outbound number table (docs/simulator.md): final SIP answer -> code.
SIM_CODE_FOR_FAILURE = {486: "02", 603: "03", 403: "04", 404: "05", 480: "06", 503: "07", 500: "12"}


# --- what the recordings contain -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class FarEnd:
    """What a sipp scenario does: provisional answers, final answer, pauses, who hangs up."""

    provisional: tuple[int, ...]
    final: int | None
    ring: float
    talk: float | None
    bye: bool
    caller: str | None


_STATUS_LINE = re.compile(r"^SIP/2\.0 (\d{3})")
_FROM_NUMBER = re.compile(r"^From:.*<sip:(\+?\d+)@", re.MULTILINE)


def read_sipp(path: Path) -> FarEnd:
    """Walk a sipp scenario in order and note what the far end answers and when.

    `ring` is the pause between the last provisional answer and the final one, `talk`
    the pause between the answer (200 and ACK) and the BYE.
    """
    provisional: list[int] = []
    final: int | None = None
    ring, talk, pause = 0.0, None, 0.0
    bye = False
    caller: str | None = None
    for node in ET.parse(path).getroot():
        if node.tag == "pause":
            pause += float(node.get("milliseconds", "0")) / 1000
        elif node.tag == "recv":
            if node.get("request") == "CANCEL":
                break  # never answered; what follows only answers the CANCEL
            if node.get("response") == "200":  # sipp is the caller and was answered
                final = 200
            pause = 0.0
        elif node.tag == "send":
            text = (node.text or "").strip()
            first = text.splitlines()[0] if text else ""
            if match := _STATUS_LINE.match(first):
                code = int(match.group(1))
                if final is not None:
                    pass  # a 200 answering the caller's BYE, not the INVITE
                elif code < 200:
                    provisional.append(code)
                else:
                    final, ring = code, pause
            elif first.startswith("BYE"):
                bye, talk = True, pause
            elif first.startswith("INVITE") and (found := _FROM_NUMBER.search(text)):
                caller = found.group(1)
            pause = 0.0
    return FarEnd(tuple(provisional), final, ring, talk, bye, caller)


def sim_code(far: FarEnd) -> str:
    """The simulator behaviour (two digits of the dialed number) that plays `far`."""
    if far.final is None:
        return "09"
    if far.final != 200:
        return SIM_CODE_FOR_FAILURE[far.final]
    if 183 in far.provisional:
        return "08"
    if far.bye:
        return "00"
    return "01" if 180 in far.provisional else "11"


@dataclass(frozen=True, slots=True)
class Trace:
    """One recording: its observer's events and the API call's result."""

    name: str
    events: list[dict[str, Any]]
    result: dict[str, Any]

    @property
    def inbound(self) -> bool:
        return "inbound" in self.name

    @property
    def scenario(self) -> str:
        """The recorded scenario: a..j, inbound or inbound_noanswer."""
        if self.inbound:
            return self.name.removeprefix("webhooks_")
        return str(self.result["scenario"] if "scenario" in self.result else self.result["run"])

    @property
    def sipp(self) -> FarEnd:
        scenario = "inbound_uac" if self.inbound else self.scenario
        return read_sipp(TRACES / "sipp" / f"{scenario}.xml")

    @property
    def anchor(self) -> float:
        """The moment the room's timings count from: the API request for an outbound
        call; for an inbound call the answerer's audio, or the observer's arrival."""
        if not self.inbound:
            return float(self.result["t_request"])
        for event in ("answerer_published_audio", "observer_connected"):
            if (found := self.first(event)) is not None:
                return float(found["t"])
        raise AssertionError(f"{self.name}: nothing to count the time from")

    def first(self, event: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == event), None)

    def until(self, seconds: float) -> Trace:
        """The same recording cut `seconds` after its anchor."""
        kept = [e for e in self.events if e["t"] - self.anchor <= seconds]
        return Trace(self.name, kept, self.result)


def trace_names() -> list[str]:
    """Every observer recording of a call (webhooks_* are second runs, see below)."""
    return sorted(
        p.name.removesuffix(".jsonl")
        for p in TRACES.glob("*.jsonl")
        if not p.name.startswith("webhooks_")
    )


def load_trace(name: str) -> Trace:
    """A recording's observer and harness events (webhook lines left out) and result."""
    lines = [json.loads(line) for line in (TRACES / f"{name}.jsonl").read_text().splitlines()]
    result = json.loads((TRACES / f"{name}.result.json").read_text())
    return Trace(name=name, events=[e for e in lines if e["event"] != "webhook"], result=result)


def recordings_of(trace: Trace) -> list[Trace]:
    """Every recording of the same scenario, `trace` first.

    The real system does not show the same thing every time: with the room deleted,
    the observer saw the callee leave in one run of j and not in two others
    (livekit-server closes a room's participants in Go map order, pkg/rtc/room.go
    Room.Close), and the SIP track was seen 1 s late in two runs out of 25. The
    simulator must look like one of the real runs; the other runs of a scenario are
    the `_wait`/`_nowait` twin and the `webhooks_` rerun.
    """
    if trace.inbound:
        names = [trace.name, f"webhooks_{trace.name}"]
    else:
        letter = trace.scenario
        names = [trace.name, f"{letter}_wait", f"{letter}_nowait", f"webhooks_{letter}"]
    unique = list(dict.fromkeys(names))
    return [load_trace(n) for n in unique if (TRACES / f"{n}.jsonl").exists()]


# --- what an observer saw, reduced to what must match --------------------------------


@dataclass(frozen=True, slots=True)
class View:
    """The comparable part of one observer's events about the call's SIP participant."""

    kind: str | None
    first_event: str | None
    first_keys: frozenset[str]
    keys_seen: frozenset[str]
    statuses: tuple[str, ...]
    changes: tuple[frozenset[str], ...]
    # None: cannot tell. A track published before the observer connected comes with
    # the participant already present, and no track_published event.
    published: bool | None
    left_reason: str | None
    left_status: str | None
    server_end: str | None


def sip_identity(events: Sequence[Mapping[str, Any]]) -> str | None:
    """The identity of the first SIP participant in the events."""
    return next((e["identity"] for e in events if e.get("kind") == SIP_KIND), None)


def view_of(events: Sequence[Mapping[str, Any]]) -> View:
    identity = sip_identity(events)
    mine = [e for e in events if identity is not None and e.get("identity") == identity]
    mine = [e for e in mine if not e["event"].startswith("answerer_")]
    statuses: list[str] = []
    keys: set[str] = set()
    for e in mine:
        keys |= set(e.get("attributes", {}))
        status = e.get("attributes", {}).get("sip.callStatus")
        if status is not None and (not statuses or statuses[-1] != status):
            statuses.append(status)
    left = next((e for e in mine if e["event"] == "participant_disconnected"), None)
    end = next((e for e in events if e["event"] == "disconnected"), None)
    return View(
        kind=mine[0]["kind"] if mine else None,
        first_event=mine[0]["event"] if mine else None,
        first_keys=frozenset(mine[0].get("attributes", {})) if mine else frozenset(),
        keys_seen=frozenset(keys),
        statuses=tuple(statuses),
        changes=tuple(
            frozenset(e["changed"]) for e in mine if e["event"] == "participant_attributes_changed"
        ),
        published=(
            True
            if any(e["event"] == "track_published" for e in mine)
            else None
            if mine and mine[0]["event"] == "already_present"
            else False
        ),
        left_reason=left["disconnect_reason"] if left else None,
        left_status=left["attributes"].get("sip.callStatus") if left else None,
        server_end=(
            end["disconnect_reason"]
            if end and end["disconnect_reason"] != "CLIENT_INITIATED"
            else None
        ),
    )


def milestones(events: Sequence[Mapping[str, Any]], anchor: float) -> dict[str, float]:
    """When (after `anchor`) the SIP participant was first seen, got each status,
    published and unpublished its track, and left."""
    identity = sip_identity(events)
    out: dict[str, float] = {}
    for e in events:
        if identity is None or e.get("identity") != identity or e["event"].startswith("answerer_"):
            continue
        t = round(e["t"] - anchor, 3)
        out.setdefault("seen", t)
        status = e.get("attributes", {}).get("sip.callStatus")
        if status is not None:
            out.setdefault(f"status {status}", t)
        if e["event"] in ("track_published", "track_unpublished", "participant_disconnected"):
            out.setdefault(e["event"], t)
    # Moments before the anchor only say when the observer happened to arrive.
    return {name: t for name, t in out.items() if t >= 0}


def timing_mismatches(recorded: Mapping[str, float], observed: Mapping[str, float]) -> list[str]:
    """Recorded moments not observed within 0.5 s plus 10 %."""
    problems = []
    for name, t in recorded.items():
        slack = 0.5 + 0.1 * abs(t)
        if name not in observed:
            problems.append(f"{name} recorded at {t:.3f} s, never seen")
        elif abs(observed[name] - t) > slack:
            problems.append(f"{name} at {observed[name]:.3f} s, recorded {t:.3f} s (±{slack:.2f})")
    return problems


def differs(name: str, recorded: object, observed: object) -> bool:
    if name == "published" and None in (recorded, observed):
        return False  # one observer arrived after the track: it cannot tell
    return recorded != observed


def room_mismatches(
    recording: Trace, seen: Sequence[Mapping[str, Any]], observed_anchor: float
) -> list[str]:
    """How what the observer saw differs from one recording (empty: it matches)."""
    recorded, observed = view_of(recording.events), view_of(seen)
    problems = [
        f"{name}: recorded {getattr(recorded, name)}, observed {getattr(observed, name)}"
        for name in View.__slots__
        if differs(name, getattr(recorded, name), getattr(observed, name))
    ]
    return problems + timing_mismatches(
        milestones(recording.events, recording.anchor), milestones(seen, observed_anchor)
    )


def assert_room_looks_like_a_recording(
    trace: Trace,
    seen: Sequence[Mapping[str, Any]],
    observed_anchor: float,
    window: float | None = None,
) -> None:
    """The observer's events match at least one real recording of the scenario."""
    problems = {}
    for recording in recordings_of(trace):
        cut = recording if window is None else recording.until(window)
        found = room_mismatches(cut, seen, observed_anchor)
        if not found:
            return
        problems[recording.name] = found
    report = "\n".join(f"  vs {name}: " + "; ".join(p) for name, p in problems.items())
    seen_lines = "\n".join(map(str, seen))
    raise AssertionError(
        f"{trace.name}: the room did not look like any recording of it\n{report}\n"
        f"--- observed:\n{seen_lines}"
    )


def relations(
    events: Sequence[Mapping[str, Any]], context: Mapping[str, str | None]
) -> dict[str, list[str]]:
    """Which attribute (and the identity) equals which request value, at the last event."""
    identity = sip_identity(events)
    mine = [e for e in events if e.get("identity") == identity]
    if not mine:
        return {}
    values = {**mine[-1].get("attributes", {}), "(identity)": identity}
    return {
        key: sorted(name for name, v in context.items() if v is not None and v == value)
        for key, value in values.items()
    }


# --- replaying a recording through the simulator -------------------------------------


def _seconds(text: str | None) -> float | None:
    """'10s' (a protobuf Duration in JSON) as seconds."""
    return float(text.removesuffix("s")) if text else None


async def _prepare_room(lkapi: api.LiveKitAPI, prefix: str) -> str:
    # As in the recordings: the room exists before the call and outlives it, so the
    # observer is not thrown out by a short departure timeout of the test stack.
    room = unique_room(prefix)
    await lkapi.room.create_room(
        api.CreateRoomRequest(name=room, empty_timeout=60, departure_timeout=30)
    )
    return room


async def _harness_actions(
    trace: Trace, observer: RoomObserver, lkapi: api.LiveKitAPI, room: str, identity: str
) -> None:
    """Do what the recording's harness did (remove the participant, delete the room),
    as long after the SIP participant turned `active` as it did then."""
    recorded_active = next(
        (e["t"] for e in trace.events if e.get("attributes", {}).get("sip.callStatus") == "active"),
        None,
    )
    for action in (e for e in trace.events if e["event"] == "harness_action"):
        assert recorded_active is not None, f"{trace.name}: harness action before answer"
        await observer.wait_for(
            lambda s: s.identity == identity and s.attributes.get("sip.callStatus") == "active"
        )
        await asyncio.sleep(action["t"] - recorded_active)
        verb, *args = action["action"].split()
        if verb == "remove_participant":
            await lkapi.room.remove_participant(
                api.RoomParticipantIdentity(room=room, identity=args[0])
            )
        elif verb == "delete_room":
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))
        else:
            raise AssertionError(f"{trace.name}: unknown harness action {action['action']!r}")


@dataclass(slots=True)
class Replayed:
    """What replaying one outbound recording gave."""

    seen: list[dict[str, Any]]
    t_request: float
    t_return: float
    number: str
    info: api.SIPParticipantInfo | None
    error: dict[str, Any] | None
    room: str
    t0: float


async def replay_outbound(
    trace: Trace, lkapi: api.LiveKitAPI, place_call: PlaceCall, observe: JoinObserver
) -> Replayed:
    """Place the recording's call through the simulator, watched by a fresh observer."""
    far = trace.sipp
    recorded = trace.result["request"]
    number = sim_number(sim_code(far), recorded["sip_call_to"][-7:])
    identity = recorded["participant_identity"]
    room = await _prepare_room(lkapi, trace.result["room"])
    observer = await observe(room)
    actions = asyncio.create_task(_harness_actions(trace, observer, lkapi, room, identity))
    placed = await place_call(
        number,
        room=room,
        identity=identity,
        wait_until_answered=bool(recorded.get("wait_until_answered", False)),
        ring=far.ring,
        talk=far.talk,
        ringing_timeout=_seconds(recorded.get("ringing_timeout")),
        wait_for_end=False,
    )
    error = placed.error
    await observer.wait_left(identity, timeout=40)
    await asyncio.sleep(TAIL)
    if not actions.done():
        actions.cancel()
    await asyncio.gather(actions, return_exceptions=True)
    await observer.close()
    return Replayed(
        seen=[s.as_trace_line() for s in observer.seen],
        t_request=round(placed.t_request - observer.t0, 3),
        t_return=round(placed.t_return - observer.t0, 3),
        number=number,
        info=placed.info,
        error=None
        if error is None
        else {
            "type": type(error).__name__,
            "code": error.code,
            "message": error.message,
            "http_status": error.status,
            "metadata": dict(error.metadata),
        },
        room=room,
        t0=observer.t0,
    )


OUTBOUND = [n for n in trace_names() if not n.startswith("inbound")]
INBOUND = [n for n in trace_names() if n.startswith("inbound")]


def server_lost_the_leave(stack: Stack, got: Replayed) -> bool:
    """The SIP participant was timed out by livekit-server after its write to the
    participant's websocket failed with a broken pipe, as its log says for that room."""
    timed_out = any(
        line.get("event") == "participant_disconnected"
        and line.get("disconnect_reason") == "CONNECTION_TIMEOUT"
        for line in got.seen
    )
    if not timed_out:
        return False
    log = stack.log_path("livekit").read_text(errors="replace")
    return any(
        "broken pipe" in line and f'"room": "{got.room}"' in line for line in log.splitlines()
    )


@pytest.mark.integration
@pytest.mark.parametrize("name", OUTBOUND)
async def test_outbound_call_looks_like_the_recording(
    name: str,
    stack: Stack,
    lkapi: api.LiveKitAPI,
    sip_setup: SipSetup,
    place_call: PlaceCall,
    observe: JoinObserver,
) -> None:
    trace = load_trace(name)
    result = trace.result
    got = await replay_outbound(trace, lkapi, place_call, observe)
    if server_lost_the_leave(stack, got):
        # livekit-server's own race, not the simulator's: it failed to write to the SIP
        # side's websocket as that closed ("broken pipe" in its log) and timed the
        # participant out 20 s later. The recordings never caught it; play it again.
        got = await replay_outbound(trace, lkapi, place_call, observe)
    assert_room_looks_like_a_recording(trace, got.seen, got.t_request)

    if result["ok"]:
        assert got.error is None, f"{name}: the recorded call succeeded, ours failed: {got.error}"
    else:
        assert got.error is not None, f"{name}: the recorded call failed with {result['error']}"
        assert got.error == {k: result["error"][k] for k in got.error}
    recorded_return = result["t_return"] - result["t_request"]
    assert not timing_mismatches(
        {"api returned": recorded_return}, {"api returned": got.t_return - got.t_request}
    ), f"{name}: the API returned after {got.t_return - got.t_request:.3f} s"

    recorded_context = {
        "sip_call_to": result["request"]["sip_call_to"],
        "sip_trunk_id": result["request"]["sip_trunk_id"],
        "sip_call_id": result.get("response", {}).get("sip_call_id"),
        "participant_identity": result["request"]["participant_identity"],
        "trunk_number": TRUNK_NUMBER,
        "trunk_address": OUTBOUND_TRUNK_ADDRESS,
    }
    observed_context = {
        "sip_call_to": got.number,
        "sip_trunk_id": sip_setup.outbound_trunk_id,
        "sip_call_id": got.info.sip_call_id if got.info else None,
        "participant_identity": result["request"]["participant_identity"],
        "trunk_number": sip_setup.number,
        "trunk_address": sip_setup.outbound_address,
    }
    assert relations(got.seen, observed_context) == relations(trace.events, recorded_context)


async def _room_appears(lkapi: api.LiveKitAPI, room: str) -> None:
    """Poll (for up to 10 s) until livekit-server lists the room, as the recording's
    harness did before its observer joined."""
    for _ in range(500):
        if (await lkapi.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"room {room} of the inbound call never appeared")


@dataclass(slots=True)
class ReplayedInbound:
    """What replaying one inbound recording gave."""

    seen: list[dict[str, Any]]
    anchor: float
    call: dict[str, Any]
    t0: float


async def replay_inbound(
    trace: Trace,
    stack: Stack,
    lkapi: api.LiveKitAPI,
    observe: JoinObserver,
    answerer: JoinAnswerer,
    sim_inbound: SimInbound,
) -> ReplayedInbound:
    """Call in as the recording's sipp did; watch the room as its harness did: join once
    the room appears, then (if the recording had one) add an answerer that speaks."""
    far = trace.sipp
    assert far.caller is not None, "the recording's sipp scenario names no caller"
    answers = trace.first("answerer_connected") is not None
    scenario = "answer_caller_hangup"
    call = await sim_inbound(
        **{"from": far.caller, "to": TRUNK_NUMBER, "scenario": scenario, "talk": far.talk}
    )
    await _room_appears(lkapi, call["room"])
    observer = await observe(call["room"])
    try:
        if answers:
            joined = await answerer(call["room"])
            assert joined.published_at is not None
            anchor = round(joined.published_at - observer.t0, 3)
            await observer.wait_left(call["participant_identity"], timeout=30)
            await asyncio.sleep(TAIL)
        else:
            anchor = 0.0
            await asyncio.sleep(NOANSWER_WINDOW)
    finally:
        await observer.close()
        if not answers:
            await asyncio.to_thread(stack.sim_hangup, call["call_id"])
    seen = [s.as_trace_line() for s in observer.seen]
    return ReplayedInbound(seen, anchor, call, observer.t0)


@pytest.mark.integration
@pytest.mark.parametrize("name", INBOUND)
async def test_inbound_call_looks_like_the_recording(
    name: str,
    stack: Stack,
    lkapi: api.LiveKitAPI,
    sip_setup: SipSetup,
    observe: JoinObserver,
    answerer: JoinAnswerer,
    sim_inbound: SimInbound,
) -> None:
    trace = load_trace(name)
    got = await replay_inbound(trace, stack, lkapi, observe, answerer, sim_inbound)
    answered = trace.first("answerer_connected") is not None
    window = None if answered else NOANSWER_WINDOW
    assert_room_looks_like_a_recording(trace, got.seen, got.anchor, window=window)

    caller = trace.sipp.caller
    room_pattern = re.escape(f"{sip_setup.room_prefix}_{caller}_") + r"\w+$"
    assert re.match(room_pattern, trace.result["room"]), "the recording's room"
    assert re.match(room_pattern, got.call["room"]), got.call["room"]
    context = {"caller": caller, "sip_caller": f"sip_{caller}", "callee": TRUNK_NUMBER}
    assert relations(got.seen, context) == relations(trace.events, context)


# --- webhooks ------------------------------------------------------------------------


def load_webhooks(name: str) -> list[dict[str, Any]]:
    """The webhook lines of a webhooks_* recording."""
    lines = [json.loads(line) for line in (TRACES / f"{name}.jsonl").read_text().splitlines()]
    return [e for e in lines if e["event"] == "webhook"]


def webhook_view(lines: Sequence[Mapping[str, Any]], identity: str | None) -> list[tuple[Any, ...]]:
    """The webhooks about one participant: event, kind, state, reason, status, keys."""
    return [
        (
            w["webhook_event"],
            w["kind"],
            w["state"],
            w["disconnect_reason"],
            w["attributes"].get("sip.callStatus"),
            tuple(sorted(w["attributes"])),
        )
        for w in lines
        if identity is not None and w.get("identity") == identity
    ]


def webhook_milestones(
    lines: Sequence[Mapping[str, Any]], identity: str | None, anchor: float
) -> dict[str, float]:
    """When (after `anchor`) each kind of webhook about one participant first came."""
    out: dict[str, float] = {}
    for w in lines:
        if identity is not None and w.get("identity") == identity:
            out.setdefault(w["webhook_event"], round(w["t"] - anchor, 3))
    return {name: t for name, t in out.items() if t >= 0}


WEBHOOK_TRACES = sorted(p.name.removesuffix(".jsonl") for p in TRACES.glob("webhooks_*.jsonl"))


@pytest.mark.integration
@pytest.mark.parametrize("name", WEBHOOK_TRACES)
async def test_webhooks_look_like_the_recording(
    name: str,
    stack: Stack,
    lkapi: api.LiveKitAPI,
    observe: JoinObserver,
    answerer: JoinAnswerer,
    sim_inbound: SimInbound,
    place_call: PlaceCall,
    webhooks: WebhookRecorder,
) -> None:
    trace = load_trace(name)
    if trace.inbound:
        inbound = await replay_inbound(trace, stack, lkapi, observe, answerer, sim_inbound)
        seen, anchor = inbound.seen, inbound.anchor
        received = webhooks.of_room(inbound.call["room"], t0=inbound.t0)
    else:
        outbound = await replay_outbound(trace, lkapi, place_call, observe)
        seen, anchor = outbound.seen, outbound.t_request
        received = webhooks.of_room(outbound.room, t0=outbound.t0)
    assert webhooks.rejected == []
    recorded = load_webhooks(name)
    recorded_view = webhook_view(recorded, sip_identity(trace.events))
    observed_view = webhook_view(received, sip_identity(seen))
    assert recorded_view, f"{name}: the recording has no webhook about the SIP participant"
    assert observed_view == recorded_view, f"{name}: webhooks {received}"
    assert not timing_mismatches(
        webhook_milestones(recorded, sip_identity(trace.events), trace.anchor),
        webhook_milestones(received, sip_identity(seen), anchor),
    ), f"{name}: webhooks came at other times: {received}"


# --- the comparison can fail ---------------------------------------------------------


def _shift_leave(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**e, "t": e["t"] + 2.0} if e["event"] == "participant_disconnected" else e for e in events
    ]


def _other_reason(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**e, "disconnect_reason": "SIP_TRUNK_FAILURE"}
        if e["event"] == "participant_disconnected"
        else e
        for e in events
    ]


def _drop_first_change(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    changes = [i for i, e in enumerate(events) if e["event"] == "participant_attributes_changed"]
    return [e for i, e in enumerate(events) if not changes or i != changes[0]]


def _drop_a_key(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def without(attrs: Mapping[str, str]) -> dict[str, str]:
        return {k: v for k, v in attrs.items() if k != "sip.trunkID"}

    return [
        {**e, "attributes": without(e["attributes"])} if "attributes" in e else e for e in events
    ]


CHANGES = [_shift_leave, _other_reason, _drop_first_change, _drop_a_key]


def _applicable_changes() -> list[Any]:
    """Each recording with each change that alters it (j has no leave to shift...)."""
    return [
        pytest.param(name, change, id=f"{name}-{change.__name__}")
        for name in trace_names()
        for change in CHANGES
        if change(load_trace(name).events) != load_trace(name).events
    ]


@pytest.mark.parametrize(("name", "change"), _applicable_changes())
def test_the_comparison_notices_a_changed_recording(name: str, change: Any) -> None:
    trace = load_trace(name)
    assert room_mismatches(trace, trace.events, trace.anchor) == []
    changed = change(trace.events)
    assert changed != trace.events
    with pytest.raises(AssertionError, match="did not look like any recording"):
        assert_room_looks_like_a_recording(trace, changed, trace.anchor)
