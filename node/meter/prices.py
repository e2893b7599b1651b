"""The price list: per (model, GPU type), per 1M tokens, with history.

Setting a price closes the open period and opens a new one, in one transaction. A request is
billed at the price open when it was admitted (its row keeps a copy), so a change applies only to
requests admitted after it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from node.meter.money import Rates, exact_text, price_from_micro
from node.meter.times import iso_moment, to_datetime


@dataclass(frozen=True)
class Price:
    model: str
    gpu_type: str
    prompt_per_1m: Decimal
    completion_per_1m: Decimal
    currency: str
    cached_per_1m: Decimal | None = None  # None: cached prompt tokens at the prompt price

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "gpu_type": self.gpu_type,
            "prompt_per_1m": exact_text(self.prompt_per_1m),
            "cached_per_1m": None if self.cached_per_1m is None else exact_text(self.cached_per_1m),
            "completion_per_1m": exact_text(self.completion_per_1m),
            "currency": self.currency,
        }


@dataclass(frozen=True)
class PricePeriod:
    """One row of the price history."""

    price: Price
    valid_from: datetime
    valid_until: datetime | None  # None: the price in force now

    def to_json(self) -> dict[str, Any]:
        return {
            **self.price.to_json(),
            "valid_from": iso_moment(self.valid_from),
            "valid_until": iso_moment(self.valid_until),
        }


@dataclass(frozen=True)
class PriceMicro:
    """A price as stored: integer micro-units per 1M tokens, in a currency."""

    rates: Rates
    currency: str


_COLUMNS = (
    "model, gpu_type, prompt_micro, completion_micro, cached_micro, currency,"
    " valid_from, valid_until"
)


def set_price(
    conn: sqlite3.Connection,
    *,
    model: str,
    gpu_type: str,
    rates: Rates,
    currency: str,
    now_us: int,
) -> None:
    """Close the open period of (model, gpu_type), if any, and open a new one at `now_us`."""
    conn.execute(
        "UPDATE prices SET valid_until = ?"
        " WHERE model = ? AND gpu_type = ? AND valid_until IS NULL",
        (now_us, model, gpu_type),
    )
    conn.execute(
        f"INSERT INTO prices ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
        (model, gpu_type, rates.prompt, rates.completion, rates.cached, currency, now_us),
    )


def current_micro(conn: sqlite3.Connection, model: str, gpu_type: str) -> PriceMicro | None:
    row = conn.execute(
        "SELECT prompt_micro, completion_micro, cached_micro, currency FROM prices"
        " WHERE model = ? AND gpu_type = ? AND valid_until IS NULL",
        (model, gpu_type),
    ).fetchone()
    if row is None:
        return None
    prompt, completion, cached, currency = row
    return PriceMicro(Rates(prompt, completion, cached), currency)


def current(conn: sqlite3.Connection, model: str, gpu_type: str) -> Price | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM prices WHERE model = ? AND gpu_type = ? AND valid_until IS NULL",
        (model, gpu_type),
    ).fetchone()
    return None if row is None else _period(row).price


def to_price(model: str, gpu_type: str, micro: PriceMicro) -> Price:
    return Price(
        model=model,
        gpu_type=gpu_type,
        prompt_per_1m=price_from_micro(micro.rates.prompt),
        completion_per_1m=price_from_micro(micro.rates.completion),
        currency=micro.currency,
        cached_per_1m=None if micro.rates.cached is None else price_from_micro(micro.rates.cached),
    )


def list_periods(conn: sqlite3.Connection, *, history: bool = False) -> list[PricePeriod]:
    where = "" if history else " WHERE valid_until IS NULL"
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM prices{where} ORDER BY model, gpu_type, valid_from"
    ).fetchall()
    return [_period(row) for row in rows]


def _period(row: tuple[Any, ...]) -> PricePeriod:
    model, gpu_type, prompt, completion, cached, currency, valid_from, valid_until = row
    return PricePeriod(
        price=to_price(model, gpu_type, PriceMicro(Rates(prompt, completion, cached), currency)),
        valid_from=to_datetime(valid_from),
        valid_until=None if valid_until is None else to_datetime(valid_until),
    )
