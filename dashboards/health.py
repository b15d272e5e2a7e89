"""The "Monitor health" dashboard: is the call monitor itself working?

Scrape status, readiness, its LiveKit room connections, its inputs (webhooks, HTTP,
events and their lag), anomalies, the journal and reconciliation. Every panel reads the
raw metrics over `$__rate_interval`; none needs a recording rule.
"""

from __future__ import annotations

from dataclasses import replace

from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards.core import Board, Query, stat_panel, table_panel, timeseries_panel
from dashboards.variables import datasource_variable, query_variable

__all__ = ["UID", "health_board"]

UID = "call-monitor-health"

MONITOR = 'job=~"$job", instance=~"$instance"'


def _per_minute(metric: str, by: str, legend: str, ref_id: str = "A") -> Query:
    return Query(
        expr=f"60 * sum by ({by}) (rate({metric}{{{MONITOR}}}[$__rate_interval]))",
        legend=legend,
        ref_id=ref_id,
    )


def _quantiles(metric: str, by: str, legend: str) -> list[Query]:
    return [
        Query(
            expr=(
                f"histogram_quantile({q}, sum by ({by}, le) "
                f"(rate({metric}_bucket{{{MONITOR}}}[$__rate_interval])))"
            ),
            legend=f"{name} {legend}",
            ref_id=ref_id,
        )
        for ref_id, name, q in (("A", "p50", "0.5"), ("B", "p99", "0.99"))
    ]


def health_board() -> Board:
    board = Board(
        uid=UID,
        title="Monitor health",
        description=(
            "Whether the call monitor itself works: scrapes, readiness, the LiveKit rooms "
            "it watches, its webhooks and events, anomalies, journal and reconciliation."
        ),
        tags=["call-monitor", "livekit"],
        variables=[
            datasource_variable(
                "datasource",
                "prometheus",
                "Prometheus",
                "prometheus",
                "Prometheus that scrapes the call monitor.",
            ),
            query_variable(
                "job",
                "Job",
                "label_values(call_monitor_build_info, job)",
                "Prometheus jobs that scrape a call monitor.",
                match_all=False,
            ),
            query_variable(
                "instance",
                "Instance",
                'label_values(call_monitor_build_info{job=~"$job"}, instance)',
                "Call monitor processes (scrape targets) of the chosen jobs.",
            ),
        ],
    )

    board.row("Status")
    board.add(
        stat_panel(
            "Up",
            "Whether Prometheus could scrape each monitor's /metrics on its last try.",
            "none",
            [Query(expr=f"up{{{MONITOR}}}", legend="{{instance}}")],
            width=4,
            mappings={"0": ("DOWN", "red"), "1": ("UP", "green")},
            thresholds=[(1, "green")],
            base_color="red",
            graph=False,
        )
    )
    board.add(
        stat_panel(
            "Ready",
            "Whether each monitor has reached LiveKit's API and reconciled its calls "
            "(what /readyz answers).",
            "none",
            [Query(expr=f"call_monitor_ready{{{MONITOR}}}", legend="{{instance}}")],
            width=4,
            mappings={"0": ("NOT READY", "red"), "1": ("READY", "green")},
            thresholds=[(1, "green")],
            base_color="red",
            graph=False,
        )
    )
    board.add(
        stat_panel(
            "Rooms watched now",
            "LiveKit rooms the monitor's hidden observer is connected to right now.",
            "short",
            [Query(expr=f"sum(call_monitor_rooms_watched{{{MONITOR}}})", legend="rooms")],
            width=4,
            decimals=0,
        )
    )
    board.add(
        stat_panel(
            "Anomalies in range",
            "Input a well-behaved livekit-sip and server would not produce, counted over "
            "the dashboard's time range (the panel below has them by kind).",
            "short",
            [
                Query(
                    expr=(
                        f"sum(increase(call_monitor_anomalies_total{{{MONITOR}}}[$__range]))"
                        " or vector(0)"
                    ),
                    legend="anomalies",
                    instant=True,
                )
            ],
            width=4,
            thresholds=[(1, "yellow")],
            base_color="green",
            decimals=0,
            graph=False,
        )
    )
    board.add(
        table_panel(
            "Build info",
            "Version of each running monitor, with its Python and LiveKit SDK versions, and "
            "its shard of the rooms.",
            "none",
            [
                Query(
                    expr=f"call_monitor_build_info{{{MONITOR}}}",
                    legend="{{instance}} {{version}}",
                    instant=True,
                    format=PromQueryFormat.TABLE,
                )
            ],
            columns={
                "instance": "Instance",
                "version": "Version",
                "python": "Python",
                "livekit_sdk": "LiveKit SDK",
                "shard": "Shard",
                "shards": "of shards",
            },
            hidden=["Value", "__name__", "job"],
            width=8,
            height=4,
        )
    )

    board.row("LiveKit rooms")
    board.add(
        timeseries_panel(
            "Rooms watched",
            "LiveKit rooms the hidden observer is connected to, per monitor (in setup mode "
            "only while a call there is being set up).",
            "short",
            [Query(expr=f"call_monitor_rooms_watched{{{MONITOR}}}", legend="{{instance}}")],
            width=8,
            min_value=0,
        )
    )
    board.add(
        timeseries_panel(
            "Room connects by result",
            "Attempts of the observer to join a call's room per minute, successful or "
            "failed (failures are retried with backoff).",
            "cpm",
            [_per_minute("call_monitor_room_connects_total", "result", "{{result}}")],
            width=8,
            min_value=0,
            red_series="failure",
        )
    )
    board.add(
        timeseries_panel(
            "Room connections lost, rejoined, renewed",
            "Per minute: room connections that ended while the room mattered, by why (a "
            "leave reason, ping_timeout, socket_closed...); connections re-established; "
            "signal sessions renewed before livekit-server's one-minute join timeout, by "
            "result (a failure is retried; README, 'The room observer').",
            "cpm",
            [
                _per_minute(
                    "call_monitor_room_reconnects_total", "instance", "rejoined {{instance}}"
                ),
                replace(
                    _per_minute(
                        "call_monitor_room_connections_lost_total",
                        "reason",
                        "lost: {{reason}}",
                        "B",
                    ),
                    empty_reason="no series until a room connection is lost",
                ),
                _per_minute(
                    "call_monitor_room_renewals_total", "result", "renewal {{result}}", "C"
                ),
            ],
            width=8,
            min_value=0,
        )
    )

    board.row("Inputs")
    board.add(
        timeseries_panel(
            "Webhook requests by result",
            "Webhooks received from livekit-server per second, by result (ok, ignored, "
            "or refused: unauthorized, bad_request, too_large, error).",
            "reqps",
            [
                Query(
                    expr=(
                        "sum by (result) (rate(call_monitor_webhook_requests_total"
                        f"{{{MONITOR}}}[$__rate_interval]))"
                    ),
                    legend="{{result}}",
                )
            ],
            min_value=0,
            red_series="unauthorized|bad_request|too_large|error",
        )
    )
    board.add(
        timeseries_panel(
            "HTTP bad requests",
            "Requests the monitor refused with a 4xx per second, by endpoint and status "
            "code (401 bad signature or token, 413 too large, 400 malformed).",
            "reqps",
            [
                Query(
                    expr=(
                        "sum by (endpoint, code) (rate(call_monitor_http_bad_requests_total"
                        f"{{{MONITOR}}}[$__rate_interval]))"
                    ),
                    legend="{{endpoint}} {{code}}",
                    empty_reason="the series appears only after a refused request",
                )
            ],
            min_value=0,
        )
    )
    board.add(
        timeseries_panel(
            "Events per second",
            "Events processed per second by source (room, webhook, reconcile, dial) and "
            "event type.",
            "eps",
            [
                Query(
                    expr=(
                        "sum by (source, type) (rate(call_monitor_events_total"
                        f"{{{MONITOR}}}[$__rate_interval]))"
                    ),
                    legend="{{source}} {{type}}",
                )
            ],
            min_value=0,
        )
    )
    board.add(
        timeseries_panel(
            "Event lag",
            "Time from an event reaching the monitor (a webhook, an observer process's "
            "line, a listing) to its processing, median and 99th percentile by source: "
            "seconds mean the monitor is behind.",
            "s",
            _quantiles("call_monitor_event_lag_seconds", "source", "{{source}}"),
            min_value=0,
        )
    )

    board.row("Internals")
    board.add(
        timeseries_panel(
            "Anomalies by kind",
            "Odd input per minute by kind (docs/outcomes.md#anomalies); the monitor "
            "carries on, but a steady rate points at a livekit-sip quirk or a bug.",
            "cpm",
            [_per_minute("call_monitor_anomalies_total", "kind", "{{kind}}")],
            min_value=0,
        )
    )
    board.add(
        timeseries_panel(
            "Journal write errors",
            "Events per minute that could not be written to the replay journal "
            "(a full or read-only disk), and last lines found cut at a start (the "
            "monitor killed mid-write: set aside in a .partial- file); anything above "
            "zero needs a look.",
            "cpm",
            [
                _per_minute("call_monitor_journal_write_errors_total", "instance", "{{instance}}"),
                _per_minute(
                    "call_monitor_journal_partial_lines_total",
                    "instance",
                    "{{instance}} cut line set aside",
                    ref_id="B",
                ),
            ],
            min_value=0,
            red_series=".*",
        )
    )
    board.add(
        timeseries_panel(
            "Calls restored from the journal at start",
            "Calls that were open in each monitor's journal when it started, brought back "
            "with their timings (a restart after a crash or a deploy); their ends are "
            "counted once, by the process that sees them.",
            "short",
            [Query(expr=f"call_monitor_restored_calls{{{MONITOR}}}", legend="{{instance}}")],
            min_value=0,
        )
    )
    board.add(
        timeseries_panel(
            "Reconcile runs by result, and its requests",
            "Passes per minute that compare LiveKit's room and participant listings with "
            "the known calls, successful or failed; and the RoomService requests they "
            "made per minute (a ListRooms each, a ListParticipants per room asked), the "
            "load reconciliation puts on livekit-server.",
            "cpm",
            [
                _per_minute("call_monitor_reconcile_runs_total", "result", "{{result}}"),
                _per_minute(
                    "call_monitor_reconcile_requests_total",
                    "instance",
                    "{{instance}} requests",
                    ref_id="B",
                ),
            ],
            min_value=0,
            red_series="failure",
        )
    )
    board.add(
        timeseries_panel(
            "Reconcile duration",
            "How long one reconciliation pass took, median and 99th percentile per monitor.",
            "s",
            _quantiles("call_monitor_reconcile_duration_seconds", "instance", "{{instance}}"),
            min_value=0,
        )
    )
    board.add(
        timeseries_panel(
            "Calls counted as trunk=other",
            "Calls per minute whose trunk folded into trunk=other because more distinct "
            "trunks were seen than the label limit (200 by default).",
            "cpm",
            [_per_minute("call_monitor_trunk_label_overflow_total", "instance", "{{instance}}")],
            min_value=0,
        )
    )
    board.row("The monitor's process")
    board.add(
        timeseries_panel(
            "Memory",
            "Resident memory of each monitor's main process (the rtc fallback's observer "
            "processes are not in it), and its virtual memory.",
            "bytes",
            [
                Query(
                    expr=f"call_monitor_process_resident_memory_bytes{{{MONITOR}}}",
                    legend="{{instance}} resident",
                ),
                Query(
                    expr=f"call_monitor_process_virtual_memory_bytes{{{MONITOR}}}",
                    legend="{{instance}} virtual",
                    ref_id="B",
                ),
            ],
            width=8,
            min_value=0,
        )
    )
    board.add(
        timeseries_panel(
            "CPU",
            "Cores each monitor's main process uses. One process is one event loop: near "
            "1.0 it cannot keep up.",
            "none",
            [
                Query(
                    expr=(
                        f"sum by (instance) "
                        f"(rate(call_monitor_process_cpu_seconds_total{{{MONITOR}}}"
                        "[$__rate_interval]))"
                    ),
                    legend="{{instance}}",
                )
            ],
            width=8,
            min_value=0,
        )
    )
    board.add(
        timeseries_panel(
            "Open files and restarts",
            "File descriptors each monitor holds (a connection each: webhooks, rooms, "
            "scrapes) against its limit, and its restarts in the range (its start time "
            "changing).",
            "short",
            [
                Query(
                    expr=f"call_monitor_process_open_fds{{{MONITOR}}}",
                    legend="{{instance}} open",
                ),
                Query(
                    expr=f"call_monitor_process_max_fds{{{MONITOR}}}",
                    legend="{{instance}} limit",
                    ref_id="B",
                ),
                Query(
                    expr=(
                        f"changes(call_monitor_process_start_time_seconds{{{MONITOR}}}[$__range])"
                    ),
                    legend="{{instance}} restarts",
                    ref_id="C",
                ),
            ],
            width=8,
            min_value=0,
            red_series=".*restarts",
        )
    )
    board.add(
        timeseries_panel(
            "Replicas up, of the shards",
            "Monitor replicas Prometheus scrapes, against the shards the replicas share the "
            "rooms in (CALL_MONITOR_SHARDS; 1 for one monitor). Fewer up than shards: some "
            "rooms are counted by no one (CallMonitorShardsMissing).",
            "short",
            [
                Query(expr=f"count(up{{{MONITOR}}} == 1)", legend="replicas up"),
                Query(expr=f"max(call_monitor_shards{{{MONITOR}}})", legend="shards", ref_id="B"),
            ],
            width=8,
            min_value=0,
        )
    )
    return board
