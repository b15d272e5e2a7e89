"""When the journal's writes reach the disk: the fsync policy.

Every event is written to the journal (an unbuffered `os.write`) before its source is
answered, so a monitor killed at any moment loses nothing it acknowledged: the kernel
has the bytes. What the policy decides is what a machine that loses power keeps:

- `batch`: a webhook or dial report is answered only after an fsync that started after
  its events were written. One fsync serves every request waiting at the time (group
  commit), in a thread, so the event loop never waits on the disk.
- `interval`: an fsync a second, when anything was written: at most the last second
  is lost with the machine.
- `off`: the kernel writes back when it decides (about 30 s on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

import structlog

__all__ = ["JournalSync"]

log = structlog.get_logger("call_monitor")

INTERVAL_SECONDS = 1.0


class JournalSync:
    """fsyncs of one journal file, shared by everyone waiting for one."""

    def __init__(self, policy: str, handle: Callable[[], int | None]) -> None:
        self.policy = policy
        self._handle = handle  # a new descriptor of the file, or None when none is open
        self._written = 0  # writes so far
        self._synced = 0  # writes known to be on disk
        self._running: asyncio.Task[None] | None = None
        self.failures = 0

    def wrote(self) -> None:
        self._written += 1

    async def acknowledged(self) -> None:
        """Return once what was written so far is as safe as the policy promises an
        acknowledged event; raises OSError when the disk refused."""
        if self.policy == "batch":
            await self._sync_upto(self._written)

    async def run(self) -> None:
        """The `interval` policy's background fsyncs; returns at once for the others."""
        if self.policy != "interval":
            return
        while True:
            await asyncio.sleep(INTERVAL_SECONDS)
            with contextlib.suppress(OSError):  # counted and logged in _sync
                await self._sync_upto(self._written)

    async def _sync_upto(self, target: int) -> None:
        while self._synced < target:
            if self._running is None or self._running.done():
                self._running = asyncio.get_running_loop().create_task(self._sync())
            # Shielded: a request that goes away must not cancel the others' fsync.
            await asyncio.shield(self._running)

    async def _sync(self) -> None:
        upto = self._written
        fd = self._handle()
        if fd is None:
            self._synced = max(self._synced, upto)  # nothing open: nothing to sync
            return
        try:
            await asyncio.to_thread(os.fsync, fd)
        except OSError as error:
            self.failures += 1
            log.error("journal_fsync_failed", error=str(error))
            raise
        finally:
            os.close(fd)
        self._synced = max(self._synced, upto)
