"""`python -m bench`: the benchmark command (see bench/README.md).

Runs a cell (bench/cell.py) per size, mix, room mode and number of shards, sizes from
small to large; a mix and mode (and shards) whose cell the machine did not carry are not
run at larger sizes. After
every cell the run's JSON file in the output folder is rewritten, and RESULTS.md is
regenerated from every JSON file there.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.cell import CellPlan, derive, run_cell
from bench.load import MIXES, placements_needed
from bench.procfs import loadavg, machine_info
from bench.profile import default_command
from bench.report import load_focused, load_runs, render
from monitor.sources.webhooks import WEBHOOK_EVENTS_USED

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
PACKAGES = (
    "livekit",
    "livekit-api",
    "livekit-protocol",
    "aiohttp",
    "prometheus-client",
    "structlog",
    "protobuf",
)
MODES = ("setup", "whole_call")

_T0 = time.monotonic()


def say(text: str) -> None:
    """A progress line on stderr."""
    print(f"[bench +{time.monotonic() - _T0:7.1f}s] {text}", file=sys.stderr, flush=True)


def _list(text: str, allowed: Sequence[str] | None = None) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if allowed is not None:
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)}; choose from {', '.join(allowed)}"
            )
    return items


def _counts(text: str, what: str, example: str) -> list[int]:
    try:
        counts = sorted({int(item) for item in _list(text)})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} are whole numbers: {example}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"{what} must be 1 or more")
    return counts


def _sizes(text: str) -> list[int]:
    return _counts(text, "sizes", "100,500,1000")


def _shards(text: str) -> list[int]:
    return _counts(text, "shards", "1,3")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark the call monitor on a local stack with simulated SIP calls, against "
            "polling ListParticipants; writes bench/results/<run>.json and bench/RESULTS.md."
        ),
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[100, 500, 1000, 2000],
        help="concurrent calls per cell, comma separated (default 100,500,1000,2000)",
    )
    parser.add_argument(
        "--mixes",
        type=lambda t: _list(t, list(MIXES)),
        default=list(MIXES),
        help="call mixes: realistic, long, setup-heavy (default all)",
    )
    parser.add_argument(
        "--modes",
        type=lambda t: _list(t, MODES),
        default=list(MODES),
        help="CALL_MONITOR_ROOM_MODE values: setup, whole_call (default both)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=180.0,
        help="seconds measured per cell once its calls are up (default 180)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: sizes 20 and 50, 30 s per cell (unless --sizes/--duration given)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=BENCH_DIR / "results",
        help="where run files go (default bench/results); RESULTS.md goes next to it",
    )
    parser.add_argument(
        "--ramp-rate", type=float, default=10.0, help="calls/s while ramping up (default 10)"
    )
    parser.add_argument(
        "--max-rate",
        type=float,
        default=40.0,
        help="most calls/s placed to replace ended ones (default 40)",
    )
    parser.add_argument(
        "--fast-scrape",
        type=float,
        default=0.02,
        help="seconds between /metrics scrapes in the latency phase (default 0.02)",
    )
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=(
            "py-spy the monitor's main process this long in the quiet phase of "
            "every cell (default off)"
        ),
    )
    parser.add_argument(
        "--webhook-filter",
        action="store_true",
        help=(
            "livekit-server sends only the webhook kinds the monitor reads "
            "(webhook.filter_params, README)"
        ),
    )
    parser.add_argument(
        "--monitor-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the monitor, e.g. CALL_MONITOR_RECONCILE_SECONDS=10",
    )
    parser.add_argument(
        "--shards",
        type=_shards,
        default=[1],
        help=(
            "monitor replicas sharing the rooms (CALL_MONITOR_SHARDS), each sent every "
            "webhook; comma separated to run each, e.g. 1,3 (default 1)"
        ),
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="only regenerate RESULTS.md from the run files",
    )
    return parser


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def versions() -> dict[str, Any]:
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "not installed"
    server = "unknown"
    binary = ROOT / "bin" / "server"
    if binary.exists():
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        server = done.stdout.strip().removeprefix("livekit-server version ").strip() or "unknown"
    return {
        "livekit_server": server,
        "python_packages": packages,
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(_git("status", "--porcelain")),
    }


def _shared_note(run: dict[str, Any]) -> str:
    others: list[float] = []
    for cell in run.get("cells", []):
        for phase in (cell.get("phases") or {}).values():
            value = (phase.get("cpu_cores") or {}).get("others")
            if isinstance(value, int | float):
                others.append(float(value))
    if not others:
        return "other load unknown"
    peak = max(others)
    average = sum(others) / len(others)
    if peak > 0.2:
        return (
            f"**the machine was shared**: processes outside the bench used {average:.2f} "
            f"cores on average over the phases, {peak:.2f} at most"
        )
    return f"no other load worth noting (at most {peak:.2f} cores outside the bench)"


def _write(run: dict[str, Any], path: Path, results_md: Path) -> None:
    run["shared_note"] = _shared_note(run)
    path.write_text(json.dumps(run, indent=1, sort_keys=False) + "\n")
    regenerate(path.parent, results_md)


def rederive(results_dir: Path) -> None:
    """Recompute every cell's derived numbers from its measurements, so that all run
    files follow the current definitions (bench/cell.py `derive`)."""
    for path in sorted(results_dir.glob("*.json")):
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        cells = [c for c in run.get("cells", []) if isinstance(c, dict) and "phases" in c]
        changed = False
        for cell in cells:
            derived = derive(cell)
            if derived != cell.get("derived"):
                cell["derived"] = derived
                changed = True
        if changed:
            path.write_text(json.dumps(run, indent=1) + "\n")


def regenerate(results_dir: Path, results_md: Path) -> None:
    notes_path = BENCH_DIR / "notes.md"
    notes = notes_path.read_text() if notes_path.exists() else ""
    results_md.write_text(render(load_runs(results_dir), notes, load_focused(results_dir)))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out_dir: Path = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    results_md = out_dir.parent / "RESULTS.md"
    if args.report_only:
        rederive(out_dir)
        regenerate(out_dir, results_md)
        say(f"wrote {results_md}")
        return 0
    given = set(sys.argv[1:] if argv is None else argv)
    if args.quick:
        if not any(a.startswith("--sizes") for a in given):
            args.sizes = [20, 50]
        if not any(a.startswith("--duration") for a in given):
            args.duration = 30.0
    monitor_env = {}
    for item in args.monitor_env:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--monitor-env wants NAME=VALUE, not {item!r}")
        monitor_env[name] = value
    machine = machine_info()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_path = out_dir / f"{stamp}{'-quick' if args.quick else ''}.json"
    command = "python -m bench " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    run: dict[str, Any] = {
        "schema": 1,
        "quick": bool(args.quick),
        "command": command.strip(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "versions": versions(),
        "settings": {
            "sizes": args.sizes,
            "mixes": {name: MIXES[name].description for name in args.mixes},
            "modes": args.modes,
            "shards": args.shards,
            "duration_s": args.duration,
            "ramp_rate": args.ramp_rate,
            "max_rate": args.max_rate,
            "fast_scrape_s": args.fast_scrape,
            "slow_scrape_s": 5.0,
            "poll_intervals_s": [1.0, 0.1],
            "monitor_env": monitor_env,
            "livekit": "departure_timeout 20 s, empty_timeout 300 s, log level warn"
            + (", webhooks: only the kinds the monitor reads" if args.webhook_filter else ""),
        },
        "load_average": {"before": loadavg()},
        "cells": [],
        "stopped": {},
    }
    cores = int(machine.get("cores") or 2)  # type: ignore[call-overload]
    say(
        f"run {run_path.name}: sizes {args.sizes}, mixes {args.mixes}, modes {args.modes}, "
        f"shards {args.shards}, {args.duration:.0f} s per cell; load average "
        f"{run['load_average']['before']}"
    )
    profile_command = tuple(default_command()) if args.profile > 0 else ()
    try:
        cells = [
            (size, mix, mode, shards)
            for size in args.sizes
            for mix in args.mixes
            for mode in args.modes
            for shards in args.shards
        ]
        for size, mix, mode, shards in cells:
            # One replica's series keeps the name it had before shards.
            series = f"{mix}/{mode}" + (f"/{shards} shards" if shards > 1 else "")
            if series in run["stopped"]:
                continue
            plan = CellPlan(
                size=size,
                mix=MIXES[mix],
                mode=mode,
                duration=args.duration,
                # No faster than 1.5 times the steady rate: a burst of joins at
                # the start would still be queued when measuring begins.
                ramp_rate=min(
                    args.ramp_rate,
                    max(1.0, 1.5 * placements_needed(MIXES[mix], size)),
                ),
                max_rate=args.max_rate,
                out_dir=out_dir,
                fast_scrape=args.fast_scrape,
                profile_seconds=args.profile,
                profile_command=profile_command,
                monitor_env=monitor_env,
                webhook_events=WEBHOOK_EVENTS_USED if args.webhook_filter else (),
                cores=cores,
                shards=shards,
            )
            say(f"cell {plan.name}: starting")
            try:
                cell = run_cell(plan, say)
            except Exception as error:  # one broken cell must not lose the others
                say(f"cell {plan.name} failed: {type(error).__name__}: {error}")
                cell = {
                    "size": size,
                    "mix": mix,
                    "mode": mode,
                    "shards": shards,
                    "carried": False,
                    "limit": {"component": "bench", "evidence": [f"{error}"[:500]]},
                    "error": f"{type(error).__name__}: {error}"[:2000],
                }
            run["cells"].append(cell)
            if not cell.get("carried"):
                limit = cell.get("limit") or {}
                run["stopped"][series] = f"at {size}: {limit.get('component')}: " + "; ".join(
                    limit.get("evidence", [])
                )
                say(f"cell {plan.name}: NOT carried ({run['stopped'][series]})")
            else:
                say(f"cell {plan.name}: carried")
            run["load_average"]["after"] = loadavg()
            run["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            _write(run, run_path, results_md)
    except KeyboardInterrupt:
        say("interrupted; writing what was measured")
        run["interrupted"] = True
    run["load_average"]["after"] = loadavg()
    run["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write(run, run_path, results_md)
    say(f"wrote {run_path} and {results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
