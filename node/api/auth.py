"""Authentication and levels, once for every route: an ASGI middleware.

The bearer secret is verified on a small thread pool of its own (a SQLite read), never on the
event loop, and on every request (no cache), so a deleted or expired key fails on its very next
request. `LLM` keys may call the model routes; `/admin/*` also needs an `ADMIN` key (403
`permission_error` otherwise). The key lands in `scope["state"]["api_key"]`; a key with rate
limits gets OpenAI's `x-ratelimit-*` headers on every response.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.api.errors import ApiError, to_api_error
from node.meter import ApiKey
from node.service import NodeService

# Routes that need no key. Unknown routes and wrong methods pass through unauthenticated to
# the router's 404 / 405, as before.
PUBLIC_PATHS = frozenset({"/health", "/metrics", "/openapi.json"})
ADMIN_PREFIX = "/admin"
AUTH_THREADS = 4


def key_of(scope: Scope) -> ApiKey | None:
    return scope.get("state", {}).get("api_key")


class AuthMiddleware:
    def __init__(self, app: ASGIApp, service: NodeService, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.service = service
        self.routes = routes
        self._pool = ThreadPoolExecutor(AUTH_THREADS, thread_name_prefix="auth")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or not self._routed(scope):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        authorization = headers.get("authorization")
        if authorization is None and headers.get("x-api-key"):  # Anthropic's header
            authorization = f"Bearer {headers['x-api-key']}"
        loop = asyncio.get_running_loop()
        try:
            key = await loop.run_in_executor(self._pool, self.service.authenticate, authorization)
        except Exception as exc:  # 401; the meter unreadable (file gone): 503
            await _answer(send, to_api_error(exc), {}, scope["path"])
            return
        limited = bool(key.limits)
        if _is_admin(scope["path"]) and key.level != "ADMIN":
            error = ApiError(
                403,
                "This API key may call the model routes only; /admin needs an ADMIN key.",
                type="permission_error",
                code="insufficient_permissions",
            )
            await _answer(
                send, error, self.service.rate_headers(key) if limited else {}, scope["path"]
            )
            return
        scope["state"] = {**scope.get("state", {}), "api_key": key}
        if not limited:
            await self.app(scope, receive, send)
            return

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for name, value in self.service.rate_headers(key).items():
                    if name not in out:  # a 429's own headers describe the refusal
                        out[name] = value
            await send(message)

        await self.app(scope, receive, send_with_limits)

    def _routed(self, scope: Scope) -> bool:
        return any(route.matches(scope)[0] == Match.FULL for route in self.routes)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _is_admin(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


async def _answer(send: Send, error: ApiError, extra: dict[str, str], path: str) -> None:
    body = json.dumps(error.body(path)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in {**error.headers(), **extra}.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
