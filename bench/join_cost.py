"""What a room connection costs: the signal-channel observer against the WebRTC SDK's.

`python -m bench.join_cost [--rooms 40] [--idle 60]` starts a stack of its own and, in
a fresh process per variant, joins `--rooms` rooms the way the monitor's observer does
(hidden, kind agent, subscribing to nothing), holds them `--idle` seconds, and leaves
them. Each process reports its own CPU time (getrusage) and livekit-server's (from
/proc) for the joins, the idle hold and the leaves. The variants:

- `signal`: the default observer, `monitor.sources.signal_observer` (the signal WebSocket alone,
  in the process's event loop; its idle hold includes pings and, past 45 s, one
  renewal of every session);
- `stderr`: the rtc observer (`monitor.adapter.RoomObserver`) as observer processes run
  it, the SDK's native log records going to stderr, filtered by RUST_LOG;
- `python`: the rtc observer with the SDK's default, every native record handed to
  Python (livekit 1.2.1).

Each variant runs `--repeat` times, alternately, so that the machine's drift falls on
all. Results go to bench/results/join-cost-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.focused import write_focused

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("signal", "stderr", "python")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _server_cpu(pid: int) -> float:
    """livekit-server's CPU seconds so far."""
    from bench.procfs import CLOCK_TICKS, read_process

    stat = read_process(pid)
    if stat is None:
        raise SystemExit("livekit-server is gone")
    return stat.cpu_ticks / CLOCK_TICKS


class _Rooms:
    """Joins and leaves rooms with one of the observers."""

    def __init__(self, variant: str, url: str, tokens: dict[str, str]) -> None:
        self.variant, self.url, self.tokens = variant, url, tokens
        self.held: list[Any] = []

    async def start(self) -> None:
        if self.variant == "signal":
            from monitor.sources.signal_observer import SignalObservers

            self.signal = SignalObservers(lambda event: None)
            await self.signal.start()
        else:
            from monitor.sources.rtc_adapter import native_logs_to_stderr

            if self.variant == "stderr" and not native_logs_to_stderr():
                raise SystemExit("native log capture could not be switched off")

    async def join(self, name: str) -> None:
        if self.variant == "signal":
            from monitor.sources.room_link import LinkHooks

            link = await self.signal.join(name, self.url, self.tokens[name], 30, LinkHooks())
            self.held.append(link)
            return
        from monitor.sources.rtc_adapter import RoomObserver

        observer = RoomObserver(name, self.url, self.tokens[name], lambda event: None)
        await observer.connect(30)
        self.held.append(observer)

    async def leave_all(self) -> None:
        for held in self.held:
            await held.close()
        self.held = []


async def _child(
    variant: str, url: str, key: str, secret: str, rooms: int, idle: float, server_pid: int
) -> None:
    """One variant in this process; prints one JSON line of its CPU times."""
    from monitor.runtime.config import load_settings
    from monitor.runtime.rooms import observer_token

    settings = load_settings(
        {}, {"LIVEKIT_URL": url, "LIVEKIT_API_KEY": key, "LIVEKIT_API_SECRET": secret}
    )
    names = [f"joincost-{variant}-{os.getpid()}-{n}" for n in range(rooms)]
    tokens = {
        name: observer_token(
            settings.livekit_api_key, settings.livekit_api_secret, name, "observer"
        )
        for name in [*names, "warm"]
    }
    observers = _Rooms(variant, url, tokens)
    await observers.start()
    # Load the client (and the SDK's native runtime) before measuring.
    await observers.join("warm")
    await observers.leave_all()
    start, server_start = _cpu(), _server_cpu(server_pid)
    began = time.monotonic()
    for name in names:  # one at a time: the cost of a join, not of contention
        await observers.join(name)
    joined, server_joined = _cpu(), _server_cpu(server_pid)
    join_wall = time.monotonic() - began
    await asyncio.sleep(idle)
    held, server_held = _cpu(), _server_cpu(server_pid)
    await observers.leave_all()
    left = _cpu()
    print(
        json.dumps(
            {
                "variant": variant,
                "rooms": rooms,
                "cpu_s_per_join": round((joined - start) / rooms, 5),
                "server_cpu_s_per_join": round((server_joined - server_start) / rooms, 5),
                "join_wall_s_each": round(join_wall / rooms, 4),
                "idle_pct_core_per_room": round((held - joined) / idle / rooms * 100, 4),
                "server_idle_pct_core_per_room": round(
                    (server_held - server_joined) / idle / rooms * 100, 4
                ),
                "cpu_s_per_leave": round((left - held) / rooms, 5),
                "rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
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
            "--server-pid",
            str(stack.pids()["livekit"]),
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
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
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
                args.server_pid,
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
    write_focused(
        "join-cost",
        argv,
        runs,
        "variant",
        (
            "cpu_s_per_join",
            "server_cpu_s_per_join",
            "join_wall_s_each",
            "idle_pct_core_per_room",
            "server_idle_pct_core_per_room",
            "cpu_s_per_leave",
            "rss_mib",
        ),
        args.output_dir,
    )


if __name__ == "__main__":
    main()
