"""Commands the tests run that come from Debian packages (`make system-packages`)."""

from __future__ import annotations

import os
import shutil

import pytest


def system_tool(name: str, package: str, why: str = "") -> str:
    """The path of `name`, or fail the test saying which Debian package provides it."""
    found = shutil.which(name)
    if found is None and os.access(f"/usr/bin/{name}", os.X_OK):
        found = f"/usr/bin/{name}"
    if found is None:
        pytest.fail(
            f"{name} is not installed{why}: install the Debian package `{package}` "
            f"(make system-packages, or apt-get install -y {package})"
        )
    return found


def promtool() -> str:
    return system_tool("promtool", "prometheus")
