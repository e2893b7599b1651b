"""Which error envelope a route answers in: Anthropic's for `/v1/messages*`, OpenAI's for every
other route. Every error path (handlers, auth, body limits, in-band stream errors) asks here, so
an Anthropic client reads a 401, 413 or 429 in the shape its SDK expects."""

from __future__ import annotations

from typing import Any

ANTHROPIC_PREFIX = "/v1/messages"

# Anthropic's error types by HTTP status (its 529 "overloaded" is our 503: not ready).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def anthropic_type(status: int) -> str:
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def is_anthropic(path: str) -> bool:
    return path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/")


def anthropic_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": anthropic_type(status), "message": message}}


def envelope(path: str, status: int, message: str, openai_body: dict[str, Any]) -> dict[str, Any]:
    """The body to send for an error on `path`; `openai_body` is the OpenAI-shaped one."""
    return anthropic_body(status, message) if is_anthropic(path) else openai_body
