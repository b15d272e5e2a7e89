"""How a call's outcome is decided from what the room, the webhooks and the dial side saw.

Pure functions over how livekit-sip reports a call (docs/outcomes.md, and its
recordings in tests/fixtures/traces/): a failed dial never gets a final
`sip.callStatus`, so the outcome comes from three things together: whether the call was
ever answered, its last status, and the disconnect reason; plus, when the dial-side hook
sent it, the SIP status code of a failed CreateSIPParticipant. Where the room cannot tell
two causes apart the verdict carries an `ambiguity` naming the alternatives, rather than
a silent guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from monitor.core.model import Direction, EndedBy, Outcome, Reason, SipStatus

__all__ = ["Verdict", "decide", "outcome_of_sip_code"]


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    ended_by: EndedBy
    ambiguity: str = ""
    # True when the call reached `active` but ended the way only a failed dial ends:
    # livekit-sip set active before the far end really answered (livekit issue #3841).
    active_before_answer: bool = False


# Reasons livekit-server gives when our own API ended the call.
_OUR_SIDE = frozenset({Reason.PARTICIPANT_REMOVED, Reason.ROOM_DELETED})
# Reasons that name a failure of the server, the network or a client, not a SIP cause.
_SERVER_SIDE = frozenset(
    {
        Reason.SERVER_SHUTDOWN,
        Reason.CONNECTION_TIMEOUT,
        Reason.SIGNAL_CLOSE,
        Reason.JOIN_FAILURE,
        Reason.MEDIA_FAILURE,
        Reason.MIGRATION,
        Reason.STATE_MISMATCH,
        Reason.DUPLICATE_IDENTITY,
        Reason.AGENT_ERROR,
        Reason.ROOM_CLOSED,
    }
)
# Reasons with which livekit-sip reports a failed dial (pkg/sip/errors.go).
_DIAL_FAILURE = frozenset({Reason.USER_REJECTED, Reason.USER_UNAVAILABLE, Reason.SIP_TRUNK_FAILURE})
# A dial failure without a SIP code (the API's `canceled`) is a cut, not an unanswered
# call, when the room names our side or the server as the cause.
_CUT_SHORT = _OUR_SIDE | _SERVER_SIDE

AMBIGUOUS_480 = "480 means busy, unreachable or no answer depending on the carrier"
AMBIGUOUS_UNAVAILABLE_DIALING = "404, 408, 480 or no response from the far end"
AMBIGUOUS_UNAVAILABLE_RINGING = "ringing timeout, or 480/408 after ringing"
AMBIGUOUS_CLIENT_INITIATED_DIAL = (
    "5xx or network error towards the trunk, or the SIP service stopped"
)
AMBIGUOUS_NO_HANGUP = (
    "no hangup status: far-end BYE with the stuck-status quirk, media timeout "
    "or the SIP service stopped"
)
AMBIGUOUS_NO_REASON = "no disconnect reason was given"
AMBIGUOUS_ANSWER_UNSEEN = "hung up after an answer nobody saw: the talk time is unknown"
AMBIGUOUS_INBOUND_RINGING = "caller gave up, or the ringing timeout, or the SIP service stopped"
AMBIGUOUS_INBOUND_UNWATCHED = (
    "no observer was in the room: the caller hung up while it rang, or after an answer"
)


def outcome_of_sip_code(code: int | None) -> tuple[Outcome, str]:
    """Outcome of a failed dial from its SIP status code (None: no response at all)."""
    if code is None or code == 408:
        return Outcome.NO_ANSWER, ""
    if code in (486, 600):
        return Outcome.BUSY, ""
    if code == 480:
        return Outcome.UNAVAILABLE, AMBIGUOUS_480
    if code in (404, 410, 484, 604):
        return Outcome.NOT_FOUND, ""
    if code in (401, 403, 407):
        return Outcome.FORBIDDEN, ""
    if 600 <= code <= 699:
        return Outcome.DECLINED, ""
    if 500 <= code <= 599:
        return Outcome.TRUNK_FAILURE, ""
    return Outcome.REJECTED, ""


def decide(
    *,
    direction: Direction,
    answered: bool,
    last_status: SipStatus | None,
    reason: Reason | None,
    sip_status_code: int | None,
    dial_failed: bool,
    evidence: bool,
    watched: bool = True,
) -> Verdict:
    """The outcome of an ended call.

    `evidence` is False when the call disappeared without any source saying how (a
    listing no longer shows it, the room vanished with it): the outcome is then `lost`
    unless the far end's hangup was already seen. `watched` is False when no room
    connection ever saw the call (only webhooks and listings did): an answer may then
    have gone unseen.
    """
    if last_status is SipStatus.HANGUP and answered:
        # The far end hung up (BYE), or livekit-sip ended it (EndCall, max duration).
        by = EndedBy.OUR_SIDE if reason in _OUR_SIDE else EndedBy.FAR_END
        return Verdict(Outcome.COMPLETED, by)
    if dial_failed and not (sip_status_code is None and reason in _CUT_SHORT):
        outcome, ambiguity = outcome_of_sip_code(sip_status_code)
        return Verdict(outcome, EndedBy.FAR_END, ambiguity, active_before_answer=answered)
    if not evidence:
        if last_status is SipStatus.HANGUP:
            return _unanswered_hangup(direction, watched)
        return Verdict(Outcome.LOST, EndedBy.UNKNOWN, "")
    if answered:
        return _answered(reason)
    if last_status is SipStatus.HANGUP:
        return _unanswered_hangup(direction, watched)
    if direction is Direction.INBOUND:
        return _inbound_unanswered(reason)
    return _outbound_unanswered(last_status, reason)


def _unanswered_hangup(direction: Direction, watched: bool) -> Verdict:
    # hangup with no answer seen. Inbound: the caller sent CANCEL or BYE while it rang,
    # unless nobody watched the room (webhooks carry no status changes, only the last).
    # Outbound: livekit-sip sets hangup only on a BYE or its own EndCall, and a BYE
    # exists only in an answered call: it was answered while nobody watched.
    if direction is Direction.INBOUND:
        ambiguity = "" if watched else AMBIGUOUS_INBOUND_UNWATCHED
        return Verdict(Outcome.ABANDONED, EndedBy.FAR_END, ambiguity)
    return Verdict(Outcome.COMPLETED, EndedBy.FAR_END, AMBIGUOUS_ANSWER_UNSEEN)


def _answered(reason: Reason | None) -> Verdict:
    if reason in _OUR_SIDE:
        return Verdict(Outcome.COMPLETED, EndedBy.OUR_SIDE)
    if reason in _DIAL_FAILURE:
        # active was set, yet it ended as only a failed dial ends: it was never answered.
        # It was in early media, so it rang: judge it as a dial that failed while ringing.
        verdict = _outcome_of_failed_dial(SipStatus.RINGING, reason)
        return Verdict(verdict.outcome, verdict.ended_by, verdict.ambiguity, True)
    if reason is Reason.CLIENT_INITIATED:
        return Verdict(Outcome.COMPLETED, EndedBy.UNKNOWN, AMBIGUOUS_NO_HANGUP)
    if reason is Reason.ROOM_CLOSED:
        return Verdict(Outcome.COMPLETED, EndedBy.SERVER)
    if reason in _SERVER_SIDE:
        return Verdict(Outcome.DROPPED, EndedBy.SERVER)
    return Verdict(Outcome.COMPLETED, EndedBy.UNKNOWN, AMBIGUOUS_NO_REASON)


def _inbound_unanswered(reason: Reason | None) -> Verdict:
    if reason in _OUR_SIDE:
        return Verdict(Outcome.CANCELLED, EndedBy.OUR_SIDE)
    if reason in (Reason.CLIENT_INITIATED, Reason.UNKNOWN_REASON, None):
        # livekit-sip always leaves inbound calls with UNKNOWN (seen as CLIENT_INITIATED).
        return Verdict(Outcome.ABANDONED, EndedBy.UNKNOWN, AMBIGUOUS_INBOUND_RINGING)
    if reason in _SERVER_SIDE:
        return Verdict(Outcome.FAILED, EndedBy.SERVER)
    return Verdict(Outcome.FAILED, EndedBy.UNKNOWN)


def _outbound_unanswered(last_status: SipStatus | None, reason: Reason | None) -> Verdict:
    if reason in _OUR_SIDE:
        return Verdict(Outcome.CANCELLED, EndedBy.OUR_SIDE)
    if reason in _DIAL_FAILURE:
        return _outcome_of_failed_dial(last_status, reason)
    if reason is Reason.CLIENT_INITIATED:
        # livekit-sip sends UNKNOWN for 5xx and network errors; 1.13.5 shows CLIENT_INITIATED.
        return Verdict(Outcome.TRUNK_FAILURE, EndedBy.UNKNOWN, AMBIGUOUS_CLIENT_INITIATED_DIAL)
    if reason in _SERVER_SIDE:
        return Verdict(Outcome.FAILED, EndedBy.SERVER)
    return Verdict(Outcome.FAILED, EndedBy.UNKNOWN, AMBIGUOUS_NO_REASON)


def _outcome_of_failed_dial(last_status: SipStatus | None, reason: Reason | None) -> Verdict:
    if reason is Reason.USER_REJECTED:
        return Verdict(Outcome.REJECTED, EndedBy.FAR_END)
    if reason is Reason.SIP_TRUNK_FAILURE:
        return Verdict(Outcome.TRUNK_FAILURE, EndedBy.FAR_END)
    if last_status is SipStatus.RINGING:
        return Verdict(Outcome.NO_ANSWER, EndedBy.FAR_END, AMBIGUOUS_UNAVAILABLE_RINGING)
    return Verdict(Outcome.UNAVAILABLE, EndedBy.FAR_END, AMBIGUOUS_UNAVAILABLE_DIALING)
