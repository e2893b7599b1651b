"""`GET /health`: 200 once every model is loaded, 503 before (no auth, like llama-server)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from node.api.routing import service_of


async def health(request: Request) -> Response:
    service = service_of(request)
    if service.ready:
        return JSONResponse({"status": "ok"})
    if service.load_error is not None:
        return JSONResponse({"status": "error", "error": service.load_error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)
