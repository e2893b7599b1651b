"""The OpenAI Responses API request (`POST /v1/responses`), stateless, and its conversion to the
chat request every message dialect runs as (`to_chat`).

Input items: `message` (text parts; also the assistant's `output_text` echoed back), the
model's `function_call`s, the client's `function_call_output`s, and `reasoning`. The node keeps
no state, so `store: true` and `previous_response_id` are refused (400) rather than ignored.
The rules of `node.api.openai.protocol` apply: unknown fields refused, unimplemented fields
accept only their no-op value.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from node.api.openai.chat_protocol import FUNCTION_NAME, Metadata
from node.api.openai.protocol import (
    FORMAT_TYPES,
    _Body,
    integer,
    tag_by,
    text_or_list,
    unsupported,
)


class InputText(_Body):
    type: Literal["input_text"]
    text: str


class OutputText(_Body):
    """The assistant's earlier text, as a previous response's `output` sends it back."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = Field(default=None, description="Accepted and ignored.")
    logprobs: list[Any] | None = Field(default=None, description="Accepted and ignored.")


TextPart = Annotated[
    Annotated[InputText, Tag("<input_text>")] | Annotated[OutputText, Tag("<output_text>")],
    Discriminator(
        tag_by("type", ("input_text", "output_text")),
        custom_error_type="invalid_part",
        custom_error_message="only 'input_text' and 'output_text' parts are supported",
    ),
]
Parts = text_or_list(
    str, Annotated[list[TextPart], Field(min_length=1)], "a string or a list of text parts"
)
Status = Literal["in_progress", "completed", "incomplete"]


class MessageItem(_Body):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Parts
    id: str | None = None
    status: Status | None = None
    phase: Literal["commentary", "final_answer"] | None = Field(
        default=None, description="Accepted and ignored."
    )

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCallItem(_Body):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str = Field(description="The arguments as JSON text.")
    id: str | None = None
    status: Status | None = None


class FunctionCallOutputItem(_Body):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, description="The `call_id` of the call it answers.")
    output: text_or_list(  # type: ignore[valid-type]
        str, Annotated[list[InputText], Field(min_length=1)], "a string or input_text parts"
    )
    id: str | None = None
    status: Status | None = None

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.text for part in self.output)


class SummaryText(_Body):
    type: Literal["summary_text"]
    text: str


class ReasoningText(_Body):
    type: Literal["reasoning_text"]
    text: str


class ReasoningItem(_Body):
    type: Literal["reasoning"]
    summary: list[SummaryText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: None = unsupported("null")
    id: str | None = None
    status: Status | None = None

    def text(self) -> str:
        parts = self.content or self.summary
        return "".join(part.text for part in parts)


ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


def _item_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type", "message" if "role" in value else None)
    else:
        kind = getattr(value, "type", None)
    return f"<{kind}>" if kind in ITEM_TYPES else None


InputItem = Annotated[
    Annotated[MessageItem, Tag("<message>")]
    | Annotated[FunctionCallItem, Tag("<function_call>")]
    | Annotated[FunctionCallOutputItem, Tag("<function_call_output>")]
    | Annotated[ReasoningItem, Tag("<reasoning>")],
    Discriminator(
        _item_tag,
        custom_error_type="invalid_item",
        custom_error_message="type must be one of " + ", ".join(f"'{t}'" for t in ITEM_TYPES),
    ),
]


class FunctionTool(_Body):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="A JSON schema; one the grammar converter cannot take is a 400."
    )
    strict: bool | None = None


class FunctionChoice(_Body):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormatText(_Body):
    type: Literal["text"]


class TextFormatJsonObject(_Body):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Body):
    type: Literal["json_schema"]
    name: str = Field(default="response", max_length=64)
    schema_: dict[str, Any] = Field(alias="schema", min_length=1)
    description: str | None = Field(default=None, description="Accepted and ignored.")
    strict: bool | None = None


TextFormat = Annotated[
    Annotated[TextFormatText, Tag("<text>")]
    | Annotated[TextFormatJsonObject, Tag("<json_object>")]
    | Annotated[TextFormatJsonSchema, Tag("<json_schema>")],
    Discriminator(
        tag_by("type", FORMAT_TYPES),
        custom_error_type="invalid_format",
        custom_error_message="type must be 'text', 'json_object' or 'json_schema'",
    ),
]


class TextConfig(_Body):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = unsupported('"medium"')


class ResponseStreamOptions(_Body):
    include_obfuscation: bool | None = Field(default=None, description="Accepted and ignored.")


class ResponsesRequest(_Body):
    model: str = Field(min_length=1)
    input: text_or_list(  # type: ignore[valid-type]
        Annotated[str, Field(min_length=1)],
        Annotated[list[InputItem], Field(min_length=1)],
        "a string or a list of input items",
    )
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: integer(ge=1) | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    user: str | None = Field(default=None, max_length=256)
    metadata: Metadata | None = Field(default=None, description="Echoed in the response.")
    # Typed wider than the document says, so a refusal can say why (the node is stateless).
    store: bool | None = Field(
        default=None,
        description="The node is stateless: true is refused (400).",
        json_schema_extra={"enum": [False, None]},
    )
    previous_response_id: str | None = Field(
        default=None,
        description="The node is stateless: refused (400); send the whole conversation as input.",
        json_schema_extra={"enum": [None]},
    )
    stream: bool | None = False
    stream_options: ResponseStreamOptions | None = None
    truncation: Literal["disabled"] | None = unsupported('"disabled"')
    include: Annotated[list[str], Field(max_length=0)] | None = unsupported("null or []")
    reasoning: None = unsupported("null")
    top_logprobs: None = unsupported("null")
    background: Literal[False] | None = unsupported("false")
    conversation: None = unsupported("null")
    prompt: None = unsupported("null")
    max_tool_calls: None = unsupported("null")
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = Field(
        default=None, description="Accepted and ignored."
    )
    prompt_cache_key: str | None = Field(default=None, description="Accepted and ignored.")
    safety_identifier: str | None = Field(
        default=None, max_length=256, description="Accepted and ignored."
    )

    def first_problem(self) -> tuple[str, str] | None:
        """(message, param) of what the stateless node refuses."""
        if self.store:
            return "this node is stateless and stores no responses; send store: false", "store"
        if self.previous_response_id is not None:
            return (
                "this node is stateless and keeps no previous responses; send the whole "
                "conversation as input",
                "previous_response_id",
            )
        return None

    def items(self) -> list[Any]:
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input)

    def to_chat(self) -> dict[str, Any]:
        """The chat completions request body this request runs as (validated by the caller)."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        reasoning: list[str] = []
        for item in self.items():
            if isinstance(item, MessageItem):
                messages.append({"role": item.role, "content": item.text()})
                if item.role == "assistant" and reasoning:
                    messages[-1]["reasoning_content"] = "".join(reasoning)
                    reasoning = []
            elif isinstance(item, ReasoningItem):
                reasoning.append(item.text())
            elif isinstance(item, FunctionCallItem):
                last = messages[-1] if messages else None
                if last is None or last["role"] != "assistant":
                    last = {"role": "assistant", "content": None}
                    messages.append(last)
                if reasoning:
                    last["reasoning_content"] = "".join(reasoning)
                    reasoning = []
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}  # fmt: skip
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append(
                    {"role": "tool", "tool_call_id": item.call_id, "content": item.text()}
                )
        if reasoning:  # reasoning the input ends with: the assistant's turn so far
            messages.append({"role": "assistant", "reasoning_content": "".join(reasoning)})
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.tools:
            body["tools"] = [
                {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
                for t in self.tools
            ]
        if isinstance(self.tool_choice, FunctionChoice):
            body["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        fmt = self.text.format if self.text else None
        if isinstance(fmt, TextFormatJsonSchema):
            schema = {"name": fmt.name, "schema": fmt.schema_}
            if fmt.strict is not None:
                schema["strict"] = fmt.strict
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt is not None:
            body["response_format"] = {"type": fmt.type}
        for field in ("parallel_tool_calls", "temperature", "top_p", "user"):
            value = getattr(self, field)
            if value is not None:
                body[field] = value
        if self.max_output_tokens is not None:
            body["max_tokens"] = self.max_output_tokens
        return body
