"""What the service needs of a room observer, whichever client holds the connection.

Two observers implement it: the signal-channel client (`monitor/sources/signal_observer.py`, the
default: a WebSocket in the monitor's own event loop) and the WebRTC SDK in recycled
child processes (`monitor/observers.py`, `--observer rtc`). The service joins a room
through an `Observers`, gets a `RoomLink`, and learns through `LinkHooks` when the link
ends; the room's events go to the queue the observers were made with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["JoinFailed", "LinkHooks", "Observers", "RoomLink"]


class JoinFailed(Exception):
    """The observer could not join the room; str() says why (never with a token)."""


@dataclass
class LinkHooks:
    """What a room connection tells the service, besides the room's events."""

    # (room, the room's sid if the room itself ended else None, why: a bounded word
    # for the metric, such as a leave reason, "ping_timeout" or "socket_closed")
    lost: Callable[[str, str | None, str], None] = lambda room, closed_sid, why: None
    reconnecting: Callable[[str], None] = lambda room: None
    reconnected: Callable[[str], None] = lambda room: None
    # The link moves elsewhere: the service joins again, then closes this link.
    moving: Callable[[str], None] = lambda room: None
    # The link replaced its session on the server by a new one (True), or failed to.
    renewed: Callable[[str, bool], None] = lambda room, ok: None


class RoomLink(Protocol):
    """One room connection."""

    @property
    def room(self) -> str: ...

    @property
    def room_sid(self) -> str:
        """The sid of the room joined: a new sid means a new room of that name."""
        ...

    @property
    def lost(self) -> asyncio.Event:
        """Set once the connection ended on its own."""
        ...

    @property
    def moving(self) -> bool:
        """Join again elsewhere, then close this one."""
        ...

    async def close(self) -> None:
        """Leave the room; safe to call more than once."""
        ...

    def reseed(self) -> None:
        """Report the SIP participants in the room now, as ParticipantSeen."""
        ...


class Observers(Protocol):
    """Makes room connections; one per monitor."""

    async def start(self) -> None: ...

    async def join(
        self, room: str, url: str, token: str, within: float, hooks: LinkHooks
    ) -> RoomLink:
        """Join `room` hidden within `within` seconds; raises JoinFailed."""
        ...

    def pids(self) -> list[int]:
        """Processes of its own besides the monitor's (none for the signal client)."""
        ...

    async def close(self) -> None: ...
