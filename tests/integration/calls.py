"""The stack's SIP side for the integration tests: the trunks and dispatch rule, the
simulator's numbers, placing a call and waiting for the ledger to say how it ended, an
inbound call, and a stack of a test's own."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from livekit import api

from stack import Stack, StackConfig
from stack.ledger import CallEnded, Ledger
from tests.integration.monitoring import wait_until

TRUNK_NUMBER = "+15550000000"


"""Our number on both trunks (the traces in tests/fixtures/traces used it too)."""


OUTBOUND_TRUNK_ADDRESS = "127.0.0.1:5090"


"""Where the outbound trunk points; the simulator takes every call whatever it says."""


DISPATCH_ROOM_PREFIX = "call-"


_numbers = itertools.count(1000)


def sim_number(code: str, suffix: str | None = None) -> str:
    """A number the simulator dials with behaviour `code` ("00" answer, "02" busy...)."""
    if len(code) != 2 or not code.isdigit():
        raise ValueError(f"simulator behaviour codes are two digits, not {code!r}")
    return f"+1555{code}{suffix if suffix is not None else f'{next(_numbers):07d}'}"


def unique_room(prefix: str) -> str:
    """A room name nobody used yet in this stack."""
    # Letters only: six digits in a row would be masked as a phone number in the logs
    # that tests search by room.
    return f"{prefix}-{''.join(secrets.choice(string.ascii_lowercase) for _ in range(8))}"


# --- the stack and the API -----------------------------------------------------------


@contextlib.contextmanager
def stack_sending_webhooks_to(*ports: int) -> Iterator[Stack]:
    """A stack (short room timeouts, for tests) whose webhooks go to 127.0.0.1 at each
    of `ports` (livekit-server sends every webhook to every URL).

    Modules that restart its parts, or count every call on it, start one of their own."""
    config = StackConfig(
        webhook_urls=[f"http://127.0.0.1:{port}/webhook" for port in ports],
        empty_timeout=5,
        departure_timeout=3,
    )
    with Stack.start(config) as running:
        yield running


@dataclass(frozen=True, slots=True)
class SipSetup:
    """The trunks and dispatch rule created for the session."""

    outbound_trunk_id: str
    inbound_trunk_id: str
    dispatch_rule_id: str
    number: str
    outbound_address: str
    room_prefix: str


async def create_sip_setup(lkapi: api.LiveKitAPI) -> SipSetup:
    """Create the trunks and dispatch rule of `sip_setup` on the stack `lkapi` talks to."""
    outbound = await lkapi.sip.create_outbound_trunk(
        api.CreateSIPOutboundTrunkRequest(
            trunk=api.SIPOutboundTrunkInfo(
                name="sim-outbound", address=OUTBOUND_TRUNK_ADDRESS, numbers=[TRUNK_NUMBER]
            )
        )
    )
    inbound = await lkapi.sip.create_inbound_trunk(
        api.CreateSIPInboundTrunkRequest(
            trunk=api.SIPInboundTrunkInfo(name="sim-inbound", numbers=[TRUNK_NUMBER])
        )
    )
    rule = await lkapi.sip.create_dispatch_rule(
        api.CreateSIPDispatchRuleRequest(
            name="sim-individual",
            trunk_ids=[inbound.sip_trunk_id],
            rule=api.SIPDispatchRule(
                dispatch_rule_individual=api.SIPDispatchRuleIndividual(
                    room_prefix=DISPATCH_ROOM_PREFIX
                )
            ),
        )
    )
    return SipSetup(
        outbound_trunk_id=outbound.sip_trunk_id,
        inbound_trunk_id=inbound.sip_trunk_id,
        dispatch_rule_id=rule.sip_dispatch_rule_id,
        number=TRUNK_NUMBER,
        outbound_address=OUTBOUND_TRUNK_ADDRESS,
        room_prefix=DISPATCH_ROOM_PREFIX,
    )


@dataclass(slots=True)
class PlacedCall:
    """One `create_sip_participant` call: what was asked, what came back, how it ended."""

    request: api.CreateSIPParticipantRequest
    t_request: float
    t_return: float
    info: api.SIPParticipantInfo | None = None
    error: api.TwirpError | None = None
    ended: CallEnded | None = None

    @property
    def elapsed(self) -> float:
        """Seconds the API call took."""
        return self.t_return - self.t_request


PlaceCall = Callable[..., Awaitable[PlacedCall]]


def make_place_call(lkapi: api.LiveKitAPI, sip_setup: SipSetup, ledger: Ledger) -> PlaceCall:
    """What the `place_call` fixture gives, for any stack's API, trunks and ledger.

    `await place_call(number, room=..., identity=..., wait_until_answered=...,
    ring=..., talk=..., quirks=..., ringing_timeout=..., wait_for_end=True)`.
    `ring`, `talk` and `quirks` become the simulator's X-Sim-* request headers. A
    Twirp error is kept in `.error`, not raised.
    """

    async def _place(
        number: str,
        *,
        room: str,
        identity: str = "callee",
        wait_until_answered: bool = False,
        ring: float | None = None,
        talk: float | None = None,
        quirks: Sequence[str] = (),
        ringing_timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        wait_for_end: bool = True,
        end_timeout: float = 60.0,
    ) -> PlacedCall:
        sim_headers = dict(headers or {})
        if ring is not None:
            sim_headers["X-Sim-Ring"] = _seconds(ring)
        if talk is not None:
            sim_headers["X-Sim-Talk"] = _seconds(talk)
        if quirks:
            sim_headers["X-Sim-Quirks"] = ",".join(quirks)
        request = api.CreateSIPParticipantRequest(
            sip_trunk_id=sip_setup.outbound_trunk_id,
            sip_call_to=number,
            room_name=room,
            participant_identity=identity,
            wait_until_answered=wait_until_answered,
            headers=sim_headers,
        )
        if ringing_timeout is not None:
            request.ringing_timeout.FromNanoseconds(int(ringing_timeout * 1e9))
        sent = api.CreateSIPParticipantRequest()
        sent.CopyFrom(request)
        placed = PlacedCall(request=sent, t_request=time.monotonic(), t_return=0.0)
        try:
            placed.info = await lkapi.sip.create_sip_participant(request)
        except api.TwirpError as err:
            placed.error = err
        placed.t_return = time.monotonic()
        if wait_for_end:
            placed.ended = await await_call_ended(
                ledger,
                call_id=placed.info.sip_call_id if placed.info else None,
                room=room,
                participant_identity=identity,
                timeout=end_timeout,
            )
        return placed

    return _place


def _seconds(value: float) -> str:
    return f"{value:g}"


async def await_call_ended(
    ledger: Ledger,
    *,
    call_id: str | None = None,
    room: str | None = None,
    participant_identity: str | None = None,
    timeout: float = 60.0,  # noqa: ASYNC109 - a timeout here is a test failure with context
) -> CallEnded:
    """Wait for a call's `call_ended` ledger line, failing the test after `timeout` s."""
    try:
        async with asyncio.timeout(timeout):
            return await ledger.await_call_ended(
                call_id=call_id, room=room, participant_identity=participant_identity
            )
    except TimeoutError:
        pytest.fail(
            f"no call_ended in {ledger.path} for call_id={call_id} room={room} "
            f"identity={participant_identity} within {timeout:.0f} s"
        )


async def wait_sip_status(
    lkapi: api.LiveKitAPI,
    room: str,
    identity: str,
    status: str = "active",
    timeout: float = 15.0,  # noqa: ASYNC109 - a timeout here is a test failure with context
) -> None:
    """Wait until livekit-server has `status` as the participant's `sip.callStatus` (the
    simulator set it, and the server took it), failing the test after `timeout` s."""

    async def has_it() -> bool:
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        return any(
            p.identity == identity and p.attributes.get("sip.callStatus") == status
            for p in listed.participants
        )

    await wait_until(has_it, timeout, f"{identity} in {room} {status} on livekit-server", 0.1)


SimInbound = Callable[..., Awaitable[dict[str, Any]]]
