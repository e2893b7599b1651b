"""`llm-node api-keys`: create (secret shown once), list, delete."""

from __future__ import annotations

import click

from node.commands.meter_access import Days, open_meter
from node.commands.options import db_option, echo_json, echo_table, json_option
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
@db_option
@json_option
def create(
    level: str,
    comment: str | None,
    org: str | None,
    expires_in: float | None,
    db_path: str,
    as_json: bool,
) -> None:
    """Create a key and print its secret: the only time it is ever shown."""
    with open_meter(db_path) as meter:
        key, secret = meter.create_key(
            level.upper(), comment=comment, org=org, expires_in_days=expires_in
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


@api_keys.command("list")
@db_option
@json_option
def list_keys(db_path: str, as_json: bool) -> None:
    """Every key: id, level, comment, org, created, expires, last used (never a secret)."""
    with open_meter(db_path) as meter:
        keys = meter.list_keys()
    rows = [key.to_json() for key in keys]
    if as_json:
        echo_json(rows)
        return
    echo_table(
        ["id", "level", "comment", "org", "created", "expires", "last used"],
        [
            [
                r["id"],
                r["level"],
                r["comment"],
                r["org"],
                r["created"],
                r["expires"],
                r["last_used"],
            ]
            for r in rows
        ],
    )


@api_keys.command()
@click.argument("key_id")
@db_option
def delete(key_id: str, db_path: str) -> None:
    """Delete a key; requests using it fail from the very next one."""
    with open_meter(db_path) as meter:
        if not meter.delete_key(key_id):
            raise click.BadParameter(f"no API key with id {key_id!r}", param_hint="KEY_ID")
    click.echo(f"deleted {key_id}")
