"""Reconciliation's decisions, on plain data: which rooms to ask, what a room's listing
says, and which calls a pass declares gone."""

from __future__ import annotations

from dataclasses import replace

from livekit import api
from livekit.protocol import models

from monitor.core.machine import CallBook
from monitor.core.model import (
    CallRecord,
    CallState,
    Participant,
    ParticipantSeen,
    ParticipantVanished,
    Source,
)
from monitor.runtime.reconcile import (
    RoomFindings,
    awaits_join_webhook,
    room_findings,
    verdict,
    worth_listing,
)
from tests.unit.script import T0, CallScript


def test_the_first_pass_asks_every_room_then_only_those_not_empty_or_with_a_call() -> None:
    empty, busy = api.Room(name="left-behind"), api.Room(name="busy", num_participants=2)
    known = api.Room(name="call-test")  # ListRooms' count lags: empty, yet a call is known
    rooms = (empty, busy, known)
    first = [r.name for r in rooms if worth_listing(r, {"call-test"}, True, first_pass=True)]
    later = [r.name for r in rooms if worth_listing(r, {"call-test"}, True, first_pass=False)]
    assert first == ["left-behind", "busy", "call-test"]
    assert later == ["busy", "call-test"]
    # Without webhooks the listing is how calls are found: every room, every pass.
    assert worth_listing(empty, set(), False, first_pass=False)


def test_a_listing_leaves_a_participant_who_just_joined_to_its_join_webhook() -> None:
    def seen(joined_at: float | None, sid: str = "PA_new") -> ParticipantSeen:
        who = Participant(sid, "sip_1", {"sip.callStatus": "ringing"}, True, joined_at)
        return ParticipantSeen(100.0, Source.RECONCILE, "call-test", who, "RM_1")

    # Joined 1 s ago and unknown: the join webhook, with the status it joined with, comes.
    assert awaits_join_webhook(seen(99.0), set(), 100.0, webhooks=True)
    # Known already, or joined long enough ago for the webhook to have been lost.
    assert not awaits_join_webhook(seen(99.0), {"PA_new"}, 100.0, webhooks=True)
    assert not awaits_join_webhook(seen(90.0), set(), 100.0, webhooks=True)
    assert not awaits_join_webhook(seen(None), set(), 100.0, webhooks=True)
    # Without webhooks, a listing is how calls are found: nothing waits.
    assert not awaits_join_webhook(seen(99.0), set(), 100.0, webhooks=False)


def known_calls(*scripts: CallScript) -> list[CallRecord]:
    book = CallBook()
    for script in scripts:
        for event in script.events:
            book.step(event)
    return book.live_calls()


def info(sid: str, kind: str = "SIP", joined: float = T0) -> models.ParticipantInfo:
    return models.ParticipantInfo(
        sid=sid,
        identity=sid.lower(),
        kind=kind,
        attributes={"sip.callStatus": "active", "sip.callID": f"SCL_{sid}"},
        joined_at_ms=int(joined * 1000),
    )


def test_a_listing_gives_snapshots_of_sip_participants_and_the_known_calls_it_misses() -> None:
    here = CallScript(call_id="SCL_PA_here", sid="PA_here").seen(0.0, "ringing")
    gone = CallScript(call_id="SCL_PA_gone", sid="PA_gone").seen(0.0, "ringing")
    listed = [info("PA_here"), info("PA_agent", kind="AGENT"), info("PA_new", joined=T0 - 60)]
    found = room_findings(T0 + 30, "call-test", "RM_1", listed, known_calls(here, gone), True)
    assert isinstance(found, RoomFindings)
    assert [e.participant.sid for e in found.snapshots if isinstance(e, ParticipantSeen)] == [
        "PA_here",
        "PA_new",
    ]
    assert found.missing == {("call-test", "PA_gone")}


def test_an_ending_call_missing_from_a_listing_is_not_a_miss() -> None:
    [call] = known_calls(CallScript(sid="PA_1").seen(0.0, "active"))
    ending = replace(call, state=CallState.ENDING)
    assert room_findings(T0, "call-test", "RM_1", [], [ending], True).missing == set()
    assert room_findings(T0, "call-test", "RM_1", [], [call], True).missing == {
        ("call-test", "PA_1")
    }


def test_a_call_missed_twice_is_gone_unless_its_room_showed_it_in_between() -> None:
    missing = {("call-a", "PA_1"), ("call-b", "PA_2")}
    first = verdict(100.0, missing, {}, {})
    assert first.vanished == []
    assert first.suspects == {"call-a\0PA_1": 100.0, "call-b\0PA_2": 100.0}
    assert first.suspect_rooms == {"call-a", "call-b"}  # the rooms are asked
    # PA_1's room showed it after the first miss: the listing is what is wrong.
    second = verdict(130.0, missing, first.suspects, {"PA_1": 110.0, "PA_2": 90.0})
    assert second.vanished == [ParticipantVanished(130.0, Source.RECONCILE, "call-b", "PA_2")]
    assert second.suspects == {"call-a\0PA_1": 130.0}
    # A call listed again is no longer suspect.
    assert verdict(160.0, set(), second.suspects, {}).suspects == {}
