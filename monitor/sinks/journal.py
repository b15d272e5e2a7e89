"""The event journal: every event the sources delivered, one JSON object a line
(`monitor.core.journal_format` says what a line holds; this module writes and reads
the files).

The live service appends each event before the machine sees it; `call-monitor replay`
feeds the same lines to a fresh machine, with the settings from the journal's header,
and gets the same outcomes. A line that cannot be read is reported with its number and
the kind of fault, and skipped: one bad line never hides the rest of an incident.

Besides events, a `counted` line says that the sinks were given a call's start or end
(metrics, the call log). A restarted monitor replays its journal and gives them what
the events imply and no such line says was given (`monitor.runtime.restore`), so a crash
neither loses a count nor makes one twice.

Each run starts with a header line, and so does each file a rotation begins, followed
there by an `ended_call` line for each call that ended in the last 15 minutes (so that
a late event does not start it again) and an `open_call` line for each call open at
that moment (its record, pending end and all): the newest file alone restores the
machine, and is all a restart reads.

A last line without its newline (a write cut by a crash) is moved to
`<path>.partial-<UTC time>` when the journal is opened again, so that the next event
starts a line of its own instead of being glued to the fragment.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from monitor.core.journal_format import (
    BadLineKind,
    Counted,
    Header,
    JournalError,
    JournalLine,
    decode_line,
    encode_counted,
    encode_event,
    encode_header,
)
from monitor.core.model import Event

__all__ = ["BadLine", "JournalWriter", "read_journal"]

log = structlog.get_logger("call_monitor")


@dataclass(frozen=True, slots=True)
class BadLine:
    path: str
    number: int
    error: str
    kind: BadLineKind = BadLineKind.BAD_FIELD


def read_journal(
    paths: Iterable[Path], bad_lines: list[BadLine] | None = None
) -> Iterator[JournalLine]:
    """Events and headers of journal files in order; bad lines go to `bad_lines`.

    Never raises for what a file holds: a file that cannot be read (from some line on)
    is one bad line, and the next file is read.
    """
    found = [] if bad_lines is None else bad_lines
    for path in paths:
        number = 0
        try:
            with path.open(encoding="utf-8", errors="replace") as stream:
                for number, line in enumerate(stream, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield decode_line(line)
                    except JournalError as error:
                        found.append(BadLine(str(path), number, str(error), error.kind))
        except OSError as error:
            reason = f"cannot read: {error.strerror or error}"
            found.append(BadLine(str(path), number + 1, reason, BadLineKind.UNREADABLE))


class JournalWriter:
    """Appends events to a file, rotating it at `max_bytes` and keeping `backups` old files.

    Each file starts with the header, and each run writes one when it opens the journal,
    so any one file replays on its own and a restart shows in the journal.
    """

    def __init__(
        self,
        path: Path,
        header: Header,
        max_bytes: int,
        backups: int,
        carried: Callable[[], Iterable[str]] = tuple,
        before_rotation: Callable[[], None] = lambda: None,
    ) -> None:
        """`carried`: the `open_call` and `ended_call` lines of the calls the machine
        knows now, written after the header of each file a rotation begins (the files
        that had their events may go next). `before_rotation`: called first, so that
        every event the file holds has reached the machine those lines describe."""
        self.path = path
        self._carried = carried
        self._before_rotation = before_rotation
        self._floor = 0  # the size of the calls the file began with (not counted)
        self._rotation_failing = False
        self._header = header
        self._header_line = (encode_header(header) + "\n").encode("utf-8")
        self._max_bytes = max_bytes
        self._backups = backups
        self._fd: int | None = None
        self._size = 0
        # Partial last lines moved aside since this writer was made, for a metric.
        self.partial_lines_set_aside = 0

    def open(self) -> int:
        """Open the journal now rather than at the first event, to find at start-up a path
        that cannot be written: sets a partial last line aside, writes this run's header.

        Returns how many partial lines were set aside (0 or 1) for the caller to count;
        raises OSError for a path that cannot be written (the message names it).
        """
        if self._fd is not None:
            return 0
        before = self.partial_lines_set_aside
        self._open()
        return self.partial_lines_set_aside - before

    def write(self, event: Event) -> None:
        """Append one event (rotating first when the file is full); raises OSError for
        the caller to count."""
        self._append(encode_event(event), may_rotate=True)

    def write_counted(self, counted: Counted) -> None:
        """Append a `counted` line (never rotating: it is written while an event is
        processed); raises OSError for the caller to count."""
        self._append(encode_counted(counted), may_rotate=False)

    def _append(self, text: str, may_rotate: bool) -> None:
        # Encoded first: the limit is on bytes, and non-ASCII text takes more than one.
        line = (text + "\n").encode("utf-8")
        if self._fd is None:
            self._open()
        elif may_rotate and self._size - self._floor + len(line) > self._max_bytes:
            # The limit is on what a file holds beyond the calls it began with: those
            # may be larger than the limit, and would rotate at every line.
            self._before_rotation()
            self._rotate()
        before = self._size
        try:
            self._write_all(line)
        except OSError:
            # Half a line (a full disk) would swallow the next event: cut it off.
            self._cut_back_to(before)
            raise

    def close(self, sync: bool = False) -> None:
        """Close the file; with `sync`, once it is on disk."""
        if self._fd is not None:
            if sync:
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def _cut_back_to(self, size: int) -> None:
        assert self._fd is not None
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, size)
            self._size = size

    def sync_handle(self) -> int | None:
        """A new descriptor of the file being written, for an fsync in another thread
        (the caller closes it): a rotation meanwhile closes only the writer's own."""
        return None if self._fd is None else os.dup(self._fd)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Owner only: it holds phone numbers, identities and room names in clear.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{self.path} is not a regular file (it could not be rotated)")
            size = self._set_aside_partial_line(fd, os.fstat(fd).st_size)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size = fd, size
        if not self._ends_with_this_runs_header(size):
            try:
                self._write_all(self._header_line)
            except OSError:
                self.close()  # the next write tries to open it again
                raise

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
            self._size += written

    def _set_aside_partial_line(self, fd: int, size: int) -> int:
        """Move a last line that has no newline (cut by a crash) to a file of its own,
        then cut it from the journal; return the journal's size without it."""
        end = _end_of_last_full_line(self.path, size)
        if end == size:
            return size
        aside = _copy_to_new_file(self.path, end, size)
        os.ftruncate(fd, end)  # only after the copy is safe on disk
        self.partial_lines_set_aside += 1
        log.warning(
            "journal_partial_line_set_aside",
            path=str(self.path),
            moved_to=str(aside),
            bytes=size - end,
        )
        return end

    def _ends_with_this_runs_header(self, size: int) -> bool:
        """Whether the last line is a header of this instance and settings with no event
        after it (the start-up check wrote it): a second one would say nothing new."""
        if size == 0:
            return False
        with self.path.open("rb") as stream:
            stream.seek(max(0, size - 4096))
            tail = stream.read(4096)
        last = tail.rstrip(b"\n").rpartition(b"\n")[2]
        try:
            found = decode_line(last.decode("utf-8", errors="replace"))
        except JournalError:
            return False
        return (
            isinstance(found, Header)
            and found.settings == self._header.settings
            and found.instance == self._header.instance
        )

    def _rotate(self) -> None:
        """Begin a new file: its header and carried calls are written whole under a
        name of their own and put in place in one rename, so that at any moment the
        journal's path holds a whole file (what a restart reads). A rotation that
        fails (a full disk) leaves the current file in use, and is tried again."""
        fresh = self.path.with_name(f"{self.path.name}.rotating")
        carried = b"".join((line + "\n").encode("utf-8") for line in self._carried())
        try:
            fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_fully(fd, self._header_line + carried)
                os.fsync(fd)
            finally:
                os.close(fd)
            if self._fd is not None:
                os.fsync(self._fd)  # what an fsync policy promised of it stays on disk
            for index in range(self._backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            if self._backups > 0:
                newest = self.path.with_name(f"{self.path.name}.1")
                newest.unlink(missing_ok=True)
                try:
                    os.link(self.path, newest)  # the journal's path keeps the old file
                except OSError:  # a file system without hard links
                    os.replace(self.path, newest)
            os.replace(fresh, self.path)
        except OSError as error:
            with contextlib.suppress(OSError):
                fresh.unlink()
            if not self._rotation_failing:  # once, not at every event until it works
                log.warning("journal_rotation_failed", path=str(self.path), error=str(error))
            self._rotation_failing = True
            return
        if self._rotation_failing:
            log.info("journal_rotation_recovered", path=str(self.path))
            self._rotation_failing = False
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = len(self._header_line) + len(carried)
        self._floor = len(carried)


def _write_fully(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _end_of_last_full_line(path: Path, size: int) -> int:
    """The offset just after the file's last newline (0 if it has none)."""
    block = 65536
    with path.open("rb") as stream:
        end = size
        while end > 0:
            start = max(0, end - block)
            stream.seek(start)
            chunk = stream.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0


def _copy_to_new_file(path: Path, start: int, end: int) -> Path:
    """Copy bytes [start, end) of `path` to a new owner-only `<path>.partial-<UTC time>`."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for attempt in range(1000):
        suffix = "" if attempt == 0 else f"-{attempt}"
        aside = path.with_name(f"{path.name}.partial-{stamp}{suffix}")
        try:
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with open(fd, "wb") as out, path.open("rb") as source:
            source.seek(start)
            left = end - start
            while left > 0:  # in blocks: a file with no newline at all may be large
                block = source.read(min(left, 1 << 20))
                if not block:
                    break
                out.write(block)
                left -= len(block)
            out.flush()
            os.fsync(out.fileno())
        return aside
    raise FileExistsError(f"no free name for {path.name}.partial-{stamp}")
