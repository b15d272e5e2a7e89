"""Load: N concurrent outbound calls through the real CreateSIPParticipant API.

Each call gets a room of its own and a simulator number that picks what the far end
does (docs/simulator.md): answer and hang up, busy, decline, no answer, a 503, or
answer and wait for us to hang up (RemoveParticipant). Ring and talk times come from
the mix, as X-Sim-Ring / X-Sim-Talk headers. Each of N slots places a call, waits for
the simulator's ledger to say it ended, and places the next, so N calls stay up (as
far as the placement rate allows: ramp-up at `ramp_rate`, then at most `max_rate`
calls a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from livekit import api

from bench.ledger import CallTruth, LedgerTail

__all__ = ["MIXES", "LoadGenerator", "Mix", "Outcome"]

TRUNK_NUMBER = "+15550000000"
IDENTITY = "callee"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One kind of call in a mix: the simulator's scenario code and its weight."""

    code: str  # the two digits after +1555 (docs/simulator.md "the number table")
    label: str
    weight: float
    we_hang_up: bool = False  # 01: the far end waits; we RemoveParticipant after the talk
    no_answer: bool = False  # 09: ringing_timeout = the drawn ring time


@dataclass(frozen=True, slots=True)
class Mix:
    name: str
    # Post-dial delay, INVITE to the 18x: carriers take 0.5 to a few seconds, and an
    # observer that joins when the participant appears is in the room before it.
    pdd: tuple[float, float]  # seconds, uniform
    ring: tuple[float, float]  # seconds from the 18x, uniform
    talk: tuple[float, float]
    outcomes: tuple[Outcome, ...]
    description: str

    def draw(self, rng: random.Random) -> tuple[Outcome, float, float, float]:
        """An outcome, and its post-dial delay, ring and talk times."""
        outcome = rng.choices(self.outcomes, weights=[o.weight for o in self.outcomes])[0]
        return (
            outcome,
            round(rng.uniform(*self.pdd), 2),
            round(rng.uniform(*self.ring), 2),
            round(rng.uniform(*self.talk), 2),
        )

    def mean_seconds(self) -> float:
        """Roughly how long a call lasts (setup included), for the placement rate needed."""
        ring = sum(self.pdd) / 2 + sum(self.ring) / 2
        talk = sum(self.talk) / 2
        total = sum(o.weight for o in self.outcomes)
        answered = sum(o.weight for o in self.outcomes if o.code in ("00", "01")) / total
        return 0.3 + ring + answered * talk


# What a day of outbound calls ends in: 85% answered (80% the callee hangs up, 5% we
# remove the participant), 7% busy, 4% declined, 4% no answer.
_EVERYDAY_OUTCOMES = (
    Outcome("00", "answered, callee hangs up", 80),
    Outcome("01", "answered, we hang up", 5, we_hang_up=True),
    Outcome("02", "busy", 7),
    Outcome("03", "declined", 4),
    Outcome("09", "no answer", 4, no_answer=True),
)

MIXES: dict[str, Mix] = {
    "realistic": Mix(
        "realistic",
        pdd=(0.5, 2.5),
        ring=(2.0, 5.0),
        talk=(20.0, 40.0),
        outcomes=_EVERYDAY_OUTCOMES,
        description=(
            "post-dial delay 0.5-2.5 s, ring 2-5 s, talk 20-40 s; 85% answered (80% "
            "callee hangs up, 5% we remove the participant), 7% busy, 4% declined, 4% no "
            "answer: about one call in seven is being set up at any moment"
        ),
    ),
    "long": Mix(
        "long",
        pdd=(0.5, 2.5),
        ring=(2.0, 5.0),
        talk=(60.0, 300.0),
        outcomes=_EVERYDAY_OUTCOMES,
        description=(
            "as realistic, with real call lengths: talk 1-5 min, so 1,000 concurrent "
            "calls take about 6.5 new calls a second; one call in about 45 is being set "
            "up at any moment"
        ),
    ),
    "setup-heavy": Mix(
        "setup-heavy",
        pdd=(0.3, 1.0),
        ring=(1.0, 3.0),
        talk=(1.0, 3.0),
        outcomes=(
            Outcome("00", "answered, callee hangs up", 60),
            Outcome("02", "busy", 15),
            Outcome("03", "declined", 10),
            Outcome("07", "503 from the trunk", 10),
            Outcome("09", "no answer", 5, no_answer=True),
        ),
        description=(
            "post-dial delay 0.3-1 s, ring 1-3 s, talk 1-3 s; 60% answered, 15% busy, "
            "10% declined, 10% 503, 5% no answer: most of every call is set-up"
        ),
    ),
}


class _Bucket:
    """At most `rate` takes a second, spread evenly."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + 1.0 / self.rate
            if wait > 0:
                await asyncio.sleep(wait)


@dataclass
class Placed:
    """One call the bench placed."""

    call_id: str
    room: str
    outcome: str
    t_request: float
    t_return: float


class LoadGenerator:
    """N slots, each keeping one call up; counts what it placed and what failed."""

    def __init__(
        self,
        lkapi: api.LiveKitAPI,
        trunk_id: str,
        ledger: LedgerTail,
        mix: Mix,
        *,
        prefix: str,
        ramp_rate: float,
        max_rate: float,
        seed: int = 1,
        on_placed: Callable[[Placed], None] | None = None,
    ) -> None:
        self.lkapi = lkapi
        self.trunk_id = trunk_id
        self.ledger = ledger
        self.mix = mix
        self.prefix = prefix
        self.ramp_rate = ramp_rate
        self.max_rate = max_rate
        self.rng = random.Random(seed)
        self.on_placed = on_placed
        self.placed: list[Placed] = []
        self.up: dict[str, Placed] = {}  # placed, end not in the ledger yet
        self.in_flight = 0  # CreateSIPParticipant requests not answered yet
        self.errors: Counter[str] = Counter()
        self.stuck = 0  # calls whose end never showed in the ledger in time
        self.api_seconds: list[float] = []
        self._serial = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._hangups: set[asyncio.Task[None]] = set()
        self._bucket = _Bucket(ramp_rate)
        self._target = 0
        self.placing = True

    @property
    def target(self) -> int:
        return self._target

    def live(self) -> int:
        """Calls being placed, or placed and not ended in the ledger yet."""
        return len(self.up) + self.in_flight

    def live_rooms(self) -> list[str]:
        return [p.room for p in self.up.values()]

    def start(self, n: int) -> None:
        self._target = n
        for slot in range(n):
            self._tasks.append(asyncio.create_task(self._slot(), name=f"slot-{slot}"))

    def steady(self) -> None:
        """The ramp is over: replace ended calls at up to `max_rate` a second."""
        self._bucket.rate = self.max_rate

    async def stop(self) -> None:
        self.placing = False
        for task in [*self._tasks, *self._hangups]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._hangups, return_exceptions=True)
        self._tasks.clear()

    async def _slot(self) -> None:
        while self.placing:
            await self._bucket.take()
            if not self.placing:
                return
            placed, ring, talk = await self._place_one()
            if placed is None:
                await asyncio.sleep(1.0)  # back off after an error
                continue
            truth = self.ledger.call(placed.call_id)
            try:
                async with asyncio.timeout(ring + talk + 90.0):
                    await truth.ended_event.wait()
            except TimeoutError:
                self.stuck += 1
            finally:
                self.up.pop(placed.call_id, None)

    async def _place_one(self) -> tuple[Placed | None, float, float]:
        outcome, pdd, ring, talk = self.mix.draw(self.rng)
        serial = next(self._serial)
        room = f"{self.prefix}-{serial}"
        request = api.CreateSIPParticipantRequest(
            sip_trunk_id=self.trunk_id,
            sip_call_to=f"+1555{outcome.code}{serial:07d}",
            room_name=room,
            participant_identity=IDENTITY,
            wait_until_answered=False,
            headers={
                "X-Sim-PDD": f"{pdd:g}",
                "X-Sim-Ring": f"{ring:g}",
                "X-Sim-Talk": f"{talk:g}",
            },
        )
        if outcome.no_answer:  # the ringing timeout counts from the INVITE
            request.ringing_timeout.FromNanoseconds(int((pdd + ring) * 1e9))
        t_request = time.time()
        self.in_flight += 1
        try:
            info = await self.lkapi.sip.create_sip_participant(request)
        except api.TwirpError as error:
            self.errors[f"{error.code}: {error.message[:80]}"] += 1
            return None, ring, talk
        except (TimeoutError, OSError) as error:
            self.errors[f"{type(error).__name__}: {str(error)[:80]}"] += 1
            return None, ring, talk
        finally:
            self.in_flight -= 1
        t_return = time.time()
        self.api_seconds.append(t_return - t_request)
        placed = Placed(info.sip_call_id, room, outcome.code, t_request, t_return)
        self.placed.append(placed)
        self.up[placed.call_id] = placed
        truth = self.ledger.call(placed.call_id)
        if outcome.we_hang_up:
            task = asyncio.create_task(self._hang_up(truth, room, talk))
            self._hangups.add(task)
            task.add_done_callback(self._hangups.discard)
        if self.on_placed is not None:
            self.on_placed(placed)
        return placed, ring, talk

    async def _hang_up(self, truth: CallTruth, room: str, talk: float) -> None:
        await truth.answered_event.wait()
        if truth.ended is not None:
            return
        await asyncio.sleep(talk)
        with contextlib.suppress(api.TwirpError, TimeoutError, OSError):
            await self.lkapi.room.remove_participant(
                api.RoomParticipantIdentity(room=room, identity=IDENTITY)
            )

    def summary(self, seconds: float) -> dict[str, object]:
        from bench.stats import summarize

        errors = sum(self.errors.values())
        attempts = len(self.placed) + errors
        return {
            "target": self._target,
            "placed": len(self.placed),
            "api_errors": errors,
            "api_error_ratio": round(errors / attempts, 4) if attempts else 0.0,
            "api_errors_by_kind": dict(self.errors.most_common(10)),
            "stuck": self.stuck,
            "calls_per_second": round(len(self.placed) / seconds, 2) if seconds > 0 else None,
            "api_ms": summarize(self.api_seconds, 1000.0),
            "mix": self.mix.name,
        }


def placements_needed(mix: Mix, n: int) -> float:
    """Calls a second needed to keep `n` calls up with this mix."""
    return n / mix.mean_seconds()


def outcome_counts(calls: Sequence[Placed]) -> dict[str, int]:
    return dict(Counter(p.outcome for p in calls))
