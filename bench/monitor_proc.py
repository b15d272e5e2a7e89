"""The monitor under test: `call-monitor run` in a process (group) of its own.

Started as the demo starts it (`python -m monitor run`, settings from the environment),
with JSON log lines written to a file, through the stack's own `ManagedProcess`. Its
observer processes (the rtc fallback) are its children, in its process group, so
killing the group kills them too (a crash of the whole pod).
"""

from __future__ import annotations

import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from stack._process import ManagedProcess

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
        self.port = port
        self.log_path = log_path
        self._process = ManagedProcess(
            "monitor", [sys.executable, "-m", "monitor", "run"], log_path, env=env
        )
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.started_at = time.time()
        self._process.start()

    def running(self) -> bool:
        return self._process.running()

    def returncode(self) -> int | None:
        """The exit status once it has exited (negative: killed by that signal)."""
        return self._process.returncode()

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
                code = self._process.returncode()
                raise RuntimeError(f"the monitor exited with status {code}; see {self.log_path}")
            if http_status(self.url + path, timeout=1.0) == 200:
                return time.time() - self.started_at
            time.sleep(0.05)
        raise RuntimeError(f"the monitor did not answer {path} within {within:.0f} s")

    def kill(self) -> None:
        """SIGKILL the monitor and its observer processes at once (a crash)."""
        if self.pid is None:
            return
        self._process.signal(signal.SIGKILL)
        self._process.stop(timeout=5.0)  # reaps it

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the monitor closes its rooms and drains), SIGKILL after `timeout`."""
        return self._process.stop(timeout)
