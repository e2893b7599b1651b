"""`llm-node prices`: set (from now on) and list per-token prices per model and GPU type."""

from __future__ import annotations

import click

from node.commands.fleet_access import open_fleet
from node.commands.meter_access import open_meter
from node.commands.options import db_option, echo_json, echo_table, fleet_db_option, json_option
from node.meter import MoneyError
from node.meter.money import Rates, exact_text, parse_currency, parse_price
from node.meter.prices import PriceMicro, to_price
from node.meter.times import now_us


@click.group()
def prices() -> None:
    """Set and list per-token prices per model and GPU type."""


@prices.command("set")
@click.argument("model")
@click.argument("gpu_type")
@click.option("--prompt", required=True, help="Price per 1M prompt tokens (up to 6 decimals).")
@click.option(
    "--completion", required=True, help="Price per 1M completion tokens (up to 6 decimals)."
)
@click.option(
    "--cached",
    default=None,
    help="Price per 1M prompt tokens restored from the prompt cache (default: the prompt price).",
)
@click.option("--currency", default="PLN", show_default=True, help="ISO 4217 code.")
@db_option
@fleet_db_option
@json_option
def set_price(
    model: str,
    gpu_type: str,
    prompt: str,
    completion: str,
    cached: str | None,
    currency: str,
    db_path: str,
    fleet_db: str | None,
    as_json: bool,
) -> None:
    """Price MODEL on GPU_TYPE for requests admitted from now on (past ones keep theirs);
    with --fleet-db on every node of the fleet."""
    # Validate everything before the database is touched: bad input writes nothing.
    for name, value in (("MODEL", model), ("GPU_TYPE", gpu_type)):
        if not value.strip() or value != value.strip():
            raise click.BadParameter(
                f"{value!r} is empty or has surrounding spaces", param_hint=name
            )
    for hint, value in (("--prompt", prompt), ("--completion", completion), ("--cached", cached)):
        if value is None:
            continue
        try:
            parse_price(value, what="price")
        except MoneyError as exc:
            raise click.BadParameter(str(exc), param_hint=hint) from None
    try:
        code = parse_currency(currency)
    except MoneyError as exc:
        raise click.BadParameter(str(exc), param_hint="--currency") from None
    if fleet_db is not None:
        from node.fleet import config

        rates = Rates(
            parse_price(prompt),
            parse_price(completion),
            None if cached is None else parse_price(cached),
        )
        micro = PriceMicro(rates, code)
        with open_fleet(fleet_db, autocommit=True) as conn:
            config.set_price(conn, model, gpu_type, micro, now_us=now_us())
        price = to_price(model, gpu_type, micro)
    else:
        with open_meter(db_path) as meter:
            price = meter.set_price(model, gpu_type, prompt, completion, code, cached)
    if as_json:
        echo_json(price.to_json())
        return
    cached_text = (
        ""
        if price.cached_per_1m is None
        else f" ({exact_text(price.cached_per_1m)} {price.currency} if cached)"
    )
    click.echo(
        f"{price.model} on {price.gpu_type}: {exact_text(price.prompt_per_1m)} {price.currency}"
        f" per 1M prompt tokens{cached_text}, {exact_text(price.completion_per_1m)}"
        f" {price.currency} per 1M completion tokens, for requests from now on"
    )


@prices.command("list")
@click.option("--history", is_flag=True, help="Include past prices with their validity.")
@db_option
@fleet_db_option
@json_option
def list_prices(history: bool, db_path: str, fleet_db: str | None, as_json: bool) -> None:
    """Prices in force (per 1M tokens); with --history also the past ones."""
    if fleet_db is not None:
        from node.fleet import config

        with open_fleet(fleet_db) as conn:
            periods = config.list_prices(conn, history=history)
    else:
        with open_meter(db_path) as meter:
            periods = meter.list_prices(history=history)
    rows = [period.to_json() for period in periods]
    if as_json:
        echo_json(rows)
        return
    headers = [
        "model",
        "gpu type",
        "prompt / 1M",
        "cached / 1M",
        "completion / 1M",
        "currency",
        "since",
    ]
    if history:
        headers.append("until")
    echo_table(
        headers,
        [
            [
                r["model"],
                r["gpu_type"],
                r["prompt_per_1m"],
                r["cached_per_1m"] or "-",
                r["completion_per_1m"],
                r["currency"],
                r["valid_from"],
            ]
            + ([r["valid_until"]] if history else [])
            for r in rows
        ],
    )
