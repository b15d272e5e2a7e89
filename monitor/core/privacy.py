"""Phone numbers are personal data: logs and listings show them masked by default.

A masked number keeps its country code and its last digits (`+44*******8901`), enough to
tell calls apart and spot a bad prefix, not enough to call anyone. Its separators stay
where they were (`+1 (***) ***-4567`), so the way it was written still shows.

What counts as a phone number inside a text (`mask_numbers_in`):

- digits in groups separated by one space, dash or dot, with at most one group in
  parentheses and an optional leading `+`: `+15551234567`, `555-867-5309`,
  `+1 (555) 123-4567`, `555.867.5309`, `+44 20 7946 0958`, in any surrounding text
  (`tel:+1...`, `sip:555...@host;user=phone`, `sip_+1...`);
- with a run of 6 digits or more, or 7 digits or more in all; when the groups are
  separated by dots only and there is no `+`, there must be 3 groups or more
  (`1234.567` is a decimal).

Not numbers, left as they are: ISO 8601 dates and times (`2026-11-26T09:00:00.123Z`,
`2026-11-26 09:00:00`), IPv4 addresses with or without a port (`10.0.0.1:5060`; four
groups from 0 to 255 separated by dots), and
anything with fewer digits (ports, durations, SIP codes, LiveKit ids like `PA_abc123`).
A list of small numbers separated by spaces (`10 20 30 40`) is taken for a phone number:
masking too much is the safe mistake.
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
_PAREN_GROUP = r"\(\d{1,5}\)"
# Digit groups joined by one separator, or by a group in parentheses with a separator on
# either side or none. Separators are never optional between two plain groups, so a
# run of digits is matched one way only (no backtracking blow-up).
_NUMBER_PATTERN = rf"\+?(?:{_PAREN_GROUP}[ .-]?)?\d+(?:(?:[ .-]|[ .-]?{_PAREN_GROUP}[ .-]?)\d+)*"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Digits and separators that are not phone numbers: tried first at each position. No
# digit comes before a match: the scan has taken every digit run whole before it.
_NOT_A_NUMBER_PATTERN = (
    # ISO 8601 date, with the time and zone when given; a date alone is not followed by
    # more digit groups (0000-00-00 000 is a number written in groups).
    r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?(?!\d)"
    r"|(?![ .-]?\d))"
    # IPv4 address, with a port when given; likewise not followed by more groups.
    rf"|{_OCTET}(?:\.{_OCTET}){{3}}(?::\d{{1,5}}(?!\d)|(?![ .-]?\d))"
)
# The lookahead lets the regex engine skip to the next digit, + or ( (this runs on
# every string of every log line).
_CANDIDATE = re.compile(rf"(?=[\d+(])(?:(?P<skip>{_NOT_A_NUMBER_PATTERN})|{_NUMBER_PATTERN})")
_WHOLE_NUMBER = re.compile(_NUMBER_PATTERN)
# Six digits with at most two characters between each (a separator, a parenthesis): a
# text without them holds no number. Most log strings don't, and this is cheaper than
# the scan above.
_MAYBE_A_NUMBER = re.compile(r"\d(?:\D{0,2}\d){5}")
_DIGIT_RUN = re.compile(r"\d+")
_LONG_RUN = 6  # a run this long is a number however it is written (as before groups)
_FEWEST_DIGITS = 7  # in groups: the shortest subscriber numbers (NANP 867-5309)


def _country_code_length(digits: str) -> int:
    if digits[:1] in _ONE_DIGIT:
        return 1
    if digits[:2] in _TWO_DIGITS:
        return 2
    return 3


def _is_phone_number(candidate: str) -> bool:
    runs = _DIGIT_RUN.findall(candidate)
    if max(len(run) for run in runs) >= _LONG_RUN:
        return True
    if sum(len(run) for run in runs) < _FEWEST_DIGITS:
        return False
    if candidate.startswith("+"):
        return True
    separators = set(_DIGIT_RUN.sub("", candidate))
    return separators != {"."} or len(runs) >= 3


def _mask_digits(number: str, keep_last: int) -> str:
    """Hide the digits of one number, separators kept: the country code (after a `+`)
    and the last `keep_last` digits stay, and always 3 digits or more are hidden."""
    places = [index for index, char in enumerate(number) if char.isdecimal()]
    digits = "".join(number[index] for index in places)
    head = _country_code_length(digits) if number.startswith("+") else 0
    tail = min(keep_last, max(0, len(digits) - head - 3))
    if len(digits) - head - tail <= 0:
        head = tail = 0
    chars = list(number)
    for position, index in enumerate(places):
        if head <= position < len(digits) - tail:
            chars[index] = "*"
    return "".join(chars)


def mask_number(number: str, keep_last: int = 4) -> str:
    """Mask one number field: all of it when it is a number however short, else every
    number in it (a SIP URI, an identity)."""
    if not number:
        return number
    if _WHOLE_NUMBER.fullmatch(number):
        return _mask_digits(number, keep_last)
    return mask_numbers_in(number, keep_last)


def mask_numbers_in(text: str, keep_last: int = 4) -> str:
    """Mask every phone number inside a text, as the module's docstring defines them."""
    if not _MAYBE_A_NUMBER.search(text):
        return text

    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        if match.group("skip") is not None or not _is_phone_number(found):
            return found
        return _mask_digits(found, keep_last)

    return _CANDIDATE.sub(replace, text)


class NumberMasker:
    """Masks numbers as the settings ask; `enabled=False` shows them as they are."""

    def __init__(self, enabled: bool = True, keep_last: int = 4) -> None:
        self.enabled = enabled
        self.keep_last = keep_last

    def number(self, value: str) -> str:
        return mask_number(value, self.keep_last) if self.enabled else value

    def text(self, value: str) -> str:
        return mask_numbers_in(value, self.keep_last) if self.enabled else value
