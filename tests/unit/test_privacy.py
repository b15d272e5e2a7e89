"""Phone numbers are masked: country code and last digits stay, the rest is hidden."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from monitor.core.privacy import NumberMasker, mask_number, mask_numbers_in


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+15551112222", "+1******2222"),
        ("+447911123456", "+44******3456"),
        ("+353871234567", "+353*****4567"),
        ("5551234", "***1234"),
        ("+1234", "+1***"),
        ("", ""),
    ],
)
def test_numbers_keep_country_code_and_last_digits(number: str, masked: str) -> None:
    assert mask_number(number) == masked


def test_numbers_inside_identities_are_masked() -> None:
    assert mask_numbers_in("sip_+15551112222") == "sip_+1******2222"
    assert mask_number("sip:+15551112222@host") == "sip:+1******2222@host"
    assert mask_numbers_in("room-42") == "room-42"


def test_masking_can_be_turned_off_and_tuned() -> None:
    assert NumberMasker(enabled=False).number("+15551112222") == "+15551112222"
    assert NumberMasker(keep_last=2).number("+15551112222") == "+1********22"
    assert NumberMasker(keep_last=0).text("call +15551112222") == "call +1**********"


@given(st.from_regex(r"\+?[0-9]{6,15}", fullmatch=True), st.integers(0, 6))
def test_a_masked_number_never_shows_more_than_the_country_code_and_the_tail(
    number: str, keep: int
) -> None:
    masked = mask_number(number, keep)
    digits = number.lstrip("+")
    assert len(masked) == len(number)
    assert masked.count("*") >= 3
    assert digits not in masked


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("555-867-5309", "***-***-5309"),
        ("+1 (555) 123-4567", "+1 (***) ***-4567"),
        ("(555) 123-4567", "(***) ***-4567"),
        ("555.867.5309", "***.***.5309"),
        ("+44 20 7946 0958", "+44 ** **** 0958"),
        ("555 867 5309", "*** *** 5309"),
        ("867-5309", "***-5309"),
        ("tel:+15551234567", "tel:+1******4567"),
        ("sip:+15551234567@host", "sip:+1******4567@host"),
        (
            "sip:5551234567@trunk.example.com;user=phone",
            "sip:******4567@trunk.example.com;user=phone",
        ),
        ("sip:+1-555-123-4567@10.0.0.1:5060", "sip:+1-***-***-4567@10.0.0.1:5060"),
        ("dialing +33 6 12 34 56 78 failed", "dialing +33 * ** ** 56 78 failed"),
    ],
)
def test_numbers_are_masked_in_every_common_written_form(text: str, masked: str) -> None:
    assert mask_numbers_in(text) == masked
    assert mask_number(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-26T09:00:00.123Z",
        "2026-11-26T09:00:00.123456+02:00",
        "at 2026-11-26 09:00:00",
        "2026-11-26",
        "PA_abc123",
        "SCL_kT7gq2RwXbLm",
        "talk=64.125s total=70.010s",
        "1234.567",
        "10.0.0.1:5060",
        "ws://127.0.0.1:7880/rtc",
        "192.168.100.200",
        "sip=486 reason=USER_REJECTED",
        "version 1.2.1",
    ],
)
def test_times_ids_durations_and_addresses_are_not_numbers(text: str) -> None:
    assert mask_numbers_in(text) == text


IPV4_OR_DATE = re.compile(
    r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"
    r"|\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
)
COUNTRY_CODES = st.sampled_from(["1", "7", "33", "44", "49", "81", "353", "972"])
SEPARATORS = st.sampled_from([" ", "-", "."])
AROUND = st.text(st.characters(exclude_categories=["Nd"], exclude_characters="+()"), max_size=8)
PREFIXES = st.sampled_from(["", "tel:", "sip:", "sip_", "to=", "call to ", "<", "room-"])
SUFFIXES = st.sampled_from(
    ["", "@host", "@trunk.example.com;user=phone", "@10.0.0.1:5060", ">", ".", ", ended"]
)


@st.composite
def written_numbers(draw: st.DrawFn) -> tuple[str, str]:
    """A phone number as people write it, and its country code ("" if none is written)."""
    code = draw(st.one_of(st.just(""), COUNTRY_CODES))
    national = draw(st.text("0123456789", min_size=6 if code else 7, max_size=12))
    cuts = sorted(draw(st.sets(st.integers(1, len(national) - 1), max_size=4)))
    groups = [national[a:b] for a, b in zip([0, *cuts], [*cuts, len(national)], strict=True)]
    separators = [draw(SEPARATORS) for _ in groups[1:]]
    if not code and set(separators) == {"."} and len(groups) < 3:
        separators = [" "]  # 1234.5678 reads as a decimal: nobody writes a number so
    if len(groups[0]) <= 5 and draw(st.booleans()):
        groups[0] = f"({groups[0]})"  # an area code
        if separators:
            separators[0] = draw(st.sampled_from(["", " ", "-"]))
    written = groups[0] + "".join(
        sep + group for sep, group in zip(separators, groups[1:], strict=True)
    )
    if code:
        written = f"+{code}{draw(st.sampled_from(['', ' ', '-', '.']))}{written}"
    # Written exactly like an IPv4 address or an ISO date, it is taken for one (privacy.py).
    assume(not IPV4_OR_DATE.fullmatch(written))
    return written, code


@given(
    written_numbers(),
    PREFIXES,
    AROUND,
    SUFFIXES,
    AROUND,
    st.integers(0, 6),
)
def test_no_digit_of_a_written_number_shows_beyond_the_country_code_and_the_tail(
    number: tuple[str, str], prefix: str, before: str, suffix: str, after: str, keep: int
) -> None:
    written, code = number
    start, end = before + prefix, suffix + after
    masked = mask_numbers_in(start + written + end, keep)
    assert masked.startswith(start)
    assert masked.endswith(end)
    shown = masked[len(start) : len(masked) - len(end)]
    digits = re.sub(r"\D", "", written)
    tail = min(keep, len(digits) - len(code) - 3)
    # The digits left are the country code and the last `keep`, nothing in between...
    assert re.sub(r"[^\d]", "", shown) == digits[: len(code)] + digits[len(digits) - tail :]
    # ...and the number is written as it was, each hidden digit a star.
    assert re.sub(r"\d", "*", shown) == re.sub(r"\d", "*", written)
