"""The OpenAI error shape, and the mapping from every exception to it.

Every response the node sends on failure is `{"error": {"message", "type", "param", "code"}}`,
also for unknown routes, wrong methods and real bugs (500, logged with its traceback). Errors of
every layer derive from `node.errors.NodeError`, which carries its own status, type and code.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from node.api.envelopes import envelope
from node.engine.interface import ContextOverflow
from node.errors import NodeError

log = logging.getLogger("node.api")

# pydantic names union members in error locations ("str", "list[TextPart]"); they are no params.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal"}


class ApiError(NodeError):
    """An error the HTTP layer words itself, answered as it is."""

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
        self._headers = headers or {}
        self._extra = extra or {}

    def headers(self) -> dict[str, str]:
        return self._headers

    def extra(self) -> dict[str, Any]:
        return self._extra

    def body(self, path: str = "") -> dict[str, Any]:
        """The error as the dialect of `path` shapes it (`node.api.envelopes`)."""
        return envelope(path, self.status, self.client_message(), body_of(self))

    def response(self, path: str = "") -> JSONResponse:
        return JSONResponse(self.body(path), status_code=self.status, headers=self.headers())


def body_of(exc: NodeError) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": exc.client_message(),
        "type": exc.type,
        "param": exc.param,
        "code": exc.code,
    }
    error.update(exc.extra())
    return {"error": error}


def from_node_error(exc: NodeError) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    return ApiError(
        exc.status,
        exc.client_message(),
        type=exc.type,
        param=exc.param,
        code=exc.code,
        headers=exc.headers(),
        extra=exc.extra(),
    )


def invalid(message: str, param: str | None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def context_overflow(exc: ContextOverflow, param: str | None) -> ApiError:
    error = from_node_error(exc)
    error.param = exc.param or param
    return error


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


# Request models by class name, registered by each dialect (`register_request_models`), so a
# validation error can tell an unimplemented field from a bad value.
REQUEST_MODELS: dict[str, type[BaseModel]] = {}


def register_request_models(*models: type[BaseModel]) -> None:
    REQUEST_MODELS.update({m.__name__: m for m in models})


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


def to_api_error(exc: Exception) -> ApiError:
    """Any exception as the error the client sees; unknown ones are bugs, logged as such."""
    if isinstance(exc, NodeError):
        return from_node_error(exc)
    if isinstance(exc, ValidationError):
        return from_validation(exc)
    log.error("unhandled error", exc_info=exc)
    return ApiError(
        500, "The server had an error while processing your request.", type="server_error"
    )


async def handle_api_error(request: Request, exc: Exception) -> Response:
    return to_api_error(exc).response(request.url.path)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's 404/405 for unknown routes and methods, in the OpenAI shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ApiError(404, "Unknown request URL. Please check the URL.", code="unknown_url")
    elif exc.status_code == 405:
        error = ApiError(405, "Method not allowed for this URL.", code="method_not_allowed")
    else:
        error = ApiError(exc.status_code, str(exc.detail))
    headers = dict(exc.headers or {})
    headers.update(error.headers())
    return JSONResponse(error.body(request.url.path), status_code=error.status, headers=headers)
