"""JSON schemas of what the node answers, for `/openapi.json` (a fuzzer checks answers against
them). They describe the dicts `chat`, `completions`, `embeddings` and `models` build."""

from __future__ import annotations

from typing import Any

_INT = {"type": "integer", "minimum": 0}
_STR = {"type": "string"}
_DECIMAL = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


_COST = {"cost": _DECIMAL, "currency": _STR}
USAGE = _object(
    {
        "prompt_tokens": _INT,
        "completion_tokens": _INT,
        "total_tokens": _INT,
        "prompt_tokens_details": _object({"cached_tokens": _INT}),
    },
    _COST,
)
_FINISH = {"enum": ["stop", "length"]}
_CHAT_CHOICE = _object(
    {
        "index": {"const": 0},
        "message": _object(
            {"role": {"const": "assistant"}, "content": _STR, "refusal": {"type": "null"}}
        ),
        "logprobs": {"type": "null"},
        "finish_reason": _FINISH,
    }
)
_TEXT_CHOICE = _object(
    {"index": {"const": 0}, "text": _STR, "logprobs": {"type": "null"}, "finish_reason": _FINISH}
)


def _completion(kind: str, choice: dict[str, Any]) -> dict[str, Any]:
    return _object(
        {
            "id": _STR,
            "object": {"const": kind},
            "created": _INT,
            "model": _STR,
            "system_fingerprint": {"type": "null"},
            "choices": {"type": "array", "minItems": 1, "maxItems": 1, "items": choice},
            "usage": USAGE,
        }
    )


_EMBEDDING = _object(
    {
        "object": {"const": "embedding"},
        "index": _INT,
        "embedding": {
            "oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]
        },
    }
)
_PRICE = _object(
    {"prompt_per_1m": _DECIMAL, "completion_per_1m": _DECIMAL, "currency": _STR},
    {"cached_per_1m": _DECIMAL},
)
MODEL = _object(
    {
        "id": _STR,
        "object": {"const": "model"},
        "created": _INT,
        "owned_by": _STR,
        "context_length": _INT,
        "quant_type": _STR,
        "gpu_type": _STR,
        "price": {"oneOf": [{"type": "null"}, _PRICE]},
    }
)

RESPONSES: dict[str, dict[str, Any]] = {
    "ChatCompletion": _completion("chat.completion", _CHAT_CHOICE),
    "TextCompletion": _completion("text_completion", _TEXT_CHOICE),
    "EmbeddingList": _object(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "minItems": 1, "items": _EMBEDDING},
            "model": _STR,
            "usage": _object({"prompt_tokens": _INT, "total_tokens": _INT}, _COST),
        }
    ),
    "Model": MODEL,
    "ModelList": _object(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
        }
    ),
}
