"""uvicorn's httptools protocol with the limits it lacks, and OpenAI-shaped errors for what it
rejects before the app sees a request.

uvicorn bounds neither the time a client takes to send its request head nor the head's size or
header count, and it answers unparsable requests (and its own concurrency limit) in plain text.
This subclass adds a head deadline (from the connection's start, or from the first bytes of a
keep-alive request that did not arrive whole), a body deadline (from the end of the head), limits
on the head's bytes and header count and on open connections, and answers each with
`{"error": {...}}` and `connection: close`. The deadlines are totals, not idle times: a client
sending one byte a second is cut off like a silent one. A client that stops reading its response
is dropped once our writes have waited on it for the write timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from node.api.errors import ApiError
from node.api.limits import HttpLimits

log = logging.getLogger("node.api")


_BODY_HEADERS = (b"content-length", b"transfer-encoding")
# After an error answer, how long the client may go on sending (discarded) before we close.
LINGER_SECONDS = 2.0


class _Rejected(Exception):
    """Raised in a parser callback: httptools stops parsing, uvicorn calls send_400_response."""


def error_bytes(error: ApiError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP/1.1 response carrying the error, after which the connection closes."""
    body = json.dumps(error.body()).encode()
    head = [STATUS_LINE[error.status]]
    headers = [
        *default_headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((k.lower().encode(), v.encode()) for k, v in error.headers.items()),
    ]
    head += [name + b": " + value + b"\r\n" for name, value in headers]
    return b"".join([*head, b"\r\n", body])


def overloaded() -> ApiError:
    return ApiError(
        503,
        "The server has too many open connections; retry shortly.",
        type="server_error",
        code="too_many_connections",
        headers={"retry-after": "1"},
    )


async def _overloaded_app(_scope: Any, _receive: Any, send: Any) -> None:
    error = overloaded()
    body = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the body is left unread
        *((k.encode(), v.encode()) for k, v in error.headers.items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LimitedHttpProtocol(HttpToolsProtocol):
    """One connection. `limits` is set on the subclass `protocol_class` makes."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # uvicorn's own check answers plain text; ours is below
        self._node_app = self.app
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_pending = False  # headers in, body not complete
        self._reading_head = True  # the next bytes belong to a request head
        self._head_bytes = 0  # raw bytes of the head so far (httptools buffers a header whole)
        self._headers_seen = 0
        self._header_bytes = 0  # exact: request target plus header names and values
        self._rejection: ApiError | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._cycles: list[RequestResponseCycle] = []  # the running one and pipelined ones

    # -- connection -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a byte is dropped too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._disconnect_cycles()  # the parent tells only the newest, not a running older one
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._linger_timer is not None:
            return  # answered and closing: the rest is not parsed
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing() or self._linger_timer is not None:
            return  # refused just now
        if not self._reading_head:
            if self._body_pending and self._body_timer is None:  # not in the head's bytes
                self._body_timer = self.loop.call_later(
                    self.limits.body_timeout, self._body_timed_out
                )
            return
        if self._head_bytes > self.limits.max_header_bytes:
            self._reject(self._head_too_large())
        elif self._idle_between_responses():
            self._arm_head_timer()  # part of a head arrived; the rest must follow in time

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(
                self.limits.write_timeout, self._write_timed_out
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def send_400_response(self, msg: str) -> None:
        """Every parse failure (and our own callback rejections) ends here."""
        error = self._rejection or ApiError(400, msg, code="invalid_http_request")
        self._rejection = None
        self._reject(error)

    # -- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_seen = 0
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._header_bytes += len(url)
        if self._header_bytes > self.limits.max_header_bytes:
            self._raise(
                ApiError(
                    414,
                    f"The request line exceeds the limit of {self._limit_kib()}.",
                    code="uri_too_long",
                )
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers_seen += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._headers_seen > self.limits.max_headers:
            message = f"The request has more than {self.limits.max_headers} headers."
            self._raise(ApiError(431, message, code="too_many_headers"))
        if self._header_bytes > self.limits.max_header_bytes:
            self._raise(self._head_too_large())
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        if len(self.connections) <= self.limits.max_connections:
            super().on_headers_complete()
        else:
            log.warning("too many connections (%d): answered 503", len(self.connections))
            self.app = _overloaded_app  # read by the parent for this one request
            try:
                super().on_headers_complete()
            finally:
                self.app = self._node_app
        self._cycles = [c for c in self._cycles if not c.response_complete]
        self._cycles.append(self.cycle)
        # Only now: had the parent refused the head, the error would answer at a boundary.
        self._reading_head = False
        self._body_pending = any(name in _BODY_HEADERS for name, _ in self.headers)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._body_pending = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._reading_head = True
        self._head_bytes = 0

    # -- helpers --------------------------------------------------------------------------

    def _idle_between_responses(self) -> bool:
        """No response in progress: a head timeout must not cut a streaming answer."""
        return self.cycle is None or self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self.limits.header_timeout, self._head_timed_out
            )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        for timer in (self._body_timer, self._linger_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._body_timer = self._write_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._reading_head:
            return
        if not self._idle_between_responses():
            return  # pipelined bytes during a response: the keep-alive timer takes over after
        if self._head_bytes == 0:
            self.transport.close()  # nothing was asked: nothing to answer
            return
        log.info("request headers not complete after %gs: dropped", self.limits.header_timeout)
        seconds = f"{self.limits.header_timeout:g}"
        message = f"The request headers did not arrive within {seconds} s."
        self._reject(ApiError(408, message, code="request_timeout"))

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if any(cycle is self.cycle for cycle, _ in self.pipeline):  # waiting for its turn
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)
            return
        log.info("request body not complete after %gs: dropped", self.limits.body_timeout)
        seconds = f"{self.limits.body_timeout:g}"
        message = f"The request body did not arrive within {seconds} s."
        self._reject(ApiError(408, message, code="request_timeout"))

    def _write_timed_out(self) -> None:
        self._write_timer = None
        log.info("client read nothing for %gs: dropped", self.limits.write_timeout)
        sock = self.transport.get_extra_info("socket")
        with contextlib.suppress(AttributeError, OSError):  # reset: the kernel's copy goes too
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._disconnect_cycles()  # before anything writes again to the closed transport
        self.flow.resume_writing()  # wake writers waiting to drain: they see the disconnect
        self.transport.abort()  # close() would wait for the buffer to drain: it never will

    def _disconnect_cycles(self) -> None:
        for cycle in self._cycles:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.message_event.set()
        self._cycles = []

    def _head_too_large(self) -> ApiError:
        message = f"The request line and headers exceed the limit of {self._limit_kib()}."
        return ApiError(431, message, code="request_header_fields_too_large")

    def _limit_kib(self) -> str:
        return f"{self.limits.max_header_bytes / 1024:g} KiB"

    def _raise(self, error: ApiError) -> None:
        self._rejection = error
        raise _Rejected(error.message)

    def _reject(self, error: ApiError) -> None:
        """Answer `error` (unless this request was answered already) and close."""
        if self.transport.is_closing() or self._linger_timer is not None:
            return
        self._cancel_timers()
        if not self._can_answer():
            self.transport.close()
            return
        self.transport.write(error_bytes(error, self.server_state.default_headers))
        # Closing a socket with unread bytes resets it, and a client still sending would lose
        # the answer: send FIN, discard what still comes, close at its EOF or after a moment.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        # abort, not close: a client that does not read either would hold close() forever.
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.abort)

    def _can_answer(self) -> bool:
        """Whether a response now would be the answer to the request being read."""
        if self.cycle is None:
            return True
        if self._reading_head:  # a new request: only at a boundary between responses
            return self.cycle.response_complete
        return not self.cycle.response_started  # an early answer (413) was that request's


def protocol_class(limits: HttpLimits) -> type[LimitedHttpProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to `limits`."""
    return type("NodeHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})
