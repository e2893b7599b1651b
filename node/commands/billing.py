"""`llm-node billing` (placeholder until the meter issue lands)."""

import click


@click.group()
def billing() -> None:
    """Usage and cost from the meter."""
