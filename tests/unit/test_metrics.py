"""The metrics sink: what each effect and health fact counts, bounded labels, promtool."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitor.core.machine import CallBook, MachineSettings
from monitor.core.model import (
    Anomaly,
    AnomalyKind,
    CallStarted,
    Event,
    Reason,
    Source,
)
from monitor.core.shards import Shard
from monitor.sinks.metrics import MonitorMetrics, sample_totals
from tests.tools import promtool
from tests.unit.script import CallScript, mixed_calls

R = Reason


def feed(events: Iterable[Event], settle: float = 0.0) -> tuple[CollectorRegistry, CallBook]:
    """A fresh registry and book; every effect of every event goes to the metrics sink."""
    registry = CollectorRegistry()
    book = CallBook(MachineSettings(settle_seconds=settle))
    metrics = MonitorMetrics(registry, book.live_calls)
    for event in events:
        for effect in book.step(event):
            metrics.handle(effect)
    return registry, book


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def answered_outbound(**kwargs: object) -> CallScript:
    """Run `a` of the recordings: rings at 0.045 s, answers at 2.08 s, hangs up at 5.08 s."""
    script = CallScript(**kwargs).seen(0.041, "dialing")  # type: ignore[arg-type]
    script.to(0.045, "ringing").to(2.08, "active").to(5.081, "hangup")
    return script.left(5.083, R.CLIENT_INITIATED)


# ---- calls ----------------------------------------------------------------------------


def test_answered_outbound_call_counts_start_transitions_end_and_its_timings() -> None:
    registry, _ = feed(answered_outbound().events)
    out = {"direction": "outbound", "trunk": "ST_trunk1"}

    assert value(registry, "call_monitor_calls_started_total", **out) == 1
    ended = dict(out, outcome="completed", reason="CLIENT_INITIATED", ambiguous="false")
    assert value(registry, "call_monitor_calls_ended_total", **ended) == 1
    for before, after in [
        ("dialing", "ringing"),
        ("ringing", "active"),
        ("active", "hangup"),
        ("hangup", "ended"),
    ]:
        labels = {"direction": "outbound", "from_state": before, "to_state": after}
        assert value(registry, "call_monitor_state_transitions_total", **labels) == 1
    pdd = "call_monitor_post_dial_delay_seconds"
    assert value(registry, f"{pdd}_count", trunk="ST_trunk1") == 1
    assert value(registry, f"{pdd}_sum", trunk="ST_trunk1") == pytest.approx(0.004, abs=1e-6)
    assert value(registry, f"{pdd}_bucket", trunk="ST_trunk1", le="0.1") == 1
    answer = value(registry, "call_monitor_time_to_answer_seconds_sum", **out)
    assert answer == pytest.approx(2.039, abs=1e-6)
    talk = value(registry, "call_monitor_talk_duration_seconds_sum", **out)
    assert talk == pytest.approx(3.003, abs=1e-6)
    total = value(registry, "call_monitor_call_duration_seconds_sum", **out)
    assert total == pytest.approx(5.042, abs=1e-6)


def test_a_call_ended_through_ending_is_counted_once() -> None:
    script = answered_outbound().tick(6.2).tick(7.0)
    script.left(7.5, R.CLIENT_INITIATED)  # a duplicate leave after the end
    registry, _ = feed(script.events, settle=1.0)
    labels = {
        "direction": "outbound",
        "trunk": "ST_trunk1",
        "outcome": "completed",
        "reason": "CLIENT_INITIATED",
        "ambiguous": "false",
    }
    assert value(registry, "call_monitor_calls_ended_total", **labels) == 1
    assert value(registry, "call_monitor_call_duration_seconds_count", **labels_of(labels)) == 1
    transition = {"direction": "outbound", "from_state": "ending", "to_state": "ended"}
    assert value(registry, "call_monitor_state_transitions_total", **transition) == 1


def labels_of(labels: dict[str, str]) -> dict[str, str]:
    return {"direction": labels["direction"], "trunk": labels["trunk"]}


def test_failed_dial_has_a_post_dial_delay_but_no_answer_or_talk_time() -> None:
    script = CallScript().seen(0.041, "dialing").to(0.3, "ringing").left(4.0, R.USER_REJECTED)
    registry, _ = feed(script.events)
    out = {"direction": "outbound", "trunk": "ST_trunk1"}

    ended = dict(out, outcome="rejected", reason="USER_REJECTED", ambiguous="false")
    assert value(registry, "call_monitor_calls_ended_total", **ended) == 1
    assert value(registry, "call_monitor_post_dial_delay_seconds_count", trunk="ST_trunk1") == 1
    assert value(registry, "call_monitor_time_to_answer_seconds_count", **out) is None
    assert value(registry, "call_monitor_talk_duration_seconds_count", **out) is None
    assert value(registry, "call_monitor_call_duration_seconds_count", **out) == 1


def test_inbound_call_has_no_post_dial_delay() -> None:
    script = CallScript(inbound=True).seen(0.2, "ringing").to(3.2, "active").to(9.0, "hangup")
    script.left(9.01, R.CLIENT_INITIATED)
    registry, _ = feed(script.events)
    inbound = {"direction": "inbound", "trunk": "ST_trunk1"}

    assert value(registry, "call_monitor_calls_started_total", **inbound) == 1
    assert value(registry, "call_monitor_post_dial_delay_seconds_count", trunk="ST_trunk1") is None
    answer = value(registry, "call_monitor_time_to_answer_seconds_sum", **inbound)
    assert answer == pytest.approx(3.0, abs=1e-6)
    assert value(registry, "call_monitor_talk_duration_seconds_count", **inbound) == 1


def test_ambiguous_outcome_without_a_reason_is_labelled_so() -> None:
    script = CallScript().seen(0.041, "dialing").left(2.0, None)
    registry, _ = feed(script.events)
    labels = {
        "direction": "outbound",
        "trunk": "ST_trunk1",
        "outcome": "failed",
        "reason": "none",
        "ambiguous": "true",
    }
    assert value(registry, "call_monitor_calls_ended_total", **labels) == 1


def test_timings_seen_only_in_a_snapshot_stay_out_of_setup_and_talk_histograms() -> None:
    # The observer arrived when the call was already active: when it answered is a guess.
    script = CallScript().seen(30.0, "active").left(90.0, R.CLIENT_INITIATED)
    registry, _ = feed(script.events)
    out = {"direction": "outbound", "trunk": "ST_trunk1"}

    assert value(registry, "call_monitor_time_to_answer_seconds_count", **out) is None
    assert value(registry, "call_monitor_talk_duration_seconds_count", **out) is None
    assert value(registry, "call_monitor_call_duration_seconds_count", **out) == 1


def test_dial_side_sip_code_shows_as_the_outcome_label() -> None:
    script = CallScript().seen(0.041, "dialing").dial_failed(1.0, 503)
    script.left(1.01, R.USER_REJECTED)
    registry, _ = feed(script.events)
    labels = {
        "direction": "outbound",
        "trunk": "ST_trunk1",
        "outcome": "trunk_failure",
        "reason": "USER_REJECTED",
        "ambiguous": "false",
    }
    assert value(registry, "call_monitor_calls_ended_total", **labels) == 1


# ---- calls right now ------------------------------------------------------------------


def test_calls_gauge_reads_the_book_on_every_scrape() -> None:
    first = CallScript(call_id="SCL_1", sid="PA_1", room="r1").seen(0.0, "dialing")
    second = CallScript(call_id="SCL_2", sid="PA_2", room="r2").seen(0.1, "dialing")
    registry, book = feed([*first.events, *second.events], settle=1.0)
    dialing = {"state": "dialing", "direction": "outbound", "trunk": "ST_trunk1"}
    ringing = dict(dialing, state="ringing")
    ending = dict(dialing, state="ending")
    assert value(registry, "call_monitor_calls", **dialing) == 2

    book.step(first.to(0.5, "ringing").events[-1])  # the book moved; no effect handled
    assert value(registry, "call_monitor_calls", **dialing) == 1
    assert value(registry, "call_monitor_calls", **ringing) == 1

    book.step(first.left(2.0, R.USER_REJECTED).events[-1])
    assert value(registry, "call_monitor_calls", **ending) == 1
    book.step(second.left(2.5, R.USER_UNAVAILABLE).events[-1])
    book.step(second.tick(10.0).events[-1])
    for labels in (dialing, ringing, ending):
        assert value(registry, "call_monitor_calls", **labels) is None


def test_calls_gauge_without_a_book_has_no_samples() -> None:
    registry = CollectorRegistry()
    MonitorMetrics(registry)
    body = registry_text(registry)
    assert "# TYPE call_monitor_calls gauge" in body
    assert "\ncall_monitor_calls{" not in body


# ---- anomalies ------------------------------------------------------------------------


def test_every_anomaly_kind_is_exposed_at_zero_before_any_happens() -> None:
    registry = CollectorRegistry()
    MonitorMetrics(registry)
    for kind in AnomalyKind:
        assert value(registry, "call_monitor_anomalies_total", kind=str(kind)) == 0


def test_anomalies_are_counted_by_kind() -> None:
    script = CallScript().seen(0.0, "dialing").to(1.0, "active").to(2.0, "ringing")
    script.left(3.0, None, raw_reason="SOMETHING_NEW")
    registry, _ = feed(script.events)
    assert value(registry, "call_monitor_anomalies_total", kind="status_regressed") == 1
    assert value(registry, "call_monitor_anomalies_total", kind="unknown_reason_value") == 1
    assert value(registry, "call_monitor_anomalies_total", kind="clock_skew") == 0


# ---- bounded labels ---------------------------------------------------------------------


def test_empty_trunk_is_unknown_and_trunks_past_the_limit_become_other() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, max_trunks=2)
    for index, trunk in enumerate(["ST_a", "", "ST_b", "ST_c", "ST_d", "ST_a"]):
        script = CallScript(call_id=f"SCL_{index}", sid=f"PA_{index}", trunk=trunk)
        book = CallBook()
        for effect in book.step(script.seen(0.0, "dialing").events[-1]):
            metrics.handle(effect)
    started = "call_monitor_calls_started_total"
    assert value(registry, started, direction="outbound", trunk="ST_a") == 2
    assert value(registry, started, direction="outbound", trunk="unknown") == 1
    assert value(registry, started, direction="outbound", trunk="ST_b") == 1
    assert value(registry, started, direction="outbound", trunk="other") == 2
    assert value(registry, started, direction="outbound", trunk="ST_c") is None
    assert value(registry, "call_monitor_trunk_label_overflow_total") == 2


def series(registry: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    return [
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in registry.collect()
        for sample in family.samples
    ]


def test_series_do_not_grow_with_the_number_of_calls() -> None:
    few_registry, _ = feed(mixed_calls(10)[0])
    many_events, private = mixed_calls(1000)
    many_registry, _ = feed(many_events)

    few, many = series(few_registry), series(many_registry)
    assert len(many) == len(few)
    assert sorted(many) == sorted(few)
    alpha = {"direction": "outbound", "trunk": "ST_alpha"}
    assert value(many_registry, "call_monitor_calls_started_total", **alpha) == 334
    label_values = {value for _, labels in many for _, value in labels}
    assert not label_values & private
    assert not any("+1555" in text or "SCL_" in text for text in label_values)


# ---- the observer's health ------------------------------------------------------------


def test_observer_health_facts_are_counted() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    metrics.room_connect(ok=True)
    metrics.room_connect(ok=True)
    metrics.room_connect(ok=False)
    metrics.room_reconnect()
    metrics.rooms_watched(7)
    metrics.webhook_request("ok")
    metrics.webhook_request("unauthorized")
    metrics.webhook_request("nonsense")
    metrics.bad_request("webhook", 413)
    metrics.event_processed("webhook", "participant_joined", 0.02)
    metrics.event_processed("room", "attributes_changed", -0.5)  # clocks disagree
    metrics.journal_write_error()
    metrics.journal_partial_lines(1)
    metrics.reconcile_run(ok=True, seconds=0.3)
    metrics.reconcile_run(ok=False, seconds=2.0)
    for _ in range(3):
        metrics.reconcile_request()
    metrics.ready(True)

    assert value(registry, "call_monitor_room_connects_total", result="success") == 2
    assert value(registry, "call_monitor_room_connects_total", result="failure") == 1
    assert value(registry, "call_monitor_room_reconnects_total") == 1
    assert value(registry, "call_monitor_rooms_watched") == 7
    assert value(registry, "call_monitor_webhook_requests_total", result="ok") == 1
    assert value(registry, "call_monitor_webhook_requests_total", result="unauthorized") == 1
    assert value(registry, "call_monitor_webhook_requests_total", result="error") == 1
    assert value(registry, "call_monitor_webhook_requests_total", result="too_large") == 0
    bad = {"endpoint": "webhook", "code": "413"}
    assert value(registry, "call_monitor_http_bad_requests_total", **bad) == 1
    joined = {"source": "webhook", "type": "participant_joined"}
    assert value(registry, "call_monitor_events_total", **joined) == 1
    lag = "call_monitor_event_lag_seconds"
    assert value(registry, f"{lag}_bucket", source="webhook", le="0.025") == 1
    assert value(registry, f"{lag}_bucket", source="webhook", le="0.01") == 0
    assert value(registry, f"{lag}_sum", source="room") == 0
    assert value(registry, f"{lag}_bucket", source="room", le="0.001") == 1
    assert value(registry, "call_monitor_journal_write_errors_total") == 1
    assert value(registry, "call_monitor_journal_partial_lines_total") == 1
    assert value(registry, "call_monitor_reconcile_runs_total", result="success") == 1
    assert value(registry, "call_monitor_reconcile_runs_total", result="failure") == 1
    assert value(registry, "call_monitor_reconcile_duration_seconds_sum") == pytest.approx(2.3)
    assert value(registry, "call_monitor_reconcile_requests_total") == 3
    assert value(registry, "call_monitor_ready") == 1
    metrics.ready(False)
    assert value(registry, "call_monitor_ready") == 0


def test_health_counters_with_known_values_start_at_zero() -> None:
    registry = CollectorRegistry()
    MonitorMetrics(registry)
    assert value(registry, "call_monitor_room_connects_total", result="failure") == 0
    assert value(registry, "call_monitor_reconcile_runs_total", result="failure") == 0
    assert value(registry, "call_monitor_webhook_requests_total", result="unauthorized") == 0
    assert value(registry, "call_monitor_ready") == 0


def test_free_form_labels_from_the_service_are_bounded() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    for index in range(500):
        metrics.event_processed("webhook", f"type_{index}", 0.0)
        metrics.bad_request(f"/calls/{index}", 404)
    events = [s for s in series(registry) if s[0] == "call_monitor_events_total"]
    refused = [s for s in series(registry) if s[0] == "call_monitor_http_bad_requests_total"]
    assert len(events) <= 65
    assert len(refused) <= 33
    overflow = value(registry, "call_monitor_events_total", source="webhook", type="other")
    assert overflow == 500 - 64


def test_build_info_names_the_monitor_python_and_livekit_versions_and_its_shard() -> None:
    registry = CollectorRegistry()
    MonitorMetrics(registry, shard=Shard(2, 3))
    (sample,) = next(s for s in registry.collect() if s.name == "call_monitor_build").samples
    assert sample.name == "call_monitor_build_info"
    assert sample.value == 1
    assert set(sample.labels) == {"version", "python", "livekit_sdk", "shard", "shards"}
    assert sample.labels["version"] != "unknown"
    assert sample.labels["livekit_sdk"] != "unknown"
    assert (sample.labels["shard"], sample.labels["shards"]) == ("2", "3")
    assert value(registry, "call_monitor_shards") == 3


def test_exposition_is_the_prometheus_text_format_with_its_content_type() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    metrics.handle(Anomaly(0.0, AnomalyKind.CLOCK_SKEW, "detail", "room", "key"))
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain; version=")
    assert b'call_monitor_anomalies_total{kind="clock_skew"} 1.0\n' in body


def registry_text(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


# ---- promtool ---------------------------------------------------------------------------


def test_promtool_finds_no_problems_after_a_realistic_mix_of_calls() -> None:
    events, _ = mixed_calls(60)
    registry = CollectorRegistry()
    book = CallBook(MachineSettings(settle_seconds=1.0))
    metrics = MonitorMetrics(registry, book.live_calls)
    for event in events:
        for effect in book.step(event):
            metrics.handle(effect)
            if isinstance(effect, CallStarted):
                metrics.event_processed("room", "participant_connected", 0.004)
    metrics.room_connect(ok=True)
    metrics.rooms_watched(2)
    metrics.webhook_request("ok")
    metrics.bad_request("webhook", 401)
    metrics.reconcile_run(ok=True, seconds=0.12)
    metrics.ready(True)
    body, _ = metrics.exposition()
    assert b"call_monitor_calls{" in body  # the open calls are in the scrape

    checked = subprocess.run(
        [promtool(), "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    problems = (checked.stdout + checked.stderr).decode()
    assert checked.returncode == 0, problems
    assert problems.strip() == ""


def test_a_moment_seen_only_in_a_snapshot_stays_out_of_its_histogram() -> None:
    # ringing first seen when the observer arrived: the post-dial delay is only a bound
    script = CallScript().seen(0.03, "dialing", Source.WEBHOOK).seen(0.4, "ringing")
    script.to(2.0, "active").to(5.0, "hangup").left(5.01, R.CLIENT_INITIATED)
    registry, _ = feed(script.events)
    out = {"direction": "outbound", "trunk": "ST_trunk1"}
    pdd = value(registry, "call_monitor_post_dial_delay_seconds_count", trunk="ST_trunk1")
    assert pdd is None
    assert value(registry, "call_monitor_time_to_answer_seconds_count", **out) == 1
    assert value(registry, "call_monitor_talk_duration_seconds_count", **out) == 1


def test_the_process_own_memory_cpu_and_files_are_exposed() -> None:
    """The registry is the monitor's own: without its ProcessCollector the process's
    memory, which operators watch first, would be missing."""
    registry = CollectorRegistry()
    MonitorMetrics(registry)
    assert (value(registry, "call_monitor_process_resident_memory_bytes") or 0) > 10 * 2**20
    assert (value(registry, "call_monitor_process_cpu_seconds_total") or 0) > 0
    assert (value(registry, "call_monitor_process_open_fds") or 0) > 0


def test_sample_totals_sums_a_sample_by_a_label_of_the_text_exposition() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    for script in (answered_outbound(), answered_outbound(call_id="SCL_2", sid="PA_2")):
        book = CallBook()
        for event in script.events:
            for effect in book.step(event):
                metrics.handle(effect)
    text = metrics.exposition()[0].decode()
    by_outcome = sample_totals(text, "call_monitor_calls_ended_total", by="outcome")
    assert by_outcome["completed"] == 2
    assert by_outcome["busy"] == 0
    assert sample_totals(text, "call_monitor_calls_started_total")[""] == 2
