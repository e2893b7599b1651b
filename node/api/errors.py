"""The OpenAI error shape, and the mapping from every exception to it.

Every response the node sends on failure is `{"error": {"message", "type", "param", "code"}}`,
also for unknown routes, wrong methods and real bugs (500, logged with its traceback).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from node.api.protocol import REQUEST_MODELS
from node.engine.interface import ContextOverflow, EngineBusy
from node.service import (
    AuthenticationFailed,
    MeterUnavailable,
    ModelNotFound,
    NotReady,
    RejectedByModel,
)

log = logging.getLogger("node.api")

# pydantic names union members in error locations ("str", "list[TextPart]"); they are no params.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal"}


class ApiError(Exception):
    """An error answered to the client as it is."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param}
        error["code"] = self.code
        error.update(self.extra)
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def context_overflow(exc: ContextOverflow, param: str | None) -> ApiError:
    return ApiError(
        400,
        str(exc),
        param=param,
        code="context_length_exceeded",
        extra={"n_prompt_tokens": exc.n_prompt_tokens, "n_ctx": exc.n_ctx},
    )


def param_path(loc: tuple[int | str, ...]) -> str | None:
    """`("messages", 0, "content", "list[TextPart]", 0)` → `messages[0].content[0]`."""
    out = ""
    for i, item in enumerate(loc):
        if loc[i + 1 : i + 2] == ("[key]",):
            continue  # a bad dict key: the dict is the param (`logit_bias`), not the key
        if isinstance(item, int):
            out += f"[{item}]"
        elif item.isidentifier() and item not in _TYPE_TAGS:
            out += f".{item}" if out else item
        # anything else names a union member, not a field
    return out or None


def _only_value(model: str, loc: tuple[int | str, ...]) -> str | None:
    """For a field the node does not implement, the one value it accepts (see protocol)."""
    cls = REQUEST_MODELS.get(model)
    if cls is None or not loc or not isinstance(loc[0], str):
        return None
    field = cls.model_fields.get(loc[0])
    extra = field.json_schema_extra if field is not None else None
    return extra.get("x-llm-node-only") if isinstance(extra, dict) else None  # type: ignore[return-value]


def _is_content_part_type(loc: tuple[int | str, ...]) -> bool:
    return len(loc) >= 4 and loc[-1] == "type" and loc[-3] == "<parts>"


def from_validation(exc: ValidationError) -> ApiError:
    """The first problem pydantic found, as a 400 naming the parameter."""
    err = exc.errors(include_url=False)[0]
    kind, loc = err["type"], tuple(err["loc"])
    if kind == "json_invalid":
        return invalid(f"We could not parse the JSON body of your request: {err['msg']}", None)
    if kind == "model_type" and not loc:
        return invalid("The request body must be a JSON object.", None)
    param = param_path(loc)
    if kind == "invalid_role":
        param = f"{param}.role"
    if kind == "missing":
        return invalid(
            f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
        )
    if kind == "extra_forbidden":
        return invalid(
            f"Unrecognized request argument supplied: '{param}'.", param, "unknown_parameter"
        )
    only = _only_value(exc.title, loc)
    if only is not None:
        param = str(loc[0])
        if only == "null":
            message = f"Unsupported parameter: '{param}' is not supported by this node."
            return invalid(message, param, "unsupported_parameter")
        message = f"Unsupported value: '{param}' is not supported by this node; only {only} is."
        return invalid(message, param, "unsupported_value")
    if kind == "literal_error" and _is_content_part_type(loc):
        return invalid(
            f"Unsupported content part type {err['input']!r} in '{param}': only 'text' parts "
            "are supported.",
            param,
            "unsupported_value",
        )
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return invalid(f"Invalid value for '{param}': {msg}.", param, "invalid_value")


def _from_domain(exc: Exception) -> ApiError | None:
    """Errors of the service and engine, in HTTP terms."""
    if isinstance(exc, AuthenticationFailed):
        return ApiError(401, str(exc), type="authentication_error", code="invalid_api_key")
    if isinstance(exc, ModelNotFound):
        return ApiError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, ContextOverflow):
        return context_overflow(exc, None)
    if isinstance(exc, EngineBusy):
        retry = max(1, round(exc.retry_after))
        return ApiError(
            429,
            str(exc),
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(retry)},
        )
    if isinstance(exc, RejectedByModel):
        return ApiError(400, f"The model cannot run this request: {exc}", code="invalid_value")
    if isinstance(exc, NotReady):
        return ApiError(503, str(exc), type="server_error", code="model_loading")
    if isinstance(exc, MeterUnavailable):
        return ApiError(
            503,
            "The usage meter cannot record requests right now.",
            type="server_error",
            code="meter_unavailable",
        )
    return None


def to_api_error(exc: Exception) -> ApiError:
    """Any exception as the error the client sees; unknown ones are bugs, logged as such."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        return from_validation(exc)
    domain = _from_domain(exc)
    if domain is not None:
        return domain
    log.error("unhandled error", exc_info=exc)
    return ApiError(
        500, "The server had an error while processing your request.", type="server_error"
    )


async def handle_api_error(_request: Request, exc: Exception) -> Response:
    return to_api_error(exc).response()


async def handle_http_exception(_request: Request, exc: Exception) -> Response:
    """Starlette's 404/405 for unknown routes and methods, in the OpenAI shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ApiError(404, "Unknown request URL. Please check the URL.", code="unknown_url")
    elif exc.status_code == 405:
        error = ApiError(405, "Method not allowed for this URL.", code="method_not_allowed")
    else:
        error = ApiError(exc.status_code, str(exc.detail))
    headers = dict(exc.headers or {})
    headers.update(error.headers)
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


EXCEPTION_HANDLERS = {
    HTTPException: handle_http_exception,
    Exception: handle_api_error,
}
