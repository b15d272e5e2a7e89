"""The Grafana dashboards (dashboards/): committed JSON, structure, PromQL, metric names.

(a) the committed JSON is what the code generates; (b) each dashboard has its uid,
title and variables, and every panel a title, description, unit, datasource variable
and queries; (c) every PromQL expression, its Grafana variables replaced, passes
`promtool check rules`; (d) every `call_monitor_*` name a query reads is exposed by
`MonitorMetrics` or is one of the agreed recording rules.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from dashboards import generate
from dashboards.core import concrete
from monitor.sinks.metrics import MonitorMetrics
from tests.tools import promtool

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
RULES_FILE = ROOT / "prometheus" / "rules" / "recording.yml"

Json = dict[str, Any]

# The recording rules agreed with prometheus/rules/ (summed by trunk and direction).
WINDOWS = ("5m", "30m", "1h", "6h")
RECORDING_RULES = frozenset(
    [
        *(
            f"trunk_direction:call_monitor_{name}:rate{window}"
            for name in ("calls_ended", "calls_answered", "calls_failed")
            for window in WINDOWS
        ),
        *(
            f"trunk_direction:call_monitor_{name}:ratio_rate{window}"
            for name in ("dial_failure", "answer_seizure")
            for window in WINDOWS
        ),
        "trunk_direction:call_monitor_calls_started:rate5m",
    ]
)

# file -> (uid, title, variable names in order)
EXPECTED = {
    "calls.json": (
        "call-monitor-calls",
        "Calls",
        ["datasource", "loki_datasource", "trunk", "direction", "call_id"],
    ),
    "monitor-health.json": (
        "call-monitor-health",
        "Monitor health",
        ["datasource", "job", "instance"],
    ),
}

# What each dashboard must show, by panel title.
REQUIRED_PANELS = {
    "call-monitor-calls": {
        "Active calls",
        "Active calls by state",
        "Call attempts and answers per minute",
        "Answer-seizure ratio",
        "Failed-dial ratio",
        "Call outcomes",
        "Disconnect reasons",
        "Post-dial delay percentiles",
        "Post-dial delay distribution",
        "Time to answer percentiles",
        "Time to answer distribution",
        "Talk duration",
        "Ambiguous outcomes share",
        "Call logs",
    },
    "call-monitor-health": {
        "Up",
        "Ready",
        "Build info",
        "Rooms watched",
        "Room connects by result",
        "Room connections lost, rejoined, renewed",
        "Webhook requests by result",
        "HTTP bad requests",
        "Event lag",
        "Events per second",
        "Anomalies by kind",
        "Journal write errors",
        "Reconcile runs by result, and its requests",
        "Reconcile duration",
    },
}

# Panels whose series link to the log search.
LINKED_PANELS = {"Failed-dial ratio", "Call outcomes", "Dropped calls"}

PROMETHEUS_REF = {"type": "prometheus", "uid": "${datasource}"}
LOKI_REF = {"type": "loki", "uid": "${loki_datasource}"}


def load(name: str) -> Json:
    data: Json = json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))
    return data


def panels(board: Json) -> Iterator[Json]:
    """Every panel but rows, nested ones included."""
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def prometheus_targets(board: Json) -> Iterator[tuple[Json, Json]]:
    for panel in panels(board):
        if panel["datasource"] == PROMETHEUS_REF:
            for target in panel["targets"]:
                yield panel, target


def all_prometheus_exprs() -> list[tuple[str, str, str, str]]:
    """(file, panel title, refId, expr) of every PromQL query of every dashboard."""
    return [
        (name, panel["title"], target["refId"], target["expr"])
        for name in EXPECTED
        for panel, target in prometheus_targets(load(name))
    ]


def variables(board: Json) -> dict[str, Json]:
    return {variable["name"]: variable for variable in board["templating"]["list"]}


def without_strings(expr: str) -> str:
    """`expr` without its string literals (label values, regexes)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"|`[^`]*`', '""', expr)


# ---- (a) the committed JSON is the generated JSON ---------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_committed_json_is_what_the_code_generates(name: str) -> None:
    generated = generate.rendered()[name]
    committed = (DASHBOARDS / name).read_text(encoding="utf-8")
    assert committed == generated, (
        f"dashboards/{name} is stale: run `make dashboards` (python -m dashboards.generate) "
        "and commit the result"
    )


def test_the_generator_writes_exactly_the_expected_dashboards() -> None:
    assert sorted(generate.BOARDS) == sorted(EXPECTED)


def test_generated_json_is_deterministic_sorted_and_ends_with_a_newline() -> None:
    first, second = generate.rendered(), generate.rendered()
    assert first == second
    for name, text in first.items():
        assert text.endswith("}\n"), name
        assert not text.endswith("\n\n"), name
        assert json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n" == text, name


def test_check_passes_on_fresh_files_and_names_a_stale_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = generate.write(tmp_path)
    assert sorted(path.name for path in written) == sorted(EXPECTED)
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 0

    stale = tmp_path / "monitor-health.json"
    stale.write_text(stale.read_text().replace('"Monitor health"', '"Old title"'))
    capsys.readouterr()
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "monitor-health.json" in err
    assert "make dashboards" in err
    assert "calls.json" not in err

    (tmp_path / "calls.json").unlink()
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 1
    assert "calls.json" in capsys.readouterr().err


def test_running_the_module_with_check_exits_1_on_a_stale_file(tmp_path: Path) -> None:
    generate.write(tmp_path)
    (tmp_path / "calls.json").write_text("{}\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dashboards.generate",
            "--check",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "calls.json" in done.stderr


# ---- (b) structure ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_has_its_uid_title_and_variables(name: str) -> None:
    uid, title, names = EXPECTED[name]
    board = load(name)
    assert board["uid"] == uid
    assert board["title"] == title
    assert board["description"]
    assert [variable["name"] for variable in board["templating"]["list"]] == names
    datasource = variables(board)["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    assert datasource["current"]["value"] == "prometheus"
    for variable in board["templating"]["list"]:
        assert variable.get("description"), f"{name}: variable {variable['name']}"


def test_calls_variables_pick_trunks_directions_and_a_call_id() -> None:
    found = variables(load("calls.json"))
    trunk = found["trunk"]
    assert trunk["type"] == "query"
    assert trunk["query"] == "label_values(call_monitor_calls_started_total, trunk)"
    assert trunk["datasource"] == PROMETHEUS_REF
    assert trunk["multi"] is True
    assert trunk["includeAll"] is True
    # "All" must match every trunk id in the logs too, also ids the metrics fold into
    # "other" or "unknown": a custom all value, not the list of loaded values.
    assert trunk["allValue"] == ".*"
    assert trunk["current"]["value"] == ["$__all"]

    direction = found["direction"]
    assert direction["type"] == "custom"
    assert direction["query"] == "inbound,outbound"
    assert direction["multi"] is True
    assert direction["includeAll"] is True
    assert direction["allValue"] == ".*"

    loki = found["loki_datasource"]
    assert (loki["type"], loki["query"], loki["current"]["value"]) == ("datasource", "loki", "loki")

    call_id = found["call_id"]
    assert call_id["type"] == "textbox"
    assert call_id["query"] == ""


def test_health_variables_select_the_monitors_jobs_and_instances() -> None:
    found = variables(load("monitor-health.json"))
    # No custom all value for job: `up{job=~".*"}` would take in every scrape target.
    assert "allValue" not in found["job"]
    assert found["job"]["query"] == "label_values(call_monitor_build_info, job)"
    assert found["instance"]["query"].startswith("label_values(call_monitor_build_info{")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_panel_has_title_description_unit_datasource_and_queries(name: str) -> None:
    board = load(name)
    titles = []
    for panel in panels(board):
        title = panel.get("title", "")
        assert title, f"{name}: a panel without a title: {panel.get('id')}"
        titles.append(title)
        description = panel.get("description", "")
        assert description, f"{name}: {title}: no description"
        assert "\n" not in description, f"{name}: {title}: one line"
        assert description.endswith("."), f"{name}: {title}: a sentence"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{name}: {title}: no unit"
        assert panel["datasource"] in (PROMETHEUS_REF, LOKI_REF), f"{name}: {title}"
        targets = panel.get("targets", [])
        assert targets, f"{name}: {title}: no query"
        ref_ids = [target["refId"] for target in targets]
        assert len(set(ref_ids)) == len(ref_ids), f"{name}: {title}: duplicate refIds"
        for target in targets:
            assert target["datasource"] == panel["datasource"], f"{name}: {title}"
            assert target["expr"].strip(), f"{name}: {title}: empty query"
    assert len(set(titles)) == len(titles), f"{name}: duplicate panel titles"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_has_its_required_panels(name: str) -> None:
    uid = EXPECTED[name][0]
    titles = {panel["title"] for panel in panels(load(name))}
    missing = REQUIRED_PANELS[uid] - titles
    assert not missing, f"{name}: missing panels {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_lie_on_the_grid_without_overlapping(name: str) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in load(name)["panels"]:
        pos = panel["gridPos"]
        assert min(pos["w"], pos["h"]) > 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_legends_name_every_label_a_query_groups_by(name: str) -> None:
    for panel, target in prometheus_targets(load(name)):
        where = f"{name}: {panel['title']} {target['refId']}"
        legend = target.get("legendFormat", "")
        assert legend not in ("", "__auto"), f"{where}: no legend"
        expr = target["expr"]
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in (label.strip() for label in group.split(",")):
                if label and label != "le":
                    assert "{{" + label + "}}" in legend, f"{where}: legend lacks {label}"
        # A recording rule read as it is keeps its trunk and direction labels.
        if re.search(r"(?<!sum\()trunk_direction:", expr) and target["format"] != "table":
            assert "{{trunk}}" in legend, where
            assert "{{direction}}" in legend, where


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_variables_are_defined_and_used_as_regex_matchers(name: str) -> None:
    board = load(name)
    defined = set(variables(board))
    for panel in panels(board):
        for target in panel["targets"]:
            expr = target["expr"]
            for match in re.finditer(r"\$\{?(?!__)(\w+)", expr):
                where = f"{name}: {panel['title']}: ${match.group(1)}"
                assert match.group(1) in defined, f"{where} is not a variable"
                # Multi-value and "All" (.*) only work in a regex matcher.
                assert expr[: match.start()].endswith(('=~"', "=~`")), where


def test_prometheus_panels_use_the_datasource_variable_and_logs_the_loki_one() -> None:
    for name in EXPECTED:
        for panel in panels(load(name)):
            if panel["type"] == "logs":
                assert panel["datasource"] == LOKI_REF
            else:
                assert panel["datasource"] == PROMETHEUS_REF, panel["title"]


def test_the_logs_panel_searches_by_call_id_and_trunk_with_all_and_empty_working() -> None:
    board = load("calls.json")
    (logs,) = (panel for panel in panels(board) if panel["type"] == "logs")
    (target,) = logs["targets"]
    expr = target["expr"]
    assert expr.startswith('{service="call-monitor"} | json')
    assert "call_id=~`${call_id:regex}.*`" in expr
    assert "trunk_id=~`${trunk:regex}`" in expr
    # An empty call id box and "All" trunks make the filters match every line.
    everything = concrete(expr, {"call_id": ""})
    assert "call_id=~`.*`" in everything
    assert "trunk_id=~`.*`" in everything
    one = concrete(expr, {"call_id": "SCL_abc", "trunk": "ST_x"})
    assert "call_id=~`SCL_abc.*`" in one
    assert "trunk_id=~`ST_x`" in one


def explore_pane(url: str, values: dict[str, str]) -> Json:
    """The Explore state a data link opens, with Grafana's placeholders filled in."""
    parts = urlsplit(url)
    assert parts.path == "/explore"
    raw = re.search(r"(?:^|&)panes=([^&]*)", parts.query)
    assert raw is not None, url
    assert parse_qs(parts.query)["schemaVersion"] == ["1"]

    def fill(match: re.Match[str]) -> str:
        return values[match.group(1)]

    filled = re.sub(r"\$\{([\w.]+)(?::\w+)?\}", fill, raw.group(1))
    panes: Json = json.loads(unquote(filled))
    ((pane),) = panes.values()
    assert isinstance(pane, dict)
    return pane


def test_failing_panels_link_to_the_logs_of_their_calls_in_explore() -> None:
    board = load("calls.json")
    values = {
        "loki_datasource": "loki",
        "__from": "1000",
        "__to": "2000",
        "__field.labels.trunk": "ST_x",
        "__field.labels.direction": "outbound",
        "__field.labels.outcome": "busy",
        "trunk": ".*",
        "direction": ".*",
    }
    linked = {}
    for panel in panels(board):
        links = panel["fieldConfig"]["defaults"].get("links", [])
        if not links:
            continue
        (link,) = links
        pane = explore_pane(link["url"], values)
        assert pane["datasource"] == "loki"
        (query,) = pane["queries"]
        assert query["expr"].startswith('{service="call-monitor"} | json | event="call_ended"')
        assert pane["range"] == {"from": "1000", "to": "2000"}
        linked[panel["title"]] = query["expr"]
    assert set(linked) == LINKED_PANELS
    assert 'trunk_id="ST_x"' in linked["Failed-dial ratio"]
    assert 'outcome=~"trunk_failure|forbidden|failed"' in linked["Failed-dial ratio"]
    assert 'outcome="busy"' in linked["Call outcomes"]


# ---- (c) every PromQL expression is valid -----------------------------------------------


def check_rules(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` on one recording rule per expression."""
    rules = [
        {"record": f"dashboard:query_{index}:check", "expr": expr}
        for index, expr in enumerate(exprs)
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    return subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# A value for each dashboard variable other than "All".
ONE_VALUE = {"trunk": "ST_LouVMPkLtZyi", "direction": "outbound", "job": "call-monitor"}


def test_every_promql_expression_passes_promtool(tmp_path: Path) -> None:
    found = all_prometheus_exprs()
    assert len(found) >= 40
    exprs = []
    for name, title, ref_id, expr in found:
        for values in ({}, ONE_VALUE):
            made = concrete(expr, values)
            assert "$" not in made, f"{name}: {title} {ref_id}: a variable is left: {made}"
            exprs.append(made)
    done = check_rules(exprs, tmp_path)
    assert done.returncode == 0, f"promtool rejected a dashboard query:\n{done.stdout}{done.stderr}"
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout


@pytest.mark.parametrize(
    "broken",
    [
        "sum(rate(call_monitor_calls_started_total[5m])",
        # A Grafana variable left in place outside a string.
        "rate(call_monitor_calls_started_total[$__rate_interval])",
        "histogram_quantile(0.5, sum by (le) rate(call_monitor_event_lag_seconds_bucket[5m]))",
    ],
)
def test_promtool_check_rejects_a_broken_expression(broken: str, tmp_path: Path) -> None:
    done = check_rules(["up", broken], tmp_path)
    assert done.returncode != 0, done.stdout


def test_concrete_replaces_grafanas_variables() -> None:
    expr = 'rate(x{trunk=~"$trunk", d=~"${direction:regex}"}[$__rate_interval]) [$__range]'
    assert concrete(expr) == 'rate(x{trunk=~".*", d=~".*"}[5m]) [1h]'
    assert concrete("x[$__interval]", {"__interval": "30s"}) == "x[30s]"
    with pytest.raises(ValueError, match="__unknown"):
        concrete("x[$__unknown]")


# ---- (d) every metric name is exposed or a recording rule -------------------------------


def exposed_names() -> set[str]:
    """Every sample name `MonitorMetrics` can expose: each family's names by its type
    (prometheus_client's rules), checked against the samples a fresh registry has."""
    registry = CollectorRegistry()
    MonitorMetrics(registry)
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    sampled: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
        sampled.update(sample.name for sample in family.samples)
    assert sampled <= names, sampled - names
    return names


def referenced_names(expr: str) -> set[str]:
    tokens = re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_strings(expr))
    return {token for token in tokens if "call_monitor" in token}


def test_the_exposed_names_are_the_real_ones() -> None:
    names = exposed_names()
    for name in (
        "call_monitor_calls",
        "call_monitor_calls_started_total",
        "call_monitor_calls_ended_total",
        "call_monitor_post_dial_delay_seconds_bucket",
        "call_monitor_build_info",
        "call_monitor_ready",
    ):
        assert name in names
    assert "call_monitor_calls_started" not in names


def test_every_metric_a_dashboard_reads_is_exposed_or_a_recording_rule() -> None:
    exposed = exposed_names()
    exprs = [
        (f"{name}: {title} {ref_id}", expr) for name, title, ref_id, expr in all_prometheus_exprs()
    ]
    for name in EXPECTED:
        for variable in load(name)["templating"]["list"]:
            if variable["type"] == "query":
                exprs.append((f"{name}: variable {variable['name']}", variable["query"]))
    read: set[str] = set()
    for where, expr in exprs:
        names = referenced_names(expr)
        assert names or re.search(r"\bup\{", expr), f"{where}: reads no call_monitor metric"
        for metric in names:
            if ":" in metric:
                assert metric in RECORDING_RULES, f"{where}: unknown recording rule {metric}"
            else:
                assert metric in exposed, f"{where}: {metric} is not exposed by the monitor"
        read |= names
    # The dashboards together cover the monitor's metrics (created timestamps aside).
    unread = {
        name.removesuffix("_total").removesuffix("_bucket")
        for name in exposed
        if not name.endswith(("_created", "_count", "_sum"))
    } - {name.removesuffix("_total").removesuffix("_bucket") for name in read}
    assert not unread, f"no panel shows {sorted(unread)}"


def test_the_name_check_catches_a_misspelt_metric() -> None:
    exposed = exposed_names()
    names = referenced_names(
        'sum(rate(call_monitor_call_started_total{trunk=~"call_monitor_x"}[5m]))'
    )
    assert names == {"call_monitor_call_started_total"}
    assert not names <= exposed


def test_the_recording_rules_read_are_recorded_in_prometheus_rules() -> None:
    if not RULES_FILE.is_file():
        pytest.skip(f"{RULES_FILE.relative_to(ROOT)} is not in this tree")
    recorded = {
        rule["record"]
        for group in yaml.safe_load(RULES_FILE.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    read = {
        metric
        for _, _, _, expr in all_prometheus_exprs()
        for metric in referenced_names(expr)
        if ":" in metric
    }
    assert read, "the calls dashboard reads recording rules"
    assert read <= recorded, f"not recorded: {sorted(read - recorded)}"


# ---- panel_queries(): what the integration test evaluates --------------------------------


def test_panel_queries_lists_every_promql_query_of_every_panel() -> None:
    queries = generate.panel_queries()
    listed = {(q.dashboard_uid, q.panel_title, q.ref_id, q.expr) for q in queries}
    assert len(listed) == len(queries), "a query is listed twice"
    uid_of = {name: uid for name, (uid, _, _) in EXPECTED.items()}
    in_json = {
        (uid_of[name], title, ref_id, expr) for name, title, ref_id, expr in all_prometheus_exprs()
    }
    assert listed == in_json
    for query in queries:
        assert query.language == "promql"
        assert query.expect_data != bool(query.empty_reason), query
        assert "$" not in query.concrete()
        assert set(query.recording_rules) <= RECORDING_RULES


def test_panel_queries_mark_the_panels_that_may_rightly_be_empty() -> None:
    empty = {q.panel_title for q in generate.panel_queries() if not q.expect_data}
    assert {"Dropped calls", "HTTP bad requests"} <= empty
    # Most panels must show data after a run of calls, or the check is worthless.
    assert len(empty) <= 4, empty


def test_log_queries_list_the_logs_panel() -> None:
    (query,) = generate.log_queries()
    assert query.language == "logql"
    assert (query.dashboard_uid, query.panel_title) == ("call-monitor-calls", "Call logs")
    assert query.expr.startswith('{service="call-monitor"}')
