"""The Anthropic Messages request (`POST /v1/messages`, `/v1/messages/count_tokens`) and its
conversion to the chat request every message dialect runs as (`to_chat`).

Content blocks: `text`, `tool_use`, `tool_result` and `thinking` (an image or document block
is a 400). `cache_control` marks are accepted and ignored (the node reuses a cached prompt
prefix by itself); `redacted_thinking` cannot be read back and is refused. The rules of
`node.api.openai.protocol` apply: unknown fields refused, unimplemented ones only their no-op
value.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from node.api.openai.chat_protocol import FUNCTION_NAME
from node.api.openai.protocol import (
    MAX_STOP,
    NonEmpty,
    _Body,
    integer,
    tag_by,
    text_or_list,
)

CacheControl = dict[str, Any] | None
_CACHE = "Accepted and ignored: the node reuses a cached prompt prefix by itself."


class TextBlock(_Body):
    type: Literal["text"]
    text: str
    cache_control: CacheControl = Field(default=None, description=_CACHE)
    citations: None = None


class ToolUseBlock(_Body):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(pattern=FUNCTION_NAME)
    input: dict[str, Any]
    cache_control: CacheControl = Field(default=None, description=_CACHE)


class ToolResultBlock(_Body):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: (
        text_or_list(str, list[TextBlock], "a string or a list of text blocks") | None  # type: ignore[valid-type]
    ) = None
    is_error: bool | None = None
    cache_control: CacheControl = Field(default=None, description=_CACHE)

    def text(self) -> str:
        if self.content is None:
            text = ""
        elif isinstance(self.content, str):
            text = self.content
        else:
            text = "".join(block.text for block in self.content)
        return f"Error: {text}" if self.is_error else text


class ThinkingBlock(_Body):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


BLOCK_TYPES = ("text", "tool_use", "tool_result", "thinking")


Block = Annotated[
    Annotated[TextBlock, Tag("<text>")]
    | Annotated[ToolUseBlock, Tag("<tool_use>")]
    | Annotated[ToolResultBlock, Tag("<tool_result>")]
    | Annotated[ThinkingBlock, Tag("<thinking>")],
    Discriminator(
        tag_by("type", BLOCK_TYPES),
        custom_error_type="invalid_block",
        custom_error_message="only 'text', 'tool_use', 'tool_result' and 'thinking' blocks are "
        "supported",
    ),
]


class InputMessage(_Body):
    role: Literal["user", "assistant"]
    content: text_or_list(  # type: ignore[valid-type]
        str, Annotated[list[Block], Field(min_length=1)], "a string or a list of content blocks"
    )

    def blocks(self) -> list[Any]:
        if isinstance(self.content, str):
            return [TextBlock(type="text", text=self.content)]
        return list(self.content)


class ToolDef(_Body):
    type: Literal["custom"] | None = None
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    input_schema: dict[str, Any] = Field(description="A JSON schema of the tool's input.")
    cache_control: CacheControl = Field(default=None, description=_CACHE)


class ToolChoice(_Body):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, description="With type 'tool': the tool to call.")
    disable_parallel_tool_use: bool | None = None


class Thinking(_Body):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: integer(ge=0) | None = Field(
        default=None, description="Accepted; the model thinks within max_tokens."
    )


class Metadata(_Body):
    user_id: str | None = Field(default=None, max_length=256, description="The meter's user.")


System = text_or_list(str, list[TextBlock], "a string or a list of text blocks")


class _Conversation(_Body):
    """What count_tokens and create share."""

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: System | None = None  # type: ignore[valid-type]
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    cache_control: CacheControl = Field(default=None, description=_CACHE)

    def problem(self) -> tuple[str, str] | None:
        choice = self.tool_choice
        if choice is not None and choice.type == "tool" and not choice.name:
            return "tool_choice of type 'tool' needs a name", "tool_choice.name"
        return None

    def to_chat(self) -> dict[str, Any]:
        """The chat completions request body this conversation runs as."""
        messages: list[dict[str, Any]] = []
        if self.system:
            system = self.system
            text = system if isinstance(system, str) else "\n\n".join(b.text for b in system)
            messages.append({"role": "system", "content": text})
        for message in self.messages:
            messages += _chat_messages(message)
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.tools:
            body["tools"] = [
                {"type": "function", "function": {"name": t.name, "parameters": t.input_schema,
                                                  **({"description": t.description}
                                                     if t.description else {})}}
                for t in self.tools
            ]  # fmt: skip
        choice = self.tool_choice
        if choice is not None:
            kinds = {"auto": "auto", "any": "required", "none": "none"}
            if choice.type == "tool":
                body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
            else:
                body["tool_choice"] = kinds[choice.type]
            if choice.disable_parallel_tool_use:
                body["parallel_tool_calls"] = False
        return body


def _chat_messages(message: InputMessage) -> list[dict[str, Any]]:
    blocks = message.blocks()
    if message.role == "user":
        out: list[dict[str, Any]] = [
            {"role": "tool", "tool_call_id": b.tool_use_id, "content": b.text()}
            for b in blocks
            if isinstance(b, ToolResultBlock)
        ]
        text = "".join(b.text for b in blocks if isinstance(b, TextBlock))
        if text or not out:
            out.append({"role": "user", "content": text})
        return out
    assistant: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(b.text for b in blocks if isinstance(b, TextBlock)) or None,
    }
    thinking = "".join(b.thinking for b in blocks if isinstance(b, ThinkingBlock))
    if thinking:
        assistant["reasoning_content"] = thinking
    calls = [
        {"id": b.id, "type": "function",
         "function": {"name": b.name, "arguments": json.dumps(b.input)}}
        for b in blocks
        if isinstance(b, ToolUseBlock)
    ]  # fmt: skip
    if calls:
        assistant["tool_calls"] = calls
    return [assistant]


class CountTokensRequest(_Conversation):
    pass


class MessagesRequest(_Conversation):
    max_tokens: integer(ge=1)  # type: ignore[valid-type]
    stop_sequences: Annotated[list[NonEmpty], Field(max_length=MAX_STOP)] | None = None
    stream: bool | None = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: integer(ge=0, le=1_000_000) | None = None
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = Field(
        default=None, description="Accepted and ignored."
    )

    def to_chat(self) -> dict[str, Any]:
        body = super().to_chat()
        body["max_tokens"] = self.max_tokens
        if self.stop_sequences:
            body["stop"] = list(self.stop_sequences)
        for field in ("temperature", "top_p", "top_k"):
            value = getattr(self, field)
            if value is not None:
                body[field] = value
        if self.metadata is not None and self.metadata.user_id is not None:
            body["user"] = self.metadata.user_id
        return body
