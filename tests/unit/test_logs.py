"""The log sink and the logging setup: events and fields, masking, redaction, real output.

The last tests run a realistic mix of calls in a child process, capture its real stdout,
and run the jq and lnav queries of docs/logging.md on it, exactly as written there.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs
from structlog.typing import EventDict

from monitor.core.machine import CallBook, MachineSettings
from monitor.core.model import Anomaly, AnomalyKind, Event, Reason
from monitor.core.privacy import NumberMasker
from monitor.runtime.config import Settings, load_settings
from monitor.sinks.logs import (
    ANOMALY_LOG_LIMIT,
    REDACTED,
    CallLog,
    MaskNumbers,
    configure_logging,
    iso_time,
    redact_secrets,
)
from monitor.sources.rtc_observers import native_record
from tests.tools import system_tool
from tests.unit.script import T0, CallScript

R = Reason
ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "logging.md"
ISO_UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def log_effects(events: list[Event], masker: NumberMasker | None = None) -> list[EventDict]:
    """Every effect of `events` through a CallLog; the captured log events."""
    book = CallBook(MachineSettings(settle_seconds=1.0))
    sink = CallLog(structlog.get_logger(), masker or NumberMasker())
    with capture_logs() as captured:
        for event in events:
            for effect in book.step(event):
                sink.handle(effect)
    return captured


def answered() -> CallScript:
    script = CallScript(identity="sip_+15551112222", room="call-_+15551112222_Xk3j")
    script.seen(0.041, "dialing").to(0.045, "ringing").to(2.08, "active").to(5.081, "hangup")
    return script.left(5.083, R.CLIENT_INITIATED).tick(6.2)


# ---- the call log sink --------------------------------------------------------------------


def test_answered_call_logs_its_start_every_state_change_and_one_summary() -> None:
    logged = log_effects(answered().events)

    assert [entry["event"] for entry in logged] == [
        "call_started",
        *["call_state_changed"] * 5,
        "call_ended",
    ]
    moves = [(e["previous_state"], e["state"]) for e in logged[1:6]]
    assert moves == [
        ("dialing", "ringing"),
        ("ringing", "active"),
        ("active", "hangup"),
        ("hangup", "ending"),
        ("ending", "ended"),
    ]
    assert {entry["log_level"] for entry in logged} == {"info"}
    assert all(entry["call_id"] == "SCL_test1" for entry in logged)


def test_call_ended_is_the_canonical_line_with_every_field() -> None:
    summary = log_effects(answered().events)[-1]

    assert summary == {
        "event": "call_ended",
        "log_level": "info",
        "call_id": "SCL_test1",
        "call_key": "SCL_test1",
        "room": "call-_+1******2222_Xk3j",
        "room_sid": "RM_1",
        "participant_sid": "PA_test1",
        "identity": "sip_+1******2222",
        "direction": "outbound",
        "trunk_id": "ST_trunk1",
        "phone_number": "+1******2222",
        "trunk_phone_number": "+1******0000",
        "state": "ended",
        "outcome": "completed",
        "ambiguous": False,
        "ambiguity": "",
        "reason": "CLIENT_INITIATED",
        "ended_by": "far_end",
        "sip_status_code": None,
        "sip_status": "",
        "answered": True,
        "statuses": ["dialing", "ringing", "active", "hangup"],
        "post_dial_delay_seconds": 0.004,
        "post_dial_delay_approximate": False,
        "time_to_answer_seconds": 2.039,
        "talk_seconds": 3.003,
        "total_seconds": 5.042,
        "timings_approximate": False,
        "started_at": iso_time(T0 + 0.041),
        "ended_at": iso_time(T0 + 5.083),
        "sources": ["room"],
    }


def test_failed_dial_summary_names_the_outcome_reason_and_sip_code() -> None:
    script = CallScript().seen(0.041, "dialing").to(0.5, "ringing")
    script.dial_failed(3.0, 486).left(3.01, R.USER_REJECTED).tick(5.0)
    summary = log_effects(script.events)[-1]

    assert summary["event"] == "call_ended"
    assert summary["outcome"] == "busy"
    assert summary["reason"] == "USER_REJECTED"
    assert summary["sip_status_code"] == 486
    assert summary["answered"] is False
    assert summary["time_to_answer_seconds"] is None
    assert summary["talk_seconds"] is None
    assert summary["post_dial_delay_seconds"] == pytest.approx(0.459)


def test_inbound_summary_has_no_post_dial_delay() -> None:
    script = CallScript(inbound=True).seen(0.2, "ringing").left(6.0, R.CLIENT_INITIATED)
    summary = log_effects(script.tick(8.0).events)[-1]
    assert summary["direction"] == "inbound"
    assert summary["outcome"] == "abandoned"
    assert summary["ambiguous"] is True
    assert summary["ambiguity"]
    assert summary["post_dial_delay_seconds"] is None


def test_anomaly_is_a_warning_with_kind_masked_detail_and_the_call() -> None:
    sink = CallLog(structlog.get_logger(), NumberMasker())
    with capture_logs() as logged:
        sink.handle(
            Anomaly(
                T0,
                AnomalyKind.UNKNOWN_STATUS,
                "sip.callStatus='calling +15551112222'",
                "call-_+15551112222_Xk3j",
                "SCL_test1",
            )
        )
        sink.handle(Anomaly(T0, AnomalyKind.MISSING_CALL_ID, "no sip.callID", "r", "sid:PA_1"))
    assert logged[0] == {
        "event": "anomaly",
        "log_level": "warning",
        "kind": "unknown_status",
        "detail": "sip.callStatus='calling +1******2222'",
        "call_id": "SCL_test1",
        "call_key": "SCL_test1",
        "room": "call-_+1******2222_Xk3j",
    }
    assert logged[1]["call_id"] == ""
    assert logged[1]["call_key"] == "sid:PA_1"


def test_a_flood_of_one_anomaly_logs_a_few_then_one_suppression_line() -> None:
    """A participant flipping its status a thousand times: five lines, then one saying
    the rest are only counted; another call's anomalies still show."""
    sink = CallLog(structlog.get_logger(), NumberMasker())
    regressed = AnomalyKind.STATUS_REGRESSED
    with capture_logs() as logged:
        for n in range(1000):
            sink.handle(Anomaly(T0 + n, regressed, f"flip {n}", "room-a", "SCL_noisy"))
        sink.handle(Anomaly(T0, AnomalyKind.UNKNOWN_STATUS, "odd", "room-a", "SCL_noisy"))
        sink.handle(Anomaly(T0, regressed, "once", "room-b", "SCL_calm"))
    events = [(line["event"], line["call_key"], line["kind"]) for line in logged]
    assert events == [
        *[("anomaly", "SCL_noisy", "status_regressed")] * ANOMALY_LOG_LIMIT,
        ("anomalies_suppressed", "SCL_noisy", "status_regressed"),
        ("anomaly", "SCL_noisy", "unknown_status"),
        ("anomaly", "SCL_calm", "status_regressed"),
    ]
    assert logged[ANOMALY_LOG_LIMIT]["limit"] == ANOMALY_LOG_LIMIT


def test_numbers_show_whole_only_when_masking_is_off() -> None:
    masked = log_effects(answered().events)
    shown = log_effects(answered().events, NumberMasker(enabled=False))
    assert "+15551112222" not in json.dumps(masked)
    assert shown[0]["phone_number"] == "+15551112222"
    assert shown[0]["identity"] == "sip_+15551112222"
    assert masked[0]["phone_number"] == "+1******2222"


def test_masker_keeps_the_digits_it_is_told_to() -> None:
    logged = log_effects(answered().events, NumberMasker(keep_last=2))
    assert logged[0]["phone_number"] == "+1********22"


# ---- the safety-net processors ----------------------------------------------------------


def test_secret_fields_are_redacted_at_any_depth() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtb25pdG9yIn0.c2lnbmF0dXJlX2hlcmU"
    with capture_logs(processors=[redact_secrets]) as logged:
        structlog.get_logger().info(
            "webhook_rejected",
            api_secret="SuperSecretValue123",
            token=jwt,
            jwt=jwt,
            authorization="Bearer abc.def",
            livekit_api_secret="x",
            headers={"Authorization": "Basic dXNlcjpwYXNzd29yZA==", "Content-Type": "json"},
            note=f"sent {jwt} with it",
            raw="Authorization: Bearer opaque-token-value",
            livekit="https://monitor:hunter2@lk.example.com:7880",
            error="cannot connect to wss://monitor:hunter2@lk.example.com/rtc: refused",
            call_key="SCL_1",
            sip_status_code=401,
        )
    entry = logged[0]
    for key in ("api_secret", "token", "jwt", "authorization", "livekit_api_secret"):
        assert entry[key] == REDACTED, key
    assert entry["headers"] == {"Authorization": REDACTED, "Content-Type": "json"}
    assert entry["note"] == f"sent {REDACTED} with it"
    assert entry["raw"] == f"Authorization: Bearer {REDACTED}"
    assert entry["livekit"] == f"https://{REDACTED}@lk.example.com:7880"
    assert entry["error"] == f"cannot connect to wss://{REDACTED}@lk.example.com/rtc: refused"
    assert entry["call_key"] == "SCL_1"
    assert entry["sip_status_code"] == 401


def test_numbers_in_any_string_field_are_masked_as_a_safety_net() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "Thing(caller=+447911123456)"

    with capture_logs(processors=[MaskNumbers(NumberMasker())]) as logged:
        structlog.get_logger().info(
            "something +15551112222 said",
            note="caller +15551112222 hung up",
            nested={"who": ["sip_+33612345678"]},
            obj=Thing(),
            call_id="SCL_1234567890",
            count=15551112222,
        )
    entry = logged[0]
    assert entry["event"] == "something +1******2222 said"
    assert entry["note"] == "caller +1******2222 hung up"
    assert entry["nested"] == {"who": ["sip_+33*****5678"]}
    assert entry["obj"] == "Thing(caller=+44******3456)"
    assert entry["call_id"] == "SCL_1234567890"  # a LiveKit id, left as it is
    assert entry["count"] == 15551112222  # numbers are not phone numbers


def test_numbers_written_in_groups_are_masked_and_times_and_addresses_are_not() -> None:
    with capture_logs(processors=[MaskNumbers(NumberMasker())]) as logged:
        structlog.get_logger().warning(
            "dial_failed",
            error="INVITE to sip:+1-555-123-4567@10.0.0.1:5060 failed: 486",
            detail="caller (555) 867-5309 hung up, then 555.867.5309 rang",
            room="call-+44 20 7946 0958",
            started_at="2026-11-26T09:00:00.123Z",
            remote="127.0.0.1:54321",
            took="12.345s",
        )
    entry = logged[0]
    assert entry["error"] == "INVITE to sip:+1-***-***-4567@10.0.0.1:5060 failed: 486"
    assert entry["detail"] == "caller (***) ***-5309 hung up, then ***.***.5309 rang"
    assert entry["room"] == "call-+44 ** **** 0958"
    assert entry["started_at"] == "2026-11-26T09:00:00.123Z"
    assert entry["remote"] == "127.0.0.1:54321"
    assert entry["took"] == "12.345s"


# ---- configure_logging ------------------------------------------------------------------


def settings(**values: str) -> Settings:
    environ = {f"CALL_MONITOR_{key.upper()}": value for key, value in values.items()}
    environ.setdefault("CALL_MONITOR_INSTANCE", "monitor-test")
    return load_settings(environ=environ, required=False)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "call-monitor"]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_timestamp_level_event_and_instance() -> None:
    out = io.StringIO()
    configure_logging(settings(log_format="json"), out)
    structlog.get_logger().info("monitor_started", port=9469)

    (entry,) = lines(out)
    assert list(entry)[:3] == ["timestamp", "level", "event"]
    assert ISO_UTC_MS.match(entry["timestamp"]), entry["timestamp"]
    assert entry["level"] == "info"
    assert entry["event"] == "monitor_started"
    assert entry["instance"] == "monitor-test"
    assert entry["port"] == 9469


@pytest.mark.usefixtures("restore_logging")
def test_auto_format_is_json_when_not_a_terminal_and_console_on_one() -> None:
    piped, terminal = io.StringIO(), Terminal()
    configure_logging(settings(log_format="auto"), piped)
    structlog.get_logger().info("monitor_started")
    configure_logging(settings(log_format="auto"), terminal)
    structlog.get_logger().info("monitor_started")

    assert json.loads(piped.getvalue())["event"] == "monitor_started"
    text = terminal.getvalue()
    assert "monitor_started" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.usefixtures("restore_logging")
def test_console_format_is_readable_and_still_masked() -> None:
    out = io.StringIO()
    configure_logging(settings(log_format="console"), out)
    structlog.get_logger().info("call_started", phone_number="+15551112222", api_secret="x1y2")
    text = out.getvalue()
    assert "call_started" in text
    assert "+15551112222" not in text
    assert "x1y2" not in text
    assert "\x1b[" not in text  # no colours when the stream is not a terminal


@pytest.mark.usefixtures("restore_logging")
def test_level_filter_drops_events_below_the_setting() -> None:
    out = io.StringIO()
    configure_logging(settings(log_format="json", log_level="warning"), out)
    log = structlog.get_logger()
    log.info("call_started")
    log.warning("anomaly", kind="clock_skew")
    logging.getLogger("livekit").info("connected")
    logging.getLogger("livekit").error("disconnected")
    assert [entry["event"] for entry in lines(out)] == ["anomaly", "disconnected"]


@pytest.mark.usefixtures("restore_logging")
def test_library_logs_through_stdlib_are_json_masked_and_redacted() -> None:
    out = io.StringIO()
    configure_logging(settings(log_format="json"), out)
    logging.getLogger("livekit.rtc").warning(
        "participant %s left", "sip_+15551112222", extra={"token": "abc"}
    )
    (entry,) = lines(out)
    assert entry["event"] == "participant sip_+1******2222 left"
    assert entry["logger"] == "livekit.rtc"
    assert entry["level"] == "warning"
    assert entry["instance"] == "monitor-test"
    assert ISO_UTC_MS.match(entry["timestamp"])
    assert entry["token"] == REDACTED


@pytest.mark.usefixtures("restore_logging")
def test_exceptions_are_structured_and_masked() -> None:
    out = io.StringIO()
    configure_logging(settings(log_format="json"), out)
    try:
        raise ValueError("no route to +15551112222")
    except ValueError:
        structlog.get_logger().exception("dial_failed")
    (entry,) = lines(out)
    assert entry["level"] == "error"
    (exception,) = entry["exception"]
    assert exception["exc_type"] == "ValueError"
    assert exception["exc_value"] == "no route to +1******2222"
    assert "+15551112222" not in out.getvalue()


@pytest.mark.usefixtures("restore_logging")
def test_masking_can_be_turned_off_in_the_settings() -> None:
    out = io.StringIO()
    configure_logging(settings(log_format="json", mask_numbers="false"), out)
    structlog.get_logger().info("call_started", phone_number="+15551112222")
    assert lines(out)[0]["phone_number"] == "+15551112222"


# ---- real output: a realistic mix of calls, captured from a child's stdout --------------

BASE = T0 + 2498.0  # 2026-11-25T16:00:00Z: the docs' examples use these times
NUMBERS = (
    "+15551112222",
    "+447911123456",
    "+4915112345678",
    "+33612345678",
    "+15553334444",
    "+819012345678",
    "+15557778888",
    "+61412345678",
)
SECRET = "SuperSecretValue123"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtb25pdG9yIn0.c2lnbmF0dXJlX2hlcmU"


def call_mix() -> list[Event]:
    """Eight calls, five minutes apart from 16:00 UTC, on two trunks, every kind of end."""
    events: list[Event] = []

    def call(index: int, call_id: str, trunk: str, inbound: bool = False) -> CallScript:
        number = NUMBERS[index]
        room = f"call-_{number}_Xk3j" if inbound else f"outbound-{number}"
        return CallScript(
            inbound=inbound,
            call_id=call_id,
            sid=f"PA_mix{index}",
            room=room,
            identity=f"sip_{number}",
            trunk=trunk,
            number=number,
        )

    def at(index: int, seconds: float) -> float:
        return BASE - T0 + index * 300.0 + seconds

    completed = call(0, "SCL_kT7gq2RwXbLm", "ST_alpha")
    completed.seen(at(0, 0), "dialing").to(at(0, 0.4), "ringing").to(at(0, 6), "active")
    completed.to(at(0, 70), "hangup").left(at(0, 70.01), R.CLIENT_INITIATED)
    busy = call(1, "SCL_3vHx9PzQaJnR", "ST_alpha")
    busy.seen(at(1, 0), "dialing").to(at(1, 0.6), "ringing").dial_failed(at(1, 2.5), 486)
    busy.left(at(1, 2.51), R.USER_REJECTED)
    no_answer = call(2, "SCL_Wm4bYc8dEfGh", "ST_beta")
    no_answer.seen(at(2, 0), "dialing").to(at(2, 1.2), "ringing")
    no_answer.left(at(2, 30), R.USER_UNAVAILABLE)
    trunk_down = call(3, "SCL_Np5sTu6vWxYz", "ST_alpha")
    trunk_down.seen(at(3, 0), "dialing").dial_failed(at(3, 0.3), 503)
    trunk_down.left(at(3, 0.31), R.SIP_TRUNK_FAILURE)
    inbound = call(4, "SCL_Qr2sAb3cDe4F", "ST_beta", inbound=True)
    inbound.seen(at(4, 0), "ringing").to(at(4, 4), "active").to(at(4, 5), "ringing")
    inbound.to(at(4, 95), "hangup").left(at(4, 95.02), R.CLIENT_INITIATED)
    abandoned = call(5, "SCL_Gh5iJk6LmN7p", "ST_alpha", inbound=True)
    abandoned.seen(at(5, 0), "ringing").left(at(5, 12), R.CLIENT_INITIATED)
    quirk = call(6, "SCL_Lm3nOp4QrS5t", "ST_alpha")  # active before answer (livekit #3841)
    quirk.seen(at(6, 0), "dialing").to(at(6, 0.5), "active").left(at(6, 9), R.USER_REJECTED)
    rejected = call(7, "SCL_Xy8zAb9CdE2f", "ST_alpha")
    rejected.seen(at(7, 0), "dialing").to(at(7, 0.3), "ringing")
    rejected.left(at(7, 3), R.USER_REJECTED)
    for index, script in enumerate(
        [completed, busy, no_answer, trunk_down, inbound, abandoned, quirk, rejected]
    ):
        events += script.events
        events += script.tick(at(index, 200)).events[-1:]
    return events


def emit_call_mix() -> None:
    """What the child process runs: default settings, logging to its real stdout."""
    configure_logging(load_settings(environ={"CALL_MONITOR_INSTANCE": "mon-1"}, required=False))
    book = CallBook(MachineSettings(settle_seconds=1.0))
    sink = CallLog(structlog.get_logger(), NumberMasker())
    for event in call_mix():
        for effect in book.step(event):
            sink.handle(effect)
    structlog.get_logger().warning(
        "webhook_rejected",
        api_secret=SECRET,
        authorization=f"Bearer {JWT}",
        detail=f"token {JWT} for {NUMBERS[0]}",
    )
    logging.getLogger("livekit.rtc").warning("participant %s disconnected", f"sip_{NUMBERS[1]}")


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The child's stdout, as a log file, the way the docs' queries read it."""
    child = subprocess.run(
        [sys.executable, "-c", "from tests.unit.test_logs import emit_call_mix; emit_call_mix()"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr.decode()
    path = tmp_path_factory.mktemp("logs") / "monitor.log"
    path.write_bytes(child.stdout)
    return path


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_real_stdout_is_json_lines_with_one_summary_per_call(captured: Path) -> None:
    entries = read(captured)
    ended = [entry for entry in entries if entry["event"] == "call_ended"]
    assert len(ended) == 8
    assert len({entry["call_id"] for entry in ended}) == 8
    assert all(entry["instance"] == "mon-1" for entry in entries)
    assert all(ISO_UTC_MS.match(entry["timestamp"]) for entry in entries)
    assert {entry["kind"] for entry in entries if entry["event"] == "anomaly"} == {
        "status_regressed",
        "active_before_answer",
    }


def test_real_stdout_never_carries_a_full_number_or_a_secret(captured: Path) -> None:
    text = captured.read_text()
    assert "+1******2222" in text  # the numbers are there, masked
    for number in NUMBERS:
        assert number not in text
        assert number.lstrip("+") not in text
        assert number[-10:] not in text  # the national number either
    assert SECRET not in text
    assert JWT.split(".")[0] not in text
    assert text.count(REDACTED) >= 3


# ---- the queries of docs/logging.md, run as written -------------------------------------


def documented(tool: str) -> dict[str, str]:
    """The commands under `<!-- tested: TOOL NAME -->` markers in docs/logging.md."""
    text = DOC.read_text()
    found = re.findall(rf"<!-- tested: {tool} ([\w-]+) -->\s*```\w*\n(.*?)```", text, re.DOTALL)
    return {name: body.strip() for name, body in found}


def test_the_readme_shows_the_tested_queries_as_they_are_in_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = re.findall(r"<!-- tested: (\w+) ([\w-]+) -->\s*```\w*\n(.*?)```", readme, re.DOTALL)
    assert len(shown) >= 4
    for tool, name, body in shown:
        assert documented(tool)[name] == body.strip(), f"README's {tool} {name} differs"


def need(tool: str, package: str) -> str:
    return system_tool(tool, package, " (docs/logging.md's queries are tested with it)")


def run_documented(command: str, log: Path, env: dict[str, str] | None = None) -> str:
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[-1] == "monitor.log", "the documented command reads monitor.log"
    argv[0] = need(argv[0], argv[0])
    done = subprocess.run(
        [*argv[:-1], str(log)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower(), done.stderr
    return done.stdout


# What the documented queries find in the captured mix, whichever tool runs them.
TRUNK_WINDOW_CALLS = [
    "SCL_kT7gq2RwXbLm",
    "SCL_3vHx9PzQaJnR",
    "SCL_Np5sTu6vWxYz",
    "SCL_Gh5iJk6LmN7p",
]
FAILED_DIALS: dict[str, tuple[str, str, int | None]] = {
    "SCL_3vHx9PzQaJnR": ("busy", "USER_REJECTED", 486),
    "SCL_Wm4bYc8dEfGh": ("no_answer", "USER_UNAVAILABLE", None),
    "SCL_Np5sTu6vWxYz": ("trunk_failure", "SIP_TRUNK_FAILURE", 503),
    "SCL_Lm3nOp4QrS5t": ("rejected", "USER_REJECTED", None),
    "SCL_Xy8zAb9CdE2f": ("rejected", "USER_REJECTED", None),
}
CALL_HISTORY = [
    "call_started",
    "call_state_changed",
    "anomaly",
    "call_state_changed",
    "call_state_changed",
    "call_state_changed",
    "call_ended",
]


def jq(name: str, log: Path) -> list[dict[str, Any]]:
    need("jq", "jq")
    command = documented("jq")[name]
    return [json.loads(line) for line in run_documented(command, log).splitlines()]


def test_jq_lists_the_calls_of_a_trunk_in_a_time_window(captured: Path) -> None:
    calls = jq("trunk-window", captured)
    assert [call["call_id"] for call in calls] == TRUNK_WINDOW_CALLS
    assert [call["outcome"] for call in calls] == [
        "completed",
        "busy",
        "trunk_failure",
        "abandoned",
    ]
    assert calls[0]["phone_number"] == "+1******2222"


def test_jq_lists_every_failed_dial_with_its_reason(captured: Path) -> None:
    failed = {call["call_id"]: call for call in jq("failed-dials", captured)}
    assert {
        key: (c["outcome"], c["reason"], c["sip_status_code"]) for key, c in failed.items()
    } == FAILED_DIALS


def test_jq_shows_one_calls_whole_history_by_call_id(captured: Path) -> None:
    history = jq("call-history", captured)
    assert [entry["event"] for entry in history] == CALL_HISTORY
    assert {entry["call_id"] for entry in history} == {"SCL_Qr2sAb3cDe4F"}


def test_jq_counts_outcomes_per_trunk(captured: Path) -> None:
    (counts,) = jq("outcomes-per-trunk", captured)
    assert counts == {
        "ST_alpha": {"abandoned": 1, "busy": 1, "completed": 1, "rejected": 2, "trunk_failure": 1},
        "ST_beta": {"completed": 1, "no_answer": 1},
    }


@pytest.fixture(scope="module")
def lnav_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A home where the documented lnav format is installed, as a user would install it."""
    lnav = need("lnav", "lnav")
    home = tmp_path_factory.mktemp("home")
    (fmt,) = re.findall(r"<!-- lnav-format -->\s*```json\n(.*?)```", DOC.read_text(), re.DOTALL)
    path = home / "call_monitor_log.json"
    path.write_text(fmt)
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "dumb"}
    done = subprocess.run(
        [lnav, "-i", str(path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return env


def lnav(name: str, log: Path, env: dict[str, str]) -> list[dict[str, str]]:
    command = documented("lnav")[name]
    return list(csv.DictReader(io.StringIO(run_documented(command, log, env))))


def test_lnav_lists_the_calls_of_a_trunk_in_a_time_window(
    captured: Path, lnav_home: dict[str, str]
) -> None:
    rows = lnav("trunk-window", captured, lnav_home)
    assert [row["call_id"] for row in rows] == TRUNK_WINDOW_CALLS


def test_lnav_lists_every_failed_dial_with_its_reason(
    captured: Path, lnav_home: dict[str, str]
) -> None:
    rows = lnav("failed-dials", captured, lnav_home)
    assert {row["call_id"]: (row["outcome"], row["reason"]) for row in rows} == {
        call_id: (outcome, reason) for call_id, (outcome, reason, _) in FAILED_DIALS.items()
    }


def test_lnav_shows_one_calls_whole_history_by_call_id(
    captured: Path, lnav_home: dict[str, str]
) -> None:
    rows = lnav("call-history", captured, lnav_home)
    assert [row["log_body"] for row in rows] == CALL_HISTORY


@pytest.mark.parametrize(
    ("line", "want"),
    [
        (
            "[2026-12-03T23:36:08Z WARN  livekit::rtc_engine] failed to connect: Signal(...),"
            " retrying... (1/3)",
            (
                logging.WARNING,
                "livekit::rtc_engine",
                "failed to connect: Signal(...), retrying... (1/3)",
            ),
        ),
        (
            "[2026-12-03T23:36:08Z ERROR livekit_ffi::room_apis::server::room] error while"
            " connecting to a room: engine: signal failure",
            (
                logging.ERROR,
                "livekit_ffi::room_apis::server::room",
                "error while connecting to a room: engine: signal failure",
            ),
        ),
        ("[2026-12-03T23:36:08Z TRACE libwebrtc] x", (logging.DEBUG, "libwebrtc", "x")),
        ("Traceback (most recent call last):", None),
        ("thread 'tokio-runtime-worker' panicked at src/server/mod.rs:10:5:", None),
        ("[not a record] at all", None),
    ],
)
def test_observer_process_stderr_lines_are_read_as_native_records_or_not(
    line: str, want: tuple[int, str, str] | None
) -> None:
    """The native library logs to the observer process's stderr in env_logger's format;
    anything else there (a traceback, a panic) is logged as a line of its own."""
    assert native_record(line) == want
