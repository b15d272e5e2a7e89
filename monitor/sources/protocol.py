"""livekit-protocol's participant as the core's `Participant`: what every source that
speaks the protocol (webhooks, listings, the signal observer) turns its messages into."""

from __future__ import annotations

from livekit.protocol import models

from monitor.core.model import Participant

__all__ = ["participant_from_info"]


def participant_from_info(info: models.ParticipantInfo) -> Participant:
    joined_ms = info.joined_at_ms or info.joined_at * 1000
    return Participant(
        sid=info.sid,
        identity=info.identity,
        attributes=dict(info.attributes),
        is_sip=info.kind == models.ParticipantInfo.Kind.SIP,
        joined_at=joined_ms / 1000.0 if joined_ms else None,
    )
