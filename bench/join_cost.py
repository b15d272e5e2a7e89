"""What a room connection costs an observer process, with and without native log capture.

`python -m bench.join_cost [--rooms 40] [--idle 20]` starts a stack of its own and,
in a fresh process per variant, joins `--rooms` rooms the way the observer does (the
adapter's `RoomObserver`, hidden, kind agent, subscribing to nothing), holds them
`--idle` seconds, and leaves them. Each process reports its own CPU time (getrusage)
for the joins, the idle hold and the leaves. The variants:

- `stderr`: the SDK's native log records go to stderr, filtered by RUST_LOG
  (`monitor.adapter.native_logs_to_stderr`, what observer processes do below debug);
- `python`: the SDK's default, every native record handed to Python (livekit 1.2.1).

Each variant runs `--repeat` times, alternately, so that the machine's drift falls on
both. Results go to bench/results/join-cost-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("stderr", "python")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _child(variant: str, url: str, key: str, secret: str, rooms: int, idle: float) -> None:
    """One variant in this process; prints one JSON line of its CPU times."""
    from monitor.adapter import RoomObserver, native_logs_to_stderr
    from monitor.config import load_settings
    from monitor.service import observer_token

    if variant == "stderr" and not native_logs_to_stderr():
        raise SystemExit("native log capture could not be switched off")
    settings = load_settings(
        {}, {"LIVEKIT_URL": url, "LIVEKIT_API_KEY": key, "LIVEKIT_API_SECRET": secret}
    )
    names = [f"joincost-{variant}-{os.getpid()}-{n}" for n in range(rooms)]
    observers = [
        RoomObserver(name, url, observer_token(settings, name, "observer"), lambda event: None)
        for name in names
    ]
    # Load the SDK (and its native runtime) before measuring.
    warm = RoomObserver(
        "joincost-warm", url, observer_token(settings, "joincost-warm", "o"), lambda e: None
    )
    await warm.connect(30)
    await warm.close()
    start = _cpu()
    began = time.monotonic()
    for observer in observers:  # one at a time: the cost of a join, not of contention
        await observer.connect(30)
    joined = _cpu()
    join_wall = time.monotonic() - began
    await asyncio.sleep(idle)
    held = _cpu()
    for observer in observers:
        await observer.close()
    left = _cpu()
    print(
        json.dumps(
            {
                "variant": variant,
                "rooms": rooms,
                "cpu_s_per_join": round((joined - start) / rooms, 4),
                "join_wall_s_each": round(join_wall / rooms, 3),
                "idle_pct_core_per_room": round((held - joined) / idle / rooms * 100, 3),
                "cpu_s_per_leave": round((left - held) / rooms, 4),
            }
        ),
        flush=True,
    )


def _run_variant(variant: str, stack: Any, rooms: int, idle: float) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.join_cost",
            "--child",
            variant,
            "--url",
            stack.ws_url,
            "--rooms",
            str(rooms),
            "--idle",
            str(idle),
        ],
        env={
            **os.environ,
            "LIVEKIT_API_KEY": stack.api_key,
            "LIVEKIT_API_SECRET": stack.api_secret,
            "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{variant} failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.join_cost", description=__doc__)
    parser.add_argument("--rooms", type=int, default=40)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        asyncio.run(
            _child(
                args.child,
                args.url,
                os.environ["LIVEKIT_API_KEY"],
                os.environ["LIVEKIT_API_SECRET"],
                args.rooms,
                args.idle,
            )
        )
        return

    from stack import Stack, StackConfig

    runs: list[dict[str, Any]] = []
    with Stack.start(StackConfig(livekit_log_level="warn", sim_log_level="warn")) as stack:
        for round_ in range(args.repeat):
            for variant in VARIANTS:
                print(f"round {round_ + 1}: {variant}, {args.rooms} rooms", file=sys.stderr)
                runs.append(_run_variant(variant, stack, args.rooms, args.idle))
    summary = {
        variant: {
            key: round(statistics.mean(r[key] for r in runs if r["variant"] == variant), 4)
            for key in (
                "cpu_s_per_join",
                "join_wall_s_each",
                "idle_pct_core_per_room",
                "cpu_s_per_leave",
            )
        }
        for variant in VARIANTS
    }
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m bench.join_cost " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()},
        "runs": runs,
        "mean": summary,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"join-cost-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    for variant, numbers in summary.items():
        print(f"{variant:>7}: {numbers}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
