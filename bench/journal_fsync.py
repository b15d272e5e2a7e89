"""What each journal fsync policy costs a stream of webhooks.

`python -m bench.journal_fsync [--webhooks 3000] [--concurrency 20]` runs the monitor as
its own process (`python -m monitor run`, journal in a temporary folder on the same disk
as the repository's `.cache/`), with no LiveKit behind it (listings and joins fail fast;
the webhooks are what is measured), and posts signed `participant_joined` webhooks from
`--concurrency` senders, once per policy (`CALL_MONITOR_JOURNAL_FSYNC`: off, interval,
batch), alternately `--repeat` times. Per run: webhooks per second, the p50/p99 time to
the answer, and the monitor's CPU per webhook (from /proc). Results go to
bench/results/journal-fsync-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from google.protobuf.json_format import MessageToJson
from livekit import api
from livekit.protocol import models, webhook

from bench.procfs import CLOCK_TICKS, read_process
from stack.config import free_port

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"
POLICIES = ("off", "interval", "batch")
KEY = "APIbench"
SECRET = secrets.token_urlsafe(32)


def _cpu_seconds(pid: int) -> float:
    stat = read_process(pid)
    if stat is None:
        raise SystemExit(f"the monitor (pid {pid}) is gone")
    return stat.cpu_ticks / CLOCK_TICKS


def _webhook(n: int) -> tuple[str, str]:
    """A signed participant_joined webhook body and its Authorization header."""
    event = webhook.WebhookEvent(
        event="participant_joined",
        id=f"EV_{n}",
        room=models.Room(name=f"call-fsync-{n}", sid=f"RM_{n}"),
        participant=models.ParticipantInfo(
            sid=f"PA_{n}",
            identity=f"sip-{n}",
            kind=models.ParticipantInfo.Kind.SIP,
            attributes={"sip.callID": f"SCL_{n}", "sip.callStatus": "dialing"},
        ),
    )
    body = MessageToJson(event)
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return body, api.AccessToken(KEY, SECRET).with_sha256(digest).to_jwt()


@contextlib.asynccontextmanager
async def _monitor(policy: str, journal: Path) -> AsyncIterator[tuple[int, int]]:
    port = free_port()
    env = {
        **os.environ,
        "LIVEKIT_URL": f"http://127.0.0.1:{free_port()}",
        "LIVEKIT_API_KEY": KEY,
        "LIVEKIT_API_SECRET": SECRET,
        "CALL_MONITOR_HTTP_PORT": str(port),
        "CALL_MONITOR_JOURNAL": str(journal),
        "CALL_MONITOR_JOURNAL_FSYNC": policy,
        "CALL_MONITOR_LOG_LEVEL": "error",
        "CALL_MONITOR_LOG_FORMAT": "json",
        # Setup mode would join each call's room; this measures the intake alone.
        "CALL_MONITOR_ROOM_MODE": "setup",
        "CALL_MONITOR_MAX_CONCURRENT_JOINS": "1",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "monitor",
        "run",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as answer:
                        if answer.status == 200:
                            break
                await asyncio.sleep(0.05)
        yield port, process.pid
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


async def _run(policy: str, webhooks: int, concurrency: int) -> dict[str, Any]:
    signed = [_webhook(n) for n in range(webhooks)]
    times: list[float] = []
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent.parent / ".cache") as folder:
        async with _monitor(policy, Path(folder) / "journal.jsonl") as (port, pid):
            url = f"http://127.0.0.1:{port}/webhook"

            async def sender(session: aiohttp.ClientSession, share: list[tuple[str, str]]) -> None:
                for body, token in share:
                    began = time.monotonic()
                    async with session.post(
                        url, data=body, headers={"Authorization": token}
                    ) as answer:
                        if answer.status != 200:
                            raise SystemExit(f"{policy}: webhook answered {answer.status}")
                    times.append(time.monotonic() - began)

            cpu_before = _cpu_seconds(pid)
            began = time.monotonic()
            async with aiohttp.ClientSession() as session:
                await asyncio.gather(
                    *(sender(session, signed[i::concurrency]) for i in range(concurrency))
                )
            wall = time.monotonic() - began
            cpu = _cpu_seconds(pid) - cpu_before
    times.sort()
    return {
        "policy": policy,
        "webhooks": webhooks,
        "webhooks_per_second": round(webhooks / wall, 1),
        "answer_ms_p50": round(times[len(times) // 2] * 1000, 2),
        "answer_ms_p99": round(times[int(len(times) * 0.99)] * 1000, 2),
        "monitor_cpu_ms_per_webhook": round(cpu / webhooks * 1000, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.journal_fsync", description=__doc__)
    parser.add_argument("--webhooks", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs = []
    for round_ in range(args.repeat):
        for policy in POLICIES:
            print(f"round {round_ + 1}: {policy}", file=sys.stderr)
            runs.append(asyncio.run(_run(policy, args.webhooks, args.concurrency)))
            print(f"  {runs[-1]}", file=sys.stderr)
    keys = ("webhooks_per_second", "answer_ms_p50", "answer_ms_p99", "monitor_cpu_ms_per_webhook")
    mean = {
        policy: {
            key: round(statistics.mean(r[key] for r in runs if r["policy"] == policy), 3)
            for key in keys
        }
        for policy in POLICIES
    }
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m bench.journal_fsync " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()},
        "runs": runs,
        "mean": mean,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"journal-fsync-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    for policy, numbers in mean.items():
        print(f"{policy:>8}: {numbers}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
