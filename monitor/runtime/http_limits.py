"""What a client can cost the monitor's HTTP server, bounded per connection and in all.

aiohttp's own settings where it has them (`handler_settings`): sizes of a header line
and field and the number of headers, the buffer of one connection's unread body, no
draining of a refused body (the connection is closed instead), and an idle timeout,
which aiohttp applies from a connection's start and from each response, so it also
bounds how long a client may take over a request's headers.

What aiohttp lacks is a cap on open connections: `CappedSite` listens like its TCPSite
and keeps at most `ConnectionCap.limit` open. At the cap, a new connection closes the
oldest one that is not being served (idle, or still sending headers); if every one is
being served or just accepted, the new one gets a 503 and is closed. So a flood of
idle or slow connections can neither use up the process's file descriptors nor lock
out `/healthz`, `/metrics` and livekit-server.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from collections.abc import Callable
from typing import Any, Final, cast

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from monitor.sinks.logs import LogRateLimiter

__all__ = ["CappedSite", "ConnectionCap", "handler_settings", "listening_socket"]

log = structlog.get_logger("call_monitor")

# A webhook's or a dialer's headers are a few hundred bytes, a JWT under 2 KiB; a proxy
# in front adds a few. Headers still incomplete are held in memory (about twice their
# size), so these bound what a client sending them slowly costs until the idle timeout.
MAX_LINE_SIZE: Final = 4096
MAX_FIELD_SIZE: Final = 4096
MAX_HEADERS: Final = 32
# Unread body kept per connection before aiohttp stops reading the socket (it pauses at
# twice this): what a client that sends a body nobody reads costs.
READ_BUFSIZE: Final = 2**14
_BUSY_BODY: Final = b'{"error": "too many connections"}'
_BUSY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
BACKLOG: Final = 512
# A connection younger than this is not closed to make room: its request may be on its
# way (a prober's, livekit-server's); a newcomer at the cap is refused instead.
MIN_AGE: Final = 0.1
# The kernel doubles it for its own bookkeeping: 32 KiB per connection.
RECEIVE_BUFFER: Final = 2**12
# Closed connections remembered before the acceptance times are pruned.
_CLOSED_KEPT: Final = 32


def handler_settings(idle_timeout_seconds: float) -> dict[str, Any]:
    """aiohttp's per-connection limits, for `web.AppRunner(app, **handler_settings(...))`."""
    return {
        "keepalive_timeout": idle_timeout_seconds,
        "max_line_size": MAX_LINE_SIZE,
        "max_field_size": MAX_FIELD_SIZE,
        "max_headers": MAX_HEADERS,
        "read_bufsize": READ_BUFSIZE,
        # A body left unread (a refused request) is not drained for seconds: the
        # connection is closed after the answer.
        "lingering_time": 0,
    }


def file_limit_share(wanted: int) -> int:
    """`wanted`, but at most half the process's file limit: journal, observer pipes
    and LiveKit API connections need descriptors too."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft // 2))


class _Refused(asyncio.Protocol):
    """A connection over the cap: a 503 and closed, before reading anything."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(_BUSY)
        transport.close()


class ConnectionCap:
    """Which connections are being served (inside a handler), and what to do with a new
    connection at the cap."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._served: set[web.RequestHandler] = set()
        self._accepted_at: dict[web.RequestHandler, float] = {}
        self._logged = LogRateLimiter(interval=10.0)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the connection as being served while its handler runs."""
        connection = request.protocol
        self._served.add(connection)
        try:
            return await handler(request)
        finally:
            self._served.discard(connection)

    def protocol_for(self, server: web.Server) -> asyncio.BaseProtocol:
        """The protocol for a new connection: aiohttp's, after making room if needed."""
        connections = server.connections  # oldest first; closing ones too, for a moment
        if len(connections) >= self.limit and not self._make_room(connections):
            return _Refused()
        if len(self._accepted_at) > len(connections) + _CLOSED_KEPT:
            # Forget the closed ones soon: a closed handler holds its buffers while it
            # is referenced here (aiohttp's handlers take no weak references).
            self._accepted_at = {c: self._accepted_at.get(c, 0.0) for c in connections}
        handler = server()
        self._accepted_at[handler] = self._clock()
        return handler

    def _make_room(self, connections: list[web.RequestHandler]) -> bool:
        """Close the oldest connection not being served, unless it is too young to have
        sent its request yet (a prober's, say): then the newcomer is refused."""
        oldest = next(
            (c for c in connections if c.transport is not None and c not in self._served), None
        )
        young = oldest is None or self._clock() - self._accepted_at.get(oldest, 0.0) < MIN_AGE
        self._logged.warning(
            log,
            "http_connection_limit",
            "limit",
            limit=self.limit,
            action="refused_new" if young else "closed_oldest_idle",
        )
        if young or oldest is None:
            return False
        self._accepted_at.pop(oldest, None)
        oldest.force_close()
        return True


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket (OSError if the address is in use or not ours).

    Its receive buffer, which accepted connections inherit, is small: one read of a
    connection then returns at most that much, so a client cannot put more into the
    monitor's memory than that before its token is checked (the default lets one read
    take 256 KiB). Webhooks and dial reports are a few KiB.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Before listen(): the TCP window is agreed from it at the handshake.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class CappedSite(web.BaseSite):
    """aiohttp's site on a socket of ours, with the connection cap in front of it."""

    __slots__ = ("_cap", "_sock")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, cap: ConnectionCap) -> None:
        super().__init__(runner, backlog=BACKLOG)
        self._sock = sock
        self._cap = cap

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # BaseSite refuses a runner that is not set up
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self._cap.protocol_for(server), sock=self._sock, backlog=self._backlog
        )
