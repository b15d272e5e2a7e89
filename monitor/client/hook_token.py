"""The credential for the dial hook (`POST /dial`) and the calls listing (`GET /calls`).

A JWT signed with the LiveKit API key and secret (HS256, `iss` the key), like
livekit-server's webhooks, that grants nothing livekit-server honours: no `video`, no
`sip`, no grant of any kind, only `{"call_monitor": "dial"}` (or `"calls"`) naming what
it is for. A leaked one cannot place a call (a token with a SIP `call` grant can: toll
fraud), join, list or administer a room; it can report a dial failure, whose body it is
bound to by the body's sha256, or read `/calls`, for a few minutes.

The monitor refuses a token that carries any other claim, names another purpose, lives
longer than `MAX_LIFETIME_SECONDS` (or has no `exp`), or has a claim of the wrong type
(`"exp": "1800000000"`, `"call_monitor": true`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any, Final

# PyJWT: what livekit-api signs and verifies its own tokens with.
import jwt

__all__ = [
    "CALLS",
    "DIAL",
    "MAX_LIFETIME_SECONDS",
    "HookClaims",
    "HookTokenRefused",
    "HookTokenVerifier",
    "body_sha256",
    "mint_hook_token",
]

PURPOSE_CLAIM: Final = "call_monitor"
DIAL: Final = "dial"
CALLS: Final = "calls"
DEFAULT_LIFETIME_SECONDS: Final = 120
MAX_LIFETIME_SECONDS: Final = 600
# Clocks of the dialer and the monitor may differ by this much.
LEEWAY_SECONDS: Final = 60
# Every claim a hook token may carry. Any other, a LiveKit grant above all (`video`,
# `sip`, `agent`...), is refused: this credential must be useless to livekit-server.
_ALLOWED_CLAIMS: Final = frozenset({"iss", "sub", "nbf", "iat", "exp", "jti", "sha256"})


def body_sha256(body: bytes) -> str:
    """The body's hash as livekit-server's webhooks carry it: base64 of the sha256."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def mint_hook_token(
    api_key: str,
    api_secret: str,
    purpose: str,
    body: bytes | None = None,
    lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS,
) -> str:
    """A token for `purpose` (`DIAL` with the exact body it is sent with, or `CALLS`)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": api_key,
        "nbf": now,
        "iat": now,
        "exp": now + lifetime_seconds,
        PURPOSE_CLAIM: purpose,
    }
    if body is not None:
        claims["sha256"] = body_sha256(body)
    return jwt.encode(claims, api_secret, algorithm="HS256")


class HookTokenRefused(Exception):
    """Not a hook token of ours for this purpose; str() says why, never the token."""


@dataclass(frozen=True, slots=True)
class HookClaims:
    sha256: str | None

    def check_body(self, body: bytes) -> None:
        """The body must be the one the token was minted for."""
        if self.sha256 is None:
            raise HookTokenRefused("token carries no body hash")
        if not hmac.compare_digest(self.sha256, body_sha256(body)):
            raise HookTokenRefused("body hash mismatch")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class HookTokenVerifier:
    """Checks hook tokens signed with our API key, before any body is read."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        self._api_key = api_key
        self._api_secret = api_secret

    def verify(self, authorization: str, purpose: str) -> HookClaims:
        """The claims of `Authorization: Bearer <token>`, or HookTokenRefused."""
        if not authorization.startswith("Bearer "):
            raise HookTokenRefused("missing Bearer token")
        claims = self._decode(authorization.removeprefix("Bearer ").strip())
        self._check_claims(claims, purpose)
        self._check_lifetime(claims)
        sha256 = claims.get("sha256")
        return HookClaims(sha256 if isinstance(sha256, str) else None)

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._api_secret,
                algorithms=["HS256"],
                issuer=self._api_key,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss"]},
            )
        # Signature, expiry, issuer, format: all mean "not ours", and so does anything
        # else a malformed token might make PyJWT raise (a 401, never a 500).
        except Exception as error:
            raise HookTokenRefused(f"bad token: {type(error).__name__}") from None
        return claims

    @staticmethod
    def _check_claims(claims: dict[str, Any], purpose: str) -> None:
        others = sorted(set(claims) - _ALLOWED_CLAIMS - {PURPOSE_CLAIM})
        if others:
            shown = ", ".join(name[:20] for name in others[:3])
            raise HookTokenRefused(f"token carries claims a hook token must not: {shown}")
        if claims.get(PURPOSE_CLAIM) != purpose:  # the string itself: true or 1 is not it
            raise HookTokenRefused(f"token is not for {purpose} ({PURPOSE_CLAIM} != {purpose!r})")
        for name in ("iss", "sub", "jti", "sha256"):
            if name in claims and not isinstance(claims[name], str):
                raise HookTokenRefused(f"token claim {name} must be a string")
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_number(claims[name]):
                raise HookTokenRefused(f"token claim {name} must be a number")

    @staticmethod
    def _check_lifetime(claims: dict[str, Any]) -> None:
        start = claims.get("nbf", claims.get("iat"))
        if start is None:
            raise HookTokenRefused("token has neither nbf nor iat: its lifetime is unknown")
        # PyJWT refused an nbf or iat in the future, so this bounds the time left too.
        if claims["exp"] - start > MAX_LIFETIME_SECONDS:
            raise HookTokenRefused(f"token lives longer than {MAX_LIFETIME_SECONDS} s")
