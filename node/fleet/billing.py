"""Billing over the whole fleet: the exported rows in PostgreSQL, in the local report shapes.

The sums and money are `node.meter.billing`'s own (`summarize`, `request_json`), so a fleet
report and the local reports of its nodes agree to the last digit; only the SQL differs.
"""

from __future__ import annotations

from typing import Any

from node.meter.billing import GROUPS as LOCAL_GROUPS
from node.meter.billing import (
    REQUEST_COLUMNS,
    TOKEN_SUMS,
    Filters,
    request_json,
    summarize,
)
from node.meter.usage import PRICE_COLUMNS

_DAY = "to_char(to_timestamp(started / 1000000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

# --by choice → (JSON field name, SQL expression): the local ones, and the node.
GROUPS: dict[str, tuple[str, str]] = {
    **{by: (name, expr) for by, (name, expr) in LOCAL_GROUPS.items() if by != "day"},
    "day": ("day", _DAY),
    "node": ("node_id", "node_id"),
}

_COLUMNS = REQUEST_COLUMNS.replace("id, key_id", "request_id, key_id", 1).replace(
    " user,", ' "user",', 1
)


def status(conn: Any, filters: Filters, by: str = "key") -> dict[str, Any]:
    """`billing status` over every node's exported rows (raises MixedCurrencies like local)."""
    if by not in GROUPS:
        raise ValueError(f"--by {by!r} is not one of {', '.join(GROUPS)}")
    name, expr = GROUPS[by]
    where, params = filters.where("%s", "request_id")
    rows = conn.execute(
        f"SELECT {expr} AS grp, currency, {PRICE_COLUMNS}, {TOKEN_SUMS}"
        f" FROM requests{where} GROUP BY 1, 2, 3, 4, 5",
        params,
    ).fetchall()
    return summarize(rows, name, by)


def requests(conn: Any, filters: Filters, limit: int = 100) -> list[dict[str, Any]]:
    """Exported rows, newest first, each with the node that served it."""
    where, params = filters.where("%s", "request_id")
    rows = conn.execute(
        f"SELECT {_COLUMNS}, node_id FROM requests{where}"
        " ORDER BY started DESC, request_id DESC LIMIT %s",
        [*params, limit],
    ).fetchall()
    return [{**request_json(row[:-1]), "node_id": row[-1]} for row in rows]
