"""Repeated warnings are written once per key per interval, with what was dropped."""

from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from monitor.sinks.logs import LogRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_per_interval_then_the_count_of_those_dropped() -> None:
    clock = Clock()
    limiter = LogRateLimiter(interval=10.0, clock=clock)
    assert limiter.admit("a") == 0
    assert [limiter.admit("a") for _ in range(5)] == [None] * 5
    assert limiter.admit("b") == 0  # another key has its own budget
    clock.now += 9.9
    assert limiter.admit("a") is None
    clock.now += 0.1
    assert limiter.admit("a") == 6
    assert limiter.admit("a") is None
    clock.now += 10
    assert limiter.admit("a") == 1
    assert limiter.admit("b") == 0


def test_keys_are_bounded_the_least_recent_forgotten() -> None:
    clock = Clock()
    limiter = LogRateLimiter(interval=10.0, max_keys=3, clock=clock)
    for key in range(100):
        assert limiter.admit(key) == 0
    assert len(limiter._keys) == 3
    assert limiter.admit(99) is None  # still remembered
    assert limiter.admit(0) == 0  # forgotten: written again


def test_a_thousand_repeated_warnings_write_one_line_and_then_their_count() -> None:
    clock = Clock()
    limiter = LogRateLimiter(interval=10.0, clock=clock)
    log = structlog.get_logger()
    with capture_logs() as logged:
        for _ in range(1000):
            limiter.warning(log, "request_refused", ("webhook", 401), reason="bad token")
        clock.now += 10
        limiter.warning(log, "request_refused", ("webhook", 401), reason="bad token")
    assert [(line["event"], line["suppressed"]) for line in logged] == [
        ("request_refused", 0),
        ("request_refused", 999),
    ]
    assert logged[0]["reason"] == "bad token"
    assert logged[0]["log_level"] == "warning"
