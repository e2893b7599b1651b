"""The local copy of the fleet's keys, orgs and prices: applied here, read as ever.

In fleet mode PostgreSQL holds keys, orgs and prices; the node copies them into its own
`api_keys`, `orgs` and `prices` tables, so authentication and pricing keep reading locally
(and keep working while the fleet database is away). This module only writes what it is
given, inside the writer's transaction; `node.fleet.replica` fetches it. A key keeps its
local `last_used`; budgets get their running totals exactly while they exist (`track`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from node.meter import keys, spend
from node.meter.budgets import track

# A key as the fleet holds it: `keys.COLUMNS` without last_used, then `deleted`.
KEY_FIELDS = (
    "id",
    "secret_sha256",
    "level",
    "comment",
    "org",
    "created",
    "expires",
    "rpm",
    "tpm",
    "max_parallel",
    "budget_micro",
    "budget_period",
)
ORG_FIELDS = ("name", "budget_micro", "budget_period")
PRICE_FIELDS = (
    "id",
    "model",
    "gpu_type",
    "prompt_micro",
    "completion_micro",
    "cached_micro",
    "currency",
    "valid_from",
    "valid_until",
)


@dataclass
class ConfigChanges:
    """Rows changed in the fleet since some version, up to `version`.

    `complete`: the rows are all there is (deleted keys left out), so local rows missing from
    them go; otherwise deleted keys come as rows whose last field is True."""

    version: int
    keys: list[tuple[Any, ...]] = field(default_factory=list)
    orgs: list[tuple[Any, ...]] = field(default_factory=list)
    prices: list[tuple[Any, ...]] = field(default_factory=list)
    complete: bool = False


@dataclass(frozen=True)
class SyncState:
    version: int
    synced_at: int | None  # µs since the epoch; None: never synced


def state(conn: sqlite3.Connection) -> SyncState:
    version, synced_at = conn.execute(
        "SELECT version, synced_at FROM fleet_sync WHERE id = 1"
    ).fetchone()
    return SyncState(version, synced_at)


def local_rows(conn: sqlite3.Connection) -> ConfigChanges:
    """This meter's own keys, orgs and prices in the fleet's shapes (for joining a fleet)."""
    return ConfigChanges(
        version=0,
        keys=[
            (*row, False)
            for row in conn.execute(f"SELECT {', '.join(KEY_FIELDS)} FROM api_keys").fetchall()
        ],
        orgs=conn.execute(f"SELECT {', '.join(ORG_FIELDS)} FROM orgs").fetchall(),
        prices=conn.execute(f"SELECT {', '.join(PRICE_FIELDS)} FROM prices").fetchall(),
    )


def apply(conn: sqlite3.Connection, changes: ConfigChanges, *, now_us: int) -> None:
    """Make the local tables say what the fleet says, and note the version and the time."""
    _apply_keys(conn, changes)
    _apply_orgs(conn, changes)
    _apply_prices(conn, changes)
    mark_synced(conn, changes.version, now_us=now_us)


def mark_synced(conn: sqlite3.Connection, version: int, *, now_us: int) -> None:
    """The fleet confirmed the copy at `version` now (the version never moves back)."""
    conn.execute(
        "UPDATE fleet_sync SET version = max(version, ?), synced_at = ? WHERE id = 1",
        (version, now_us),
    )


def _apply_keys(conn: sqlite3.Connection, changes: ConfigChanges) -> None:
    columns = ", ".join(KEY_FIELDS)
    updates = ", ".join(f"{name} = excluded.{name}" for name in KEY_FIELDS[1:])
    live = set()
    for row in changes.keys:
        *values, deleted = row
        key_id = values[0]
        if deleted:
            keys.delete(conn, key_id)
            continue
        live.add(key_id)
        conn.execute(
            f"INSERT INTO api_keys ({columns}) VALUES ({', '.join('?' * len(KEY_FIELDS))})"
            f" ON CONFLICT (id) DO UPDATE SET {updates}",
            values,
        )
        track(conn, "key", key_id, values[KEY_FIELDS.index("budget_micro")] is not None)
    if changes.complete:
        for (key_id,) in conn.execute("SELECT id FROM api_keys").fetchall():
            if key_id not in live:
                keys.delete(conn, key_id)


def _apply_orgs(conn: sqlite3.Connection, changes: ConfigChanges) -> None:
    names = set()
    for name, micro, period in changes.orgs:
        names.add(name)
        conn.execute(
            "INSERT INTO orgs (name, budget_micro, budget_period) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET budget_micro = excluded.budget_micro,"
            " budget_period = excluded.budget_period",
            (name, micro, period),
        )
        track(conn, "org", name, micro is not None)
    if changes.complete:
        for (name,) in conn.execute("SELECT name FROM orgs").fetchall():
            if name not in names:
                conn.execute("DELETE FROM orgs WHERE name = ?", (name,))
                spend.drop(conn, "org", name)


def _apply_prices(conn: sqlite3.Connection, changes: ConfigChanges) -> None:
    if changes.complete:
        conn.execute("DELETE FROM prices")
    columns = ", ".join(PRICE_FIELDS)
    updates = ", ".join(f"{name} = excluded.{name}" for name in PRICE_FIELDS[1:])
    # Closed periods first: a change closes the open period before it opens the next one,
    # and only one period of a model and GPU type may be open.
    for row in sorted(changes.prices, key=lambda row: row[-1] is None):
        conn.execute(
            f"INSERT INTO prices ({columns}) VALUES ({', '.join('?' * len(PRICE_FIELDS))})"
            f" ON CONFLICT (id) DO UPDATE SET {updates}",
            row,
        )
