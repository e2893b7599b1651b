"""Shared by the meter's CLI groups: open the meter, parse dates, one-line errors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from node.meter import Meter, MeterUnavailable
from node.meter.keys import MAX_DAYS
from node.meter.times import parse_moment


@contextmanager
def open_meter(db_path: str) -> Iterator[Meter]:
    """The meter at `--db`; a database that cannot be opened is bad input (exit 2)."""
    try:
        meter = Meter(db_path)
    except MeterUnavailable as exc:
        raise click.BadParameter(str(exc), param_hint="--db") from None
    try:
        yield meter
    except MeterUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        meter.close()


class Moment(click.ParamType):
    """`YYYY-MM-DD` or ISO 8601 date-time (UTC when no offset) → microseconds since epoch."""

    name = "DATE"

    def __init__(self, *, end_of_day: bool = False) -> None:
        self.end_of_day = end_of_day

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_moment(str(value), end_of_day=self.end_of_day)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Days(click.ParamType):
    """A positive, finite number of days, at most MAX_DAYS."""

    name = "DAYS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            days = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of days", param, ctx)
        if not math.isfinite(days) or not 0 < days <= MAX_DAYS:
            self.fail(f"{value!r} must be more than 0 and at most {MAX_DAYS} days", param, ctx)
        return days


def check_range(since: int | None, until: int | None) -> None:
    if since is not None and until is not None and since >= until:
        raise click.UsageError("--since must be before --until")
