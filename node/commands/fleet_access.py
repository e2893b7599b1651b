"""Shared by the commands that take `--fleet-db`: join the fleet, open it, one-line errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from node.meter import Meter

if TYPE_CHECKING:
    from node.fleet.budgets import FleetBudgets
    from node.fleet.exporter import Exporter
    from node.fleet.replica import Replica
    from node.fleet.store import FleetConfig


@dataclass
class FleetMode:
    """The fleet threads of a serving node: usage export, and the copy of keys and prices."""

    exporter: Exporter
    replica: Replica
    config: FleetConfig
    budgets: FleetBudgets

    def stop(self) -> None:
        self.replica.stop()
        self.config.close()
        self.budgets.close()
        self.exporter.stop()  # after the last request finished: its row goes out too


def join_fleet(
    meter: Meter,
    fleet_db: str | None,
    node_id: str | None,
    *,
    poll_s: float = 5.0,
    max_staleness_s: float = 300.0,
    budget_offline: str = "refuse",
) -> FleetMode | None:
    """Claim the node's id; with a fleet database, start the exporter and the replica.
    PostgreSQL may be down now: the node serves from its copy and catches up when it returns."""
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
    from node.fleet.budgets import FleetBudgets, OfflinePolicy
    from node.fleet.exporter import Exporter
    from node.fleet.replica import Replica
    from node.fleet.store import FleetConfig

    try:
        policy = OfflinePolicy.parse(budget_offline)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fleet-budget-offline") from None
    logging.getLogger("node").info("fleet node %s", node)
    replica = Replica(meter, fleet_db, poll_s=poll_s, max_staleness_s=max_staleness_s)
    try:
        replica.sync()  # before serving: a key revoked while we were down fails from the start
    except Exception as exc:  # unreachable now: serve from the copy, the thread retries
        logging.getLogger("node").warning("fleet config: first sync failed: %s", exc)
    replica.start()
    exporter = Exporter(meter, fleet_db, node)
    exporter.start()
    budgets = FleetBudgets(fleet_db, node, policy)
    return FleetMode(exporter, replica, FleetConfig(meter, fleet_db, replica), budgets)


@contextmanager
def open_fleet(url: str, *, autocommit: bool = False) -> Iterator[Any]:
    """A connection to the fleet database with its schema migrated; failures are one line.
    `autocommit`: for the commands that write (each change its own transaction)."""
    from node.fleet.connect import FleetUnavailable, connect, psycopg_module, shown
    from node.fleet.schema import migrate

    try:
        psycopg = psycopg_module()
    except FleetUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    try:
        conn = connect(url, autocommit=autocommit)
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
