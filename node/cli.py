"""`llm-node`: the command-line entry point. Commands live in `node.commands.*`."""

from __future__ import annotations

import sys

import click

from node import __version__
from node.commands import billing, keys, models, orgs, prices, serve


class _OneLineErrors(click.Group):
    """Bad input prints one line naming what is wrong and exits 2 (SPEC §6)."""

    def main(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Error: aborted", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            click.echo(f"Error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(2 if isinstance(exc, click.UsageError | click.BadParameter) else exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llm-node")
def cli() -> None:
    """Self-hosted LLM serving node with built-in per-token metering."""


cli.add_command(serve.serve)
cli.add_command(keys.api_keys)
cli.add_command(orgs.orgs)
cli.add_command(prices.prices)
cli.add_command(billing.billing)
cli.add_command(models.models)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
