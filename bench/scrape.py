"""Scraping the monitor's /metrics, fast, from a thread of its own.

A scrape every 20 ms with prometheus-client's parser would cost the bench more than the
monitor, so only the few series the bench needs are read from the text, line by line.
The scraper runs in a thread with a kept-alive HTTP connection, so the bench's event
loop (placing calls, reading the ledger) does not delay it.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.stats import CounterPoll

__all__ = ["Exposition", "Scraper", "combined", "parse_exposition"]

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

# Keys of `Exposition.counts`, matched with the monitor's log lines by `bench.analysis`.
STARTED = "started"
ENDED = "ended_total"


@dataclass(slots=True)
class Exposition:
    """The series of one scrape the bench uses.

    `counts`: cumulative counters, summed over their other labels:
    `to:<state>` for `call_monitor_state_transitions_total` by `to_state`,
    `started` for `calls_started_total`, `ended_total` for `calls_ended_total`.
    """

    counts: dict[str, float] = field(default_factory=dict)
    calls: dict[str, float] = field(default_factory=dict)  # call_monitor_calls by state
    rooms_watched: float = 0.0
    events: float = 0.0
    events_by_source: dict[str, float] = field(default_factory=dict)
    reconcile_runs: float = 0.0
    reconcile_requests: float = 0.0
    room_connects: dict[str, float] = field(default_factory=dict)
    webhooks: dict[str, float] = field(default_factory=dict)
    ready: float = 0.0

    @property
    def live_calls(self) -> float:
        """Calls the monitor holds now (ENDING included)."""
        return sum(self.calls.values())


def _add(into: dict[str, float], more: Mapping[str, float]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0.0) + value


def combined(expositions: Sequence[Exposition]) -> Exposition:
    """Shards' scrapes as one monitor's: every series summed (each replica counts its
    own rooms' calls, so the sums count every call once); ready only if all are."""
    found = Exposition(ready=min((e.ready for e in expositions), default=0.0))
    for e in expositions:
        _add(found.counts, e.counts)
        _add(found.calls, e.calls)
        _add(found.events_by_source, e.events_by_source)
        _add(found.room_connects, e.room_connects)
        _add(found.webhooks, e.webhooks)
        found.rooms_watched += e.rooms_watched
        found.events += e.events
        found.reconcile_runs += e.reconcile_runs
        found.reconcile_requests += e.reconcile_requests
    return found


def _labels(text: str) -> dict[str, str]:
    return dict(_LABEL.findall(text))


def parse_exposition(text: str) -> Exposition:
    """Read the monitor's series the bench needs from Prometheus text."""
    found = Exposition()
    for line in text.splitlines():
        if not line.startswith("call_monitor_"):
            continue
        name_labels, _, value_text = line.rpartition(" ")
        try:
            value = float(value_text)
        except ValueError:
            continue
        name, _, rest = name_labels.partition("{")
        labels = _labels(rest) if rest else {}
        if name == "call_monitor_state_transitions_total":
            key = "to:" + labels.get("to_state", "")
            found.counts[key] = found.counts.get(key, 0.0) + value
        elif name == "call_monitor_calls_started_total":
            found.counts[STARTED] = found.counts.get(STARTED, 0.0) + value
        elif name == "call_monitor_calls_ended_total":
            found.counts[ENDED] = found.counts.get(ENDED, 0.0) + value
        elif name == "call_monitor_calls":
            state = labels.get("state", "")
            found.calls[state] = found.calls.get(state, 0.0) + value
        elif name == "call_monitor_rooms_watched":
            found.rooms_watched = value
        elif name == "call_monitor_events_total":
            found.events = found.events + value
            source = labels.get("source", "")
            found.events_by_source[source] = found.events_by_source.get(source, 0.0) + value
        elif name == "call_monitor_reconcile_runs_total" and labels.get("result") == "success":
            found.reconcile_runs = value
        elif name == "call_monitor_reconcile_requests_total":
            found.reconcile_requests = value
        elif name == "call_monitor_room_connects_total":
            found.room_connects[labels.get("result", "")] = value
        elif name == "call_monitor_webhook_requests_total":
            found.webhooks[labels.get("result", "")] = value
        elif name == "call_monitor_ready":
            found.ready = value
    return found


@dataclass(frozen=True, slots=True)
class Scrape:
    t_send: float
    t_recv: float
    exposition: Exposition

    def poll(self) -> CounterPoll:
        return CounterPoll(self.t_send, self.t_recv, self.exposition.counts)


class Scraper(threading.Thread):
    """GET /metrics every `interval` seconds (changeable while it runs).

    Every scrape is kept while `recording` is set (the latency phase); otherwise only
    the latest. `errors` counts failed scrapes (the monitor restarting, or too busy).
    """

    def __init__(self, port: int, interval: float = 5.0) -> None:
        super().__init__(name="metrics-scraper", daemon=True)
        self.port = port
        self.interval = interval
        self.recording = False
        self.recorded: list[Scrape] = []
        self.latest: Scrape | None = None
        self.errors = 0
        self.scrapes = 0
        self.body_bytes = 0  # size of the last /metrics answer
        self.paused = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None

    def set_interval(self, seconds: float) -> None:
        self.interval = seconds
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def take_recorded(self) -> list[Scrape]:
        with self._lock:
            recorded, self.recorded = self.recorded, []
        return recorded

    def scrape_now(self) -> Scrape | None:
        """One scrape from the calling thread (a fresh connection)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5.0)
        try:
            return self._get(connection)
        except (OSError, http.client.HTTPException):
            return None
        finally:
            connection.close()

    def _get(self, connection: http.client.HTTPConnection) -> Scrape:
        t_send = time.time()
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        t_recv = time.time()
        if response.status != 200:
            raise http.client.HTTPException(f"/metrics answered {response.status}")
        self.body_bytes = len(body)
        return Scrape(t_send, t_recv, parse_exposition(body.decode()))

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            if not self.paused:
                self._once()
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:  # behind: do not catch up with a burst
                next_at = now
            self._wake.wait(max(0.0, next_at - now))
            if self._wake.is_set():
                self._wake.clear()
                next_at = time.monotonic()
        if self._connection is not None:
            self._connection.close()

    def _once(self) -> None:
        if self._connection is None:
            self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5.0)
        try:
            scrape = self._get(self._connection)
        except (OSError, http.client.HTTPException):
            self.errors += 1
            self._connection.close()
            self._connection = None
            return
        self.scrapes += 1
        with self._lock:
            self.latest = scrape
            if self.recording:
                self.recorded.append(scrape)
