"""bench/RESULTS.md from the JSON files in bench/results/: pure functions of their data.

Every run is one JSON file; the Markdown has the targets (met or by how much missed),
one monitor next to several shards, then one section per run, newest first, then
bench/notes.md (hand-written: what the profile showed, caveats) as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "evaluate_targets",
    "fmt",
    "load_runs",
    "render",
    "shard_pairs",
    "table",
    "target_cells",
]

TARGET_SIZE = 1000
RECONCILE_TARGET = "reconciliation's load on livekit-server below polling every 1 s, every size"


def fmt(value: object, digits: int = 1, unit: str = "") -> str:
    """A number for a table cell: rounded, with its unit; "-" for nothing."""
    if value is None or (isinstance(value, bool) and not value):
        return "-"
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:,.{digits}f}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip() if unit else text


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; "|" inside a cell is escaped."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines.extend("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
    return "\n".join(lines)


def _get(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def _shards(cell: Mapping[str, Any]) -> int:
    """Monitor replicas in a cell; cells from before shards had one."""
    return int(cell.get("shards") or 1)


def _mode(cell: Mapping[str, Any]) -> str:
    """The room mode, with the shards when there were several."""
    shards = _shards(cell)
    return str(cell.get("mode")) + (f" ({shards} shards)" if shards > 1 else "")


def _cell_name(cell: Mapping[str, Any]) -> str:
    return f"{cell.get('size')} calls, {cell.get('mix')}, {_mode(cell)}"


def _pick(cells: Sequence[Mapping[str, Any]], mix: str, mode: str) -> Mapping[str, Any] | None:
    """The cell at the target size if there is one, else the largest one carried
    (else the largest one) of this mix and mode; the first found wins (newest first)."""
    mine = [c for c in cells if c.get("mix") == mix and c.get("mode") == mode]
    if not mine:
        return None
    exact = [c for c in mine if c.get("size") == TARGET_SIZE]
    if exact:
        return exact[0]
    carried = [c for c in mine if c.get("carried")]
    return max(carried or mine, key=lambda c: int(c.get("size") or 0))


def _verdict(measured: float | None, limit: float, unit: str, digits: int = 1) -> tuple[str, str]:
    if measured is None:
        return "not measured", "-"
    if measured <= limit:
        return "met", f"{fmt(limit - measured, digits, unit)} to spare"
    return "**missed**", f"by {fmt(measured - limit, digits, unit)} (x{measured / limit:.2f})"


def _where(cell: Mapping[str, Any]) -> str:
    name = _cell_name(cell)
    if cell.get("size") != TARGET_SIZE and cell.get("mix") == "long":
        name += f" (not {TARGET_SIZE:,}: the largest size measured)"
    if not cell.get("carried"):
        name += ", not carried"
    return f"{name} (run {cell.get('run', '?')})"


def target_cells(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The cells the targets are judged on, newest run first: those of full runs with
    the default observer (runs that record none used the rtc observer) and one monitor
    (the targets are one replica's); each carries its run's name."""
    return [
        {**cell, "run": name}
        for name, run in runs
        if not run.get("quick")
        for cell in run.get("cells") or []
        if cell.get("observer") == "signal" and _shards(cell) == 1
    ]


def evaluate_targets(
    cells: Sequence[Mapping[str, Any]], join_cost: Mapping[str, Any] | None = None
) -> list[dict[str, str]]:
    """The targets against the cells (newest first) and a join_cost result: where,
    measured, verdict, margin."""
    rows: list[dict[str, str]] = []

    def add(
        target: str, cell: Mapping[str, Any] | None, measured: str, verdict: str, by: str
    ) -> None:
        rows.append(
            {
                "target": target,
                "where": _where(cell) if cell is not None else "not run",
                "measured": measured,
                "verdict": verdict if cell is not None else "not measured",
                "by": by if cell is not None else "-",
            }
        )

    for mode in ("setup", "whole_call"):
        cell = _pick(cells, "long", mode)
        cpu = _get(cell, "derived", "monitor_cpu_cores")
        rss = _get(cell, "derived", "monitor_rss_mib")
        cpu_verdict, cpu_by = _verdict(cpu, 0.25, "cores", 3)
        rss_verdict, rss_by = _verdict(rss, 256.0, "MiB")
        add(
            "1,000 calls of real length within 1/4 of a core",
            cell,
            fmt(cpu, 3, "cores"),
            cpu_verdict,
            cpu_by,
        )
        add("... and 256 MiB", cell, fmt(rss, 0, "MiB"), rss_verdict, rss_by)
        p99 = _get(cell, "latency_metrics", "target_changes_ms", "p99")
        verdict, by = _verdict(p99, 50.0, "ms")
        add(
            "p99 change-to-metric latency < 50 ms at 1,000 calls",
            cell,
            fmt(p99, 1, "ms"),
            verdict,
            by,
        )
    # Where the monitor processed the most events a second: the closest to 100/s.
    busiest: tuple[float, float, Mapping[str, Any]] | None = None
    for c in cells:
        main = _get(c, "derived", "main_cpu_per_100_events_per_s")
        events = _get(c, "derived", "steady_events_per_s")
        if _number(main) and _number(events) and (busiest is None or events > busiest[0]):
            busiest = (float(events), float(main), c)
    target = "100 call events/s within 5% of a core, the main process in place"
    if busiest is not None:
        events, main, cell = busiest
        verdict, by = _verdict(main * 100, 5.0, "% of a core")
        measured = f"{main * 100:.1f}% of a core per 100 events/s at {events:.0f} events/s"
        add(target, cell, measured, verdict, by)
    else:
        add(target, None, "-", "", "")
    heavy = [c for c in cells if c.get("mix") == "setup-heavy"]
    cell = max(heavy, key=lambda c: _get(c, "load", "calls_per_second") or 0.0, default=None)
    cpu = _get(cell, "derived", "monitor_cpu_cores")
    rate = _get(cell, "load", "calls_per_second")
    verdict, by = _verdict(cpu, 0.5, "cores", 3)
    if cell is not None and (not _number(rate) or rate < 40):
        by += f"; at {fmt(rate, 1)} new calls/s, not 40"
    add(
        "40 new calls a second (setup-heavy) within 1/2 a core",
        cell,
        f"{fmt(cpu, 3, 'cores')} at {fmt(rate, 1)} new calls/s",
        verdict,
        by,
    )
    rows.append(_join_cost_target(join_cost))
    rows.append(_reconcile_target(cells))
    return rows


def _join_cost_target(join_cost: Mapping[str, Any] | None) -> dict[str, str]:
    target = "per join, 20x less monitor CPU and 5x less livekit-server CPU than rtc"
    means = (join_cost or {}).get("mean") or {}
    signal, rtc = means.get("signal") or {}, means.get("stderr") or {}
    monitor = _ratio(_get(rtc, "cpu_s_per_join"), _get(signal, "cpu_s_per_join"))
    server = _ratio(_get(rtc, "server_cpu_s_per_join"), _get(signal, "server_cpu_s_per_join"))
    if monitor is None or server is None:
        return {
            "target": target,
            "where": "not run",
            "measured": "-",
            "verdict": "not measured",
            "by": "-",
        }
    met = monitor >= 20 and server >= 5
    return {
        "target": target,
        "where": f"bench.join_cost ({join_cost.get('when', '?') if join_cost else '?'}), "
        "rtc as its observer processes run it",
        "measured": f"{monitor:.0f}x less monitor CPU, {server:.1f}x less livekit-server CPU",
        "verdict": "met" if met else "**missed**",
        "by": f"{monitor / 20:.1f}x and {server / 5:.1f}x the targets",
    }


def _ratio(rtc: Any, signal: Any) -> float | None:
    if not (_number(rtc) and _number(signal)) or not signal:
        return None
    return float(rtc) / float(signal)


def _reconcile_target(cells: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    judged: list[tuple[Mapping[str, Any], bool, str]] = []
    for c in cells:
        name = f"{c.get('size')}/{c.get('mix')}/{c.get('mode')}"
        rec_rps = _get(c, "derived", "reconcile_requests_per_s")
        poll_rps = _get(c, "derived", "poll_1s_nominal_requests_per_s")
        rec_cpu = _get(c, "derived", "reconcile_livekit_cpu_est")
        poll_cpu = _get(c, "derived", "poll_1s_livekit_cpu_est")
        if not (_number(rec_rps) and _number(poll_rps)):
            continue
        text = f"{name}: {rec_rps:.1f} vs {poll_rps:.0f} requests/s"
        if _number(rec_cpu) and _number(poll_cpu):
            text += f" ({rec_cpu * 100:.2f}% vs {poll_cpu * 100:.2f}% of a core)"
        judged.append((c, rec_rps < poll_rps, text))
    if not judged:
        return {
            "target": RECONCILE_TARGET,
            "where": "not run",
            "measured": "-",
            "verdict": "not measured",
            "by": "-",
        }
    failing = [c for c, ok, _ in judged if not ok]
    sizes = sorted({int(c.get("size") or 0) for c, _, _ in judged})
    return {
        "target": RECONCILE_TARGET,
        "where": "sizes " + ", ".join(f"{s:,}" for s in sizes),
        "measured": "ListRooms + ListParticipants per room listed every "
        "reconciliation interval vs ListParticipants per live call every 1 s, both "
        "on livekit-server (CPU: its measured cost per ListParticipants times the "
        "rate): " + "; ".join(text for _, _, text in judged),
        "verdict": "**missed**" if failing else "met",
        "by": f"in {len(failing)} of {len(judged)} cells" if failing else "at every size",
    }


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _pct(value: object) -> float | None:
    return float(value) * 100 if isinstance(value, int | float) else None


def _ms(summary: Any, key: str = "p99") -> str:
    value = _get(summary, key)
    return fmt(value, 0) if value is not None else "-"


def _run_section(run: Mapping[str, Any], name: str) -> str:
    cells: list[Mapping[str, Any]] = list(run.get("cells") or [])
    machine = run.get("machine") or {}
    versions = run.get("versions") or {}
    load = run.get("load_average") or {}
    out: list[str] = [f"### Run {name}", ""]
    out.append(f"- command: `{run.get('command', '?')}`")
    out.append(
        f"- when: {run.get('started_at', '?')} to {run.get('finished_at', '?')}; "
        f"git {versions.get('git_commit', '?')}{' (dirty)' if versions.get('git_dirty') else ''}"
    )
    out.append(
        f"- machine: {machine.get('cores')} cores, {fmt(_gib(machine.get('ram_bytes')), 1, 'GiB')} "
        f"RAM, {machine.get('cpu_model')}, kernel {machine.get('kernel')}, "
        f"Python {machine.get('python')}"
    )
    out.append(
        f"- versions: livekit-server {versions.get('livekit_server')}, "
        + ", ".join(f"{k} {v}" for k, v in sorted((versions.get("python_packages") or {}).items()))
    )
    out.append(
        f"- load average before {load.get('before')}, after {load.get('after')}; "
        f"{run.get('shared_note', '')}"
    )
    if run.get("stopped"):
        out.append(f"- stopped series: {run.get('stopped')}")
    out.append("")
    if not cells:
        out.append("No cell finished.")
        return "\n".join(out)
    out.append("Calls kept up, and whether the machine carried them:")
    out.append("")
    out.append(
        table(
            [
                "size",
                "mix",
                "mode",
                "calls up (mean)",
                "placed",
                "calls/s",
                "API errors",
                "observer",
                "PDD approximate",
                "carried",
                "limit",
            ],
            [
                [
                    c.get("size"),
                    c.get("mix"),
                    _mode(c),
                    fmt(c.get("live_calls_mean"), 0),
                    fmt(_get(c, "load", "placed")),
                    fmt(_get(c, "load", "calls_per_second"), 1),
                    fmt(_get(c, "load", "api_errors")),
                    # Runs from before the signal observer record none: they used rtc.
                    c.get("observer", "rtc"),
                    _pdd_share(c),
                    "yes" if c.get("carried") else "**no**",
                    _limit_text(c.get("limit")),
                ]
                for c in cells
            ],
        )
    )
    out += [
        "",
        "Change-to-metric latency, ms: ledger change to the first `/metrics` scrape "
        "showing it (upper bound; scrapes every ~20 ms), p50 / p99 / max; and p99 to the "
        "monitor's log line (no scrape resolution):",
        "",
    ]
    changes = [
        ("started", "join"),
        ("to:ringing", "ringing"),
        ("to:active", "active"),
        ("to:hangup", "hangup"),
        ("to:ending", "leave"),
        ("ended_total", "leave to calls_ended"),
    ]
    rows = []
    for c in cells:
        by = _get(c, "latency_metrics", "by_change_ms") or {}
        log_by = _get(c, "latency_log", "by_change_ms") or {}
        row: list[object] = [c.get("size"), c.get("mix"), _mode(c)]
        for key, _label in changes:
            s = by.get(key) or {}
            row.append(
                f"{_ms(s, 'p50')} / {_ms(s, 'p99')} / {_ms(s, 'max')} (n={s.get('n', 0)})"
                if s.get("n")
                else "-"
            )
        row.append(_ms(_get(c, "latency_metrics", "target_changes_ms")))
        row.append(_ms(_get(c, "latency_log", "target_changes_ms")))
        row.append(", ".join(f"{label} {_ms(log_by.get(key))}" for key, label in changes[1:5]))
        rows.append(row)
    out.append(
        table(
            [
                "size",
                "mix",
                "mode",
                *[label for _, label in changes],
                "p99 all changes",
                "p99 all, log",
                "log p99 by change",
            ],
            rows,
        )
    )
    out += [
        "",
        "The monitor in the `quiet` phase (scraped every 5 s): CPU in cores, RSS "
        "(monitor + observer processes) in MiB:",
        "",
    ]
    out.append(
        table(
            [
                "size",
                "mix",
                "mode",
                "CPU total",
                "main",
                "observers",
                "RSS max",
                "main",
                "observers",
                "rooms joined",
                "KiB per call (all)",
                "main KiB per tracked call",
                "MiB per joined room",
                "events/s (steady)",
                "% core per 100 ev/s",
                "/metrics KiB",
                "ms CPU per scrape",
            ],
            [
                [
                    c.get("size"),
                    c.get("mix"),
                    _mode(c),
                    fmt(_get(c, "derived", "monitor_cpu_cores"), 3),
                    fmt(_get(c, "derived", "monitor_main_cpu_cores"), 3),
                    fmt(_get(c, "phases", "quiet", "cpu_cores", "observers"), 3),
                    fmt(_get(c, "derived", "monitor_rss_mib"), 0),
                    fmt(_get(c, "derived", "monitor_main_rss_mib"), 0),
                    fmt(_get(c, "derived", "observers_rss_mib"), 0),
                    fmt(_get(c, "derived", "rooms_watched"), 0),
                    fmt(_get(c, "derived", "monitor_rss_per_call_kib"), 0),
                    fmt(_get(c, "derived", "main_rss_per_tracked_call_kib"), 1),
                    fmt(_get(c, "derived", "observer_rss_per_joined_room_mib"), 2),
                    fmt(_get(c, "derived", "steady_events_per_s"), 1),
                    fmt(_pct(_get(c, "derived", "cpu_per_100_events_per_s")), 1),
                    fmt(_get(c, "derived", "metrics_body_kib"), 0),
                    fmt(_get(c, "derived", "metrics_scrape_cpu_ms"), 1),
                ]
                for c in cells
            ],
        )
    )
    out += [
        "",
        "livekit-server's CPU (cores) by phase, the poller's request rate, and the "
        "monitor's restart (SIGKILL, away, start again):",
        "",
    ]
    out.append(
        table(
            [
                "size",
                "mix",
                "mode",
                "without monitor",
                "with monitor",
                "+ poll 1 s",
                "+ poll 100 ms",
                "poll req/s (1 s / 100 ms)",
                "ms CPU per ListParticipants",
                "reconcile req/s",
                "reconcile CPU est.",
                "restart: ready",
                "all live calls known",
                "live calls",
            ],
            [
                [
                    c.get("size"),
                    c.get("mix"),
                    _mode(c),
                    fmt(_get(c, "derived", "livekit_cpu_without_monitor"), 3),
                    fmt(_get(c, "derived", "livekit_cpu_quiet"), 3),
                    fmt(_get(c, "derived", "livekit_cpu_poll_1s"), 3),
                    fmt(_get(c, "derived", "livekit_cpu_poll_100ms"), 3),
                    f"{fmt(_get(c, 'derived', 'poll_1s_requests_per_s'), 0)} / "
                    f"{fmt(_get(c, 'derived', 'poll_100ms_requests_per_s'), 0)}",
                    fmt(_get(c, "derived", "poll_1s_livekit_ms_per_request"), 3),
                    fmt(_get(c, "derived", "reconcile_requests_per_s"), 2),
                    fmt(_get(c, "derived", "reconcile_livekit_cpu_est"), 4),
                    fmt(_get(c, "restart", "ready_s"), 1, "s"),
                    fmt(_get(c, "restart", "all_calls_known_s"), 1, "s"),
                    fmt(_get(c, "restart", "live_calls_at_restart")),
                ]
                for c in cells
            ],
        )
    )
    out += [
        "",
        "The polling alternative (ListParticipants per room): latency p50 / p99 in ms "
        "to see each status and the leave, and the share of changes it never saw:",
        "",
    ]
    rows = []
    for c in cells:
        for phase in ("poll_1s", "poll_100ms"):
            view = _get(c, "phases", phase, "poller_view") or {}
            lat = view.get("latency_ms") or {}
            missed = view.get("missed_ratio") or {}
            rows.append(
                [
                    c.get("size"),
                    c.get("mix"),
                    _mode(c),
                    phase.removeprefix("poll_"),
                    *[
                        f"{_ms(lat.get(s), 'p50')} / {_ms(lat.get(s))}"
                        for s in ("ringing", "active", "left")
                    ],
                    *[
                        fmt(_pct(missed.get(s)), 0, "%")
                        for s in ("dialing", "ringing", "hangup", "left")
                    ],
                    f"{view.get('calls_never_seen', '-')} of "
                    f"{view.get('whole_calls_in_window', '-')}",
                    "no",
                ]
            )
    out.append(
        table(
            [
                "size",
                "mix",
                "mode",
                "every",
                "ringing",
                "active",
                "leave",
                "missed dialing",
                "missed ringing",
                "missed hangup",
                "missed leave",
                "calls never seen",
                "sees leave reason",
            ],
            rows,
        )
    )
    for c in cells:
        profile = _get(c, "phases", "quiet", "profile")
        if isinstance(profile, Mapping):
            title = f"{_profile_title(profile)}, {_cell_name(c)}, quiet phase:"
            out += ["", title, ""]
            out.append(_profile_text(profile))
    return "\n".join(out)


def shard_pairs(
    runs: Sequence[tuple[str, Mapping[str, Any]]],
) -> list[tuple[Mapping[str, Any], Mapping[str, Any] | None]]:
    """Per size, mix, mode, observer and N > 1 shards: the newest N-shard cell and the
    newest one-monitor cell like it (None if there is none), newest first; each cell
    carries its run's name. Cells that failed (no `derived`) are left out."""
    cells = [
        {**cell, "run": name}
        for name, run in runs
        for cell in run.get("cells") or []
        if isinstance(cell.get("derived"), Mapping)
    ]

    def key(cell: Mapping[str, Any]) -> tuple[object, ...]:
        return (cell.get("size"), cell.get("mix"), cell.get("mode"), cell.get("observer", "rtc"))

    pairs: list[tuple[Mapping[str, Any], Mapping[str, Any] | None]] = []
    seen: set[tuple[object, ...]] = set()
    for cell in cells:
        shards = _shards(cell)
        if shards == 1 or (*key(cell), shards) in seen:
            continue
        seen.add((*key(cell), shards))
        one = next((c for c in cells if _shards(c) == 1 and key(c) == key(cell)), None)
        pairs.append((cell, one))
    return pairs


def _each(values: object, digits: int, scale: float = 1.0, unit: str = "") -> str:
    """A per-replica list as "a / b / c"."""
    if not isinstance(values, list) or not values:
        return "-"
    return " / ".join(fmt(v * scale if _number(v) else None, digits, unit) for v in values)


def _dropped_cost_ms(sharded: Mapping[str, Any], one: Mapping[str, Any] | None) -> float | None:
    """The main processes' CPU the shards add over one monitor, each replica's idle
    baseline taken off, per webhook they drop as another shard's (ms): an estimate of
    what verifying and dropping one costs."""
    if one is None:
        return None

    def busy_main(cell: Mapping[str, Any]) -> float | None:
        main = _get(cell, "derived", "steady_main_cpu_cores")
        idle = _get(cell, "baseline", "cpu_cores", "monitor_main")
        return float(main) - float(idle) if _number(main) and _number(idle) else None

    added = [busy_main(sharded), busy_main(one)]
    dropped = _get(sharded, "derived", "other_shard_webhooks_per_s")
    if added[0] is None or added[1] is None or not _number(dropped) or not dropped:
        return None
    return (added[0] - added[1]) / float(dropped) * 1000


def _dropped_text(ms: float | None) -> str:
    # Below zero the difference of the two cells is noise, not a cost.
    return "below noise" if ms is not None and ms < 0 else fmt(ms, 3)


def _shards_section(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    pairs = shard_pairs(runs)
    if not pairs:
        return []
    counts = sorted({_shards(sharded) for sharded, _ in pairs})
    rows: list[list[object]] = []
    for sharded, one in pairs:
        dropped = _dropped_cost_ms(sharded, one)
        for c in (one, sharded):
            if c is None:
                continue
            d = c.get("derived") or {}
            check = c.get("shard_check") or {}
            rows.append(
                [
                    f"{c.get('size')}, {c.get('mix')}, {c.get('mode')}",
                    _shards(c),
                    c.get("run"),
                    fmt(c.get("live_calls_mean"), 0),
                    fmt(d.get("monitor_cpu_cores"), 3),
                    fmt(d.get("replica_cpu_cores_max"), 3),
                    _each(d.get("replica_cpu_cores"), 3),
                    fmt(d.get("monitor_rss_mib"), 0),
                    _each(d.get("replica_rss_mib"), 0),
                    _ms(_get(c, "latency_metrics", "target_changes_ms")),
                    _ms(_get(c, "latency_log", "target_changes_ms")),
                    _each(d.get("replica_webhooks_per_s"), 1),
                    _each(d.get("replica_other_shard_share"), 0, 100, "%"),
                    fmt(d.get("main_cpu_ms_per_webhook"), 3),
                    _dropped_text(dropped) if c is sharded else "",
                    fmt(d.get("livekit_cpu_quiet"), 3),
                    f"{check['calls_started']:,} / {check['in_two_replicas_or_more']}"
                    if check
                    else "-",
                ]
            )
    return [
        f"## 1 versus {', '.join(str(n) for n in counts)} shards",
        "",
        "The same cell with one monitor and with replicas sharing the rooms "
        "(`--shards`, `CALL_MONITOR_SHARDS`): each replica is sent every webhook, "
        "verifies it and drops the rooms of the others (`other_shard`). The newest cell "
        "of each kind. Cores and MiB in the quiet phase (scraped every 5 s), in total "
        "(every replica's tree: main process and observers) and per replica, in shard "
        "order; p99 over all changes, to the owning replica's `/metrics` (scrapes every "
        "~20 ms) and to its log line. Over the steady phases (quiet and both polls): "
        "webhooks each replica received a second and the share it dropped as another "
        "shard's; the main processes' CPU per webhook received (all their work over "
        "the webhooks: an upper bound); what the shards add to the main processes' CPU "
        "over one monitor, each one's idle baseline taken off, per webhook dropped (an "
        "estimate, as noisy as the difference of two cells). livekit-server's CPU in "
        "the quiet phase (it sends each webhook once per replica); calls started in the "
        "replicas' logs, and how many of them in two or more (0: each counted once, by "
        "its room's owner).",
        "",
        table(
            [
                "cell",
                "shards",
                "run",
                "calls up",
                "cores",
                "replica max",
                "cores per replica",
                "MiB",
                "MiB per replica",
                "p99 ms",
                "p99 ms, log",
                "webhooks/s per replica",
                "other_shard per replica",
                "main CPU ms per webhook",
                "ms per dropped webhook (est.)",
                "livekit-server cores",
                "calls started / in 2+ replicas",
            ],
            rows,
        ),
        "",
    ]


def _profile_title(profile: Mapping[str, Any]) -> str:
    """Runs before 2026-12-04 profiled the observer processes too (`--subprocesses`)."""
    summary = profile.get("summary")
    samples = summary.get("samples") if isinstance(summary, Mapping) else None
    if isinstance(samples, Mapping) and set(samples) - {"main"}:
        return "py-spy profile of the monitor and its observer processes"
    return "py-spy profile of the monitor's main process"


def _profile_text(profile: Mapping[str, Any]) -> str:
    summary = profile.get("summary")
    if not isinstance(summary, Mapping):
        return f"(no profile: {profile.get('error', 'py-spy failed')})"
    lines: list[str] = [f"samples per process: {summary.get('samples')}", ""]
    for process in ("monitor", "main", "observer"):
        part = summary.get(process)
        if not isinstance(part, Mapping):
            continue
        for kind, where in (("own", "own time"), ("total", "time on the stack")):
            if kind == "total" and process != "main":
                continue  # the whole-tree profiles of older runs had too few samples
            lines += [f"{process}, busiest by {where}:", ""]
            rows = part.get(kind, [])
            if kind == "total":  # without the frames of the event loop itself
                rows = [e for e in rows if e["share"] < 0.9]
            rows = rows[:20]
            lines.append(
                table(
                    ["function", "share of samples"],
                    [[f"`{e['function']}`", f"{e['share']:.1%}"] for e in rows],
                )
            )
            lines.append("")
    return "\n".join(lines)


def _limit_text(limit: object) -> str:
    if not isinstance(limit, Mapping):
        return "-"
    evidence = "; ".join(str(e) for e in limit.get("evidence", []))
    return f"**{limit.get('component')}**: {evidence}"


def _gib(value: object) -> float | None:
    return float(value) / 2**30 if isinstance(value, int | float) else None


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_runs(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every run file of `python -m bench` in `directory` as (name, data), newest first."""
    runs = []
    for path in sorted(directory.glob("*.json"), reverse=True):
        data = _load_json(path)
        if data is not None and "cells" in data:
            runs.append((path.stem, data))
    return runs


def _pdd_share(cell: Mapping[str, Any]) -> str:
    """Share of outbound calls that rang whose post-dial delay was seen after the fact."""
    pdd = cell.get("post_dial_delay_approximate") or {}
    share = pdd.get("share")
    if share is None:
        return "-"
    return f"{fmt(share * 100, 1, '%')} of {pdd.get('calls_rang')}"


def load_focused(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """The newest `bench.join_cost` and `bench.hot_path` results, as (name, data)."""
    found = []
    for prefix in ("join-cost-", "hot-path-", "journal-fsync-"):
        paths = sorted(directory.glob(f"{prefix}*.json"), reverse=True)
        data = _load_json(paths[0]) if paths else None
        if data is not None:
            found.append((paths[0].stem, data))
    return found


def _focused_section(name: str, data: Mapping[str, Any]) -> list[str]:
    command = f"`{data.get('command', '?')}`, {data.get('when', '?')}"
    if name.startswith("join-cost-"):
        means = data.get("mean") or {}
        rows = [
            [
                variant,
                fmt(_get(numbers, "cpu_s_per_join"), 4, "CPU-s"),
                fmt(_get(numbers, "server_cpu_s_per_join"), 4, "CPU-s"),
                fmt(_get(numbers, "join_wall_s_each"), 3, "s"),
                fmt(_get(numbers, "idle_pct_core_per_room"), 3, "%"),
                fmt(_get(numbers, "server_idle_pct_core_per_room"), 3, "%"),
                fmt(_get(numbers, "rss_mib"), 0, "MiB"),
            ]
            for variant, numbers in means.items()
        ]
        return [
            f"### A room connection, by observer ({name})",
            "",
            f"{command}. `signal`: the default observer, on the signal WebSocket alone; "
            "`stderr`: the rtc observer as its observer processes run it (the SDK's "
            "native log records to stderr); `python`: the rtc observer with the SDK's "
            "default, every record handed to Python. Means over the runs, rooms joined "
            "one at a time; the idle hold includes the signal observer's pings and "
            "renewals:",
            "",
            table(
                [
                    "observer",
                    "CPU per join",
                    "livekit-server CPU per join",
                    "join time",
                    "idle, % core per room",
                    "livekit-server idle, % core per room",
                    "peak RSS of the process",
                ],
                rows,
            ),
        ]
    if name.startswith("journal-fsync-"):
        rows = [
            [
                policy,
                fmt(_get(numbers, "webhooks_per_second"), 0),
                fmt(_get(numbers, "answer_ms_p50"), 2, "ms"),
                fmt(_get(numbers, "answer_ms_p99"), 2, "ms"),
                fmt(_get(numbers, "monitor_cpu_ms_per_webhook"), 3, "ms"),
            ]
            for policy, numbers in (data.get("mean") or {}).items()
        ]
        return [
            f"### The journal's fsync policy under a stream of webhooks ({name})",
            "",
            f"{command}. Each webhook is answered once its event is journaled; `batch` "
            "waits for an fsync too (one shared by the requests waiting at the time). "
            "Means over the runs:",
            "",
            table(
                ["policy", "webhooks/s", "answer p50", "answer p99", "monitor CPU per webhook"],
                rows,
            ),
        ]
    plain, profiled = data.get("unprofiled") or {}, data.get("profiled") or {}
    top = [
        [fmt(row.get("own_share", 0) * 100, 1, "%"), f"`{row.get('function')}`"]
        for row in (profiled.get("top") or [])[:10]
    ]
    return [
        f"### The main process's own path per event ({name})",
        "",
        f"{command}: {plain.get('events')} events, "
        f"{fmt(plain.get('cpu_ms_per_event'), 3, 'ms')} of CPU each "
        f"({plain.get('events_per_cpu_second')} events per CPU-second; 100 events/s is "
        f"{fmt(_pct((plain.get('cpu_ms_per_event') or 0) / 10), 1, '%')} of a core). "
        "Busiest by own time (cProfile):",
        "",
        table(["own time", "function"], top),
    ]


def render(
    runs: Sequence[tuple[str, Mapping[str, Any]]],
    notes: str = "",
    focused: Sequence[tuple[str, Mapping[str, Any]]] = (),
) -> str:
    """The whole RESULTS.md."""
    out = [
        "# Benchmark results",
        "",
        "Generated by `python -m bench` (or `python -m bench --report-only`) from the run "
        "files in `bench/results/`; hand-written notes come from `bench/notes.md`. What "
        "each number means: `bench/README.md`.",
        "",
    ]
    # The targets are judged on every full run of the default observer, newest first:
    # each target on the newest cell that measured it.
    cells = target_cells(runs)
    join_cost = next((data for name, data in focused if name.startswith("join-cost-")), None)
    if not runs:
        out.append("No runs yet.")
    else:
        names = sorted({str(c["run"]) for c in cells}, reverse=True)
        out += [f"## Targets (runs {', '.join(names) if names else 'none yet'})", ""]
        out.append(
            table(
                ["target", "where", "measured", "verdict", "margin"],
                [
                    [r["target"], r["where"], r["measured"], r["verdict"], r["by"]]
                    for r in evaluate_targets(cells, join_cost)
                ],
            )
        )
        out.append("")
        out += _shards_section(runs)
        if focused:
            out += ["## Focused measurements", ""]
            for focused_name, data in focused:
                out += [*_focused_section(focused_name, data), ""]
        out += ["## Runs", ""]
        for run_name, data in runs:
            out.append(_run_section(data, run_name + (" (quick)" if data.get("quick") else "")))
            out.append("")
    if notes.strip():
        out += [notes.rstrip(), ""]
    return "\n".join(out)
