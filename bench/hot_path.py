"""The monitor's main process per event, without LiveKit: CPU per call and where it goes.

`python -m bench.hot_path` plays calls through the path their events take in the
monitor's main process, with the sinks it runs with (metrics, the JSON call log, the
journal): a signed `participant_joined` webhook through `WebhookIntake`, `ringing` and
`active` as journal lines from an observer process (decoded as the pool decodes
them), a signed `participant_left` webhook, and the tick that settles the end. It
reports CPU-seconds per event and the functions that took the most (cProfile), and
writes them to bench/results/hot-path-<time>.json. The calls on the real stack
(`python -m bench`) measure everything else; this isolates the part that is ours.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import hashlib
import io
import json
import os
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToJson
from livekit import api
from livekit.protocol import models, webhook

from monitor.core.journal_format import decode_event, encode_event
from monitor.core.model import AttributesChanged, Participant, Source, Tick
from monitor.core.privacy import NumberMasker
from monitor.runtime.config import load_settings
from monitor.runtime.service import Monitor
from monitor.sinks.logs import CallLog, configure_logging
from monitor.sinks.metrics import sample_totals

__all__ = ["main", "measure"]

KEY = "APIbench"
SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"
RESULTS = Path(__file__).parent / "results"


def _signed(body: str) -> str:
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return api.AccessToken(KEY, SECRET).with_sha256(digest).to_jwt()


def _webhook(kind: str, n: int, status: str, at: float) -> tuple[str, str]:
    info = models.ParticipantInfo(
        sid=f"PA_bench{n}",
        identity="callee",
        kind=models.ParticipantInfo.Kind.SIP,
        attributes=_attributes(n, status),
        joined_at_ms=int(at * 1000),
    )
    if kind == "participant_left":
        info.disconnect_reason = models.DisconnectReason.CLIENT_INITIATED
    event = webhook.WebhookEvent(
        event=kind,
        id=f"EV_{kind}{n}",
        created_at=int(at),
        room=models.Room(name=f"call-bench{n}", sid=f"RM_bench{n}"),
        participant=info,
    )
    body = MessageToJson(event)
    return body, _signed(body)


def _attributes(n: int, status: str) -> dict[str, str]:
    return {
        "sip.callID": f"SCL_bench{n}",
        "sip.callStatus": status,
        "sip.phoneNumber": f"+1555{n:07d}",
        "sip.trunkPhoneNumber": "+15550000000",
        "sip.trunkID": "ST_bench",
    }


def _room_line(n: int, status: str, at: float) -> str:
    participant = Participant(f"PA_bench{n}", "callee", _attributes(n, status), True, at - 1.0)
    return encode_event(AttributesChanged(at, Source.ROOM, f"call-bench{n}", participant))


def _script(calls: int, start: float) -> list[Callable[[Monitor], None]]:
    """One step per event, prepared ahead (signing and encoding are livekit-server's
    and the observer process's work, not the monitor's)."""
    steps: list[Callable[[Monitor], None]] = []

    def webhook_step(body: str, token: str, at: float) -> Callable[[Monitor], None]:
        def step(monitor: Monitor) -> None:
            for event in monitor.webhooks.receive(body, token, at):
                monitor.process(event)

        return step

    def room_step(line: str) -> Callable[[Monitor], None]:
        def step(monitor: Monitor) -> None:
            monitor.process(decode_event(line))

        return step

    def tick_step(at: float) -> Callable[[Monitor], None]:
        def step(monitor: Monitor) -> None:
            monitor.process(Tick(at))

        return step

    for n in range(calls):
        at = start + n * 0.01
        steps.append(webhook_step(*_webhook("participant_joined", n, "dialing", at), at))
        steps.append(room_step(_room_line(n, "ringing", at + 1)))
        steps.append(room_step(_room_line(n, "active", at + 3)))
        steps.append(webhook_step(*_webhook("participant_left", n, "hangup", at + 60), at + 60))
    steps.append(tick_step(start + calls * 0.01 + 120))
    return steps


def measure(calls: int, profile: bool) -> dict[str, Any]:
    """Play `calls` calls through a fresh monitor; CPU per event, and the profile."""
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings(
            {"journal_path": str(Path(folder) / "journal.jsonl"), "log_format": "json"},
            {
                "LIVEKIT_URL": "ws://127.0.0.1:1",
                "LIVEKIT_API_KEY": KEY,
                "LIVEKIT_API_SECRET": SECRET,
            },
        )
        with open(os.devnull, "w") as sink:
            configure_logging(settings, sink)
            start = time.time() - 3600
            monitor = Monitor(
                settings,
                sinks=[CallLog(masker=NumberMasker())],
                clock=lambda: start + 7200,
            )
            steps = _script(calls, start)
            profiler = cProfile.Profile() if profile else None
            began = time.process_time()
            if profiler is not None:
                profiler.enable()
            for step in steps:
                step(monitor)
            if profiler is not None:
                profiler.disable()
            spent = time.process_time() - began
        exposition = monitor.metrics.exposition()[0].decode()
        ended = sample_totals(exposition, "call_monitor_calls_ended_total", by="outcome")[
            "completed"
        ]
        if ended != calls:
            raise SystemExit(f"expected {calls} completed calls, /metrics says {ended}")
    events = calls * 4 + 1
    result: dict[str, Any] = {
        "calls": calls,
        "events": events,
        "cpu_seconds": round(spent, 4),
        "cpu_ms_per_event": round(spent / events * 1000, 4),
        "events_per_cpu_second": round(events / spent),
        "profiled": profile,
    }
    if profiler is not None:
        result["top"] = _top(profiler, 15)
    return result


def _top(profiler: cProfile.Profile, count: int) -> list[dict[str, Any]]:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)  # type: ignore[attr-defined]
    top = []
    for (path, line, name), (_calls, ncalls, own, cumulative, _callers) in rows[:count]:
        where = "/".join(Path(path).parts[-2:]) if path != "~" else "builtin"
        top.append(
            {
                "function": f"{name} ({where}:{line})",
                "calls": ncalls,
                "own_share": round(own / total, 3),
                "cumulative_share": round(cumulative / total, 3),
            }
        )
    return top


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_path", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="calls played (default 2000)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    plain = measure(args.calls, profile=False)
    profiled = measure(args.calls, profile=True)
    run = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m bench.hot_path " + " ".join(argv or []),
        "unprofiled": plain,
        "profiled": profiled,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"hot-path-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(run, indent=2) + "\n")
    print(
        f"{plain['events']} events: {plain['cpu_ms_per_event']} ms CPU each, "
        f"{plain['events_per_cpu_second']} events per CPU-second (unprofiled)"
    )
    print("busiest by own time (profiled):")
    for row in profiled["top"]:
        print(f"  {row['own_share']:6.1%}  {row['function']}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
