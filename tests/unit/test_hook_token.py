"""The dial hook's credential can do nothing on livekit-server, and the monitor takes
nothing else: no token with a LiveKit grant (a SIP `call` grant is what
CreateSIPParticipant needs: a leaked one would be toll fraud), no token living longer
than minutes, no claim of the wrong type, no body other than the one it was minted for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st
from livekit import api

from monitor.client.hook_token import (
    CALLS,
    DIAL,
    MAX_LIFETIME_SECONDS,
    HookTokenRefused,
    HookTokenVerifier,
    body_sha256,
    mint_hook_token,
)
from monitor.runtime.service import Monitor
from tests.unit.http_support import KEY, SECRET, bearer, post_dial, sample

Client = TestClient[web.Request, web.Application]
BODY = json.dumps({"room": "call-b", "participant_identity": "callee", "sip_status_code": 486})
RAW = BODY.encode()


@dataclass(frozen=True)
class FromNow:
    """A time `seconds` from when the token is made (parameters are made earlier)."""

    seconds: int


def claims(**changes: Any) -> dict[str, Any]:
    """A good dial token's claims, with `changes` (None removes a claim)."""
    now = int(time.time())
    changes = {
        name: now + value.seconds if isinstance(value, FromNow) else value
        for name, value in changes.items()
    }
    base: dict[str, Any] = {
        "iss": KEY,
        "nbf": now,
        "iat": now,
        "exp": now + 120,
        "call_monitor": DIAL,
        "sha256": body_sha256(RAW),
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def signed_as_is(payload: dict[str, Any], secret: str = SECRET) -> str:
    """An HS256 JWT of exactly `payload`: PyJWT's encoder refuses some odd claims (an
    `iss` that is not a string) that a hand-made token can carry."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(b'{"alg":"HS256","typ":"JWT"}') + "." + part(json.dumps(payload).encode())
    mac = hmac.new(secret.encode(), head.encode(), hashlib.sha256).digest()
    return head + "." + part(mac)


def token(**changes: Any) -> str:
    return signed_as_is(claims(**changes))


def refusal(authorization: str, purpose: str = DIAL, body: bytes = RAW) -> str | None:
    """Why the verifier refuses, or None when the token passes (its body included)."""
    verifier = HookTokenVerifier(KEY, SECRET)
    try:
        verified = verifier.verify(authorization, purpose)
        if purpose == DIAL:
            verified.check_body(body)
    except HookTokenRefused as refused:
        return str(refused)
    return None


def test_the_minted_token_carries_no_grant_livekit_server_would_honour() -> None:
    minted = jwt.decode(
        mint_hook_token(KEY, SECRET, DIAL, RAW), options={"verify_signature": False}
    )
    assert set(minted) == {"iss", "nbf", "iat", "exp", "call_monitor", "sha256"}
    assert minted["call_monitor"] == "dial"
    assert minted["exp"] - minted["nbf"] <= MAX_LIFETIME_SECONDS
    # What livekit-server's own parser (livekit-api's, the same claims) makes of it:
    parsed = api.TokenVerifier(KEY, SECRET).verify(mint_hook_token(KEY, SECRET, CALLS))
    assert parsed.sip == api.SIPGrants()  # no call, no admin
    video = parsed.video
    assert video is not None
    assert not any((video.room_join, video.room_admin, video.room_list, video.room_create))
    assert refusal("Bearer " + mint_hook_token(KEY, SECRET, DIAL, RAW)) is None
    assert refusal("Bearer " + mint_hook_token(KEY, SECRET, CALLS), CALLS) is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"sip": {"call": True}}, "claims a hook token must not: sip"),
        ({"sip": {"admin": True}}, "claims a hook token must not: sip"),
        ({"video": {"roomAdmin": True, "room": "r"}}, "claims a hook token must not: video"),
        ({"agent": {"admin": True}}, "claims a hook token must not: agent"),
    ],
)
def test_a_token_with_any_livekit_grant_is_refused(changes: dict[str, Any], reason: str) -> None:
    assert reason in str(refusal("Bearer " + token(**changes)))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": None}, "bad token: MissingRequiredClaimError"),
        ({"exp": FromNow(10 * 365 * 86400)}, "lives longer than 600 s"),
        ({"exp": FromNow(601)}, "lives longer than 600 s"),
        ({"nbf": None, "iat": None}, "neither nbf nor iat"),
        # Ten minutes that start in an hour: refused now, valid for those ten minutes.
        ({"nbf": FromNow(3600), "exp": FromNow(4200)}, "Immature"),
        ({"nbf": None, "iat": FromNow(3600)}, "Immature"),
        ({"exp": FromNow(-120)}, "bad token: ExpiredSignatureError"),
    ],
)
def test_a_token_without_a_short_known_lifetime_is_refused(
    changes: dict[str, Any], reason: str
) -> None:
    assert reason in str(refusal("Bearer " + token(**changes)))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"call_monitor": True}, "token is not for dial"),
        ({"call_monitor": "true"}, "token is not for dial"),
        ({"call_monitor": ["dial"]}, "token is not for dial"),
        ({"call_monitor": CALLS}, "token is not for dial"),
        ({"call_monitor": None}, "token is not for dial"),
        ({"exp": str(int(time.time()) + 60)}, "exp must be a number"),
        ({"nbf": "0"}, "nbf must be a number"),
        ({"iat": True}, "iat must be a number"),
        ({"sha256": 5}, "sha256 must be a string"),
        ({"sub": {"id": 1}}, "bad token: InvalidSubjectError"),
        ({"iss": [KEY]}, "bad token: InvalidIssuerError"),
    ],
)
def test_a_claim_of_the_wrong_type_is_refused(changes: dict[str, Any], reason: str) -> None:
    assert reason in str(refusal("Bearer " + token(**changes)))


def test_a_token_for_another_body_or_without_a_body_hash_is_refused() -> None:
    assert refusal("Bearer " + token(), body=RAW + b" ") == "body hash mismatch"
    assert refusal("Bearer " + token(sha256=None)) == "token carries no body hash"


def test_tokens_not_signed_by_our_key_for_us_are_refused() -> None:
    wrong_secret = jwt.encode(claims(), "another-secret-that-is-long-enough-000", "HS256")
    assert refusal("Bearer " + wrong_secret) == "bad token: InvalidSignatureError"
    assert refusal("Bearer " + token(iss="APIother")) == "bad token: InvalidIssuerError"
    other_algorithm = jwt.encode(claims(), SECRET * 2, algorithm="HS512")
    assert refusal("Bearer " + other_algorithm) == "bad token: InvalidAlgorithmError"
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert refusal("Bearer " + unsigned) == "bad token: InvalidAlgorithmError"
    assert refusal(token()) == "missing Bearer token"
    assert refusal("") == "missing Bearer token"


async def test_dial_and_calls_refuse_a_dialers_sip_token_and_take_the_hook_token(
    served: tuple[Monitor, Client],
) -> None:
    monitor, client = served
    sip_call = bearer(sip=api.SIPGrants(call=True))
    assert (await post_dial(client, RAW, sip_call)).status == 401
    # Even one that also carries the body hash, as livekit-api can mint it.
    sip_hashed = api.AccessToken(KEY, SECRET).with_sip_grants(api.SIPGrants(call=True))
    sip_hashed.with_sha256(body_sha256(RAW))
    response = await post_dial(client, RAW, {"Authorization": "Bearer " + sip_hashed.to_jwt()})
    assert response.status == 401
    assert "must not: sip" in (await response.json())["error"]
    assert (await client.get("/calls", headers=bearer(sip=api.SIPGrants(admin=True)))).status == 401
    long_lived = {"Authorization": "Bearer " + token(exp=FromNow(6 * 3600))}
    assert (await post_dial(client, RAW, long_lived)).status == 401
    wrong_type = {"Authorization": "Bearer " + token(call_monitor=True)}
    assert (await post_dial(client, RAW, wrong_type)).status == 401
    other_body = {"Authorization": "Bearer " + token(sha256=body_sha256(b"{}"))}
    assert (await post_dial(client, RAW, other_body)).status == 401
    dial_token = {"Authorization": "Bearer " + token()}
    assert (await client.get("/calls", headers=dial_token)).status == 401
    assert monitor.queue.empty()
    refused = {"endpoint": "dial", "code": "401"}
    assert sample(monitor, "call_monitor_http_bad_requests_total", refused) == 5

    assert (await post_dial(client, RAW, dial_token)).status == 202
    calls_token = {"Authorization": "Bearer " + mint_hook_token(KEY, SECRET, CALLS)}
    assert (await client.get("/calls", headers=calls_token)).status == 200


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
CLAIM_NAMES = st.sampled_from(
    ["iss", "sub", "nbf", "iat", "exp", "jti", "aud", "sha256", "call_monitor", "sip", "video"]
)


@given(st.dictionaries(CLAIM_NAMES, JSON_VALUES), st.booleans())
def test_any_claims_signed_with_our_key_are_refused_with_a_reason_or_pass(
    changes: dict[str, Any], keep_good: bool
) -> None:
    """Whatever a token signed with our key says, the verifier gives a reason or lets it
    through; never another exception (which the server would answer with a 500)."""
    signed = signed_as_is({**(claims() if keep_good else {}), **changes})
    reason = refusal("Bearer " + signed)
    assert reason is None or reason


def test_the_cli_prints_a_calls_token_that_only_reads_calls(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import main

    monkeypatch.setenv("LIVEKIT_API_KEY", KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", SECRET)
    assert main(["calls-token", "--lifetime", "60"]) == 0
    printed = capsys.readouterr().out.strip()
    assert refusal("Bearer " + printed, CALLS) is None
    assert refusal("Bearer " + printed, DIAL) == "token is not for dial (call_monitor != 'dial')"
    monkeypatch.delenv("LIVEKIT_API_SECRET")
    assert main(["calls-token"]) == 2
    assert "LIVEKIT_API_SECRET" in capsys.readouterr().err
