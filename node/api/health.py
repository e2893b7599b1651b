"""`GET /health`: 200 once every model is loaded, 503 before (no auth, like llama-server).

In fleet mode the body also says whether the fleet PostgreSQL answers; the status code does
not depend on it: a node whose fleet database is down serves and meters locally.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from node.api.routing import service_of


async def health(request: Request) -> Response:
    service = service_of(request)
    fleet = _fleet(request)
    if service.ready:
        return JSONResponse({"status": "ok", **fleet})
    if service.load_error is not None:
        body = {"status": "error", "error": service.load_error, **fleet}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "loading", **fleet}, status_code=503)


def _fleet(request: Request) -> dict[str, Any]:
    source = getattr(request.app.state, "fleet", None)
    if source is None:
        return {}
    status = source()
    # No error text: /health is public, the reason (host, port) goes to the log instead.
    return {"fleet_db": "up" if status.up else "down", "fleet_export_lag_rows": status.lag_rows}
