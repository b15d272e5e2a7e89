"""The fallback room observer (`--observer rtc`): the WebRTC SDK, in observer processes
replaced as they age. The default observer needs none of this (`signal_observer.py`).

The livekit SDK keeps native memory for every room a process has joined (about 1.2 MiB
a connection with livekit 1.2.1, python-sdks #449). So the monitor never joins a room
itself: a child process (`monitor/sources/rtc_worker.py`) does. Once a process has closed
`recycle_joins` connections, and at least as many as it holds open, it is retired: new
joins go to a fresh process, the rooms it still holds are asked to move after
`move_after` seconds (the service joins such a room again through the fresh process
before it leaves the old connection, so no event falls in a gap), and the retired
process, once empty, exits and returns its memory. The memory wasted is so bounded by
`recycle_joins` connections or the live ones, whichever is more, and moving costs at
most one extra join per connection closed.

A process that dies (an SDK panic SIGTERMs its own process) loses its rooms as a
network cut would: every link is marked lost and the service joins again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from monitor.core.journal_format import JournalError, decode_event
from monitor.core.model import ROOM_GONE_REASONS, Event, parse_reason
from monitor.sources.room_link import JoinFailed, LinkHooks

__all__ = ["ObserverPool", "ProcessLink", "native_record"]

log = structlog.get_logger("call_monitor")

# How long past the join's own timeout the monitor waits for the process to answer.
_ANSWER_SLACK_SECONDS = 5.0
# How long a process has to close its rooms and exit before it is killed.
_EXIT_SECONDS = 10.0
# The SDK's native library logs to the process's stderr (observer_worker.py) in
# env_logger's format: "[2026-12-03T23:55:01Z WARN  livekit::rtc_engine] message".
_NATIVE_LINE = re.compile(r"\[\S+\s+(ERROR|WARN|INFO|DEBUG|TRACE)\s+([^\]\s]*)\s*\]\s?(.*)")
_NATIVE_LEVELS = {
    "ERROR": logging.ERROR,
    "WARN": logging.WARNING,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
    "TRACE": logging.DEBUG,
}
# What of the native library's records reach the log, unless RUST_LOG says otherwise.
_NATIVE_FILTER = "warn"
# A line of stderr longer than this is cut (a runaway native log line).
_MAX_STDERR_LINE = 8192


def native_record(line: str) -> tuple[int, str, str] | None:
    """(logging level, target, message) of a native log line, None if it is not one."""
    native = _NATIVE_LINE.fullmatch(line)
    if native is None:
        return None
    level, target, message = native.groups()
    return _NATIVE_LEVELS[level], target, message


@dataclass(eq=False)
class ProcessLink:
    """One room connection, held by one observer process."""

    id: int
    room: str
    hooks: LinkHooks
    worker: _Worker
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    answer: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    room_sid: str = ""

    @property
    def moving(self) -> bool:
        """Its process is being replaced: join again elsewhere, then close this one."""
        return self.worker.moving and not self.lost.is_set()

    async def close(self) -> None:
        self.worker.leave(self)

    def reseed(self) -> None:
        """Have the room report the SIP participants in it now, as ParticipantSeen."""
        self.worker.send({"op": "seed", "id": self.id})

    def mark_lost(self, why: str, room_closed: bool = False) -> None:
        if not self.lost.is_set():
            self.lost.set()
            self.hooks.lost(self.room, self.room_sid if room_closed else None, why)


class _Worker:
    """One observer process and the room connections it holds."""

    def __init__(
        self, serial: int, process: asyncio.subprocess.Process, submit: Callable[[Event], object]
    ) -> None:
        self.serial = serial
        self.process = process
        self.submit = submit
        self.links: dict[int, ProcessLink] = {}
        self.joins = 0
        self.retired = False
        self.moving = False
        self.exited = asyncio.Event()
        self.ready = asyncio.Event()  # loaded and reading commands
        self.native_logs = ""  # where the SDK's native log records go, once ready
        self.tasks: set[asyncio.Task[None]] = set()
        self._spawn_task(self._read(), f"observer-process-{serial}")
        self._spawn_task(self._read_stderr(), f"observer-process-{serial}-stderr")

    @property
    def closed(self) -> int:
        """Connections this process made and no longer holds: their memory is spent."""
        return self.joins - len(self.links)

    def _spawn_task(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def send(self, message: dict[str, Any]) -> bool:
        stdin = self.process.stdin
        if self.exited.is_set() or stdin is None or stdin.is_closing():
            return False
        stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        return True

    def leave(self, link: ProcessLink) -> None:
        if self.links.pop(link.id, None) is not None:
            self.send({"op": "leave", "id": link.id})
        self.end_if_idle()

    def retire(self, move_after: float) -> None:
        """Take no more joins; the rooms still held move after `move_after` seconds."""
        if self.retired:
            return
        self.retired = True
        log.info(
            "observer_process_retired",
            process=self.serial,
            connections_closed=self.closed,
            rooms=len(self.links),
        )
        self._spawn_task(self._move_later(move_after), f"observer-process-{self.serial}-move")
        self.end_if_idle()

    async def _move_later(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.moving = True
        for link in list(self.links.values()):
            link.hooks.moving(link.room)

    def end_if_idle(self) -> None:
        stdin = self.process.stdin
        if self.retired and not self.links and stdin is not None and not stdin.is_closing():
            stdin.close()  # the process leaves its rooms and exits

    async def stop(self) -> None:
        self.retired = True
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            async with asyncio.timeout(_EXIT_SECONDS):
                await self.exited.wait()
        except TimeoutError:
            log.warning("observer_process_killed", process=self.serial)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.exited.wait()
        for task in list(self.tasks):
            task.cancel()

    async def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while line := await stdout.readline():
                self._dispatch(line)
        finally:
            await self.process.wait()
            self.retired = True
            self.exited.set()
            for link in list(self.links.values()):
                if not link.answer.done():
                    link.answer.set_exception(JoinFailed("the observer process exited"))
                link.mark_lost("process_exited")
            self.links.clear()
            code = self.process.returncode
            level = logging.INFO if code == 0 else logging.WARNING
            log.log(level, "observer_process_exited", process=self.serial, returncode=code)

    async def _read_stderr(self) -> None:
        """The process's stderr, read to its end so it never blocks on a full pipe: the
        native library's log records, and anything else (a traceback, a panic)."""
        stderr = self.process.stderr
        assert stderr is not None
        while True:
            try:
                line = await stderr.readline()
            except ValueError:  # longer than the stream's limit: take what is buffered
                line = await stderr.read(_MAX_STDERR_LINE)
            if not line:
                return
            self._log_stderr(line[:_MAX_STDERR_LINE].decode("utf-8", "replace").rstrip())

    def _log_stderr(self, text: str) -> None:
        if not text:
            return
        native = native_record(text)
        if native is not None:
            level, target, message = native
            logging.getLogger("livekit").log(level, "%s - %s", target, message)
        else:
            log.warning("observer_process_stderr", process=self.serial, line=text)

    def _dispatch(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            kind = message["t"]
            if kind == "log":
                logging.getLogger(str(message["logger"])).log(
                    int(message["level"]), "%s", message["message"]
                )
                return
            if kind == "ready":
                self.native_logs = str(message.get("native_logs", ""))
                self.ready.set()
                return
            link = self.links.get(int(message["id"]))
            if link is None:
                return  # about a room already left
            if kind == "event":
                self.submit(decode_event(str(message["line"])))
            elif kind == "joined":
                if not link.answer.done():
                    link.answer.set_result(str(message["room_sid"]))
            elif kind == "failed":
                if not link.answer.done():
                    link.answer.set_exception(JoinFailed(str(message["error"])))
            elif kind == "lost":
                reason, _ = parse_reason(message.get("reason"))
                link.mark_lost(str(reason or "socket_closed"), reason in ROOM_GONE_REASONS)
            elif kind == "reconnecting":
                link.hooks.reconnecting(link.room)
            elif kind == "reconnected":
                link.hooks.reconnected(link.room)
        except (ValueError, KeyError, TypeError, JournalError) as error:
            log.error("observer_process_bad_message", process=self.serial, error=str(error))


class ObserverPool:
    """Observer processes: one takes new joins; retired ones serve their rooms out."""

    def __init__(
        self,
        submit: Callable[[Event], object],
        recycle_joins: int,
        move_after: float = 30.0,
        sdk_log_level: int = logging.WARNING,
    ) -> None:
        self.submit = submit
        self.recycle_joins = recycle_joins
        self.move_after = move_after
        self.sdk_log_level = sdk_log_level
        self.workers: list[_Worker] = []
        self.started = 0
        self._current: _Worker | None = None
        self._spare: _Worker | None = None
        self._starting = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._link_serial = 0

    async def join(
        self, room: str, url: str, token: str, within: float, hooks: LinkHooks
    ) -> ProcessLink:
        """Join `room` hidden through the current process; raises JoinFailed."""
        worker = await self._worker()
        worker.joins += 1
        self._link_serial += 1
        link = ProcessLink(self._link_serial, room, hooks, worker)
        worker.links[link.id] = link
        command = {"op": "join", "id": link.id, "room": room, "url": url, "token": token}
        try:
            if not worker.send({**command, "within": within}):
                raise JoinFailed("the observer process exited")
            async with asyncio.timeout(within + _ANSWER_SLACK_SECONDS):
                link.room_sid = await link.answer
        except BaseException as error:
            worker.leave(link)
            if isinstance(error, TimeoutError):
                raise JoinFailed("the observer process did not answer") from None
            raise
        return link

    def _worn_out(self, worker: _Worker) -> bool:
        return worker.closed >= max(self.recycle_joins, len(worker.links))

    async def start(self, within: float = 30.0) -> None:
        """Start the process that takes joins and its spare, ahead of the first call,
        and wait until the first has loaded."""
        current = await self._worker()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await asyncio.wait(
                    [asyncio.ensure_future(e.wait()) for e in (current.ready, current.exited)],
                    return_when=asyncio.FIRST_COMPLETED,
                )

    async def _worker(self) -> _Worker:
        async with self._starting:
            current = self._current
            if current is not None and not current.retired and self._worn_out(current):
                current.retire(self.move_after)
            if current is None or current.retired:
                # A spare process is kept started: Python and the SDK take most of a
                # second to load, and a join that waited would miss the first ringing.
                spare, self._spare = self._spare, None
                current = self._current = spare if spare is not None else await self._spawn()
            if self._spare is None or self._spare.exited.is_set():
                self._spare = await self._spawn()
            return current

    async def _spawn(self) -> _Worker:
        self.started += 1
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "monitor.sources.rtc_worker",
            str(self.sdk_log_level),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=2**22,
            env={"RUST_LOG": _NATIVE_FILTER, **os.environ},
        )
        worker = _Worker(self.started, process, self.submit)
        self.workers.append(worker)
        task = asyncio.get_running_loop().create_task(self._forget(worker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.debug("observer_process_started", process=worker.serial, pid=process.pid)
        return worker

    async def _forget(self, worker: _Worker) -> None:
        await worker.exited.wait()
        self.workers.remove(worker)
        if self._current is worker:
            self._current = None
        if self._spare is worker:
            self._spare = None

    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self.workers]

    @property
    def current(self) -> _Worker | None:
        """The process that takes joins now."""
        return self._current

    async def close(self) -> None:
        self._current = self._spare = None
        await asyncio.gather(*(worker.stop() for worker in list(self.workers)))
        await asyncio.gather(*self._tasks, return_exceptions=True)
