"""`llm-node models list`: the registry the node would serve."""

from __future__ import annotations

import click

from node.commands.options import db_option, echo_json, echo_table, json_option, models_option
from node.config import RegistryError, resolve_models


@click.group()
def models() -> None:
    """The model registry."""


@models.command("list")
@models_option
@db_option
@json_option
def list_models(models_path: str | None, db_path: str, as_json: bool) -> None:
    """Print the models of the registry (`--db` is accepted for uniformity; unused)."""
    del db_path
    try:
        specs = resolve_models(models_path)
    except RegistryError as exc:
        raise click.UsageError(str(exc)) from None
    rows = [
        {
            "id": spec.id,
            "path": str(spec.path),
            "n_ctx": spec.n_ctx,
            "parallel": spec.parallel,
            "embeddings": spec.embeddings,
            "alias": list(spec.alias),
        }
        for spec in specs
    ]
    if as_json:
        echo_json(rows)
        return
    echo_table(
        ["id", "n_ctx", "parallel", "embeddings", "alias", "path"],
        [
            [r["id"], r["n_ctx"], r["parallel"], "yes" if r["embeddings"] else "no",
             ",".join(r["alias"]), r["path"]]
            for r in rows
        ],
    )  # fmt: skip
