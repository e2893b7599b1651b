"""Exact money: the seed example to the last digit, price parsing, rounding for display."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from node.meter import Meter, MoneyError, Usage
from node.meter.money import (
    Rates,
    cost_from_units,
    cost_units,
    display_text,
    exact_text,
    parse_currency,
    parse_price,
)
from tests.meter_support import start


def test_seed_example_is_exact() -> None:
    units = cost_units(18, 0, 16, Rates(parse_price("19.78"), parse_price("167.66")))
    cost = cost_from_units(units)
    assert cost == Decimal("0.0030386")
    assert exact_text(cost) == "0.0030386"
    assert display_text(cost) == "0.003039"


def test_seed_example_through_the_meter(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        meter.set_price("smollm2-135m", "cpu", "19.78", "167.66", "PLN")
        meter.open_request(start("r1")).result()
        bill = meter.finish("r1", Usage(prompt_tokens=18, completion_tokens=16), "ok").result()
        assert bill.cost == Decimal("0.0030386")
        assert bill.currency == "PLN" and bill.priced
        assert meter.billing_status()["total"]["cost"] == "0.0030386"
        assert meter.billing_requests()[0]["cost"] == "0.0030386"


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("19.78", 19_780_000),
        ("0", 0),
        ("0.000001", 1),
        ("1.500000000", 1_500_000),
        ("7", 7_000_000),
    ],
)
def test_prices_are_stored_as_exact_micro_units(text: str, micro: int) -> None:
    assert parse_price(text) == micro


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1.1234567", "more than 6 decimal places"),
        ("-1", "negative"),
        ("abc", "not a decimal number"),
        ("NaN", "not a finite number"),
        ("Infinity", "not a finite number"),
        ("100000.000001", "above the maximum"),
    ],
)
def test_inexact_or_invalid_prices_are_refused(text: str, problem: str) -> None:
    with pytest.raises(MoneyError, match=problem):
        parse_price(text)


def test_display_rounds_half_up_not_to_even() -> None:
    assert display_text(Decimal("0.0000005")) == "0.000001"
    assert display_text(Decimal("0.0000025")) == "0.000003"
    assert display_text(Decimal("0.0000024999")) == "0.000002"


def test_exact_text_has_no_exponent_and_no_trailing_zeros() -> None:
    assert exact_text(cost_from_units(0)) == "0"
    assert exact_text(cost_from_units(100 * 10**12)) == "100"
    assert exact_text(cost_from_units(1)) == "0.000000000001"


def test_currency_codes() -> None:
    assert parse_currency("pln") == "PLN"
    with pytest.raises(MoneyError):
        parse_currency("EURO")
