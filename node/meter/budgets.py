"""Budgets of keys and orgs: an exact amount per period, checked at admission.

A budget is stored as integer micro-units (10^-6 currency). What a key or org has spent in the
current period is the settled cost of its rows started in the period plus the maximum cost
(`reserved_units`) its running rows hold until their finish settles them to the real cost;
`spend.py` keeps those totals per day, so the check costs the same however busy the key is.
The check and the insert of the new row run in the same write transaction (the writer thread,
`BEGIN IMMEDIATE`), so concurrent requests, also of other processes, can never overrun a
budget together.

A budget is in the price list's currency (a node bills in one currency). A request without a
price costs 0 and is never stopped by a budget.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from node.meter import spend
from node.meter.money import COST_SCALE, MoneyError, cost_from_units, exact_text
from node.meter.times import from_datetime, iso, to_datetime

PERIODS = ("day", "week", "month", "total")
MAX_BUDGET = Decimal(1_000_000)  # 10^18 cost units: sums stay inside 64-bit integers
_UNITS_PER_MICRO = COST_SCALE // 1_000_000


@dataclass(frozen=True)
class Budget:
    amount_micro: int  # 10^-6 currency
    period: str

    @property
    def amount(self) -> Decimal:
        return cost_from_units(self.amount_micro * _UNITS_PER_MICRO)

    @property
    def units(self) -> int:
        return self.amount_micro * _UNITS_PER_MICRO


def parse_budget(amount: str | Decimal | int, period: str) -> Budget:
    """`10.50`, `month` → Budget; exact (up to 6 decimal places) or MoneyError/ValueError."""
    if period not in PERIODS:
        raise ValueError(f"budget period {period!r} is not one of {', '.join(PERIODS)}")
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation:
        raise MoneyError(f"budget {amount!r} is not a decimal number") from None
    if not value.is_finite() or value < 0 or value > MAX_BUDGET:
        raise MoneyError(f"budget {amount!r} is not between 0 and {MAX_BUDGET}")
    micro = value * 1_000_000
    if micro != micro.to_integral_value():
        raise MoneyError(f"budget {amount!r} has more than 6 decimal places")
    return Budget(int(micro), period)


def budget_of(micro: int | None, period: str | None) -> Budget | None:
    return None if micro is None or period is None else Budget(micro, period)


def period_bounds(period: str, now_us: int) -> tuple[int, int | None]:
    """[start, end) of the period holding `now_us` (UTC); `total` has no end."""
    if period == "total":
        return 0, None
    now = to_datetime(now_us)
    day = datetime(now.year, now.month, now.day, tzinfo=UTC)
    if period == "day":
        start, end = day, day + timedelta(days=1)
    elif period == "week":  # ISO weeks: Monday 00:00 UTC
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif period == "month":
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else (start.replace(month=start.month + 1))
        )
    else:
        raise ValueError(f"budget period {period!r} is not one of {', '.join(PERIODS)}")
    return from_datetime(start), from_datetime(end)


def spent_units(conn: sqlite3.Connection, scope: str, name: str, since_us: int) -> int:
    """Cost units held by a key's or org's rows since `since_us`: settled plus reserved."""
    settled, reserved = spend.held(conn, scope, name, since_us)
    return settled + reserved


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused by a budget, for the 429 the client gets."""

    scope: str  # "key" or "org"
    name: str
    budget: Budget
    retry_after_s: int | None  # None: never (a `total` budget with nothing reserved)

    def message(self) -> str:
        what = "API key" if self.scope == "key" else "organisation"
        return (
            f"The {what} {self.name!r} has used its {self.budget.period} budget of"
            f" {exact_text(self.budget.amount)}; this request could cost more than what is left."
        )


def check(
    conn: sqlite3.Connection,
    budgets: list[tuple[str, str, Budget]],
    max_cost_units: int,
    now_us: int,
) -> Refusal | None:
    """The first budget (scope, name, budget) the request's maximum cost would overrun."""
    for scope, name, budget in budgets:
        since, end = period_bounds(budget.period, now_us)
        settled, reserved = spend.held(conn, scope, name, since)
        if settled + reserved + max_cost_units <= budget.units:
            continue
        # Reservations of running requests are freed when they finish: worth a quick retry.
        if settled + max_cost_units <= budget.units:
            retry: int | None = 1
        elif end is None:
            retry = None
        else:
            retry = max(1, -(-(end - now_us) // 1_000_000))
        return Refusal(scope, name, budget, retry)
    return None


def status(
    conn: sqlite3.Connection, scope: str, name: str, budget: Budget, now_us: int
) -> dict[str, Any]:
    """`{"amount", "period", "period_start", "spent", "remaining"}`, exact decimal strings.

    Spent includes the reservations of running requests.
    """
    since, _end = period_bounds(budget.period, now_us)
    spent = spent_units(conn, scope, name, since)
    return {
        "amount": exact_text(budget.amount),
        "period": budget.period,
        "period_start": iso(since),
        "spent": exact_text(cost_from_units(spent)),
        "remaining": exact_text(cost_from_units(max(0, budget.units - spent))),
    }


def annotate(conn: sqlite3.Connection, by: str, row: dict[str, Any], now_us: int) -> None:
    """Add `budget` (or None) to a billing status row grouped by key or org; `limits` to keys."""
    if by == "key":
        found = conn.execute(
            "SELECT budget_micro, budget_period, rpm, tpm, max_parallel FROM api_keys WHERE id = ?",
            (row["key_id"],),
        ).fetchone()
        budget = None if found is None else budget_of(found[0], found[1])
        row["limits"] = (
            None
            if found is None
            else dict(zip(("rpm", "tpm", "max_parallel"), found[2:], strict=True))
        )
        scope, name = "key", row["key_id"]
    else:
        scope, name = "org", row["org"]
        budget = None if name is None else org_budget(conn, name)
    row["budget"] = None if budget is None else status(conn, scope, name, budget, now_us)


# --- orgs ------------------------------------------------------------------------------------


def set_org(
    conn: sqlite3.Connection, name: str, budget: Budget | None, *, keep: bool = False
) -> None:
    """Insert or update an org's budget; `keep`: only make sure the org exists."""
    if not name:
        raise ValueError("org name must not be empty")
    if keep:
        conn.execute("INSERT INTO orgs (name) VALUES (?) ON CONFLICT (name) DO NOTHING", (name,))
        return
    micro, period = (None, None) if budget is None else (budget.amount_micro, budget.period)
    conn.execute(
        "INSERT INTO orgs (name, budget_micro, budget_period) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET budget_micro = excluded.budget_micro,"
        " budget_period = excluded.budget_period",
        (name, micro, period),
    )
    track(conn, "org", name, budget is not None)


def track(conn: sqlite3.Connection, scope: str, name: str, budgeted: bool) -> None:
    """Keep running totals for a scope exactly while it has a budget."""
    if not budgeted:
        spend.drop(conn, scope, name)
    elif not spend.tracked(conn, scope, name):
        spend.rebuild(conn, scope, name)


def org_budget(conn: sqlite3.Connection, name: str) -> Budget | None:
    row = conn.execute(
        "SELECT budget_micro, budget_period FROM orgs WHERE name = ?", (name,)
    ).fetchone()
    return None if row is None else budget_of(*row)


def list_orgs(conn: sqlite3.Connection, now_us: int) -> list[dict[str, Any]]:
    """Every org with a row in `orgs` or on a key, with its budget status."""
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM orgs UNION SELECT org FROM api_keys WHERE org IS NOT NULL ORDER BY 1"
        ).fetchall()
    ]
    return [org_json(conn, name, now_us) for name in names]


def org_json(conn: sqlite3.Connection, name: str, now_us: int) -> dict[str, Any]:
    budget = org_budget(conn, name)
    (keys,) = conn.execute("SELECT count(*) FROM api_keys WHERE org = ?", (name,)).fetchone()
    return {
        "org": name,
        "keys": keys,
        "budget": None if budget is None else status(conn, "org", name, budget, now_us),
    }
