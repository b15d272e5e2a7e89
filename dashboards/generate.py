"""Writes the dashboards' JSON, or checks that the committed JSON is up to date.

    python -m dashboards.generate          # (re)write dashboards/*.json
    python -m dashboards.generate --check  # exit 1, naming each stale file

The JSON is deterministic (sorted keys, two-space indent, a final newline), so a
change to the code shows up as a diff of the committed files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards.calls import calls_board
from dashboards.core import Board, PanelQuery
from dashboards.health import health_board

__all__ = [
    "BOARDS",
    "DASHBOARD_DIR",
    "PanelQuery",
    "log_queries",
    "main",
    "panel_queries",
    "render",
    "stale_files",
    "write",
]

DASHBOARD_DIR: Final = Path(__file__).resolve().parent

# File name -> the function that builds its dashboard.
BOARDS: Final[dict[str, Callable[[], Board]]] = {
    "calls.json": calls_board,
    "monitor-health.json": health_board,
}


def render(board: Board) -> str:
    """The dashboard as the JSON text committed for it."""
    return json.dumps(board.build(), cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


def rendered() -> dict[str, str]:
    """File name -> JSON text, for every dashboard."""
    return {name: render(build()) for name, build in BOARDS.items()}


def _all_queries() -> list[PanelQuery]:
    queries: list[PanelQuery] = []
    for build in BOARDS.values():
        queries.extend(build().queries)
    return queries


def panel_queries() -> list[PanelQuery]:
    """Every PromQL query of every panel of every dashboard, in dashboard order.

    Each names its dashboard uid, panel title and refId, holds the expression as the
    dashboard has it (`PanelQuery.concrete()` replaces Grafana's variables: 5m for
    `$__rate_interval`, `.*` for "All"...), and says whether it should return data
    after a run of real calls of mixed outcomes (`expect_data`, else `empty_reason`).
    Expressions that read recording rules list them in `recording_rules`."""
    return [query for query in _all_queries() if query.language == "promql"]


def log_queries() -> list[PanelQuery]:
    """Every LogQL query of a panel (the Loki logs panel), like `panel_queries`."""
    return [query for query in _all_queries() if query.language == "logql"]


def write(directory: Path = DASHBOARD_DIR) -> list[Path]:
    """Write every dashboard's JSON into `directory`; return the files written."""
    written = []
    for name, text in rendered().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_files(directory: Path = DASHBOARD_DIR) -> list[Path]:
    """The dashboard files in `directory` that are missing or differ from the code's."""
    stale = []
    for name, text in rendered().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(path)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboards.generate",
        description="Write the Grafana dashboards' JSON from dashboards/*.py.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a committed JSON file differs from the generated one",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DASHBOARD_DIR,
        help="directory of the JSON files (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.dir)
        for path in stale:
            print(
                f"{path} is stale: run `make dashboards` (python -m dashboards.generate)",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path in write(args.dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
