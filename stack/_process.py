"""One child program of the stack, in its own process group, logging to its own file.

Each part runs in a new session (so a process group of its own): stopping it signals
the whole group, which also reaches anything the program started, and Ctrl-C in the
terminal reaches only the Python process, which then stops the parts in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ManagedProcess", "tail"]


def tail(path: Path, lines: int = 25) -> str:
    """The last `lines` lines of a text file, or a note that it is empty or missing."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} does not exist)"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else f"({path} is empty)"


class ManagedProcess:
    """A program started with fixed arguments, restartable, stopped by process group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        second_term_after: float | None = None,
    ) -> None:
        """`second_term_after`: send SIGTERM once more after this many seconds, for a
        program that ignores an early SIGTERM or needs a second one to stop at once."""
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._second_term_after = second_term_after
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The pid (and process group id) of the running program, if started."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the program in a new process group, appending its output to its log."""
        if self.running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n# {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
            )

    def running(self) -> bool:
        """True while the program has been started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        """The exit status once the program has exited (negative: killed by that signal)."""
        return self._proc.poll() if self._proc is not None else None

    def signal(self, sig: int) -> None:
        """Send `sig` to the program's whole process group."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        _killpg(self._proc.pid, sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the group, SIGKILL it after `timeout` s; return the exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            deadline = time.monotonic() + timeout
            _killpg(proc.pid, signal.SIGTERM)
            if self._second_term_after is not None and not _exited(
                proc, min(self._second_term_after, timeout)
            ):
                _killpg(proc.pid, signal.SIGTERM)
            if not _exited(proc, deadline - time.monotonic()):
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Children the program left behind in its group go too.
        _killpg(proc.pid, signal.SIGKILL)
        return proc.returncode


def _exited(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to `timeout` s for `proc` to exit; True if it did."""
    try:
        proc.wait(max(timeout, 0.0))
    except subprocess.TimeoutExpired:
        return False
    return True


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
