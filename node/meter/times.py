"""Times in the meter: integer microseconds since the Unix epoch (UTC) on disk, ISO 8601 out.

Integers compare as timestamps (never as strings) and survive any locale or format change.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND


def now_us() -> int:
    return time.time_ns() // 1000


def to_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def from_datetime(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds


def iso(us: int | None) -> str | None:
    """ISO 8601 UTC with a `Z`; sub-second digits only when there are any."""
    return None if us is None else iso_moment(to_datetime(us))


def iso_moment(moment: datetime | None) -> str | None:
    """The one ISO 8601 form the node writes: UTC with a `Z` (naive means UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_moment(text: str, *, end_of_day: bool = False) -> int:
    """`YYYY-MM-DD` or an ISO 8601 date-time (naive means UTC) → microseconds.

    With `end_of_day`, a bare date means the end of that day (the next midnight), so
    `--until 2026-11-25` includes the 25th.
    """
    try:
        return _parse(text.strip(), end_of_day)
    except OverflowError:
        raise ValueError(f"{text!r} is out of range") from None


def _parse(text: str, end_of_day: bool) -> int:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = None
    if day is not None and len(text) == 10:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return from_datetime(start + timedelta(days=1) if end_of_day else start)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or ISO 8601 date-time") from None
    return from_datetime(moment)
