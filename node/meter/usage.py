"""Request rows: open at admission, checkpoint while generating, finish, recover after a crash.

Every function runs inside the writer's transaction. Counts passed in are running totals (not
increments), so repeating a call never double-counts; a finished row is never changed again.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from decimal import Decimal

from node.meter import budgets, prices, spend
from node.meter.budgets import Budget
from node.meter.money import Rates, cost_from_units, cost_units, max_cost_units

FINAL_STATUSES = ("ok", "cancelled", "error")
STATUSES = ("running", *FINAL_STATUSES, "interrupted", "rejected")


class UnknownRequest(LookupError):
    """No meter row has this request id."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class RequestStart:
    """What is known at admission. The prompt is counted before the row opens, so a node
    killed during prefill still leaves its prompt tokens on the (then interrupted) row.
    `cached_tokens`: the prompt's cached prefix if already known; the engine learns it when a
    slot takes the request, and the next checkpoint or the finish records it."""

    id: str
    key_id: str
    org: str | None
    endpoint: str
    model: str
    quant_type: str
    gpu_type: str
    gpu_name: str
    user: str | None
    prompt_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class Bill:
    cost: Decimal  # exact, not rounded
    currency: str | None
    priced: bool  # False: no price applied, cost 0


@dataclass(frozen=True)
class Opened:
    """The outcome of admission: the price billed, or the budget that refused the request."""

    price: prices.Price | None
    refusal: budgets.Refusal | None = None


def open_request(
    conn: sqlite3.Connection,
    start: RequestStart,
    *,
    now_us: int,
    ceiling: Usage | None = None,
    refused: bool = False,
    budgets_checked: bool = False,
) -> Opened:
    """Insert the row (status running) with the prices in force now; idempotent by id.

    With a `ceiling` (the most tokens the request can use), its maximum cost is reserved and
    checked against the key's and the org's budgets in this same write transaction; a request
    that could overrun one gets a `rejected` row with 0 tokens instead. `refused`: a rate
    limit refused it already; only its `rejected` row is written. `budgets_checked`: the
    fleet database checked and reserved the budgets already (fleet mode); only the local
    totals record the reservation.
    """
    if not start.id:
        raise ValueError("request id is empty")
    _check_counts(Usage(start.prompt_tokens, start.cached_tokens, 0))
    existing = conn.execute(
        "SELECT model, gpu_type FROM requests WHERE id = ?", (start.id,)
    ).fetchone()
    if existing is not None:
        model, gpu_type = existing
        stored = _row_price(conn, start.id)
        return Opened(None if stored is None else prices.to_price(model, gpu_type, stored))
    price = prices.current_micro(conn, start.model, start.gpu_type)
    reserved = 0
    refusal = None
    if price is not None and ceiling is not None and not refused:
        _check_counts(ceiling)
        reserved = ceiling_units(price, ceiling)
        if not budgets_checked:
            refusal = budgets.check(
                conn, budgets_of(conn, start.key_id, start.org), reserved, now_us
            )
    status = "rejected" if refused or refusal is not None else "running"
    running = status == "running"
    rates = None if price is None else price.rates
    conn.execute(
        "INSERT INTO requests (id, key_id, org, endpoint, model, quant_type, gpu_type, gpu_name,"
        " started, prompt_price_micro, completion_price_micro, cached_price_micro, currency,"
        " user, prompt_tokens, cached_tokens, cost_units, status, reserved_units, finished)"
        f" VALUES ({', '.join('?' * 20)})",
        (
            start.id,
            start.key_id,
            start.org,
            start.endpoint,
            start.model,
            start.quant_type,
            start.gpu_type,
            start.gpu_name,
            now_us,
            None if rates is None else rates.prompt,
            None if rates is None else rates.completion,
            None if rates is None else rates.cached,
            None if price is None else price.currency,
            start.user,
            0 if not running else start.prompt_tokens,  # a refused request counts nothing
            0 if not running else start.cached_tokens,
            # billed if interrupted
            0
            if rates is None or not running
            else cost_units(start.prompt_tokens, start.cached_tokens, 0, rates),
            status,
            reserved if running else 0,
            None if running else now_us,
        ),
    )
    if running and reserved:
        spend.add(conn, "key", start.key_id, now_us, reserved=reserved)
        spend.add(conn, "org", start.org, now_us, reserved=reserved)
    billed = None if price is None else prices.to_price(start.model, start.gpu_type, price)
    return Opened(billed, refusal)


def ceiling_units(price: prices.PriceMicro, ceiling: Usage) -> int:
    """The most a request can cost (its budget reservation), in cost units: the one formula's
    `max_cost_units`, here as for the fleet's reservations."""
    return max_cost_units(ceiling.prompt_tokens, ceiling.completion_tokens, price.rates)


def budgets_of(
    conn: sqlite3.Connection, key_id: str, org: str | None
) -> list[tuple[str, str, Budget]]:
    """The budgets a request of this key and org counts against."""
    found: list[tuple[str, str, Budget]] = []
    row = conn.execute(
        "SELECT budget_micro, budget_period FROM api_keys WHERE id = ?", (key_id,)
    ).fetchone()
    key_budget = None if row is None else budgets.budget_of(*row)
    if key_budget is not None:
        found.append(("key", key_id, key_budget))
    org_budget = None if org is None else budgets.org_budget(conn, org)
    if org_budget is not None and org is not None:
        found.append(("org", org, org_budget))
    return found


def checkpoint(conn: sqlite3.Connection, request_id: str, usage: Usage, *, now_us: int) -> None:
    """Record the counts so far; a no-op once the row is finished."""
    _check_counts(usage)
    cursor = conn.execute(
        "UPDATE requests SET prompt_tokens = ?, cached_tokens = ?, completion_tokens = ?,"
        " cost_units = ?, checkpointed = ? WHERE id = ? AND status = 'running'",
        (*_counts(usage), _row_cost(conn, request_id, usage), now_us, request_id),
    )
    if cursor.rowcount == 0:
        _require_row(conn, request_id)


def finish(
    conn: sqlite3.Connection, request_id: str, usage: Usage, status: str, *, now_us: int
) -> Bill:
    """Final counts and status; a second finish returns the first one's bill unchanged."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(FINAL_STATUSES)}")
    _check_counts(usage)
    row = conn.execute(
        "SELECT status, key_id, org, started, reserved_units, cost_units, currency,"
        f" {PRICE_COLUMNS} FROM requests WHERE id = ?",
        (request_id,),
    ).fetchone()
    if row is None:
        raise UnknownRequest(f"no meter row for request {request_id!r}")
    state, key_id, org, started, reserved, units, currency, *rates = row
    priced = rates[0] is not None
    if state == "running":
        units = cost_units(*_counts(usage), Rates(*rates)) if priced else 0
        conn.execute(
            "UPDATE requests SET prompt_tokens = ?, cached_tokens = ?, completion_tokens = ?,"
            " cost_units = ?, reserved_units = 0, finished = ?, status = ? WHERE id = ?",
            (*_counts(usage), units, now_us, status, request_id),
        )
        _settle(conn, key_id, org, started, reserved, units)
    return Bill(cost=cost_from_units(units), currency=currency, priced=priced)


# The prices a row was admitted at, in `Rates` order (NULL prompt price: unpriced); the
# billing reports group by them.
PRICE_COLUMNS = "prompt_price_micro, completion_price_micro, cached_price_micro"


def _row_price(conn: sqlite3.Connection, request_id: str) -> prices.PriceMicro | None:
    """The prices copied onto the row at admission (None: unpriced, or no such row)."""
    row = conn.execute(
        f"SELECT {PRICE_COLUMNS}, currency FROM requests WHERE id = ?", (request_id,)
    ).fetchone()
    if row is None or row[0] is None:
        return None
    *rates, currency = row
    return prices.PriceMicro(Rates(*rates), currency)


def _row_cost(conn: sqlite3.Connection, request_id: str, usage: Usage) -> int:
    """The exact cost of these counts at the row's own prices (unpriced: 0)."""
    price = _row_price(conn, request_id)
    return 0 if price is None else cost_units(*_counts(usage), price.rates)


def _settle(
    conn: sqlite3.Connection, key_id: str, org: str | None, started: int, reserved: int, cost: int
) -> None:
    """A row's reservation becomes its real cost in the budgets' running totals."""
    for scope, name in (("key", key_id), ("org", org)):
        spend.add(conn, scope, name, started, settled=cost, reserved=-reserved)


def recover(conn: sqlite3.Connection) -> int:
    """Rows still running (their process died) become interrupted at their last checkpoint."""
    running = conn.execute(
        "SELECT key_id, org, started, reserved_units, cost_units FROM requests"
        " WHERE status = 'running'"
    ).fetchall()
    for row in running:
        _settle(conn, *row)
    return conn.execute(
        "UPDATE requests SET status = 'interrupted', finished = coalesce(checkpointed, started),"
        " reserved_units = 0 WHERE status = 'running'"
    ).rowcount


def _counts(usage: Usage) -> tuple[int, int, int]:
    return usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens


def _check_counts(usage: Usage) -> None:
    for name, value in zip(("prompt", "cached", "completion"), _counts(usage), strict=True):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} token count {value!r} is not a non-negative integer")
    if usage.cached_tokens > usage.prompt_tokens:
        raise ValueError(
            f"cached token count {usage.cached_tokens} exceeds the prompt's {usage.prompt_tokens}"
        )


def _require_row(conn: sqlite3.Connection, request_id: str) -> None:
    if conn.execute("SELECT 1 FROM requests WHERE id = ?", (request_id,)).fetchone() is None:
        raise UnknownRequest(f"no meter row for request {request_id!r}")
