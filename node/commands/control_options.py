"""`--rpm`, `--tpm`, `--max-parallel`, `--budget`, `--budget-period`: declared once for
`api-keys create`, `api-keys update` and `orgs set`. Every value is checked before the
database is touched, so bad input writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from node.meter import Budget, MoneyError
from node.meter.budgets import PERIODS, parse_budget
from node.meter.keys import MAX_LIMIT

F = TypeVar("F", bound=Callable[..., Any])
CLEAR = "none"  # `--rpm none` / `--budget none` on update: remove the limit or budget


class LimitValue(click.ParamType):
    """A whole number from 1 to MAX_LIMIT, or `none` where clearing is allowed."""

    name = "N"

    def __init__(self, *, clearable: bool) -> None:
        self.clearable = clearable

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) or value is None:
            return value
        text = str(value).strip()
        if self.clearable and text.lower() == CLEAR:
            return CLEAR
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            self.fail(f"{value!r} is not a whole number from 1 to {MAX_LIMIT}", param, ctx)
        return int(text)


def limit_options(*, clearable: bool) -> Callable[[F], F]:
    extra = f" `{CLEAR}` removes it." if clearable else ""

    def decorate(func: F) -> F:
        for name, dest, what in (
            ("--max-parallel", "max_parallel", "Most requests running at once."),
            ("--tpm", "tpm", "Tokens per minute (prompt + max_tokens reserved at admission)."),
            ("--rpm", "rpm", "Requests per minute."),
        ):
            func = click.option(
                name, dest, type=LimitValue(clearable=clearable), help=what + extra
            )(func)
        return func

    return decorate


def budget_options(*, clearable: bool) -> Callable[[F], F]:
    extra = f" `{CLEAR}` removes it." if clearable else ""

    def decorate(func: F) -> F:
        func = click.option(
            "--budget-period",
            type=click.Choice(PERIODS),
            help="Period of --budget (UTC calendar day, ISO week, month; or total).",
        )(func)
        return click.option(
            "--budget",
            metavar="AMOUNT",
            help="Exact amount in the price list's currency, up to 6 decimals." + extra,
        )(func)

    return decorate


def parse_budget_options(amount: str | None, period: str | None) -> Budget | str | None:
    """Budget, None (not given) or CLEAR; one-line usage errors for bad combinations."""
    if amount is None:
        if period is not None:
            raise click.UsageError("--budget-period needs --budget AMOUNT")
        return None
    if amount.strip().lower() == CLEAR:
        if period is not None:
            raise click.UsageError(f"--budget {CLEAR} takes no --budget-period")
        return CLEAR
    if period is None:
        raise click.UsageError("--budget needs --budget-period day|week|month|total")
    try:
        return parse_budget(amount, period)
    except (MoneyError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--budget") from None
