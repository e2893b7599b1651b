"""Billing reports from the request rows: status per group with totals, and request listings.

Costs are summed exactly: tokens are summed per distinct price in SQL (small integers), and the
money is multiplied out in Python integers by the one cost formula (`money.cost_parts`, linear
in the counts), so no sum can overflow SQLite's 64-bit integers.
A report spans one currency: rows in several currencies are refused unless `currency` picks
one (`MixedCurrencies`), because a total across currencies means nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.meter.money import Rates, cost_from_units, cost_parts, exact_text, price_from_micro
from node.meter.times import iso
from node.meter.usage import PRICE_COLUMNS

# --by choice → (JSON field name, SQL expression)
GROUPS: dict[str, tuple[str, str]] = {
    "key": ("key_id", "key_id"),
    "org": ("org", "org"),
    "model": ("model", "model"),
    "gpu": ("gpu_type", "gpu_type"),
    "day": ("day", "date(started / 1000000, 'unixepoch')"),
}


# A group's token sums, as the reports sum them per price (`usage.PRICE_COLUMNS`).
TOKEN_SUMS = "count(*), sum(prompt_tokens), sum(cached_tokens), sum(completion_tokens)"


class MixedCurrencies(ValueError):
    """The selected rows were billed in more than one currency."""


@dataclass(frozen=True)
class Filters:
    since_us: int | None = None  # started >= since
    until_us: int | None = None  # started < until
    org: str | None = None
    key_id: str | None = None
    model: str | None = None
    currency: str | None = None
    status: str | None = None
    request_id: str | None = None

    def where(self, placeholder: str = "?", id_column: str = "id") -> tuple[str, list[Any]]:
        """The WHERE clause and its parameters (`placeholder` and the request id's column
        name differ in the fleet's PostgreSQL)."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, op, value in (
            ("started", ">=", self.since_us),
            ("started", "<", self.until_us),
            ("org", "=", self.org),
            ("key_id", "=", self.key_id),
            ("model", "=", self.model),
            ("currency", "=", self.currency),
            ("status", "=", self.status),
            (id_column, "=", self.request_id),
        ):
            if value is not None:
                clauses.append(f"{column} {op} {placeholder}")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


@dataclass
class _Sums:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_units: int = 0
    cached_cost_units: int = 0  # the part of cost_units that cached prompt tokens cost
    unpriced_requests: int = 0
    currencies: set[str] = field(default_factory=set)

    def add(self, other: _Sums) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.cached_tokens += other.cached_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_units += other.cost_units
        self.cached_cost_units += other.cached_cost_units
        self.unpriced_requests += other.unpriced_requests
        self.currencies |= other.currencies

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": exact_text(cost_from_units(self.cost_units)),
            "cached_cost": exact_text(cost_from_units(self.cached_cost_units)),
            "unpriced_requests": self.unpriced_requests,
            "no_price": self.unpriced_requests > 0,
        }


def status(conn: sqlite3.Connection, filters: Filters, by: str = "key") -> dict[str, Any]:
    """`{"currency", "by", "rows": [...], "total": {...}}` (SPEC §6, plus a few extra fields)."""
    if by not in GROUPS:
        raise ValueError(f"--by {by!r} is not one of {', '.join(GROUPS)}")
    name, expr = GROUPS[by]
    where, params = filters.where()
    rows = conn.execute(
        f"SELECT {expr} AS grp, currency, {PRICE_COLUMNS}, {TOKEN_SUMS}"
        f" FROM requests{where} GROUP BY 1, 2, 3, 4, 5",
        params,
    ).fetchall()
    return summarize(rows, name, by)


def summarize(rows: Iterable[Sequence[Any]], name: str, by: str) -> dict[str, Any]:
    """The report from token sums per (group, currency, prompt, completion, cached price)."""
    groups: dict[Any, _Sums] = {}
    total = _Sums()
    for grp, currency, prompt_micro, completion_micro, cached_micro, *sums in rows:
        count, prompt, cached, completion = (int(v) for v in sums)  # PostgreSQL: Decimal sums
        part = _Sums(
            requests=count, prompt_tokens=prompt, cached_tokens=cached, completion_tokens=completion
        )
        if prompt_micro is None:
            part.unpriced_requests = count
        else:
            cost = cost_parts(
                prompt, cached, completion, Rates(prompt_micro, completion_micro, cached_micro)
            )
            part.cost_units = cost.total
            part.cached_cost_units = cost.cached
            part.currencies.add(currency)
        groups.setdefault(grp, _Sums()).add(part)
        total.add(part)
    if len(total.currencies) > 1:
        raise MixedCurrencies(
            f"the selected requests were billed in several currencies"
            f" ({', '.join(sorted(total.currencies))}); pick one with --currency"
        )
    currency = next(iter(total.currencies), None)
    ordered = sorted(groups.items(), key=lambda item: (item[0] is None, str(item[0])))
    return {
        "currency": currency,
        "by": by,
        "rows": [{name: grp, **sums.to_json()} for grp, sums in ordered],
        "total": total.to_json(),
    }


REQUEST_COLUMNS = (
    "id, key_id, org, endpoint, model, quant_type, gpu_type, gpu_name, status, prompt_tokens,"
    " cached_tokens, completion_tokens, cost_units, currency, prompt_price_micro,"
    " completion_price_micro, cached_price_micro, user, started, finished"
)


def requests(conn: sqlite3.Connection, filters: Filters, limit: int = 100) -> list[dict[str, Any]]:
    """Meter rows, newest first, as JSON-ready dicts (costs exact decimal strings)."""
    where, params = filters.where()
    rows = conn.execute(
        f"SELECT {REQUEST_COLUMNS} FROM requests{where} ORDER BY started DESC, id DESC LIMIT ?",
        [*params, limit],
    ).fetchall()
    return [request_json(row) for row in rows]


def request_json(row: Sequence[Any]) -> dict[str, Any]:
    """One row of `REQUEST_COLUMNS` as a JSON-ready dict."""
    (
        request_id,
        key_id,
        org,
        endpoint,
        model,
        quant_type,
        gpu_type,
        gpu_name,
        state,
        prompt,
        cached,
        completion,
        units,
        currency,
        prompt_micro,
        completion_micro,
        cached_micro,
        user,
        started,
        finished,
    ) = row
    return {
        "id": request_id,
        "key_id": key_id,
        "org": org,
        "endpoint": endpoint,
        "model": model,
        "quant_type": quant_type,
        "gpu_type": gpu_type,
        "gpu_name": gpu_name,
        "status": state,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "completion_tokens": completion,
        "cost": exact_text(cost_from_units(units)),
        "currency": currency,
        "no_price": prompt_micro is None,
        "prompt_per_1m": _price_text(prompt_micro),
        "completion_per_1m": _price_text(completion_micro),
        "cached_per_1m": _price_text(cached_micro),
        "user": user,
        "started": iso(started),
        "finished": iso(finished),
    }


def _price_text(micro: int | None) -> str | None:
    return None if micro is None else exact_text(price_from_micro(micro))
