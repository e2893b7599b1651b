"""`llm-node api-keys` (placeholder until the meter issue lands)."""

import click


@click.group("api-keys")
def api_keys() -> None:
    """Create, list and delete API keys."""
