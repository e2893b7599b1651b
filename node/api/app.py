"""The app factory: routes, error handlers, lifespan (meter recovery, background model load)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp

from node.api import admin, health, metrics, openapi, tokenize
from node.api.anthropic import ROUTES as ANTHROPIC_ROUTES
from node.api.auth import AuthMiddleware
from node.api.context import RequestContext
from node.api.engine_metrics import watch_prompt_caches
from node.api.errors import handle_api_error, handle_http_exception
from node.api.metrics import NodeMetrics
from node.api.openai import ROUTES as OPENAI_ROUTES
from node.api.quota import handle_quota_error
from node.api.responses import ROUTES as RESPONSES_ROUTES
from node.errors import NodeError
from node.fleet.status import ExportStatus
from node.service import BudgetExceeded, NodeService, RateLimited

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024

ROUTES = [
    *OPENAI_ROUTES,
    *RESPONSES_ROUTES,
    *ANTHROPIC_ROUTES,
    Route("/tokenize", tokenize.tokenize, methods=["POST"]),
    Route("/detokenize", tokenize.detokenize, methods=["POST"]),
    Route("/health", health.health, methods=["GET"]),
    Route("/metrics", metrics.metrics, methods=["GET"]),
    Route("/openapi.json", openapi.openapi, methods=["GET"]),
    *admin.ROUTES,
]

# Errors every layer raises for the client (`NodeError`, carrying its own status) and request
# bodies pydantic refuses are answered by Starlette's exception middleware; everything else is a
# bug (`Exception` → Starlette's server-error middleware: logged, OpenAI-shaped 500).
_CLIENT_ERRORS = (NodeError, ValidationError)


def create_app(
    service: NodeService,
    node_metrics: NodeMetrics,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    fleet: Callable[[], ExportStatus] | None = None,
    config: Any = None,
) -> ASGIApp:
    """`service.observer` should be `node_metrics` so `/metrics` sees every request.
    `fleet`: in fleet mode, the exporter's status for /metrics and /health. `config`: in
    fleet mode, where the admin API's key, org and price changes go (`FleetConfig`)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.close()

    handlers = {exc: handle_api_error for exc in _CLIENT_ERRORS}
    app = Starlette(
        routes=ROUTES,
        exception_handlers={
            **handlers,
            RateLimited: handle_quota_error,
            BudgetExceeded: handle_quota_error,
            HTTPException: handle_http_exception,
            Exception: handle_api_error,
        },
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics = node_metrics
    node_metrics.count_decodes(service.decode_calls)
    node_metrics.watch_engines(service.engine_stats)
    watch_prompt_caches(node_metrics.registry, service.pool.prompt_cache_stats)
    app.state.fleet = fleet
    app.state.config = config
    if fleet is not None:
        node_metrics.watch_export(fleet)
    auth = AuthMiddleware(app, service, ROUTES)
    return RequestContext(auth, max_body_bytes=max_body_bytes)
