"""Running spend totals of the keys and orgs that have a budget, so admission stays O(1).

Summing a key's request rows at every admission grows with its traffic (a busy key has
millions of rows a month). Instead, for every key or org with a budget, `budget_spend` holds
per UTC day the settled cost of its finished rows and the reservations of its running ones,
plus one row (`day` 0) for all time. A period's spending is the sum of at most 31 rows.

The rows exist exactly while the budget does: setting one rebuilds them from the request rows
(in the same write transaction), removing it drops them. Every write that moves money
(admission, finish, recovery) adds its change with `add`, which touches nothing for a scope
without a budget.
"""

from __future__ import annotations

import sqlite3

from node.meter.times import US_PER_DAY

_COLUMN = {"key": "key_id", "org": "org"}
TOTAL_DAY = 0  # the all-time row; day rows are 1 + days since the epoch


def day_of(us: int) -> int:
    return us // US_PER_DAY + 1


def tracked(conn: sqlite3.Connection, scope: str, name: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM budget_spend WHERE scope = ? AND name = ? AND day = 0", (scope, name)
        ).fetchone()
        is not None
    )


def rebuild(conn: sqlite3.Connection, scope: str, name: str) -> None:
    """(Re)compute the scope's rows from its request rows."""
    drop(conn, scope, name)
    column = _COLUMN[scope]
    conn.execute(
        "INSERT INTO budget_spend (scope, name, day, settled, reserved)"
        f" SELECT ?, ?, started / {US_PER_DAY} + 1,"
        " sum(CASE WHEN status = 'running' THEN 0 ELSE cost_units END),"
        " sum(CASE WHEN status = 'running' THEN reserved_units ELSE 0 END)"
        f" FROM requests WHERE {column} = ? GROUP BY started / {US_PER_DAY}",
        (scope, name, name),
    )
    conn.execute(
        "INSERT INTO budget_spend (scope, name, day, settled, reserved)"
        " SELECT ?, ?, 0, coalesce(sum(settled), 0), coalesce(sum(reserved), 0)"
        " FROM budget_spend WHERE scope = ? AND name = ?",
        (scope, name, scope, name),
    )


def drop(conn: sqlite3.Connection, scope: str, name: str) -> None:
    conn.execute("DELETE FROM budget_spend WHERE scope = ? AND name = ?", (scope, name))


def add(
    conn: sqlite3.Connection,
    scope: str,
    name: str | None,
    started_us: int,
    *,
    settled: int = 0,
    reserved: int = 0,
) -> None:
    """Move a row's money (cost units) in the totals of a scope with a budget."""
    if name is None or (settled == 0 and reserved == 0):
        return
    total = conn.execute(
        "UPDATE budget_spend SET settled = settled + ?, reserved = reserved + ?"
        " WHERE scope = ? AND name = ? AND day = 0",
        (settled, reserved, scope, name),
    )
    if total.rowcount == 0:
        return  # no budget: nothing tracked
    conn.execute(
        "INSERT INTO budget_spend (scope, name, day, settled, reserved) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (scope, name, day) DO UPDATE SET settled = settled + excluded.settled,"
        " reserved = reserved + excluded.reserved",
        (scope, name, day_of(started_us), settled, reserved),
    )


def held(conn: sqlite3.Connection, scope: str, name: str, since_us: int) -> tuple[int, int]:
    """(settled, reserved) cost units of rows started since `since_us` (0: all time)."""
    if since_us == 0:
        where, params = "day = 0", (scope, name)
    else:
        where, params = "day >= ?", (scope, name, day_of(since_us))  # type: ignore[assignment]
    row = conn.execute(
        "SELECT coalesce(sum(settled), 0), coalesce(sum(reserved), 0) FROM budget_spend"
        f" WHERE scope = ? AND name = ? AND {where}",
        params,
    ).fetchone()
    return int(row[0]), int(row[1])
