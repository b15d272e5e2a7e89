"""The Prometheus rules in prometheus/: promtool's checks and unit tests, and the contract
around them.

- promtool: `check rules` on prometheus/rules/*.yml, `test rules` on prometheus/tests/*.yml;
- every alert has a severity, a summary, a description and a runbook_url under one base
  URL whose page exists in docs/runbooks/, and every runbook page has its alert;
- every `call_monitor_*` name in a rule is a sample name the monitor exposes (from
  `MonitorMetrics` itself), every `level:metric:operation` name is a recording rule, and
  every outcome or anomaly kind a matcher names is one the monitor has;
- the recording rule names the dashboards rely on exist, and prometheus/README.md lists
  every rule.

The checks are functions returning the problems they find, so that the tests at the end
can show each one failing on a broken rule.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.core.machine import CallBook, MachineSettings
from monitor.core.model import AnomalyKind, Direction, Outcome
from monitor.sinks.metrics import MonitorMetrics
from tests.tools import promtool
from tests.unit.script import mixed_calls

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "prometheus" / "rules"
TESTS_DIR = ROOT / "prometheus" / "tests"
RUNBOOKS_DIR = ROOT / "docs" / "runbooks"
PROMETHEUS_README = ROOT / "prometheus" / "README.md"

RUNBOOK_BASE = (
    "https://github.com/livekit-call-monitor/livekit-call-monitor/blob/main/docs/runbooks/"
)
SEVERITIES = frozenset({"page", "ticket", "warning"})
WINDOWS = ("5m", "30m", "1h", "6h")
# The names another engineer's dashboards use: a contract.
REQUIRED_RECORDS = frozenset(
    {
        f"trunk_direction:call_monitor_{metric}:rate{window}"
        for metric in ("calls_ended", "calls_answered", "calls_failed")
        for window in WINDOWS
    }
    | {
        f"trunk_direction:call_monitor_{ratio}:ratio_rate{window}"
        for ratio in ("dial_failure", "answer_seizure")
        for window in WINDOWS
    }
    | {
        "trunk_direction:call_monitor_calls_started:rate5m",
        "call_monitor:dial_failure_objective:ratio",
    }
)
# Which outcomes count as answered and as failed dials (docs/outcomes.md).
ANSWERED = frozenset({"completed", "dropped"})
FAILED = frozenset({"trunk_failure", "forbidden", "failed"})

Rule = dict[str, Any]


# ---- loading ----------------------------------------------------------------------------


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def unit_test_files() -> list[Path]:
    return sorted(TESTS_DIR.glob("*.yml"))


def load_rules(paths: Iterable[Path]) -> list[Rule]:
    rules: list[Rule] = []
    for path in paths:
        document = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            rules.extend(group["rules"])
    return rules


def alerts(rules: Iterable[Rule]) -> list[Rule]:
    return [rule for rule in rules if "alert" in rule]


def records(rules: Iterable[Rule]) -> list[Rule]:
    return [rule for rule in rules if "record" in rule]


def kebab(alert_name: str) -> str:
    """`SipTrunkFailing` -> `sip-trunk-failing`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", alert_name).lower()


def runbook_url(alert_name: str) -> str:
    return f"{RUNBOOK_BASE}{kebab(alert_name)}.md"


# ---- what the monitor exposes -----------------------------------------------------------

# The sample names of each metric type in the text exposition (prometheus_client's).
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def exposed_sample_names() -> set[str]:
    """Every sample name a monitor's /metrics can hold.

    A labelled metric has no sample until its first labels are used, so the names come
    from each family's type as well as from the samples a fresh registry has."""
    registry = CollectorRegistry()
    MonitorMetrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


# ---- the checks -------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")
_COMMENT = re.compile(r"#[^\n]*")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def names_in(expr: str) -> set[str]:
    """The identifiers of a PromQL expression: metric, label and function names, without
    strings, comments, ranges and durations."""
    bare = _RANGE.sub(" ", _COMMENT.sub(" ", _STRING.sub('""', expr)))
    return set(_NAME.findall(bare))


def metric_problems(rules: list[Rule], exposed: set[str]) -> list[str]:
    """Names in the expressions that are neither exposed by the monitor nor recorded."""
    recorded = {rule["record"] for rule in records(rules)}
    problems = []
    for rule in rules:
        what = rule.get("record") or rule.get("alert")
        for name in sorted(names_in(rule["expr"])):
            if ":" in name and name not in recorded:
                problems.append(f"{what}: {name} is no recording rule")
            elif name.startswith("call_monitor_") and name not in exposed:
                problems.append(f"{what}: {name} is not exposed by monitor/sinks/metrics.py")
    return problems


_MATCHER = re.compile(r'\b(outcome|kind|direction)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_LABEL_VALUES = {
    "outcome": {str(value) for value in Outcome},
    "kind": {str(value) for value in AnomalyKind},
    "direction": {str(value) for value in Direction},
}


def matched_values(expr: str, label: str) -> list[set[str]]:
    """The values each `label="..."` or `label=~"a|b"` matcher of the expression names."""
    return [
        set(values.split("|"))
        for name, _, values in _MATCHER.findall(expr)
        if name == label and values
    ]


def label_value_problems(rules: list[Rule]) -> list[str]:
    """Matchers naming an outcome, anomaly kind or direction the monitor never uses."""
    problems = []
    for rule in rules:
        what = rule.get("record") or rule.get("alert")
        for label, known in _LABEL_VALUES.items():
            for values in matched_values(rule["expr"], label):
                for value in sorted(values - known):
                    problems.append(f"{what}: {label} {value!r} does not exist")
    return problems


def alert_problems(rules: list[Rule], runbooks_dir: Path) -> list[str]:
    """Alerts without a severity, summary, description or runbook page."""
    problems = []
    for rule in alerts(rules):
        name = rule["alert"]
        labels = rule.get("labels") or {}
        annotations = rule.get("annotations") or {}
        if not re.fullmatch(r"[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]+)*", name):
            problems.append(f"{name}: not CamelCase, so no runbook name")
        if labels.get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity {labels.get('severity')!r} not in {SEVERITIES}")
        for key in ("summary", "description"):
            if not str(annotations.get(key, "")).strip():
                problems.append(f"{name}: no {key}")
        if "trunk" in names_in(rule["expr"]) and "$labels.trunk" not in annotations.get(
            "summary", ""
        ):
            problems.append(f"{name}: a trunk alert whose summary does not name the trunk")
        url = annotations.get("runbook_url")
        if url != runbook_url(name):
            problems.append(f"{name}: runbook_url {url!r}, expected {runbook_url(name)!r}")
        elif not (runbooks_dir / f"{kebab(name)}.md").is_file():
            problems.append(f"{name}: no runbook page docs/runbooks/{kebab(name)}.md")
    return problems


def runbook_problems(rules: list[Rule], runbooks_dir: Path) -> list[str]:
    """Runbook pages without an alert, and pages the index does not link."""
    names = {rule["alert"] for rule in alerts(rules)}
    pages = {path.stem for path in runbooks_dir.glob("*.md") if path.name != "README.md"}
    problems = [
        f"docs/runbooks/{page}.md: no alert of that name"
        for page in sorted(pages - {kebab(name) for name in names})
    ]
    index = runbooks_dir / "README.md"
    text = index.read_text() if index.is_file() else ""
    problems += [
        f"docs/runbooks/README.md does not link {page}.md"
        for page in sorted(pages)
        if f"({page}.md)" not in text
    ]
    for name in sorted(names):
        page = runbooks_dir / f"{kebab(name)}.md"
        if page.is_file() and name not in page.read_text():
            problems.append(f"{page.name} never names its alert {name}")
    return problems


def documentation_problems(rules: list[Rule], readme: Path) -> list[str]:
    """Rules prometheus/README.md does not list."""
    text = readme.read_text()
    names = {rule.get("record") or rule["alert"] for rule in rules}
    return [
        f"prometheus/README.md does not list {name}"
        for name in sorted(names)
        if f"`{name}`" not in text
    ]


# ---- promtool -----------------------------------------------------------------------------


def run_promtool(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_promtool_checks_the_rule_files() -> None:
    files = rule_files()
    assert [path.name for path in files] == ["alerts.yml", "recording.yml"]
    checked = run_promtool("check", "rules", *files)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_unit_tests_pass() -> None:
    files = unit_test_files()
    assert files, "no promtool unit tests in prometheus/tests/"
    tested = run_promtool("test", "rules", *files)
    assert tested.returncode == 0, tested.stdout + tested.stderr


# ---- the contract ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def rules() -> list[Rule]:
    return load_rules(rule_files())


def test_every_alert_has_severity_summary_description_and_runbook(rules: list[Rule]) -> None:
    assert alerts(rules)
    assert alert_problems(rules, RUNBOOKS_DIR) == []


def test_every_runbook_page_has_its_alert_and_is_indexed(rules: list[Rule]) -> None:
    assert runbook_problems(rules, RUNBOOKS_DIR) == []


def test_rules_read_only_metrics_the_monitor_exposes(rules: list[Rule]) -> None:
    assert metric_problems(rules, exposed_sample_names()) == []


def test_matchers_name_only_outcomes_kinds_and_directions_that_exist(
    rules: list[Rule],
) -> None:
    assert label_value_problems(rules) == []


def test_the_recording_rule_names_the_dashboards_use_exist(rules: list[Rule]) -> None:
    recorded = {rule["record"] for rule in records(rules)}
    assert sorted(REQUIRED_RECORDS - recorded) == []


def test_answered_and_failed_count_the_documented_outcomes(rules: list[Rule]) -> None:
    for window in WINDOWS:
        by_name = {rule["record"]: rule["expr"] for rule in records(rules)}
        answered = by_name[f"trunk_direction:call_monitor_calls_answered:rate{window}"]
        failed = by_name[f"trunk_direction:call_monitor_calls_failed:rate{window}"]
        assert matched_values(answered, "outcome") == [set(ANSWERED)]
        assert matched_values(failed, "outcome") == [set(FAILED)]


def test_the_readme_lists_every_rule(rules: list[Rule]) -> None:
    assert documentation_problems(rules, PROMETHEUS_README) == []


def test_the_exposed_names_are_those_of_a_real_scrape() -> None:
    # A monitor that saw calls of every kind and its own health facts: every sample name
    # in its exposition is one exposed_sample_names() predicts from a fresh registry.
    events, _ = mixed_calls(12)
    registry = CollectorRegistry()
    book = CallBook(MachineSettings(settle_seconds=0.0))
    metrics = MonitorMetrics(registry, book.live_calls)
    for event in events:
        for effect in book.step(event):
            metrics.handle(effect)
    metrics.event_processed("webhook", "participant_joined", 0.01)
    metrics.bad_request("webhook", 401)
    metrics.reconcile_run(ok=True, seconds=0.05)
    metrics.ready(True)
    body, _ = metrics.exposition()
    scraped = {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in body.decode().splitlines()
        if line and not line.startswith("#")
    }
    for name in (
        "call_monitor_calls_started_total",
        "call_monitor_calls_ended_total",
        "call_monitor_post_dial_delay_seconds_bucket",
        "call_monitor_time_to_answer_seconds_bucket",
        "call_monitor_event_lag_seconds_bucket",
        "call_monitor_anomalies_total",
        "call_monitor_calls",
        "call_monitor_ready",
    ):
        assert name in scraped
    assert sorted(scraped - exposed_sample_names()) == []
    assert "call_monitor_calls_ended" not in exposed_sample_names()  # counters end in _total


# ---- the checks fail on broken rules ---------------------------------------------------


def mutated(rules: list[Rule], old: str, new: str) -> list[Rule]:
    """The rules, with `old` replaced by `new` in every key and string (deep copy)."""

    def replace(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(old, new)
        if isinstance(value, dict):
            return {replace(key): replace(item) for key, item in value.items()}
        if isinstance(value, list):
            return [replace(item) for item in value]
        return value

    result = replace(rules)
    assert result != rules, f"{old!r} is in no rule"
    return list(result)


def test_a_misspelt_metric_fails(rules: list[Rule]) -> None:
    broken = mutated(rules, "call_monitor_calls_ended_total", "call_monitor_calls_ends_total")
    problems = metric_problems(broken, exposed_sample_names())
    assert problems
    assert all("call_monitor_calls_ends_total is not exposed" in p for p in problems)


def test_a_misspelt_recording_rule_reference_fails(rules: list[Rule]) -> None:
    broken = mutated(rules, "calls_ended:rate1h * 3600", "calls_ended:rate_1h * 3600")
    assert metric_problems(broken, exposed_sample_names()) == [
        "SipTrunkDialFailureBudgetBurn: trunk_direction:call_monitor_calls_ended:rate_1h "
        "is no recording rule"
    ]


def test_a_misspelt_outcome_fails(rules: list[Rule]) -> None:
    broken = mutated(rules, "trunk_failure|forbidden", "trunk_failure|forbiden")
    assert len(label_value_problems(broken)) == len(WINDOWS)


def test_an_alert_without_severity_or_runbook_fails(rules: list[Rule], tmp_path: Path) -> None:
    broken = mutated(rules, "severity", "level")
    assert len(alert_problems(broken, RUNBOOKS_DIR)) == len(alerts(rules))
    # every runbook page missing
    assert len(alert_problems(rules, tmp_path)) == len(alerts(rules))
    renamed = mutated(rules, "CallMonitorLagging", "CallMonitorBehind")
    assert any(
        "call-monitor-lagging.md: no alert" in p for p in runbook_problems(renamed, RUNBOOKS_DIR)
    )


def test_promtool_unit_tests_fail_on_a_misspelt_metric(tmp_path: Path) -> None:
    copy = tmp_path / "prometheus"
    shutil.copytree(ROOT / "prometheus", copy)
    alerts_file = copy / "rules" / "alerts.yml"
    text = alerts_file.read_text()
    assert "call_monitor_ready{" in text
    alerts_file.write_text(text.replace("call_monitor_ready{", "call_monitor_readiness{"))
    assert run_promtool("check", "rules", alerts_file).returncode == 0  # valid PromQL...
    tested = run_promtool("test", "rules", copy / "tests" / "monitor_health.yml")
    assert tested.returncode != 0  # ...that never fires
    assert "CallMonitorNotReady" in tested.stdout + tested.stderr
