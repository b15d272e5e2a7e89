"""The architecture as the folders show it, checked: the core is pure, each layer imports
only the layers below it, and `livekit.rtc` stays in the fallback observer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "monitor"
# What each folder may import of the package: the layers below it.
ALLOWED = {
    "core": {"core"},
    "client": {"core", "client"},
    "sources": {"core", "sources"},
    "sinks": {"core", "sinks"},
    "runtime": {"core", "sources", "sinks", "runtime", "client"},
}
RTC_ONLY_IN = {"sources/rtc_adapter.py", "sources/rtc_worker.py"}


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(folder: str) -> None:
    assert modules(folder), folder
    for path in modules(folder):
        layers = {
            name.split(".")[1]
            for name in imports_of(path)
            if name.startswith("monitor.") and name.count(".") >= 1
        }
        assert layers <= ALLOWED[folder], (path.name, layers - ALLOWED[folder])


def test_the_core_imports_no_io_framework_and_no_livekit() -> None:
    """Loaded alone in a fresh interpreter, the core brings none of them along."""
    program = (
        "import sys\n"
        "import monitor.core.machine, monitor.core.model, monitor.core.outcome\n"
        "import monitor.core.privacy\n"
        "banned = ('asyncio', 'aiohttp', 'livekit', 'prometheus_client', 'structlog')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in banned))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    assert shown.stdout.strip() == "[]"


def test_only_the_fallback_observer_uses_the_webrtc_sdk() -> None:
    users = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(
            name == "livekit.rtc" or name.startswith("livekit.rtc.") for name in imports_of(path)
        )
    }
    assert users <= RTC_ONLY_IN, users - RTC_ONLY_IN
