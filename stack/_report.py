"""Progress lines for the slow parts (installs, builds, start-up), on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

__all__ = ["Reporter", "stderr_reporter"]

Reporter = Callable[[str], None]
"""Receives one human-readable progress line at a time."""

_T0 = time.monotonic()


def stderr_reporter(line: str) -> None:
    """Print a progress line to stderr, stamped with seconds since import."""
    print(f"[stack +{time.monotonic() - _T0:6.1f}s] {line}", file=sys.stderr, flush=True)
