"""Options every command shares (SPEC §6), declared once."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DB = "llm-node.db"


def db_option(func: F) -> F:
    """`--db PATH` / env LLM_NODE_DB, default `llm-node.db` in the working directory."""
    return click.option(
        "--db",
        "db_path",
        envvar="LLM_NODE_DB",
        default=DEFAULT_DB,
        show_default=True,
        type=click.Path(dir_okay=False),
        help="SQLite meter database.",
    )(func)


def fleet_db_option(func: F) -> F:
    """`--fleet-db URL` / env LLM_NODE_FLEET_DB: the fleet's PostgreSQL (fleet mode)."""
    return click.option(
        "--fleet-db",
        "fleet_db",
        envvar="LLM_NODE_FLEET_DB",
        metavar="URL",
        callback=_fleet_url,
        help="Fleet PostgreSQL, postgresql://user@host/database (needs llm-node[fleet]).",
    )(func)


def _fleet_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from node.fleet.connect import check_url  # no psycopg import

    try:
        return check_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def models_option(func: F) -> F:
    """`--models FILE` / env LLM_NODE_MODELS: the model registry."""
    return click.option(
        "--models",
        "models_path",
        envvar="LLM_NODE_MODELS",
        type=click.Path(dir_okay=False),
        help="Model registry (default: models/models.toml if present, else the embedded model).",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(
        func
    )


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def echo_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Aligned columns for people; numbers right-aligned."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [
        bool(cells) and all(_looks_numeric(r[i]) for r in cells if r[i])
        for i in range(len(headers))
    ]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    click.echo(line(headers))
    click.echo(line(["-" * w for w in widths]))
    for row in cells:
        click.echo(line(row))


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
