"""Turning what a cell recorded into its numbers.

- Change-to-metric latency. The monitor's counters carry no call id, but within one
  monitor process the k-th increment of `state_transitions_total{to_state=X}` (summed
  over its other labels) and the k-th `call_state_changed` log line with `state=X` are
  the same change: both sinks run, in that order, in the one synchronous step that
  handles an effect. So the scrape that first shows increment k names the call of log
  line k, and the ledger says when the SIP side made that change. With shards this
  holds per replica: a change in room R is matched in the scrapes and the log of the
  replica that owns R (`shard_of`).
- The same per-call times from the log lines alone (millisecond timestamps, no scrape
  resolution): what the monitor knew, independent of how often /metrics is read.
- CPU and memory of each part over a phase, from /proc samples.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bench.ledger import CallTruth
from bench.procfs import TreeUsage
from bench.scrape import ENDED, STARTED
from bench.stats import CounterPoll, counter_visibility, mean, summarize
from monitor.core.shards import shard_of

__all__ = [
    "LogLine",
    "MonitorLog",
    "Sample",
    "judge",
    "log_latency",
    "merged",
    "metrics_latency",
    "phase_usage",
    "read_monitor_log",
]

# The changes timed, by `Exposition.counts` key, with what the ledger calls them.
CHANGES: dict[str, str] = {
    STARTED: "join -> calls_started_total",
    "to:ringing": "status ringing -> transition to ringing",
    "to:active": "status active -> transition to active",
    "to:hangup": "status hangup -> transition to hangup",
    "to:ending": "leave -> transition to ending",
    ENDED: "leave -> calls_ended_total (after the settle window)",
}
# The changes the target "p99 change-to-metric < 50 ms" is about: attribute changes and
# leaves, as first visible (the end's outcome waits the settle window on purpose).
TARGET_CHANGES = ("to:ringing", "to:active", "to:hangup", "to:ending")


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float
    call_id: str
    source: str


@dataclass
class MonitorLog:
    """The monitor's call lines in order, by counter key; and its warnings."""

    lines: dict[str, list[LogLine]] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    unreadable: int = 0
    # Outbound calls that rang, and those whose post-dial delay was seen only after the
    # fact (the observer came after the 18x).
    rang: int = 0
    pdd_approximate: int = 0

    @property
    def pdd_approximate_share(self) -> float | None:
        return round(self.pdd_approximate / self.rang, 4) if self.rang else None


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_monitor_log(path: Path) -> MonitorLog:
    """Parse one monitor process's JSON log file."""
    found = MonitorLog()
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return found
    with handle:
        for raw in handle:
            if not raw.startswith(b"{"):
                continue
            try:
                doc = json.loads(raw)
                event = doc["event"]
            except (ValueError, KeyError, TypeError):
                found.unreadable += 1
                continue
            if event == "call_state_changed":
                key = "to:" + str(doc.get("state"))
            elif event == "call_started":
                key = STARTED
            elif event == "call_ended":
                key = ENDED
                if doc.get("direction") == "outbound" and "ringing" in (doc.get("statuses") or []):
                    found.rang += 1
                    found.pdd_approximate += doc.get("post_dial_delay_approximate") is True
            else:
                if doc.get("level") in ("warning", "error"):
                    found.warnings[str(event)[:80]] = found.warnings.get(str(event)[:80], 0) + 1
                continue
            try:
                at = _epoch(str(doc["timestamp"]))
            except (KeyError, ValueError):
                found.unreadable += 1
                continue
            line = LogLine(at, str(doc.get("call_id") or ""), str(doc.get("source") or ""))
            found.lines.setdefault(key, []).append(line)
    return found


def metrics_latency(
    replicas: Sequence[tuple[Sequence[CounterPoll], MonitorLog]],
    truths: Mapping[str, CallTruth],
    keys: Iterable[str] = CHANGES,
) -> dict[str, object]:
    """Ledger change -> first scrape showing it, per change kind (ms, upper bounds:
    the scrape's answer time); plus the scrape spacing (the resolution).

    `replicas`: each replica's scrapes and log, in shard order (one for one monitor).
    `wrong_replica` counts log lines about a room the replica does not own: none,
    unless the monitor's sharding (or this matching) is wrong."""
    shards = len(replicas)
    by_key: dict[str, dict[str, float]] = {}
    all_target: list[float] = []
    unmatched: dict[str, int] = {}
    wrong_replica = 0
    for key in keys:
        values: list[float] = []
        lower: list[float] = []
        missing = 0
        for shard, (polls, log) in enumerate(replicas):
            lines = log.lines.get(key, [])
            for seen in counter_visibility(polls, key):
                if seen.rank > len(lines):
                    missing += 1  # the log file is behind the counter (not flushed yet)
                    continue
                line = lines[seen.rank - 1]
                truth = truths.get(line.call_id)
                owner = shard_of(truth.room, shards) if truth and truth.room else shard
                if owner != shard:
                    wrong_replica += 1
                    continue
                at = truth.change_times().get(key) if truth is not None else None
                if at is None:
                    missing += 1  # e.g. a state the monitor inferred, with no ledger line
                    continue
                values.append(seen.by - at)
                lower.append(seen.after - at)
        summary = summarize(values, 1000.0)
        if values:
            summary["lower_p50"] = round(sorted(lower)[len(lower) // 2] * 1000.0, 1)
        by_key[key] = summary
        unmatched[key] = missing
        if key in TARGET_CHANGES:
            all_target.extend(values)
    # Each replica is scraped on its own: spacing within a replica's scrapes.
    spacing = [b.t_send - a.t_send for polls, _ in replicas for a, b in itertools.pairwise(polls)]
    took = [p.t_recv - p.t_send for polls, _ in replicas for p in polls]
    result: dict[str, object] = {
        "by_change_ms": by_key,
        "target_changes_ms": summarize(all_target, 1000.0),
        "unmatched": unmatched,
        "scrapes": sum(len(polls) for polls, _ in replicas),
        "scrape_spacing_ms": summarize(spacing, 1000.0),
        "scrape_ms": summarize(took, 1000.0),
    }
    if shards > 1:
        result["wrong_replica"] = wrong_replica
    return result


def merged(logs: Sequence[MonitorLog]) -> MonitorLog:
    """Several replicas' logs as one monitor's (for what does not depend on the order
    of lines between replicas: the log latency, the changes missed, the warnings)."""
    found = MonitorLog()
    for log in logs:
        for key, lines in log.lines.items():
            found.lines.setdefault(key, []).extend(lines)
        for name, count in log.warnings.items():
            found.warnings[name] = found.warnings.get(name, 0) + count
        found.unreadable += log.unreadable
        found.rang += log.rang
        found.pdd_approximate += log.pdd_approximate
    return found


def log_latency(
    log: MonitorLog,
    truths: Mapping[str, CallTruth],
    window: tuple[float, float],
    keys: Iterable[str] = CHANGES,
) -> dict[str, object]:
    """Ledger change -> the monitor's log line about it (ms; the log has ms resolution),
    for changes the ledger recorded in `window`; by change kind and by source."""
    start, end = window
    by_key: dict[str, dict[str, float]] = {}
    by_source: dict[str, list[float]] = {}
    all_target: list[float] = []
    for key in keys:
        values: list[float] = []
        for line in log.lines.get(key, []):
            truth = truths.get(line.call_id)
            at = truth.change_times().get(key) if truth is not None else None
            if at is None or not start <= at <= end:
                continue
            values.append(line.at - at)
            if key in TARGET_CHANGES:
                all_target.append(line.at - at)
                by_source.setdefault(f"{key} via {line.source}", []).append(line.at - at)
        by_key[key] = summarize(values, 1000.0)
    return {
        "by_change_ms": by_key,
        "target_changes_ms": summarize(all_target, 1000.0),
        "by_source_ms": {name: summarize(v, 1000.0) for name, v in sorted(by_source.items())},
    }


def missed_by_monitor(
    log: MonitorLog, truths: Mapping[str, CallTruth], window: tuple[float, float]
) -> dict[str, dict[str, int]]:
    """Per change kind: how many the ledger recorded in `window` (calls that also ended
    in it) and how many of those the monitor's log never mentions."""
    start, end = window
    logged: dict[str, set[str]] = {
        key: {line.call_id for line in lines} for key, lines in log.lines.items()
    }
    result: dict[str, dict[str, int]] = {}
    for key in CHANGES:
        expected = missed = 0
        for truth in truths.values():
            at = truth.change_times().get(key)
            if at is None or not start <= at <= end or truth.ended is None:
                continue
            expected += 1
            if truth.call_id not in logged.get(key, set()):
                missed += 1
        result[key] = {"expected": expected, "missed": missed}
    return result


@dataclass(frozen=True, slots=True)
class Sample:
    """Every part's CPU seconds so far and resident bytes, at one moment.

    `monitor`: all the replicas' trees summed (`procfs.combined`); `replicas`: each
    one's, in shard order."""

    t: float
    monitor: TreeUsage
    cpu: Mapping[str, float]  # livekit, sipsim, redis, bench: CPU seconds so far
    rss: Mapping[str, int]
    machine_busy_ticks: int
    machine_total_ticks: int
    live_calls: int
    rooms_watched: float | None
    replicas: tuple[TreeUsage, ...] = ()


def _between(samples: Sequence[Sample], t0: float, t1: float) -> list[Sample]:
    return [s for s in samples if t0 <= s.t <= t1]


def _tree_cpu(first: TreeUsage, last: TreeUsage, seconds: float) -> dict[str, float | None]:
    """Cores of a monitor tree, its main process and its observers between two samples;
    nothing if it was down at either or restarted in between."""
    if not (first.alive and last.alive) or last.cpu_seconds < first.cpu_seconds:
        return {}
    whole = (last.cpu_seconds - first.cpu_seconds) / seconds
    main = (last.main_cpu_seconds - first.main_cpu_seconds) / seconds
    return {"monitor": whole, "monitor_main": main, "observers": whole - main}


def _tree_rss(trees: Iterable[TreeUsage]) -> dict[str, float | None]:
    alive = [t for t in trees if t.alive]
    return {
        "monitor_mean": mean(t.rss_bytes for t in alive),
        "monitor_max": max((t.rss_bytes for t in alive), default=None),
        "monitor_main_mean": mean(t.main_rss_bytes for t in alive),
        "observers_mean": mean(t.rss_bytes - t.main_rss_bytes for t in alive),
    }


def _rounded(values: Mapping[str, float | None], digits: int | None) -> dict[str, float | None]:
    return {k: None if v is None else round(v, digits) for k, v in values.items()}


def phase_usage(samples: Sequence[Sample], t0: float, t1: float, cores: int) -> dict[str, object]:
    """Mean CPU (cores) of each part over [t0, t1], their mean and peak RSS, the mean
    number of live calls and of rooms the monitor had joined; the monitor's CPU and RSS
    per replica under `replicas` (the totals under `cpu_cores` and `rss_bytes`)."""
    inside = _between(samples, t0, t1)
    if len(inside) < 2:
        return {"samples": len(inside)}
    first, last = inside[0], inside[-1]
    seconds = last.t - first.t
    cpu: dict[str, float | None] = {**_tree_cpu(first.monitor, last.monitor, seconds)}
    for part in last.cpu:
        if part in first.cpu and last.cpu[part] >= first.cpu[part]:
            cpu[part] = (last.cpu[part] - first.cpu[part]) / seconds
        else:
            cpu[part] = None  # restarted in between
    total_ticks = last.machine_total_ticks - first.machine_total_ticks
    if total_ticks > 0:
        busy = (last.machine_busy_ticks - first.machine_busy_ticks) / total_ticks * cores
        cpu["machine_busy"] = busy
        ours = sum(v for k, v in cpu.items() if v is not None and k not in _NOT_OURS)
        cpu["others"] = max(0.0, busy - ours)
    alive = [s for s in inside if s.monitor.alive]
    rss = _tree_rss(s.monitor for s in inside)
    for part in last.rss:
        rss[part + "_mean"] = mean(s.rss.get(part, 0) for s in inside)
        rss[part + "_max"] = max(s.rss.get(part, 0) for s in inside)
    rooms = [s.rooms_watched for s in inside if s.rooms_watched is not None]
    usage: dict[str, object] = {
        "t0": round(first.t, 3),
        "t1": round(last.t, 3),
        "seconds": round(seconds, 1),
        "samples": len(inside),
        "cpu_cores": _rounded(cpu, 4),
        "rss_bytes": _rounded(rss, None),
        "live_calls_mean": round(mean(s.live_calls for s in inside) or 0.0, 1),
        "live_calls_min": min(s.live_calls for s in inside),
        "monitor_processes_max": max((s.monitor.processes for s in alive), default=0),
        "rooms_watched_mean": round(sum(rooms) / len(rooms), 1) if rooms else None,
    }
    replicas = min(len(s.replicas) for s in inside)
    if replicas:
        usage["replicas"] = [
            {
                "cpu_cores": _rounded(_tree_cpu(first.replicas[i], last.replicas[i], seconds), 4),
                "rss_bytes": _rounded(_tree_rss(s.replicas[i] for s in inside), None),
            }
            for i in range(replicas)
        ]
    return usage


def _number_at(doc: object, *path: str) -> float | None:
    for key in path:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return float(doc) if isinstance(doc, int | float) else None


# Parts whose CPU is already inside another's (the monitor's tree holds them).
_NOT_OURS = frozenset({"monitor_main", "observers", "machine_busy", "others"})


def judge(
    size: int,
    cores: int,
    live_mean: float,
    load: Mapping[str, object],
    phases: Mapping[str, Mapping[str, object]],
    monitor_p99_ms: float | None,
    needed_rate: float,
    max_rate: float,
) -> tuple[bool, dict[str, object] | None]:
    """Whether the machine carried `size` calls, and if not, what hit the limit.

    Carried: at least 90% of the calls up on average, at most 2% of the placements
    refused, no call stuck, and the monitor processing changes within 2 s (p99).
    """
    evidence: list[str] = []
    error_ratio = float(load.get("api_error_ratio", 0.0))  # type: ignore[arg-type]
    stuck = int(load.get("stuck", 0))  # type: ignore[call-overload]
    if live_mean < 0.9 * size:
        evidence.append(f"only {live_mean:.0f} of {size} calls up on average")
    if error_ratio > 0.02:
        evidence.append(f"{error_ratio:.1%} of CreateSIPParticipant calls failed")
    if stuck:
        evidence.append(f"{stuck} calls never ended in the ledger in time")
    if monitor_p99_ms is not None and monitor_p99_ms > 2000:
        evidence.append(f"the monitor took {monitor_p99_ms / 1000:.1f} s (p99) to log a change")
    if not evidence:
        return True, None
    peak: dict[str, float] = {}
    for usage in phases.values():
        cpu = usage.get("cpu_cores")
        if isinstance(cpu, Mapping):
            for part, value in cpu.items():
                if isinstance(value, int | float):
                    peak[part] = max(peak.get(part, 0.0), float(value))
        # With shards the limit is one replica's main process, not their sum.
        replicas = usage.get("replicas")
        if isinstance(replicas, Sequence) and len(replicas) > 1:
            for replica in replicas:
                main = _number_at(replica, "cpu_cores", "monitor_main")
                if main is not None:
                    peak["replica_main"] = max(peak.get("replica_main", 0.0), main)
    main_peak = peak.get("replica_main", peak.get("monitor_main", 0.0))
    main_name = "a replica's main process" if "replica_main" in peak else "monitor main process"
    parts = {k: v for k, v in peak.items() if k in ("livekit", "sipsim", "monitor", "bench")}
    errors = load.get("api_errors_by_kind")
    error_text = " ".join(errors) if isinstance(errors, Mapping) else ""
    component: str
    if monitor_p99_ms is not None and monitor_p99_ms > 2000:
        component = "monitor"
    elif main_peak >= 0.85:
        component = "monitor"
        evidence.append(f"{main_name} at {main_peak:.2f} of a core")
    elif needed_rate > max_rate:
        component = "placement rate"
        evidence.append(
            f"the mix needs {needed_rate:.0f} new calls/s to keep {size} up; --max-rate is "
            f"{max_rate:g}/s"
        )
    elif "no response from servers" in error_text:
        component = "sipsim"
        evidence.append("livekit-server got no answer from the SIP service (psrpc)")
    elif parts:
        component = max(parts, key=lambda k: parts[k])
    else:
        component = "unknown"
    busy = peak.get("machine_busy")
    if busy is not None:
        evidence.append(
            f"machine {busy:.2f} of {cores} cores busy at peak; "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
            + f", others {peak.get('others', 0.0):.2f}"
        )
    return False, {"component": component, "evidence": evidence}
