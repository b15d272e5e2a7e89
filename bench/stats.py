"""Pure numbers: percentiles, summaries, rates, and matching counter moves to calls.

Nothing here does I/O or reads a clock, so it is unit-tested (tests/unit/test_bench.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "CounterPoll",
    "Visibility",
    "counter_visibility",
    "mean",
    "percentile",
    "rate",
    "summarize",
]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0 to 100) with linear interpolation between the closest ranks.

    The same definition as numpy's default ("linear", Hyndman and Fan type 7): the
    smallest value is the 0th percentile, the largest the 100th. None for no values.
    """
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"a percentile is from 0 to 100, not {q}")
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(ordered[low])
    fraction = position - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


def mean(values: Iterable[float]) -> float | None:
    """The arithmetic mean, None for no values."""
    items = list(values)
    return sum(items) / len(items) if items else None


def summarize(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> dict[str, float]:
    """n, p50, p90, p99, max, mean and min of `values` times `scale`, rounded.

    `scale` turns seconds into milliseconds (1000); an empty input gives {"n": 0}.
    """
    if not values:
        return {"n": 0}
    scaled = [value * scale for value in values]
    summary: dict[str, float] = {"n": len(scaled)}
    for name, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0)):
        found = percentile(scaled, q)
        assert found is not None
        summary[name] = round(found, digits)
    summary["max"] = round(max(scaled), digits)
    summary["mean"] = round(sum(scaled) / len(scaled), digits)
    summary["min"] = round(min(scaled), digits)
    return summary


def rate(first: float, last: float, seconds: float) -> float | None:
    """(last - first) / seconds: a counter's rate, or cores from CPU seconds; None if the
    interval is empty or the counter went backwards (a restart)."""
    if seconds <= 0 or last < first:
        return None
    return (last - first) / seconds


@dataclass(frozen=True, slots=True)
class CounterPoll:
    """One scrape: sent at `t_send`, answered at `t_recv`, the counters' values then."""

    t_send: float
    t_recv: float
    counts: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Visibility:
    """When the counter `key` first showed its `rank`-th increment.

    It was not there at `after` (the previous scrape was sent then, so the value was
    produced later) and was there at `by` (the scrape that showed it had answered).
    """

    key: str
    rank: int
    after: float
    by: float


def counter_visibility(polls: Sequence[CounterPoll], key: str) -> list[Visibility]:
    """For each increment of counter `key` between the first and the last scrape, when it
    became visible: [after, by] is the interval between two scrapes.

    Increments present at the first scrape are not attributed (when they happened is
    unknown). A counter that goes backwards (the process restarted) ends the series.
    Ranks are 1-based over the counter's whole life, so the k-th increment is matched
    with the k-th line the process logged about the same change.
    """
    found: list[Visibility] = []
    if not polls:
        return found
    seen = int(polls[0].counts.get(key, 0.0))
    previous = polls[0]
    for poll in polls[1:]:
        value = int(poll.counts.get(key, 0.0))
        if value < seen:
            break
        for rank in range(seen + 1, value + 1):
            found.append(Visibility(key, rank, previous.t_send, poll.t_recv))
        seen = value
        previous = poll
    return found
