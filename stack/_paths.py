"""Where the stack keeps its binaries, build logs and per-run state.

Everything lives inside the repository, in folders that .gitignore already ignores
(`bin/` and `.cache/`), so a run never writes outside the tree.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BIN_DIR", "CACHE_DIR", "REPO_ROOT", "SIPSIM_DIR", "STATE_DIR"]

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN_DIR = REPO_ROOT / "bin"
CACHE_DIR = REPO_ROOT / ".cache"
STATE_DIR = CACHE_DIR / "stack"
SIPSIM_DIR = REPO_ROOT / "sipsim"
