"""The chat completions request: messages by role (text or text parts, the assistant's tool
calls, tool results), tools and `tool_choice`, logprobs. Pure data, converted to the engine's
`ChatMessage` and `Tool`; the rules of `protocol` apply (unknown fields refused, unimplemented
ones accept only their no-op value, constraints the JSON schema shows)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, StringConstraints, Tag

from node.api.openai.protocol import (
    MAX_TOP_LOGPROBS,
    ResponseFormat,
    SamplingFields,
    _Body,
    integer,
    tag_by,
    text_or_list,
    unsupported,
)
from node.engine.interface import ChatMessage as EngineMessage
from node.engine.interface import Tool, ToolCall

FUNCTION_NAME = r"^[A-Za-z0-9_.:-]{1,64}$"  # OpenAI: letters, digits, _ and -, up to 64


class TextPart(_Body):
    type: Literal["text"] = Field(description="Only text parts: no images, audio or files.")
    text: str


Content = text_or_list(
    str, Annotated[list[TextPart], Field(min_length=1)], "a string or a list of text parts"
)


class CalledFunction(_Body):
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str = Field(description="The arguments as JSON text.")


class MessageToolCall(_Body):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: CalledFunction


class _Message(_Body):
    def text(self) -> str | None:
        content: str | list[TextPart] | None = getattr(self, "content", None)
        if isinstance(content, list):
            return "".join(part.text for part in content)
        return content


class SystemMessage(_Message):
    role: Literal["system"]
    content: Content
    name: str | None = None


class DeveloperMessage(_Message):
    role: Literal["developer"]
    content: Content
    name: str | None = None


class UserMessage(_Message):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    reasoning_content: str | None = Field(
        default=None, description="llama-server's extension: the reasoning of a thinking model."
    )


class ToolMessage(_Message):
    role: Literal["tool"]
    content: Content
    tool_call_id: str = Field(min_length=1, description="The assistant tool call it answers.")
    name: str | None = None


# OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
Metadata = Annotated[
    dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16),
]
ROLES = ("system", "developer", "user", "assistant", "tool")


ChatMessage = Annotated[
    Annotated[SystemMessage, Tag("<system>")]
    | Annotated[DeveloperMessage, Tag("<developer>")]
    | Annotated[UserMessage, Tag("<user>")]
    | Annotated[AssistantMessage, Tag("<assistant>")]
    | Annotated[ToolMessage, Tag("<tool>")],
    Discriminator(
        tag_by("role", ROLES),
        custom_error_type="invalid_role",
        custom_error_message="role must be one of " + ", ".join(f"'{r}'" for r in ROLES),
    ),
]


class FunctionDefinition(_Body):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="A JSON schema; one the grammar converter cannot take is a 400."
    )
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
# Template variables (llama-server's `chat_template_kwargs`), e.g. {"enable_thinking": false}.
TemplateKwargs = Annotated[
    dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], Any],
    Field(json_schema_extra={"additionalProperties": False}),
]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    audio: None = unsupported("null")
    function_call: None = unsupported("null")
    functions: None = unsupported("null")
    logprobs: bool | None = None
    max_completion_tokens: integer(ge=1) | None = None
    metadata: Metadata | None = Field(default=None, description="Accepted and ignored.")
    modalities: Annotated[list[Literal["text"]], Field(min_length=1)] | None = unsupported(
        '["text"]'
    )
    parallel_tool_calls: bool | None = None
    prediction: None = unsupported("null")
    prompt_cache_key: str | None = Field(default=None, description="Accepted and ignored.")
    reasoning_effort: None = unsupported("null")
    response_format: ResponseFormat | None = None
    safety_identifier: str | None = Field(
        default=None, max_length=256, description="Accepted and ignored."
    )
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = Field(
        default=None, description="Accepted and ignored."
    )
    store: bool | None = Field(default=None, description="Accepted and ignored: nothing is stored.")
    tool_choice: ToolChoice | None = None
    tools: list[ToolDefinition] | None = None
    top_logprobs: integer(ge=0, le=MAX_TOP_LOGPROBS) | None = Field(
        default=None, description="Needs `logprobs: true`."
    )
    verbosity: None = unsupported("null")
    web_search_options: None = unsupported("null")
    # llama-server's extensions
    chat_template_kwargs: TemplateKwargs | None = None
    reasoning_format: Literal["none", "auto", "deepseek"] | None = Field(
        default=None, description='"none" keeps reasoning verbatim inside the content.'
    )

    def completion_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def engine_messages(self) -> list[EngineMessage]:
        out = []
        for m in self.messages:
            calls = getattr(m, "tool_calls", None) or ()
            out.append(
                EngineMessage(
                    role=m.role,
                    content=m.text(),
                    name=getattr(m, "name", None),
                    tool_calls=tuple(
                        ToolCall(c.id, c.function.name, c.function.arguments) for c in calls
                    ),
                    tool_call_id=getattr(m, "tool_call_id", None),
                    reasoning_content=getattr(m, "reasoning_content", None),
                )
            )
        return out

    def engine_tools(self) -> list[Tool]:
        """The tools the template is shown: none for `tool_choice: "none"` (as llama-server)."""
        if self.tool_choice == "none":
            return []
        return [
            Tool(t.function.name, t.function.description, t.function.parameters or {})
            for t in self.tools or ()
        ]

    def first_problem(self) -> tuple[str, str] | None:
        """(message, param) of the first rule a JSON schema cannot state: top_logprobs without
        logprobs, tools and tool_choice that disagree, calls and results that do not match."""
        if self.top_logprobs is not None and not self.logprobs:
            return "top_logprobs requires logprobs to be true", "top_logprobs"
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
            for j, call in enumerate(getattr(m, "tool_calls", None) or ()):
                call_ids.add(call.id)
                try:
                    json.loads(call.function.arguments)
                except ValueError:
                    where = f"messages[{i}].tool_calls[{j}].function.arguments"
                    return "arguments must be JSON text", where
            if isinstance(m, ToolMessage) and m.tool_call_id not in call_ids:
                return (
                    f"tool_call_id {m.tool_call_id!r} matches no earlier assistant tool call",
                    f"messages[{i}].tool_call_id",
                )
        return None
