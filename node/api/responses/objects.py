"""The Responses API's objects: the `response` with its output items and usage, as typed
models (what `/openapi.json` documents as the 200 answer; stream events carry the same items)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from node.engine.interface import TokenCounts
from node.meter import Bill


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputTextPart(_Out):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class MessageOut(_Out):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputTextPart]


class FunctionCallOut(_Out):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


class ReasoningTextPart(_Out):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningOut(_Out):
    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[Any] = []
    content: list[ReasoningTextPart]
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = MessageOut | FunctionCallOut | ReasoningOut


class InputTokensDetails(_Out):
    cached_tokens: int


class OutputTokensDetails(_Out):
    reasoning_tokens: int


class ResponseUsage(_Out):
    """Without `cost` / `currency` when the model has no price here (like chat's usage)."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int
    cost: str | None = None  # exact decimal string, when the model has a price here
    currency: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unpriced(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        return {k: v for k, v in out.items() if v is not None or k not in ("cost", "currency")}


def usage_of(counts: TokenCounts, bill: Bill | None, reasoning_tokens: int) -> ResponseUsage:
    usage = ResponseUsage(
        input_tokens=counts.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=counts.cached_tokens),
        output_tokens=counts.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning_tokens),
        total_tokens=counts.prompt_tokens + counts.completion_tokens,
    )
    if bill is not None and bill.priced:
        usage.cost = format(bill.cost, "f")
        usage.currency = bill.currency
    return usage


class IncompleteDetails(_Out):
    reason: Literal["max_output_tokens"]


class ResponseError(_Out):
    code: str
    message: str


class ReasoningConfig(_Out):
    effort: None = None
    summary: None = None


class ResponseObject(_Out):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: None = None
    reasoning: ReasoningConfig = ReasoningConfig()
    store: bool = False
    temperature: float | None
    text: dict[str, Any]
    tool_choice: Any
    tools: list[dict[str, Any]]
    top_p: float | None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = {}


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (ResponseObject,)
