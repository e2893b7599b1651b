"""Steps every `/v1/*` route takes first: find the service, authenticate, read the body."""

from __future__ import annotations

from starlette.requests import Request

from node.meter import ApiKey
from node.service import NodeService


def service_of(request: Request) -> NodeService:
    return request.app.state.service


def authenticate(request: Request) -> tuple[NodeService, ApiKey]:
    """Auth comes before anything else is looked at (SPEC §3)."""
    service = service_of(request)
    return service, service.authenticate(request.headers.get("authorization"))


async def read_body(request: Request) -> bytes:
    return await request.body()
