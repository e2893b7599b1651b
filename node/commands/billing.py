"""`llm-node billing`: usage and cost per group with totals, and the meter's request rows."""

from __future__ import annotations

import csv
import sys
from decimal import Decimal
from typing import Any

import click

from node.commands.fleet_access import open_fleet
from node.commands.keys import budget_cells
from node.commands.meter_access import Moment, check_range, open_meter
from node.commands.options import db_option, echo_json, echo_table, fleet_db_option, json_option
from node.fleet import billing as fleet_billing
from node.meter import Filters, MixedCurrencies, MoneyError
from node.meter.billing import GROUPS
from node.meter.money import display_text, parse_currency
from node.meter.usage import STATUSES

_SINCE_HELP = "Requests started at or after DATE (YYYY-MM-DD or ISO 8601, UTC)."
_UNTIL_HELP = "Requests started before DATE; a bare date includes that whole day."


@click.group()
def billing() -> None:
    """Usage and cost from the meter."""


@billing.command()
@click.option("--since", type=Moment(), help=_SINCE_HELP)
@click.option("--until", type=Moment(end_of_day=True), help=_UNTIL_HELP)
@click.option("--org", help="Only this organisation.")
@click.option("--key", "key_id", metavar="KEY_ID", help="Only this API key.")
@click.option("--model", metavar="ID", help="Only this model.")
@click.option("--currency", help="Only requests billed in this currency.")
@click.option(
    "--by",
    type=click.Choice(tuple(fleet_billing.GROUPS)),
    default="key",
    show_default=True,
    help="Group by (node: with --fleet-db).",
)
@db_option
@fleet_db_option
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="CSV rows (exact costs), no total line.")
def status(
    since: int | None,
    until: int | None,
    org: str | None,
    key_id: str | None,
    model: str | None,
    currency: str | None,
    by: str,
    db_path: str,
    fleet_db: str | None,
    as_json: bool,
    as_csv: bool,
) -> None:
    """Requests, tokens and cost per group, and totals (of the whole fleet with --fleet-db)."""
    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    if by not in GROUPS and fleet_db is None:
        raise click.UsageError(f"--by {by} needs --fleet-db")
    check_range(since, until)
    if currency is not None:
        try:
            currency = parse_currency(currency)
        except MoneyError as exc:
            raise click.BadParameter(str(exc), param_hint="--currency") from None
    filters = Filters(
        since_us=since, until_us=until, org=org, key_id=key_id, model=model, currency=currency
    )
    try:
        if fleet_db is not None:
            with open_fleet(fleet_db) as conn:
                report = fleet_billing.status(conn, filters, by)
        else:
            with open_meter(db_path) as meter:
                report = meter.billing_status(filters, by)
    except MixedCurrencies as exc:
        raise click.UsageError(str(exc)) from None
    group = fleet_billing.GROUPS[by][0]
    if as_json:
        echo_json(report)
    elif as_csv:
        _write_csv(report, group)
    else:
        _print_status(report, group)


def _write_csv(report: dict[str, Any], group: str) -> None:
    fields = [
        group,
        "requests",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "cost",
        "cached_cost",
    ]
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([*fields, "currency", "no_price"])
    for row in report["rows"]:
        writer.writerow([row[f] for f in fields] + [report["currency"] or "", row["no_price"]])


def _print_status(report: dict[str, Any], group: str) -> None:
    currency = report["currency"] or ""

    def line(label: Any, sums: dict[str, Any]) -> list[Any]:
        return [
            label,
            sums["requests"],
            sums["prompt_tokens"],
            sums["cached_tokens"],
            sums["completion_tokens"],
            f"{display_text(Decimal(sums['cost']))} {currency}".rstrip(),
            f"{display_text(Decimal(sums['cached_cost']))} {currency}".rstrip(),
            "no price" if sums["no_price"] else "",
        ]

    headers = [group, "requests", "prompt", "cached", "completion", "cost", "of it cached", "note"]
    rows = [line(r[group] if r[group] is not None else "-", r) for r in report["rows"]]
    if any(r.get("budget") for r in report["rows"]):  # grouped by key or org, with budgets
        headers += ["budget", "spent in period", "remaining"]
        for row, data in zip(rows, report["rows"], strict=True):
            row += budget_cells(data.get("budget"))
    rows.append(line("TOTAL", report["total"]) + [None] * (len(headers) - 8))
    echo_table(headers, rows)


@billing.command()
@click.option("--since", type=Moment(), help=_SINCE_HELP)
@click.option("--until", type=Moment(end_of_day=True), help=_UNTIL_HELP)
@click.option("--key", "key_id", metavar="KEY_ID", help="Only this API key.")
@click.option("--status", "state", type=click.Choice(STATUSES), help="Only this status.")
@click.option("--limit", type=click.IntRange(min=1, max=10**9), default=100, show_default=True)
@db_option
@fleet_db_option
@json_option
def requests(
    since: int | None,
    until: int | None,
    key_id: str | None,
    state: str | None,
    limit: int,
    db_path: str,
    fleet_db: str | None,
    as_json: bool,
) -> None:
    """Meter rows, newest first (every node's exported rows with --fleet-db)."""
    check_range(since, until)
    filters = Filters(since_us=since, until_us=until, key_id=key_id, status=state)
    if fleet_db is not None:
        with open_fleet(fleet_db) as conn:
            rows = fleet_billing.requests(conn, filters, limit)
    else:
        with open_meter(db_path) as meter:
            rows = meter.billing_requests(filters, limit)
    if as_json:
        echo_json(rows)
        return
    node = ["node"] if fleet_db is not None else []
    echo_table(
        [
            *node,
            "id",
            "key",
            "org",
            "endpoint",
            "model",
            "gpu",
            "status",
            "prompt",
            "cached",
            "completion",
            "cost",
            "started",
            "finished",
        ],
        [
            [
                *([r["node_id"]] if node else []),
                r["id"],
                r["key_id"],
                r["org"],
                r["endpoint"],
                r["model"],
                r["gpu_type"],
                r["status"],
                r["prompt_tokens"],
                r["cached_tokens"],
                r["completion_tokens"],
                "no price"
                if r["no_price"]
                else f"{display_text(Decimal(r['cost']))} {r['currency']}",
                r["started"],
                r["finished"],
            ]
            for r in rows
        ],
    )
