"""Steps every `/v1/*` route takes first: find the service, authenticate, read the body."""

from __future__ import annotations

from starlette.requests import Request

from node.api.auth import key_of
from node.meter import ApiKey
from node.service import NodeService


def service_of(request: Request) -> NodeService:
    return request.app.state.service


def authenticate(request: Request) -> tuple[NodeService, ApiKey]:
    """The key `node.api.auth.AuthMiddleware` resolved (off the event loop) for this request."""
    service = service_of(request)
    key = key_of(request.scope)
    if key is None:  # an app without the middleware (never in `create_app`)
        key = service.authenticate(request.headers.get("authorization"))
    return service, key


async def read_body(request: Request) -> bytes:
    return await request.body()
