"""The observer process: it holds the room connections, so the monitor never loads the SDK.

Run by `monitor/observers.py` as `python -m monitor.observer_worker <sdk log level>`. Two
reasons for a process of its own: the livekit SDK's native library keeps about 1.2 MiB
per room connection for the life of the process (livekit 1.2.1, python-sdks #449), so
the monitor replaces this process after a number of joins and the memory goes back to
the system with it; and an SDK panic, which SIGTERMs its own process, ends only this one.

The protocol is JSON lines, one object a line, ids chosen by the monitor:

    stdin   {"op": "join", "id", "room", "url", "token", "within"}
            {"op": "leave", "id"}
            {"op": "seed", "id"}                  report who is in the room now
    stdout  {"t": "joined", "id", "room_sid"}     {"t": "failed", "id", "error"}
            {"t": "event", "id", "line"}          a journal line (monitor/sinks/journal.py)
            {"t": "lost", "id", "reason"}         {"t": "left", "id"}
            {"t": "reconnecting", "id"}           {"t": "reconnected", "id"}
            {"t": "log", "logger", "level", "message"}
            {"t": "ready", "native_logs"}         loaded, reading commands; where the
                                                  SDK's native records go: "stderr" or
                                                  "python" (at debug level)
    stderr  the native library's log records (env_logger's format, filtered by
            RUST_LOG), and anything else the process prints; the monitor logs it

End of input closes every room and ends the process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Any, TextIO

from monitor.core.journal_format import encode_event
from monitor.core.model import Event, Reason
from monitor.sources.rtc_adapter import ObserverHooks, RoomObserver, native_logs_to_stderr

__all__ = ["main"]

# A join or a leave is a few kB at most; a longer line is not from the monitor.
_MAX_LINE = 2**20


class _Channel:
    """Our stdout, kept apart from fd 1, so a stray print cannot corrupt the protocol."""

    def __init__(self) -> None:
        self._out: TextIO = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, message: dict[str, Any]) -> None:
        self._out.write(json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n")


class _ForwardLogs(logging.Handler):
    """The SDK's log records go to the monitor, which formats them like its own."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format
            message = str(record.msg)
        self._channel.send(
            {"t": "log", "logger": record.name, "level": record.levelno, "message": message}
        )


class _Observers:
    def __init__(self, channel: _Channel) -> None:
        self.channel = channel
        self.rooms: dict[int, RoomObserver] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def join(self, id_: int, room: str, url: str, token: str, within: float) -> None:
        send = self.channel.send

        def emit(event: Event) -> None:
            send({"t": "event", "id": id_, "line": encode_event(event)})

        def lost(_room: str, reason: Reason | None) -> None:
            send({"t": "lost", "id": id_, "reason": None if reason is None else str(reason)})

        observer = RoomObserver(
            room,
            url,
            token,
            emit,
            ObserverHooks(
                lost=lost,
                reconnecting=lambda _: send({"t": "reconnecting", "id": id_}),
                reconnected=lambda _: send({"t": "reconnected", "id": id_}),
            ),
        )
        self.rooms[id_] = observer
        try:
            await observer.connect(within)
        except Exception as error:
            self.rooms.pop(id_, None)
            detail = str(error) or (
                f"not joined within {within:g} s" if isinstance(error, TimeoutError) else ""
            )
            send({"t": "failed", "id": id_, "error": f"{type(error).__name__}: {detail}"})
            return
        if id_ not in self.rooms:  # left while joining
            await observer.close()
            return
        send({"t": "joined", "id": id_, "room_sid": observer.room_sid})

    async def leave(self, id_: int) -> None:
        observer = self.rooms.pop(id_, None)
        if observer is not None:
            await observer.close()
        self.channel.send({"t": "left", "id": id_})

    def command(self, line: bytes) -> None:
        try:
            command = json.loads(line)
            op, id_ = command["op"], int(command["id"])
            if op == "join":
                self.spawn(
                    self.join(
                        id_,
                        str(command["room"]),
                        str(command["url"]),
                        str(command["token"]),
                        float(command["within"]),
                    )
                )
            elif op == "leave":
                self.spawn(self.leave(id_))
            elif op == "seed":
                observer = self.rooms.get(id_)
                if observer is not None:
                    observer.reseed()
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as error:
            logging.getLogger("call_monitor.observer").error("bad command: %s", error)

    async def close(self) -> None:
        rooms, self.rooms = list(self.rooms.values()), {}
        await asyncio.gather(*(observer.close() for observer in rooms), return_exceptions=True)


async def _serve(channel: _Channel, native_logs: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    observers = _Observers(channel)
    channel.send({"t": "ready", "native_logs": native_logs})
    try:
        while line := await reader.readline():
            observers.command(line)
    finally:
        # Joins still under way finish (cancelling one SIGTERMs the process) and leave.
        await asyncio.gather(*observers.tasks, return_exceptions=True)
        await observers.close()


def main() -> None:
    level = int(sys.argv[1]) if len(sys.argv) > 1 else logging.WARNING
    channel = _Channel()
    sdk = logging.getLogger("livekit")
    sdk.setLevel(level)
    sdk.addHandler(_ForwardLogs(channel))
    sdk.propagate = False
    # Below debug, the native library's records go to stderr, filtered there by
    # RUST_LOG, and the monitor logs what comes through; at debug, all of them come
    # through Python as the SDK sends them.
    native_logs = "python"
    if level > logging.DEBUG:
        if native_logs_to_stderr():
            native_logs = "stderr"
        else:
            sdk.warning("the SDK's native log capture could not be switched off")
    asyncio.run(_serve(channel, native_logs))


if __name__ == "__main__":
    main()
