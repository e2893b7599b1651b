"""Anthropic's `message` object as typed models: what `/openapi.json` documents as the 200
answer of `/v1/messages` (the renderer builds the same blocks for the stream events)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextOut(_Out):
    type: Literal["text"] = "text"
    text: str


class ThinkingOut(_Out):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""  # the node signs nothing; a client sends it back as it got it


class ToolUseOut(_Out):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentOut = Annotated[TextOut | ThinkingOut | ToolUseOut, Field(discriminator="type")]


class MessageUsage(_Out):
    """Anthropic's meaning: `input_tokens` were decoded, `cache_read_input_tokens` reused; their
    sum is the meter row's prompt tokens."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int
    cost: str | None = None  # exact decimal string, when the model has a price here
    currency: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unpriced(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        return {k: v for k, v in out.items() if v is not None or k not in ("cost", "currency")}


class AnthropicMessage(_Out):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentOut]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None
    stop_sequence: str | None
    usage: MessageUsage


class TokenCount(_Out):
    input_tokens: int


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (AnthropicMessage, TokenCount)
