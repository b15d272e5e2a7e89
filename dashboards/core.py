"""Building blocks shared by the dashboards: queries, panels, variables, log links.

Every panel is made by one of the functions below from a title, a one-sentence
description, a unit and its queries, so that the rules every panel follows (a
datasource variable, a description, a unit, legends, ids) live in one place, and so
that `Board` can list every query of every panel for the tests (`PanelQuery`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import quote

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import heatmap as heatmap_builders
from grafana_foundation_sdk.builders import logs as logs_builders
from grafana_foundation_sdk.builders import loki as loki_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.builders import stat as stat_builders
from grafana_foundation_sdk.builders import table as table_builders
from grafana_foundation_sdk.builders import timeseries as timeseries_builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common, heatmap
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

__all__ = [
    "LOKI",
    "LOKI_STREAM",
    "PROMETHEUS",
    "Board",
    "Panel",
    "PanelQuery",
    "Query",
    "concrete",
    "explore_logs_link",
    "heatmap_panel",
    "logs_panel",
    "stat_panel",
    "table_panel",
    "timeseries_panel",
]

Language = Literal["promql", "logql"]

# Panels name their datasource through a dashboard variable, never a fixed uid, so the
# same JSON works on any Grafana; the variables default to the uids `prometheus`/`loki`.
PROMETHEUS: Final = dashboard_models.DataSourceRef(type_val="prometheus", uid="${datasource}")
LOKI: Final = dashboard_models.DataSourceRef(type_val="loki", uid="${loki_datasource}")
# The Loki stream of the monitor's JSON lines (docs/logging.md).
LOKI_STREAM: Final = '{service="call-monitor"}'

# Values used for Grafana's own variables when a query is made concrete.
_BUILTIN_DEFAULTS: Final[Mapping[str, str]] = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
}
# `$name`, `${name}` and `${name:format}`.
_VARIABLE = re.compile(r"\$\{(?P<braced>\w+)(?::\w+)?\}|\$(?P<bare>\w+)")


def concrete(expr: str, values: Mapping[str, str] | None = None) -> str:
    """`expr` with every Grafana variable replaced, ready for Prometheus or promtool.

    `$__rate_interval` becomes 5m, `$__interval` 1m, `$__range` 1h; a dashboard
    variable becomes its value in `values`, else `.*` (what "All" means here: every
    variable is used in a regex matcher). An unknown `$__` variable is an error."""
    given = dict(values or {})

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        if name in given:
            return given[name]
        if name.startswith("__"):
            if name not in _BUILTIN_DEFAULTS:
                raise ValueError(f"no value for Grafana variable ${name} in {expr!r}")
            return _BUILTIN_DEFAULTS[name]
        return ".*"

    return _VARIABLE.sub(substitute, expr)


@dataclass(frozen=True)
class Query:
    """One query of a panel, as written in the dashboard (Grafana variables included).

    `empty_reason` says why the query may rightly return nothing after a short run of
    real calls of mixed outcomes; empty when it must return data then."""

    expr: str
    legend: str = ""
    ref_id: str = "A"
    empty_reason: str = ""
    instant: bool = False
    format: PromQueryFormat = PromQueryFormat.TIME_SERIES


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel of a generated dashboard, for tests against a real backend.

    `expect_data` is true when, after a run of real calls of mixed outcomes scraped
    into Prometheus (and the recording rules evaluated, see `recording_rules`), a query
    over the run (a range query, or an instant one at its end when `instant`) must
    return at least one series. When false the query may rightly return nothing, and
    `empty_reason` says why; it may return data too. `expr` has Grafana's variables in
    it; `concrete()` replaces them (5m, 1m, 1h and `.*` unless given other values)."""

    dashboard_uid: str
    panel_title: str
    ref_id: str
    expr: str
    expect_data: bool
    empty_reason: str
    instant: bool
    language: Language

    @property
    def recording_rules(self) -> tuple[str, ...]:
        """The recording rules (names with a colon) the expression reads."""
        return tuple(sorted(set(re.findall(r"\b[a-zA-Z_]\w*:[\w:]+", self.expr))))

    def concrete(self, values: Mapping[str, str] | None = None) -> str:
        """The expression with Grafana's variables replaced (see `concrete`)."""
        return concrete(self.expr, values)


@dataclass(frozen=True)
class Panel:
    """A panel builder and what `Board` needs to know about its queries."""

    title: str
    builder: cogbuilder.Builder[dashboard_models.Panel]
    queries: tuple[Query, ...]
    language: Language = "promql"


@dataclass
class Board:
    """A dashboard being built: rows and panels in reading order, ids given in order."""

    uid: str
    title: str
    description: str
    tags: Sequence[str]
    variables: Sequence[cogbuilder.Builder[dashboard_models.VariableModel]]
    time_from: str = "now-3h"
    refresh: str = "30s"
    queries: list[PanelQuery] = field(default_factory=list)
    # Panels, and rows by their title, in reading order.
    _items: list[Panel | str] = field(default_factory=list)

    def row(self, title: str) -> None:
        """Start a row: the panels added next go under it."""
        self._items.append(title)

    def add(self, panel: Panel) -> None:
        """Add a panel after the last one (the SDK lays it out left to right)."""
        self._items.append(panel)
        for query in panel.queries:
            self.queries.append(
                PanelQuery(
                    dashboard_uid=self.uid,
                    panel_title=panel.title,
                    ref_id=query.ref_id,
                    expr=query.expr,
                    expect_data=not query.empty_reason,
                    empty_reason=query.empty_reason,
                    instant=query.instant,
                    language=panel.language,
                )
            )

    def build(self) -> dashboard_models.Dashboard:
        builder = (
            dashboard_builders.Dashboard(self.title)
            .uid(self.uid)
            .description(self.description)
            .tags(list(self.tags))
            .editable()
            .time(self.time_from, "now")
            .refresh(self.refresh)
            .timezone("browser")
            .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
            .variables(list(self.variables))
            .link(
                dashboard_builders.DashboardLink("Call monitor")
                .type(dashboard_models.DashboardLinkType.DASHBOARDS)
                .tags(["call-monitor"])
                .as_dropdown(True)
                .include_vars(False)
                .keep_time(True)
            )
        )
        for panel_id, item in enumerate(self._items, start=1):
            if isinstance(item, str):
                builder.with_row(dashboard_builders.Row(item).id(panel_id))
            else:
                built = item.builder.build()
                built.id_val = panel_id
                builder.with_panel(_Built(built))
        return builder.build()


class _Built(cogbuilder.Builder[dashboard_models.Panel]):
    """An already built panel, handed to the dashboard builder (which lays it out)."""

    def __init__(self, panel: dashboard_models.Panel) -> None:
        self._panel = panel

    def build(self) -> dashboard_models.Panel:
        return self._panel


# ---- queries --------------------------------------------------------------------------


def _prometheus_target(query: Query) -> prometheus_builders.Dataquery:
    target = (
        prometheus_builders.Dataquery()
        .datasource(PROMETHEUS)
        .ref_id(query.ref_id)
        .expr(query.expr)
        .legend_format(query.legend or "__auto")
        .format(query.format)
    )
    return target.instant() if query.instant else target.range()


def _thresholds(
    base: str, steps: Sequence[tuple[float, str]] = ()
) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
        .steps(
            [dashboard_models.Threshold(value=None, color=base)]
            + [dashboard_models.Threshold(value=value, color=color) for value, color in steps]
        )
    )


# ---- data links to the logs -----------------------------------------------------------


def explore_logs_link(title: str, logql: str) -> dashboard_builders.DashboardLink:
    """A data link that opens `logql` in Grafana Explore on the Loki datasource, over
    the panel's time range.

    The Explore state is JSON in the `panes` parameter; it is percent-encoded here
    except for Grafana's `${...}` placeholders, which Grafana fills in (URI-encoded
    unless a format says otherwise) when the link is followed."""
    pane = {
        "logs": {
            "datasource": "${loki_datasource}",
            "queries": [
                {
                    "refId": "A",
                    "expr": logql,
                    "queryType": "range",
                    "datasource": {"type": "loki", "uid": "${loki_datasource}"},
                }
            ],
            "range": {"from": "${__from}", "to": "${__to}"},
        }
    }
    text = json.dumps(pane, sort_keys=True, separators=(",", ":"))
    encoded = "".join(
        part if part.startswith("${") else quote(part, safe="")
        for part in re.split(r"(\$\{[^}]+\})", text)
    )
    return (
        dashboard_builders.DashboardLink(title)
        .url(f"/explore?schemaVersion=1&orgId=1&panes={encoded}")
        .target_blank(True)
    )


# ---- panels ---------------------------------------------------------------------------


def timeseries_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    width: int = 12,
    height: int = 8,
    stacked: bool = False,
    bars: bool = False,
    min_value: float | None = None,
    max_value: float | None = None,
    links: Sequence[dashboard_builders.DashboardLink] = (),
    red_series: str = "",
) -> Panel:
    """A time series panel; `red_series` is a regex of series names drawn in red."""
    builder = (
        timeseries_builders.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(width)
        .height(height)
        .targets([_prometheus_target(query) for query in queries])
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .fill_opacity(10)
        .line_width(1)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .insert_nulls(False)
    )
    if bars:
        builder = builder.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
    else:
        builder = builder.draw_style(common.GraphDrawStyle.LINE)
    if stacked:
        builder = builder.stacking(
            common_builders.StackingConfig().mode(common.StackingMode.NORMAL).group("A")
        )
    if min_value is not None:
        builder = builder.min(min_value)
    if max_value is not None:
        builder = builder.max(max_value)
    if links:
        builder = builder.data_links(list(links))
    if red_series:
        builder = builder.override_by_regexp(
            red_series,
            [
                dashboard_models.DynamicConfigValue(
                    id_val="color", value={"mode": "fixed", "fixedColor": "red"}
                )
            ],
        )
    return Panel(title, builder, tuple(queries))


def stat_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    width: int = 6,
    height: int = 4,
    thresholds: Sequence[tuple[float, str]] = (),
    base_color: str = "blue",
    mappings: Mapping[str, tuple[str, str]] | None = None,
    decimals: int | None = None,
    graph: bool = True,
) -> Panel:
    """A single number (the last one); `mappings` maps a value to (text, color)."""
    builder = (
        stat_builders.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(width)
        .height(height)
        .targets([_prometheus_target(query) for query in queries])
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(common.BigValueGraphMode.AREA if graph else common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.VALUE)
        .text_mode(common.BigValueTextMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
        .thresholds(_thresholds(base_color, thresholds))
        .color_scheme(
            dashboard_builders.FieldColor().mode(dashboard_models.FieldColorModeId.THRESHOLDS)
        )
    )
    if decimals is not None:
        builder = builder.decimals(decimals)
    if mappings:
        builder = builder.mappings(
            [
                dashboard_models.ValueMap(
                    options={
                        value: dashboard_models.ValueMappingResult(
                            text=text, color=color, index=index
                        )
                        for index, (value, (text, color)) in enumerate(sorted(mappings.items()))
                    }
                )
            ]
        )
    return Panel(title, builder, tuple(queries))


def heatmap_panel(
    title: str,
    description: str,
    unit: str,
    query: Query,
    *,
    width: int = 12,
    height: int = 8,
) -> Panel:
    """A heatmap of a Prometheus histogram's buckets (`query` sums increases by le)."""
    builder = (
        heatmap_builders.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit("short")
        .span(width)
        .height(height)
        .with_target(_prometheus_target(query))
        .calculate(False)
        .y_axis(heatmap_builders.YAxisConfig().unit(unit).axis_placement(common.AxisPlacement.LEFT))
        .color(
            heatmap_builders.HeatmapColorOptions()
            .mode(heatmap.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(heatmap.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
            .reverse(False)
        )
        .cell_values(heatmap_builders.CellValues().unit("short"))
        .rows_frame(heatmap_builders.RowsHeatmapOptions().layout(common.HeatmapCellLayout.AUTO))
        .filter_values(heatmap_builders.FilterValueRange().le(1e-9))
        .show_value(common.VisibilityMode.NEVER)
        .mode(common.TooltipDisplayMode.SINGLE)
        .show_y_histogram()
        .show_legend()
    )
    return Panel(title, builder, (query,))


def table_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    columns: Mapping[str, str],
    hidden: Sequence[str] = (),
    column_units: Mapping[str, str] | None = None,
    width: int = 24,
    height: int = 6,
) -> Panel:
    """A table of instant queries, merged on their labels; `columns` renames fields
    (`Value #A` is query A's value) and gives their order, `hidden` drops fields."""
    order = {name: index for index, name in enumerate(columns)}
    builder = (
        table_builders.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(width)
        .height(height)
        .targets([_prometheus_target(query) for query in queries])
        .with_transformation(dashboard_models.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dashboard_models.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {name: True for name in ("Time", *hidden)},
                    "indexByName": order,
                    "renameByName": dict(columns),
                },
            )
        )
        .cell_height(common.TableCellHeight.SM)
        .show_header(True)
    )
    for column, column_unit in sorted((column_units or {}).items()):
        builder = builder.override_by_name(
            column, [dashboard_models.DynamicConfigValue(id_val="unit", value=column_unit)]
        )
    return Panel(title, builder, tuple(queries))


def logs_panel(
    title: str,
    description: str,
    expr: str,
    *,
    width: int = 24,
    height: int = 14,
    max_lines: int = 1000,
) -> Panel:
    """Log lines from Loki, newest first."""
    builder = (
        logs_builders.Panel()
        .title(title)
        .description(description)
        .datasource(LOKI)
        .unit("none")
        .span(width)
        .height(height)
        .with_target(
            loki_builders.Dataquery()
            .datasource(LOKI)
            .ref_id("A")
            .expr(expr)
            .query_type("range")
            .max_lines(max_lines)
        )
        .show_time(True)
        .show_labels(False)
        .show_common_labels(False)
        .wrap_log_message(True)
        .prettify_log_message(False)
        .enable_log_details(True)
        .dedup_strategy(common.LogsDedupStrategy.NONE)
        .sort_order(common.LogsSortOrder.DESCENDING)
    )
    return Panel(title, builder, (Query(expr=expr),), language="logql")
