"""Exact money: Decimal in, integers of fixed minor units on disk, never floats.

Prices are per 1M tokens with at most 6 decimal places, stored as integer *micro-units per 1M
tokens* (10^-6 currency per 1M tokens). A cost is tokens x price_micro, which is exactly an
integer of 10^-12 currency ("cost units"): tokens x (price_micro x 10^-6) / 10^6.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

PRICE_DECIMALS = 6
PRICE_SCALE = 10**PRICE_DECIMALS  # micro-units per currency unit, for prices per 1M tokens
COST_DECIMALS = 12
COST_SCALE = 10**COST_DECIMALS  # cost units per currency unit
MAX_PRICE = Decimal(100_000)  # per 1M tokens: a row stays inside int64 up to 92M tokens
DISPLAY_DECIMALS = 6

_CURRENCY = re.compile(r"^[A-Z]{3}$")


class MoneyError(ValueError):
    """A price or currency that cannot be stored exactly; the message names the problem."""


def parse_price(text: str | Decimal | int, *, what: str = "price") -> int:
    """A price per 1M tokens (decimal text) → integer micro-units; exact or refused."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise MoneyError(f"{what} {text!r} is not a decimal number") from None
    if not value.is_finite():
        raise MoneyError(f"{what} {text!r} is not a finite number")
    if value < 0:
        raise MoneyError(f"{what} {text!r} is negative")
    if value > MAX_PRICE:
        raise MoneyError(f"{what} {text!r} is above the maximum {MAX_PRICE} per 1M tokens")
    micro = value * PRICE_SCALE
    if micro != micro.to_integral_value():
        raise MoneyError(f"{what} {text!r} has more than {PRICE_DECIMALS} decimal places")
    return int(micro)


def parse_currency(text: str) -> str:
    code = text.strip().upper()
    if not _CURRENCY.match(code):
        raise MoneyError(f"currency {text!r} is not a three-letter ISO 4217 code")
    return code


def price_from_micro(micro: int) -> Decimal:
    return _plain(Decimal(micro).scaleb(-PRICE_DECIMALS))


@dataclass(frozen=True)
class Rates:
    """A price as stored: integer micro-units per 1M tokens. `cached`: the price of prompt
    tokens restored from the prompt cache; None bills them at the prompt price."""

    prompt: int
    completion: int
    cached: int | None = None


def parse_rates(
    prompt: str | Decimal | int, completion: str | Decimal | int, cached: str | Decimal | int | None
) -> Rates:
    """Prices per 1M tokens as text → exact stored rates (MoneyError names the bad one)."""
    return Rates(
        prompt=parse_price(prompt, what="prompt price"),
        completion=parse_price(completion, what="completion price"),
        cached=None if cached is None else parse_price(cached, what="cached prompt price"),
    )


@dataclass(frozen=True)
class CostParts:
    """A cost split by what was billed, each in 10^-12 currency units."""

    prompt: int  # prompt tokens computed afresh
    cached: int  # prompt tokens restored from cache
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.cached + self.completion


def cost_parts(
    prompt_tokens: int, cached_tokens: int, completion_tokens: int, rates: Rates
) -> CostParts:
    """THE cost formula (the meter, billing, budgets and the admin API all come here).

    `prompt_tokens` counts the whole prompt, `cached_tokens` the part of it restored from cache.
    It is linear in the counts, so applied to sums of rows at one price it gives exactly the sum
    of their costs.
    """
    cached_rate = rates.prompt if rates.cached is None else rates.cached
    return CostParts(
        prompt=(prompt_tokens - cached_tokens) * rates.prompt,
        cached=cached_tokens * cached_rate,
        completion=completion_tokens * rates.completion,
    )


def cost_units(prompt_tokens: int, cached_tokens: int, completion_tokens: int, rates: Rates) -> int:
    """The exact cost in 10^-12 currency units."""
    return cost_parts(prompt_tokens, cached_tokens, completion_tokens, rates).total


def max_cost_units(prompt_tokens: int, completion_tokens: int, rates: Rates) -> int:
    """The most a request can cost before its cached share is known (budget reservations)."""
    return max(
        cost_units(prompt_tokens, 0, completion_tokens, rates),
        cost_units(prompt_tokens, prompt_tokens, completion_tokens, rates),
    )


def cost_from_units(units: int) -> Decimal:
    """Exact Decimal currency amount of an integer of cost units (no rounding)."""
    return _plain(Decimal(units).scaleb(-COST_DECIMALS))


def exact_text(amount: Decimal) -> str:
    """The exact decimal string of an amount, no exponent, no trailing zeros: 0.0030386."""
    text = format(_plain(amount), "f")
    return text


def display_text(amount: Decimal, places: int = DISPLAY_DECIMALS) -> str:
    """Rounded half-up for people: 0.0030386 → 0.003039."""
    return format(amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP), "f")


def _plain(amount: Decimal) -> Decimal:
    # normalize() drops trailing zeros; 0 stays "0" and integers stay integers (no 1E+2).
    if amount == 0:
        return Decimal(0)
    normal = amount.normalize()
    exponent = normal.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        return normal.quantize(Decimal(1))
    return normal
