"""The "Calls" dashboard: what happened to the calls, per trunk and direction.

Ratios read the recording rules (`trunk_direction:...`, summed by trunk and direction,
windows 5m, 30m, 1h, 6h); rates and histograms read the raw counters over
`$__rate_interval`, so they follow the dashboard's zoom and fill within a minute or two
of a fresh start.

Every query sums over the monitor's instances: with several replicas (shards), each call
is counted by the one replica that owns its room, so the sums count it once, ratios are
taken from the sums and percentiles from the summed buckets.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards.core import (
    LOKI_STREAM,
    Board,
    Query,
    explore_logs_link,
    heatmap_panel,
    logs_panel,
    stat_panel,
    table_panel,
    timeseries_panel,
)
from dashboards.variables import MATCH_ALL, all_selected, datasource_variable, query_variable

__all__ = ["UID", "calls_board"]

UID = "call-monitor-calls"

# The label matchers every call panel applies; the variables are regex matchers.
CALLS = 'trunk=~"$trunk", direction=~"$direction"'
ANSWERED = 'outcome=~"completed|dropped"'
FAILED = 'outcome=~"trunk_failure|forbidden|failed"'
QUANTILES = (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99"))

# Log searches for the data links: `call_ended` summary lines of the clicked series.
_ENDED = f'{LOKI_STREAM} | json | event="call_ended"'
FAILED_DIALS_LOGQL = (
    f'{_ENDED} | trunk_id="${{__field.labels.trunk}}"'
    f' | direction="${{__field.labels.direction}}" | {FAILED}'
)
# The outcomes panel has one series per outcome: the trunk and direction come from the
# dashboard's pickers (`pipe` leaves ids unescaped, so the JSON of the link stays valid).
OUTCOME_LOGQL = (
    f'{_ENDED} | outcome="${{__field.labels.outcome}}"'
    " | trunk_id=~`${trunk:pipe}` | direction=~`${direction:pipe}`"
)
DROPPED_LOGQL = (
    f'{_ENDED} | outcome="dropped" | trunk_id="${{__field.labels.trunk}}"'
    ' | direction="${__field.labels.direction}"'
)
# Incident search: raw strings (backquotes) keep the regex escapes of `:regex` intact;
# an empty call id becomes `.*` and "All" is `.*`, so both match every line.
CALL_LOGS_LOGQL = (
    f"{LOKI_STREAM} | json"
    " | call_id=~`${call_id:regex}.*`"
    " | trunk_id=~`${trunk:regex}`"
    " | direction=~`${direction:regex}`"
)

_SHORT_RUN = "a call is live for seconds, so scrapes may fall between calls"


def _rule(name: str, window: str) -> str:
    return f"trunk_direction:call_monitor_{name}{window}{{{CALLS}}}"


def _quantiles(metric: str, by: str, legend: str, matchers: str = CALLS) -> list[Query]:
    return [
        Query(
            expr=(
                f"histogram_quantile({q}, sum by ({by}, le) "
                f"(rate({metric}_bucket{{{matchers}}}[$__rate_interval])))"
            ),
            legend=f"{name} {legend}",
            ref_id=chr(ord("A") + index),
        )
        for index, (name, q) in enumerate(QUANTILES)
    ]


def _buckets(metric: str, matchers: str = CALLS) -> Query:
    return Query(
        expr=f"sum by (le) (increase({metric}_bucket{{{matchers}}}[$__rate_interval]))",
        legend="{{le}}",
        format=PromQueryFormat.HEATMAP,
    )


def calls_board() -> Board:
    board = Board(
        uid=UID,
        title="Calls",
        description=(
            "What happened to the SIP calls the call monitor watched: live calls, "
            "attempts, answers, outcomes, disconnect reasons and timings, per trunk and "
            "direction, with the logs of the calls behind them."
        ),
        tags=["call-monitor", "telephony", "livekit"],
        variables=[
            datasource_variable(
                "datasource",
                "prometheus",
                "Prometheus",
                "prometheus",
                "Prometheus with the call monitor's metrics and recording rules.",
            ),
            datasource_variable(
                "loki_datasource",
                "loki",
                "Loki",
                "loki",
                'Loki with the call monitor\'s log lines (stream {service="call-monitor"}).',
            ),
            query_variable(
                "trunk",
                "Trunk",
                "label_values(call_monitor_calls_started_total, trunk)",
                "SIP trunk ids (sip.trunkID) seen in calls; other means past the label limit.",
            ),
            dashboard_builders.CustomVariable("direction")
            .label("Direction")
            .description("Inbound (a dispatch rule) or outbound (CreateSIPParticipant) calls.")
            .values("inbound,outbound")
            .multi(True)
            .include_all(True)
            .all_value(MATCH_ALL)
            .current(all_selected())
            .options(
                [
                    dashboard_models.VariableOption(selected=True, text="All", value="$__all"),
                    dashboard_models.VariableOption(
                        selected=False, text="inbound", value="inbound"
                    ),
                    dashboard_models.VariableOption(
                        selected=False, text="outbound", value="outbound"
                    ),
                ]
            ),
            dashboard_builders.TextBoxVariable("call_id")
            .label("Call id")
            .description("Start of a call id (sip.callID, SCL_...) for the logs panel.")
            .default_value("")
            .current(dashboard_models.VariableOption(selected=False, text="", value="")),
        ],
    )

    board.row("Overview")
    board.add(
        stat_panel(
            "Active calls",
            "Calls not yet final right now: dialing, ringing, answered or ending.",
            "short",
            [
                Query(
                    expr=f"sum(call_monitor_calls{{{CALLS}}}) or vector(0)",
                    legend="active calls",
                )
            ],
            decimals=0,
        )
    )
    board.add(
        stat_panel(
            "Call attempts in range",
            "Calls started (a SIP participant seen) during the dashboard's time range.",
            "short",
            [
                Query(
                    expr=(
                        f"sum(increase(call_monitor_calls_started_total{{{CALLS}}}[$__range]))"
                        " or vector(0)"
                    ),
                    legend="attempts",
                    instant=True,
                )
            ],
            decimals=0,
            graph=False,
        )
    )
    board.add(
        stat_panel(
            "Answer-seizure ratio (1h)",
            "Share of the calls ended in the last hour that had been answered "
            "(completed or dropped), from the 1h recording rules.",
            "percentunit",
            [
                Query(
                    expr=(
                        f"(sum({_rule('calls_answered:rate', '1h')}) or vector(0))"
                        f" / (sum({_rule('calls_ended:rate', '1h')}) > 0)"
                    ),
                    legend="answer-seizure ratio",
                )
            ],
            thresholds=[(0.3, "yellow"), (0.5, "green")],
            base_color="red",
        )
    )
    board.add(
        stat_panel(
            "Failed-dial ratio (1h)",
            "Share of the calls ended in the last hour that failed on the trunk's or "
            "our side (trunk_failure, forbidden, failed), from the 1h recording rules.",
            "percentunit",
            [
                Query(
                    expr=(
                        f"(sum({_rule('calls_failed:rate', '1h')}) or vector(0))"
                        f" / (sum({_rule('calls_ended:rate', '1h')}) > 0)"
                    ),
                    legend="failed-dial ratio",
                )
            ],
            thresholds=[(0.05, "yellow"), (0.15, "red")],
            base_color="green",
        )
    )

    board.row("Traffic")
    board.add(
        timeseries_panel(
            "Active calls by state",
            "Calls not yet final, by their state (dialing, ringing, automation, active, "
            "hangup, ending); a gap means no call was live at that scrape.",
            "short",
            [
                Query(
                    expr=f"sum by (state) (call_monitor_calls{{{CALLS}}})",
                    legend="{{state}}",
                    empty_reason=_SHORT_RUN,
                )
            ],
            stacked=True,
        )
    )
    board.add(
        timeseries_panel(
            "Call attempts and answers per minute",
            "Calls started and calls answered per minute by trunk and direction, from the "
            "raw counters over $__rate_interval (live within a minute of a fresh start); "
            "an answer is counted when its call ends.",
            "cpm",
            [
                Query(
                    expr=(
                        "60 * sum by (trunk, direction) "
                        f"(rate(call_monitor_calls_started_total{{{CALLS}}}[$__rate_interval]))"
                    ),
                    legend="attempts {{trunk}} {{direction}}",
                    ref_id="A",
                ),
                Query(
                    expr=(
                        "60 * sum by (trunk, direction) (rate(call_monitor_calls_ended_total"
                        f"{{{ANSWERED}, {CALLS}}}[$__rate_interval]))"
                    ),
                    legend="answered {{trunk}} {{direction}}",
                    ref_id="B",
                ),
            ],
            min_value=0,
        )
    )
    board.add(
        timeseries_panel(
            "Answer-seizure ratio",
            "Share of ended calls that had been answered (completed or dropped) per trunk "
            "and direction, over 5 minutes and over 1 hour (recording rules); a gap means "
            "no call ended in the window.",
            "percentunit",
            [
                Query(
                    expr=_rule("answer_seizure:ratio_rate", "5m"),
                    legend="{{trunk}} {{direction}} 5m",
                    ref_id="A",
                ),
                Query(
                    expr=_rule("answer_seizure:ratio_rate", "1h"),
                    legend="{{trunk}} {{direction}} 1h",
                    ref_id="B",
                ),
            ],
            min_value=0,
            max_value=1,
        )
    )
    board.add(
        timeseries_panel(
            "Failed-dial ratio",
            "Share of ended calls that failed (trunk_failure, forbidden, failed) per trunk "
            "and direction, over 5 minutes and 1 hour (recording rules); click a series "
            "for the logs of those calls.",
            "percentunit",
            [
                Query(
                    expr=_rule("dial_failure:ratio_rate", "5m"),
                    legend="{{trunk}} {{direction}} 5m",
                    ref_id="A",
                ),
                Query(
                    expr=_rule("dial_failure:ratio_rate", "1h"),
                    legend="{{trunk}} {{direction}} 1h",
                    ref_id="B",
                ),
            ],
            min_value=0,
            max_value=1,
            links=[explore_logs_link("Failed calls of this trunk (logs)", FAILED_DIALS_LOGQL)],
        )
    )
    board.add(
        timeseries_panel(
            "State changes per minute",
            "Calls moving from one state to the next per minute by direction, e.g. "
            "dialing to ringing, or dialing to ending for a dial that failed at once.",
            "cpm",
            [
                Query(
                    expr=(
                        "60 * sum by (from_state, to_state, direction) (rate("
                        'call_monitor_state_transitions_total{direction=~"$direction"}'
                        "[$__rate_interval]))"
                    ),
                    legend="{{from_state}} to {{to_state}} {{direction}}",
                )
            ],
            min_value=0,
        )
    )
    board.add(
        table_panel(
            "Trunks at a glance",
            "One row per trunk and direction: attempts per minute over 5 minutes, calls "
            "ended, answer-seizure and failed-dial ratios over the last hour, and the "
            "answer-seizure ratio over 6 hours (recording rules).",
            "percentunit",
            [
                Query(
                    expr=f"60 * {_rule('calls_started:rate', '5m')}",
                    legend="{{trunk}} {{direction}}",
                    ref_id="A",
                    instant=True,
                    format=PromQueryFormat.TABLE,
                ),
                Query(
                    expr=f"3600 * {_rule('calls_ended:rate', '1h')}",
                    legend="{{trunk}} {{direction}}",
                    ref_id="B",
                    instant=True,
                    format=PromQueryFormat.TABLE,
                ),
                Query(
                    expr=_rule("answer_seizure:ratio_rate", "1h"),
                    legend="{{trunk}} {{direction}}",
                    ref_id="C",
                    instant=True,
                    format=PromQueryFormat.TABLE,
                ),
                Query(
                    expr=_rule("dial_failure:ratio_rate", "1h"),
                    legend="{{trunk}} {{direction}}",
                    ref_id="D",
                    instant=True,
                    format=PromQueryFormat.TABLE,
                ),
                Query(
                    expr=_rule("answer_seizure:ratio_rate", "6h"),
                    legend="{{trunk}} {{direction}}",
                    ref_id="E",
                    instant=True,
                    format=PromQueryFormat.TABLE,
                ),
            ],
            columns={
                "trunk": "Trunk",
                "direction": "Direction",
                "Value #A": "Attempts/min (5m)",
                "Value #B": "Calls ended (1h)",
                "Value #C": "Answer-seizure (1h)",
                "Value #D": "Failed dials (1h)",
                "Value #E": "Answer-seizure (6h)",
            },
            hidden=["__name__"],
            column_units={"Attempts/min (5m)": "cpm", "Calls ended (1h)": "short"},
            width=12,
            height=8,
        )
    )

    board.row("Outcomes")
    board.add(
        timeseries_panel(
            "Call outcomes",
            "Calls ended per minute by outcome (docs/outcomes.md), stacked; click a "
            "series for the logs of those calls.",
            "cpm",
            [
                Query(
                    expr=(
                        "60 * sum by (outcome) "
                        f"(rate(call_monitor_calls_ended_total{{{CALLS}}}[$__rate_interval]))"
                    ),
                    legend="{{outcome}}",
                )
            ],
            stacked=True,
            links=[explore_logs_link("Calls with this outcome (logs)", OUTCOME_LOGQL)],
        )
    )
    board.add(
        timeseries_panel(
            "Disconnect reasons",
            "Calls ended per minute by LiveKit's disconnect reason (none when there was "
            "none), stacked.",
            "cpm",
            [
                Query(
                    expr=(
                        "60 * sum by (reason) "
                        f"(rate(call_monitor_calls_ended_total{{{CALLS}}}[$__rate_interval]))"
                    ),
                    legend="{{reason}}",
                )
            ],
            stacked=True,
        )
    )
    board.add(
        timeseries_panel(
            "Ambiguous outcomes share",
            "Share of ended calls whose outcome could also have been another one "
            "(the room cannot tell the causes apart), in all and per outcome.",
            "percentunit",
            [
                Query(
                    expr=(
                        "(sum(rate(call_monitor_calls_ended_total"
                        f'{{ambiguous="true", {CALLS}}}[$__rate_interval])) or vector(0))'
                        " / sum(rate(call_monitor_calls_ended_total"
                        f"{{{CALLS}}}[$__rate_interval]))"
                    ),
                    legend="all ambiguous",
                    ref_id="A",
                ),
                Query(
                    expr=(
                        "sum by (outcome) (rate(call_monitor_calls_ended_total"
                        f'{{ambiguous="true", {CALLS}}}[$__rate_interval]))'
                        " / ignoring (outcome) group_left ()"
                        f" sum(rate(call_monitor_calls_ended_total{{{CALLS}}}[$__rate_interval]))"
                    ),
                    legend="{{outcome}}",
                    ref_id="B",
                ),
            ],
            min_value=0,
            max_value=1,
        )
    )
    board.add(
        timeseries_panel(
            "Dropped calls",
            "Answered calls cut by the server or the network (outcome dropped) per minute, "
            "by trunk, direction and reason; click a series for their logs.",
            "cpm",
            [
                Query(
                    expr=(
                        "60 * sum by (trunk, direction, reason) (rate("
                        f'call_monitor_calls_ended_total{{outcome="dropped", {CALLS}}}'
                        "[$__rate_interval]))"
                    ),
                    legend="{{trunk}} {{direction}} {{reason}}",
                    empty_reason="only answered calls cut by the server or network are "
                    "dropped; a healthy run has none",
                )
            ],
            min_value=0,
            links=[explore_logs_link("Dropped calls of this trunk (logs)", DROPPED_LOGQL)],
            red_series=".*",
        )
    )

    board.row("Timings")
    board.add(
        timeseries_panel(
            "Post-dial delay percentiles",
            "Outbound calls: time from the dial to the first ringing, median, 90th and "
            "99th percentile per trunk (measured only when the monitor saw the ringing live).",
            "s",
            _quantiles(
                "call_monitor_post_dial_delay_seconds", "trunk", "{{trunk}}", 'trunk=~"$trunk"'
            ),
            min_value=0,
        )
    )
    board.add(
        heatmap_panel(
            "Post-dial delay distribution",
            "Outbound calls per post-dial delay bucket over time: the darker the cell, the "
            "more calls rang after that long.",
            "s",
            _buckets("call_monitor_post_dial_delay_seconds", 'trunk=~"$trunk"'),
        )
    )
    board.add(
        timeseries_panel(
            "Time to answer percentiles",
            "Answered calls: time from the join (dial or inbound ring) to the answer, "
            "median, 90th and 99th percentile per trunk and direction.",
            "s",
            _quantiles(
                "call_monitor_time_to_answer_seconds", "trunk, direction", "{{trunk}} {{direction}}"
            ),
            min_value=0,
        )
    )
    board.add(
        heatmap_panel(
            "Time to answer distribution",
            "Answered calls per time-to-answer bucket over time: the darker the cell, the "
            "more calls were answered after that long.",
            "s",
            _buckets("call_monitor_time_to_answer_seconds"),
        )
    )
    board.add(
        timeseries_panel(
            "Talk duration",
            "Answered calls: time from the answer to the end, median, 90th and 99th "
            "percentile per trunk and direction.",
            "s",
            _quantiles(
                "call_monitor_talk_duration_seconds", "trunk, direction", "{{trunk}} {{direction}}"
            ),
            min_value=0,
        )
    )
    board.add(
        timeseries_panel(
            "Call duration",
            "Every ended call, answered or not: time from the join to the end, median, "
            "90th and 99th percentile per trunk and direction.",
            "s",
            _quantiles(
                "call_monitor_call_duration_seconds", "trunk, direction", "{{trunk}} {{direction}}"
            ),
            min_value=0,
        )
    )

    board.row("Logs")
    board.add(
        logs_panel(
            "Call logs",
            "The monitor's JSON log lines, newest first, for the call id typed above (its "
            "start is enough, empty shows all) and the chosen trunks and directions.",
            CALL_LOGS_LOGQL,
        )
    )
    return board
