"""The fleet's keys, orgs and prices in PostgreSQL: the writes of every node and CLI, and the
reads that keep each node's local copy current (`node.fleet.replica`).

The checks and the money are the local meter's own (`node.meter.keys`, `budgets`, `money`):
a key, price or budget the local meter refuses, the fleet refuses with the same words.
"""

from __future__ import annotations

from typing import Any

from node.meter import ApiKey, Budget, Limits
from node.meter.budgets import budget_of, period_bounds
from node.meter.keys import changed_columns, key_from_row, new_row
from node.meter.money import Rates, cost_from_units, exact_text
from node.meter.prices import PriceMicro, PricePeriod, to_price
from node.meter.replica import KEY_FIELDS, ORG_FIELDS, PRICE_FIELDS, ConfigChanges
from node.meter.spend import day_of
from node.meter.times import iso, to_datetime

_KEYS = ", ".join(KEY_FIELDS)
_ORGS = ", ".join(ORG_FIELDS)
_PRICES = ", ".join(PRICE_FIELDS)
_LAST_USED = KEY_FIELDS.index("expires") + 1  # where the local row has last_used


def _api_key(row: tuple[Any, ...]) -> ApiKey:
    """A fleet key row (`KEY_FIELDS`) as the meter's ApiKey (no last use: that is per node)."""
    return key_from_row((*row[:_LAST_USED], None, *row[_LAST_USED : len(KEY_FIELDS)]))


# --- keys ------------------------------------------------------------------------------------


def create_key(
    conn: Any,
    *,
    level: str,
    comment: str | None,
    org: str | None,
    expires_in_days: float | None,
    now_us: int,
    limits: Limits | None = None,
    budget: Budget | None = None,
) -> tuple[ApiKey, str]:
    """A new fleet key and its secret (the only time it exists); its org is recorded too."""
    while True:
        row, secret = new_row(
            level=level,
            comment=comment,
            org=org,
            expires_in_days=expires_in_days,
            now_us=now_us,
            limits=limits,
            budget=budget,
        )
        values = (*row[:_LAST_USED], *row[_LAST_USED + 1 :])
        with conn.transaction():
            inserted = conn.execute(
                f"INSERT INTO api_keys ({_KEYS}) VALUES ({', '.join(['%s'] * len(KEY_FIELDS))})"
                " ON CONFLICT DO NOTHING",
                values,
            ).rowcount
        if inserted:
            return _api_key(values), secret
        # an id collision (48 random bits): draw again


def update_key(conn: Any, key_id: str, changes: dict[str, Any], *, now_us: int) -> ApiKey | None:
    sets = changed_columns(changes, now_us=now_us)
    if not sets:
        return get_key(conn, key_id)
    assignments = ", ".join(f"{column} = %s" for column in sets)
    with conn.transaction():
        row = conn.execute(
            f"UPDATE api_keys SET {assignments} WHERE id = %s AND NOT deleted RETURNING {_KEYS}",
            [*sets.values(), key_id],
        ).fetchone()
    return None if row is None else _api_key(row)


def delete_key(conn: Any, key_id: str) -> bool:
    """Revoke a key fleet-wide: a tombstone, so every node's next sync removes it."""
    with conn.transaction():
        cursor = conn.execute(
            "UPDATE api_keys SET deleted = true, budget_micro = NULL, budget_period = NULL"
            " WHERE id = %s AND NOT deleted",
            (key_id,),
        )
    return cursor.rowcount > 0


def get_key(conn: Any, key_id: str) -> ApiKey | None:
    row = conn.execute(
        f"SELECT {_KEYS} FROM api_keys WHERE id = %s AND NOT deleted", (key_id,)
    ).fetchone()
    return None if row is None else _api_key(row)


def list_keys(conn: Any) -> list[ApiKey]:
    rows = conn.execute(
        f"SELECT {_KEYS} FROM api_keys WHERE NOT deleted ORDER BY created, id"
    ).fetchall()
    return [_api_key(row) for row in rows]


# --- orgs ------------------------------------------------------------------------------------


def set_org(conn: Any, name: str, budget: Budget | None, *, keep: bool = False) -> None:
    if not name:
        raise ValueError("org name must not be empty")
    with conn.transaction():
        if keep:
            conn.execute(
                "INSERT INTO orgs (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (name,)
            )
            return
        micro, period = (None, None) if budget is None else (budget.amount_micro, budget.period)
        conn.execute(
            "INSERT INTO orgs (name, budget_micro, budget_period) VALUES (%s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET budget_micro = excluded.budget_micro,"
            " budget_period = excluded.budget_period",
            (name, micro, period),
        )


def org_names(conn: Any) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM orgs UNION SELECT org FROM api_keys"
        " WHERE org IS NOT NULL AND NOT deleted ORDER BY 1"
    ).fetchall()
    return [name for (name,) in rows]


def org_row(conn: Any, name: str) -> tuple[Budget | None, int]:
    """An org's budget and its number of live keys."""
    found = conn.execute(
        "SELECT budget_micro, budget_period FROM orgs WHERE name = %s", (name,)
    ).fetchone()
    (count,) = conn.execute(
        "SELECT count(*) FROM api_keys WHERE org = %s AND NOT deleted", (name,)
    ).fetchone()
    return (None if found is None else budget_of(*found)), count


# --- prices ----------------------------------------------------------------------------------


def set_price(conn: Any, model: str, gpu_type: str, price: PriceMicro, *, now_us: int) -> None:
    """Close the open period of (model, gpu_type), if any, and open one at `now_us`."""
    with conn.transaction():
        conn.execute(
            "UPDATE prices SET valid_until = %s WHERE model = %s AND lower(gpu_type) = lower(%s)"
            " AND valid_until IS NULL",
            (now_us, model, gpu_type),
        )
        rates = price.rates
        conn.execute(
            "INSERT INTO prices (model, gpu_type, prompt_micro, completion_micro, cached_micro,"
            " currency, valid_from) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (model, gpu_type, rates.prompt, rates.completion, rates.cached, price.currency, now_us),
        )


def list_prices(conn: Any, *, history: bool = False) -> list[PricePeriod]:
    where = "" if history else " WHERE valid_until IS NULL"
    rows = conn.execute(
        f"SELECT {_PRICES} FROM prices{where} ORDER BY model, gpu_type, valid_from"
    ).fetchall()
    return [
        PricePeriod(
            price=to_price(model, gpu, PriceMicro(Rates(prompt, completion, cached), currency)),
            valid_from=to_datetime(since),
            valid_until=None if until is None else to_datetime(until),
        )
        for _id, model, gpu, prompt, completion, cached, currency, since, until in rows
    ]


# --- what the nodes copy ---------------------------------------------------------------------


def changes_since(conn: Any, version: int) -> ConfigChanges:
    """Every row changed after `version` (0: everything live), read in one snapshot so that
    the version returned covers exactly the rows returned."""
    complete = version == 0
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        live = " AND NOT deleted" if complete else ""
        keys = conn.execute(
            f"SELECT {_KEYS}, deleted FROM api_keys WHERE version > %s{live}", (version,)
        ).fetchall()
        orgs = conn.execute(f"SELECT {_ORGS} FROM orgs WHERE version > %s", (version,)).fetchall()
        prices = conn.execute(
            f"SELECT {_PRICES} FROM prices WHERE version > %s", (version,)
        ).fetchall()
        (top,) = conn.execute(
            "SELECT greatest((SELECT max(version) FROM api_keys), (SELECT max(version) FROM orgs),"
            " (SELECT max(version) FROM prices), %s)",
            (version,),
        ).fetchone()
    return ConfigChanges(top, list(keys), list(orgs), list(prices), complete=complete)


def push_local(conn: Any, local: ConfigChanges) -> int:
    """A node joining brings its own keys, orgs and prices: keys and orgs the fleet does not
    know (a key the fleet deleted stays deleted), and the prices of each model and GPU type
    the fleet has no price for. The number of rows added."""
    added = 0
    with conn.transaction():
        for row in local.keys:
            added += conn.execute(
                f"INSERT INTO api_keys ({_KEYS}) VALUES ({', '.join(['%s'] * len(KEY_FIELDS))})"
                " ON CONFLICT DO NOTHING",
                row[: len(KEY_FIELDS)],
            ).rowcount
        for row in local.orgs:
            added += conn.execute(
                f"INSERT INTO orgs ({_ORGS}) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", row
            ).rowcount
        known = {
            (model, gpu.lower())
            for model, gpu in conn.execute("SELECT DISTINCT model, gpu_type FROM prices")
        }
        for row in sorted(local.prices, key=lambda row: row[-2]):
            if (row[1], row[2].lower()) in known:
                continue
            added += conn.execute(
                f"INSERT INTO prices ({', '.join(PRICE_FIELDS[1:])})"
                f" VALUES ({', '.join(['%s'] * (len(PRICE_FIELDS) - 1))})",
                row[1:],
            ).rowcount
    return added


# --- reports (CLI --fleet-db) ----------------------------------------------------------------


def budget_json(conn: Any, scope: str, name: str, budget: Budget, now_us: int) -> dict[str, Any]:
    """`budgets.status`'s shape over the fleet, from the totals admission checks: the settled
    cost of exported rows plus what admitted requests hold until their rows are exported."""
    since, _end = period_bounds(budget.period, now_us)
    (spent,) = conn.execute(
        "SELECT coalesce(sum(settled + reserved), 0) FROM budget_spend"
        " WHERE scope = %s AND name = %s AND day >= %s",
        (scope, name, 0 if since == 0 else day_of(since)),
    ).fetchone()
    return {
        "amount": exact_text(budget.amount),
        "period": budget.period,
        "period_start": iso(since),
        "spent": exact_text(cost_from_units(int(spent))),
        "remaining": exact_text(cost_from_units(max(0, budget.units - int(spent)))),
    }


def key_json(conn: Any, key: ApiKey, now_us: int) -> dict[str, Any]:
    data = key.to_json()
    if key.budget is not None:
        data["budget"] = budget_json(conn, "key", key.id, key.budget, now_us)
    return data


def org_json(conn: Any, name: str, now_us: int) -> dict[str, Any]:
    budget, keys = org_row(conn, name)
    return {
        "org": name,
        "keys": keys,
        "budget": None if budget is None else budget_json(conn, "org", name, budget, now_us),
    }
