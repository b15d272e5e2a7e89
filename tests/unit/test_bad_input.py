"""Whatever a source sends, the monitor parses it, counts what is odd, and carries on.

hypothesis builds webhook bodies (the protobuf livekit-server signs), participant
attributes and journal lines of any shape: unknown statuses and reasons, missing call
ids, huge and odd values, unknown participant kinds. Parsing never raises anything but
its own documented error, the machine never raises, and odd input shows as anomalies.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from google.protobuf.json_format import MessageToJson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livekit.protocol import models, webhook

from monitor.core.journal_format import (
    _TYPE_OF,
    BadLineKind,
    CarriedCall,
    CarriedEnd,
    Counted,
    Header,
    JournalError,
    decode_line,
    encode_event,
)
from monitor.core.machine import CallBook, MachineSettings
from monitor.core.model import (
    ATTR_CALL_ID,
    ATTR_CALL_STATUS,
    Anomaly,
    AnomalyKind,
    AttributesChanged,
    CallEnded,
    CallStarted,
    Event,
    Participant,
    ParticipantLeft,
    ParticipantSeen,
    SipStatus,
    Source,
    Tick,
)
from monitor.runtime.config import load_settings
from monitor.runtime.http import build_app
from monitor.runtime.service import Monitor
from monitor.sinks.journal import BadLine, read_journal
from monitor.sources.webhooks import events_of_webhook
from tests.unit.http_support import KEY, SECRET, queued, signed

T0 = 1_800_000_000.0
# Strings as protobuf carries them: any Unicode but lone surrogates (not valid UTF-8).
TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
HUGE = st.builds(
    lambda char, n: char * n, st.characters(codec="utf-8"), st.integers(10_000, 70_000)
)
STATUS_VALUES = st.one_of(
    st.sampled_from([s.value for s in SipStatus]), st.sampled_from(["", " ", "ACTIVE"]), TEXT
)
ATTRIBUTES = st.dictionaries(
    st.one_of(
        st.sampled_from(
            [
                ATTR_CALL_STATUS,
                ATTR_CALL_ID,
                "sip.trunkID",
                "sip.phoneNumber",
                "sip.ruleID",
                "sip.trunkPhoneNumber",
                "sip.hostname",
            ]
        ),
        TEXT,
    ),
    st.one_of(STATUS_VALUES, TEXT, HUGE),
    max_size=8,
)
WEBHOOK_KINDS = st.one_of(
    st.sampled_from(
        [
            "participant_joined",
            "participant_left",
            "participant_connection_aborted",
            "room_started",
            "room_finished",
            "track_published",
        ]
    ),
    TEXT,
)


@st.composite
def webhook_events(draw: st.DrawFn) -> webhook.WebhookEvent:
    participant = models.ParticipantInfo(
        sid=draw(TEXT),
        identity=draw(TEXT),
        attributes=draw(ATTRIBUTES),
        joined_at=draw(st.integers(0, 2**40)),
        joined_at_ms=draw(st.integers(0, 2**50)),
    )
    # Enums are open in proto3: numbers the protocol does not name yet arrive as is.
    participant.kind = draw(st.integers(0, 40))  # type: ignore[assignment]
    participant.disconnect_reason = draw(st.integers(0, 200))  # type: ignore[assignment]
    return webhook.WebhookEvent(
        event=draw(WEBHOOK_KINDS),
        room=models.Room(name=draw(TEXT), sid=draw(TEXT)),
        participant=participant,
        id=draw(TEXT),
        created_at=draw(st.integers(0, 2**40)),
    )


def run(book: CallBook, events: list[Event]) -> list[Any]:
    effects: list[Any] = []
    for event in events:
        effects += book.step(event)
    effects += book.step(Tick(book.now + 3600))
    return effects


async def _post_signed(bodies: list[webhook.WebhookEvent]) -> tuple[list[int], list[Event]]:
    """Each body as livekit-server sends it (JSON, signed with the key, the body's hash
    in the token) to the monitor's real HTTP app; the answers and the events queued."""
    environ = {
        "LIVEKIT_URL": "ws://127.0.0.1:1",
        "LIVEKIT_API_KEY": KEY,
        "LIVEKIT_API_SECRET": SECRET,
    }
    monitor = Monitor(load_settings({"http_port": "0"}, environ))
    client = TestClient(TestServer(build_app(monitor)))
    await client.start_server()
    statuses: list[int] = []
    try:
        for body in bodies:
            text = MessageToJson(body)
            answer = await client.post(
                "/webhook", data=text, headers={"Authorization": signed(text)}
            )
            statuses.append(answer.status)
    finally:
        await client.close()
    return statuses, queued(monitor)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(webhook_events(), min_size=1, max_size=6))
def test_any_signed_webhook_body_becomes_events_the_machine_takes(
    bodies: list[webhook.WebhookEvent],
) -> None:
    statuses, events = asyncio.run(_post_signed(bodies))
    # Signed by us and a WebhookEvent: accepted whatever it says, unless it is larger
    # than CALL_MONITOR_WEBHOOK_MAX_BYTES (1 MiB).
    fits = [len(MessageToJson(body).encode()) <= 2**20 for body in bodies]
    assert statuses == [200 if fit else 413 for fit in fits]
    expected = [
        event
        for body, fit in zip(bodies, fits, strict=True)
        if fit
        for event in events_of_webhook(body, 0.0)
    ]
    assert [replace(e, at=0.0) for e in events] == expected
    effects = run(CallBook(MachineSettings(settle_seconds=1.0)), events)
    started = [effect.call.key for effect in effects if isinstance(effect, CallStarted)]
    ended = [effect.call.key for effect in effects if isinstance(effect, CallEnded)]
    assert len(started) == len(set(started)), "a call started twice"
    assert len(ended) == len(set(ended)), "a call ended twice"
    # Every event is journalled and replayed as it was: nothing lost in the journal.
    for event in events:
        assert decode_line(encode_event(event)) == event


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(ATTRIBUTES, st.booleans()), min_size=1, max_size=12))
def test_any_attributes_from_a_sip_participant_are_counted_never_fatal(
    updates: list[tuple[dict[str, str], bool]],
) -> None:
    """One SIP participant sending any attributes: each odd status is an anomaly."""
    events: list[Event] = []
    for n, (attributes, leave) in enumerate(updates):
        who = Participant("PA_fuzz", "sip_fuzz", attributes, True, T0)
        if n == 0:
            events.append(ParticipantSeen(T0, Source.ROOM, "room", who))
        elif leave:
            events.append(ParticipantLeft(T0 + n, Source.WEBHOOK, "room", who, None, ""))
        else:
            events.append(AttributesChanged(T0 + n, Source.ROOM, "room", who, attributes))
    effects = run(CallBook(MachineSettings(settle_seconds=1.0)), events)
    assert len([e for e in effects if isinstance(e, CallStarted)]) == 1
    assert len([e for e in effects if isinstance(e, CallEnded)]) <= 1
    kinds = [effect.kind for effect in effects if isinstance(effect, Anomaly)]
    first = updates[0][0].get(ATTR_CALL_STATUS)
    if first is not None and first not in {s.value for s in SipStatus}:
        assert AnomalyKind.UNKNOWN_STATUS in kinds
    if not updates[0][0].get(ATTR_CALL_ID):
        assert AnomalyKind.MISSING_CALL_ID in kinds


def test_a_call_id_that_shows_up_after_the_end_does_not_start_a_second_call() -> None:
    """Found by the property above: a participant without sip.callID left, then a late
    change carried one. The participant's call is over; nothing starts again."""
    book = CallBook(MachineSettings(settle_seconds=1.0))
    bare = Participant("PA_late", "sip_late", {ATTR_CALL_STATUS: "active"}, True, T0)
    effects = book.step(ParticipantSeen(T0, Source.ROOM, "room", bare))
    effects += book.step(ParticipantLeft(T0 + 1, Source.WEBHOOK, "room", bare, None, ""))
    effects += book.step(Tick(T0 + 5))
    late = Participant("PA_late", "sip_late", {ATTR_CALL_ID: "SCL_late"}, True, T0)
    changed = {ATTR_CALL_ID: "SCL_late"}
    effects += book.step(AttributesChanged(T0 + 6, Source.ROOM, "room", late, changed))
    assert [e.call.key for e in effects if isinstance(e, CallStarted)] == ["sid:PA_late"]
    assert [e.call.key for e in effects if isinstance(e, CallEnded)] == ["sid:PA_late"]
    assert book.live_calls() == []


def test_a_thousand_status_flips_from_one_participant_keep_one_bounded_call() -> None:
    """A participant flipping dialing/ringing a thousand times: one call, a bounded
    status history, every flip back counted as a regression."""
    book = CallBook(MachineSettings(settle_seconds=1.0))
    base = {ATTR_CALL_ID: "SCL_flip", "sip.trunkID": "ST_1"}
    seen = Participant("PA_flip", "sip_flip", {**base, ATTR_CALL_STATUS: "dialing"}, True, T0)
    effects = book.step(ParticipantSeen(T0, Source.ROOM, "room", seen))
    for n in range(1000):
        status = "ringing" if n % 2 == 0 else "dialing"
        who = Participant("PA_flip", "sip_flip", {**base, ATTR_CALL_STATUS: status}, True, T0)
        changed = {ATTR_CALL_STATUS: status}
        effects += book.step(AttributesChanged(T0 + n / 1000, Source.ROOM, "room", who, changed))
    [call] = book.live_calls()
    assert [str(s) for s in call.statuses] == ["dialing", "ringing"]
    regressions = [e for e in effects if isinstance(e, Anomaly)]
    assert {e.kind for e in regressions} == {AnomalyKind.STATUS_REGRESSED}
    assert len(regressions) == 500


# JSON has no NaN or infinity (Python writes them, and a line with one is not JSON).
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
# One line of a journal file: any text, any JSON, or an object that looks like an event.
ONE_LINE = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=300)
NOT_JSON_NUMBERS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "1" * 5000])
JOURNAL_LINES = st.one_of(
    ONE_LINE,
    JSON_VALUES.map(json.dumps),
    st.dictionaries(
        st.sampled_from(["v", "type", "at", "source", "room", "settings", "participant"]),
        st.one_of(JSON_VALUES, st.sampled_from([1, "header", "tick", "room_ended"])),
    ).map(json.dumps),
    st.builds(
        '{{"v": 1, "type": "{}", "at": {}}}'.format,
        st.sampled_from(["tick", "header"]),
        NOT_JSON_NUMBERS,
    ),
)
KNOWN_TYPES = {"header", "counted", "open_call", "ended_call", *_TYPE_OF.values()}
MESSAGE_OF = {
    BadLineKind.NOT_JSON: "not JSON: ",
    BadLineKind.NOT_AN_OBJECT: "not a JSON object",
    BadLineKind.UNSUPPORTED_VERSION: "unsupported journal version ",
    BadLineKind.UNKNOWN_TYPE: "unknown event type ",
    BadLineKind.BAD_FIELD: "bad '",
}


def _strict_json(line: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(name)

    return json.loads(line, parse_constant=refuse)


def expected_kind(line: str) -> BadLineKind | None:
    """What is wrong with a line by the format's rules; None: its fields decide."""
    try:
        data = _strict_json(line)
    except (ValueError, RecursionError):
        return BadLineKind.NOT_JSON
    if not isinstance(data, dict):
        return BadLineKind.NOT_AN_OBJECT
    if data.get("v") != 1:
        return BadLineKind.UNSUPPORTED_VERSION
    if not isinstance(data.get("type"), str) or data["type"] not in KNOWN_TYPES:
        return BadLineKind.UNKNOWN_TYPE
    return None


@given(JOURNAL_LINES)
def test_a_journal_line_of_any_text_is_read_or_refused_with_its_kind_and_number(
    line: str,
) -> None:
    """A bad line is one bad line: its number, what is wrong, and the lines around it read."""
    around = [Tick(T0), Tick(T0 + 1)]
    with tempfile.TemporaryDirectory() as folder:
        journal = Path(folder) / "journal.jsonl"
        text = "\n".join([encode_event(around[0]), line, encode_event(around[1])]) + "\n"
        journal.write_text(text, encoding="utf-8")
        bad: list[BadLine] = []
        items = list(read_journal([journal], bad))
    kind = expected_kind(line)
    if not line.strip():  # a blank line is skipped
        assert (bad, items) == ([], around)
    elif not bad:  # a valid event or header, read in its place
        assert kind is None
        assert items == [around[0], decode_line(line), around[1]]
    else:
        [found] = bad
        assert (found.path, found.number) == (str(journal), 2)
        assert found.kind == (kind or BadLineKind.BAD_FIELD)
        assert found.error.startswith(MESSAGE_OF[found.kind]), found.error
        assert "\n" not in found.error
        assert items == around


@given(
    st.sampled_from(
        ["participant_seen", "attributes_changed", "participant_left", "room_ended", "dial_failed"]
    ),
    st.dictionaries(
        st.sampled_from(["at", "source", "room", "participant", "changed", "reason", "sid"]),
        JSON_VALUES,
    ),
)
def test_a_journal_event_of_any_shape_is_read_or_refused_with_a_reason(
    kind: str, fields: dict[str, Any]
) -> None:
    line = json.dumps({"v": 1, "type": kind, **fields})
    try:
        event = decode_line(line)
    except JournalError as error:
        message = str(error)
    else:
        assert not isinstance(event, Header | Counted | CarriedCall | CarriedEnd)
        CallBook().step(event)
        return
    assert kind in message


RECORD_FIELDS = (
    "key", "call_id", "room", "room_sid", "participant_sid", "identity", "direction",
    "trunk_id", "phone_number", "trunk_phone_number", "state", "last_status", "statuses",
    "timings", "reason", "sip_status_code", "sources",
)  # fmt: skip


@given(
    st.dictionaries(st.sampled_from(RECORD_FIELDS), JSON_VALUES | st.sampled_from(["active"])),
    st.dictionaries(st.sampled_from(["pending", "dial_failed", "away", "at"]), JSON_VALUES),
)
def test_a_carried_call_of_any_shape_is_read_or_refused_and_never_breaks_the_book(
    record: dict[str, Any], fields: dict[str, Any]
) -> None:
    """An `open_call` line a restart reads: any shape is a call the book can take, or one
    bad line saying what is wrong."""
    line = json.dumps({"v": 1, "type": "open_call", "at": T0, "record": record, **fields})
    refused: tuple[BadLineKind, str] | None
    try:
        carried = decode_line(line)
    except JournalError as error:
        refused = (error.kind, str(error))
    else:
        refused = None
    if refused is not None:
        assert refused[0] is BadLineKind.BAD_FIELD
        assert refused[1].startswith("bad 'open_call'")
        return
    assert isinstance(carried, CarriedCall)
    book = CallBook(MachineSettings(settle_seconds=1.0))
    book.adopt(carried.call)
    book.step(Tick(T0 + 3600.0))
