"""The uvicorn server the node runs: one construction for `llm-node serve` and the tests."""

from __future__ import annotations

import uvicorn
from starlette.types import ASGIApp

from node.api.http_protocol import protocol_class
from node.api.limits import HttpLimits

__all__ = ["HttpLimits", "build_server"]


def build_server(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    limits: HttpLimits,
    log_level: str = "info",
) -> uvicorn.Server:
    """`app` behind our protocol, which enforces `limits`."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(limits),
        ws="none",  # no WebSocket routes: an upgrade request is a plain HTTP request
        lifespan="on",
        log_level=log_level,
        access_log=False,
    )
    return uvicorn.Server(config)
