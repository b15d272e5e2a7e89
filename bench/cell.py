"""One cell of a run: one size, one mix, one room mode, on a stack of its own.

The cell starts a fresh stack (webhooks pointed at the monitor's port), the monitor as
its own process, and keeps `size` calls up. Once they are up it goes through phases,
each `duration` long in total:

1. `latency`: /metrics scraped every 20 ms; each counter move is matched to its call
   (bench.analysis) and timed against the ledger.
2. `quiet`: /metrics every 5 s, as Prometheus would: the monitor's CPU and memory, the
   events it processed, livekit-server's CPU with the monitor attached (and, if asked,
   a py-spy profile of the monitor).
3. `poll_1s` and 4. `poll_100ms`: the polling alternative runs besides: its view of the
   calls and livekit-server's CPU while it polls.
5. `away`: the monitor and its observers are SIGKILLed: livekit-server without it.
   Then it is started again, and the time until it lists every live call is measured.

With `shards` N > 1 the monitor is N replicas (`CALL_MONITOR_SHARDS`, each its own port,
log and scraper) and livekit-server sends every webhook to each; "the monitor" is then
all of them: CPU and RSS summed (and kept per replica), the latency matched per replica,
all killed and started again together.

Everything is sampled from /proc every second; the stack stops at the end (its run
folder keeps the logs, the ledger and the monitor's logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livekit import api

from bench.analysis import (
    MonitorLog,
    Sample,
    judge,
    log_latency,
    merged,
    metrics_latency,
    missed_by_monitor,
    phase_usage,
    read_monitor_log,
)
from bench.ledger import LedgerTail
from bench.load import TRUNK_NUMBER, LoadGenerator, Mix, Placed, placements_needed
from bench.monitor_proc import MonitorProcess
from bench.poller import Poller, analyze
from bench.procfs import (
    CLOCK_TICKS,
    PAGE_SIZE,
    all_processes,
    combined,
    machine_cpu_ticks,
    tree_usage,
)
from bench.profile import record, summarize_collapsed
from bench.scrape import STARTED, Exposition, Scraper
from bench.scrape import combined as combined_scrapes
from monitor.client.hook_token import CALLS, mint_hook_token
from stack import Stack, StackConfig
from stack.config import free_port
from stack.ledger import parse_time

__all__ = ["CellPlan", "run_cell"]

Say = Callable[[str], None]

# livekit-server's CPU from phase to phase varies this much with the calls alone; a
# difference below it is not attributed to the poller.
NOISE_CORES = 0.01
# Bytecode of the monitor's processes (git-ignored, like the stack's run folders).
PYCACHE = Path(__file__).resolve().parent.parent / ".cache" / "bench-pycache"
# After the ramp, before measuring: joins and webhooks queued by the ramp drain.
WARMUP_SECONDS = 10.0

# Shares of the cell's duration; `away` is at least 5 s.
PHASES: tuple[tuple[str, float], ...] = (
    ("latency", 0.30),
    ("quiet", 0.25),
    ("poll_1s", 0.20),
    ("poll_100ms", 0.15),
    ("away", 0.10),
)


@dataclass(frozen=True)
class CellPlan:
    size: int
    mix: Mix
    mode: str  # setup | whole_call
    duration: float
    ramp_rate: float
    max_rate: float
    out_dir: Path
    fast_scrape: float = 0.02
    slow_scrape: float = 5.0
    profile_seconds: float = 0.0
    profile_command: tuple[str, ...] = ()
    monitor_env: Mapping[str, str] = field(default_factory=dict)
    webhook_events: tuple[str, ...] = ()  # livekit-server sends only these kinds
    cores: int = 2
    shards: int = 1  # monitor replicas, each sent every webhook

    @property
    def name(self) -> str:
        name = f"{self.size}-{self.mix.name}-{self.mode}"
        return name if self.shards == 1 else f"{name}-{self.shards}-shards"

    def phase_seconds(self) -> list[tuple[str, float]]:
        return [
            (name, max(5.0, share * self.duration) if name == "away" else share * self.duration)
            for name, share in PHASES
        ]


def _stat_cpu_rss(pid: int | None, procs: Mapping[int, Any]) -> tuple[float, int]:
    stat = procs.get(pid) if pid is not None else None
    if stat is None:
        return 0.0, 0
    return stat.cpu_ticks / CLOCK_TICKS, stat.rss_bytes


class _Sampler:
    """Samples every part once a second into `samples`."""

    def __init__(
        self,
        stack: Stack,
        monitors: Callable[[], Sequence[MonitorProcess]],
        live: Callable[[], int],
        scrapers: Sequence[Scraper],
    ) -> None:
        self.stack = stack
        self.monitors = monitors  # the replicas now, in shard order
        self.live = live
        self.scrapers = scrapers
        self.samples: list[Sample] = []

    def take(self) -> Sample:
        procs = all_processes()
        pids = self.stack.pids()
        replicas = tuple(tree_usage(m.pid if m.running() else None, procs) for m in self.monitors())
        monitor = combined(replicas)
        latest = [scraper.latest for scraper in self.scrapers]
        rooms: float | None = None
        if monitor.alive and all(scrape is not None for scrape in latest):
            rooms = sum(scrape.exposition.rooms_watched for scrape in latest if scrape is not None)
        cpu: dict[str, float] = {}
        rss: dict[str, int] = {}
        for part, pid in pids.items():
            cpu[part], rss[part] = _stat_cpu_rss(pid, procs)
        times = os.times()
        cpu["bench"] = times.user + times.system
        rss["bench"] = _own_rss()
        busy, total = machine_cpu_ticks()
        sample = Sample(
            t=time.time(),
            monitor=monitor,
            cpu=cpu,
            rss=rss,
            machine_busy_ticks=busy,
            machine_total_ticks=total,
            live_calls=self.live(),
            rooms_watched=rooms,
            replicas=replicas,
        )
        self.samples.append(sample)
        return sample

    async def run(self, every: float = 1.0) -> None:
        while True:
            self.take()
            await asyncio.sleep(every)


def _own_rss() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def _bytes_mib(value: object) -> float | None:
    return round(float(value) / 2**20, 1) if isinstance(value, int | float) else None


async def _scrape(scraper: Scraper) -> Exposition | None:
    found = await asyncio.to_thread(scraper.scrape_now)
    return found.exposition if found is not None else None


async def _scrape_all(scrapers: Sequence[Scraper]) -> list[Exposition] | None:
    """One scrape of every replica; None unless every one answered."""
    found = await asyncio.gather(*(_scrape(scraper) for scraper in scrapers))
    answered = [exposition for exposition in found if exposition is not None]
    return answered if len(answered) == len(found) else None


async def _room_count(lkapi: api.LiveKitAPI) -> int | None:
    try:
        return len((await lkapi.room.list_rooms(api.ListRoomsRequest())).rooms)
    except (api.TwirpError, OSError, TimeoutError):
        return None


def run_cell(plan: CellPlan, say: Say) -> dict[str, Any]:
    """Run one cell on a stack of its own; return its results (JSON-ready)."""
    ports = [free_port() for _ in range(plan.shards)]
    config = StackConfig(
        # livekit-server sends every webhook to every replica.
        webhook_urls=[f"http://127.0.0.1:{port}/webhook" for port in ports],
        webhook_events=plan.webhook_events,
        # livekit-server's defaults: an ended call's room lingers 20 s, as in production.
        empty_timeout=300,
        departure_timeout=20,
        livekit_log_level="warn",
        sim_log_level="warn",
        stop_timeout=max(5.0, 5.0 + plan.size / 100),
        sim_args=("--single-pc",) if plan.size > 1000 else (),
    )
    with Stack.start(config, report=say) as stack:
        return asyncio.run(_Cell(plan, stack, ports, say).run())


class _Cell:
    def __init__(self, plan: CellPlan, stack: Stack, ports: Sequence[int], say: Say) -> None:
        self.plan = plan
        self.stack = stack
        self.ports = list(ports)  # one per replica, in shard order
        self.say = say
        self.ledger = LedgerTail(stack.ledger_path)
        self.monitors: list[MonitorProcess] = []
        self.scrapers = [Scraper(port, plan.slow_scrape) for port in ports]
        # Per phase boundary: when, and every replica's scrape (None if one failed).
        self.boundaries: dict[str, tuple[float, list[Exposition] | None]] = {}
        self.result: dict[str, Any] = {
            "size": plan.size,
            "mix": plan.mix.name,
            "mode": plan.mode,
            "shards": plan.shards,
            "stack_run": stack.run_id,
            "logs_dir": str(stack.logs_dir),
            "reconcile_seconds": float(
                plan.monitor_env.get("CALL_MONITOR_RECONCILE_SECONDS", "30")
            ),
            "monitor_env": dict(plan.monitor_env),
            "observer": plan.monitor_env.get("CALL_MONITOR_OBSERVER", "signal"),
        }

    def _env(self, shard: int) -> dict[str, str]:
        env = {
            **os.environ,
            **self.stack.env(),
            "CALL_MONITOR_HTTP_PORT": str(self.ports[shard]),
            "CALL_MONITOR_LOG_FORMAT": "json",
            "CALL_MONITOR_LOG_LEVEL": "info",
            "CALL_MONITOR_ROOM_MODE": self.plan.mode,
            "CALL_MONITOR_INSTANCE": "bench",
            # As in the image (Dockerfile: UV_COMPILE_BYTECODE=1): modules load from
            # bytecode. Without it every observer process compiles livekit.rtc from
            # source when it starts (about 1 CPU-second instead of 0.4).
            "PYTHONDONTWRITEBYTECODE": "",
            "PYTHONPYCACHEPREFIX": str(PYCACHE),
            **self.plan.monitor_env,
        }
        if self.plan.shards > 1:
            env["CALL_MONITOR_SHARDS"] = str(self.plan.shards)
            env["CALL_MONITOR_SHARD"] = str(shard)
            env["CALL_MONITOR_INSTANCE"] = f"bench-{shard}"
            journal = env.get("CALL_MONITOR_JOURNAL")
            if journal:  # a journal is one replica's: its own file each
                path = Path(journal)
                env["CALL_MONITOR_JOURNAL"] = str(path.with_stem(f"{path.stem}-{shard}"))
        return env

    def _log_path(self, shard: int, start: int) -> Path:
        """Replica `shard`'s log at its `start`-th start (2: after the restart); one
        monitor keeps the names of the runs before shards."""
        if self.plan.shards == 1:
            return self.stack.logs_dir / f"monitor-{start}.jsonl"
        return self.stack.logs_dir / f"monitor-shard{shard}-{start}.jsonl"

    def _start_monitors(self, start: int) -> None:
        self.monitors = [
            MonitorProcess(self._env(shard), port, self._log_path(shard, start))
            for shard, port in enumerate(self.ports)
        ]
        for monitor in self.monitors:
            monitor.start()

    async def _mark(self, name: str) -> None:
        self.boundaries[name] = (time.time(), await _scrape_all(self.scrapers))

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        follow = asyncio.create_task(self.ledger.follow())
        lkapi = api.LiveKitAPI(self.stack.http_url, self.stack.api_key, self.stack.api_secret)
        poll_api = api.LiveKitAPI(self.stack.http_url, self.stack.api_key, self.stack.api_secret)
        generator: LoadGenerator | None = None
        sampler_task: asyncio.Task[None] | None = None
        try:
            trunk = await lkapi.sip.create_outbound_trunk(
                api.CreateSIPOutboundTrunkRequest(
                    trunk=api.SIPOutboundTrunkInfo(
                        name="bench-carrier", address="127.0.0.1:5090", numbers=[TRUNK_NUMBER]
                    )
                )
            )
            self._start_monitors(1)
            ready = await asyncio.gather(
                *(asyncio.to_thread(monitor.wait_ready) for monitor in self.monitors)
            )
            self.result["monitor_ready_s"] = round(max(ready), 2)
            for scraper in self.scrapers:
                scraper.start()
            generator = LoadGenerator(
                lkapi,
                trunk.sip_trunk_id,
                self.ledger,
                plan.mix,
                prefix=f"bench-{plan.size}-{plan.mode}",
                ramp_rate=plan.ramp_rate,
                max_rate=plan.max_rate,
            )
            sampler = _Sampler(self.stack, lambda: self.monitors, generator.live, self.scrapers)
            sampler_task = asyncio.create_task(sampler.run())
            await asyncio.sleep(3.0)  # idle baseline
            self.result["baseline"] = phase_usage(sampler.samples, 0.0, time.time(), plan.cores) | {
                "rss_after_start": _monitor_rss(sampler.take())
            }
            t_load = time.time()
            await self._ramp(generator)
            self.result["ramp_s"] = round(time.time() - t_load, 1)
            phases = await self._phases(generator, poll_api, sampler)
            t_end_load = time.time()
            self.result["restart"] = await self._restart(sampler)
            self.result["load"] = generator.summary(t_end_load - t_load)
            self.result["load"]["needed_calls_per_second"] = round(
                placements_needed(plan.mix, plan.size), 1
            )
            self.result["phases"] = phases
        finally:
            if generator is not None:
                await generator.stop()
            if sampler_task is not None:
                sampler_task.cancel()
            follow.cancel()
            for scraper in self.scrapers:
                scraper.stop()
            await asyncio.gather(*(asyncio.to_thread(m.stop) for m in self.monitors))
            await lkapi.aclose()
            await poll_api.aclose()
        self._analyze(sampler)
        return self.result

    async def _ramp(self, generator: LoadGenerator) -> None:
        plan = self.plan
        generator.start(plan.size)
        ramp_limit = plan.size / plan.ramp_rate + 30.0
        started = time.monotonic()
        last_report = 0.0
        while len(generator.placed) < plan.size and time.monotonic() - started < ramp_limit:
            await asyncio.sleep(0.5)
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                self.say(
                    f"{plan.name}: ramp {generator.live()}/{plan.size} up, "
                    f"{sum(generator.errors.values())} API errors"
                )
        generator.steady()
        settle_until = time.monotonic() + 30.0
        while time.monotonic() < settle_until:
            if generator.live() >= 0.95 * plan.size:
                break
            await asyncio.sleep(0.5)
        self.say(f"{plan.name}: {generator.live()} calls up; {WARMUP_SECONDS:.0f} s to settle")
        await asyncio.sleep(WARMUP_SECONDS)

    async def _phases(
        self, generator: LoadGenerator, poll_api: api.LiveKitAPI, sampler: _Sampler
    ) -> dict[str, Any]:
        plan = self.plan
        phases: dict[str, Any] = {}
        for name, seconds in plan.phase_seconds():
            if name == "away":
                break
            self.say(f"{plan.name}: phase {name}, {seconds:.0f} s ({generator.live()} calls up)")
            await self._mark(name)
            t0 = time.time()
            extra: dict[str, Any] = {"rooms_listed_start": await _room_count(poll_api)}
            if name == "latency":
                for scraper in self.scrapers:
                    scraper.recording = True
                    scraper.set_interval(plan.fast_scrape)
                await asyncio.sleep(seconds)
                for scraper in self.scrapers:
                    scraper.set_interval(plan.slow_scrape)
                    scraper.recording = False
                # Per replica: its counters are matched with its own log.
                polls = [[s.poll() for s in scraper.take_recorded()] for scraper in self.scrapers]
                extra["polls"] = polls
                # Of all the replicas: the main processes' CPU in this phase is summed too.
                extra["scrapes_per_s"] = round(sum(map(len, polls)) / seconds, 1)
                extra["metrics_body_bytes"] = max(s.body_bytes for s in self.scrapers)
            elif name == "quiet":
                extra.update(await self._quiet(seconds))
            else:
                interval = 1.0 if name == "poll_1s" else 0.1
                extra.update(await self._poll(generator, poll_api, interval, seconds))
            t1 = time.time()
            extra["rooms_listed_end"] = await _room_count(poll_api)
            await self._mark(name + "_end")
            usage = phase_usage(sampler.samples, t0, t1, plan.cores)
            phases[name] = {"window": [t0, t1], **usage, **extra}
            self._events(phases[name], name)
            self._progress(phases[name])
        return phases

    def _progress(self, phase: Mapping[str, Any]) -> None:
        cpu = phase.get("cpu_cores", {})
        rss = phase.get("rss_bytes", {})
        replicas = ""
        if self.plan.shards > 1:
            each = [_get(r, "cpu_cores", "monitor") for r in phase.get("replicas", [])]
            replicas = f" (replicas {' / '.join(str(c) for c in each)})"
        self.say(
            f"{self.plan.name}:   live {phase.get('live_calls_mean')}, monitor "
            f"{cpu.get('monitor')} cores{replicas} {_bytes_mib(rss.get('monitor_mean'))} MiB, "
            f"livekit {cpu.get('livekit')} cores, sipsim {cpu.get('sipsim')}, machine "
            f"{cpu.get('machine_busy')} (others {cpu.get('others')})"
        )

    def _events(self, phase: dict[str, Any], name: str) -> None:
        t0, starts = self.boundaries.get(name, (0.0, None))
        t1, ends = self.boundaries.get(name + "_end", (0.0, None))
        if starts is None or ends is None or t1 <= t0:
            return
        # Every webhook reaches every replica: each one's by result (`other_shard`: a
        # room another replica owns, verified and dropped).
        phase["webhooks_by_replica"] = [
            {
                result: round((count - start.webhooks.get(result, 0.0)) / (t1 - t0), 3)
                for result, count in sorted(end.webhooks.items())
                if count > start.webhooks.get(result, 0.0)
            }
            for start, end in zip(starts, ends, strict=True)
        ]
        start, end = combined_scrapes(starts), combined_scrapes(ends)
        phase["events_per_s"] = round((end.events - start.events) / (t1 - t0), 2)
        phase["events_per_s_by_source"] = {
            source: round((value - start.events_by_source.get(source, 0.0)) / (t1 - t0), 2)
            for source, value in end.events_by_source.items()
        }
        phase["reconcile_runs"] = end.reconcile_runs - start.reconcile_runs
        phase["reconcile_requests_per_s"] = round(
            (end.reconcile_requests - start.reconcile_requests) / (t1 - t0), 2
        )
        phase["room_connects"] = {
            k: v - start.room_connects.get(k, 0.0) for k, v in end.room_connects.items()
        }
        phase["webhooks_per_s"] = round(
            (sum(end.webhooks.values()) - sum(start.webhooks.values())) / (t1 - t0), 2
        )
        phase["monitor_live_calls_end"] = end.live_calls

    async def _quiet(self, seconds: float) -> dict[str, Any]:
        plan = self.plan
        extra: dict[str, Any] = {}
        # With shards, replica 0's main process: they do the same work.
        pid = self.monitors[0].pid if self.monitors else None
        if plan.profile_seconds > 0 and pid:
            output = plan.out_dir / f"profile-{plan.name}-{int(time.time())}.txt"
            profile_for = min(plan.profile_seconds, seconds)
            self.say(
                f"{plan.name}: profiling the monitor's main process for {profile_for:.0f} s "
                "with py-spy"
            )
            started = time.monotonic()
            status, tail = await record(plan.profile_command, pid, profile_for, output)
            left = seconds - (time.monotonic() - started)
            if left > 0:
                await asyncio.sleep(left)
            profile: dict[str, Any] = {
                "file": str(output),
                "status": status,
                "seconds": profile_for,
            }
            if output.exists():
                profile["summary"] = summarize_collapsed(output.read_text())
            else:
                profile["error"] = tail
            extra["profile"] = profile
        else:
            await asyncio.sleep(seconds)
        return extra

    async def _poll(
        self, generator: LoadGenerator, poll_api: api.LiveKitAPI, interval: float, seconds: float
    ) -> dict[str, Any]:
        def ended_at(call_id: str) -> float | None:
            truth = self.ledger.calls.get(call_id)
            return truth.ended if truth is not None else None

        poller = Poller(poll_api, interval, ended_at)
        now = time.time()
        for placed in list(generator.up.values()):
            poller.add(placed.call_id, placed.room, now)

        def on_placed(placed: Placed) -> None:
            poller.add(placed.call_id, placed.room, placed.t_request)

        generator.on_placed = on_placed
        t0 = time.time()
        task = asyncio.create_task(poller.run())
        try:
            await asyncio.sleep(seconds)
        finally:
            generator.on_placed = None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        t1 = time.time()
        return {
            "poller_load": poller.load(t1 - t0),
            "poller_view": analyze(poller.calls, self.ledger.calls, (t0, t1), interval),
        }

    async def _restart(self, sampler: _Sampler) -> dict[str, Any]:
        """Kill the monitor (every replica), leave it away, start it again; time until
        it knows every live call again."""
        plan = self.plan
        away = dict(plan.phase_seconds())["away"]
        self.say(f"{plan.name}: killing the monitor (SIGKILL to its process group), {away:.0f} s")
        for scraper in self.scrapers:
            scraper.paused = True
        # Every replica at once: livekit-server's CPU without any monitor, and the
        # restart of the whole monitor, as with one replica.
        await asyncio.gather(*(asyncio.to_thread(m.kill) for m in self.monitors))
        t_kill = time.time()
        await asyncio.sleep(away)
        t_restart = time.time()
        usage = phase_usage(sampler.samples, t_kill + 2.0, t_restart, plan.cores)
        self._start_monitors(2)
        ready_at: float | None = None
        covered_at: float | None = None
        gauge_at: float | None = None
        coverage: list[tuple[float, int, int]] = []
        deadline = t_restart + 90.0
        while time.time() < deadline and (covered_at is None or ready_at is None):
            await asyncio.sleep(0.1)
            now = time.time()
            if ready_at is None and all(
                await asyncio.gather(*(asyncio.to_thread(m.ready) for m in self.monitors))
            ):
                ready_at = now
            if covered_at is not None:
                continue
            sim_calls = await asyncio.to_thread(self.stack.sim_calls)
            wanted = {
                str(c["call_id"])
                for c in sim_calls
                if c.get("participant_sid") and (parse_time(c.get("t_start")) or now) < t_restart
            }
            # /calls takes the hook's own read-only token, minutes of life: one per poll.
            token = mint_hook_token(self.stack.api_key, self.stack.api_secret, CALLS)
            answers = await asyncio.gather(
                *(asyncio.to_thread(_monitor_calls, m.url, token) for m in self.monitors)
            )
            if any(answer is None for answer in answers):
                continue
            # Each replica lists the calls of its own rooms.
            known = set().union(*(answer or set() for answer in answers))
            covered = len(wanted & known)
            coverage.append((round(now - t_restart, 2), covered, len(wanted)))
            if gauge_at is None and len(known) >= len(wanted):
                gauge_at = now
            if covered_at is None and covered == len(wanted):
                covered_at = now
        for scraper in self.scrapers:
            scraper.paused = False
        self.say(
            f"{plan.name}: monitor back: ready after "
            f"{_since(ready_at, t_restart)} s, every live call listed after "
            f"{_since(covered_at, t_restart)} s"
        )
        return {
            "away_s": round(t_restart - t_kill, 1),
            "without_monitor": usage,
            "ready_s": _since(ready_at, t_restart),
            "all_calls_known_s": _since(covered_at, t_restart),
            "as_many_calls_as_live_s": _since(gauge_at, t_restart),
            "live_calls_at_restart": coverage[0][2] if coverage else None,
            "coverage": coverage[:: max(1, len(coverage) // 40)],
        }

    def _analyze(self, sampler: _Sampler) -> None:
        plan = self.plan
        result = self.result
        phases: dict[str, Any] = result.get("phases", {})
        truths = self.ledger.calls
        logs = [read_monitor_log(self._log_path(shard, 1)) for shard in range(plan.shards)]
        first_log = merged(logs)
        latency_phase = phases.get("latency", {})
        polls = latency_phase.pop("polls", [])
        result["latency_metrics"] = metrics_latency(list(zip(polls, logs, strict=False)), truths)
        result["shard_check"] = _shard_check(logs)
        measured = [p["window"] for p in phases.values() if "window" in p]
        if measured:
            window = (measured[0][0], measured[-1][1])
            result["latency_log"] = log_latency(first_log, truths, window)
            result["monitor_missed"] = missed_by_monitor(first_log, truths, window)
        result["monitor_warnings"] = first_log.warnings
        result["post_dial_delay_approximate"] = {
            "calls_rang": first_log.rang,
            "approximate": first_log.pdd_approximate,
            "share": first_log.pdd_approximate_share,
        }
        result["samples"] = len(sampler.samples)
        live = [p.get("live_calls_mean", 0.0) for p in phases.values() if "live_calls_mean" in p]
        live_mean = sum(live) / len(live) if live else 0.0
        result["live_calls_mean"] = round(live_mean, 1)
        log_p99 = result.get("latency_log", {}).get("target_changes_ms", {}).get("p99")
        carried, limit = judge(
            plan.size,
            plan.cores,
            live_mean,
            result.get("load", {}),
            phases,
            log_p99,
            placements_needed(plan.mix, plan.size),
            plan.max_rate,
        )
        result["carried"] = carried
        result["limit"] = limit
        result["derived"] = derive(result)


def _kib(value: object) -> float | None:
    return round(float(value) / 1024, 1) if isinstance(value, int | float) else None


def _since(at: float | None, t0: float) -> float | None:
    return None if at is None else round(at - t0, 2)


def _monitor_rss(sample: Sample) -> dict[str, Any]:
    rss: dict[str, Any] = {
        "monitor": sample.monitor.rss_bytes,
        "monitor_main": sample.monitor.main_rss_bytes,
    }
    if len(sample.replicas) > 1:
        rss["replicas"] = [tree.rss_bytes for tree in sample.replicas]
    return rss


def _shard_check(logs: Sequence[MonitorLog]) -> dict[str, int]:
    """Each call should start in one replica's log only (its room's owner's)."""
    seen: dict[str, int] = {}
    for log in logs:
        for call_id in {line.call_id for line in log.lines.get(STARTED, [])}:
            seen[call_id] = seen.get(call_id, 0) + 1
    return {
        "calls_started": len(seen),
        "in_two_replicas_or_more": sum(1 for count in seen.values() if count > 1),
    }


def _monitor_calls(url: str, token: str) -> set[str] | None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url + "/calls", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:
            doc = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return {str(call.get("call_id")) for call in doc.get("calls", [])}


def _get(doc: Mapping[str, Any], *path: str) -> Any:
    found: Any = doc
    for key in path:
        if not isinstance(found, Mapping):
            return None
        found = found.get(key)
    return found


# The phases whose monitor CPU is the calls' alone (the poller runs in the bench).
_STEADY = ("quiet", "poll_1s", "poll_100ms")


def _replica_view(phase: Mapping[str, Any]) -> tuple[list[Any], list[Any] | None]:
    """A phase's usage per replica and webhooks per second by result per replica.
    Cells from before shards: the monitor's totals as its one replica, its webhooks
    under no result (one monitor drops none as another shard's)."""
    usage = phase.get("replicas")
    if not isinstance(usage, list) or not usage:
        usage = [{"cpu_cores": phase.get("cpu_cores"), "rss_bytes": phase.get("rss_bytes")}]
    webhooks = phase.get("webhooks_by_replica")
    if not isinstance(webhooks, list):
        total = phase.get("webhooks_per_s")
        webhooks = [{"": total}] if isinstance(total, int | float) and len(usage) == 1 else None
    return usage, webhooks


def _derive_replicas(cell: Mapping[str, Any], quiet: Mapping[str, Any]) -> dict[str, Any]:
    """Per replica: cores and MiB in the quiet phase; webhooks received and the share
    dropped as another shard's, and the main process's CPU per webhook received, over
    the steady phases (a few quiet seconds see few webhooks)."""
    usage, _ = _replica_view(quiet)
    cores = [_get(r, "cpu_cores", "monitor") for r in usage]
    found: dict[str, Any] = {
        "shards": int(cell.get("shards") or 1),
        "replica_cpu_cores": cores,
        "replica_main_cpu_cores": [_get(r, "cpu_cores", "monitor_main") for r in usage],
        "replica_rss_mib": [_bytes_mib(_get(r, "rss_bytes", "monitor_max")) for r in usage],
    }
    if all(isinstance(c, int | float) for c in cores):
        found["replica_cpu_cores_max"] = max(cores)
    n = len(usage)
    seconds = 0.0
    received, dropped, mains = [0.0] * n, [0.0] * n, [0.0] * n
    for name in _STEADY:
        phase = _get(cell, "phases", name)
        if not isinstance(phase, Mapping) or not phase.get("seconds"):
            continue
        each, webhooks = _replica_view(phase)
        main = [_get(r, "cpu_cores", "monitor_main") for r in each]
        if webhooks is None or len(webhooks) != n or len(main) != n:
            continue
        if not all(isinstance(m, int | float) for m in main):
            continue  # a replica restarted or was down
        length = float(phase["seconds"])
        seconds += length
        for i in range(n):
            received[i] += sum(webhooks[i].values()) * length
            dropped[i] += webhooks[i].get("other_shard", 0.0) * length
            mains[i] += main[i] * length
    if not seconds:
        return found
    received = [r / seconds for r in received]
    mains = [m / seconds for m in mains]
    found["replica_webhooks_per_s"] = [round(r, 2) for r in received]
    found["replica_other_shard_share"] = [
        round(d / seconds / r, 4) if r else None for d, r in zip(dropped, received, strict=True)
    ]
    found["other_shard_webhooks_per_s"] = round(sum(dropped) / seconds, 2)
    found["steady_main_cpu_cores"] = round(sum(mains), 4)
    # All the main process's work over the webhooks it received: an upper bound of
    # what one costs, driven down by the share that are another shard's.
    found["replica_main_cpu_ms_per_webhook"] = [
        round(m / r * 1000, 3) if r else None for m, r in zip(mains, received, strict=True)
    ]
    if sum(received):
        found["main_cpu_ms_per_webhook"] = round(sum(mains) / sum(received) * 1000, 3)
    return found


def derive(cell: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers the targets are about, from a cell's raw results."""
    quiet = _get(cell, "phases", "quiet") or {}
    base = cell.get("baseline") or {}
    live = quiet.get("live_calls_mean") or 0.0
    rooms = quiet.get("rooms_watched_mean")
    cpu = quiet.get("cpu_cores") or {}
    rss = quiet.get("rss_bytes") or {}
    base_cpu = base.get("cpu_cores") or {}
    base_rss = base.get("rss_bytes") or {}
    derived: dict[str, Any] = {
        "monitor_cpu_cores": cpu.get("monitor"),
        "monitor_main_cpu_cores": cpu.get("monitor_main"),
        "monitor_rss_mib": _bytes_mib(rss.get("monitor_max")),
        "monitor_main_rss_mib": _bytes_mib(rss.get("monitor_main_mean")),
        "observers_rss_mib": _bytes_mib(rss.get("observers_mean")),
        "live_calls": live,
        "rooms_watched": rooms,
        "events_per_s": quiet.get("events_per_s"),
    }
    main_now, main_base = rss.get("monitor_main_mean"), base_rss.get("monitor_main_mean")
    if live and isinstance(main_now, int | float) and isinstance(main_base, int | float):
        derived["main_rss_per_tracked_call_kib"] = round((main_now - main_base) / live / 1024, 1)
    if live and isinstance(rss.get("monitor_mean"), int | float):
        derived["monitor_rss_per_call_kib"] = round(rss["monitor_mean"] / live / 1024, 1)
    obs_now, obs_base = rss.get("observers_mean"), base_rss.get("observers_mean")
    if rooms and isinstance(obs_now, int | float) and isinstance(obs_base, int | float):
        derived["observer_rss_per_joined_room_mib"] = round((obs_now - obs_base) / rooms / 2**20, 2)
    if rooms and isinstance(cpu.get("observers"), int | float):
        derived["observer_cpu_per_joined_room_pct"] = round(cpu["observers"] / rooms * 100, 3)
    derived.update(_derive_replicas(cell, quiet))
    # Events and CPU over the steady phases (quiet and both polls: the poller runs in the
    # bench, not in the monitor), weighted by their length.
    steady = [
        p
        for name in _STEADY
        if isinstance(p := _get(cell, "phases", name), Mapping)
        and isinstance(p.get("events_per_s"), int | float)
        and isinstance(_get(p, "cpu_cores", "monitor"), int | float)
        and p.get("seconds")
    ]
    eps: float | None = None
    monitor_cpu: float | None = None
    if steady:
        seconds = sum(float(p["seconds"]) for p in steady)
        eps = sum(float(p["events_per_s"]) * float(p["seconds"]) for p in steady) / seconds
        monitor_cpu = (
            sum(float(p["cpu_cores"]["monitor"]) * float(p["seconds"]) for p in steady) / seconds
        )
        derived["steady_events_per_s"] = round(eps, 2)
        derived["steady_monitor_cpu_cores"] = round(monitor_cpu, 4)
        # The main process alone: the events' own path, without the observers' joins.
        mains = [p for p in steady if isinstance(_get(p, "cpu_cores", "monitor_main"), int | float)]
        if mains and eps:
            main_cpu = sum(
                float(p["cpu_cores"]["monitor_main"]) * float(p["seconds"]) for p in mains
            ) / sum(float(p["seconds"]) for p in mains)
            derived["main_cpu_per_100_events_per_s"] = round(main_cpu / (eps / 100), 4)
    if eps and monitor_cpu is not None:
        derived["cpu_per_100_events_per_s"] = round(monitor_cpu / (eps / 100), 4)
        idle = base_cpu.get("monitor")
        if isinstance(idle, int | float):
            derived["marginal_cpu_per_100_events_per_s"] = round(
                max(0.0, monitor_cpu - idle) / (eps / 100), 4
            )
    # What scraping /metrics every 20 ms cost the monitor's main process.
    latency = _get(cell, "phases", "latency") or {}
    fast_main = _get(latency, "cpu_cores", "monitor_main")
    quiet_main = cpu.get("monitor_main")
    scrapes = latency.get("scrapes_per_s")
    if scrapes and isinstance(fast_main, int | float) and isinstance(quiet_main, int | float):
        derived["metrics_scrape_cpu_ms"] = round(
            max(0.0, fast_main - quiet_main) / scrapes * 1000, 2
        )
    derived["metrics_body_kib"] = _kib(latency.get("metrics_body_bytes"))
    # livekit-server: with the monitor, while polling, without the monitor.
    quiet_lk = cpu.get("livekit")
    derived["livekit_cpu_quiet"] = quiet_lk
    derived["livekit_cpu_without_monitor"] = _get(
        cell, "restart", "without_monitor", "cpu_cores", "livekit"
    )
    for name in ("poll_1s", "poll_100ms"):
        lk = _get(cell, "phases", name, "cpu_cores", "livekit")
        derived[f"livekit_cpu_{name}"] = lk
        load = _get(cell, "phases", name, "poller_load") or {}
        rps = load.get("requests_per_s")
        derived[f"{name}_requests_per_s"] = rps
        if isinstance(lk, int | float) and isinstance(quiet_lk, int | float):
            derived[f"{name}_livekit_cpu_added"] = round(lk - quiet_lk, 4)
            if rps and lk - quiet_lk > NOISE_CORES:
                derived[f"{name}_livekit_ms_per_request"] = round((lk - quiet_lk) / rps * 1000, 3)
    # Reconciliation: one ListRooms and one ListParticipants per room each interval.
    reconcile_seconds = float(cell.get("reconcile_seconds") or 30.0)
    listed = [
        v
        for v in (quiet.get("rooms_listed_start"), quiet.get("rooms_listed_end"))
        if isinstance(v, int)
    ]
    # Polling every 1 s asks one ListParticipants per live call's room a second (the
    # bench's poller may not have kept up on a saturated machine: its achieved rate is
    # `poll_1s_requests_per_s`).
    live_polled = _get(cell, "phases", "poll_1s", "live_calls_mean")
    nominal = float(live_polled) if isinstance(live_polled, int | float) else None
    derived["poll_1s_nominal_requests_per_s"] = nominal
    per_request = derived.get("poll_1s_livekit_ms_per_request")
    if not isinstance(per_request, int | float):
        per_request = derived.get("poll_100ms_livekit_ms_per_request")
    derived["livekit_ms_per_request"] = per_request
    if isinstance(per_request, int | float) and nominal is not None:
        derived["poll_1s_livekit_cpu_est"] = round(nominal * per_request / 1000, 5)
    # The requests the monitor counted; runs before it counted them asked every room.
    measured = quiet.get("reconcile_requests_per_s")
    if listed:
        rooms_listed = sum(listed) / len(listed)
        derived["rooms_listed"] = round(rooms_listed, 1)
        requests = (1 + rooms_listed) / reconcile_seconds
        if isinstance(measured, int | float) and measured > 0:
            requests = measured
        derived["reconcile_requests_per_s"] = round(requests, 2)
        if isinstance(per_request, int | float):
            derived["reconcile_livekit_cpu_est"] = round(requests * per_request / 1000, 5)
    return derived
