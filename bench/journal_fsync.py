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
import hashlib
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from google.protobuf.json_format import MessageToJson
from livekit import api
from livekit.protocol import models, webhook

from bench.focused import write_focused
from bench.monitor_proc import MonitorProcess
from bench.procfs import CLOCK_TICKS, read_process
from bench.stats import summarize
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


def _monitor_env(policy: str, journal: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        # Nothing listens there: listings and joins fail fast; the webhooks are measured.
        "LIVEKIT_URL": f"http://127.0.0.1:{free_port()}",
        "LIVEKIT_API_KEY": KEY,
        "LIVEKIT_API_SECRET": SECRET,
        "CALL_MONITOR_HTTP_PORT": str(port),
        "CALL_MONITOR_JOURNAL": str(journal),
        "CALL_MONITOR_JOURNAL_FSYNC": policy,
        "CALL_MONITOR_LOG_LEVEL": "error",
        "CALL_MONITOR_LOG_FORMAT": "json",
    }


async def _run(policy: str, webhooks: int, concurrency: int) -> dict[str, Any]:
    signed = [_webhook(n) for n in range(webhooks)]
    times: list[float] = []
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent.parent / ".cache") as folder:
        port = free_port()
        journal = Path(folder) / "journal.jsonl"
        monitor = MonitorProcess(_monitor_env(policy, journal, port), port, Path(folder) / "log")
        monitor.start()
        try:
            await asyncio.to_thread(monitor.wait_serving)
            assert monitor.pid is not None
            pid = monitor.pid
            url = f"{monitor.url}/webhook"

            async def sender(session: aiohttp.ClientSession, share: list[tuple[str, str]]) -> None:
                for body, token in share:
                    began = time.monotonic()
                    headers = {"Authorization": token}
                    async with session.post(url, data=body, headers=headers) as answer:
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
        finally:
            await asyncio.to_thread(monitor.stop)
    answer_ms = summarize(times, scale=1000, digits=2)
    return {
        "policy": policy,
        "webhooks": webhooks,
        "webhooks_per_second": round(webhooks / wall, 1),
        "answer_ms_p50": answer_ms["p50"],
        "answer_ms_p99": answer_ms["p99"],
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
    write_focused("journal-fsync", argv, runs, "policy", keys, args.output_dir)


if __name__ == "__main__":
    main()
