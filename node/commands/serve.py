"""`llm-node serve` (placeholder until the HTTP issue lands)."""

import click


@click.command()
def serve() -> None:
    """Serve the models over the OpenAI-compatible HTTP API."""
    raise click.ClickException("serve is not implemented yet")
