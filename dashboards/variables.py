"""Template variables shared by the dashboards."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.models import dashboard as dashboard_models

from dashboards.core import PROMETHEUS

__all__ = [
    "all_selected",
    "datasource_variable",
    "query_variable",
]

# "All" as a custom value: `.*` matches every value, series without the label and
# values the dropdown does not list (a trunk seen only in the logs, "other", "unknown"),
# where Grafana's default would be the list of values it loaded. It is never escaped,
# so it works with every format (`$trunk`, `${trunk:regex}`, `${trunk:pipe}`).
MATCH_ALL = ".*"


def all_selected() -> dashboard_models.VariableOption:
    return dashboard_models.VariableOption(selected=True, text=["All"], value=["$__all"])


def datasource_variable(
    name: str, plugin: str, label: str, default_uid: str, description: str
) -> dashboard_builders.DatasourceVariable:
    """A datasource picker of one plugin type; `label` is also the default's name."""
    return (
        dashboard_builders.DatasourceVariable(name)
        .label(label)
        .description(description)
        .type(plugin)
        .current(dashboard_models.VariableOption(selected=True, text=label, value=default_uid))
        .multi(False)
        .include_all(False)
    )


def query_variable(
    name: str, label: str, query: str, description: str, *, match_all: bool = True
) -> dashboard_builders.QueryVariable:
    """A multi-value label picker filled from Prometheus, "All" selected.

    With `match_all`, "All" is `.*`; without it, it is the values loaded (for `job`,
    whose `.*` would take in every target Prometheus scrapes)."""
    builder = (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(PROMETHEUS)
        .query(query)
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.NATURAL_ASC)
        .multi(True)
        .include_all(True)
        .current(all_selected())
    )
    return builder.all_value(MATCH_ALL) if match_all else builder
