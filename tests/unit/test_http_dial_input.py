"""Whatever body a dialer posts to /dial, through the real HTTP server: either it is
accepted (202) and its event reaches the queue, journals and replays as it was, and
the machine takes it, or it is refused with a 4xx and a JSON reason. Never a 5xx."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Coroutine, Iterator
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from monitor.client.hook_token import DIAL
from monitor.core.journal_format import decode_line, encode_event
from monitor.core.machine import CallBook
from monitor.core.model import DialFailed, Event
from monitor.runtime.config import load_settings
from monitor.runtime.http import serve
from monitor.runtime.service import Monitor
from tests.unit.http_support import KEY, SECRET, hook_headers

T = TypeVar("T")


class ServedMonitor:
    """The monitor's real HTTP server (`serve`) on loopback, on a loop of its own in a
    thread, so that hypothesis (synchronous) can post to it like any client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stack = AsyncExitStack()
        self.port = 0
        self.monitor: Monitor | None = None

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self) -> None:
        environ = {"LIVEKIT_URL": "ws://127.0.0.1:1", "LIVEKIT_API_KEY": KEY}
        environ["LIVEKIT_API_SECRET"] = SECRET
        self.monitor = Monitor(load_settings({"http_port": "0"}, environ))
        self.port, _ = await self.stack.enter_async_context(serve(self.monitor))

    async def _drain(self) -> list[Event]:
        assert self.monitor is not None
        queue = self.monitor.queue
        return [queue.get_nowait() for _ in range(queue.qsize())]

    def start(self) -> None:
        self.thread.start()
        self.run(self._start())

    def stop(self) -> None:
        self.run(self.stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def queued(self) -> list[Event]:
        return self.run(self._drain())

    def post_dial(self, body: bytes) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {**hook_headers(DIAL, body), "Content-Type": "application/json"}
            connection.request("POST", "/dial", body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def served() -> Iterator[ServedMonitor]:
    server = ServedMonitor()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def check_answer(served: ServedMonitor, body: bytes) -> int:
    """Post `body`; assert what an answer promises; return the status."""
    status, answer = served.post_dial(body)
    assert status < 500, (status, answer[:200])
    events = served.queued()
    if status == 202:
        [event] = events
        assert isinstance(event, DialFailed)
        line = encode_event(event)
        line.encode("utf-8")  # what the journal file is written in
        assert decode_line(line) == event  # journaled and replayed as it was
        CallBook().step(event)
    else:
        assert 400 <= status < 500
        assert events == []
        assert json.loads(answer)["error"]
    return status


# Any code point, lone surrogates included: JSON spells them as "\ud800".
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=20)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats()
    | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)
FIELD = st.one_of(ANY_TEXT, JSON_VALUES)
DIAL_SHAPED = st.fixed_dictionaries(
    {},
    optional={
        "room": FIELD,
        "participant_identity": FIELD,
        "sip_status_code": st.one_of(st.integers(0, 1000), FIELD),
        "sip_status": FIELD,
        "call_id": FIELD,
    },
)
# What a dialer would send, with any text in its strings: most are accepted.
DIALER_LIKE = st.fixed_dictionaries(
    {
        "room": ANY_TEXT,
        "participant_identity": ANY_TEXT,
        "sip_status_code": st.none() | st.integers(100, 699),
    },
    optional={"sip_status": ANY_TEXT, "call_id": ANY_TEXT},
)
NESTED = st.builds(
    lambda depth, opener: opener[0] * depth + "1" + opener[1] * depth,
    st.integers(1, 3000),
    st.sampled_from([("[", "]"), ('{"a":', "}")]),
)
BODIES = st.one_of(
    st.one_of(JSON_VALUES, DIAL_SHAPED, DIALER_LIKE).map(lambda value: json.dumps(value).encode()),
    NESTED.map(str.encode),
    ANY_TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=64),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES)
def test_any_dial_body_is_accepted_whole_or_refused_with_a_4xx(
    served: ServedMonitor, body: bytes
) -> None:
    event(f"answered {check_answer(served, body)}")


def test_a_lone_surrogate_in_a_string_is_refused_not_accepted_and_lost(
    served: ServedMonitor,
) -> None:
    good = {"room": "call-b", "participant_identity": "callee", "sip_status_code": 486}
    assert check_answer(served, json.dumps(good).encode()) == 202
    for field in ("room", "participant_identity", "sip_status", "call_id"):
        body = json.dumps({**good, field: "call-\ud800"}).encode()
        assert b"\\ud800" in body
        status, answer = served.post_dial(body)
        assert status == 400, field
        assert json.loads(answer)["error"] == f"{field} is not valid Unicode (a lone surrogate)"


def test_a_body_nested_a_thousand_deep_gets_a_json_400(served: ServedMonitor) -> None:
    for body in ("[" * 1000 + "]" * 1000, '{"room":' * 1000 + '"r"' + "}" * 1000):
        status, answer = served.post_dial(body.encode())
        assert status == 400
        assert json.loads(answer)["error"] == "body is not JSON: nested too deeply"
