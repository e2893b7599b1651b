"""The outermost ASGI layer: request id, body size limit, last-resort error answer.

It wraps the whole Starlette app (outside Starlette's own error middleware) so that even a 500
for a real bug carries `x-request-id` and the OpenAI error shape. The body's read deadline is
the HTTP protocol's (`node.api.http_protocol`): a timed-out client is a disconnect here.
"""

from __future__ import annotations

import json
import logging
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.api.errors import ApiError

log = logging.getLogger("node.api")


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_of(scope: Scope) -> str:
    return scope["state"]["request_id"]


class _ClientGone(Exception):
    """The client disconnected before its body was complete: there is no request to serve."""


class RequestContext:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})
        scope["state"] = {**scope["state"], "request_id": request_id}
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            body = await self._read_body(scope, receive)
        except _ClientGone:
            return
        except ApiError as error:
            await self._answer(send_with_id, error, scope["path"])
            return

        replayed = False

        async def replay(  # the body once, then the server's messages (disconnect)
        ) -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        try:
            await self.app(scope, replay, send_with_id)
        except Exception as exc:
            # Starlette's error middleware has answered (and logged) it already and re-raises
            # for the server's log; we are the server's log.
            if not started:
                log.error("unhandled error", exc_info=exc)
                error = ApiError(500, "Internal server error.", type="server_error")
                await self._answer(send_with_id, error, scope["path"])

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body, refused as soon as it is known to exceed the limit.

        What a refused client still sends is read and dropped by the server (the answer reaches
        a client that writes its whole body before reading), within the body deadline.
        """
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(
                    400,
                    "Invalid Content-Length header.",
                    code="invalid_header",
                    headers={"connection": "close"},  # where the next request starts is unknown
                )
            if int(length) > self.max_body_bytes:
                raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # a truncated body is no request
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:  # chunked bodies carry no length: count
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self) -> ApiError:
        mib = self.max_body_bytes / (1024 * 1024)
        return ApiError(
            413, f"The request body exceeds the limit of {mib:g} MiB.", code="request_too_large"
        )

    @staticmethod
    async def _answer(send: Send, error: ApiError, path: str) -> None:
        body = json.dumps(error.body(path)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
