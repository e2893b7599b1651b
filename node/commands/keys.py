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
from node.commands.fleet_access import open_fleet
from node.commands.meter_access import Days, open_meter
from node.commands.options import db_option, echo_json, echo_table, fleet_db_option, json_option
from node.meter import Budget, Limits
from node.meter.keys import LEVELS
from node.meter.times import now_us


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
@fleet_db_option
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
    fleet_db: str | None,
    as_json: bool,
) -> None:
    """Create a key and print its secret: the only time it is ever shown. With --fleet-db the
    key is the fleet's: every node accepts it within about a second."""
    parsed = parse_budget_options(budget, budget_period)
    assert parsed != CLEAR  # not clearable on create
    fields: dict[str, Any] = {
        "comment": comment,
        "org": org,
        "expires_in_days": expires_in,
        "limits": Limits(rpm, tpm, max_parallel),
        "budget": parsed if isinstance(parsed, Budget) else None,
    }
    if fleet_db is not None:
        from node.fleet import config

        with open_fleet(fleet_db, autocommit=True) as conn:
            key, secret = config.create_key(conn, level=level.upper(), now_us=now_us(), **fields)
    else:
        with open_meter(db_path) as meter:
            key, secret = meter.create_key(level.upper(), **fields)
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
@fleet_db_option
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
    fleet_db: str | None,
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
    if fleet_db is not None:
        from node.fleet import config

        with open_fleet(fleet_db, autocommit=True) as conn:
            key = config.update_key(conn, key_id, changes, now_us=now_us())
            if key is None:
                raise click.BadParameter(f"no API key with id {key_id!r}", param_hint="KEY_ID")
            data = config.key_json(conn, key, now_us())
        _show([data], as_json)
        return
    with open_meter(db_path) as meter:
        key = meter.update_key(key_id, changes)
        if key is None:
            raise click.BadParameter(f"no API key with id {key_id!r}", param_hint="KEY_ID")
        data = meter.key_json(key)
    _show([data], as_json)


def _show(rows: list[dict[str, Any]], as_json: bool, *, single: bool = True) -> None:
    if as_json:
        echo_json(rows[0] if single else rows)
        return
    _print_keys(rows)


@api_keys.command("list")
@db_option
@fleet_db_option
@json_option
def list_keys(db_path: str, fleet_db: str | None, as_json: bool) -> None:
    """Every key: id, level, comment, org, created, expires, last used, limits, budget (spent
    in the current period and remaining); never a secret. With --fleet-db the fleet's keys
    (last use is per node, so not shown)."""
    if fleet_db is not None:
        from node.fleet import config

        with open_fleet(fleet_db) as conn:
            now = now_us()
            rows = [config.key_json(conn, key, now) for key in config.list_keys(conn)]
    else:
        with open_meter(db_path) as meter:
            rows = [meter.key_json(key) for key in meter.list_keys()]
    _show(rows, as_json, single=False)


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
@fleet_db_option
def delete(key_id: str, db_path: str, fleet_db: str | None) -> None:
    """Delete a key; requests using it fail from the very next one (with --fleet-db: on
    every node within about a second, or the nodes' poll period)."""
    if fleet_db is not None:
        from node.fleet import config

        with open_fleet(fleet_db, autocommit=True) as conn:
            deleted = config.delete_key(conn, key_id)
    else:
        with open_meter(db_path) as meter:
            deleted = meter.delete_key(key_id)
    if not deleted:
        raise click.BadParameter(f"no API key with id {key_id!r}", param_hint="KEY_ID")
    click.echo(f"deleted {key_id}")
