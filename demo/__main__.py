"""`make demo`: a local stack, the monitor, real calls, live output.

Starts redis, livekit-server and the SIP simulator on loopback (building what is
missing), runs `call-monitor run` as its own process with webhooks pointed at it, then
places a mix of calls through the real CreateSIPParticipant API (outbound: answered,
busy, declined, not found, no answer, trunk error, hung up by us; inbound: answered,
caller giving up) while the monitor prints each call's transitions. At the end it
prints the outcomes twice: as the simulator's ledger says they happened, and as the
monitor counted them in /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from livekit import api

from monitor.client.dial import create_sip_participant
from monitor.sinks.metrics import sample_totals
from stack import Stack, StackConfig
from stack.build import build
from stack.ledger import CallEnded, Ledger
from stack.participants import Answerer

TRUNK_NUMBER = "+15550000000"


@dataclass(frozen=True)
class OutboundCall:
    label: str
    code: str  # the simulator's scenario digits
    wait_until_answered: bool = True
    hang_up_after: float | None = None  # we remove the participant after this long
    ringing_timeout: float | None = None


OUTBOUND = [
    OutboundCall("answered, callee hangs up", "00"),
    OutboundCall("answered, we hang up", "01", hang_up_after=4.0),
    OutboundCall("busy (486)", "02"),
    OutboundCall("declined (603)", "03"),
    OutboundCall("not found (404)", "05"),
    OutboundCall("no answer", "09", ringing_timeout=5.0),
    OutboundCall("trunk error (503)", "07"),
    OutboundCall("busy, room only (no dial hook)", "02", wait_until_answered=False),
]


def say(text: str) -> None:
    print(f"\033[1m>> {text}\033[0m" if sys.stdout.isatty() else f">> {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


async def wait_ready(port: int, monitor: subprocess.Popen[bytes], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if monitor.poll() is not None:
            raise SystemExit(f"the monitor exited with status {monitor.returncode}")
        if http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
            return
        await asyncio.sleep(0.2)
    raise SystemExit("the monitor did not become ready in time")


async def setup_trunks(lkapi: api.LiveKitAPI) -> str:
    outbound = await lkapi.sip.create_outbound_trunk(
        api.CreateSIPOutboundTrunkRequest(
            trunk=api.SIPOutboundTrunkInfo(
                name="demo-carrier", address="127.0.0.1:5090", numbers=[TRUNK_NUMBER]
            )
        )
    )
    inbound = await lkapi.sip.create_inbound_trunk(
        api.CreateSIPInboundTrunkRequest(
            trunk=api.SIPInboundTrunkInfo(name="demo-inbound", numbers=[TRUNK_NUMBER])
        )
    )
    await lkapi.sip.create_dispatch_rule(
        api.CreateSIPDispatchRuleRequest(
            name="demo-individual",
            trunk_ids=[inbound.sip_trunk_id],
            rule=api.SIPDispatchRule(
                dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix="call-")
            ),
        )
    )
    return outbound.sip_trunk_id


async def place(
    lkapi: api.LiveKitAPI,
    stack: Stack,
    trunk_id: str,
    call: OutboundCall,
    index: int,
    monitor_url: str,
) -> str:
    room = f"demo-out-{index}"
    request = api.CreateSIPParticipantRequest(
        sip_trunk_id=trunk_id,
        sip_call_to=f"+1555{call.code}{index:07d}",
        room_name=room,
        participant_identity="callee",
        wait_until_answered=call.wait_until_answered,
        # A carrier's post-dial delay before the 18x, then ring and talk times.
        headers={"X-Sim-PDD": "0.8", "X-Sim-Ring": "1.5", "X-Sim-Talk": "4"},
    )
    if call.ringing_timeout is not None:
        request.ringing_timeout.FromSeconds(int(call.ringing_timeout))
    with contextlib.suppress(api.TwirpError):
        await create_sip_participant(
            lkapi,
            request,
            monitor_url=monitor_url,
            api_key=stack.api_key,
            api_secret=stack.api_secret,
            # livekit-api allows a dial only its ringing timeout plus 2 s by default.
            request_timeout=60,
        )
    if call.hang_up_after is not None:
        await asyncio.sleep(call.hang_up_after)
        with contextlib.suppress(api.TwirpError):
            await lkapi.room.remove_participant(
                api.RoomParticipantIdentity(room=room, identity="callee")
            )
    return room


async def inbound(stack: Stack, caller: str, scenario: str, **timing: float) -> str:
    answer = await asyncio.to_thread(
        stack.sim_inbound, **{"from": caller, "to": TRUNK_NUMBER}, scenario=scenario, **timing
    )
    room: str = answer["room"]
    return room


async def run_calls(stack: Stack, monitor_url: str) -> list[str]:
    async with api.LiveKitAPI(stack.http_url, stack.api_key, stack.api_secret) as lkapi:
        trunk_id = await setup_trunks(lkapi)
        say(f"placing {len(OUTBOUND)} outbound and 2 inbound calls")
        tasks = []
        for index, call in enumerate(OUTBOUND):
            tasks.append(place(lkapi, stack, trunk_id, call, index, monitor_url))
            await asyncio.sleep(0.3)
        answered_room = await inbound(stack, "+15557770001", "answer_caller_hangup", talk=4.0)
        answerer = Answerer(answered_room, "agent")
        await answerer.connect(stack)
        gave_up_room = await inbound(stack, "+15557770002", "caller_gives_up", give_up_after=3.0)
        rooms = list(await asyncio.gather(*tasks))
        await asyncio.sleep(6)
        await answerer.close()
    return [*rooms, answered_room, gave_up_room]


def ledger_outcomes(ledger: Ledger, rooms: Sequence[str], within: float = 60.0) -> list[CallEnded]:
    deadline = time.monotonic() + within
    ended: list[CallEnded] = []
    while time.monotonic() < deadline:
        ended = [call for call in ledger.calls_ended() if call.room in rooms]
        if len(ended) >= len(rooms):
            break
        time.sleep(0.5)
    return ended


def monitor_counts(port: int) -> Counter[str]:
    _, text = http_get(f"http://127.0.0.1:{port}/metrics")
    counted = sample_totals(text, "call_monitor_calls_ended_total", by="outcome")
    return Counter({outcome: int(value) for outcome, value in counted.items()})


def print_summary(truth: list[CallEnded], counted: Counter[str], journal: Path) -> None:
    print()
    say("what the SIP side did (the simulator's ledger)")
    for call in sorted(truth, key=lambda c: c.t_start or 0):
        sip = call.sip_status_code or ("200" if call.answered else "-")
        print(
            f"   {call.direction:<8} {call.scenario:<22} sip={sip!s:<4} "
            f"left={call.leave_reason:<18} ended_by={call.ended_by}"
        )
    print()
    say("what the monitor counted (call_monitor_calls_ended_total by outcome)")
    for outcome, count in sorted(counted.items()):
        print(f"   {outcome:<14} {count}")
    print(f"   {'total':<14} {sum(counted.values())} of {len(truth)} calls")
    print()
    replayed = subprocess.run(
        [sys.executable, "-m", "monitor", "replay", "--json", str(journal)],
        capture_output=True,
        text=True,
        check=False,
    )
    say("each call, from a replay of the monitor's journal")
    for line in replayed.stdout.splitlines():
        record = json.loads(line)
        ambiguous = f"  (ambiguous: {record['ambiguity']})" if record["ambiguity"] else ""
        print(
            f"   {record['direction']:<8} {record['room']:<34} {record['outcome']:<14}"
            f" reason={record['reason']}{ambiguous}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument(
        "--keep-running",
        action=argparse.BooleanOptionalAction,
        default=sys.stdin.isatty(),
        help="keep the stack and the monitor up after the calls (default: on a terminal)",
    )
    args = parser.parse_args(argv)
    say("building what is missing: redis-server, livekit-server, the SIP simulator")
    build()
    port = free_port()
    monitor_url = f"http://127.0.0.1:{port}"
    config = StackConfig(webhook_urls=[f"{monitor_url}/webhook"], empty_timeout=10)
    with Stack.start(config) as stack:
        journal = stack.logs_dir / "monitor-journal.jsonl"
        say(f"stack up: livekit-server {stack.ws_url}, logs in {stack.logs_dir}")
        env = {
            **os.environ,
            **stack.env(),
            "CALL_MONITOR_HTTP_PORT": str(port),
            "CALL_MONITOR_LOG_FORMAT": "console",
            "CALL_MONITOR_RECONCILE_SECONDS": "5",
            "CALL_MONITOR_JOURNAL": str(journal),
        }
        monitor = subprocess.Popen([sys.executable, "-m", "monitor", "run"], env=env)
        try:
            asyncio.run(wait_ready(port, monitor))
            say(f"monitor ready: {monitor_url}/metrics")
            rooms = asyncio.run(run_calls(stack, monitor_url))
            truth = ledger_outcomes(stack.ledger(), rooms)
            deadline = time.monotonic() + 15
            while sum(monitor_counts(port).values()) < len(truth) and time.monotonic() < deadline:
                time.sleep(0.5)
            print_summary(truth, monitor_counts(port), journal)
            print()
            say(
                f"metrics: {monitor_url}/metrics   calls: {monitor_url}/calls "
                "(token: uv run call-monitor calls-token)"
            )
            if args.keep_running:
                say("the stack and the monitor keep running; Ctrl-C stops them")
                with contextlib.suppress(KeyboardInterrupt):
                    monitor.wait()
        finally:
            monitor.terminate()
            try:
                monitor.wait(timeout=10)
            except subprocess.TimeoutExpired:
                monitor.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
