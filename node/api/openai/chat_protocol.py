"""The chat completions request: messages (text or parts, tool calls and results), tools and
`tool_choice`, logprobs. Pure data, converted to the engine's `ChatMessage` and `Tool`."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from node.api.openai.protocol import (
    MAX_TOP_LOGPROBS,
    ResponseFormat,
    SamplingFields,
    _Body,
)
from node.engine.interface import ChatMessage as EngineMessage
from node.engine.interface import Tool, ToolCall

FUNCTION_NAME = r"^[A-Za-z0-9_.:-]{1,64}$"  # OpenAI: letters, digits, _ and -, up to 64


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ImageUrl(_Body):
    url: str
    detail: str | None = None


class ImagePart(_Body):
    """Accepted by the schema so it can be refused clearly: no model here sees images."""

    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class CalledFunction(_Body):
    name: str = Field(min_length=1)
    arguments: str  # JSON text


class MessageToolCall(_Body):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None  # assistant
    tool_call_id: str | None = None  # tool
    reasoning_content: str | None = None  # assistant, llama-server's extension

    @model_validator(mode="after")
    def _consistent(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages have tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self

    def text(self) -> str | None:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content if isinstance(part, TextPart))
        return self.content

    def images(self) -> bool:
        return isinstance(self.content, list) and any(
            isinstance(part, ImagePart) for part in self.content
        )


class FunctionDefinition(_Body):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Body):
    name: str = Field(min_length=1)


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # llama-server's extension: extra variables for the chat template (e.g. enable_thinking)
    chat_template_kwargs: dict[str, Any] | None = None
    # llama-server's extension: "none" keeps reasoning inside the content, verbatim
    reasoning_format: Literal["none", "auto", "deepseek"] | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, top: int | None, info: Any) -> int | None:
        if top is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs to be true")
        return top

    def completion_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def engine_messages(self) -> list[EngineMessage]:
        return [
            EngineMessage(
                role=m.role,
                content=m.text(),
                name=m.name,
                tool_calls=tuple(
                    ToolCall(c.id, c.function.name, c.function.arguments)
                    for c in m.tool_calls or ()
                ),
                tool_call_id=m.tool_call_id,
                reasoning_content=m.reasoning_content,
            )
            for m in self.messages
        ]

    def engine_tools(self) -> list[Tool]:
        """The tools the template is shown: none for `tool_choice: "none"` (as llama-server)."""
        if self.tool_choice == "none":
            return []
        return [
            Tool(t.function.name, t.function.description, t.function.parameters or {})
            for t in self.tools or ()
        ]

    def first_problem(self) -> tuple[str, str] | None:
        """(message, param) of the first thing pydantic cannot say: tools and tool_choice that
        disagree, images, unknown call ids, arguments that are no JSON."""
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) != len(names):
            return "function names must be unique", "tools"
        choice = self.tool_choice
        if choice not in (None, "none", "auto") and not names:
            return "a tool_choice other than none or auto needs tools", "tool_choice"
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            return f"no tool is named {choice.function.name!r}", "tool_choice"
        call_ids: set[str] = set()
        for i, m in enumerate(self.messages):
            if m.images():
                return "image inputs are not supported by this model", f"messages[{i}].content"
            for j, call in enumerate(m.tool_calls or ()):
                call_ids.add(call.id)
                try:
                    json.loads(call.function.arguments)
                except ValueError:
                    where = f"messages[{i}].tool_calls[{j}].function.arguments"
                    return "arguments must be JSON text", where
            if m.role == "tool" and m.tool_call_id not in call_ids:
                return (
                    f"tool_call_id {m.tool_call_id!r} matches no earlier assistant tool call",
                    f"messages[{i}].tool_call_id",
                )
        return None
