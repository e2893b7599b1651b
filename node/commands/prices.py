"""`llm-node prices` (placeholder until the meter issue lands)."""

import click


@click.group()
def prices() -> None:
    """Set and list per-token prices per model and GPU type."""
