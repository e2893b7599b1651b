"""API keys: create, verify by SHA-256 through the index, list, delete, record last use.

A secret is `llmn_` + 43 url-safe characters (256 random bits). Only its SHA-256 is stored, so
the database never holds a usable secret; the key id (`key_` + 12 hex) is public.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from node.meter.budgets import Budget, budget_of, track
from node.meter.money import exact_text
from node.meter.times import US_PER_DAY, US_PER_SECOND, iso_moment, to_datetime

SECRET_PREFIX = "llmn_"
KEY_ID_PREFIX = "key_"
LEVELS = ("LLM", "ADMIN")
MAX_DAYS = 36_500  # expiry at most ~100 years ahead

COLUMNS = (
    "id, secret_sha256, level, comment, org, created, expires, last_used,"
    " rpm, tpm, max_parallel, budget_micro, budget_period"
)
MAX_LIMIT = 10**12  # rpm, tpm and max parallel: positive integers up to this


@dataclass(frozen=True)
class Limits:
    """Per-key rate limits; None: unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.max_parallel))

    def to_json(self) -> dict[str, int | None]:
        return {"rpm": self.rpm, "tpm": self.tpm, "max_parallel": self.max_parallel}


def check_limit(name: str, value: object) -> int | None:
    """A limit as given (None: unlimited); ValueError naming it otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_LIMIT:
        raise ValueError(f"{name} {value!r} is not a whole number from 1 to {MAX_LIMIT}")
    return value


@dataclass(frozen=True)
class ApiKey:
    id: str
    level: str
    comment: str | None
    org: str | None
    created: datetime
    expires: datetime | None
    last_used: datetime | None
    limits: Limits = Limits()
    budget: Budget | None = None

    def to_json(self) -> dict[str, Any]:
        """The key's fields; `budget` without spending (see `Meter.key_json`)."""
        return {
            "id": self.id,
            "level": self.level,
            "comment": self.comment,
            "org": self.org,
            "created": iso_moment(self.created),
            "expires": iso_moment(self.expires),
            "last_used": iso_moment(self.last_used),
            **self.limits.to_json(),
            "budget": None
            if self.budget is None
            else {"amount": exact_text(self.budget.amount), "period": self.budget.period},
        }


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_row(
    *,
    level: str,
    comment: str | None,
    org: str | None,
    expires_in_days: float | None,
    now_us: int,
    limits: Limits | None = None,
    budget: Budget | None = None,
) -> tuple[tuple[Any, ...], str]:
    """A new key's row (`COLUMNS` order) and its secret, checked; written by the caller (the
    local meter here, the fleet database in fleet mode)."""
    if level not in LEVELS:
        raise ValueError(f"level {level!r} is not one of {', '.join(LEVELS)}")
    created = now_us - now_us % US_PER_SECOND  # whole seconds: expiry lands on an exact second
    expires = _expiry(expires_in_days, created)
    limits = limits or Limits()
    _check_limits(limits)
    key_id = KEY_ID_PREFIX + secrets.token_hex(6)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    row = (
        key_id,
        hash_secret(secret),
        level,
        comment,
        org,
        created,
        expires,
        None,
        limits.rpm,
        limits.tpm,
        limits.max_parallel,
        None if budget is None else budget.amount_micro,
        None if budget is None else budget.period,
    )
    return row, secret


def create(
    conn: sqlite3.Connection,
    *,
    level: str,
    comment: str | None,
    org: str | None,
    expires_in_days: float | None,
    now_us: int,
    limits: Limits | None = None,
    budget: Budget | None = None,
) -> tuple[ApiKey, str]:
    """Insert a new key; returns it with its secret (the only time the secret exists)."""
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
        try:
            conn.execute(f"INSERT INTO api_keys ({COLUMNS}) VALUES ({', '.join('?' * 13)})", row)
        except sqlite3.IntegrityError:
            continue  # an id collision (48 random bits): draw again
        track(conn, "key", row[0], budget is not None)
        return key_from_row(row), secret


def verify(conn: sqlite3.Connection, secret: str, *, now_us: int) -> ApiKey | None:
    """The live key for a secret, or None (unknown, deleted or expired at `now_us`)."""
    if not secret.startswith(SECRET_PREFIX):
        return None
    digest = hash_secret(secret)
    row = conn.execute(
        f"SELECT {COLUMNS} FROM api_keys WHERE secret_sha256 = ?", (digest,)
    ).fetchone()
    if row is None or not hmac.compare_digest(row[1], digest):
        return None
    expires = row[6]
    if expires is not None and now_us >= expires:
        return None
    return key_from_row(row)


def _expiry(expires_in_days: float | None, from_us: int) -> int | None:
    if expires_in_days is None:
        return None
    if not 0 < expires_in_days <= MAX_DAYS:  # False for NaN
        raise ValueError(f"expires-in {expires_in_days!r} days is not in (0, {MAX_DAYS}]")
    return from_us + round(expires_in_days * US_PER_DAY)


def _check_limits(limits: Limits) -> None:
    for name, value in limits.to_json().items():
        check_limit(name, value)


# Fields `update` may change; a field absent from the changes keeps its value, None clears it.
UPDATABLE = ("comment", "org", "expires_in_days", "rpm", "tpm", "max_parallel", "budget")


def changed_columns(changes: dict[str, Any], *, now_us: int) -> dict[str, Any]:
    """`update`'s changes as column values, checked (ValueError naming what is wrong)."""
    unknown = set(changes) - set(UPDATABLE)
    if unknown:
        raise ValueError(f"cannot change {', '.join(sorted(unknown))} of a key")
    sets: dict[str, Any] = {}
    for name in ("comment", "org"):
        if name in changes:
            sets[name] = changes[name]
    for name in ("rpm", "tpm", "max_parallel"):
        if name in changes:
            sets[name] = check_limit(name, changes[name])
    if "expires_in_days" in changes:
        sets["expires"] = _expiry(changes["expires_in_days"], now_us - now_us % US_PER_SECOND)
    if "budget" in changes:
        budget: Budget | None = changes["budget"]
        sets["budget_micro"] = None if budget is None else budget.amount_micro
        sets["budget_period"] = None if budget is None else budget.period
    return sets


def update(
    conn: sqlite3.Connection, key_id: str, changes: dict[str, Any], *, now_us: int
) -> ApiKey | None:
    """Change a key's limits, budget, comment, org or expiry (counted from now); None: no key."""
    sets = changed_columns(changes, now_us=now_us)
    if sets:
        assignments = ", ".join(f"{column} = ?" for column in sets)
        cursor = conn.execute(
            f"UPDATE api_keys SET {assignments} WHERE id = ?", [*sets.values(), key_id]
        )
        if cursor.rowcount and "budget" in changes:
            track(conn, "key", key_id, changes["budget"] is not None)
    return get(conn, key_id)


def get(conn: sqlite3.Connection, key_id: str) -> ApiKey | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    return None if row is None else key_from_row(row)


def list_all(conn: sqlite3.Connection) -> list[ApiKey]:
    rows = conn.execute(f"SELECT {COLUMNS} FROM api_keys ORDER BY created, id").fetchall()
    return [key_from_row(row) for row in rows]


def delete(conn: sqlite3.Connection, key_id: str) -> bool:
    """Remove a key (and its budget's running totals); False when there is no such key."""
    track(conn, "key", key_id, False)
    return conn.execute("DELETE FROM api_keys WHERE id = ?", (key_id,)).rowcount > 0


def touch(conn: sqlite3.Connection, last_used: dict[str, int]) -> None:
    """Record last use times (never moving one backwards)."""
    conn.executemany(
        "UPDATE api_keys SET last_used = max(coalesce(last_used, 0), ?) WHERE id = ?",
        [(used, key_id) for key_id, used in last_used.items()],
    )


def key_from_row(row: tuple[Any, ...]) -> ApiKey:
    (key_id, _digest, level, comment, org, created, expires, last_used) = row[:8]
    rpm, tpm, max_parallel, budget_micro, budget_period = row[8:]
    return ApiKey(
        id=key_id,
        level=level,
        comment=comment,
        org=org,
        created=to_datetime(created),
        expires=None if expires is None else to_datetime(expires),
        last_used=None if last_used is None else to_datetime(last_used),
        limits=Limits(rpm, tpm, max_parallel),
        budget=budget_of(budget_micro, budget_period),
    )
