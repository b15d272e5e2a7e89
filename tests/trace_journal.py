"""Turns the recordings of the real livekit-sip (tests/fixtures/traces) into journal events.

Room events become ROOM events, recorded webhooks WEBHOOK events, and a `_wait` run's
CreateSIPParticipant error becomes the DIAL event the dial-side hook would have sent.
`python -m tests.trace_journal` writes samples/traces.journal.jsonl, the journal that
`make demo` replays until the live observer runs it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from monitor.core.journal_format import Header, encode_event, encode_header
from monitor.core.machine import MachineSettings
from monitor.core.model import (
    AttributesChanged,
    DialFailed,
    Event,
    Participant,
    ParticipantLeft,
    ParticipantSeen,
    RoomEnded,
    Source,
    parse_reason,
)

TRACES = Path(__file__).parent / "fixtures" / "traces"
SAMPLE = Path(__file__).parent.parent / "samples" / "traces.journal.jsonl"
SAMPLE_SETTINGS = MachineSettings(settle_seconds=1.0)
# Each trace is placed on its own minute of a fixed day, so the sample reads in order.
EPOCH = 1_795_619_900.0

# What each recording shows, by the traces README: the outcome the monitor must reach.
EXPECTED_OUTCOMES: dict[str, str | None] = {
    "a_nowait": "completed",
    "a_wait": "completed",
    "b_nowait": "rejected",
    "b_wait": "busy",
    "d_nowait": "rejected",
    "d_wait": "declined",
    "e_nowait": "unavailable",
    "e_wait": "not_found",
    "f_nowait": "unavailable",
    "f_wait": "unavailable",
    "g_nowait": "trunk_failure",
    "g_wait": "trunk_failure",
    "h_nowait": "no_answer",
    "h_wait": "no_answer",
    "i_nowait": "completed",
    "i_wait": "completed",
    "j_nowait": "completed",
    "j_wait": "completed",
    "inbound": "completed",
    "inbound_noanswer": None,  # still ringing when the recording stopped
    "webhooks_a": "completed",
    "webhooks_b": "rejected",
    "webhooks_d": "rejected",
    "webhooks_e": "unavailable",
    "webhooks_g": "trunk_failure",
    "webhooks_h": "no_answer",
    "webhooks_i": "completed",
    "webhooks_inbound": "completed",
    "webhooks_j": "completed",
}


def _participant(line: dict[str, Any], run: str) -> Participant:
    # Room events in the recordings carry no sid: make one that is unique per run.
    # The server's join time is left out: it is on the recording's clock, not the sample's.
    kind = str(line.get("kind", ""))
    identity = str(line.get("identity", ""))
    return Participant(
        sid=str(line.get("participant_sid") or f"PA_{run}_{identity}"),
        identity=identity,
        attributes=line.get("attributes") or {},
        is_sip=kind in ("PARTICIPANT_KIND_SIP", "SIP"),
    )


def trace_events(name: str, base: float) -> list[Event]:
    """The journal events of one recorded run, its `t` offset by `base`."""
    events: list[Event] = []
    room = ""
    for raw in (TRACES / f"{name}.jsonl").read_text().splitlines():
        line = json.loads(raw)
        at = base + float(line["t"])
        kind = line["event"]
        room = str(line.get("room") or room)
        if kind == "webhook":
            events += _webhook(line, at, room, name)
        elif kind in ("participant_connected", "already_present"):
            events.append(ParticipantSeen(at, Source.ROOM, room, _participant(line, name)))
        elif kind == "participant_attributes_changed":
            changed = line.get("changed") or {}
            events.append(
                AttributesChanged(at, Source.ROOM, room, _participant(line, name), changed)
            )
        elif kind == "participant_disconnected":
            reason, text = parse_reason(line.get("disconnect_reason"))
            events.append(
                ParticipantLeft(at, Source.ROOM, room, _participant(line, name), reason, text)
            )
        elif kind == "disconnected":
            reason, _ = parse_reason(line.get("disconnect_reason"))
            # The observer's own end says the room is gone only when the room went away.
            if reason is not None and reason.value in ("ROOM_DELETED", "ROOM_CLOSED"):
                events.append(RoomEnded(at, Source.ROOM, room, reason))
    result_path = TRACES / f"{name}.result.json"
    if name.endswith("_wait") and result_path.exists():
        events += _dial_error(json.loads(result_path.read_text()), base)
    events.sort(key=lambda event: event.at)
    return events


def _webhook(line: dict[str, Any], at: float, room: str, name: str) -> list[Event]:
    kind = line["webhook_event"]
    if kind == "participant_joined":
        return [ParticipantSeen(at, Source.WEBHOOK, room, _participant(line, name))]
    if kind == "participant_left":
        reason, text = parse_reason(line.get("disconnect_reason"))
        return [ParticipantLeft(at, Source.WEBHOOK, room, _participant(line, name), reason, text)]
    if kind == "room_finished":
        return [RoomEnded(at, Source.WEBHOOK, room, None)]
    return []


def _dial_error(result: dict[str, Any], base: float) -> list[Event]:
    error = result.get("error")
    if result.get("ok") or not error:
        return []
    code = error.get("metadata", {}).get("sip_status_code")
    request = result["request"]
    return [
        DialFailed(
            base + float(result["t_return"]),
            str(request["room_name"]),
            str(request["participant_identity"]),
            None if code is None else int(code),
            str(error.get("metadata", {}).get("sip_status", "")),
        )
    ]


def sample_lines() -> list[str]:
    lines = [encode_header(Header(SAMPLE_SETTINGS, "traces", EPOCH))]
    for index, name in enumerate(EXPECTED_OUTCOMES):
        lines += [encode_event(event) for event in trace_events(name, EPOCH + 60.0 * index)]
    return lines


if __name__ == "__main__":
    SAMPLE.parent.mkdir(exist_ok=True)
    SAMPLE.write_text("\n".join(sample_lines()) + "\n")
    print(f"wrote {SAMPLE}", file=sys.stderr)
