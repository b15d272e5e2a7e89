"""The monitor under test: `call-monitor run` in a process (group) of its own.

Started as the demo starts it (`python -m monitor run`, settings from the environment),
with JSON log lines written to a file. Its observer processes are its children, in its
process group, so killing the group kills them too (a crash of the whole pod).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

__all__ = ["MonitorProcess", "http_status"]


def http_status(url: str, timeout: float = 2.0) -> int:
    """The HTTP status of a GET (0 when nothing answered)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


class MonitorProcess:
    """One `call-monitor run` process, logging JSON lines to `log_path`."""

    def __init__(self, env: Mapping[str, str], port: int, log_path: Path) -> None:
        self.env = dict(env)
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.started_at = time.time()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        return http_status(self.url + "/readyz", timeout=1.0) == 200

    def wait_ready(self, within: float = 60.0) -> float:
        """Block until /readyz answers 200; return the seconds since start."""
        return self._wait_for("/readyz", within)

    def wait_serving(self, within: float = 60.0) -> float:
        """Block until /healthz answers 200 (it serves, whether or not it reached
        livekit-server); return the seconds since start."""
        return self._wait_for("/healthz", within)

    def _wait_for(self, path: str, within: float) -> float:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.running():
                code = self.proc.returncode if self.proc is not None else None
                raise RuntimeError(f"the monitor exited with status {code}; see {self.log_path}")
            if http_status(self.url + path, timeout=1.0) == 200:
                return time.time() - self.started_at
            time.sleep(0.05)
        raise RuntimeError(f"the monitor did not answer {path} within {within:.0f} s")

    def kill(self) -> None:
        """SIGKILL the monitor and its observer processes at once (a crash)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the monitor closes its rooms and drains), SIGKILL after `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode
