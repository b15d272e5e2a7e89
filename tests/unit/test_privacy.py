"""Phone numbers are masked: country code and last digits stay, the rest is hidden."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.privacy import NumberMasker, mask_number, mask_numbers_in


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
