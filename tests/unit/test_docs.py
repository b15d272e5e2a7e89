"""What docs/ draws from the code is what the code says."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from monitor.core.machine import TRANSITIONS, state_diagram

DOCS = Path(__file__).resolve().parents[2] / "docs"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_state_diagram_in_the_docs_is_the_one_the_tables_draw() -> None:
    text = (DOCS / "outcomes.md").read_text()
    assert generator().with_diagram(text) == text, "stale: run `make docs`"
    assert state_diagram() in text


def test_the_diagram_has_every_move_of_the_tables() -> None:
    drawn = state_diagram()
    for state, targets in TRANSITIONS.items():
        for target in targets:
            assert f"    {state.value} --> {target.value}: status {target.value}\n" in drawn


def test_a_page_without_the_markers_is_refused() -> None:
    with pytest.raises(SystemExit, match="markers are missing"):
        generator().with_diagram("# no diagram here\n")
