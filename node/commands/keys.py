"""`llm-node api-keys`: create (secret shown once), update, list, delete."""

from __future__ import annotations

from typing import Any

import click

from node.commands.control_options import (
    CLEAR,
    budget_options,
    limit_options,
    parse_budget_options,
)
from node.commands.meter_access import Days, open_meter
from node.commands.options import db_option, echo_json, echo_table, json_option
from node.meter import Budget, Limits
from node.meter.keys import LEVELS


@click.group("api-keys")
def api_keys() -> None:
    """Create, list and delete API keys."""


@api_keys.command()
@click.option(
    "--level", required=True, type=click.Choice(LEVELS, case_sensitive=False), help="Access level."
)
@click.option("--comment", help="Free text, e.g. who the key is for.")
@click.option("--org", help="Organisation billed for the key's requests.")
@click.option(
    "--expires-in",
    "expires_in",
    type=Days(),
    help="Days until the key stops working (default: never).",
)
@limit_options(clearable=False)
@budget_options(clearable=False)
@db_option
@json_option
def create(
    level: str,
    comment: str | None,
    org: str | None,
    expires_in: float | None,
    rpm: int | None,
    tpm: int | None,
    max_parallel: int | None,
    budget: str | None,
    budget_period: str | None,
    db_path: str,
    as_json: bool,
) -> None:
    """Create a key and print its secret: the only time it is ever shown."""
    parsed = parse_budget_options(budget, budget_period)
    assert parsed != CLEAR  # not clearable on create
    with open_meter(db_path) as meter:
        key, secret = meter.create_key(
            level.upper(),
            comment=comment,
            org=org,
            expires_in_days=expires_in,
            limits=Limits(rpm, tpm, max_parallel),
            budget=parsed if isinstance(parsed, Budget) else None,
        )
    data = key.to_json()
    if as_json:
        echo_json(
            {
                "id": key.id,
                "secret": secret,
                "level": key.level,
                "comment": key.comment,
                "org": key.org,
                "created": data["created"],
                "expires": data["expires"],
            }
        )
        return
    click.echo(f"key id:  {key.id}")
    click.echo(f"secret:  {secret}")
    click.echo(f"level:   {key.level}")
    click.echo(f"expires: {data['expires'] or 'never'}")
    click.echo("Store the secret now: it is not kept and cannot be shown again.")


@api_keys.command()
@click.argument("key_id")
@click.option("--comment", help="Free text; an empty string removes it.")
@click.option("--org", help="Organisation billed from now on; an empty string removes it.")
@click.option("--expires-in", "expires_in", type=Days(), help="Days from now until it stops.")
@limit_options(clearable=True)
@budget_options(clearable=True)
@db_option
@json_option
def update(
    key_id: str,
    comment: str | None,
    org: str | None,
    expires_in: float | None,
    rpm: Any,
    tpm: Any,
    max_parallel: Any,
    budget: str | None,
    budget_period: str | None,
    db_path: str,
    as_json: bool,
) -> None:
    """Change a key's limits, budget, comment, org or expiry (its next request sees them)."""
    changes: dict[str, Any] = {}
    for name, value in (("comment", comment), ("org", org)):
        if value is not None:
            changes[name] = value or None
    if expires_in is not None:
        changes["expires_in_days"] = expires_in
    for name, value in (("rpm", rpm), ("tpm", tpm), ("max_parallel", max_parallel)):
        if value is not None:
            changes[name] = None if value == CLEAR else value
    parsed = parse_budget_options(budget, budget_period)
    if parsed is not None:
        changes["budget"] = None if parsed == CLEAR else parsed
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    with open_meter(db_path) as meter:
        key = meter.update_key(key_id, changes)
        if key is None:
            raise click.BadParameter(f"no API key with id {key_id!r}", param_hint="KEY_ID")
        data = meter.key_json(key)
    if as_json:
        echo_json(data)
        return
    _print_keys([data])


@api_keys.command("list")
@db_option
@json_option
def list_keys(db_path: str, as_json: bool) -> None:
    """Every key: id, level, comment, org, created, expires, last used, limits, budget (spent
    in the current period and remaining); never a secret."""
    with open_meter(db_path) as meter:
        rows = [meter.key_json(key) for key in meter.list_keys()]
    if as_json:
        echo_json(rows)
        return
    _print_keys(rows)


def _print_keys(rows: list[dict[str, Any]]) -> None:
    echo_table(
        [
            "id",
            "level",
            "comment",
            "org",
            "created",
            "expires",
            "last used",
            "rpm",
            "tpm",
            "parallel",
            "budget",
            "spent",
            "remaining",
        ],
        [
            [
                r["id"],
                r["level"],
                r["comment"],
                r["org"],
                r["created"],
                r["expires"],
                r["last_used"],
                r["rpm"],
                r["tpm"],
                r["max_parallel"],
                *budget_cells(r["budget"]),
            ]
            for r in rows
        ],
    )


def budget_cells(budget: dict[str, Any] | None) -> list[str | None]:
    """`12.5/month`, spent, remaining: for tables."""
    if budget is None:
        return [None, None, None]
    return [f"{budget['amount']}/{budget['period']}", budget["spent"], budget["remaining"]]


@api_keys.command()
@click.argument("key_id")
@db_option
def delete(key_id: str, db_path: str) -> None:
    """Delete a key; requests using it fail from the very next one."""
    with open_meter(db_path) as meter:
        if not meter.delete_key(key_id):
            raise click.BadParameter(f"no API key with id {key_id!r}", param_hint="KEY_ID")
    click.echo(f"deleted {key_id}")
