"""The benchmark's pure parts: percentiles, summaries, counter matching, the Markdown.

The benchmark itself (`python -m bench`) is not a test; these check only the arithmetic
its numbers rest on and the report it writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.ledger import LedgerTail
from bench.report import (
    evaluate_targets,
    fmt,
    load_focused,
    load_runs,
    render,
    table,
    target_cells,
)
from bench.stats import CounterPoll, counter_visibility, percentile, rate, summarize


def test_percentile_interpolates_between_the_closest_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5  # numpy's default ("linear") gives 2.5 too
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_percentile_does_not_depend_on_the_order_of_its_input() -> None:
    assert percentile([5.0, 1.0, 4.0, 2.0, 3.0], 90) == percentile([1, 2, 3, 4, 5], 90)


@pytest.mark.parametrize("q", [-1.0, 100.5, float("nan")])
def test_percentile_refuses_a_rank_outside_0_to_100(q: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], q)


def test_summarize_scales_and_rounds() -> None:
    summary = summarize([0.010, 0.020, 0.030, 0.040, 1.0], scale=1000.0)
    assert summary["n"] == 5
    assert summary["p50"] == 30.0
    assert summary["max"] == 1000.0
    assert summary["min"] == 10.0
    assert summary["mean"] == 220.0
    assert summary["p99"] == pytest.approx(961.6)
    assert summarize([]) == {"n": 0}


def test_rate_is_none_for_an_empty_interval_or_a_counter_reset() -> None:
    assert rate(10.0, 30.0, 4.0) == 5.0
    assert rate(10.0, 30.0, 0.0) is None
    assert rate(30.0, 10.0, 4.0) is None


def _poll(t: float, count: float, took: float = 0.005) -> CounterPoll:
    return CounterPoll(t_send=t, t_recv=t + took, counts={"to:active": count})


def test_each_increment_is_placed_between_two_scrapes() -> None:
    polls = [_poll(0.00, 3), _poll(0.02, 3), _poll(0.04, 5), _poll(0.06, 6)]
    seen = counter_visibility(polls, "to:active")
    assert [(v.rank, v.after, round(v.by, 6)) for v in seen] == [
        (4, 0.02, 0.045),
        (5, 0.02, 0.045),
        (6, 0.04, 0.065),
    ]


def test_increments_before_the_first_scrape_and_after_a_restart_are_not_attributed() -> None:
    polls = [_poll(0.0, 10), _poll(0.02, 11), _poll(0.04, 0), _poll(0.06, 2)]
    seen = counter_visibility(polls, "to:active")
    assert [v.rank for v in seen] == [11]
    assert counter_visibility([], "to:active") == []
    assert counter_visibility(polls, "to:ringing") == []


def test_fmt_and_table() -> None:
    assert fmt(None) == "-"
    assert fmt(1234) == "1,234"
    assert fmt(0.12345, 3, "cores") == "0.123 cores"
    assert fmt(True) == "yes"
    assert table(["a", "b"], [[1, "x|y"]]) == "| a | b |\n|---|---|\n| 1 | x\\|y |"


def _cell(
    size: int, mode: str, mix: str = "long", observer: str | None = "signal", **derived: Any
) -> dict[str, Any]:
    cell: dict[str, Any] = {
        "size": size,
        "mix": mix,
        "mode": mode,
        "carried": True,
        "live_calls_mean": float(size),
        "load": {"placed": size * 3, "api_errors": 0, "calls_per_second": 3.0},
        "latency_metrics": {"target_changes_ms": {"n": 100, "p50": 20.0, "p99": 80.0}},
        "derived": derived,
    }
    if observer is not None:  # runs before the signal observer record none
        cell["observer"] = observer
    return cell


def _run(*cells: dict[str, Any]) -> dict[str, Any]:
    return {"command": "python -m bench", "cells": list(cells), "versions": {}, "machine": {}}


JOIN_COST = {
    "when": "2026-12-05T12:01:26+0000",
    "mean": {
        "signal": {"cpu_s_per_join": 0.0012, "server_cpu_s_per_join": 0.0035},
        "stderr": {"cpu_s_per_join": 0.0348, "server_cpu_s_per_join": 0.0243},
    },
}


def test_targets_name_where_they_were_measured_and_by_how_much_they_are_missed() -> None:
    heavy = _cell(160, "setup", "setup-heavy", monitor_cpu_cores=0.3)
    heavy["load"]["calls_per_second"] = 38.5
    runs = [
        (
            "20261205",
            _run(
                _cell(
                    1000,
                    "setup",
                    monitor_rss_mib=120.0,
                    monitor_cpu_cores=0.3,
                    main_cpu_per_100_events_per_s=0.04,
                    steady_events_per_s=40.0,
                    reconcile_requests_per_s=3.4,
                    poll_1s_nominal_requests_per_s=100.0,
                    reconcile_livekit_cpu_est=0.001,
                    poll_1s_livekit_cpu_est=0.03,
                ),
                _cell(500, "whole_call", monitor_rss_mib=300.0, monitor_cpu_cores=0.2),
                heavy,
            ),
        ),
        # Before the signal observer: not what the targets are judged on.
        ("20261204", _run(_cell(1000, "whole_call", observer=None, monitor_cpu_cores=0.01))),
    ]
    rows = evaluate_targets(target_cells(runs), JOIN_COST)
    by_target: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_target.setdefault(row["target"], []).append(row)
    setup_cpu, whole_cpu = by_target["1,000 calls of real length within 1/4 of a core"]
    assert (setup_cpu["verdict"], setup_cpu["by"]) == ("**missed**", "by 0.050 cores (x1.20)")
    assert setup_cpu["where"] == "1000 calls, long, setup (run 20261205)"
    assert whole_cpu["verdict"] == "met"
    assert "not 1,000" in whole_cpu["where"]
    setup_rss, whole_rss = by_target["... and 256 MiB"]
    assert setup_rss["verdict"] == "met"
    assert (whole_rss["verdict"], whole_rss["by"]) == ("**missed**", "by 44.0 MiB (x1.17)")
    latency = by_target["p99 change-to-metric latency < 50 ms at 1,000 calls"][0]
    assert (latency["verdict"], latency["by"]) == ("**missed**", "by 30.0 ms (x1.60)")
    [events] = by_target["100 call events/s within 5% of a core, the main process in place"]
    assert events["measured"] == "4.0% of a core per 100 events/s at 40 events/s"
    assert events["verdict"] == "met"
    [setup_heavy] = by_target["40 new calls a second (setup-heavy) within 1/2 a core"]
    assert setup_heavy["verdict"] == "met"
    assert setup_heavy["by"].endswith("at 38.5 new calls/s, not 40")
    [joins] = [r for t, rs in by_target.items() if t.startswith("per join") for r in rs]
    assert joins["measured"] == "29x less monitor CPU, 6.9x less livekit-server CPU"
    assert joins["verdict"] == "met"
    reconcile = next(r for t, rs in by_target.items() if "reconciliation" in t for r in rs)
    assert reconcile["verdict"] == "met"
    assert (
        "1000/long/setup: 3.4 vs 100 requests/s (0.10% vs 3.00% of a core)"
        in (reconcile["measured"])
    )
    nothing = evaluate_targets([], None)
    assert {row["verdict"] for row in nothing} == {"not measured"}


def test_render_shows_the_targets_every_run_and_the_notes() -> None:
    run = _run(
        _cell(100, "setup", monitor_rss_mib=100.0, monitor_cpu_cores=0.1),
        _cell(100, "whole_call", monitor_rss_mib=200.0, monitor_cpu_cores=0.2),
    )
    quick = {**_run(_cell(20, "setup"), _cell(20, "whole_call")), "quick": True}
    one_cell = _run(_cell(100, "setup", "realistic"))
    text = render(
        [("20261127", one_cell), ("20261126-quick", quick), ("20261125", run)],
        notes="## Notes\n\nhand-written",
    )
    assert text.startswith("# Benchmark results")
    # Every full run of the signal observer counts; a quick one does not.
    assert "## Targets (runs 20261127, 20261125)" in text
    assert "### Run 20261127" in text
    assert "### Run 20261126-quick (quick)" in text
    assert "### Run 20261125" in text
    assert "| 100 | long | setup |" in text
    assert text.rstrip().endswith("hand-written")
    assert render([]).count("No runs yet.") == 1


def test_the_hot_path_benchmark_plays_every_call_to_its_end(tmp_path: Path) -> None:
    """`python -m bench.hot_path` fails unless /metrics counts every call it played as
    completed; it writes CPU per event and the busiest functions."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.hot_path", "--calls", "30", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [written] = tmp_path.glob("hot-path-*.json")
    run = json.loads(written.read_text())
    assert run["unprofiled"]["events"] == 30 * 4 + 1
    assert run["unprofiled"]["cpu_ms_per_event"] > 0
    assert len(run["profiled"]["top"]) == 15

    # RESULTS.md shows it, and reads only the load runs as runs.
    (tmp_path / "join-cost-20261203-000000.json").write_text(
        json.dumps(
            {
                "command": "python -m bench.join_cost",
                "mean": {"stderr": {"cpu_s_per_join": 0.072}, "python": {"cpu_s_per_join": 0.126}},
            }
        )
    )
    (tmp_path / "20261125.json").write_text(json.dumps(_run(_cell(100, "setup"))))
    assert [name for name, _ in load_runs(tmp_path)] == ["20261125"]
    text = render(load_runs(tmp_path), focused=load_focused(tmp_path))
    assert "### A room connection, by observer (join-cost-20261203-000000)" in text
    assert "| stderr | 0.0720 CPU-s |" in text
    assert f"### The main process's own path per event ({written.stem})" in text


def test_the_restore_benchmark_brings_back_every_open_call(tmp_path: Path) -> None:
    """`python -m bench.restore` fails unless the restarted monitor has every call it
    left open; it writes how long the restart took and what it read."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.restore",
            "--ended",
            "300",
            "--open",
            "40",
            "--output-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [written] = tmp_path.glob("restore-*.json")
    run = json.loads(written.read_text())
    assert (run["calls_open"], run["journal_events"]) == (40, 300 * 4 + 40 * 3)
    assert 0 < run["newest_file_bytes"] <= run["journal_bytes"]
    assert run["restore_seconds"] > 0


def test_the_bench_ledger_tail_starts_over_on_a_new_ledger(tmp_path: Path) -> None:
    """The bench's tail reads the simulator's ledger as the stack's reader does (the same
    `LineTail`): a half-written line waits, and a ledger replaced by a shorter one (a new
    stack) is read from its start, its calls only."""
    path = tmp_path / "ledger.jsonl"
    tail = LedgerTail(path)
    first = json.dumps({"ts": 1.0, "call_id": "SCL_old", "event": "call_started", "room": "r"})
    path.write_text(first + "\n" + first[:10])
    assert tail.refresh() == 1
    assert list(tail.calls) == ["SCL_old"]
    path.write_text(json.dumps({"ts": 2.0, "call_id": "SCL_new", "event": "joined"}) + "\n")
    assert tail.refresh() == 1
    assert list(tail.calls) == ["SCL_new"]
    assert tail.calls["SCL_new"].joined == 2.0
