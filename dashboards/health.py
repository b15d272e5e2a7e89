"""The "Monitor health" dashboard: is the call monitor itself working?

Scrape status, readiness, its LiveKit room connections, its inputs (webhooks, HTTP,
events and their lag), anomalies, the journal and reconciliation. Every panel reads the
raw metrics over `$__rate_interval`; none needs a recording rule.

With several replicas (shards), the panels about a process (up, ready, rooms watched,
webhooks, lag, journal, reconciliation, memory, CPU) have one series per replica, named
by its shard from `call_monitor_build_info`; the panels by cause (anomaly kinds, event
types, lost connections, bad requests) and the totals sum across replicas.
"""

from __future__ import annotations

from dataclasses import replace

from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards.core import Board, Query, stat_panel, table_panel, timeseries_panel
from dashboards.variables import datasource_variable, query_variable

__all__ = ["UID", "health_board"]

UID = "call-monitor-health"

MONITOR = 'job=~"$job", instance=~"$instance"'
BUILD_INFO = f"call_monitor_build_info{{{MONITOR}}}"
# A replica's series is named by its shard and its instance (several monitors that are
# not sharded are all shard 0).
REPLICA = "shard {{shard}} {{instance}}"


def _by_replica(expr: str) -> str:
    """`expr`, whose series each come from one instance, with that replica's `shard`
    label: its build info comes in the same scrape, so it is there when they are."""
    return f"{expr} * on (instance) group_left (shard) {BUILD_INFO}"


def _per_minute(metric: str, by: str, legend: str, ref_id: str = "A") -> Query:
    return Query(
        expr=f"60 * sum by ({by}) (rate({metric}{{{MONITOR}}}[$__rate_interval]))",
        legend=legend,
        ref_id=ref_id,
    )


def _per_replica_per_minute(metric: str, by: str, legend: str, ref_id: str = "A") -> Query:
    """Per minute per replica (and by `by`, if any), each with its shard."""
    query = _per_minute(metric, f"instance, {by}" if by else "instance", legend, ref_id)
    return replace(query, expr=_by_replica(query.expr))


def _replica_quantiles(metric: str, by: str, legend: str) -> list[Query]:
    """Median and 99th percentile per replica (and by `by`, if any), each with its shard:
    the buckets of one replica summed, never those of several."""
    group = f"instance, {by}, le" if by else "instance, le"
    return [
        Query(
            expr=_by_replica(
                f"histogram_quantile({q}, sum by ({group}) "
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
            "Whether Prometheus could scrape each replica's /metrics on its last try.",
            "none",
            [
                Query(
                    # A replica down has no build info now: its shard is taken from the
                    # last hour's (one per instance, across a version change), and one
                    # never scraped in that hour is shown without.
                    expr=(
                        f"up{{{MONITOR}}} * on (instance) group_left (shard) "
                        f"topk by (instance) (1, last_over_time({BUILD_INFO}[1h]))"
                        f" or on (instance) up{{{MONITOR}}}"
                    ),
                    legend=REPLICA,
                )
            ],
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
            "Whether each replica has reached LiveKit's API and reconciled its calls "
            "(what /readyz answers).",
            "none",
            [Query(expr=_by_replica(f"call_monitor_ready{{{MONITOR}}}"), legend=REPLICA)],
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
            "LiveKit rooms the monitor's hidden observers are connected to right now, all "
            "replicas together.",
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
            "the dashboard's time range by all replicas (the panel below has them by kind).",
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
            "LiveKit rooms the hidden observer is connected to, per replica (in setup mode "
            "only while a call there is being set up).",
            "short",
            [
                Query(
                    expr=_by_replica(f"call_monitor_rooms_watched{{{MONITOR}}}"),
                    legend=REPLICA,
                )
            ],
            width=8,
            min_value=0,
        )
    )
    board.add(
        timeseries_panel(
            "Room connects by result",
            "Attempts of each replica's observer to join a call's room per minute, "
            "successful or failed (failures are retried with backoff).",
            "cpm",
            [
                _per_replica_per_minute(
                    "call_monitor_room_connects_total", "result", f"{REPLICA} {{{{result}}}}"
                )
            ],
            width=8,
            min_value=0,
            red_series=".* failure",
        )
    )
    board.add(
        timeseries_panel(
            "Room connections lost, rejoined, renewed",
            "Per minute: room connections that ended while the room mattered, by why (a "
            "leave reason, ping_timeout, socket_closed...); connections re-established, "
            "per replica; signal sessions renewed before livekit-server's one-minute join "
            "timeout, by result (a failure is retried; README, 'The room observer').",
            "cpm",
            [
                _per_replica_per_minute(
                    "call_monitor_room_reconnects_total", "", f"rejoined {REPLICA}"
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
            "Webhooks received from livekit-server per second by each replica, by result "
            "(ok, other_shard: another replica's room, ignored, not_a_call, or refused: "
            "unauthorized, bad_request, too_large, error); every replica gets every "
            "webhook, so one that gets none is missing from livekit-server's webhook.urls.",
            "reqps",
            [
                Query(
                    expr=_by_replica(
                        "sum by (instance, result) (rate(call_monitor_webhook_requests_total"
                        f"{{{MONITOR}}}[$__rate_interval]))"
                    ),
                    legend=f"{REPLICA} {{{{result}}}}",
                )
            ],
            min_value=0,
            red_series=".* (unauthorized|bad_request|too_large|error)",
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
            "line, a listing) to its processing, median and 99th percentile per replica "
            "and source: seconds mean that replica is behind.",
            "s",
            _replica_quantiles(
                "call_monitor_event_lag_seconds", "source", f"{REPLICA} {{{{source}}}}"
            ),
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
                _per_replica_per_minute("call_monitor_journal_write_errors_total", "", REPLICA),
                _per_replica_per_minute(
                    "call_monitor_journal_partial_lines_total",
                    "",
                    f"{REPLICA} cut line set aside",
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
            "Calls that were open in each replica's journal when it started, brought back "
            "with their timings (a restart after a crash or a deploy); their ends are "
            "counted once, by the process that sees them.",
            "short",
            [
                Query(
                    expr=_by_replica(f"call_monitor_restored_calls{{{MONITOR}}}"),
                    legend=REPLICA,
                )
            ],
            min_value=0,
        )
    )
    board.add(
        timeseries_panel(
            "Reconcile runs by result, and its requests",
            "Passes per minute of each replica that compare LiveKit's room and participant "
            "listings with the known calls, successful or failed; and the RoomService "
            "requests they made per minute (a ListRooms each, a ListParticipants per room "
            "asked), the load reconciliation puts on livekit-server.",
            "cpm",
            [
                _per_replica_per_minute(
                    "call_monitor_reconcile_runs_total", "result", f"{REPLICA} {{{{result}}}}"
                ),
                _per_replica_per_minute(
                    "call_monitor_reconcile_requests_total",
                    "",
                    f"{REPLICA} requests",
                    ref_id="B",
                ),
            ],
            min_value=0,
            red_series=".* failure",
        )
    )
    board.add(
        timeseries_panel(
            "Reconcile duration",
            "How long one reconciliation pass took, median and 99th percentile per replica.",
            "s",
            _replica_quantiles("call_monitor_reconcile_duration_seconds", "", REPLICA),
            min_value=0,
        )
    )
    board.add(
        timeseries_panel(
            "Calls counted as trunk=other",
            "Calls per minute whose trunk folded into trunk=other because more distinct "
            "trunks were seen than the label limit (200 by default, per replica).",
            "cpm",
            [_per_replica_per_minute("call_monitor_trunk_label_overflow_total", "", REPLICA)],
            min_value=0,
        )
    )
    board.row("The monitor's process")
    board.add(
        timeseries_panel(
            "Memory",
            "Resident memory of each replica's main process (the rtc fallback's observer "
            "processes are not in it), and its virtual memory.",
            "bytes",
            [
                Query(
                    expr=_by_replica(f"call_monitor_process_resident_memory_bytes{{{MONITOR}}}"),
                    legend=f"{REPLICA} resident",
                ),
                Query(
                    expr=_by_replica(f"call_monitor_process_virtual_memory_bytes{{{MONITOR}}}"),
                    legend=f"{REPLICA} virtual",
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
            "Cores each replica's main process uses. One process is one event loop: near "
            "1.0 it cannot keep up.",
            "none",
            [
                Query(
                    expr=_by_replica(
                        f"sum by (instance) "
                        f"(rate(call_monitor_process_cpu_seconds_total{{{MONITOR}}}"
                        "[$__rate_interval]))"
                    ),
                    legend=REPLICA,
                )
            ],
            width=8,
            min_value=0,
        )
    )
    board.add(
        timeseries_panel(
            "Open files and restarts",
            "File descriptors each replica holds (a connection each: webhooks, rooms, "
            "scrapes) against its limit, and its restarts in the range (its start time "
            "changing).",
            "short",
            [
                Query(
                    expr=_by_replica(f"call_monitor_process_open_fds{{{MONITOR}}}"),
                    legend=f"{REPLICA} open",
                ),
                Query(
                    expr=_by_replica(f"call_monitor_process_max_fds{{{MONITOR}}}"),
                    legend=f"{REPLICA} limit",
                    ref_id="B",
                ),
                Query(
                    expr=_by_replica(
                        f"changes(call_monitor_process_start_time_seconds{{{MONITOR}}}[$__range])"
                    ),
                    legend=f"{REPLICA} restarts",
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
            "Monitor replicas Prometheus scrapes, and those of them ready, against the "
            "shards the replicas share the rooms in (CALL_MONITOR_SHARDS; 1 for one "
            "monitor). Fewer up than shards: some rooms are counted by no one "
            "(CallMonitorShardsMissing); fewer ready: a replica cannot see livekit-server.",
            "short",
            [
                Query(expr=f"count(up{{{MONITOR}}} == 1)", legend="replicas up"),
                Query(expr=f"max(call_monitor_shards{{{MONITOR}}})", legend="shards", ref_id="B"),
                Query(
                    expr=f"count(call_monitor_ready{{{MONITOR}}} == 1)",
                    legend="replicas ready",
                    ref_id="C",
                ),
            ],
            width=8,
            min_value=0,
        )
    )
    return board
