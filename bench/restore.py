"""What a crash-only restart costs: reading a journal back at start.

`python -m bench.restore` writes a journal as the live monitor does (a `Monitor` fed
ended calls, then calls left open, through `submit` and `process`), then times a new
`Monitor` started on it: the replay of its newest file (rotated with the default
`journal_max_bytes`), the calls brought back, and the starts and ends owed. The
restart happens before the monitor serves anything, so this is how long a restarted
monitor is deaf. Writes bench/results/restore-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from monitor.core.model import (
    AttributesChanged,
    Event,
    Participant,
    ParticipantLeft,
    ParticipantSeen,
    Reason,
    Source,
    Tick,
)
from monitor.runtime.config import load_settings
from monitor.runtime.service import Monitor

__all__ = ["main", "measure"]

RESULTS = Path(__file__).parent / "results"
ENV = {
    "LIVEKIT_URL": "ws://127.0.0.1:1",
    "LIVEKIT_API_KEY": "APIbench",
    "LIVEKIT_API_SECRET": "bench-secret-that-is-long-enough-for-hs256-0123456789",
}


def _call(n: int, at: float, ends: bool) -> list[Event]:
    """One outbound call's events as the sources give them: dialing, ringing, active,
    and the hangup unless it stays open."""
    attrs = {
        "sip.callID": f"SCL_restore{n}",
        "sip.phoneNumber": f"+1555{n:07d}",
        "sip.trunkPhoneNumber": "+15550000000",
        "sip.trunkID": "ST_restore",
    }

    def who(status: str) -> Participant:
        status_attrs = {**attrs, "sip.callStatus": status}
        return Participant(f"PA_restore{n}", "callee", status_attrs, True, at)

    room = f"call-restore{n}"
    events: list[Event] = [
        ParticipantSeen(at, Source.WEBHOOK, room, who("dialing"), f"RM_{n}"),
        AttributesChanged(at + 1, Source.ROOM, room, who("ringing"), {"sip.callStatus": "ringing"}),
        AttributesChanged(at + 3, Source.ROOM, room, who("active"), {"sip.callStatus": "active"}),
    ]
    if ends:
        hangup = who("hangup")
        reason = Reason.CLIENT_INITIATED
        events.append(ParticipantLeft(at + 60, Source.WEBHOOK, room, hangup, reason))
    return events


def measure(ended: int, open_calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        journal = Path(folder) / "journal.jsonl"
        settings = load_settings({"journal_path": str(journal), "log_level": "warning"}, ENV)
        start = time.time() - 86_400
        clock = [start]
        writer = Monitor(settings, registry=CollectorRegistry(), clock=lambda: clock[0])
        events = [e for n in range(ended) for e in _call(n, start + n * 0.1, ends=True)]
        events += [
            e for n in range(ended, ended + open_calls) for e in _call(n, start + n * 0.1, False)
        ]
        events.sort(key=lambda event: event.at)
        for index, event in enumerate(events):
            clock[0] = event.at
            writer.submit(event)
            writer.process(writer.queue.get_nowait())
            if index % 50 == 0:
                writer.process(Tick(event.at))
        newest = journal.stat().st_size
        total = sum(path.stat().st_size for path in Path(folder).iterdir())
        with journal.open(encoding="utf-8") as stream:
            newest_lines = sum(1 for _ in stream)
        clock[0] = events[-1].at + 600
        before_cpu, began = time.process_time(), time.monotonic()
        restarted = Monitor(settings, registry=CollectorRegistry(), clock=lambda: clock[0])
        seconds, cpu = time.monotonic() - began, time.process_time() - before_cpu
        restored = len(restarted.live_calls())
    if restored != open_calls:
        raise SystemExit(f"expected {open_calls} calls restored, got {restored}")
    return {
        "calls_ended": ended,
        "calls_open": open_calls,
        "journal_events": len(events),
        "journal_bytes": total,
        "newest_file_bytes": newest,
        "newest_file_lines": newest_lines,
        "journal_max_bytes": settings.journal_max_bytes,
        "restore_seconds": round(seconds, 3),
        "restore_cpu_seconds": round(cpu, 3),
        "seconds_per_100k_lines": round(seconds / newest_lines * 100_000, 3),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.restore", description=__doc__)
    parser.add_argument("--ended", type=int, default=25_000, help="calls ended (default 25000)")
    parser.add_argument("--open", type=int, default=1_000, help="calls left open (default 1000)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = measure(args.ended, args.open)
    run = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid(), **result}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"restore-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(run, indent=2) + "\n")
    print(
        f"{result['journal_events']} events ({result['journal_bytes'] / 2**20:.1f} MiB in all), "
        f"{result['calls_open']} calls open: restored from the newest file "
        f"({result['newest_file_bytes'] / 2**20:.1f} MiB, {result['newest_file_lines']} lines) "
        f"in {result['restore_seconds']} s ({result['seconds_per_100k_lines']} s per 100,000 lines)"
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
