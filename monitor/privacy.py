"""Phone numbers are personal data: logs and listings show them masked by default.

A masked number keeps its country code and its last digits (`+44*******8901`), enough to
tell calls apart and spot a bad prefix, not enough to call anyone.
"""

from __future__ import annotations

import re

__all__ = ["NumberMasker", "mask_number", "mask_numbers_in"]

# ITU-T E.164 country codes of one and two digits; all others have three.
_ONE_DIGIT = frozenset("17")
_TWO_DIGITS = frozenset(
    [
        "20",
        "27",
        "30",
        "31",
        "32",
        "33",
        "34",
        "36",
        "39",
        "40",
        "41",
        "43",
        "44",
        "45",
        "46",
        "47",
        "48",
        "49",
        "51",
        "52",
        "53",
        "54",
        "55",
        "56",
        "57",
        "58",
        "60",
        "61",
        "62",
        "63",
        "64",
        "65",
        "66",
        "81",
        "82",
        "84",
        "86",
        "90",
        "91",
        "92",
        "93",
        "94",
        "95",
        "98",
    ]
)
# A run of 6+ digits, optionally with a leading +: a phone number inside any text.
_NUMBER = re.compile(r"\+?\d{6,}")


def _country_code_length(digits: str) -> int:
    if digits[:1] in _ONE_DIGIT:
        return 1
    if digits[:2] in _TWO_DIGITS:
        return 2
    return 3


def mask_number(number: str, keep_last: int = 4) -> str:
    """Mask one number: country code (E.164 numbers only) and the last digits stay."""
    if not number:
        return number
    plus = number.startswith("+")
    digits = number[1:] if plus else number
    if not digits.isdigit():
        return mask_numbers_in(number, keep_last)
    head = _country_code_length(digits) if plus else 0
    tail = min(keep_last, max(0, len(digits) - head - 3))  # always hide 3 digits or more
    hidden = len(digits) - head - tail
    if hidden <= 0:
        return ("+" if plus else "") + "*" * len(digits)
    return ("+" if plus else "") + digits[:head] + "*" * hidden + digits[len(digits) - tail :]


def mask_numbers_in(text: str, keep_last: int = 4) -> str:
    """Mask every number-looking run inside a text (identities like `sip_+15551112222`)."""
    return _NUMBER.sub(lambda match: mask_number(match.group(0), keep_last), text)


class NumberMasker:
    """Masks numbers as the settings ask; `enabled=False` shows them as they are."""

    def __init__(self, enabled: bool = True, keep_last: int = 4) -> None:
        self.enabled = enabled
        self.keep_last = keep_last

    def number(self, value: str) -> str:
        return mask_number(value, self.keep_last) if self.enabled else value

    def text(self, value: str) -> str:
        return mask_numbers_in(value, self.keep_last) if self.enabled else value
