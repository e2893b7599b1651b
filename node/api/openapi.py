"""`GET /openapi.json`: the routes, their request bodies (from the pydantic models) and errors."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import node.api.anthropic
import node.api.tokenize  # noqa: F401 - registers its request models
from node import __version__
from node.api.admin_openapi import admin_paths, admin_schemas
from node.api.anthropic.objects import RESPONSE_MODELS as ANTHROPIC_MODELS
from node.api.errors import REQUEST_MODELS
from node.api.openai.responses import RESPONSE_MODELS
from node.api.responses.objects import RESPONSE_MODELS as RESPONSES_API_MODELS

_REF = "#/components/schemas/{model}"
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
                "n_prompt_tokens": {"type": "integer"},
                "n_ctx": {"type": "integer"},
            },
        }
    },
}


def _closed(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties,
            "additionalProperties": False}  # fmt: skip


_STR, _INT = {"type": "string"}, {"type": "integer"}
_ANTHROPIC_ERROR = _closed(
    ["type", "error"],
    type={"const": "error"},
    error=_closed(["type", "message"], type=_STR, message=_STR),
)
_PIECE = _closed(["id", "piece"], id=_INT, piece={"anyOf": [_STR, {"type": "array"}]})
_TOKENS = _closed(["tokens"], tokens={"type": "array", "items": {"anyOf": [_INT, _PIECE]}})
_CONTENT = _closed(["content"], content=_STR)
_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}
_ERRORS = {
    "400": "Invalid request (names the `param`), or `context_length_exceeded`",
    "401": "Missing, unknown, deleted or expired API key",
    "404": "`model_not_found`",
    "413": "Request body over the limit",
    "429": "The model's queue is full, or a key's rate limit (`rate_limit_exceeded`) or budget"
    " (`insufficient_quota`) is reached; see `Retry-After`",
    "503": "Models loading, or the meter cannot record",
}
_USAGE_NOTE = (
    " Non-streaming responses carry `usage` with `prompt_tokens`, `completion_tokens`, "
    "`total_tokens`, `prompt_tokens_details.cached_tokens`, and `cost` (exact decimal string) and "
    "`currency` when the model has a price on this node's GPU type."
)


def _operation(
    summary: str,
    body: str | None,
    ok: str,
    *,
    auth: bool = True,
    answer: str | None = None,
    stream: bool = False,
    error: str = "Error",
) -> dict[str, Any]:
    """`answer`: the schema of the 200 JSON body; `stream`: it may also be an SSE stream."""
    success: dict[str, Any] = {"description": ok}
    if answer is not None:
        success["content"] = {"application/json": {"schema": {"$ref": _REF.format(model=answer)}}}
    if stream:
        success["content"]["text/event-stream"] = {"schema": _EVENT}  # 3.1: one event
    op: dict[str, Any] = {"summary": summary, "responses": {"200": success}}
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=body)}}},
        }
    if auth:
        op["security"] = [{"bearer": []}, {"apiKey": []}]
        for status, text in _ERRORS.items():
            op["responses"][status] = {
                "description": text,
                "content": {"application/json": {"schema": {"$ref": _REF.format(model=error)}}},
            }
    return op


@cache
def openapi_document() -> dict[str, Any]:
    # Requests and answers from the very models that validate and build them.
    built = [*REQUEST_MODELS.values(), *RESPONSE_MODELS, *RESPONSES_API_MODELS, *ANTHROPIC_MODELS,
             *admin_schemas()]  # fmt: skip
    models = [(m, "validation") for m in built]
    _, defs = models_json_schema(models, ref_template=_REF)
    schemas = {
        **defs.get("$defs", {}),
        "Error": _ERROR,
        "AnthropicError": _ANTHROPIC_ERROR,
        "Tokens": _TOKENS,
        "Content": _CONTENT,
    }
    stream = " With `stream`, Server-Sent Events ending in `data: [DONE]`."
    return {
        "openapi": "3.1.0",
        "info": {"title": "llm-node", "version": __version__},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "paths": {
            "/v1/chat/completions": {
                "post": _operation(
                    "Chat completion",
                    "ChatCompletionRequest",
                    "A `chat.completion` object." + _USAGE_NOTE + stream,
                    answer="ChatCompletion",
                    stream=True,
                )
            },
            "/v1/completions": {
                "post": _operation(
                    "Text completion",
                    "CompletionRequest",
                    "A `text_completion` object." + _USAGE_NOTE + stream,
                    answer="TextCompletion",
                    stream=True,
                )
            },
            "/v1/responses": {
                "post": _operation(
                    "OpenAI Responses API (stateless)",
                    "ResponsesRequest",
                    "A `response` object; `usage` also carries `cost` and `currency` when priced."
                    " With `stream`, named Server-Sent Events (`response.created` ... "
                    "`response.completed`).",
                    answer="ResponseObject",
                    stream=True,
                )
            },
            "/v1/messages": {
                "post": _operation(
                    "Anthropic Messages",
                    "MessagesRequest",
                    "A `message`; errors in Anthropic's envelope. With `stream`, Anthropic's "
                    "named events (`message_start` ... `message_stop`).",
                    answer="AnthropicMessage",
                    stream=True,
                    error="AnthropicError",
                )
            },
            "/v1/messages/count_tokens": {
                "post": _operation(
                    "Anthropic token count (free, unmetered)",
                    "CountTokensRequest",
                    '`{"input_tokens": N}`',
                    answer="TokenCount",
                    error="AnthropicError",
                )
            },
            "/tokenize": {
                "post": _operation(
                    "llama-server's tokenize", "TokenizeRequest", "Token ids", answer="Tokens"
                )
            },
            "/detokenize": {
                "post": _operation(
                    "llama-server's detokenize", "DetokenizeRequest", "Text", answer="Content"
                )
            },
            "/v1/embeddings": {
                "post": _operation(
                    "Embeddings",
                    "EmbeddingRequest",
                    "A list of embeddings.",
                    answer="EmbeddingList",
                )
            },
            "/v1/models": {
                "get": _operation(
                    "List models", None, "A list of model objects.", answer="ModelList"
                )
            },
            "/v1/models/{model_id}": {
                "get": {
                    **_operation("One model", None, "A model object.", answer="ModelCard"),
                    "parameters": [
                        {
                            "name": "model_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                }
            },
            "/health": {
                "get": {
                    **_operation("Readiness", None, '{"status": "ok"}', auth=False),
                    "responses": {
                        "200": {"description": '{"status": "ok"}'},
                        "503": {"description": '{"status": "loading"}'},
                    },
                }
            },
            "/metrics": {"get": _operation("Prometheus metrics", None, "text/plain", auth=False)},
            **admin_paths(),
        },
    }


async def openapi(_request: Request) -> Response:
    return JSONResponse(openapi_document())
