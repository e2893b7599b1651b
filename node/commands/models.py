"""`llm-node models` (placeholder until the HTTP issue lands)."""

import click


@click.group()
def models() -> None:
    """The model registry."""
