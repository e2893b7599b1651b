"""`llm-node orgs`: an organisation's budget (shared by all its keys), and the list of orgs."""

from __future__ import annotations

from typing import Any

import click

from node.commands.control_options import budget_options, parse_budget_options
from node.commands.fleet_access import open_fleet
from node.commands.keys import budget_cells
from node.commands.meter_access import open_meter
from node.commands.options import db_option, echo_json, echo_table, fleet_db_option, json_option
from node.meter import Budget
from node.meter.times import now_us


@click.group()
def orgs() -> None:
    """Organisations: budgets over all their keys."""


@orgs.command("set")
@click.argument("org")
@budget_options(clearable=True)
@db_option
@fleet_db_option
@json_option
def set_org(
    org: str,
    budget: str | None,
    budget_period: str | None,
    db_path: str,
    fleet_db: str | None,
    as_json: bool,
) -> None:
    """Record ORG and set (`--budget none`: remove) its budget; its keys' next requests see
    it. Without --budget an existing budget is kept."""
    if not org.strip() or org != org.strip():
        raise click.BadParameter(f"{org!r} is empty or has surrounding spaces", param_hint="ORG")
    parsed = parse_budget_options(budget, budget_period)
    if fleet_db is not None:
        from node.fleet import config

        with open_fleet(fleet_db, autocommit=True) as conn:
            chosen = parsed if isinstance(parsed, Budget) else None
            config.set_org(conn, org, chosen, keep=parsed is None)
            data = config.org_json(conn, org, now_us())
        _show([data], as_json, single=True)
        return
    with open_meter(db_path) as meter:
        if parsed is None:
            data = meter.set_org(org, None, keep_budget=True)
        else:
            data = meter.set_org(org, parsed if isinstance(parsed, Budget) else None)
    _show([data], as_json, single=True)


@orgs.command("list")
@db_option
@fleet_db_option
@json_option
def list_orgs(db_path: str, fleet_db: str | None, as_json: bool) -> None:
    """Every org (with a budget or on a key): keys, budget, spent this period, remaining."""
    if fleet_db is not None:
        from node.fleet import config

        with open_fleet(fleet_db) as conn:
            now = now_us()
            rows = [config.org_json(conn, name, now) for name in config.org_names(conn)]
    else:
        with open_meter(db_path) as meter:
            rows = meter.list_orgs()
    _show(rows, as_json, single=False)


def _show(rows: list[dict[str, Any]], as_json: bool, *, single: bool) -> None:
    if as_json:
        echo_json(rows[0] if single else rows)
        return
    _print(rows)


def _print(rows: list[dict[str, Any]]) -> None:
    echo_table(
        ["org", "keys", "budget", "spent", "remaining"],
        [[r["org"], r["keys"], *budget_cells(r["budget"])] for r in rows],
    )
