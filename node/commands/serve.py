"""`llm-node serve`: the OpenAI-compatible HTTP API under uvicorn."""

from __future__ import annotations

import logging

import click

from node.api.limits import HttpLimits
from node.commands.fleet_access import join_fleet
from node.commands.options import db_option, fleet_db_option, models_option
from node.config import ModelSpec, RegistryError, resolve_models

MIB = 1024 * 1024
KIB = 1024
_DEFAULT = HttpLimits()
_SECONDS = click.FloatRange(min=0, min_open=True, max=3600)


def with_engine_options(specs: list[ModelSpec], **options: object) -> list[ModelSpec]:
    """The specs with the engine options given on the command line (None: not given)."""
    given = {name: value for name, value in options.items() if value is not None}
    if not given:
        return specs
    return [s if s.embeddings else ModelSpec(**{**s.model_dump(), **given}) for s in specs]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port."
)
@models_option
@db_option
@click.option(
    "--gpu-type",
    envvar="LLM_NODE_GPU_TYPE",
    help="GPU type for prices and meter rows (default: detected through NVML, cpu without).",
)
@click.option(
    "--max-body-mb",
    default=16.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True, max=1024),
    help="Largest request body in MiB; larger ones get 413.",
)
@click.option(
    "--header-timeout",
    default=_DEFAULT.header_timeout,
    show_default=True,
    type=_SECONDS,
    help="Seconds a client has for the request line and headers; then 408 and close.",
)
@click.option(
    "--body-timeout",
    default=_DEFAULT.body_timeout,
    show_default=True,
    type=_SECONDS,
    help="Seconds a client has for the whole body once its headers are in; then 408 and close.",
)
@click.option(
    "--write-timeout",
    default=_DEFAULT.write_timeout,
    show_default=True,
    type=_SECONDS,
    help="Seconds the response may wait on a client that reads nothing; then the connection drops.",
)
@click.option(
    "--max-header-kb",
    default=_DEFAULT.max_header_bytes // KIB,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Largest request line plus headers in KiB; larger ones get 431 (414 for the line).",
)
@click.option(
    "--max-headers",
    default=_DEFAULT.max_headers,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Most header fields in one request; more get 431.",
)
@click.option(
    "--max-connections",
    default=_DEFAULT.max_connections,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Most open client connections; a request on one more gets 503.",
)
@click.option(
    "--batching",
    type=click.Choice(["mixed", "exact"]),
    help="mixed (default): prompt chunks share each decode with the running streams; exact: "
    "batched output bit-identical to each request alone, prompts stall streams. "
    "Overrides the registry's `batching` for every generation model.",
)
@click.option(
    "--prefill-chunk",
    type=click.IntRange(1, 65536),
    help="Most prompt tokens per mixed decode step (default 512, or the registry's).",
)
@click.option(
    "--prompt-cache-mib",
    type=click.IntRange(0, 1_048_576),
    help="Host memory in MiB per generation model for the KV of prompts that left their slot "
    "(default 1024, or the registry's; 0: off).",
)
@click.option(
    "--kv-unified/--no-kv-unified",
    default=None,
    help="One KV pool for all slots, so a request may use up to n_ctx while others leave room "
    "(default off, or the registry's `kv_unified`: each slot owns n_ctx / parallel).",
)
@fleet_db_option
@click.option(
    "--node-id",
    envvar="LLM_NODE_NODE_ID",
    help="This node's id in the fleet (default: generated once, kept in the meter).",
)
@click.option(
    "--fleet-poll",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.1, max=3600),
    help="Fleet mode: seconds between polls for key, org and price changes (NOTIFY is faster).",
)
@click.option(
    "--fleet-max-staleness",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=1, max=10**7),
    help="Fleet mode: seconds known keys keep working without reaching the fleet database.",
)
@click.option(
    "--fleet-budget-offline",
    default="refuse",
    show_default=True,
    metavar="refuse|share:F",
    help="Fleet mode: budgeted requests while the fleet database is unreachable: refuse them,"
    " or admit up to F (0-1] of what each budget had left when last asked.",
)
def serve(
    host: str,
    port: int,
    models_path: str | None,
    db_path: str,
    gpu_type: str | None,
    max_body_mb: float,
    header_timeout: float,
    body_timeout: float,
    write_timeout: float,
    max_header_kb: int,
    max_headers: int,
    max_connections: int,
    batching: str | None,
    prefill_chunk: int | None,
    prompt_cache_mib: int | None,
    kv_unified: bool | None,
    fleet_db: str | None,
    node_id: str | None,
    fleet_poll: float,
    fleet_max_staleness: float,
    fleet_budget_offline: str,
) -> None:
    """Serve the models over the OpenAI-compatible HTTP API."""
    try:
        specs = resolve_models(models_path)
    except RegistryError as exc:
        raise click.UsageError(str(exc)) from None
    specs = with_engine_options(
        specs,
        batching=batching,
        prefill_chunk=prefill_chunk,
        prompt_cache_mib=prompt_cache_mib,
        kv_unified=kv_unified,
    )
    if gpu_type is not None and not gpu_type.strip():
        raise click.BadParameter("must not be empty", param_hint="--gpu-type")

    limits = HttpLimits(
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        write_timeout=write_timeout,
        max_header_bytes=max_header_kb * KIB,
        max_headers=max_headers,
        max_connections=max_connections,
    )

    # Heavy imports only once the arguments are known good.
    from node.api.app import create_app
    from node.api.metrics import NodeMetrics
    from node.api.server import build_server
    from node.engine.pool import ModelPool
    from node.gpu import detect_gpu
    from node.meter import Meter, MeterUnavailable
    from node.service import NodeService

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    gpu = detect_gpu(gpu_type)
    logging.getLogger("node").info("GPU: %s (type %s)", gpu.name, gpu.type)
    try:
        meter = Meter(db_path)
    except MeterUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    fleet = None
    try:
        fleet = join_fleet(
            meter,
            fleet_db,
            node_id,
            poll_s=fleet_poll,
            max_staleness_s=fleet_max_staleness,
            budget_offline=fleet_budget_offline,
        )
        metrics = NodeMetrics()
        service = NodeService(specs, ModelPool(), meter, gpu, metrics)
        if fleet is not None:
            service.keys_fresh = fleet.replica.check_fresh
            service.gate.fleet = fleet.budgets
        app = create_app(
            service,
            metrics,
            max_body_bytes=int(max_body_mb * MIB),
            fleet=None if fleet is None else fleet.exporter.status,
            config=None if fleet is None else fleet.config,
        )
        server = build_server(app, host=host, port=port, limits=limits)
        server.run()
    finally:
        if fleet is not None:
            fleet.stop()
        meter.close()
    if not server.started:  # uvicorn logged why (e.g. the port is taken)
        raise SystemExit(3)
