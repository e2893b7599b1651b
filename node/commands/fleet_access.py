"""Shared by the commands that take `--fleet-db`: join the fleet, open it, one-line errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from node.meter import Meter

if TYPE_CHECKING:
    from node.fleet.exporter import Exporter


def join_fleet(meter: Meter, fleet_db: str | None, node_id: str | None) -> Exporter | None:
    """Claim the node's id; with a fleet database, start the exporter. PostgreSQL may be down
    now: the node serves anyway and the exporter catches up when it returns."""
    from node.fleet.connect import FleetUnavailable, psycopg_module

    try:
        node = meter.claim_node_id(node_id)
        if fleet_db is None:
            return None
        psycopg_module()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--node-id") from None
    except FleetUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    from node.fleet.exporter import Exporter

    logging.getLogger("node").info("fleet node %s", node)
    exporter = Exporter(meter, fleet_db, node)
    exporter.start()
    return exporter


@contextmanager
def open_fleet(url: str) -> Iterator[Any]:
    """A connection to the fleet database with its schema migrated; failures are one line."""
    from node.fleet.connect import FleetUnavailable, connect, psycopg_module, shown
    from node.fleet.schema import migrate

    try:
        psycopg = psycopg_module()
    except FleetUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    try:
        conn = connect(url)
    except psycopg.Error as exc:
        message = " ".join(str(exc).split())
        raise click.ClickException(
            f"cannot reach the fleet database {shown(url)}: {message}"
        ) from None
    try:
        migrate(conn)
        yield conn
    except psycopg.Error as exc:
        message = " ".join(str(exc).split())
        raise click.ClickException(f"fleet database {shown(url)}: {message}") from None
    finally:
        conn.close()
