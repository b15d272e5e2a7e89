"""What the signal-channel observer makes of livekit-server's participant snapshots.

`ParticipantView` is the pure part of `monitor/sources/signal_observer.py`: it gets the
`ParticipantInfo` lists of a JoinResponse or a ParticipantUpdate (livekit-protocol's own
messages, built here as the server would send them) and returns the machine's events.
The client around it is tested against the real server in
tests/integration/test_signal_observer.py.
"""

from __future__ import annotations

import subprocess
import sys

from livekit.protocol import models

from monitor.core.model import (
    AttributesChanged,
    ParticipantLeft,
    ParticipantSeen,
    Reason,
    Source,
)
from monitor.sources.signal_observer import ParticipantView

SIP = models.ParticipantInfo.Kind.SIP
STANDARD = models.ParticipantInfo.Kind.STANDARD
State = models.ParticipantInfo.State
AT = 1_800_000_000.0


def info(
    status: str,
    *,
    sid: str = "PA_callee",
    version: int = 1,
    state: int = State.ACTIVE,
    kind: int = SIP,
    reason: int = 0,
    **attributes: str,
) -> models.ParticipantInfo:
    return models.ParticipantInfo(
        sid=sid,
        identity=f"id-{sid}",
        kind=kind,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        version=version,
        joined_at_ms=1_799_999_999_500,
        disconnect_reason=reason,  # type: ignore[arg-type]
        attributes={"sip.callID": "SCL_1", "sip.callStatus": status, **attributes},
    )


def view() -> ParticipantView:
    return ParticipantView("call-room", "RM_1")


def test_the_sip_participants_of_a_join_response_are_seen_and_others_ignored() -> None:
    room = view()
    events = room.resume(
        [info("dialing"), info("", sid="PA_agent", kind=STANDARD)],
        AT,
    )
    [seen] = events
    assert isinstance(seen, ParticipantSeen)
    assert (seen.at, seen.source, seen.room, seen.room_sid) == (
        AT,
        Source.ROOM,
        "call-room",
        "RM_1",
    )
    assert seen.participant.sid == "PA_callee"
    assert seen.participant.status == "dialing"
    assert seen.participant.joined_at == 1_799_999_999.5


def test_an_attribute_change_says_what_changed_and_a_state_change_alone_says_nothing() -> None:
    room = view()
    room.update([info("dialing", extra="x")], AT)
    [changed] = room.update([info("ringing", version=2)], AT + 1)
    assert isinstance(changed, AttributesChanged)
    assert changed.participant.status == "ringing"
    # A removed key is reported as "", as the SDKs do.
    assert dict(changed.changed) == {"sip.callStatus": "ringing", "extra": ""}
    # The same attributes in a new state (it published its track): nothing to report.
    assert room.update([info("ringing", version=3, state=State.JOINED)], AT + 2) == []


def test_an_older_version_of_a_participant_is_ignored() -> None:
    room = view()
    room.update([info("dialing", version=1)], AT)
    room.update([info("active", version=5)], AT + 1)
    assert room.update([info("ringing", version=4)], AT + 2) == []
    assert room.participants["PA_callee"].attributes["sip.callStatus"] == "active"


def test_a_leave_carries_its_reason_and_last_attributes_and_a_late_copy_is_ignored() -> None:
    room = view()
    room.update([info("ringing")], AT)
    gone = info(
        "ringing", version=2, state=State.DISCONNECTED, reason=models.DisconnectReason.USER_REJECTED
    )
    [left] = room.update([gone], AT + 1)
    assert isinstance(left, ParticipantLeft)
    assert (left.reason, left.raw_reason) == (Reason.USER_REJECTED, "12")
    assert left.participant.status == "ringing"
    assert room.participants == {}
    # A copy of an earlier state that arrives after the leave starts nothing again.
    assert room.update([info("ringing", version=1)], AT + 2) == []
    assert room.update([gone], AT + 2) == []


def test_a_leave_of_a_participant_never_seen_is_still_evidence() -> None:
    """livekit-server batches the join and leave of a participant that published
    nothing; a leave may be the first the room says of it."""
    room = view()
    gone = info(
        "dialing", state=State.DISCONNECTED, reason=models.DisconnectReason.USER_UNAVAILABLE
    )
    [left] = room.update([gone], AT)
    assert isinstance(left, ParticipantLeft)
    assert left.reason is Reason.USER_UNAVAILABLE


def test_a_reason_outside_the_protocol_is_kept_raw() -> None:
    room = view()
    [left] = room.update([info("active", state=State.DISCONNECTED, reason=999)], AT)
    assert isinstance(left, ParticipantLeft)
    assert (left.reason, left.raw_reason) == (None, "999")


def test_a_new_session_reports_only_what_changed_and_forgets_who_is_gone() -> None:
    room = view()
    room.resume([info("active"), info("ringing", sid="PA_other")], AT)
    # The renewed session's JoinResponse: PA_callee unchanged, PA_other answered, and a
    # third participant joined; one who is no longer listed is forgotten quietly (its
    # leave, with the reason, comes from the webhook or the listing).
    events = room.resume(
        [info("active"), info("active", sid="PA_other", version=2), info("dialing", sid="PA_new")],
        AT + 50,
    )
    assert [(type(e).__name__, e.participant.sid) for e in events] == [  # type: ignore[union-attr]
        ("AttributesChanged", "PA_other"),
        ("ParticipantSeen", "PA_new"),
    ]
    assert room.resume([info("active")], AT + 100) == []
    assert set(room.participants) == {"PA_callee"}


def test_a_snapshot_reports_everyone_present() -> None:
    room = view()
    room.resume([info("active"), info("ringing", sid="PA_other")], AT)
    snapshot = room.snapshot(AT + 5)
    assert all(isinstance(e, ParticipantSeen) and e.at == AT + 5 for e in snapshot)
    assert sorted(e.participant.sid for e in snapshot) == ["PA_callee", "PA_other"]  # type: ignore[union-attr]


def test_the_default_monitor_never_loads_the_webrtc_sdk() -> None:
    """The signal observer is the default: the monitor, built and configured, has not
    imported `livekit.rtc` (its native library is what made joins cost 100 ms)."""
    program = (
        "import sys\n"
        "from monitor.cli import main\n"
        "from monitor.runtime.config import load_settings\n"
        "from monitor.runtime.service import Monitor\n"
        "env = {'LIVEKIT_URL': 'ws://127.0.0.1:1', 'LIVEKIT_API_KEY': 'k',\n"
        "       'LIVEKIT_API_SECRET': 's' * 40}\n"
        "monitor = Monitor(load_settings({}, env))\n"
        "print(type(monitor.observers).__name__, 'livekit.rtc' in sys.modules)\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    assert shown.stdout.split() == ["SignalObservers", "False"]
