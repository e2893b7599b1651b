"""`llm-node orgs`: an organisation's budget (shared by all its keys), and the list of orgs."""

from __future__ import annotations

from typing import Any

import click

from node.commands.control_options import budget_options, parse_budget_options
from node.commands.keys import budget_cells
from node.commands.meter_access import open_meter
from node.commands.options import db_option, echo_json, echo_table, json_option
from node.meter import Budget


@click.group()
def orgs() -> None:
    """Organisations: budgets over all their keys."""


@orgs.command("set")
@click.argument("org")
@budget_options(clearable=True)
@db_option
@json_option
def set_org(
    org: str, budget: str | None, budget_period: str | None, db_path: str, as_json: bool
) -> None:
    """Record ORG and set (`--budget none`: remove) its budget; its keys' next requests see
    it. Without --budget an existing budget is kept."""
    if not org.strip() or org != org.strip():
        raise click.BadParameter(f"{org!r} is empty or has surrounding spaces", param_hint="ORG")
    parsed = parse_budget_options(budget, budget_period)
    with open_meter(db_path) as meter:
        if parsed is None:
            data = meter.set_org(org, None, keep_budget=True)
        else:
            data = meter.set_org(org, parsed if isinstance(parsed, Budget) else None)
    if as_json:
        echo_json(data)
        return
    _print([data])


@orgs.command("list")
@db_option
@json_option
def list_orgs(db_path: str, as_json: bool) -> None:
    """Every org (with a budget or on a key): keys, budget, spent this period, remaining."""
    with open_meter(db_path) as meter:
        rows = meter.list_orgs()
    if as_json:
        echo_json(rows)
        return
    _print(rows)


def _print(rows: list[dict[str, Any]]) -> None:
    echo_table(
        ["org", "keys", "budget", "spent", "remaining"],
        [[r["org"], r["keys"], *budget_cells(r["budget"])] for r in rows],
    )
