"""Prometheus metrics: the effects of the call-state machine and the observer's health.

Every metric is declared once, here, with help text, the `call_monitor` namespace, base
units (seconds) and `_total` counters, on the registry it is given (tests pass a fresh
`CollectorRegistry()`). Labels are bounded: direction, state, outcome, reason and
anomaly kind are enums; a trunk id is allowed up to `max_trunks` distinct values, then
folds into "other"; phone numbers, call ids, rooms and identities are never labels.

`MonitorMetrics.handle(effect)` is the sink for the machine's effects; the small methods
below it are for the service's facts about its own health. Calls in each state right
now are read from the book on every scrape by a custom collector, so the gauge can never
drift from the book.
"""

from __future__ import annotations

import platform
import threading
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from typing import Final, TypedDict

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from monitor.core.model import (
    Anomaly,
    AnomalyKind,
    CallEnded,
    CallRecord,
    CallStarted,
    Direction,
    Effect,
    Reason,
    StateChanged,
)
from monitor.core.shards import Shard

__all__ = [
    "ANSWER_BUCKETS",
    "CALL_DURATION_BUCKETS",
    "EVENT_LAG_BUCKETS",
    "LOST_REASONS",
    "PDD_BUCKETS",
    "RECONCILE_BUCKETS",
    "TALK_BUCKETS",
    "WEBHOOK_RESULTS",
    "MonitorMetrics",
]

NAMESPACE: Final = "call_monitor"

# Buckets, in seconds, chosen for telephony.
# Post-dial delay (dial to first 18x): a healthy trunk rings within 0.5 to 3 s; 5 to
# 10 s is slow and users notice; past 30 s the dial has usually timed out.
PDD_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0)
# Time to answer (dial or inbound ring to answer): people pick up after 1 to 4 rings
# (about 5 s each); the usual no-answer timeouts are 30 to 60 s; 120 s is the longest.
ANSWER_BUCKETS: Final = (1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0)
# Talk time (answer to end): from short hang-ups (5 s) through typical 1 to 10 min
# conversations to 2 h, the longest a call center usually lets a call run.
TALK_BUCKETS: Final = (
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
)
# Whole call (join to end), answered or not: failed dials end within a second or two,
# so it starts lower than talk time.
CALL_DURATION_BUCKETS: Final = (
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
)
# Event lag (event time to processed): 1 ms when the loop keeps up, seconds when a
# source is behind (webhook retries, a reconnecting room).
EVENT_LAG_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
UNSHARDED: Final = Shard()
# One reconcile pass lists every room and its participants: tens of ms to seconds.
RECONCILE_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# The results of a webhook request; anything else counts as "error". "ignored": a
# kind the monitor does not read; "not_a_call": a kind it reads, about a participant
# that is no SIP call (an agent, a browser, the monitor's own observer); "other_shard":
# about a room another replica owns.
WEBHOOK_RESULTS: Final[tuple[str, ...]] = (
    "ok",
    "unauthorized",
    "bad_request",
    "too_large",
    "timeout",
    "ignored",
    "not_a_call",
    "other_shard",
    "error",
)

# Why a room connection ended: livekit-server's leave reasons, or what the client saw.
_CLIENT_SIDE_ENDS: Final = (
    "ping_timeout",
    "socket_closed",
    "socket_error",
    "process_exited",
    "error",
)
LOST_REASONS: Final[frozenset[str]] = frozenset(
    [*(str(reason) for reason in Reason), *_CLIENT_SIDE_ENDS]
)

UNKNOWN: Final = "unknown"  # an empty label value
OTHER: Final = "other"  # a value past the limit of distinct values
# Limits of free-form labels the service passes in; past them, values become "other".
_MAX_SOURCES: Final = 16
_MAX_EVENT_TYPES: Final = 64
_MAX_ENDPOINTS: Final = 32
_MAX_LABEL_LENGTH: Final = 64


class _BoundedLabel:
    """Admits the first `limit` distinct values of a label; later ones become "other".

    An empty value is "unknown"; neither counts against the limit."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, raw: str) -> str:
        value = raw.strip()[:_MAX_LABEL_LENGTH] or UNKNOWN
        if value in (UNKNOWN, OTHER):  # not counted against the limit
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
            return OTHER


class _LiveCalls(Collector):
    """`call_monitor_calls`: calls not yet final, by state, built fresh on every scrape."""

    def __init__(
        self, book_view: Callable[[], Iterable[CallRecord]] | None, trunk: _BoundedLabel
    ) -> None:
        self._book_view = book_view
        self._trunk = trunk

    def describe(self) -> Iterable[Metric]:
        # Lets the registry check the name at registration without reading the book.
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        if self._book_view is not None:
            counts = Tally(
                (str(call.state), str(call.direction), self._trunk(call.trunk_id))
                for call in self._book_view()
            )
            for labels, count in sorted(counts.items()):
                family.add_metric(labels, count)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            f"{NAMESPACE}_calls",
            "Calls not yet final (ENDING included), by state; absent means none.",
            labels=["state", "direction", "trunk"],
        )


class _Common(TypedDict):
    namespace: str
    registry: CollectorRegistry


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return UNKNOWN


class MonitorMetrics:
    """Every metric of the monitor, on one registry.

    `book_view` returns the calls not yet final (`CallBook.live_calls`); it is read on
    every scrape, so call `exposition()` from the thread that steps the book.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        book_view: Callable[[], Iterable[CallRecord]] | None = None,
        max_trunks: int = 200,
        shard: Shard = UNSHARDED,
    ) -> None:
        self.registry = registry
        self._trunk = _BoundedLabel(max_trunks)
        self._source = _BoundedLabel(_MAX_SOURCES)
        self._event_type = _BoundedLabel(_MAX_EVENT_TYPES)
        self._endpoint = _BoundedLabel(_MAX_ENDPOINTS)
        common = _Common(namespace=NAMESPACE, registry=registry)

        # ---- calls ----
        self._started = Counter(
            "calls_started",
            "Calls seen starting (a SIP participant first seen), by direction and trunk.",
            ["direction", "trunk"],
            **common,
        )
        self._ended = Counter(
            "calls_ended",
            "Calls ended with a final outcome; reason is the DisconnectReason or none, "
            "ambiguous is true when the outcome could be another one.",
            ["direction", "trunk", "outcome", "reason", "ambiguous"],
            **common,
        )
        self._transitions = Counter(
            "state_transitions",
            "Call state changes, by the state left and the state entered.",
            ["direction", "from_state", "to_state"],
            **common,
        )
        self._trunk_overflow = Counter(
            "trunk_label_overflow",
            "Calls whose trunk was counted as trunk=other: more distinct trunks than "
            "the label limit.",
            **common,
        )
        self._pdd = Histogram(
            "post_dial_delay",
            "Outbound calls: from the dial (join) to the first ringing.",
            ["trunk"],
            unit="seconds",
            buckets=PDD_BUCKETS,
            **common,
        )
        self._answer = Histogram(
            "time_to_answer",
            "From the join to the answer (automation or active), answered calls only.",
            ["direction", "trunk"],
            unit="seconds",
            buckets=ANSWER_BUCKETS,
            **common,
        )
        self._talk = Histogram(
            "talk_duration",
            "From the answer to the end, answered calls only.",
            ["direction", "trunk"],
            unit="seconds",
            buckets=TALK_BUCKETS,
            **common,
        )
        self._duration = Histogram(
            "call_duration",
            "From the join to the end, every ended call.",
            ["direction", "trunk"],
            unit="seconds",
            buckets=CALL_DURATION_BUCKETS,
            **common,
        )
        self._anomalies = Counter(
            "anomalies",
            "Input a well-behaved livekit-sip and server would not produce, by kind.",
            ["kind"],
            **common,
        )
        for kind in AnomalyKind:
            self._anomalies.labels(kind=str(kind))
        registry.register(_LiveCalls(book_view, self._trunk))

        # ---- the observer's health ----
        self._rooms_watched = Gauge(
            "rooms_watched", "Rooms the observer is connected to now.", **common
        )
        self._room_connects = Counter(
            "room_connects",
            "Attempts of the observer to connect to a room, by result.",
            ["result"],
            **common,
        )
        for result in ("success", "failure"):
            self._room_connects.labels(result=result)
        self._room_reconnects = Counter(
            "room_reconnects", "Room connections lost and re-established.", **common
        )
        self._room_connections_lost = Counter(
            "room_connections_lost",
            "Room connections that ended while the room still mattered, by why: the "
            "leave reason livekit-server gave, or ping_timeout, socket_closed, "
            "socket_error, process_exited.",
            ["reason"],
            **common,
        )
        self._room_renewals = Counter(
            "room_renewals",
            "Signal-channel sessions replaced before livekit-server's one-minute join "
            "timeout, by result.",
            ["result"],
            **common,
        )
        for result in ("success", "failure"):
            self._room_renewals.labels(result=result)
        self._webhooks = Counter(
            "webhook_requests",
            "Webhook requests received from livekit-server, by result.",
            ["result"],
            **common,
        )
        for webhook_result in WEBHOOK_RESULTS:
            self._webhooks.labels(result=webhook_result)
        self._bad_requests = Counter(
            "http_bad_requests",
            "HTTP requests refused with a 4xx, by endpoint (route name) and status code.",
            ["endpoint", "code"],
            **common,
        )
        self._event_lag = Histogram(
            "event_lag",
            "From an event's time to its processing, by source.",
            ["source"],
            unit="seconds",
            buckets=EVENT_LAG_BUCKETS,
            **common,
        )
        self._events = Counter(
            "events",
            "Events processed, by source and event type.",
            ["source", "type"],
            **common,
        )
        self._journal_errors = Counter(
            "journal_write_errors", "Events that could not be written to the journal.", **common
        )
        self._journal_partial_lines = Counter(
            "journal_partial_lines",
            "Last journal lines found cut (a crash mid-write) and moved aside on opening it.",
            **common,
        )
        self._reconcile_runs = Counter(
            "reconcile_runs",
            "Reconciliation passes (room and participant listings), by result.",
            ["result"],
            **common,
        )
        for result in ("success", "failure"):
            self._reconcile_runs.labels(result=result)
        self._restored = Gauge(
            "restored_calls",
            "Calls open in the journal that this process brought back when it started "
            "(a restart after a crash or a deploy; 0 without a journal).",
            **common,
        )
        self._reconcile_requests = Counter(
            "reconcile_requests",
            "RoomService requests reconciliation made: one ListRooms a pass, and one "
            "ListParticipants per room it asked.",
            **common,
        )
        self._reconcile_seconds = Histogram(
            "reconcile_duration",
            "How long one reconciliation pass took.",
            unit="seconds",
            buckets=RECONCILE_BUCKETS,
            **common,
        )
        self._ready = Gauge(
            "ready", "1 when the monitor is connected and watching, else 0.", **common
        )
        # Every replica says how many share the rooms: an alert can tell one missing,
        # even one whose target is gone (its series with it).
        Gauge(
            "shards",
            "How many replicas share the rooms (CALL_MONITOR_SHARDS); 1 for one monitor.",
            **common,
        ).set(shard.count)
        self._build = Info(
            "build",
            "The monitor's version, its Python and its LiveKit SDK, and its shard (of how "
            "many replicas share the rooms).",
            **common,
        )
        self._build.info(
            {
                "version": _package_version("livekit-call-monitor"),
                "python": platform.python_version(),
                "livekit_sdk": _package_version("livekit"),
                "shard": str(shard.index),
                "shards": str(shard.count),
            }
        )
        # The process's own memory, CPU and files (Linux): what operators watch first.
        # The registry is the monitor's own, so prometheus_client's default collector
        # is not in it.
        ProcessCollector(namespace=NAMESPACE, registry=registry)

    # ---- the effect sink ------------------------------------------------------------

    def handle(self, effect: Effect) -> None:
        """Count one effect of the machine."""
        if isinstance(effect, CallStarted):
            call = effect.call
            trunk = self._trunk(call.trunk_id)
            if trunk == OTHER and call.trunk_id.strip() != OTHER:
                self._trunk_overflow.inc()
            self._started.labels(direction=str(call.direction), trunk=trunk).inc()
        elif isinstance(effect, StateChanged):
            self._transitions.labels(
                direction=str(effect.call.direction),
                from_state=str(effect.previous),
                to_state=str(effect.call.state),
            ).inc()
        elif isinstance(effect, CallEnded):
            self._call_ended(effect.call)
        elif isinstance(effect, Anomaly):
            self._anomalies.labels(kind=str(effect.kind)).inc()

    def _call_ended(self, call: CallRecord) -> None:
        direction = str(call.direction)
        trunk = self._trunk(call.trunk_id)
        self._ended.labels(
            direction=direction,
            trunk=trunk,
            outcome=UNKNOWN if call.outcome is None else str(call.outcome),
            reason="none" if call.reason is None else str(call.reason),
            ambiguous="true" if call.ambiguity else "false",
        ).inc()
        timings = call.timings
        total = timings.total_duration
        if total is not None:
            self._duration.labels(direction=direction, trunk=trunk).observe(total)
        # A moment seen only in a snapshot is a bound, not a measurement: it is kept out
        # of the histograms it would skew (the call log still shows it).
        pdd = timings.post_dial_delay
        outbound = call.direction is Direction.OUTBOUND
        if outbound and pdd is not None and not timings.ringing_approximate:
            self._pdd.labels(trunk=trunk).observe(pdd)
        answer = timings.time_to_answer
        if answer is not None and not timings.answer_approximate:
            self._answer.labels(direction=direction, trunk=trunk).observe(answer)
            talk = timings.talk_duration
            if talk is not None:
                self._talk.labels(direction=direction, trunk=trunk).observe(talk)

    # ---- the observer's health ------------------------------------------------------

    def room_connect(self, ok: bool) -> None:
        """One attempt to connect to a room."""
        self._room_connects.labels(result="success" if ok else "failure").inc()

    def room_reconnect(self) -> None:
        self._room_reconnects.inc()

    def room_connection_lost(self, why: str) -> None:
        """A room connection ended on its own; `why` outside the known words is "other"."""
        self._room_connections_lost.labels(reason=why if why in LOST_REASONS else "other").inc()

    def room_renewal(self, ok: bool) -> None:
        self._room_renewals.labels(result="success" if ok else "failure").inc()

    def rooms_watched(self, n: int) -> None:
        self._rooms_watched.set(n)

    def webhook_request(self, result: str) -> None:
        """One webhook request, by a result of `WEBHOOK_RESULTS`; any other counts as "error"."""
        self._webhooks.labels(result=result if result in WEBHOOK_RESULTS else "error").inc()

    def bad_request(self, endpoint: str, code: int) -> None:
        """A refused HTTP request; `endpoint` is the route's name, never the raw path."""
        self._bad_requests.labels(endpoint=self._endpoint(endpoint), code=str(code)).inc()

    def event_processed(self, source: str, type: str, lag_seconds: float) -> None:
        """One event processed, `lag_seconds` after its time (negative lag counts as 0)."""
        source_label = self._source(source)
        self._events.labels(source=source_label, type=self._event_type(type)).inc()
        self._event_lag.labels(source=source_label).observe(max(0.0, lag_seconds))

    def journal_write_error(self) -> None:
        self._journal_errors.inc()

    def journal_partial_lines(self, count: int) -> None:
        """Partial last lines the journal writer set aside when it opened the journal."""
        self._journal_partial_lines.inc(max(0, count))

    def calls_restored(self, count: int) -> None:
        self._restored.set(count)

    def reconcile_request(self) -> None:
        self._reconcile_requests.inc()

    def reconcile_run(self, ok: bool, seconds: float) -> None:
        self._reconcile_runs.labels(result="success" if ok else "failure").inc()
        self._reconcile_seconds.observe(max(0.0, seconds))

    def ready(self, is_ready: bool) -> None:
        self._ready.set(1 if is_ready else 0)

    # ---- exposition -------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def sample_totals(exposition: str, sample: str, by: str = "") -> defaultdict[str, float]:
    """A sample's values in a text exposition, summed per value of label `by` (all under
    "" when `by` is empty; 0 for a value never seen): how the demo, the tests and the
    bench read /metrics."""
    totals: defaultdict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == sample:
                totals[found.labels.get(by, "") if by else ""] += found.value
    return totals
